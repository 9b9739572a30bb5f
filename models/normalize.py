"""Per-tensor normalisation of weights, fitted on a training population.

Weights of different tensors live on very different scales (a bias vs a 3×3 kernel); encoders and
generators see each tensor standardised by its own mean and std over the training population.
One scalar pair per tensor keeps every permutation symmetry exact (an elementwise standardiser
would not). Encoders apply it to params pytrees (`__call__`), generators to flat vectors
(`normalize` / `denormalize`). The statistics are stored with the model that uses them.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np

from wsl.models.errors import ModelError
from wsl.weight_space import WeightSpace, WeightSpaceError


@dataclasses.dataclass(frozen=True)
class TensorNormalizer:
    """``(w - mean) / std`` with one (mean, std) per tensor, in the weight space's tensor order.

    Tuples keep it hashable: encoders hold it as a module attribute.
    """

    paths: tuple[str, ...]
    means: tuple[float, ...]
    stds: tuple[float, ...]
    sizes: tuple[int, ...]  # entries per tensor, for flat vectors

    @classmethod
    def fit(cls, space: WeightSpace, population, min_std: float = 1e-8) -> TensorNormalizer:
        """Mean and std of every tensor over all models and entries of `population`: a params
        pytree with a leading model axis, or flat weights of shape (models, num_params)."""
        if isinstance(population, np.ndarray | jnp.ndarray):
            flat = np.asarray(population, np.float64)
            if flat.ndim != 2 or flat.shape[1] != space.num_params:
                raise WeightSpaceError(f"expected flat weights of shape (models, "
                                       f"{space.num_params}), got {flat.shape}")
            blocks = [flat[:, start:end] for start, end in space.offsets.values()]
        else:
            if not space.batch_shape(population):
                raise WeightSpaceError("TensorNormalizer.fit needs a population (a leading model "
                                       "axis)")
            tree = space.as_flat_dict(population)
            blocks = [np.asarray(tree[t.path], np.float64) for t in space.tensors]
        means = tuple(float(b.mean()) for b in blocks)
        # A constant tensor passes unscaled: dividing by a tiny std would blow up any model that
        # differs from the training population there.
        stds = tuple(float(s) if s > min_std else 1.0 for s in (b.std() for b in blocks))
        sizes = tuple(int(space.offsets[t.path][1] - space.offsets[t.path][0])
                      for t in space.tensors)
        return cls(tuple(space.paths), means, stds, sizes)

    @classmethod
    def from_vectors(cls, space: WeightSpace, mean: np.ndarray,
                     std: np.ndarray) -> TensorNormalizer:
        """From per-entry vectors (constant within each tensor), as generators store them."""
        mean, std = np.asarray(mean).reshape(-1), np.asarray(std).reshape(-1)
        if mean.shape != (space.num_params,) or std.shape != mean.shape:
            raise WeightSpaceError(f"normaliser vectors of shapes {mean.shape} / {std.shape} do "
                                   f"not fit a weight space of {space.num_params} parameters")
        starts = [space.offsets[t.path][0] for t in space.tensors]
        sizes = tuple(int(space.offsets[t.path][1] - space.offsets[t.path][0])
                      for t in space.tensors)
        return cls(tuple(space.paths), tuple(float(mean[s]) for s in starts),
                   tuple(float(std[s]) for s in starts), sizes)

    def _check(self, space: WeightSpace) -> None:
        if tuple(space.paths) != self.paths:
            raise WeightSpaceError(f"normaliser was fitted on tensors {list(self.paths)} but the "
                                   f"weight space has {list(space.paths)}")

    def __call__(self, space: WeightSpace, params) -> dict:
        """A params pytree (any leading axes) normalised tensor by tensor."""
        self._check(space)
        stats = dict(zip(self.paths, zip(self.means, self.stds)))
        return space.map_tensors(
            lambda t, x: (jnp.asarray(x) - stats[t.path][0]) / stats[t.path][1], params)

    @functools.cached_property
    def mean(self) -> np.ndarray:
        """Per-entry mean of flat weight vectors."""
        return np.repeat(np.asarray(self.means, np.float32), self.sizes)

    @functools.cached_property
    def std(self) -> np.ndarray:
        """Per-entry std of flat weight vectors."""
        return np.repeat(np.asarray(self.stds, np.float32), self.sizes)

    def normalize(self, flat):
        return (flat - self.mean) / self.std

    def denormalize(self, z):
        return z * self.std + self.mean

    def to_dict(self) -> dict:
        return {"paths": list(self.paths), "means": list(self.means), "stds": list(self.stds),
                "sizes": list(self.sizes)}

    @classmethod
    def from_dict(cls, data: Mapping) -> TensorNormalizer:
        try:
            normalizer = cls(tuple(data["paths"]), tuple(float(m) for m in data["means"]),
                             tuple(float(s) for s in data["stds"]),
                             tuple(int(n) for n in data["sizes"]))
        except (KeyError, TypeError, ValueError) as err:
            raise ModelError(f"malformed normaliser description: missing or bad {err}") from err
        if not len(normalizer.paths) == len(normalizer.means) == len(normalizer.stds) \
                == len(normalizer.sizes):
            raise ModelError("malformed normaliser description: paths, means, stds and sizes "
                             "differ in length")
        bad = [p for p, m, s in zip(normalizer.paths, normalizer.means, normalizer.stds)
               if not (np.isfinite(m) and np.isfinite(s) and s > 0)]
        if bad:
            raise ModelError(f"malformed normaliser description: tensors {bad} need a finite "
                             f"mean and a positive finite std")
        return normalizer


@dataclasses.dataclass(frozen=True, eq=False)
class EntryNormalizer:
    """``(w - mean) / std`` with a (mean, std) per weight, over flat vectors: for generators over
    *aligned* weights only, where one basis is fixed and no permutation symmetry remains to keep.

    Per tensor, an aligned zoo's weights spread much less around their own means than the tensor
    spreads as a whole (a tensor's std also counts how its entries' means differ): the flow's unit
    source then meets data confined to a thin shell, and every error of the generator is paid at
    the tensor's scale. Standardising each weight gives every coordinate the spread the source
    has. A weight that (nearly) never moves keeps a floor of `relative_floor` × its tensor's std,
    so that it is not blown up. Measured on the mlp-mnist1d zoo it does not help (a point lower;
    `benchmarks/flow_ablation.py`, `data+entry-norm`): an option to try, not the default.
    """

    mean: np.ndarray
    std: np.ndarray

    relative_floor = 1e-3

    @classmethod
    def fit(cls, space: WeightSpace, flat) -> EntryNormalizer:
        flat = np.asarray(flat, np.float64)
        if flat.ndim != 2 or flat.shape[1] != space.num_params:
            raise WeightSpaceError(f"expected flat weights of shape (models, "
                                   f"{space.num_params}), got {flat.shape}")
        floor = TensorNormalizer.fit(space, flat).std * cls.relative_floor
        return cls(flat.mean(0).astype(np.float32),
                   np.maximum(flat.std(0), floor).astype(np.float32))

    @classmethod
    def from_vectors(cls, space: WeightSpace, mean: np.ndarray, std: np.ndarray) -> EntryNormalizer:
        mean = np.asarray(mean, np.float32).reshape(-1)
        std = np.asarray(std, np.float32).reshape(-1)
        if mean.shape != (space.num_params,) or std.shape != mean.shape:
            raise WeightSpaceError(f"normaliser vectors of shapes {mean.shape} / {std.shape} do "
                                   f"not fit a weight space of {space.num_params} parameters")
        if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
            raise ModelError("malformed normaliser: every weight needs a finite mean and a "
                             "positive finite std")
        return cls(mean, std)

    def normalize(self, flat):
        return (flat - self.mean) / self.std

    def denormalize(self, z):
        return z * self.std + self.mean


NORMALIZERS = {"tensor": TensorNormalizer, "entry": EntryNormalizer}
