"""Import published zoos and loose checkpoints into the wsl zoo store (`wsl zoo import`).

Formats:
- ``small-cnn-zoo``: a Small CNN Zoo directory (`wsl.zoos.small_cnn_zoo`), streamed in shards of
  rows;
- ``model-zoos``: a folder of Model Zoos Ray Tune trials (`wsl.zoos.model_zoos`), every epoch a row;
- ``checkpoints``: a folder of single-model files (safetensors, npz, msgpack, torch), one model
  each, for an architecture named on the command line.

Imports are resumable like builds: shards already written are skipped when the same import is run
again into the same directory.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from wsl.zoos.architectures import Architecture, build
from wsl.zoos.errors import ZooError
from wsl.zoos.store import Zoo, ZooWriter

FORMATS = ("small-cnn-zoo", "model-zoos", "checkpoints")


def _manifest(arch: Architecture, fmt: str, source: Path, dataset: Any, extra: Mapping) -> dict:
    return {
        "architecture": {"name": arch.name, "config": dict(arch.config)},
        "weight_space": arch.weight_space.to_dict(),
        # The store's convention; an external zoo's dataset is only named, not reloadable as is.
        "dataset": {"name": dataset or "unknown", "options": {}, "external": True},
        "recipe": {"name": f"import:{fmt}", "source": str(source.resolve()), **extra},
    }


def _stack(params_list: Sequence) -> dict:
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *params_list)


def _row(values: Mapping[str, Any], columns: Sequence[str]) -> dict:
    """A row with exactly `columns`, missing numbers as NaN (shards must agree on columns)."""
    return {c: values.get(c, math.nan) for c in columns}


def import_small_cnn_zoo(source: str | os.PathLike, out: str | os.PathLike, *,
                         step: int | None = None, rows_per_shard: int = 2048,
                         progress: bool = True) -> Zoo:
    """Copy a Small CNN Zoo (optionally one `step` only) into a wsl zoo."""
    from wsl.zoos.small_cnn_zoo import SmallCNNZoo

    src = SmallCNNZoo(source)
    rows = np.arange(len(src)) if step is None else np.flatnonzero(src.metrics["epoch"] == step)
    if not rows.size:
        raise ZooError(f"{source}: no rows with step == {step}")
    metrics = src.metrics
    columns = ["model", "epoch"] + [c for c in metrics if c not in ("model", "epoch")]
    dataset = str(metrics["dataset"][0]) if "dataset" in metrics else None
    writer = ZooWriter(out, _manifest(src.architecture, "small-cnn-zoo", Path(source), dataset,
                                      {"step": step}))
    done = set(writer.done_shards())
    chunks = [rows[i:i + rows_per_shard] for i in range(0, rows.size, rows_per_shard)]
    for index, chunk in enumerate(tqdm(chunks, desc="importing shards", disable=not progress)):
        if index in done:
            continue
        table = [_row({c: _value(metrics[c][r]) for c in columns}, columns) for r in chunk]
        writer.write_shard(index, src.params(chunk), table)
    writer.finalize(len(chunks))
    return Zoo.open(out)


def _value(x):
    return x.item() if hasattr(x, "item") else x


def import_model_zoos(source: str | os.PathLike, out: str | os.PathLike, *,
                      architecture: Architecture | None = None, models_per_shard: int = 64,
                      progress: bool = True) -> Zoo:
    """Copy a folder of Model Zoos trials (CNN-s unless `architecture` says otherwise)."""
    from wsl.zoos.model_zoos import PARAM_MAP, read_trial, trial_folders

    trials = trial_folders(source)
    arch, _ = read_trial(trials[0], architecture)
    columns = (["model", "epoch", "trial"] + list(dict.fromkeys(PARAM_MAP.values()))
               + ["train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
                  "gap", "diverged"])
    writer = ZooWriter(out, _manifest(arch, "model-zoos", Path(source), None,
                                      {"trials": len(trials)}))
    done = set(writer.done_shards())
    groups = [trials[i:i + models_per_shard] for i in range(0, len(trials), models_per_shard)]
    for index, group in enumerate(tqdm(groups, desc="importing trials", disable=not progress)):
        if index in done:
            continue
        params, table = [], []
        for offset, folder in enumerate(group):
            model_id = index * models_per_shard + offset
            _, epochs = read_trial(folder, arch)
            for _, p, row in epochs:
                params.append(p)
                table.append(_row({**row, "model": model_id}, columns))
        writer.write_shard(index, _stack(params), table)
    writer.finalize(len(groups))
    return Zoo.open(out)


def import_checkpoints(source: str | os.PathLike, out: str | os.PathLike, *, architecture: str,
                       config: Mapping[str, Any] | None = None, models_per_shard: int = 256,
                       progress: bool = True) -> Zoo:
    """One model per file in `source` (sorted by name), for the named architecture."""
    from wsl.zoos.model_files import _SUFFIXES, load_model

    arch = build(architecture, **dict(config or {}))
    root = Path(source)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory")
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in _SUFFIXES)
    if not files:
        raise ZooError(f"{root}: no model files ({', '.join(sorted(_SUFFIXES))})")
    writer = ZooWriter(out, _manifest(arch, "checkpoints", root, None, {"files": len(files)}))
    done = set(writer.done_shards())
    groups = [files[i:i + models_per_shard] for i in range(0, len(files), models_per_shard)]
    for index, group in enumerate(tqdm(groups, desc="importing files", disable=not progress)):
        if index in done:
            continue
        params = [load_model(f, arch.weight_space) for f in group]
        table = [{"model": index * models_per_shard + i, "epoch": 0, "file": f.name,
                  "diverged": not np.isfinite(np.asarray(arch.weight_space.flatten(p))).all()}
                 for i, (f, p) in enumerate(zip(group, params))]
        writer.write_shard(index, _stack(params), table)
    writer.finalize(len(groups))
    return Zoo.open(out)


def import_zoo(format: str, source, out, **options) -> Zoo:
    """Dispatch on the format name used by `wsl zoo import --format`."""
    importers = {"small-cnn-zoo": import_small_cnn_zoo, "model-zoos": import_model_zoos,
                 "checkpoints": import_checkpoints}
    if format not in importers:
        raise ZooError(f"unknown import format {format!r}; choose from {FORMATS}")
    return importers[format](source, out, **options)


__all__ = ["FORMATS", "import_checkpoints", "import_model_zoos", "import_small_cnn_zoo",
           "import_zoo"]
