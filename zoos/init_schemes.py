"""Initial weights of a population, drawn on the host from (base seed, model seed) per scheme."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

from wsl.weight_space import nest_paths
from wsl.zoos.architectures import Architecture
from wsl.zoos.errors import PopulationError

INITS = ("default", "normal", "truncated_normal", "uniform", "kaiming_normal", "kaiming_uniform")


def _truncated_normal(rng: np.random.Generator, shape) -> np.ndarray:
    """Standard normal truncated to ±2, rescaled to unit variance (as in Keras / flax)."""
    x = rng.standard_normal(shape)
    while (bad := np.abs(x) > 2).any():
        x[bad] = rng.standard_normal(int(bad.sum()))
    return x / 0.87962566


def initial_population(arch: Architecture, seeds: Sequence[int], schemes: Sequence[str],
                    scales: Sequence[float], biases: Sequence[float], base_seed: int = 0) -> dict:
    """Initial params of a population, one model per seed, drawn on the host.

    Kernels follow the model's scheme (see INITS; ``default`` is LeCun normal, flax's default for
    Dense and Conv: truncated normal with std 1/sqrt(fan_in), times `scale`); biases are the
    constant `bias`. Other tensors (norm scales, embeddings) get the architecture's own init.
    Drawn with numpy from (base_seed, seed): no compilation, and the same on any device count.
    """
    space = arch.weight_space
    others = [t for t in space.tensors if t.path.rsplit("/", 1)[-1] not in ("kernel", "bias")]
    out = {t.path: np.empty((len(seeds),) + t.shape, np.float32) for t in space.tensors}
    if others:
        keys = jax.random.wrap_key_data(np.stack([model_key_data(base_seed, s, 0) for s in seeds]))
        native = space.as_flat_dict(jax.jit(jax.vmap(arch.init))(keys))
        for t in others:
            out[t.path][:] = np.asarray(native[t.path])
    for m, (seed, scheme, scale, bias) in enumerate(zip(seeds, schemes, scales, biases)):
        rng = np.random.default_rng([base_seed % 2**63, int(seed) % 2**63, 1])
        for t in space.tensors:
            leaf = t.path.rsplit("/", 1)[-1]
            if leaf == "bias":
                out[t.path][m] = bias
            elif leaf == "kernel":
                fan_in = max(int(np.prod(t.shape[:-1])), 1)
                out[t.path][m] = _draw_kernel(rng, str(scheme), t.shape, fan_in) * scale
    return nest_paths(out)


def _draw_kernel(rng: np.random.Generator, scheme: str, shape, fan_in: int) -> np.ndarray:
    if scheme == "default":
        return _truncated_normal(rng, shape) / np.sqrt(fan_in)
    if scheme == "normal":
        return rng.standard_normal(shape)
    if scheme == "truncated_normal":
        return _truncated_normal(rng, shape)
    if scheme == "uniform":
        return rng.uniform(-np.sqrt(3.0), np.sqrt(3.0), shape)  # unit variance
    if scheme == "kaiming_normal":
        return rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
    if scheme == "kaiming_uniform":
        return rng.uniform(-1.0, 1.0, shape) * np.sqrt(6.0 / fan_in)
    raise PopulationError(f"unknown init scheme {scheme!r}; choose from {list(INITS)}")


def model_key_data(base_seed: int, seed: int, stream: int) -> np.ndarray:
    """Raw threefry key data for (base seed, model seed, stream), derived on the host."""
    rng = np.random.default_rng([base_seed % 2**63, int(seed) % 2**63, 2, stream])
    return rng.integers(0, 2**32, size=2, dtype=np.uint32)
