"""Import published zoos and loose checkpoints into the wsl zoo store (`wsl zoo import`).

Formats:
- ``small-cnn-zoo``: a Small CNN Zoo directory (`wsl.zoos.small_cnn_zoo`), streamed in shards of
  rows;
- ``model-zoos``: a folder of Model Zoos Ray Tune trials (`wsl.zoos.model_zoos`), every epoch a row;
- ``checkpoints``: a folder of single-model files (safetensors, npz, msgpack, torch), one model
  each, for an architecture named on the command line;
- ``wsl-export``: a whole-zoo export (`wsl.zoos.export`: safetensors shards, Parquet or CSV
  metrics, the zoo's manifest), read back into a zoo byte-identical to the one exported.

Every importer first checks its output folder (`wsl.outputs.check_output_dir`: not a file, not
inside another zoo, writable) and its source, before anything is written. Imports are resumable
like builds: shards already written are skipped when the same import is run again into the same
directory (after Ctrl-C, say). An import that fails with an error removes what it created (the
folder, or the contents of a folder that was empty), so that a retry with other options is not
blocked; a folder that held an earlier import is left as it was. Rows whose weights or losses are
not finite are kept, flagged ``diverged``, and counted in a warning.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from wsl.errors import UsageError
from wsl.outputs import check_output_dir
from wsl.weight_space import nest_paths
from wsl.zoos.architectures import Architecture, build
from wsl.zoos.errors import ArchitectureError, MissingPathError, ModelFileError, ZooError
from wsl.zoos.store import Zoo, ZooWriter

FORMATS = ("small-cnn-zoo", "model-zoos", "checkpoints", "wsl-export")


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


def _source_dir(source: str | os.PathLike, what: str) -> Path:
    root = Path(source)
    if not root.exists():
        raise MissingPathError(f"{root}: the {what} source directory does not exist")
    if not root.is_dir():
        raise ZooError(f"{root}: the {what} source is a file, not a directory")
    return root


@contextlib.contextmanager
def _cleanup_on_failure(out: Path) -> Iterator[None]:
    """On an error, remove what this import created in `out`; keep it on Ctrl-C (to resume).

    Only a folder this import created is removed, or the contents of one that was empty before;
    a folder that already held something (an unfinished import being resumed) is left alone.
    """
    existed = out.exists()
    was_empty = existed and out.is_dir() and not any(out.iterdir())
    try:
        yield
    except Exception:
        if not existed:
            shutil.rmtree(out, ignore_errors=True)
        elif was_empty:
            for entry in list(out.iterdir()):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
        raise


def _finish(out: Path, source: Path) -> Zoo:
    zoo = Zoo.open(out)
    if "diverged" in zoo.metrics:
        diverged = int(np.sum(zoo.metrics["diverged"].astype(bool)))
        if diverged:
            warnings.warn(f"{source}: {diverged} of {len(zoo)} rows have non-finite weights or "
                          "losses; they are imported and flagged diverged", stacklevel=3)
    return zoo


def _nonfinite_rows(flat: np.ndarray) -> np.ndarray:
    return ~np.isfinite(flat).all(axis=1)


def import_small_cnn_zoo(source: str | os.PathLike, out: str | os.PathLike, *,
                         step: int | None = None, rows_per_shard: int = 2048,
                         progress: bool = True) -> Zoo:
    """Copy a Small CNN Zoo (optionally one `step` only) into a wsl zoo."""
    from wsl.zoos.small_cnn_zoo import SmallCNNZoo

    out = check_output_dir(out, allow_zoo=True)
    root = _source_dir(source, "Small CNN Zoo")
    src = SmallCNNZoo(root)
    epochs = src.metrics["epoch"]
    rows = np.arange(len(src)) if step is None else np.flatnonzero(epochs == step)
    if not rows.size:
        raise ZooError(f"{source}: no rows with step == {step}; steps present: "
                       f"{sorted(set(epochs.tolist()))[:20]}")
    metrics = src.metrics
    columns = ["model", "epoch"] + [c for c in metrics if c not in ("model", "epoch")]
    dataset = str(metrics["dataset"][0]) if "dataset" in metrics else None
    space = src.architecture.weight_space
    with _cleanup_on_failure(out):
        writer = ZooWriter(out, _manifest(src.architecture, "small-cnn-zoo", root, dataset,
                                          {"step": step}))
        done = set(writer.done_shards())
        chunks = [rows[i:i + rows_per_shard] for i in range(0, rows.size, rows_per_shard)]
        for index, chunk in enumerate(tqdm(chunks, desc="importing shards",
                                           disable=not progress)):
            if index in done:
                continue
            flat = src.flat(chunk)
            # The reader flags diverged rows from their losses; a non-finite weight counts too.
            bad = _nonfinite_rows(flat)
            table = [_row({c: _value(metrics[c][r]) for c in columns}, columns) for r in chunk]
            for row, nonfinite in zip(table, bad):
                row["diverged"] = bool(row["diverged"]) or bool(nonfinite)
            writer.write_shard(index, space.unflatten(flat), table)
        writer.finalize(len(chunks))
    return _finish(out, root)


def _value(x):
    return x.item() if hasattr(x, "item") else x


def import_model_zoos(source: str | os.PathLike, out: str | os.PathLike, *,
                      architecture: Architecture | None = None, models_per_shard: int = 64,
                      progress: bool = True) -> Zoo:
    """Copy a folder of Model Zoos trials (CNN-s unless `architecture` says otherwise)."""
    from wsl.zoos.model_zoos import PARAM_MAP, read_trial, trial_folders

    out = check_output_dir(out, allow_zoo=True)
    root = _source_dir(source, "Model Zoos")
    trials = trial_folders(root)
    arch, _ = read_trial(trials[0], architecture)
    columns = (["model", "epoch", "trial"] + list(dict.fromkeys(PARAM_MAP.values()))
               + ["train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
                  "gap", "diverged"])
    with _cleanup_on_failure(out):
        writer = ZooWriter(out, _manifest(arch, "model-zoos", root, None,
                                          {"trials": len(trials)}))
        done = set(writer.done_shards())
        groups = [trials[i:i + models_per_shard] for i in range(0, len(trials), models_per_shard)]
        for index, group in enumerate(tqdm(groups, desc="importing trials",
                                           disable=not progress)):
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
    return _finish(out, root)


def import_checkpoints(source: str | os.PathLike, out: str | os.PathLike, *, architecture: str,
                       config: Mapping[str, Any] | None = None, models_per_shard: int = 256,
                       ignore_extra: bool = False, progress: bool = True) -> Zoo:
    """One model per file in `source` (sorted by name), for the named architecture.

    Every tensor must be floating point (float16/32/64); the zoo stores float32. A file holding
    tensors the architecture does not use is refused, naming them, unless `ignore_extra` (then a
    warning names them): an extra tensor often means the wrong architecture or config.
    """
    from wsl.zoos.model_files import _SUFFIXES, read_model
    from wsl.zoos.torch_layout import name_list

    out = check_output_dir(out, allow_zoo=True)
    if config is not None and not isinstance(config, Mapping):
        raise ArchitectureError(f"the architecture config must map keys to values, "
                                f"got {config!r}")
    arch = build(architecture, **dict(config or {}))
    root = _source_dir(source, "checkpoint")
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in _SUFFIXES and p.is_file())
    if not files:
        raise ZooError(f"{root}: no model files ({', '.join(sorted(_SUFFIXES))})")
    ignored: dict[str, int] = {}

    def load(file: Path):
        params, extras = read_model(file, arch.weight_space)
        if extras and not ignore_extra:
            raise ModelFileError(
                f"{file}: {len(extras)} tensors are not in {arch.name}'s weight space: "
                f"{name_list(extras)} (a different architecture or config?); import with "
                "ignore_extra=True (wsl zoo import --ignore-extra) to drop them")
        for name in extras:
            ignored[name] = ignored.get(name, 0) + 1
        return jax.tree.map(lambda x: np.asarray(x, dtype=np.float32), params)

    with _cleanup_on_failure(out):
        writer = ZooWriter(out, _manifest(arch, "checkpoints", root, None, {"files": len(files)}))
        done = set(writer.done_shards())
        groups = [files[i:i + models_per_shard] for i in range(0, len(files), models_per_shard)]
        for index, group in enumerate(tqdm(groups, desc="importing files", disable=not progress)):
            if index in done:
                continue
            params = [load(f) for f in group]
            table = [{"model": index * models_per_shard + i, "epoch": 0, "file": f.name,
                      "diverged": bool(_nonfinite_rows(
                          np.asarray(arch.weight_space.flatten(p))[None]).any())}
                     for i, (f, p) in enumerate(zip(group, params))]
            writer.write_shard(index, _stack(params), table)
        writer.finalize(len(groups))
    if ignored:
        warnings.warn(f"{root}: ignored tensors not in {arch.name}'s weight space: "
                      f"{name_list(f'{k} ({n} files)' for k, n in ignored.items())}",
                      stacklevel=2)
    return _finish(out, root)


# Manifest fields a writer records itself when it finishes; an export's copy of them is what the
# new zoo is compared with, not what it is written from.
_FINISHED_FIELDS = ("shards", "complete", "column_types", "metrics_sha256", "num_rows")


def import_wsl_export(source: str | os.PathLike, out: str | os.PathLike, *,
                      progress: bool = True) -> Zoo:
    """Write a whole-zoo export (`wsl zoo export Z --all`) back as a zoo.

    Every file is checked against the export's manifest (size and sha256) before it is read,
    every tensor's name, shape and dtype against the zoo's weight space. Shards keep their rows,
    order and column types, so the new zoo's weight files and metrics table are byte-identical
    to the exported zoo's (a warning says so if they are not). The zoo's manifest is kept, its
    provenance too, with ``provenance.imported`` recording this import.
    """
    from wsl.zoos.export import (
        compare_with_source,
        read_export,
        read_metrics,
        read_shard,
        shard_rows,
    )

    out = check_output_dir(out, allow_zoo=True)
    root = _source_dir(source, "wsl export")
    if root.resolve() in (out.resolve(), *out.resolve().parents):
        raise ZooError(f"--out {out} lies inside the export {root}; write the zoo elsewhere so "
                       f"that the export stays as it was")
    export = read_export(root)
    table = read_metrics(export)
    manifest = {k: v for k, v in export.zoo_manifest.items() if k not in _FINISHED_FIELDS}
    provenance = dict(manifest.get("provenance") or {})
    provenance["imported"] = {"format": "wsl-export", "source": str(root.resolve()),
                              "exported": export.manifest.get("exported", {}).get("created")}
    manifest["provenance"] = provenance
    with _cleanup_on_failure(out):
        writer = ZooWriter(out, manifest)
        done = set(writer.done_shards())
        for shard in tqdm(export.shards, desc="importing shards", disable=not progress):
            if shard.index in done:
                continue
            params = nest_paths(read_shard(export, shard))
            rows = list(shard_rows(table, shard, str(export.metrics_file)))
            writer.write_shard(shard.index, params, rows)
        finished = writer.finalize(len(export.shards))
    compare_with_source(export, finished, out)
    return Zoo.open(out)


def import_zoo(format: str, source, out, **options) -> Zoo:
    """Dispatch on the format name used by `wsl zoo import --format`."""
    importers = {"small-cnn-zoo": import_small_cnn_zoo, "model-zoos": import_model_zoos,
                 "checkpoints": import_checkpoints, "wsl-export": import_wsl_export}
    if format not in importers:
        raise UsageError(f"unknown import format {format!r}; choose from {FORMATS}")
    return importers[format](source, out, **options)


__all__ = ["FORMATS", "import_checkpoints", "import_model_zoos", "import_small_cnn_zoo",
           "import_wsl_export", "import_zoo"]
