"""Save and load one model's params as safetensors, `.npz`, Flax msgpack or a PyTorch checkpoint.

Names are wsl paths (``conv_0/kernel``) in wsl layouts by default; with ``torch_layout=True`` they
are PyTorch names and layouts (``conv_0.weight``, OIHW), ready for `load_state_dict`. Loading
treats the file as untrusted: every tensor the weight space needs must be there with its shape and
a floating-point dtype, an error names the file and the tensor (and, for names that fit neither
layout, the expected JAX and PyTorch names and the names found), and tensors the weight space does
not use are reported (`extra=`), never dropped silently. Saving writes a temporary file and renames
it into place, so a file appears whole or not at all, with the mode any new file gets (umask).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO

import numpy as np

from wsl.errors import WslError
from wsl.weight_space import WeightSpace, nest_paths
from wsl.zoos.errors import MissingPathError, ModelFileError
from wsl.zoos.torch_layout import from_torch_state, name_list, to_torch_state, torch_name

FORMATS = ("safetensors", "npz", "msgpack", "torch")
_SUFFIXES = {".safetensors": "safetensors", ".npz": "npz", ".msgpack": "msgpack", ".pt": "torch",
             ".pth": "torch", ".bin": "torch"}
EXTRA_TENSORS = ("warn", "error", "ignore")


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


def write_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Call `write(file)` on a temporary file beside `path`, then rename it into place.

    The file is created by `open`, so it gets the mode every new file gets (0o666 less the
    umask); a failed write leaves nothing behind and never a half-written `path`.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as file:
            write(file)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_state_file(path: str | os.PathLike, state: Mapping[str, np.ndarray], format: str, *,
                     metadata: Mapping[str, str] | None = None) -> Path:
    """Write a flat dict of arrays as one safetensors / npz / msgpack / torch file (atomically).

    `metadata` goes into a safetensors header (other formats have no place for it); msgpack nests
    "/"-joined names as Flax does (PyTorch names have none and stay flat).
    """
    if format not in FORMATS:
        raise ModelFileError(f"unknown model format {format!r}; choose from {FORMATS}")
    state = {k: np.ascontiguousarray(v) for k, v in state.items()}
    if format == "safetensors":
        from safetensors.numpy import save

        blob = save(state, metadata=dict(metadata) if metadata else None)
        return write_atomic(path, lambda file: file.write(blob))
    if format == "npz":
        return write_atomic(path, lambda file: np.savez(file, **state))
    if format == "msgpack":
        from flax import serialization

        blob = serialization.msgpack_serialize(nest_paths(state))
        return write_atomic(path, lambda file: file.write(blob))
    from wsl.zoos.torch_pickle import write_torch_checkpoint

    name = Path(path).stem or "archive"
    return write_atomic(path, lambda file: write_torch_checkpoint(file, state, name=name))


def save_model(path: str | os.PathLike, space: WeightSpace, params, *, format: str | None = None,
               torch_layout: bool | None = None) -> Path:
    """Write one model; the torch format always uses PyTorch names and layouts.

    A suffix that names another format than `format` (``x.safetensors`` with ``format="npz"``)
    is refused: the file would lie about its contents.
    """
    path = Path(path)
    format = format or format_from_suffix(path)
    if format not in FORMATS:
        raise ModelFileError(f"unknown model format {format!r}; choose from {FORMATS}")
    implied = _SUFFIXES.get(path.suffix.lower())
    if implied is not None and implied != format:
        raise ModelFileError(f"{path}: the suffix {path.suffix} means {implied}, but the format "
                             f"is {format}; name the file for its format")
    torch_layout = format == "torch" if torch_layout is None else torch_layout
    state = _flat_state(space, params, torch_layout or format == "torch")
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"layout": "torch" if torch_layout else "jax"} if format == "safetensors" else None
    return write_state_file(path, state, format, metadata=metadata)


def _read_state(path: Path, format: str) -> dict[str, np.ndarray]:
    try:
        if format == "safetensors":
            from safetensors.numpy import load_file

            return dict(load_file(str(path)))
        if format == "npz":
            with np.load(path, allow_pickle=False) as data:
                if not hasattr(data, "files"):
                    raise ModelFileError(f"{path}: a single .npy array, not an .npz archive of "
                                         "named tensors")
                return {k: data[k] for k in data.files}
        if format == "msgpack":
            from flax import serialization

            tree = serialization.msgpack_restore(path.read_bytes())
            if not isinstance(tree, dict):
                raise ModelFileError(f"{path}: expected a msgpack tree of named tensors, got "
                                     f"{type(tree).__name__}")
            flat = {}

            def walk(node, prefix):
                for key, value in node.items():
                    if isinstance(value, dict):
                        walk(value, prefix + (str(key),))
                    else:
                        flat["/".join(prefix + (str(key),))] = np.asarray(value)

            walk(tree, ())
            return flat
        from wsl.zoos.torch_pickle import load_torch_checkpoint

        state = load_torch_checkpoint(path)
        if not isinstance(state, dict):
            raise ModelFileError(f"{path}: expected a state dict, got {type(state).__name__}")
        return {str(k): (v if isinstance(v, np.ndarray) else np.asarray(v, dtype=object))
                for k, v in state.items()}
    except WslError:
        raise
    except (PermissionError, IsADirectoryError):
        raise  # the OS error names the file and the cause
    except Exception as err:  # numpy, safetensors and msgpack raise their own error types
        raise ModelFileError(f"{path}: cannot read as {format} "
                             f"({type(err).__name__}: {err})") from err


def _floating(path: Path, name: str, value: np.ndarray) -> np.ndarray:
    if not np.issubdtype(value.dtype, np.floating):
        raise ModelFileError(f"{path}: tensor {name!r} has dtype {value.dtype}; model weights must "
                             "be floating point (float16, float32 or float64)")
    return value


def read_model(path: str | os.PathLike, space: WeightSpace, *,
               format: str | None = None) -> tuple[dict, list[str]]:
    """One model's params, and the names of the file's tensors the weight space does not use.

    JAX names (``dense_0/kernel``, wsl layouts) and PyTorch names (``dense_0.weight``, PyTorch
    layouts) are both recognised; every tensor used must be floating point.
    """
    path = Path(path)
    if not path.is_file():
        if path.exists():
            raise ModelFileError(f"{path}: not a file")
        raise MissingPathError(f"{path}: no such model file")
    state = _read_state(path, format or format_from_suffix(path))
    jax_names = [t.path for t in space.tensors]
    torch_names = [torch_name(p) for p in jax_names]
    if all(n in state for n in jax_names):
        flat = {}
        for t in space.tensors:
            value = _floating(path, t.path, state[t.path])
            if value.shape != t.shape:
                raise ModelFileError(f"{path}: {t.path} has shape {value.shape}, "
                                     f"expected {t.shape}")
            flat[t.path] = value
        params, used = nest_paths(flat), set(jax_names)
    elif all(n in state for n in torch_names):
        for name in torch_names:
            _floating(path, name, state[name])
        try:
            params = from_torch_state(space, state)
        except ModelFileError as err:
            raise ModelFileError(f"{path}: {err}") from None
        used = set(torch_names)
    else:
        missing_jax = [n for n in jax_names if n not in state]
        missing_torch = [n for n in torch_names if n not in state]
        closer = min(("JAX", missing_jax), ("PyTorch", missing_torch), key=lambda m: len(m[1]))
        raise ModelFileError(
            f"{path}: the tensor names fit neither layout of the weight space; expected the JAX "
            f"names {name_list(jax_names)} or the PyTorch names {name_list(torch_names)}, found "
            f"{name_list(state)} ({closer[0]} names missing: {name_list(closer[1])})")
    return params, [k for k in state if k not in used]


def load_model(path: str | os.PathLike, space: WeightSpace, *, format: str | None = None,
               extra: str = "warn"):
    """Read one model's params; wsl or PyTorch names are both recognised.

    Tensors in the file that the weight space does not use are reported: ``extra="warn"`` (a
    warning naming them), ``"error"`` (a `ModelFileError`) or ``"ignore"``.
    """
    if extra not in EXTRA_TENSORS:
        raise ModelFileError(f"extra={extra!r}; choose from {EXTRA_TENSORS}")
    params, extras = read_model(path, space, format=format)
    if extras and extra != "ignore":
        message = (f"{path}: {len(extras)} tensors are not in the weight space: "
                   f"{name_list(extras)}")
        if extra == "error":
            raise ModelFileError(message)
        warnings.warn(message + "; they are ignored", stacklevel=2)
    return params
