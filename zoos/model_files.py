"""Save and load one model's params as safetensors, `.npz`, Flax msgpack or a PyTorch checkpoint.

Names are wsl paths (``conv_0/kernel``) in wsl layouts by default; with ``torch_layout=True`` they
are PyTorch names and layouts (``conv_0.weight``, OIHW), ready for `load_state_dict`. Loading
checks every tensor against the weight space and names the one that does not fit.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from wsl.weight_space import WeightSpace, nest_paths
from wsl.zoos.errors import ModelFileError
from wsl.zoos.torch_layout import from_torch_state, to_torch_state

FORMATS = ("safetensors", "npz", "msgpack", "torch")
_SUFFIXES = {".safetensors": "safetensors", ".npz": "npz", ".msgpack": "msgpack", ".pt": "torch",
             ".pth": "torch", ".bin": "torch"}


def format_from_suffix(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIXES:
        raise ModelFileError(f"{path}: cannot tell the format from the suffix {suffix!r}; "
                             f"use one of {sorted(_SUFFIXES)} "
                             f"or name the format ({', '.join(FORMATS)})")
    return _SUFFIXES[suffix]


def _flat_state(space: WeightSpace, params, torch_layout: bool) -> dict[str, np.ndarray]:
    if torch_layout:
        return dict(to_torch_state(space, params))
    return {path: np.asarray(value) for path, value in space.as_flat_dict(params).items()}


def save_model(path: str | os.PathLike, space: WeightSpace, params, *, format: str | None = None,
               torch_layout: bool | None = None) -> Path:
    """Write one model; the torch format always uses PyTorch names and layouts."""
    path = Path(path)
    format = format or format_from_suffix(path)
    if format not in FORMATS:
        raise ModelFileError(f"unknown model format {format!r}; choose from {FORMATS}")
    torch_layout = format == "torch" if torch_layout is None else torch_layout
    state = _flat_state(space, params, torch_layout or format == "torch")
    path.parent.mkdir(parents=True, exist_ok=True)
    if format == "safetensors":
        from safetensors.numpy import save_file

        save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(path),
                  metadata={"layout": "torch" if torch_layout else "wsl"})
    elif format == "npz":
        np.savez(path, **state)
    elif format == "msgpack":
        from flax import serialization

        path.write_bytes(serialization.msgpack_serialize(
            nest_paths(state) if not torch_layout else dict(state)))
    else:
        from wsl.zoos.torch_pickle import write_torch_checkpoint

        write_torch_checkpoint(path, state)
    return path


def _read_state(path: Path, format: str) -> dict[str, np.ndarray]:
    try:
        if format == "safetensors":
            from safetensors.numpy import load_file

            return dict(load_file(str(path)))
        if format == "npz":
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        if format == "msgpack":
            from flax import serialization

            tree = serialization.msgpack_restore(path.read_bytes())
            flat = {}

            def walk(node, prefix):
                for key, value in node.items():
                    if isinstance(value, dict):
                        walk(value, prefix + (key,))
                    else:
                        flat["/".join(prefix + (key,))] = np.asarray(value)

            walk(tree, ())
            return flat
        from wsl.zoos.torch_pickle import load_torch_checkpoint

        state = load_torch_checkpoint(path)
        if not isinstance(state, dict):
            raise ModelFileError(f"{path}: expected a state dict, got {type(state).__name__}")
        return {k: np.asarray(v) for k, v in state.items()}
    except FileNotFoundError:
        raise
    except (ValueError, OSError, KeyError, TypeError) as err:
        if str(path) in str(err):
            raise
        raise ModelFileError(f"{path}: cannot read as {format} ({err})") from err
    except Exception as err:  # safetensors and msgpack raise their own error types
        raise ModelFileError(f"{path}: cannot read as {format} "
                             f"({type(err).__name__}: {err})") from err


def load_model(path: str | os.PathLike, space: WeightSpace, *, format: str | None = None):
    """Read one model's params; wsl or PyTorch names are both recognised."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such model file")
    state = _read_state(path, format or format_from_suffix(path))
    if all(t.path in state for t in space.tensors):
        flat = {}
        for t in space.tensors:
            value = np.asarray(state[t.path])
            if value.shape != t.shape:
                raise ModelFileError(f"{path}: {t.path} has shape {value.shape}, "
                                     f"expected {t.shape}")
            flat[t.path] = value
        return nest_paths(flat)
    try:
        return from_torch_state(space, state)
    except (KeyError, ValueError) as err:
        raise ModelFileError(f"{path}: tensors do not match the weight space ({err})") from None
