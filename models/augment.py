"""Weight-space augmentations as hooks ``(key, batch) -> batch`` over a batch of networks.

``batch["params"]`` is a params pytree with a leading batch axis; other entries of the batch
(targets, ids) pass through untouched. Every hook is a pure function of its key, so it can be
`jax.jit`-compiled inside a training step, and each network of the batch draws its own randomness.

* `random_permutation` — a random hidden-unit permutation per network: an exact symmetry.
* `gaussian_noise` — noise whose std is `scale` × the std of each tensor of each network.
* `weight_dropout` — zero each weight with probability `rate` (optionally rescale the survivors).
* `magnitude_pruning` — zero the `fraction` smallest-magnitude entries of each tensor.
* `compose` — apply hooks in order with independent keys.

Aligned mixup lives in `models.mixup`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from wsl.models.errors import ModelError
from wsl.weight_space import WeightSpace, WeightSpaceError

Batch = Mapping[str, object]
Hook = Callable[[jax.Array, Batch], dict]


def _params(weight_space: WeightSpace, batch: Batch):
    if not isinstance(batch, Mapping) or "params" not in batch:
        keys = list(batch) if isinstance(batch, Mapping) else type(batch).__name__
        raise KeyError(f"an augmentation batch is a dict with a 'params' entry; got {keys}")
    params = batch["params"]
    lead = weight_space.batch_shape(params)
    if len(lead) != 1:
        raise WeightSpaceError(f"augmentations take params with one leading batch axis; got "
                               f"leading axes {lead}")
    return params, lead[0]


def _with_params(batch: Batch, params) -> dict:
    out = dict(batch)
    out["params"] = params
    return out


def _per_tensor_keys(weight_space: WeightSpace, key: jax.Array) -> dict[str, jax.Array]:
    return dict(zip(weight_space.paths, jax.random.split(key, len(weight_space.tensors))))


def _check_fraction(name: str, value: float, allow_zero: bool = True) -> float:
    value = float(value)
    if not (0.0 <= value < 1.0) or (value == 0.0 and not allow_zero):
        raise ModelError(f"{name} must be in [0, 1); got {value}")
    return value


def random_permutation(weight_space: WeightSpace) -> Hook:
    """Permute every network's hidden units by its own uniformly random symmetry."""

    def hook(key: jax.Array, batch: Batch) -> dict:
        params, n = _params(weight_space, batch)
        perms = weight_space.random_permutation(key, num=n)
        return _with_params(batch, weight_space.permute(params, perms))

    return hook


def gaussian_noise(weight_space: WeightSpace, scale: float = 0.05) -> Hook:
    """Add N(0, (scale · std)²) noise, std being that of each tensor within each network.

    Scaling by the tensor's own spread makes one `scale` meaningful for every layer; a tensor
    that is constant within a network (a zero-initialised bias) stays unchanged.
    """
    scale = float(scale)
    if scale < 0:
        raise ModelError(f"noise scale must be non-negative; got {scale}")

    def hook(key: jax.Array, batch: Batch) -> dict:
        params, _ = _params(weight_space, batch)
        keys = _per_tensor_keys(weight_space, key)

        def noisy(t, x):
            x = jnp.asarray(x)
            std = jnp.std(x.reshape(x.shape[0], -1), axis=1).reshape((-1,) + (1,) * (x.ndim - 1))
            return x + scale * std * jax.random.normal(keys[t.path], x.shape, x.dtype)

        return _with_params(batch, weight_space.map_tensors(noisy, params))

    return hook


def weight_dropout(weight_space: WeightSpace, rate: float = 0.05, rescale: bool = False) -> Hook:
    """Zero every weight independently with probability `rate`; with `rescale`, divide the
    survivors by 1 − rate so that each tensor's expected value is kept."""
    rate = _check_fraction("dropout rate", rate)

    def hook(key: jax.Array, batch: Batch) -> dict:
        params, _ = _params(weight_space, batch)
        keys = _per_tensor_keys(weight_space, key)

        def drop(t, x):
            x = jnp.asarray(x)
            keep = jax.random.bernoulli(keys[t.path], 1.0 - rate, x.shape)
            kept = x / (1.0 - rate) if rescale else x
            return jnp.where(keep, kept, jnp.zeros_like(x))

        return _with_params(batch, weight_space.map_tensors(drop, params))

    return hook


def magnitude_pruning(weight_space: WeightSpace, fraction: float = 0.1,
                      tensors: Sequence[str] | None = None) -> Hook:
    """Zero the floor(fraction · size) smallest-|w| entries of each tensor of each network.

    `tensors` restricts pruning to some paths (default: every tensor with at least 2 axes, i.e.
    kernels; biases are rarely pruned). Ties are broken by position, so exactly that many go.
    The key is unused: pruning is deterministic, but it keeps the hook signature.
    """
    fraction = _check_fraction("pruning fraction", fraction)
    if tensors is None:
        tensors = [t.path for t in weight_space.tensors if len(t.shape) >= 2]
    unknown = sorted(set(tensors) - set(weight_space.paths))
    if unknown:
        raise WeightSpaceError(f"cannot prune unknown tensors {unknown}; tensors are "
                               f"{list(weight_space.paths)}")
    chosen = set(tensors)

    def hook(key: jax.Array, batch: Batch) -> dict:
        del key
        params, n = _params(weight_space, batch)

        def prune(t, x):
            x = jnp.asarray(x)
            k = int(fraction * t.size)
            if t.path not in chosen or k == 0:
                return x
            flat = x.reshape(n, -1)
            ranks = jnp.argsort(jnp.argsort(jnp.abs(flat), axis=1), axis=1)
            return jnp.where(ranks < k, 0.0, flat).astype(x.dtype).reshape(x.shape)

        return _with_params(batch, weight_space.map_tensors(prune, params))

    return hook


def compose(*hooks: Hook) -> Hook:
    """One hook applying `hooks` in order, each with its own key split from the given one."""
    if not hooks:
        raise ModelError("compose needs at least one hook")

    def hook(key: jax.Array, batch: Batch) -> dict:
        for k, h in zip(jax.random.split(key, len(hooks)), hooks):
            batch = h(k, batch)
        return dict(batch)

    return hook
