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

Aligned mixup lives in `wsl.models.mixup`; `wsl.train.augment` builds a list of these by name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

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
