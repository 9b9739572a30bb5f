"""Per-tensor normalisation of flat weight vectors, fitted on a training population.

Weights of different tensors live on very different scales (a bias vs a 3×3 kernel); generators
and encoders see each tensor standardised by its own mean and std over the training population.
The statistics are stored with the model that uses them (`to_dict` / `from_dict`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from wsl.weight_space import WeightSpace


@dataclasses.dataclass(frozen=True, eq=False)
class TensorNormalizer:
    """Per-entry mean and std vectors, constant within each tensor."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, space: WeightSpace, flat: np.ndarray, min_std: float = 1e-6) -> TensorNormalizer:
        flat = np.asarray(flat, np.float64)
        if flat.ndim != 2 or flat.shape[1] != space.num_params:
            raise ValueError(f"expected (models, {space.num_params}) weights, got {flat.shape}")
        mean, std = np.empty(space.num_params), np.empty(space.num_params)
        for start, end in space.offsets.values():
            block = flat[:, start:end]
            mean[start:end] = block.mean()
            std[start:end] = max(block.std(), min_std)
        return cls(mean.astype(np.float32), std.astype(np.float32))

    def normalize(self, flat):
        return (flat - self.mean) / self.std

    def denormalize(self, z):
        return z * self.std + self.mean

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> TensorNormalizer:
        return cls(np.asarray(data["mean"], np.float32), np.asarray(data["std"], np.float32))
