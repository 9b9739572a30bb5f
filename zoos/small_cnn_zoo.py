"""Read the Small CNN Zoo (Unterthiner et al. 2020) in place: weights.npy, metrics.csv(.gz),
layout.csv.

The zoo stores one flat TensorFlow-ordered vector per (model, checkpoint) row. `layout.csv` is the
authority on where each variable lives (`varname,start_idx,end_idx,...,shape`): variables are
grouped by layer (`sequential/conv2d_1/kernel:0` → layer `conv2d_1`), layers ordered by where they
start, and mapped in that order onto SmallCNN's tensors. TensorFlow's conv kernels are HWIO and
dense kernels (in, out), the same layouts as Flax, so only the order of entries changes.

`weights.npy` is read lazily: its header is parsed once and a batch reads only its own rows.
Every file is untrusted input: the layout's ranges must tile a weights row exactly (no overlap, no
gap, sizes matching shapes), numeric metric columns must hold numbers, and every error names the
file, line or column at fault. `metrics["diverged"]` here comes from the losses only (scanning the
weights would read the whole file); `wsl.zoos.importers` also flags rows with non-finite weights.
"""

from __future__ import annotations

import csv
import gzip
import os
import re
from pathlib import Path

import numpy as np

from wsl.zoos.architectures import Architecture, build
from wsl.zoos.errors import MissingPathError, ZooError

# Small CNN Zoo metric columns → wsl zoo columns.
COLUMN_MAP = {
    "step": "epoch", "test_accuracy": "test_acc", "test_loss": "test_loss",
    "train_accuracy": "train_acc", "train_loss": "train_loss",
    "config.learning_rate": "lr", "config.l2reg": "weight_decay", "config.dropout": "dropout",
    "config.init_std": "init_scale", "config.train_fraction": "train_fraction",
    "config.optimizer": "optimizer", "config.activation": "activation",
    "config.w_init": "w_init", "config.b_init": "b_init", "config.random_seed": "seed",
    "config.dataset": "dataset", "modeldir": "modeldir",
}
# Columns that must hold numbers (an empty field is a missing value, NaN).
NUMERIC_COLUMNS = ("step", "test_accuracy", "test_loss", "train_accuracy", "train_loss",
                   "config.learning_rate", "config.l2reg", "config.dropout", "config.init_std",
                   "config.train_fraction")
_SPATIAL = {"mnist": 28, "fashion_mnist": 28, "cifar10": 32, "svhn_cropped": 32, "svhn": 32}


def _read_table(path: Path) -> dict[str, list[str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", newline="") as file:
            reader = csv.reader(file)
            header = next(reader)
            rows = list(reader)
    except (OSError, EOFError, StopIteration, csv.Error, UnicodeDecodeError) as err:
        raise ZooError(f"{path}: cannot read CSV table ({err or 'empty file'})") from err
    for i, row in enumerate(rows):
        if len(row) != len(header):
            raise ZooError(f"{path}: line {i + 2} has {len(row)} fields, header has {len(header)}")
    return {name: [row[j] for row in rows] for j, name in enumerate(header)}


def _column(values: list[str]) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np.float64)
    except ValueError:
        return np.asarray(values, dtype=str)


def _numeric_column(values: list[str], path: Path, name: str) -> np.ndarray:
    """A column that must hold numbers; the first field that does not is named by row and line."""
    try:
        return np.asarray(values, dtype=np.float64)
    except ValueError:
        pass
    out = np.empty(len(values), np.float64)
    for i, text in enumerate(values):
        try:
            out[i] = float(text) if text.strip() else np.nan
        except ValueError:
            raise ZooError(f"{path}: column {name!r}, row {i + 1} (line {i + 2}) holds {text!r}, "
                           "not a number") from None
    return out


def _parse_shape(text: str, path: Path, varname: str) -> tuple[int, ...]:
    dims = re.findall(r"-?\d+", text)
    if not dims:
        raise ZooError(f"{path}: variable {varname!r} has an unreadable shape {text!r}")
    shape = tuple(int(d) for d in dims)
    if any(d <= 0 for d in shape):
        raise ZooError(f"{path}: variable {varname!r} has shape {shape}; every size must be "
                       "positive")
    return shape


def _parse_index(text: str, path: Path, line: int, column: str) -> int:
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not value.is_integer() or value < 0:
        raise ZooError(f"{path}: line {line}: {column} {text!r} is not a non-negative integer")
    return int(value)


def _check_tiling(ranges: list[tuple[int, int, str]], width: int, path: Path) -> None:
    """The layout's [start, end) ranges must cover 0..width once each: no overlap, no gap."""
    ordered = sorted(ranges)
    reach, owner = 0, None  # the furthest end so far, and whose it is
    for start, end, name in ordered:
        if start < reach:
            raise ZooError(f"{path}: variable {name!r} [{start}, {end}) overlaps {owner!r} "
                           f"(which reaches {reach}); ranges must not overlap")
        reach, owner = end, name
    covered = 0
    for start, end, name in ordered:
        if start > covered:
            raise ZooError(f"{path}: entries [{covered}, {start}) of a weights row belong to no "
                           f"variable (a gap before {name!r}); ranges must tile the row")
        covered = end
    if covered != width:
        raise ZooError(f"{path}: layout covers {covered} entries per row but weights.npy rows "
                       f"have {width}")


class SmallCNNZoo:
    """A Small CNN Zoo directory, read lazily, mapped onto `small_cnn`'s weight space."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        if not self.directory.exists():
            raise MissingPathError(f"{self.directory}: the Small CNN Zoo source directory does "
                                   "not exist")
        if not self.directory.is_dir():
            raise ZooError(f"{self.directory}: not a directory (a Small CNN Zoo is a folder of "
                           "weights.npy, metrics.csv[.gz] and layout.csv)")
        weights_path = self.directory / "weights.npy"
        metrics_path = next((self.directory / n for n in ("metrics.csv.gz", "metrics.csv")
                             if (self.directory / n).exists()), None)
        layout_path = self.directory / "layout.csv"
        for path, what in ((weights_path, "weights.npy"), (metrics_path, "metrics.csv[.gz]"),
                           (layout_path, "layout.csv")):
            if path is None or not path.exists():
                raise MissingPathError(f"{self.directory}: missing {what} (a Small CNN Zoo needs "
                                        f"weights.npy, metrics.csv or metrics.csv.gz, layout.csv)")
        try:
            # The memory map gives shape, dtype and data offset; rows themselves are read with
            # pread (see `flat`), so that only the rows asked for ever become resident.
            self.weights = np.load(weights_path, mmap_mode="r")
        except (ValueError, OSError) as err:
            raise ZooError(f"{weights_path}: not a readable .npy array ({err})") from err
        self._weights_path = weights_path
        if self.weights.ndim != 2:
            raise ZooError(f"{weights_path}: expected a 2-D (rows, params) array, "
                             f"got shape {self.weights.shape}")
        if not np.issubdtype(self.weights.dtype, np.floating):
            raise ZooError(f"{weights_path}: holds {self.weights.dtype} values; weights must be "
                           "floating point")
        self.raw_metrics = {k: (_numeric_column(v, metrics_path, k) if k in NUMERIC_COLUMNS
                                else _column(v))
                            for k, v in _read_table(metrics_path).items()}
        num_rows = len(next(iter(self.raw_metrics.values()), []))
        if num_rows != self.weights.shape[0]:
            raise ZooError(f"{metrics_path}: {num_rows} metric rows but {weights_path} has "
                             f"{self.weights.shape[0]} weight rows")
        self.architecture, self._index = self._map_layout(layout_path)
        self._metrics_path = metrics_path
        self.metrics = self._map_metrics()

    def __len__(self) -> int:
        return self.weights.shape[0]

    # -------------------------------------------------------------------------------- layout
    def _map_layout(self, path: Path) -> tuple[Architecture, np.ndarray]:
        table = _read_table(path)
        for needed in ("varname", "start_idx", "end_idx", "shape"):
            if needed not in table:
                raise ZooError(f"{path}: missing column {needed!r}")
        layers: dict[str, dict[str, tuple[int, int, tuple[int, ...]]]] = {}
        ranges, seen = [], set()
        sizes = table.get("size", [None] * len(table["varname"]))
        for line, (name, start, end, size, shape) in enumerate(
                zip(table["varname"], table["start_idx"], table["end_idx"], sizes, table["shape"]),
                2):
            if name in seen:
                raise ZooError(f"{path}: line {line}: variable {name!r} is listed twice")
            seen.add(name)
            parts = name.replace(":0", "").split("/")
            if len(parts) < 2 or parts[-1] not in ("kernel", "bias"):
                raise ZooError(f"{path}: variable {name!r} is not a layer's kernel or bias")
            dims = _parse_shape(shape, path, name)
            start = _parse_index(start, path, line, "start_idx")
            end = _parse_index(end, path, line, "end_idx")
            if end - start != int(np.prod(dims)):
                raise ZooError(f"{path}: variable {name!r} spans {end - start} entries "
                                 f"but has shape {dims}")
            if size is not None and _parse_index(size, path, line, "size") != end - start:
                raise ZooError(f"{path}: line {line}: variable {name!r} has size {size} but "
                               f"spans [{start}, {end})")
            if parts[-2] in layers and parts[-1] in layers[parts[-2]]:
                raise ZooError(f"{path}: line {line}: layer {parts[-2]!r} has two {parts[-1]}s")
            layers.setdefault(parts[-2], {})[parts[-1]] = (start, end, dims)
            ranges.append((start, end, name))
        if not ranges:
            raise ZooError(f"{path}: no variables listed")
        # Before anything is sized from the layout: every range now lies inside a weights row.
        _check_tiling(ranges, self.weights.shape[1], path)
        for layer, variables in layers.items():
            missing = {"kernel", "bias"} - set(variables)
            if missing:
                raise ZooError(f"{path}: layer {layer!r} has no {' or '.join(sorted(missing))}")
            if len(variables["bias"][2]) != 1:
                raise ZooError(f"{path}: layer {layer!r} has a bias of shape "
                               f"{variables['bias'][2]}; expected one axis")
        ordered = sorted(layers.items(), key=lambda kv: min(v[0] for v in kv[1].values()))
        convs = [(n, l) for n, l in ordered if len(l["kernel"][2]) == 4]
        dense = [(n, l) for n, l in ordered if len(l["kernel"][2]) == 2]
        if not convs or len(dense) != 1 or len(convs) + 1 != len(ordered):
            raise ZooError(f"{path}: expected convolutions followed by one dense layer, "
                             f"found layers {[n for n, _ in ordered]}")
        first = convs[0][1]["kernel"][2]
        dataset = str(self.raw_metrics.get("config.dataset", ["mnist"])[0])
        side = _SPATIAL.get(dataset, 28)
        arch = build("small_cnn", input_shape=(side, side, first[2]), channels=first[3],
                     num_layers=len(convs), num_classes=dense[0][1]["kernel"][2][1])
        sources = {}
        for i, (_, layer) in enumerate(convs):
            sources[f"conv_{i}/kernel"], sources[f"conv_{i}/bias"] = layer["kernel"], layer["bias"]
        sources["dense_0/kernel"], sources["dense_0/bias"] = (dense[0][1]["kernel"],
                                                              dense[0][1]["bias"])
        index = []
        for t in arch.weight_space.tensors:
            start, end, dims = sources[t.path]
            if tuple(dims) != t.shape:
                raise ZooError(f"{path}: {t.path} has shape {dims} in the layout, "
                                 f"SmallCNN expects {t.shape}")
            index.append(np.arange(start, end))
        return arch, np.concatenate(index)

    # ------------------------------------------------------------------------------- metrics
    def _map_metrics(self) -> dict[str, np.ndarray]:
        out = {ours: self.raw_metrics[theirs] for theirs, ours in COLUMN_MAP.items()
               if theirs in self.raw_metrics}
        if "modeldir" in out:  # one id per trained network, in order of first appearance
            _, first, inverse = np.unique(out["modeldir"], return_index=True, return_inverse=True)
            rank = np.argsort(np.argsort(first))
            out["model"] = rank[inverse].astype(np.int64)
        else:
            out["model"] = np.arange(len(self), dtype=np.int64)
        if "epoch" not in out:
            raise ZooError(f"{self._metrics_path}: no 'step' column (the training step of each "
                           "row)")
        if "epoch" in out:
            bad = np.flatnonzero(~np.isfinite(out["epoch"]) | (out["epoch"] % 1 != 0))
            if bad.size:
                raise ZooError(f"{self._metrics_path}: column 'step', row {bad[0] + 1} (line "
                               f"{bad[0] + 2}) holds {out['epoch'][bad[0]]}, not a whole number")
            out["epoch"] = out["epoch"].astype(np.int64)
        if "train_acc" in out and "test_acc" in out:
            out["gap"] = out["train_acc"] - out["test_acc"]
        # From the losses, not the weights: scanning weights.npy would read the whole file.
        losses = [out[c] for c in ("train_loss", "test_loss") if c in out]
        out["diverged"] = ~np.all([np.isfinite(l) for l in losses], axis=0) if losses else \
            np.zeros(len(self), bool)
        return out

    # ------------------------------------------------------------------------------- weights
    def flat(self, rows) -> np.ndarray:
        """Rows as vectors in wsl's flatten order (only those rows are read from disk)."""
        rows = np.atleast_1d(np.asarray(rows, dtype=np.int64))
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"rows out of range for a zoo of {len(self)} rows")
        width = self.weights.shape[1]
        raw = np.empty((rows.size, width), self.weights.dtype)
        row_bytes = width * self.weights.dtype.itemsize
        # pread, not the memory map: mapped pages (and the kernel's fault-around neighbours) would
        # stay in this process's resident set long after the batch is gone.
        fd = os.open(self._weights_path, os.O_RDONLY)
        try:
            for i, r in enumerate(rows):
                got = os.preadv(fd, [memoryview(raw[i]).cast("B")],
                                self.weights.offset + int(r) * row_bytes)
                if got != row_bytes:
                    raise ZooError(f"{self._weights_path}: row {r} is truncated")
        finally:
            os.close(fd)
        return raw[:, self._index].astype(np.float32, copy=False)

    def params(self, rows):
        return self.architecture.weight_space.unflatten(self.flat(rows))

    def standard_split(self, step: int | None = 86, seed: int = 0,
                       split_file: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
        """The NFN-era protocol: keep one step; shuffle (or a split file's order); last half test,
        first half split 80/20 into train / val. Returns row indices per split."""
        rows = np.arange(len(self))
        if step is not None:
            rows = rows[self.metrics["epoch"] == step]
            if not rows.size:
                raise ZooError(f"{self.directory}: no rows with step == {step}; steps present: "
                                 f"{sorted(set(self.metrics['epoch'].tolist()))}")
        if split_file is not None:
            order = np.asarray(np.loadtxt(split_file, dtype=np.int64, ndmin=1))
            rows = rows[order[order < rows.size]]
        else:
            rows = rows[np.random.default_rng(seed).permutation(rows.size)]
        half = rows.size // 2
        first, test = rows[:half], rows[half:]
        cut = int(round(0.8 * first.size))
        return {"train": first[:cut], "val": first[cut:], "test": test}
