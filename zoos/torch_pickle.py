"""Read PyTorch zip checkpoints (`torch.save`) into numpy without importing torch, safely.

A `torch.save` file is a zip archive holding `<name>/data.pkl` (a pickle whose tensors refer to
storages by persistent id) and one raw little-endian blob per storage under `<name>/data/<key>`.
Unpickling arbitrary files can run arbitrary code, so the unpickler here resolves only the
globals that rebuild tensors and ordered dicts; any other global is refused before it is called.
Every size, offset and stride the pickle names is checked against its storage before a tensor is
viewed, and any damage surfaces as a `ModelFileError` naming the file.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile
from typing import Any

import numpy as np

from wsl.errors import WslError
from wsl.zoos.errors import ModelFileError

# Storage class names → numpy dtypes (torch's legacy typed storages; bfloat16 has no numpy dtype).
_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class UnsafeCheckpointError(ModelFileError, pickle.UnpicklingError):
    """The checkpoint's pickle asks for a global outside the tensor-rebuild allowlist."""


class _DamagedTensor(ModelFileError):
    """A tensor record that does not fit its storage (named with the file by the loader)."""


def _dims(values, what: str) -> tuple[int, ...]:
    if not isinstance(values, (tuple, list)) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise _DamagedTensor(f"tensor {what} {values!r} is not a tuple of non-negative integers")
    return tuple(values)


class _StorageType:
    def __init__(self, name: str):
        self.name = name


def _rebuild_tensor(storage, offset, size, stride, *_ignored):
    """torch._utils._rebuild_tensor_v2 for numpy: a strided view of the storage, copied out.

    The view must lie inside the storage: a hostile size or stride would otherwise read memory
    beyond it."""
    if not isinstance(storage, np.ndarray) or storage.ndim != 1:
        raise _DamagedTensor(f"tensor storage is a {type(storage).__name__}, not a storage")
    size, stride = _dims(size, "size"), _dims(stride, "stride")
    (offset,) = _dims((offset,), "offset")
    if len(size) != len(stride):
        raise _DamagedTensor(f"tensor size {size} and stride {stride} differ in length")
    if 0 in size:
        return np.zeros(size, storage.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.size:
        raise _DamagedTensor(f"tensor of size {size}, stride {stride} at offset {offset} reaches "
                             f"element {last} of a storage of {storage.size}")
    itemsize = storage.dtype.itemsize
    if not size:
        return storage[offset:offset + 1].reshape(()).copy()
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride))
    return np.array(view)


def _rebuild_parameter(data, *_ignored):
    return data


def _ordered_dict(*args):
    return collections.OrderedDict(*args)


_ALLOWED = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, source: str):
        super().__init__(file)
        self._archive, self._prefix, self._source = archive, prefix, source
        self._storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise UnsafeCheckpointError(
            f"{self._source}: refusing to load global {module}.{name}; only tensors, "
            f"parameters and ordered dicts are allowed in a checkpoint")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage" and len(pid) >= 5):
            raise UnsafeCheckpointError(f"{self._source}: unexpected persistent id {pid!r}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise UnsafeCheckpointError(f"{self._source}: unsupported storage {storage_type!r}")
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise ModelFileError(f"{self._source}: storage record {pid[1:5]!r} is malformed")
        if key not in self._storages:
            dtype = np.dtype(_STORAGE_DTYPES[storage_type.name]).newbyteorder("<")
            name = f"{self._prefix}data/{key}"
            try:
                info = self._archive.getinfo(name)
            except KeyError:
                raise ModelFileError(f"{self._source}: storage {key} is missing "
                                     "from the archive") from None
            if info.file_size < numel * dtype.itemsize:
                raise ModelFileError(f"{self._source}: storage {key} is truncated "
                                     f"({info.file_size} bytes for {numel} × {dtype})")
            with self._archive.open(info) as file:  # never more than the storage needs
                raw = file.read(numel * dtype.itemsize)
            if len(raw) < numel * dtype.itemsize:
                raise ModelFileError(f"{self._source}: storage {key} is truncated "
                                 f"({len(raw)} bytes for {numel} × {dtype})")
            self._storages[key] = np.frombuffer(raw, dtype, count=numel).astype(
                dtype.newbyteorder("="))
        return self._storages[key]


def load_torch_checkpoint(path: str | os.PathLike) -> Any:
    """The object a `torch.save` zip file holds, with every tensor as a numpy array.

    Raises `UnsafeCheckpointError` for any global outside the allowlist (nothing is executed),
    and `ModelFileError` naming the file for non-zip (legacy) files and damaged archives.
    """
    source = os.fspath(path)
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, EOFError, ValueError):
        raise ModelFileError(f"{source}: not a PyTorch zip checkpoint (legacy torch.save files "
                             "from before torch 1.6 are not supported; re-save them with a "
                             "recent torch)") from None
    except OSError as err:
        if err.filename or isinstance(err, (PermissionError, IsADirectoryError)):
            raise  # the OS error names the file and the cause
        raise ModelFileError(f"{source}: cannot read as a zip archive ({err})") from None
    with archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
        if len(pickles) != 1:
            raise ModelFileError(f"{source}: expected one data.pkl in the archive, found {pickles}")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = f"{prefix}byteorder"
        if byteorder in archive.namelist() and archive.read(byteorder).strip() != b"little":
            raise ModelFileError(f"{source}: big-endian checkpoints are not supported")
        try:
            with archive.open(pickles[0]) as file:
                return _RestrictedUnpickler(file, archive, prefix, source).load()
        except _DamagedTensor as err:
            raise ModelFileError(f"{source}: damaged checkpoint ({err})") from None
        except WslError:
            raise
        except (MemoryError, RecursionError) as err:
            raise ModelFileError(f"{source}: damaged checkpoint ({type(err).__name__})") from None
        except Exception as err:  # pickle opcodes of hostile or damaged files raise many types
            raise ModelFileError(f"{source}: damaged checkpoint "
                                 f"({type(err).__name__}: {err})") from err


class _Global:
    """A reference to module.name that pickles as a GLOBAL opcode without importing the module."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name


class _Storage:
    def __init__(self, type_name: str, key: str, numel: int):
        self.type_name, self.key, self.numel = type_name, key, numel


class _Tensor:
    def __init__(self, storage: _Storage, shape: tuple[int, ...], stride: tuple[int, ...]):
        self.storage, self.shape, self.stride = storage, shape, stride


class _TorchLikePickler(pickle._Pickler):  # the pure-Python pickler: its dispatch table is open
    dispatch = dict(pickle._Pickler.dispatch)

    def _save_global(self, obj: _Global):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())

    def _save_tensor(self, obj: _Tensor):
        # save_reduce insists on a callable; write the REDUCE opcodes by hand instead.
        self.save(_Global("torch._utils", "_rebuild_tensor_v2"))
        self.save((obj.storage, 0, obj.shape, obj.stride, False, collections.OrderedDict()))
        self.write(pickle.REDUCE)

    dispatch[_Global] = _save_global
    dispatch[_Tensor] = _save_tensor

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", _Global("torch", obj.type_name), obj.key, "cpu", obj.numel)
        return None


def write_torch_checkpoint(path, state: dict[str, np.ndarray], *, name: str | None = None) -> None:
    """Write a flat dict of arrays in `torch.save`'s zip layout, without torch.

    `path` is a file name or a binary file open for writing; `name` is the archive's top folder
    (default: the file's stem). Used for test fixtures and to hand weights to PyTorch users:
    `torch.load` reads it back.
    """
    type_names = {np.dtype(v): k for k, v in _STORAGE_DTYPES.items()}
    if name is None:
        name = (os.path.splitext(os.path.basename(os.fspath(path)))[0]
                if isinstance(path, (str, os.PathLike)) else "") or "archive"
    blobs, tensors = {}, collections.OrderedDict()
    for i, (key, value) in enumerate(state.items()):
        array = np.require(np.asarray(value), requirements="C")  # keeps 0-d arrays 0-d
        if array.dtype not in type_names:
            raise ModelFileError(f"tensor {key!r}: dtype {array.dtype} has no PyTorch storage type")
        stride, step = [], 1
        for dim in reversed(array.shape):
            stride.insert(0, step)
            step *= dim
        storage = _Storage(type_names[array.dtype], str(i), array.size)
        tensors[key] = _Tensor(storage, tuple(array.shape), tuple(stride))
        blobs[str(i)] = array.astype(array.dtype.newbyteorder("<")).tobytes()
    buffer = io.BytesIO()
    _TorchLikePickler(buffer, protocol=2).dump(tensors)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{name}/data.pkl", buffer.getvalue())
        archive.writestr(f"{name}/byteorder", "little")
        for key, blob in blobs.items():
            archive.writestr(f"{name}/data/{key}", blob)
        archive.writestr(f"{name}/version", "3\n")
