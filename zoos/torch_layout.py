"""Convert one model's params between wsl (Flax) layouts and PyTorch names and layouts.

Flax keeps conv kernels HWIO and dense kernels (in, out); PyTorch keeps conv weights OIHW and
linear weights (out, in). A dense kernel over a flattened feature map (CNN-s's first dense layer
keeps its (H, W, C, out) shape so that channel permutations act on one axis) becomes PyTorch's
(out, C·H·W), flattened in NCHW order as `torch.flatten` does.

Names: the path ``conv_0/kernel`` becomes ``conv_0.weight``; ``*/bias`` stays ``bias``; a norm's
``scale`` becomes ``weight``. The kind of a kernel is read from its module name: names starting
with ``dense`` / ``head`` / ``embed`` (or containing ``mlp``) are linear, the others with a 4-D
kernel convolutions.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping

import numpy as np

from wsl.weight_space import WeightSpace, nest_paths
from wsl.zoos.errors import ModelFileError

_LINEAR_PREFIXES = ("dense", "head", "embed")


def _is_linear(path: str) -> bool:
    module = path.split("/")[-2] if "/" in path else ""
    return module.startswith(_LINEAR_PREFIXES) or "mlp" in module


def torch_name(path: str) -> str:
    *modules, leaf = path.split("/")
    leaf = {"kernel": "weight", "scale": "weight"}.get(leaf, leaf)
    return ".".join(modules + [leaf])


def _kernel_to_torch(path: str, kernel: np.ndarray) -> np.ndarray:
    if kernel.ndim == 2:
        return kernel.T
    if _is_linear(path):  # (H, W, C, out) → (out, C·H·W), NCHW flatten order
        out = kernel.shape[-1]
        axes = (kernel.ndim - 1, kernel.ndim - 2) + tuple(range(kernel.ndim - 2))
        return np.transpose(kernel, axes).reshape(out, -1)
    if kernel.ndim == 4:
        return np.transpose(kernel, (3, 2, 0, 1))
    raise ModelFileError(f"{path}: no PyTorch layout for a {kernel.ndim}-D kernel")


def _kernel_from_torch(path: str, weight: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if len(shape) == 2:
        return weight.T
    if _is_linear(path):
        spatial, channels, out = shape[:-2], shape[-2], shape[-1]
        chw = weight.reshape((out, channels) + tuple(spatial))
        return np.transpose(chw, tuple(range(2, 2 + len(spatial))) + (1, 0))
    if len(shape) == 4:
        return np.transpose(weight, (2, 3, 1, 0))
    raise ModelFileError(f"{path}: no PyTorch layout for a {len(shape)}-D kernel")


def to_torch_state(space: WeightSpace, params) -> collections.OrderedDict:
    """One model's params as a PyTorch-style state dict of numpy arrays (in weight-space order)."""
    state = collections.OrderedDict()
    for path, value in space.as_flat_dict(params).items():
        value = np.asarray(value)
        state[torch_name(path)] = (_kernel_to_torch(path, value)
                                   if path.endswith("/kernel") else value)
    return state


def from_torch_state(space: WeightSpace, state: Mapping[str, np.ndarray]) -> dict:
    """Inverse of `to_torch_state`: errors name the missing key or the tensor of the wrong shape."""
    flat = {}
    for t in space.tensors:
        name = torch_name(t.path)
        if name not in state:
            raise KeyError(f"state dict has no {name!r} (for {t.path}); keys: {list(state)}")
        value = np.asarray(state[name])
        expected = _kernel_to_torch(t.path, np.zeros(t.shape)).shape if t.path.endswith(
            "/kernel") else t.shape
        if value.shape != tuple(expected):
            raise ModelFileError(f"{name}: shape {value.shape}, expected {tuple(expected)} "
                                 f"for {t.path}")
        flat[t.path] = (_kernel_from_torch(t.path, value, t.shape)
                        if t.path.endswith("/kernel") else value)
    return nest_paths(flat)
