"""Aligned mixup: a weight-space augmentation that aligns two networks, then interpolates them.

Mixing two networks coordinate by coordinate only makes sense when their hidden units correspond,
so each network i of a batch is paired with a random partner j, j is aligned to i by weight
matching (`wsl.align`), and the augmentation returns λ_i θ_i + (1 − λ_i) π(θ_j) with
λ_i ~ Beta(α, α).
Float targets mix the same way (λ_i y_i + (1 − λ_i) y_j); other per-network entries (ids, epochs,
flags, class labels) come from the parent with the larger weight. ``batch["mixup_lambda"]`` holds λ.

It is an `Augmentation` ``(key, batch) -> batch`` like those of `wsl.models.augment`. Weight
matching runs on the host, so the aligning version is called outside `jax.jit`; for a zoo aligned
once beforehand (`wsl.align.align_zoo`, the usual preprocessing) use ``prealigned=True``: it is then
pure JAX and runs in the trainer's compiled input pipeline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from wsl.align import weight_matching
from wsl.models.augment import WEIGHT_FIELDS, Augmentation, Batch, batch_weights, with_weights
from wsl.models.errors import ModelError, ModelKeyError, ModelTypeError
from wsl.weight_space import WeightSpace

_NOT_TARGETS = WEIGHT_FIELDS + ("mixup_lambda",)


def aligned_mixup(space: WeightSpace, *, alpha: float = 1.0, targets: Sequence[str] | None = None,
                  prealigned: bool = False, max_sweeps: int = 20,
                  tol: float = 1e-6) -> Augmentation:
    """An augmentation mixing every network of a batch with a random partner aligned to it.

    Args:
        space: the weight space of the batch's networks.
        alpha: λ ~ Beta(α, α); α = 1 is uniform on [0, 1], small α keeps λ near 0 or 1.
        targets: batch entries to interpolate; default every floating-point entry with one value
            per network (other than the weights).
        prealigned: the networks already share one alignment (e.g. the zoo went through
            `align_zoo`): skip matching, and the augmentation can run under `jax.jit`.
        max_sweeps, tol: weight matching's limits.
    """
    try:
        alpha = float(alpha)
    except (TypeError, ValueError) as err:
        raise ModelError(f"mixup alpha must be a positive number; got {alpha!r}") from err
    if not (alpha > 0 and math.isfinite(alpha)):
        raise ModelError(f"mixup alpha must be a positive finite number; got {alpha}")
    if targets is not None:
        if isinstance(targets, (str, bytes)) or not isinstance(targets, Sequence) \
                or not all(isinstance(t, str) for t in targets):
            raise ModelError(f"mixup targets must be a list of batch entry names; got "
                             f"{targets!r}")
        targets = tuple(targets)
        reserved = [t for t in targets if t in _NOT_TARGETS]
        if reserved:
            raise ModelError(f"mixup targets {reserved} are the weights or λ, not targets; "
                             f"weights always mix")
    if isinstance(max_sweeps, bool) or not isinstance(max_sweeps, (int, np.integer)) \
            or max_sweeps < 1:
        raise ModelError(f"mixup max_sweeps must be an integer ≥ 1; got {max_sweeps!r}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float, np.integer, np.floating)) \
            or not 0 <= tol < math.inf:
        raise ModelError(f"mixup tol must be a finite number ≥ 0; got {tol!r}")

    def augment(key: jax.Array, batch: Batch) -> dict:
        field, params, n = batch_weights(space, batch, min_networks=2)
        missing = [t for t in targets or () if t not in batch]
        if missing:
            raise ModelKeyError(f"mixup targets {missing} are not in the batch; it has "
                             f"{sorted(batch)}")
        k_pair, k_lam, k_order = jax.random.split(key, 3)
        # A network drawn as its own partner comes back unchanged: rare, and harmless.
        partner = jax.random.permutation(k_pair, n)
        other = jax.tree.map(lambda a: jnp.asarray(a)[partner], params)
        if not prealigned:
            if any(isinstance(a, jax.core.Tracer) for a in jax.tree.leaves(params)):
                raise ModelTypeError("aligned_mixup aligns networks with weight matching on the "
                                     "host and cannot run under jax.jit; call it outside the "
                                     "compiled step, or align the zoo beforehand and pass "
                                     "prealigned=True")
            al = weight_matching(space, params, other, key=k_order, max_sweeps=max_sweeps,
                                 tol=tol)
            other = space.permute(other, al.perms, check=False)  # matchings are permutations
        lam = (jax.random.uniform(k_lam, (n,)) if alpha == 1.0
               else jax.random.beta(k_lam, alpha, alpha, (n,)))
        mixed = jax.tree.map(lambda a, b: _mix(lam, jnp.asarray(a), b), params, other)
        out = with_weights(space, batch, field, mixed)
        dominant_self = lam >= 0.5
        for name, value in batch.items():
            if name in _NOT_TARGETS or np.ndim(value) == 0 or np.shape(value)[0] != n:
                continue
            dtype = value.dtype if hasattr(value, "dtype") else np.asarray(value).dtype
            kind = np.dtype(dtype).kind
            interpolate = (name in targets) if targets is not None else kind == "f"
            if interpolate:
                if kind not in "fiub":
                    raise ModelTypeError(f"mixup target {name!r} has dtype {dtype}; only "
                                         f"numbers interpolate")
                value = jnp.asarray(value, jnp.float32)
                out[name] = _mix(lam, value, value[partner])
            elif kind in "fiub":
                value = jnp.asarray(value)
                out[name] = jnp.where(_expand(dominant_self, value), value, value[partner])
            else:  # strings (e.g. activation names) stay on the host
                value = np.asarray(value)
                out[name] = np.where(np.asarray(dominant_self), value, value[np.asarray(partner)])
        out["mixup_lambda"] = lam
        return out

    return augment


def _expand(lam, value):
    return jnp.reshape(lam, lam.shape + (1,) * (jnp.ndim(value) - 1))


def _mix(lam, a, b):
    l = _expand(lam, a).astype(a.dtype)
    return l * a + (1 - l) * b
