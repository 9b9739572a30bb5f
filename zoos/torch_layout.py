"""Convert one model's params between wsl (Flax) layouts and PyTorch names and layouts.

Flax keeps conv kernels HWIO and dense kernels (in, out); PyTorch keeps conv weights OIHW and
linear weights (out, in). A dense kernel over a flattened feature map (CNN-s's first dense layer
keeps its (H, W, C, out) shape so that channel permutations act on one axis) becomes PyTorch's
(out, C·H·W), flattened in NCHW order as `torch.flatten` does.

Names: the path ``conv_0/kernel`` becomes ``conv_0.weight``; ``*/bias`` stays ``bias``; a norm's
``scale`` becomes ``weight``. The kind of a kernel is read from its module name: names starting
with ``dense`` / ``head`` / ``embed`` (or containing ``mlp``) are linear, the others with a 4-D
kernel convolutions.

Multi-head attention (the transformer's ``*attention/{query,key,value,out}``) keeps Flax's
DenseGeneral shapes in JAX — query/key/value kernels (dim, heads, head_dim) with (heads, head_dim)
biases, the out kernel (heads, head_dim, dim) — and becomes four PyTorch linear layers whose
features are flattened head-major as `torch.nn.MultiheadAttention` splits them: weights
(heads·head_dim, dim) and (dim, heads·head_dim), biases (heads·head_dim,).
"""

from __future__ import annotations

import collections
from collections.abc import Mapping

import numpy as np

from wsl.weight_space import WeightSpace, nest_paths
from wsl.zoos.errors import ModelFileError, TensorNameError

_LINEAR_PREFIXES = ("dense", "head", "embed")


def _is_linear(path: str) -> bool:
    module = path.split("/")[-2] if "/" in path else ""
    return module.startswith(_LINEAR_PREFIXES) or "mlp" in module


def name_list(names, limit: int = 12) -> str:
    """Names for an error message, at most `limit` of them (a file may hold thousands)."""
    names = [str(n) for n in names]
    shown = ", ".join(names[:limit])
    return f"[{shown}{f', ... ({len(names) - limit} more)' if len(names) > limit else ''}]"


def torch_name(path: str) -> str:
    *modules, leaf = path.split("/")
    leaf = {"kernel": "weight", "scale": "weight"}.get(leaf, leaf)
    return ".".join(modules + [leaf])


def _attention_projection(path: str) -> str | None:
    """'in' for an attention's query/key/value tensor, 'out' for its out projection, else None."""
    parts = path.split("/")
    if len(parts) < 3 or "attention" not in parts[-3]:
        return None
    return {"query": "in", "key": "in", "value": "in", "out": "out"}.get(parts[-2])


def _to_torch(path: str, value: np.ndarray) -> np.ndarray:
    if path.endswith("/kernel"):
        return _kernel_to_torch(path, value)
    if path.endswith("/bias") and _attention_projection(path) == "in":
        return value.reshape(-1)  # (heads, head_dim) → heads·head_dim, head-major
    return value


def _torch_shape(path: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The PyTorch shape of the tensor at `path` whose wsl shape is `shape`."""
    return tuple(_to_torch(path, np.zeros(shape, np.float32)).shape)


def _from_torch(path: str, value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if path.endswith("/kernel"):
        return _kernel_from_torch(path, value, shape)
    return value.reshape(shape)  # only attention biases change shape; the others keep it


def _kernel_to_torch(path: str, kernel: np.ndarray) -> np.ndarray:
    projection = _attention_projection(path)
    if projection == "in" and kernel.ndim == 3:  # (dim, heads, head_dim) → (heads·head_dim, dim)
        return kernel.reshape(kernel.shape[0], -1).T
    if projection == "out" and kernel.ndim == 3:  # (heads, head_dim, dim) → (dim, heads·head_dim)
        return kernel.reshape(-1, kernel.shape[-1]).T
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
    if _attention_projection(path) is not None and len(shape) == 3:
        return weight.T.reshape(shape)  # both projections: the transpose restores Flax's order
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
        state[torch_name(path)] = _to_torch(path, value)
    return state


def from_torch_state(space: WeightSpace, state: Mapping[str, np.ndarray]) -> dict:
    """Inverse of `to_torch_state`: errors name the missing key or the tensor of the wrong shape."""
    flat = {}
    for t in space.tensors:
        name = torch_name(t.path)
        if name not in state:
            raise TensorNameError(f"state dict has no {name!r} (for {t.path}); "
                                  f"keys: {name_list(state)}")
        value = np.asarray(state[name])
        expected = _torch_shape(t.path, t.shape)
        if value.shape != expected:
            raise ModelFileError(f"{name}: shape {value.shape}, expected {expected} "
                                 f"for {t.path}")
        flat[t.path] = _from_torch(t.path, value, t.shape)
    return nest_paths(flat)
