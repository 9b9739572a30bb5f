"""Augmentations by name: the list the trainer applies to every training batch of networks.

`ProbeConfig.augment` (and ``wsl probe --augment``) names them; `make_augmentations` builds the
`wsl.models.augment` / `wsl.models.mixup` functions, which the trainer's input pipeline runs under
`jax.jit` on each batch (`wsl.train.pipeline`):

* ``permute`` — a random hidden-unit permutation per network (an exact symmetry);
* ``scale`` — a random positive rescaling of every ReLU unit, log s ~ U(−`log_scale`,
  `log_scale`) (exact; only groups where it holds, `wsl.models.augment.scalable_groups`);
* ``sign`` — a random sign flip of every tanh unit (exact; likewise only where it holds);
* ``noise`` — Gaussian noise, `noise_scale` × each tensor's std;
* ``dropout`` — each weight zeroed with probability `dropout_rate`;
* ``prune`` — the `prune_fraction` smallest-magnitude weights of every kernel zeroed;
* ``mixup`` — aligned mixup with λ ~ Beta(`mixup_alpha`, `mixup_alpha`).

Aligned mixup needs each pair of networks aligned by weight matching, which runs on the host and
cannot run inside the compiled pipeline. So the training networks are aligned once, to a common
reference, before training (`align_for_mixup`; a permutation changes no network's function, so
the data are the same networks), and mixup runs on them with ``prealigned=True`` — first, before
any random permutation undoes the common alignment.

``scale`` and ``sign`` act on the groups whose nonlinearity has that symmetry and where it is not
broken by a normalisation or a residual sum (`wsl.models.augment.unit_symmetry_groups`); on a weight
space without such a group they change nothing, and `make_augmentations` warns. They trust the
weight space's nonlinearity map, which is one per zoo: a zoo whose networks differ in activation
(an ``activation`` column) needs its rows split by activation before ``scale`` or ``sign``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import jax

from wsl.align import align_zoo
from wsl.config import ConfigError
from wsl.models.augment import (
    Augmentation,
    gaussian_noise,
    magnitude_pruning,
    random_permutation,
    random_scaling,
    random_sign_flip,
    scalable_groups,
    unit_symmetry_groups,
    weight_dropout,
)
from wsl.models.mixup import aligned_mixup
from wsl.weight_space import WeightSpace

# The order in which they are applied, whatever order they are named in.
AUGMENTATIONS = ("mixup", "permute", "scale", "sign", "noise", "dropout", "prune")


def augmentation_names(value: str | Sequence[str] | None,
                       field: str = "augment") -> tuple[str, ...]:
    """The augmentations `value` names, in application order: a sequence of names or one string
    of comma-separated names; None, ``"none"`` or nothing means none."""
    items = [value] if value is None or isinstance(value, str) else list(value)
    names = []
    for item in items:
        if item is None:
            continue
        if not isinstance(item, str):
            raise ConfigError(f"{field}: expected augmentation names, got {item!r}")
        names.extend(n.strip() for n in item.split(",") if n.strip())
    if "none" in names:
        if len(names) > 1:
            raise ConfigError(f"{field}: 'none' cannot be combined with other augmentations; "
                              f"got {names}")
        return ()
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        raise ConfigError(f"{field}: unknown augmentation(s) {unknown}; valid: "
                          f"{', '.join(sorted(AUGMENTATIONS))} (combine with commas) or none")
    return tuple(n for n in AUGMENTATIONS if n in names)


def make_augmentations(space: WeightSpace, names: Sequence[str], *, noise_scale: float = 0.05,
                       dropout_rate: float = 0.05, prune_fraction: float = 0.1,
                       mixup_alpha: float = 1.0, log_scale: float = 0.5,
                       field: str | None = None,
                       no_sign: Sequence[str] = ()) -> list[Augmentation]:
    """The augmentations `names` names, in `AUGMENTATIONS` order, for batches whose weights are in
    `field` (``"params"`` or ``"flat"``; default whichever the batch has).

    ``mixup`` expects the training networks aligned to a common reference (`align_for_mixup`).
    ``scale`` or ``sign`` on a weight space where it holds for no group changes nothing and warns.
    `no_sign` names groups a sign flip must leave alone although the weight space allows it
    (`wsl.zoos.architectures.pooled_before_activation`: pooling the space does not record).
    """
    build = {
        "mixup": lambda: aligned_mixup(space, alpha=mixup_alpha, prealigned=True),
        "permute": lambda: random_permutation(space, field),
        "scale": lambda: random_scaling(space, log_scale, field=field),
        "sign": lambda: random_sign_flip(space, field=field, exclude=tuple(no_sign)),
        "noise": lambda: gaussian_noise(space, noise_scale, field=field),
        "dropout": lambda: weight_dropout(space, dropout_rate, field=field),
        "prune": lambda: magnitude_pruning(space, prune_fraction, field=field),
    }
    chosen = augmentation_names(names)
    for name in ("scale", "sign"):
        if name in chosen and not scalable_groups(space, name):
            reasons = "; ".join(f"{g}: {why}" for g, why in
                                unit_symmetry_groups(space, name).items())
            warnings.warn(f"augmentation {name!r} changes nothing: its symmetry holds for no "
                          f"group of this weight space ({reasons or 'no groups'})", stacklevel=2)
    return [build[name]() for name in chosen]


def align_for_mixup(space: WeightSpace, params, seed: int = 0, rounds: int = 3):
    """`params` (networks on a leading axis) aligned to their common mean by weight matching, so
    that any two can be mixed coordinate by coordinate."""
    return align_zoo(space, params, reference="mean", key=jax.random.key(seed),
                     rounds=rounds).params
