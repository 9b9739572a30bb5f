"""Whole-zoo exports: a folder that uploads to a hub as is and reads back as the same zoo.

Layout of an export (``wsl zoo export Z --all --out DIR``; format version 1)::

    README.md                  the dataset card (`wsl.zoos.card`), its figures under figures/
    manifest.json              {"format": "wsl-export", "format_version", "zoo": the zoo's manifest,
                                "weights": [per shard: file, rows, start, sha256, size,
                                column_types], "metrics": {file, format, rows, sha256, size},
                                "exported": provenance}
    weights/00000.safetensors  one file per zoo shard: every tensor stacked over the shard's rows,
                               named by its path (``dense_0/kernel``); metadata: format,
                               architecture, weight space and the rows (start, model, epoch)
    metrics.parquet            the metrics table with its column types (``pyarrow``, the
                               ``parquet`` extra); metrics.csv, the zoo's own file, without it

The zoo manifest is nested, never at the top level, so an export is not taken for a zoo. The
folder is written under a temporary name beside ``DIR`` and renamed into place: an interrupted
export leaves no folder that looks finished. `read_export` treats an export as untrusted: every
path stays inside it, every file's size and sha256 are checked before it is read, every tensor's
name, shape and dtype against the zoo manifest. `wsl.zoos.importers.import_wsl_export` writes it
back as a zoo whose weight files and metrics table are byte-identical to the zoo exported.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from wsl.errors import UsageError
from wsl.outputs import check_output_dir
from wsl.zoos.errors import ZooError
from wsl.zoos.store import (
    _COLUMN_KINDS,
    MANIFEST,
    MAX_JSON_BYTES,
    METRICS_FILE,
    Zoo,
    _check_manifest,
    _format,
    _is_count,
    _parse_column,
    _provenance,
    _read_csv,
    _read_json,
    _size_problem,
    check_file,
    sha256_file,
    tensor_filename,
)

EXPORT_FORMAT = "wsl-export"
EXPORT_VERSION = 1
WEIGHTS = "weights"
METRICS_FORMATS = {"parquet": "metrics.parquet", "csv": "metrics.csv"}
PARQUET_EXTRA = 'pip install "wsl[parquet]" (or pip install pyarrow)'


def parquet_available() -> bool:
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        return False
    return True


def metrics_format(requested: str | None) -> tuple[str, str | None]:
    """The metrics format to write and a note when it is not the one a user would expect:
    Parquet when `pyarrow` is installed, else CSV (said); Parquet asked without it is an
    error naming the extra."""
    if requested not in (None, *METRICS_FORMATS):
        raise UsageError(f"unknown metrics format {requested!r}; choose parquet or csv")
    if requested == "csv":
        return "csv", None
    if parquet_available():
        return "parquet", None
    if requested == "parquet":
        raise ZooError(f"metrics as Parquet need pyarrow, which is not installed: {PARQUET_EXTRA}")
    return "csv", (f"pyarrow is not installed, so the metrics are written as "
                   f"{METRICS_FORMATS['csv']} (for Parquet: {PARQUET_EXTRA})")


# ------------------------------------------------------------------------------------- writing
def _weights_file(index: int) -> str:
    return f"{WEIGHTS}/{int(index):05d}.safetensors"


def _write_parquet(zoo: Zoo, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    kinds = {"bool": pa.bool_(), "int": pa.int64(), "float": pa.float64(), "str": pa.string()}
    types = zoo.manifest["column_types"]
    metrics = zoo.metrics
    arrays, fields = [], []
    for column in zoo.manifest["columns"]:  # the table as stored, not the analysed columns
        kind = types.get(column, "str")
        values = metrics[column]
        values = values.astype(str).tolist() if kind == "str" else values
        arrays.append(pa.array(values, type=kinds[kind]))
        fields.append(pa.field(column, kinds[kind], metadata={
            "meaning": zoo.manifest["columns"].get(column) or "", "wsl_type": kind}))
    table = pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata={
        "wsl": json.dumps({"format": EXPORT_FORMAT, "rows": len(zoo)})}))
    pq.write_table(table, path)


def _file_entry(folder: Path, name: str) -> dict:
    return {"sha256": sha256_file(folder / name), "size": (folder / name).stat().st_size}


@dataclasses.dataclass
class ExportResult:
    """What `export_zoo` wrote."""

    folder: Path
    weights: list[str]
    metrics: str
    metrics_note: str | None
    license: str
    bytes: int


def export_zoo(zoo: Zoo | str | os.PathLike, out: str | os.PathLike, *,
               metrics: str | None = None, license: str = "unknown",
               pretty_name: str | None = None, progress: bool = False) -> ExportResult:
    """Write the whole zoo into the new folder `out` (see the module docstring).

    `out` must not exist or be an empty folder, and may not be a zoo or lie inside one; it is
    checked before anything is read or written. `metrics` is ``"parquet"``, ``"csv"`` or None
    (Parquet when pyarrow is installed, else CSV and `metrics_note` says so)."""
    from safetensors.numpy import save
    from tqdm.auto import tqdm

    from wsl.zoos.card import write_card

    out = check_output_dir(out)
    if out.exists() and any(out.iterdir()):
        raise ZooError(f"--out {out} exists and is not empty; an export is written into a new "
                       f"folder: choose another --out or empty this one")
    kind, note = metrics_format(metrics)
    zoo = zoo if isinstance(zoo, Zoo) else Zoo.open(zoo)
    if not zoo.is_whole:
        raise ZooError(f"{zoo.path}: export --all writes a whole zoo, not a view of {len(zoo)} "
                       f"rows; pass the zoo itself")
    # Analysed columns (`wsl zoo analyze`) stay with the zoo: the export is the build's record.
    manifest = {k: v for k, v in zoo.manifest.items() if k != "analysis"}
    arch = json.dumps(manifest["architecture"], sort_keys=True)
    space = json.dumps(zoo.weight_space.to_dict(), sort_keys=True)
    tmp = out.absolute().parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        (tmp / WEIGHTS).mkdir(parents=True)
        weights = []
        models, epochs = zoo.metrics["model"], zoo.metrics["epoch"]
        for index in tqdm(range(zoo.num_shards), desc="exporting shards", disable=not progress):
            start, stop = zoo.shard_row_range(index)
            # safetensors stores little-endian; the zoo's own dtype comes back on import
            tensors = {path: np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
                       for path, array in zoo.shard_tensors(index).items()}
            rows = {"shard": index, "start": start, "stop": stop,
                    "model": models[start:stop].tolist(), "epoch": epochs[start:stop].tolist()}
            name = _weights_file(index)
            blob = save(tensors, metadata={
                "format": EXPORT_FORMAT, "architecture": arch, "weight_space": space,
                "rows": json.dumps(rows)})
            # written by open(), so the file gets the mode any new file gets (umask)
            (tmp / name).write_bytes(blob)
            del blob
            weights.append({"file": name, "shard": manifest["shards"][index]["name"],
                            "start": start, "rows": stop - start, **_file_entry(tmp, name),
                            "column_types": zoo.shard_column_types(index)})
        metrics_name = METRICS_FORMATS[kind]
        if kind == "parquet":
            _write_parquet(zoo, tmp / metrics_name)
        else:
            shutil.copyfile(zoo.path / METRICS_FILE, tmp / metrics_name)
            if sha256_file(tmp / metrics_name) != manifest["metrics_sha256"]:
                raise ZooError(f"{zoo.path / METRICS_FILE} changed while it was exported; "
                               f"export again")
        files = {"manifest": MANIFEST, "metrics": metrics_name,
                 "weights": [w["file"] for w in weights]}
        card = write_card(zoo, tmp, license=license, pretty_name=pretty_name, export=files,
                          checked=True)
        export = {
            "format": EXPORT_FORMAT, "format_version": EXPORT_VERSION,
            "zoo": manifest,
            "weights": weights,
            "metrics": {"file": metrics_name, "format": kind, "rows": len(zoo),
                        "columns": list(zoo.manifest["columns"]),
                        **_file_entry(tmp, metrics_name)},
            "card": {"file": card.card.name, "figures": [f.path for f in card.figures],
                     "license": license},
            "exported": {**_provenance(), "source": str(zoo.path.resolve())},
        }
        (tmp / MANIFEST).write_text(json.dumps(export, indent=2) + "\n", encoding="utf-8")
        total = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(out, files["weights"], metrics_name, note, license, total)


# ------------------------------------------------------------------------------------- reading
@dataclasses.dataclass
class ExportShard:
    """One weights file of an export, checked against the export manifest."""

    index: int
    file: Path
    start: int
    rows: int
    sha256: str
    size: int
    column_types: dict[str, str]


@dataclasses.dataclass
class Export:
    """An export folder whose manifest has been checked field by field (no data read yet)."""

    path: Path
    manifest: dict  # the export manifest
    zoo_manifest: dict
    shards: list[ExportShard]
    metrics_file: Path
    metrics_kind: str
    metrics_sha256: str
    metrics_size: int

    @property
    def weight_space(self):
        from wsl.weight_space import WeightSpace

        return WeightSpace.from_dict(self.zoo_manifest["weight_space"])


def _export_path(root: Path, name: Any, where: Path, field: str, folder: str | None) -> Path:
    """A relative file name from the manifest, kept inside the export (``folder/plain-name``)."""
    parts = name.split("/") if isinstance(name, str) else []
    expected = 2 if folder else 1
    plain = (len(parts) == expected and all(p not in ("", ".", "..") and "\\" not in p
                                           and "\0" not in p for p in parts)
             and (folder is None or parts[0] == folder))
    if not plain:
        shape = f"{folder}/NAME" if folder else "a plain file name"
        raise ZooError(f"{where}: field {field!r} must be {shape} inside the export, got "
                       f"{name!r:.80}")
    return root.joinpath(*parts)


def _sha(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= set("0123456789abcdef")


def read_export(path: str | os.PathLike) -> Export:
    """Open an export folder: its manifest checked field by field, every file it lists present
    with its recorded size (contents are checked when read: `check_file`)."""
    root = Path(path)
    if not root.exists():
        raise ZooError(f"{root}: no such export folder")
    if not root.is_dir():
        raise ZooError(f"{root} is a file, not an export folder")
    where = root / MANIFEST
    manifest = _read_json(where, "export manifest")
    if manifest.get("format") != EXPORT_FORMAT:
        hint = (" (it is a zoo: open it directly, no import needed)"
                if "schema_version" in manifest and "weight_space" in manifest else "")
        raise ZooError(f"{where}: not a wsl export (field 'format' is "
                       f"{manifest.get('format')!r:.40}, expected {EXPORT_FORMAT!r}){hint}")
    if manifest.get("format_version") != EXPORT_VERSION:
        raise ZooError(f"{where}: format_version {manifest.get('format_version')!r:.40}; this "
                       f"wsl reads {EXPORT_VERSION}")
    zoo_manifest = manifest.get("zoo")
    if not isinstance(zoo_manifest, dict):
        raise ZooError(f"{where}: field 'zoo' must be the zoo's manifest (an object)")
    try:
        _check_manifest(root, zoo_manifest)
    except ZooError as err:
        raise ZooError(f"{err} (in field 'zoo' of the export manifest)") from err
    columns = list(zoo_manifest["columns"])
    weights = manifest.get("weights")
    zoo_shards = zoo_manifest["shards"]
    if not isinstance(weights, list) or len(weights) != len(zoo_shards):
        raise ZooError(f"{where}: field 'weights' must list one file per zoo shard "
                       f"({len(zoo_shards)}), got {weights!r:.80}")
    shards, start = [], 0
    for i, entry in enumerate(weights):
        field = f"weights[{i}]"
        if not isinstance(entry, dict):
            raise ZooError(f"{where}: field {field!r} must be an object, got {entry!r:.80}")
        file = _export_path(root, entry.get("file"), where, f"{field}.file", WEIGHTS)
        rows = entry.get("rows")
        if not _is_count(rows) or rows != zoo_shards[i]["rows"]:
            raise ZooError(f"{where}: field '{field}.rows' must be the zoo shard's "
                           f"{zoo_shards[i]['rows']} rows, got {rows!r:.40}")
        if entry.get("start") != start:
            raise ZooError(f"{where}: field '{field}.start' must be {start} (the rows before it), "
                           f"got {entry.get('start')!r:.40}")
        if not _sha(entry.get("sha256")) or not _is_count(entry.get("size")):
            raise ZooError(f"{where}: field {field!r} needs a sha256 hex digest and a byte size")
        types = entry.get("column_types")
        if (not isinstance(types, dict) or list(types) != columns
                or not all(k in _COLUMN_KINDS for k in types.values())):
            raise ZooError(f"{where}: field '{field}.column_types' must give each column "
                           f"{columns[:8]} one of {list(_COLUMN_KINDS)}")
        shards.append(ExportShard(i, file, start, rows, entry["sha256"], entry["size"],
                                  dict(types)))
        start += rows
    metrics = manifest.get("metrics")
    if not isinstance(metrics, dict):
        raise ZooError(f"{where}: field 'metrics' must be an object")
    kind = metrics.get("format")
    if kind not in METRICS_FORMATS:
        raise ZooError(f"{where}: field 'metrics.format' must be parquet or csv, got {kind!r:.40}")
    metrics_file = _export_path(root, metrics.get("file"), where, "metrics.file", None)
    if metrics.get("rows") != start or zoo_manifest.get("num_rows", start) != start:
        raise ZooError(f"{where}: field 'metrics.rows' is {metrics.get('rows')!r:.40}, the "
                       f"weights hold {start} rows")
    if metrics.get("columns") != columns:
        raise ZooError(f"{where}: field 'metrics.columns' differs from the zoo's columns "
                       f"{columns[:8]}")
    if not _sha(metrics.get("sha256")) or not _is_count(metrics.get("size")):
        raise ZooError(f"{where}: field 'metrics' needs a sha256 hex digest and a byte size")
    export = Export(root, manifest, zoo_manifest, shards, metrics_file, kind, metrics["sha256"],
                    metrics["size"])
    for file, size in [(s.file, s.size) for s in shards] + [(metrics_file, metrics["size"])]:
        problem = _size_problem(file, size, "export file")
        if problem:
            raise ZooError(problem)
    return export


_SAFETENSORS_DTYPES = {"F16": "float16", "F32": "float32", "F64": "float64", "I8": "int8",
                       "I16": "int16", "I32": "int32", "I64": "int64", "U8": "uint8",
                       "U16": "uint16", "U32": "uint32", "U64": "uint64", "BOOL": "bool"}


def read_shard(export: Export, shard: ExportShard) -> dict[str, np.ndarray]:
    """One weights file, verified: {tensor path: array} with the zoo's shapes and dtypes."""
    from safetensors import safe_open

    check_file(shard.file, shard.sha256, "export file", shard.size)
    space = export.weight_space
    files = export.zoo_manifest["shards"][shard.index]["files"]
    out = {}
    try:
        with safe_open(str(shard.file), framework="np") as f:
            names = set(f.keys())
            wanted = [t.path for t in space.tensors]
            if names != set(wanted):
                missing = sorted(set(wanted) - names)
                extra = sorted(names - set(wanted))
                raise ZooError(f"{shard.file}: tensors do not match the weight space (missing "
                               f"{missing[:6]}, unexpected {extra[:6]})")
            for t in space.tensors:
                dtype = np.dtype(files[tensor_filename(t.path)]["dtype"])
                part = f.get_slice(t.path)
                shape = tuple(part.get_shape())
                stored = _SAFETENSORS_DTYPES.get(part.get_dtype())
                if shape != (shard.rows, *t.shape) or stored != dtype.newbyteorder("=").name:
                    raise ZooError(f"{shard.file}: tensor {t.path!r} is {stored} {list(shape)}, "
                                   f"the zoo records {dtype} {[shard.rows, *t.shape]}")
                out[t.path] = np.asarray(f.get_tensor(t.path)).astype(dtype, copy=False)
    except ZooError:
        raise
    except Exception as err:  # safetensors raises its own error types for a malformed file
        raise ZooError(f"{shard.file}: not a readable safetensors file ({err})") from err
    return out


def read_metrics(export: Export) -> dict[str, np.ndarray]:
    """The metrics table, verified, as numpy columns of the zoo's column types."""
    check_file(export.metrics_file, export.metrics_sha256, "export file", export.metrics_size)
    columns = list(export.zoo_manifest["columns"])
    types = export.zoo_manifest["column_types"]
    rows = export.shards[-1].start + export.shards[-1].rows if export.shards else 0
    if export.metrics_kind == "csv":
        header, body = _read_csv(export.metrics_file)
        if header != columns:
            raise ZooError(f"{export.metrics_file}: header {header[:8]} differs from the zoo's "
                           f"columns {columns[:8]}")
        table = {c: _parse_column(c, types.get(c, "str"), [line[j] for line in body],
                                  str(export.metrics_file)) for j, c in enumerate(header)}
    else:
        table = _read_parquet(export.metrics_file, columns, types)
    got = len(table[columns[0]]) if columns else 0
    if got != rows:
        raise ZooError(f"{export.metrics_file}: {got} rows, the weights hold {rows}")
    return table


def _read_parquet(file: Path, columns: list[str], types: Mapping[str, str]) -> dict:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as err:
        raise ZooError(f"{file}: reading Parquet needs pyarrow, which is not installed: "
                       f"{PARQUET_EXTRA}") from err
    if file.stat().st_size > MAX_JSON_BYTES * 16:
        raise ZooError(f"{file}: too large for a metrics table")
    try:
        table = pq.read_table(file)
    except (pa.ArrowException, OSError) as err:
        raise ZooError(f"{file}: not a readable Parquet file ({err})") from err
    if table.column_names != columns:
        raise ZooError(f"{file}: columns {table.column_names[:8]} differ from the zoo's "
                       f"{columns[:8]}")
    expected = {"bool": pa.bool_(), "int": pa.int64(), "float": pa.float64(), "str": pa.string()}
    out = {}
    for column in columns:
        kind = types.get(column, "str")
        data = table.column(column)
        if data.type != expected[kind] or data.null_count:
            raise ZooError(f"{file}: column {column!r} is {data.type}"
                           f"{' with nulls' if data.null_count else ''}, the zoo records "
                           f"{kind} ({expected[kind]})")
        if kind == "str":
            out[column] = np.array(data.to_pylist(), dtype=str)
        else:
            out[column] = data.to_numpy(zero_copy_only=False).astype(
                {"bool": bool, "int": np.int64, "float": np.float64}[kind])
    return out


def _as_kind(value: Any, kind: str, where: str) -> Any:
    """A table value as the Python value its shard was written with (`kind`)."""
    if kind == "str":
        return str(value)
    if kind == "bool":
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        if str(value) in ("true", "false"):
            return str(value) == "true"
    elif kind == "int":
        if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
            return int(value)
        try:
            number = float(value) if not isinstance(value, str) else None
            if number is not None and number.is_integer():
                return int(number)
            if isinstance(value, str):
                return int(value)
        except (ValueError, OverflowError):
            pass
    elif kind == "float":
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    raise ZooError(f"{where}: value {_format(value)!r:.40} is not a {kind}")


def shard_rows(table: Mapping[str, np.ndarray], shard: ExportShard, where: str
               ) -> Iterator[dict]:
    """The metric rows of `shard`, typed as its shard was written."""
    for row in range(shard.start, shard.start + shard.rows):
        yield {c: _as_kind(table[c][row], kind, f"{where} row {row + 1} column {c!r}")
               for c, kind in shard.column_types.items()}


def compare_with_source(export: Export, manifest: Mapping, out: Path) -> None:
    """Warn if the zoo written from `export` differs in bytes from the zoo that was exported
    (the checksums its manifest recorded); identical is the expected outcome."""
    source = export.zoo_manifest
    differ = []
    if manifest.get("metrics_sha256") != source.get("metrics_sha256"):
        differ.append(METRICS_FILE)
    for mine, theirs in zip(manifest["shards"], source["shards"]):
        for file, meta in theirs["files"].items():
            if mine["files"].get(file, {}).get("sha256") != meta.get("sha256"):
                differ.append(f"{mine['name']}/{file}")
    if differ:
        warnings.warn(f"{out}: {len(differ)} files differ in bytes from the zoo that was "
                      f"exported ({', '.join(differ[:4])}); `wsl zoo verify {out}` checks the "
                      f"zoo itself", stacklevel=3)


__all__ = ["EXPORT_FORMAT", "Export", "ExportResult", "export_zoo", "metrics_format",
           "parquet_available", "read_export", "read_metrics", "read_shard"]
