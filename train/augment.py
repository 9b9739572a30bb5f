"""Augmentation hooks for the zoo pipeline: functions ``(key, batch) -> batch``, run under jit."""

from __future__ import annotations

from collections.abc import Mapping

from wsl.weight_space import WeightSpace, WeightSpaceError


def permutation_augmentation(space: WeightSpace, field: str | None = None):
    """Replace every network in the batch by a uniformly random member of its symmetry class.

    Each row gets its own permutation of every group of `space` (`space.random_permutation`), so
    the batch holds functionally identical networks with shuffled hidden units. `field` is the
    batch entry with the weights: a params tree (``"params"``) or flat vectors in the weight
    space's order (``"flat"``); by default whichever of the two the batch has.
    """

    def augment(key, batch):
        name = field or next((f for f in ("params", "flat") if f in batch), None)
        if name not in batch:
            raise WeightSpaceError(f"permutation augmentation: the batch has no field "
                                   f"{name or 'params or flat'!r}; fields are {sorted(batch)}")
        weights = batch[name]
        is_tree = isinstance(weights, Mapping)
        params = weights if is_tree else space.unflatten(weights)
        rows = space.batch_shape(params)
        if len(rows) != 1:
            raise WeightSpaceError(f"permutation augmentation needs one leading batch axis on "
                                   f"{name!r}; it has leading axes {rows}")
        permuted = space.permute(params, space.random_permutation(key, num=rows[0]))
        return {**batch, name: permuted if is_tree else space.flatten(permuted)}

    return augment
