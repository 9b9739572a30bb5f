"""Weight-space augmentations: functions ``(key, batch) -> batch`` over a batch of networks.

These are the augmentations of "Data Augmentations in Deep Weight Spaces" (Shamsian et al. 2023).
A batch is a dict whose weights are either a params tree with a leading batch axis (``"params"``)
or flat vectors in the weight space's order (``"flat"``); other entries (targets, ids) pass
through untouched. Every augmentation is a pure function of its key, so it runs under `jax.jit`
(the trainer's input pipeline compiles them, `wsl.train.pipeline`), and each network of the batch
draws its own randomness.

* `random_permutation` — a random hidden-unit permutation per network: an exact symmetry.
* `gaussian_noise` — noise whose std is `scale` × the std of each tensor of each network.
* `weight_dropout` — zero each weight with probability `rate` (optionally rescale the survivors).
* `magnitude_pruning` — zero the `fraction` smallest-magnitude entries of each tensor.
* `random_scaling` — rescale every ReLU unit by a random s > 0 (incoming ×s, outgoing ×1/s): an
  exact symmetry (Kalogeropoulos et al. 2024, "Scale Equivariant Graph Metanetworks").
* `random_sign_flip` — flip the sign of random tanh units (incoming and outgoing ×−1): exact too.

Scale and sign symmetries are derived from the weight space (`unit_symmetry_groups`) and applied
only where they provably hold; see `unit_symmetry_groups` for the rule and what it cannot see.

Aligned mixup lives in `wsl.models.mixup`; `wsl.train.augment` builds a list of these by name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from wsl.models.errors import ModelError
from wsl.weight_space import WeightSpace, WeightSpaceError

Batch = Mapping[str, Any]
Augmentation = Callable[[jax.Array, Batch], dict]
WEIGHT_FIELDS = ("params", "flat")


def batch_weights(space: WeightSpace, batch: Batch, field: str | None = None,
                  min_networks: int = 1) -> tuple[str, dict, int]:
    """(field name, params tree, number of networks) of a batch's weights.

    `field` names the entry holding the weights; by default whichever of ``"params"`` (a tree)
    and ``"flat"`` (vectors, unflattened here) the batch has.
    """
    fields = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
    name = field or (next((f for f in WEIGHT_FIELDS if f in batch), None)
                     if isinstance(batch, Mapping) else None)
    if name is None or name not in batch:
        raise WeightSpaceError(f"the augmentation batch has no field "
                               f"{name or 'params or flat'!r}; fields are {fields}")
    weights = batch[name]
    params = weights if isinstance(weights, Mapping) else space.unflatten(jnp.asarray(weights))
    lead = space.batch_shape(params)
    if len(lead) != 1 or lead[0] < min_networks:
        raise WeightSpaceError(f"augmentations take weights with one leading batch axis of at "
                               f"least {min_networks} network(s) in {name!r}; got leading axes "
                               f"{lead}")
    return name, params, lead[0]


def with_weights(space: WeightSpace, batch: Batch, name: str, params) -> dict:
    """`batch` with its weights in `name` replaced by `params`, in that field's layout."""
    out = dict(batch)
    out[name] = params if isinstance(batch[name], Mapping) else space.flatten(params)
    return out


def _per_tensor_keys(weight_space: WeightSpace, key: jax.Array) -> dict[str, jax.Array]:
    return dict(zip(weight_space.paths, jax.random.split(key, len(weight_space.tensors))))


def _number(name: str, value: float) -> float:
    if isinstance(value, bool):
        raise ModelError(f"{name} must be a number; got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError) as err:
        raise ModelError(f"{name} must be a number; got {value!r}") from err


def _check_fraction(name: str, value: float) -> float:
    value = _number(name, value)
    if not 0.0 <= value < 1.0:
        raise ModelError(f"{name} must be in [0, 1); got {value}")
    return value


def _tensorwise(weight_space: WeightSpace, field: str | None, fn) -> Augmentation:
    """An augmentation applying ``fn(keys, n, spec, array)`` to every tensor of the batch."""

    def augment(key: jax.Array, batch: Batch) -> dict:
        name, params, n = batch_weights(weight_space, batch, field)
        keys = _per_tensor_keys(weight_space, key)
        out = weight_space.map_tensors(lambda t, x: fn(keys[t.path], n, t, jnp.asarray(x)), params)
        return with_weights(weight_space, batch, name, out)

    return augment


def random_permutation(weight_space: WeightSpace, field: str | None = None) -> Augmentation:
    """Replace every network by a uniformly random member of its symmetry class.

    Each network gets its own permutation of every group (`WeightSpace.random_permutation`), so
    the batch holds functionally identical networks with shuffled hidden units.
    """

    def augment(key: jax.Array, batch: Batch) -> dict:
        name, params, n = batch_weights(weight_space, batch, field)
        perms = weight_space.random_permutation(key, num=n)
        permuted = weight_space.permute(params, perms, check=False)  # random ones are valid
        return with_weights(weight_space, batch, name, permuted)

    return augment


def gaussian_noise(weight_space: WeightSpace, scale: float = 0.05,
                   field: str | None = None) -> Augmentation:
    """Add N(0, (scale · std)²) noise, std being that of each tensor within each network.

    Scaling by the tensor's own spread makes one `scale` meaningful for every layer; a tensor
    that is constant within a network (a zero-initialised bias) stays unchanged.
    """
    scale = _number("noise scale", scale)
    if not 0 <= scale < float("inf"):  # nan and inf too
        raise ModelError(f"noise scale must be a finite number ≥ 0; got {scale}")

    def noisy(key, n, t, x):
        std = jnp.std(x.reshape(n, -1), axis=1).reshape((-1,) + (1,) * (x.ndim - 1))
        return x + scale * std * jax.random.normal(key, x.shape, x.dtype)

    return _tensorwise(weight_space, field, noisy)


def weight_dropout(weight_space: WeightSpace, rate: float = 0.05, rescale: bool = False,
                   field: str | None = None) -> Augmentation:
    """Zero every weight independently with probability `rate`; with `rescale`, divide the
    survivors by 1 − rate so that each tensor's expected value is kept."""
    rate = _check_fraction("dropout rate", rate)

    def drop(key, n, t, x):
        keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
        return jnp.where(keep, x / (1.0 - rate) if rescale else x, jnp.zeros_like(x))

    return _tensorwise(weight_space, field, drop)


def magnitude_pruning(weight_space: WeightSpace, fraction: float = 0.1,
                      tensors: Sequence[str] | None = None,
                      field: str | None = None) -> Augmentation:
    """Zero the floor(fraction · size) smallest-|w| entries of each tensor of each network.

    `tensors` restricts pruning to some paths (default: every tensor with at least 2 axes, i.e.
    kernels; biases are rarely pruned). Ties are broken by position, so exactly that many go.
    Pruning is deterministic: the key is unused, but the signature is that of every augmentation.
    """
    fraction = _check_fraction("pruning fraction", fraction)
    if tensors is None:
        tensors = [t.path for t in weight_space.tensors if len(t.shape) >= 2]
    unknown = sorted(set(tensors) - set(weight_space.paths))
    if unknown:
        raise WeightSpaceError(f"cannot prune unknown tensors {unknown}; tensors are "
                               f"{list(weight_space.paths)}")
    chosen = set(tensors)

    def prune(key, n, t, x):
        k = int(fraction * t.size)
        if t.path not in chosen or k == 0:
            return x
        flat = x.reshape(n, -1)
        ranks = jnp.argsort(jnp.argsort(jnp.abs(flat), axis=1), axis=1)
        return jnp.where(ranks < k, 0.0, flat).astype(x.dtype).reshape(x.shape)

    return _tensorwise(weight_space, field, prune)


# ------------------------------------------------------------------ scale and sign symmetries
# f(s·x) = s·f(x) for every s > 0 (positively homogeneous): a unit rescales.
SCALE_ACTIVATIONS = frozenset({"relu", "leaky_relu", "identity"})
# f(−x) = −f(x) (odd): a unit flips sign.
SIGN_ACTIVATIONS = frozenset({"tanh", "identity"})
UNIT_SYMMETRIES = {"scale": SCALE_ACTIVATIONS, "sign": SIGN_ACTIVATIONS}
LOG_SCALE_DISTRIBUTIONS = ("uniform", "normal")


def _check_symmetry(symmetry: str) -> frozenset:
    if symmetry not in UNIT_SYMMETRIES:
        raise ModelError(f"unknown unit symmetry {symmetry!r}; choose from "
                         f"{sorted(UNIT_SYMMETRIES)}")
    return UNIT_SYMMETRIES[symmetry]


def _leaf(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _sibling(path: str, leaf: str) -> str:
    return path.rsplit("/", 1)[0] + "/" + leaf if "/" in path else leaf


def unit_symmetry_groups(weight_space: WeightSpace, symmetry: str = "scale"
                         ) -> dict[str, str | None]:
    """For every group of `weight_space`: None where the per-unit `symmetry` (``"scale"``:
    positive rescaling; ``"sign"``: sign flip) provably holds, else the reason it does not.

    A group qualifies when all of these hold (`WeightSpace.unit_roles` gives writers/readers):

    * its nonlinearity (`WeightSpace.nonlinearity`) has the symmetry — relu, leaky_relu or
      identity for scale, tanh or identity for sign (gelu, silu, sigmoid have neither; a group with
      none recorded, such as attention heads, is left alone);
    * no normalisation acts on it (no ``…/scale`` tensor carries it, no GroupNorm `blocks`):
      LayerNorm / GroupNorm undo or mix a per-unit scale;
    * exactly one kernel writes it, plus that kernel's own bias: a residual stream (written by
      the stem and every block) sums several writers, and anything else writing it (a positional
      embedding, a norm's bias) would have to scale too;
    * at least one tensor reads it, and every reader is a kernel carrying it on one axis: a unit
      with no reader is an output, whose scale is the function's.

    The weight space records neither pooling nor other per-unit operations between a layer and
    its activation, so the rule trusts the architecture's nonlinearity map. Max-pooling commutes
    with positive rescaling but not with a sign flip: CNN-s (max-pool before tanh on ``conv_0``
    and ``conv_1``) passes this rule for ``"sign"`` on those groups although the flip is not a
    symmetry there — pass ``exclude=("conv_0", "conv_1")`` to `random_sign_flip`.
    """
    allowed = _check_symmetry(symmetry)
    normalised = {g for t in weight_space.tensors if _leaf(t.path) == "scale"
                  for g in t.axes if g is not None} | set(weight_space.blocks)
    out: dict[str, str | None] = {}
    for group in weight_space.groups:
        act = weight_space.nonlinearity.get(group)
        writers, readers = weight_space.unit_roles(group)
        writer_paths = [p for p, _ in writers]
        kernels = [p for p in writer_paths if _leaf(p) == "kernel"]
        if act is None:
            out[group] = "no nonlinearity recorded (linear or unknown units)"
            continue
        if act not in allowed:
            out[group] = (f"activation {act!r} has no {symmetry} symmetry (only "
                          f"{', '.join(sorted(allowed))})")
            continue
        why = []  # every structural reason, so that a report shows them all
        if len(kernels) != 1:
            why.append(f"written by {len(kernels)} kernels {kernels} (a residual stream: their "
                       f"outputs are summed)" if kernels else "written by no kernel")
        if group in normalised:
            why.append("normalised (a LayerNorm/GroupNorm acts on its units)")
        elif len(kernels) == 1 and set(writer_paths) - {kernels[0], _sibling(kernels[0], "bias")}:
            others = sorted(set(writer_paths) - {kernels[0], _sibling(kernels[0], "bias")})
            why.append(f"also written by {others}")
        if not readers:
            why.append("read by no tensor (an output group)")
        elif any(_leaf(p) != "kernel" for p, _ in readers):
            why.append(f"read by non-kernel tensors "
                       f"{sorted({p for p, _ in readers if _leaf(p) != 'kernel'})}")
        elif len({p for p, _ in readers} | set(writer_paths)) != len(readers) + len(writers):
            why.append("a tensor carries it on two axes (reads its own units)")
        out[group] = "; ".join(why) or None
    return out


def scalable_groups(weight_space: WeightSpace, symmetry: str = "scale") -> tuple[str, ...]:
    """The groups where the per-unit `symmetry` (``"scale"`` or ``"sign"``) holds, in the weight
    space's order (`unit_symmetry_groups` says why the others are left out)."""
    return tuple(g for g, why in unit_symmetry_groups(weight_space, symmetry).items()
                 if why is None)


def _chosen_groups(weight_space: WeightSpace, symmetry: str, groups: Sequence[str] | None,
                   exclude: Sequence[str]) -> tuple[str, ...]:
    reasons = unit_symmetry_groups(weight_space, symmetry)
    for what, names in (("groups", groups or ()), ("exclude", exclude)):
        if isinstance(names, str):
            raise ModelError(f"{what} must be a sequence of group names; got the string "
                             f"{names!r}")
        unknown = [g for g in names if g not in reasons]
        if unknown:
            raise WeightSpaceError(f"{symmetry} symmetry: {what} names unknown groups {unknown}; "
                                   f"groups are {list(reasons)}")
    if groups is None:
        chosen = [g for g, why in reasons.items() if why is None]
    else:
        refused = {g: reasons[g] for g in groups if reasons[g] is not None}
        if refused:
            raise WeightSpaceError(f"the {symmetry} symmetry does not hold for groups "
                                   + "; ".join(f"{g!r}: {why}" for g, why in refused.items()))
        chosen = list(dict.fromkeys(groups))
    return tuple(g for g in chosen if g not in set(exclude))


def transform_units(weight_space: WeightSpace, params, factors, symmetry: str = "scale") -> dict:
    """Multiply each unit of the groups in `factors` by its factor: its writing kernel and bias
    ×f, its reading kernels ×1/f — the same function when `symmetry` holds for every group
    (checked) and the factors are > 0 (``"scale"``) or ±1 (``"sign"``; not checked, they may be
    traced).

    `factors[g]` has shape (n,) — shared by every network — or (*models, n) with the params'
    leading axes.
    """
    _chosen_groups(weight_space, symmetry, list(factors), ())
    lead = weight_space.batch_shape(params)
    sizes = weight_space.group_sizes
    plan: dict[str, list[tuple[int, str, bool]]] = {}
    for group in factors:
        f = factors[group]
        if np.shape(f)[-1:] != (sizes[group],) or np.shape(f)[:-1] not in ((), lead):
            raise WeightSpaceError(f"factors for group {group!r} have shape {np.shape(f)}; "
                                   f"expected ({sizes[group]},) or {lead + (sizes[group],)}")
        writers, readers = weight_space.unit_roles(group)
        for roles, incoming in ((writers, True), (readers, False)):
            for path, axis in roles:
                plan.setdefault(path, []).append((axis, group, incoming))

    def apply(t, x):
        x = jnp.asarray(x)
        for axis, group, incoming in plan.get(t.path, ()):
            f = jnp.asarray(factors[group], x.dtype)
            f_lead = f.shape[:-1]
            shape = f_lead + (1,) * (len(lead) - len(f_lead) + axis) + (f.shape[-1],) \
                + (1,) * (len(t.shape) - axis - 1)
            f = f.reshape(shape)
            x = x * f if incoming else x / f
        return x

    return weight_space.map_tensors(apply, params)


def _unit_augmentation(weight_space: WeightSpace, symmetry: str, groups, exclude, field,
                       draw) -> Augmentation:
    chosen = _chosen_groups(weight_space, symmetry, groups, exclude)
    sizes = weight_space.group_sizes

    def augment(key: jax.Array, batch: Batch) -> dict:
        name, params, n = batch_weights(weight_space, batch, field)
        if not chosen:
            return dict(batch)
        keys = jax.random.split(key, n)  # one key per network, then one per group
        factors = {g: jax.vmap(lambda k: draw(jax.random.fold_in(k, i), sizes[g]))(keys)
                   for i, g in enumerate(chosen)}
        out = transform_units(weight_space, params, factors, symmetry)
        return with_weights(weight_space, batch, name, out)

    augment.groups = chosen  # what it acts on, for reports and tests
    return augment


def random_scaling(weight_space: WeightSpace, log_scale: float = 0.5,
                   distribution: str = "uniform", groups: Sequence[str] | None = None,
                   exclude: Sequence[str] = (), field: str | None = None) -> Augmentation:
    """Rescale every unit of every scalable group by its own random s > 0: incoming weights and
    bias ×s, outgoing weights ×1/s — each network's function is unchanged (positive
    homogeneity of ReLU / leaky ReLU).

    log s ~ Uniform(−log_scale, log_scale) (``distribution="uniform"``: s log-uniform in
    [e^−log_scale, e^log_scale]) or N(0, log_scale²) (``"normal"``: s log-normal), drawn
    independently per unit and per network. `groups` (default: `scalable_groups`) chooses
    groups, refusing any where the symmetry does not hold; `exclude` leaves some out. With no
    group to act on, the augmentation returns the batch unchanged.
    """
    log_scale = _number("log_scale", log_scale)
    if not 0 <= log_scale < float("inf"):
        raise ModelError(f"log_scale must be a finite number ≥ 0; got {log_scale}")
    if distribution not in LOG_SCALE_DISTRIBUTIONS:
        raise ModelError(f"distribution must be one of {LOG_SCALE_DISTRIBUTIONS}; got "
                         f"{distribution!r}")

    def draw(key, size):
        if distribution == "uniform":
            u = jax.random.uniform(key, (size,), minval=-log_scale, maxval=log_scale)
        else:
            u = log_scale * jax.random.normal(key, (size,))
        return jnp.exp(u)

    return _unit_augmentation(weight_space, "scale", groups, exclude, field, draw)


def random_sign_flip(weight_space: WeightSpace, groups: Sequence[str] | None = None,
                     exclude: Sequence[str] = (), field: str | None = None) -> Augmentation:
    """Flip the sign of each unit of every sign-symmetric (tanh) group with probability ½:
    incoming weights, bias and outgoing weights ×−1 — each network's function is unchanged.

    `groups` / `exclude` as in `random_scaling`; CNN-s needs ``exclude=("conv_0", "conv_1")``
    (max-pooling before tanh; see `unit_symmetry_groups`).
    """

    def draw(key, size):
        return jnp.where(jax.random.bernoulli(key, 0.5, (size,)), -1.0, 1.0)

    return _unit_augmentation(weight_space, "sign", groups, exclude, field, draw)
