"""The zoo store: a directory of manifest, metrics table and sharded per-tensor weights, read
lazily.

Layout of a zoo directory (schema version 1)::

    manifest.json            what the zoo is: architecture + config, weight space, dataset, recipe,
                             column meanings and types, provenance, and (once finished) its shards
    metrics.csv              one row per (model, checkpoint); plain CSV any tool can open
    shards/00000/            one shard: a group of whole models
        conv_0.kernel.npy    one stacked array per tensor, leading axis = the shard's rows
        rows.csv             the shard's metric rows, in the same order
        shard.json           row count and the sha256, shape and dtype of every file above

A shard is written into a temporary directory and renamed into place, so a killed build never
leaves a half shard that looks finished; `ZooWriter.done_shards()` is what a resumed build skips.
Weights are memory-mapped on first use and their checksums verified then: a damaged file is named
in the error instead of being read.

Columns computed after the build (`wsl zoo analyze`: Hessian, spectra, CKA, mode connectivity) live
beside the metrics table, never in it, so the table and the shards stay exactly as built::

    analysis-<sha12>.csv     model, epoch and one column per analysed property, row for row with
                             metrics.csv (empty = not computed for that row)

The manifest's ``analysis`` entry names that file, its checksum, the columns' meanings and how each
property was measured. A new version is written under a new name before the manifest points to it,
so an interrupted update leaves the previous one in force.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import hashlib
import io
import json
import os
import platform
import shutil
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wsl.errors import WslError
from wsl.outputs import check_output_dir, check_output_file
from wsl.weight_space import WeightSpace, nest_paths
from wsl.zoos.errors import ZooError
from wsl.zoos.model_files import write_state_file
from wsl.zoos.torch_layout import to_torch_state

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
METRICS_FILE = "metrics.csv"
SHARDS = "shards"
SHARD_INFO = "shard.json"
SHARD_ROWS = "rows.csv"
ANALYSIS = "analysis"  # manifest entry of the analysed columns

# Column meanings written into every manifest; columns not listed here get the caller's meaning.
STANDARD_COLUMNS: dict[str, str] = {
    "model": "model id, unique within the zoo; all checkpoints of one model share it",
    "epoch": "training epochs completed when the weights were saved (0 = initialisation)",
    "train_loss": "mean cross-entropy on the model's own training subset (no dropout)",
    "train_acc": "accuracy on the model's own training subset, fraction in [0, 1]",
    "val_loss": "mean cross-entropy on the validation split",
    "val_acc": "accuracy on the validation split, fraction in [0, 1]",
    "test_loss": "mean cross-entropy on the test split",
    "test_acc": "accuracy on the test split, fraction in [0, 1]",
    "gap": "generalisation gap = train_acc - test_acc",
    "diverged": ("true once the model produced a non-finite loss or weight; "
                 "it stopped updating then"),
    "lr": "learning rate",
    "weight_decay": "L2 penalty coefficient (gradient += weight_decay * weight)",
    "init_scale": "init std (normal / truncated_normal / uniform) or gain (default / kaiming_*)",
    "bias_init": "constant every bias was initialised to",
    "dropout": "dropout rate after every hidden activation",
    "train_fraction": "fraction of the training split this model trained on",
    "seed": "per-model seed; the model's keys derive from (recipe seed, this seed)",
    "activation": "hidden activation",
    "optimizer": "optimizer (sgd, momentum, adam, rmsprop)",
    "init": "weight init scheme",
    "width": ("active units in every hidden group (phase zoos); the other units of the stored "
              "tensors are zero"),
}
# Fields that differ between two runs of the same build and so do not count when resuming:
# written when a build finishes, or later (`analysis`: the columns `wsl zoo analyze` adds to a
# finished zoo, which a rebuild keeps).
_VOLATILE = ("provenance", "shards", "complete", "columns", "column_types", "metrics_sha256",
             "num_rows", ANALYSIS)


# Architectures whose PyTorch layout `wsl.zoos.torch_layout` defines and the tests check against
# torch.
TORCH_LAYOUT_ARCHS = ("mlp", "small_cnn", "cnn_s", "resnet", "transformer")


# ------------------------------------------------------------------------------------ helpers
def tensor_filename(path: str) -> str:
    """File name of a tensor inside a shard: ``conv_0/kernel`` -> ``conv_0.kernel.npy``."""
    return path.replace("/", ".") + ".npy"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def zoo_fingerprint(path: str | os.PathLike) -> str:
    """sha256 of what the zoo at `path` holds, as its manifest describes it: recipe, architecture,
    data, every shard file's and the metrics table's checksums, analysis columns — not when, where
    or by which command it was built (``provenance``) nor the recipe's prose description. A rebuild
    that writes the same weights and metrics keeps it; the manifest file's own hash changes with
    every build's timestamp."""
    return manifest_fingerprint(_read_json(Path(path) / MANIFEST, "zoo manifest"))


def manifest_fingerprint(manifest: Mapping[str, Any]) -> str:
    """`zoo_fingerprint` of a manifest already read (`Zoo.manifest`)."""
    content = _without_recipe_prose({k: v for k, v in manifest.items() if k != "provenance"})
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def same_zoo(path: str | os.PathLike, record: Mapping[str, Any]) -> bool:
    """Is the zoo at `path` the one a run `record` read? Its ``zoo_fingerprint`` where the record
    has one, else its ``zoo_sha256`` (the manifest file's hash: older records); a record with
    neither does not say, and is taken at its word."""
    if record.get("zoo_fingerprint"):
        return zoo_fingerprint(path) == record["zoo_fingerprint"]
    if record.get("zoo_sha256"):
        return sha256_file(Path(path) / MANIFEST) == record["zoo_sha256"]
    return True


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# A manifest or shard description is a few kB per shard; anything far larger is not one of ours
# and is refused before it is read into memory.
MAX_JSON_BYTES = 256 << 20


def _read_text(path: Path, what: str, limit: int | None = None) -> str:
    """A UTF-8 text file a user handed us: missing, unreadable, oversized or non-UTF-8 is a
    `ZooError` naming it."""
    if not path.exists():
        raise ZooError(f"{path}: missing ({what})")
    if not path.is_file():
        raise ZooError(f"{path}: not a regular file ({what})")
    if limit is not None and path.stat().st_size > limit:
        raise ZooError(f"{path}: {path.stat().st_size:,} bytes, more than the {limit:,} a {what} "
                       f"can have; not a wsl file")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ZooError(f"{path}: unreadable ({what}): {err.strerror or err}") from err
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ZooError(f"{path}: not UTF-8 text (byte {err.start} is {data[err.start]:#04x}); "
                       f"the {what} is damaged or not a wsl file") from err


def _read_json(path: Path, what: str) -> dict:
    text = _read_text(path, what, MAX_JSON_BYTES)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ZooError(f"{path}: truncated or not valid JSON ({err.msg} at line {err.lineno}, "
                       f"column {err.colno}, file has {len(text)} characters)") from err
    except RecursionError as err:
        raise ZooError(f"{path}: JSON nested too deeply to be a {what}") from err
    if not isinstance(data, dict):
        raise ZooError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def _format(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (float, np.floating)):
        return repr(float(value))  # round-trips exactly; nan / inf stay readable
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return str(value)


def _column_type(values: Sequence[Any]) -> str:
    if all(isinstance(v, (bool, np.bool_)) for v in values):
        return "bool"
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
           for v in values):
        return "int"
    if all(isinstance(v, (int, float, np.integer, np.floating)) for v in values):
        return "float"
    return "str"


def _parse_column(name: str, kind: str, texts: list[str], where: str) -> np.ndarray:
    try:
        if kind == "bool":
            bad = [t for t in texts if t not in ("true", "false")]
            if bad:
                raise ZooError(f"not true/false: {bad[0]!r}")
            return np.array([t == "true" for t in texts], bool)
        if kind == "int":
            return np.array([int(t) for t in texts], np.int64)
        if kind == "float":
            return np.array([float(t) for t in texts], np.float64)
    except (ValueError, OverflowError) as err:
        raise ZooError(f"{where}: column {name!r} should hold {kind} values ({err})") from err
    return np.array(texts, dtype=str)


def _rows_to_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_format(row[c]) for c in columns])
    return out.getvalue()


def _read_csv(path: Path, what: str = "metrics table") -> tuple[list[str], list[list[str]]]:
    text = _read_text(path, what)
    try:
        table = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as err:
        raise ZooError(f"{path}: damaged {what}, not readable as CSV ({err})") from err
    if not table:
        raise ZooError(f"{path}: empty (no header)")
    header, body = table[0], table[1:]
    for i, line in enumerate(body):
        if len(line) != len(header):
            raise ZooError(f"{path}: line {i + 2} has {len(line)} fields, header has {len(header)} "
                           f"(truncated or damaged file)")
    return header, body


def _provenance() -> dict:
    import jax

    return {"created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "wsl_version": _wsl_version(), "jax_version": jax.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "command": " ".join(sys.argv)}


def _wsl_version() -> str:
    try:
        from importlib.metadata import version

        return version("wsl")
    except Exception:  # an uninstalled checkout has no metadata; the version is informative only
        return "unknown"


def _stable(manifest: Mapping) -> dict:
    """The fields that say which zoo this is: a recipe's description is prose that a new wsl
    version may reword, so it never blocks resuming a build."""
    return _without_recipe_prose({k: v for k, v in manifest.items() if k not in _VOLATILE})


def _without_recipe_prose(manifest: dict) -> dict:
    """`manifest` without its recipe's description (prose a new wsl version may reword)."""
    recipe = manifest.get("recipe")
    if isinstance(recipe, Mapping) and isinstance(recipe.get("config"), Mapping):
        config = {k: v for k, v in recipe["config"].items() if k != "description"}
        manifest = {**manifest, "recipe": {**recipe, "config": config}}
    return manifest


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        keys = list(dict.fromkeys([*a, *b]))
        return [d for k in keys for d in _diff_keys(a.get(k, "<absent>"), b.get(k, "<absent>"),
                                                     f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


def _jsonable(manifest: Mapping) -> dict:
    return json.loads(json.dumps(manifest, default=_json_default))


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Mapping):  # frozen maps of specs and recipes
        return dict(value)
    raise TypeError(f"manifest value {value!r} of type {type(value).__name__} is not JSON")


# ------------------------------------------------------------------------------------- writing
class ZooWriter:
    """Writes a zoo shard by shard; reopening the same directory with the same manifest resumes.

    `manifest` needs ``architecture`` ({name, config}) and ``weight_space``
    (`WeightSpace.to_dict()`); the writer adds ``schema_version``, ``generated`` (default false)
    and ``provenance``. `clean` removes the half-written shards of builds no longer running.
    """

    def __init__(self, path: str | os.PathLike, manifest: Mapping[str, Any], *,
                 option: str = "zoo directory", clean: bool = True):
        # A zoo may be resumed in place but never written inside another zoo, over a file or
        # into a folder that cannot be written (`option` names the path in that refusal).
        self.path = check_output_dir(path, option=option, allow_zoo=True)
        for key in ("architecture", "weight_space"):
            if key not in manifest:
                raise ZooError(f"zoo manifest needs {key!r}; got keys {sorted(manifest)}")
        manifest = _jsonable({"schema_version": SCHEMA_VERSION, "generated": False, **manifest})
        self.weight_space = WeightSpace.from_dict(manifest["weight_space"])
        existing = self.path / MANIFEST
        if existing.exists():
            old = _read_json(existing, "zoo manifest")
            differ = _diff_keys(_stable(old), _stable(manifest))
            if differ:
                raise ZooError(f"{self.path} already holds a different zoo (manifest fields "
                               f"{differ[:8]} differ); choose a new --out or delete it to rebuild")
            self.manifest = old
        else:
            if self.path.exists() and any(self.path.iterdir()):
                raise ZooError(f"{self.path} exists, is not empty and has no {MANIFEST}; "
                               f"refusing to write a zoo over it")
            (self.path / SHARDS).mkdir(parents=True, exist_ok=True)
            self.manifest = {**manifest, "provenance": {**_provenance(),
                                                        **manifest.get("provenance", {})}}
            self.manifest.pop("complete", None)
            _write_text_atomic(existing, json.dumps(self.manifest, indent=2) + "\n")
        (self.path / SHARDS).mkdir(exist_ok=True)
        if clean:  # off for all but one process of a multi-process build: their PIDs are not ours
            self._remove_stale_temporaries()

    def _remove_stale_temporaries(self) -> None:
        """Delete half-written shards (``.tmp-INDEX-PID``) of builds that no longer run."""
        for entry in (self.path / SHARDS).iterdir():
            parts = entry.name.split("-")
            if not (entry.name.startswith(".tmp-") and len(parts) == 3 and parts[2].isdigit()):
                continue
            pid = int(parts[2])
            if pid != os.getpid() and _process_alive(pid):
                continue  # another build of this zoo is writing it now
            shutil.rmtree(entry, ignore_errors=True)

    def shard_dir(self, index: int) -> Path:
        return self.path / SHARDS / f"{int(index):05d}"

    def done_shards(self) -> list[int]:
        """Indices of shards already written completely (their rename happened)."""
        done = []
        for entry in sorted((self.path / SHARDS).iterdir()):
            if entry.name.isdigit() and (entry / SHARD_INFO).is_file():
                done.append(int(entry.name))
        return done

    def write_shard(self, index: int, params: Mapping, rows: Sequence[Mapping[str, Any]]) -> None:
        """Write one shard atomically: `params` has a leading row axis matching `rows`."""
        rows = list(rows)
        lead = self.weight_space.batch_shape(params)
        if len(lead) != 1 or lead[0] != len(rows):
            raise ZooError(f"shard {index}: params have leading axes {lead} but {len(rows)} metric "
                           f"rows were given; expected one leading row axis of {len(rows)}")
        if not rows:
            raise ZooError(f"shard {index}: no rows")
        columns = list(rows[0])
        for i, row in enumerate(rows):
            if list(row) != columns:
                raise ZooError(f"shard {index}: row {i} has columns {list(row)}, "
                               f"row 0 has {columns}")
        for need in ("model", "epoch"):
            if need not in columns:
                raise ZooError(f"shard {index}: metric rows need a {need!r} column; got {columns}")
        final = self.shard_dir(index)
        if final.exists():
            raise ZooError(f"{final}: shard {index} is already written")
        tmp = self.path / SHARDS / f".tmp-{int(index):05d}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        try:
            files = {}
            flat = self.weight_space.as_flat_dict(params)
            for t in self.weight_space.tensors:
                name = tensor_filename(t.path)
                array = np.ascontiguousarray(np.asarray(flat[t.path]))
                np.save(tmp / name, array)
                files[name] = {"sha256": sha256_file(tmp / name), "shape": list(array.shape),
                               "dtype": str(array.dtype), "size": (tmp / name).stat().st_size}
            (tmp / SHARD_ROWS).write_text(_rows_to_csv(rows, columns), encoding="utf-8")
            files[SHARD_ROWS] = {"sha256": sha256_file(tmp / SHARD_ROWS),
                                 "size": (tmp / SHARD_ROWS).stat().st_size}
            types = {c: _column_type([r[c] for r in rows]) for c in columns}
            info = {"index": int(index), "rows": len(rows), "columns": types, "files": files}
            (tmp / SHARD_INFO).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
            os.replace(tmp, final)
        except BaseException:
            # Interrupted or failed: leave no half shard behind (a resumed build rewrites it).
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def verify_shard(self, index: int) -> None:
        """Re-check a finished shard's checksums (a resumed build trusts nothing it did not
        check)."""
        folder = self.shard_dir(index)
        info = _read_json(folder / SHARD_INFO, f"shard {index} description")
        files = info.get("files")
        if not isinstance(files, dict) or SHARD_ROWS not in files:
            raise ZooError(f"{folder / SHARD_INFO}: no 'files' entry listing {SHARD_ROWS}; the "
                           f"shard description is damaged — delete {folder} and resume")
        for name, meta in files.items():
            _check_plain_name(name, folder / SHARD_INFO)
            if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str):
                raise ZooError(f"{folder / SHARD_INFO}: file {name!r} has no sha256; the shard "
                               f"description is damaged — delete {folder} and resume")
            check_file(folder / name, meta["sha256"], "shard file", size=meta.get("size"))

    def finalize(self, expected_shards: int | None = None) -> dict:
        """Join every shard's rows into metrics.csv and record the shards in the manifest."""
        done = self.done_shards()
        if expected_shards is not None and done != list(range(expected_shards)):
            missing = sorted(set(range(expected_shards)) - set(done))
            raise ZooError(f"{self.path}: cannot finalize, shards {missing[:10]} are not written")
        if not done:
            raise ZooError(f"{self.path}: cannot finalize a zoo with no shards")
        all_rows, shards, types, columns = [], [], {}, None
        for index in done:
            folder = self.shard_dir(index)
            info = _read_json(folder / SHARD_INFO, f"shard {index} description")
            check_file(folder / SHARD_ROWS, info["files"][SHARD_ROWS]["sha256"])
            header, body = _read_csv(folder / SHARD_ROWS, "shard file")
            if columns is None:
                columns = header
            elif header != columns:
                raise ZooError(f"{folder / SHARD_ROWS}: columns {header} differ from shard "
                               f"{done[0]}'s {columns}")
            for c, kind in info["columns"].items():
                # A column that is int in one shard and float in another is float overall.
                types[c] = kind if types.get(c, kind) == kind else (
                    "float" if {kind, types[c]} <= {"int", "float"} else "str")
            all_rows.extend(body)
            shards.append({"name": f"{SHARDS}/{index:05d}", "rows": int(info["rows"]),
                           "files": info["files"]})
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(all_rows)
        _write_text_atomic(self.path / METRICS_FILE, out.getvalue())
        given = self.manifest.get("columns") or {}
        self.manifest.update({
            "columns": {c: given.get(c, STANDARD_COLUMNS.get(c, "")) for c in columns},
            "column_types": types, "num_rows": len(all_rows), "shards": shards,
            "metrics_sha256": sha256_file(self.path / METRICS_FILE), "complete": True})
        _write_text_atomic(self.path / MANIFEST, json.dumps(self.manifest, indent=2) + "\n")
        return self.manifest


def write_zoo(path: str | os.PathLike, manifest: Mapping[str, Any], params: Mapping,
              rows: Sequence[Mapping[str, Any]], rows_per_shard: int | None = None) -> Zoo:
    """Write a whole (small) zoo at once, e.g. a generated population; returns it opened."""
    writer = ZooWriter(path, manifest)
    rows = list(rows)
    step = rows_per_shard or max(len(rows), 1)
    for index, start in enumerate(range(0, len(rows), step)):
        if index in writer.done_shards():
            continue
        part = {p: np.asarray(a)[start:start + step]
                for p, a in writer.weight_space.as_flat_dict(params).items()}
        writer.write_shard(index, nest_paths(part), rows[start:start + step])
    writer.finalize(-(-len(rows) // step))
    return Zoo.open(path)


_REPAIR = {
    "shard file": "rebuild this shard (delete its folder and resume the build) or restore it",
    "metrics table": (f"rerun the command that wrote the zoo (it rewrites {METRICS_FILE} from the "
                      f"shards) or restore it"),
    "export file": "the export is incomplete or damaged — copy or export it again",
    "analysis table": (f"restore it, or delete the 'analysis' entry of {MANIFEST} and rerun "
                       f"`wsl zoo analyze` (the weights and metrics table are not affected)"),
}


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists but belongs to someone else
        return True
    return True


def _check_plain_name(name: Any, where: Path) -> None:
    """A file name a manifest lists must stay inside its folder: no separators, no ``..``."""
    if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name
            or "\\" in name or "\0" in name):
        raise ZooError(f"{where}: file name {name!r} is not a plain file name inside the shard")


def _size_problem(path: Path, size: Any, what: str) -> str | None:
    """Why `path` is not the file of `size` bytes the manifest recorded (None: it is)."""
    if not path.exists():
        return f"{path}: missing ({what} listed in its manifest); {_REPAIR[what]}"
    if not path.is_file():
        return f"{path}: not a regular file ({what})"
    if isinstance(size, int) and not isinstance(size, bool):
        actual = path.stat().st_size
        if actual != size:
            return (f"{path}: {actual:,} bytes, the manifest records {size:,} (truncated or "
                    f"damaged {what}); {_REPAIR[what]}")
    return None


def _existing_zoo_dir(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise ZooError(f"{path}: no such zoo directory")
    if not path.is_dir():
        raise ZooError(f"{path} is a file, not a zoo directory")
    return path


def check_file(path: Path, sha: str, what: str = "shard file", size: Any = None) -> None:
    """Size, then sha256, against what a manifest records; a mismatch is a `ZooError` naming
    the file and how to repair it."""
    problem = _size_problem(path, size, what)
    if problem:
        raise ZooError(problem)
    try:
        actual = sha256_file(path)
    except OSError as err:
        raise ZooError(f"{path}: unreadable ({what}): {err.strerror or err}") from err
    if actual != sha:
        raise ZooError(f"{path}: checksum mismatch (sha256 {actual[:12]}…, expected "
                       f"{str(sha)[:12]}…); the {what} is damaged — {_REPAIR[what]}")


# ------------------------------------------------------------------------------------- reading
_COLUMN_KINDS = ("bool", "int", "float", "str")
_SHA256_HEX = set("0123456789abcdef")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_manifest(path: Path, manifest: dict) -> WeightSpace:
    """Check a finished zoo's manifest field by field (it is untrusted input); returns its
    weight space. Every path it names must lie inside the zoo, every count be a count."""
    where = path / MANIFEST

    def bad(field: str, message: str):
        raise ZooError(f"{where}: field {field!r} {message}")

    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ZooError(f"{where}: schema_version {version!r}; this wsl reads {SCHEMA_VERSION}")
    if manifest.get("complete") is not True:
        raise ZooError(f"{path}: the zoo is not finished (no shards recorded in {MANIFEST}); "
                       f"resume the build that writes it")
    for key in ("shards", "columns", "column_types", "weight_space", "architecture",
                "metrics_sha256"):
        if key not in manifest:
            raise ZooError(f"{where}: missing field {key!r}")
    arch = manifest["architecture"]
    if not isinstance(arch, dict) or not isinstance(arch.get("name"), str):
        bad("architecture", f"must be an object with a 'name' string, got {arch!r:.80}")
    if not isinstance(arch.get("config", {}), dict):
        bad("architecture.config", f"must be an object, got {arch['config']!r:.80}")
    sha = manifest["metrics_sha256"]
    if not (isinstance(sha, str) and len(sha) == 64 and set(sha) <= _SHA256_HEX):
        bad("metrics_sha256", f"must be a sha256 hex digest, got {sha!r:.80}")
    columns, types = manifest["columns"], manifest["column_types"]
    if not isinstance(columns, dict) or not all(isinstance(c, str) for c in columns):
        bad("columns", f"must map column names to meanings, got {columns!r:.80}")
    if not isinstance(types, dict):
        bad("column_types", f"must map column names to types, got {types!r:.80}")
    for column in columns:
        kind = types.get(column, "str")
        if kind not in _COLUMN_KINDS:
            bad("column_types", f"gives column {column!r} type {kind!r:.40}; types are "
                                f"{list(_COLUMN_KINDS)}")
    for column in ("model", "epoch"):
        if column not in columns:
            bad("columns", f"must include {column!r}; got {list(columns)[:12]}")
    for column, kind in (("model", "int"), ("epoch", "int"), ("diverged", "bool")):
        if column in columns and types.get(column) != kind:
            bad("column_types", f"must give column {column!r} type {kind!r}, got "
                                f"{types.get(column)!r:.40}")
    if "num_rows" in manifest and not _is_count(manifest["num_rows"]):
        bad("num_rows", f"must be a row count, got {manifest['num_rows']!r:.80}")
    try:
        space = WeightSpace.from_dict(manifest["weight_space"])
    except WslError as err:
        raise ZooError(f"{where}: field 'weight_space': {err}") from err
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as err:
        raise ZooError(f"{where}: field 'weight_space' is malformed ({type(err).__name__}: "
                       f"{err})") from err
    shards = manifest["shards"]
    if not isinstance(shards, list) or not shards:
        bad("shards", f"must be a non-empty list, got {shards!r:.80}")
    for i, shard in enumerate(shards):
        field = f"shards[{i}]"
        if not isinstance(shard, dict):
            bad(field, f"must be an object, got {shard!r:.80}")
        name, rows, files = shard.get("name"), shard.get("rows"), shard.get("files")
        parts = name.split("/") if isinstance(name, str) else []
        if len(parts) != 2 or parts[0] != SHARDS or not parts[1].isdigit():
            bad(f"{field}.name", f"must be {SHARDS}/<digits> inside the zoo, got {name!r:.80}")
        if not _is_count(rows):
            bad(f"{field}.rows", f"must be a row count, got {rows!r:.80}")
        if not isinstance(files, dict):
            bad(f"{field}.files", f"must be an object, got {files!r:.80}")
        for file, meta in files.items():
            _check_plain_name(file, where)
            if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str):
                bad(f"{field}.files.{file}", "must be an object with a 'sha256' string")
            if "size" in meta and not _is_count(meta["size"]):
                bad(f"{field}.files.{file}.size", f"must be a byte count, got {meta['size']!r:.80}")
        for t in space.tensors:
            file = tensor_filename(t.path)
            meta = files.get(file)
            if meta is None:
                bad(f"{field}.files", f"lists no {file} (tensor {t.path!r} of the weight space)")
            shape = meta.get("shape")
            if not (isinstance(shape, list) and all(_is_count(d) for d in shape)
                    and tuple(shape) == (rows,) + tuple(t.shape)):
                bad(f"{field}.files.{file}.shape", f"must be {[rows, *t.shape]} (rows, then "
                                                   f"tensor {t.path!r}), got {shape!r:.80}")
            dtype = meta.get("dtype")
            try:
                kind = np.dtype(dtype).kind if isinstance(dtype, str) else None
            except TypeError:
                kind = None
            if kind not in ("f", "i", "u"):
                bad(f"{field}.files.{file}.dtype", f"must name a numeric dtype, got {dtype!r:.80}")
    return space


def _shard_file_problems(path: Path, manifest: dict) -> list[str]:
    """Every file a finished zoo's shards list that is missing or not of its recorded size
    (zoos written before sizes were recorded: existence only). Stats only; reads nothing."""
    problems = []
    for shard in manifest["shards"]:
        folder = path / shard["name"]
        if not folder.is_dir():
            problems.append(f"{folder}: missing (shard folder of a finished zoo); "
                            f"{_REPAIR['shard file']}")
            continue
        for file, meta in shard["files"].items():
            problem = _size_problem(folder / file, meta.get("size"), "shard file")
            if problem:
                problems.append(problem)
    return problems


def _analysis_entry(path: Path, manifest: dict) -> dict | None:
    """The manifest's ``analysis`` entry, checked field by field (untrusted input), or None."""
    entry = manifest.get(ANALYSIS)
    if entry is None:
        return None
    where = path / MANIFEST

    def bad(field: str, message: str):
        raise ZooError(f"{where}: field 'analysis.{field}' {message}")

    if not isinstance(entry, dict):
        raise ZooError(f"{where}: field 'analysis' must be an object, got {entry!r:.80}")
    file = entry.get("file")
    if not (isinstance(file, str) and file.startswith("analysis-") and file.endswith(".csv")
            and "/" not in file and "\\" not in file):
        bad("file", f"must name an analysis-<hash>.csv file in the zoo, got {file!r:.80}")
    if not isinstance(entry.get("sha256"), str):
        bad("sha256", "must be a sha256 hex digest")
    columns = entry.get("columns")
    if not (isinstance(columns, dict) and columns
            and all(isinstance(c, str) and isinstance(m, str) for c, m in columns.items())):
        bad("columns", f"must map column names to meanings, got {columns!r:.80}")
    clash = sorted(set(columns) & set(manifest["columns"]))
    if clash:
        bad("columns", f"repeat metrics-table columns {clash}")
    if not isinstance(entry.get("metrics", {}), dict):
        bad("metrics", "must be an object")
    return entry


def _read_analysis(path: Path, manifest: dict, table: Mapping[str, np.ndarray]
                   ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The analysed columns (float; NaN where there is no value) and, per column, which rows
    were analysed (an empty cell: not yet; ``nan``: analysed, no value), checked against the
    metrics table."""
    entry = _analysis_entry(path, manifest)
    if entry is None:
        return {}, {}
    file = path / entry["file"]
    check_file(file, entry["sha256"], "analysis table", size=entry.get("size"))
    header, body = _read_csv(file, "analysis table")
    columns = list(entry["columns"])
    if header != ["model", "epoch"] + columns:
        raise ZooError(f"{file}: header {header[:8]} should be model, epoch, then the "
                       f"manifest's analysis columns {columns[:6]}")
    if len(body) != len(table["model"]):
        raise ZooError(f"{file}: {len(body)} rows, the metrics table has {len(table['model'])}")
    keys = [_parse_column(c, "int", [line[j] for line in body], str(file))
            for j, c in enumerate(("model", "epoch"))]
    if not (np.array_equal(keys[0], table["model"]) and np.array_equal(keys[1], table["epoch"])):
        raise ZooError(f"{file}: its (model, epoch) rows are not those of {METRICS_FILE}")
    values = {c: _parse_column(c, "float", [line[j + 2] or "nan" for line in body], str(file))
              for j, c in enumerate(columns)}
    done = {c: np.array([line[j + 2] != "" for line in body], bool)
            for j, c in enumerate(columns)}
    return values, done


def write_analysis(path: str | os.PathLike, columns: Mapping[str, np.ndarray],
                   meanings: Mapping[str, str], how: Mapping[str, Any],
                   analysed: Mapping[str, np.ndarray] | None = None) -> Zoo:
    """Add or fill analysed columns of a finished zoo; returns it reopened.

    `columns` maps names to one float per row of the zoo; `analysed[name]` (default: where the
    value is not NaN) marks the rows this call measured — NaN there means "measured, no value"
    (e.g. a layer too small for a fit), and rows not marked are left as they are. A row already
    analysed keeps its value. `how` (metric name -> how it was measured) is merged into
    ``analysis.metrics``. The metrics table and the shards are not touched.
    """
    zoo = Zoo.open(path)
    path, manifest = zoo.path, dict(zoo.manifest)
    rows = len(zoo._table["model"])
    entry = _analysis_entry(path, manifest) or {"columns": {}, "metrics": {}}
    clash = sorted(set(columns) & set(manifest["columns"]))
    if clash:
        raise ZooError(f"{path}: analysed columns {clash} would shadow metrics-table columns")
    merged = {c: zoo._table[c].copy() for c in entry["columns"]}
    done = {c: zoo.analysed(c).copy() for c in entry["columns"]}
    for name, values in columns.items():
        values = np.asarray(values, np.float64)
        if values.shape != (rows,):
            raise ZooError(f"analysed column {name!r}: {values.shape[:3]} values for a zoo of "
                           f"{rows} rows")
        new = np.asarray(analysed[name], bool) if analysed is not None and name in analysed \
            else ~np.isnan(values)
        old = done.get(name, np.zeros(rows, bool))
        take = new & ~old
        merged[name] = np.where(take, values, merged.get(name, np.full(rows, np.nan)))
        done[name] = old | new
    names = list(merged)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["model", "epoch"] + names)
    for r in range(rows):
        writer.writerow([int(zoo._table["model"][r]), int(zoo._table["epoch"][r])]
                        + [repr(float(merged[c][r])) if done[c][r] else "" for c in names])
    file = f"analysis-{hashlib.sha256(out.getvalue().encode()).hexdigest()[:12]}.csv"
    _write_text_atomic(path / file, out.getvalue())
    previous = entry.get("file")
    manifest[ANALYSIS] = {
        "file": file, "sha256": sha256_file(path / file), "size": (path / file).stat().st_size,
        "columns": {c: meanings.get(c) or entry["columns"].get(c, "") for c in names},
        "metrics": {**entry.get("metrics", {}), **_jsonable(dict(how))}}
    _write_text_atomic(path / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    if previous and previous != file:
        (path / previous).unlink(missing_ok=True)  # the manifest no longer names it
    return Zoo.open(path)


def _read_metrics(path: Path, manifest: dict) -> dict[str, np.ndarray]:
    """The metrics table of a checked manifest, verified against its checksum and parsed."""
    file = path / METRICS_FILE
    check_file(file, manifest["metrics_sha256"], "metrics table")
    header, body = _read_csv(file)
    types = manifest["column_types"]
    if header != list(manifest["columns"]):
        raise ZooError(f"{file}: header {header} differs from the manifest's columns "
                       f"{list(manifest['columns'])}")
    if len(body) != manifest.get("num_rows", len(body)):
        raise ZooError(f"{file}: {len(body)} rows, manifest says {manifest['num_rows']}")
    return {c: _parse_column(c, types.get(c, "str"), [line[j] for line in body], str(file))
            for j, c in enumerate(header)}


class _Storage:
    """What every view of one zoo shares: shard offsets and the lazily opened, verified arrays."""

    def __init__(self, path: Path, manifest: dict, weight_space: WeightSpace):
        self.path = path
        self.shards = manifest["shards"]
        self.weight_space = weight_space
        self.starts = np.cumsum([0] + [s["rows"] for s in self.shards])
        self._arrays: dict[tuple[int, str], np.ndarray] = {}
        self._finite: dict[int, np.ndarray] = {}
        self.analysed: dict[str, np.ndarray] = {}  # analysed column -> rows measured

    def array(self, shard: int, tensor: str) -> np.ndarray:
        key = (shard, tensor)
        if key not in self._arrays:
            meta = self.shards[shard]
            name = tensor_filename(tensor)
            file = self.path / meta["name"] / name
            if name not in meta["files"]:
                raise ZooError(f"{self.path / MANIFEST}: shard {meta['name']} lists no {name}")
            info = meta["files"][name]
            check_file(file, info["sha256"], size=info.get("size"))
            array = _load_npy(file)
            expected = tuple(info["shape"])
            if array.shape != expected:
                raise ZooError(f"{file}: shape {array.shape}, manifest says {expected}")
            if "dtype" in info and str(array.dtype) != info["dtype"]:
                raise ZooError(f"{file}: dtype {array.dtype}, manifest says {info['dtype']}")
            self._arrays[key] = array
        return self._arrays[key]

    def gather(self, tensor: str, rows: np.ndarray) -> np.ndarray:
        """Rows (global indices) of one tensor, in the order given."""
        shard = np.searchsorted(self.starts, rows, side="right") - 1
        first = self.array(int(shard[0]), tensor) if len(rows) else None
        out = np.empty((len(rows),) + (first.shape[1:] if first is not None else ()),
                       first.dtype if first is not None else np.float32)
        for s in np.unique(shard):
            pick = shard == s
            out[pick] = self.array(int(s), tensor)[rows[pick] - self.starts[s]]
        return out

    def shard_finite(self, shard: int) -> np.ndarray:
        """Per row of `shard`: are all its weights finite? (read once, in bounded chunks)"""
        if shard not in self._finite:
            ok = np.ones(int(self.shards[shard]["rows"]), bool)
            for t in self.weight_space.tensors:
                ok &= _rows_finite(self.array(shard, t.path))
            self._finite[shard] = ok
        return self._finite[shard]

    def finite(self, rows: np.ndarray) -> np.ndarray:
        """Per global row: are all its weights finite?"""
        shard = np.searchsorted(self.starts, rows, side="right") - 1
        out = np.ones(len(rows), bool)
        for s in np.unique(shard):
            pick = shard == s
            out[pick] = self.shard_finite(int(s))[rows[pick] - self.starts[s]]
        return out


def _load_npy(file: Path) -> np.ndarray:
    try:
        return np.load(file, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ZooError(f"{file}: not a readable .npy file ({err})") from err


def _rows_finite(array: np.ndarray, chunk_bytes: int = 64 << 20) -> np.ndarray:
    """(rows,) bool: every value of the row finite; reads at most `chunk_bytes` at a time."""
    if array.dtype.kind not in "fc":
        return np.ones(len(array), bool)
    flat = array.reshape(len(array), -1)
    step = max(1, chunk_bytes // max(flat.shape[1] * flat.itemsize, 1))
    return np.concatenate([np.isfinite(flat[i:i + step]).all(axis=1)
                           for i in range(0, len(flat), step)] or [np.ones(0, bool)])


class Zoo:
    """A view on the rows of a zoo directory; `Zoo.open(path)` gives all rows.

    Numpy in, numpy out. Row indices passed to `params`, `weights`, `flat` and yielded by
    `batches` are positions in this view (0..len-1); `global_rows` maps them to metrics.csv lines.
    """

    def __init__(self, path: Path, manifest: dict, table: dict[str, np.ndarray],
                 storage: _Storage, rows: np.ndarray):
        self.path, self.manifest, self._table, self._storage = path, manifest, table, storage
        self.global_rows = np.asarray(rows, np.int64)
        self._weight_space = storage.weight_space
        self._architecture = None
        self.dropped: dict[str, int] = {}  # rows each criterion of `select` left out

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | os.PathLike) -> Zoo:
        """Open a finished zoo. The manifest is checked field by field, the metrics table
        against its checksum, and every shard file for existence and recorded size; weights
        are read (and their checksums verified) only when first used — `verify_zoo` reads
        everything now."""
        path = _existing_zoo_dir(path)
        manifest = _read_json(path / MANIFEST, "zoo manifest")
        space = _check_manifest(path, manifest)
        table = _read_metrics(path, manifest)
        analysed, done = _read_analysis(path, manifest, table)
        table.update(analysed)
        problems = _shard_file_problems(path, manifest)
        if problems:
            more = f" (and {len(problems) - 1} more; `wsl zoo verify` lists them)" \
                if len(problems) > 1 else ""
            raise ZooError(problems[0] + more)
        storage = _Storage(path, manifest, space)
        storage.analysed = done
        rows = len(table["model"])
        if storage.starts[-1] != rows:
            raise ZooError(f"{path / MANIFEST}: shards hold {storage.starts[-1]} rows but "
                           f"{METRICS_FILE} has {rows}")
        return cls(path, manifest, table, storage, np.arange(rows))

    def _view(self, rows: np.ndarray) -> Zoo:
        view = Zoo(self.path, self.manifest, self._table, self._storage, rows)
        view._weight_space, view._architecture = self._weight_space, self._architecture
        return view

    # ------------------------------------------------------------------ description
    def __len__(self) -> int:
        return len(self.global_rows)

    def __repr__(self) -> str:
        arch = self.manifest["architecture"]["name"]
        return (f"Zoo({str(self.path)!r}, {arch}, {len(self)} rows, "
                f"{len(np.unique(self.metrics['model']))} models)")

    @property
    def columns(self) -> list[str]:
        """The metrics table's columns, then those `wsl zoo analyze` added."""
        return list(self.manifest["columns"]) + list(self.analysis_columns)

    @property
    def analysis_columns(self) -> dict[str, str]:
        """{column: meaning} of the analysed columns (`write_analysis`)."""
        return dict((self.manifest.get(ANALYSIS) or {}).get("columns", {}))

    def analysed(self, column: str) -> np.ndarray:
        """Per row of this view: has `wsl zoo analyze` measured `column` (even if it found no
        value)? False for every row of a column never analysed."""
        done = self._storage.analysed.get(column)
        return np.zeros(len(self), bool) if done is None else done[self.global_rows]

    @property
    def column_meanings(self) -> dict[str, str]:
        return {**self.manifest["columns"], **self.analysis_columns}

    @property
    def column_types(self) -> dict[str, str]:
        stored = self.manifest["column_types"]
        return {**{c: stored.get(c, "str") for c in self.manifest["columns"]},
                **{c: "float" for c in self.analysis_columns}}

    @property
    def weight_space(self) -> WeightSpace:
        return self._weight_space

    @property
    def architecture(self):
        """The `Architecture` rebuilt from the manifest (`wsl.zoos.architectures.build`)."""
        if self._architecture is None:
            from wsl.zoos.architectures import build

            arch = self.manifest["architecture"]
            try:
                self._architecture = build(arch["name"], **arch.get("config", {}))
            except WslError as err:
                raise ZooError(f"{self.path / MANIFEST}: field 'architecture': {err}") from err
            if self._architecture.weight_space.to_dict() != self.weight_space.to_dict():
                raise ZooError(f"{self.path / MANIFEST}: the weight space recorded differs from "
                               f"the one architecture {arch['name']!r} builds with its config")
        return self._architecture

    def dataset(self):
        """The dataset this zoo was trained on, rebuilt from its manifest (same splits)."""
        from wsl.zoos.datasets import dataset_from_spec

        return dataset_from_spec(self.manifest.get("dataset"), str(self.path / MANIFEST))

    def architecture_of(self, i: int):
        """The architecture of row `i`: `architecture` with the row's own activation, if it
        varies."""
        arch = self.architecture
        act = self.metrics.get("activation")
        if act is None or str(act[i]) == arch.config.get("activation", str(act[i])):
            return arch
        from wsl.zoos.architectures import build

        return build(arch.name, **{**arch.config, "activation": str(act[i])})

    @property
    def metrics(self) -> dict[str, np.ndarray]:
        return {c: v[self.global_rows] for c, v in self._table.items()}

    @property
    def model_ids(self) -> np.ndarray:
        """The distinct model ids in this view, sorted."""
        return np.unique(self._table["model"][self.global_rows])

    @property
    def is_whole(self) -> bool:
        """True if this view holds every row of the zoo, in the zoo's order."""
        return np.array_equal(self.global_rows, np.arange(len(self._table["model"])))

    def metrics_frame(self):
        """This view's metrics as a pandas DataFrame (columns in the table's order, one row per
        row of the view); needs pandas (``pip install pandas``)."""
        try:
            import pandas as pd
        except ImportError as err:
            raise ZooError("Zoo.metrics_frame() needs pandas, which is not installed: "
                           "pip install pandas (or read Zoo.metrics, a dict of numpy columns)") \
                from err
        metrics = self.metrics
        return pd.DataFrame({c: metrics[c] for c in self.columns})

    # ------------------------------------------------------------------ shards, as stored
    @property
    def num_shards(self) -> int:
        return len(self.manifest["shards"])

    def shard_row_range(self, index: int) -> tuple[int, int]:
        """Global rows [start, stop) of the zoo's shard `index`."""
        starts = self._storage.starts
        if not 0 <= index < self.num_shards:
            raise ZooError(f"{self.path}: no shard {index}; the zoo has {self.num_shards}")
        return int(starts[index]), int(starts[index + 1])

    def shard_tensors(self, index: int) -> dict[str, np.ndarray]:
        """The stored arrays of the zoo's shard `index`, {tensor path: (shard rows, *shape)},
        checksum-verified and memory-mapped, whatever rows this view holds."""
        self.shard_row_range(index)
        return {t.path: self._storage.array(index, t.path) for t in self.weight_space.tensors}

    def shard_column_types(self, index: int) -> dict[str, str]:
        """The column types the shard `index` was written with (its ``shard.json``).

        The manifest's ``column_types`` merge the shards' (an int column in one shard and float in
        another is float); a byte-identical copy of the zoo writes each shard with its own. A
        missing or inconsistent ``shard.json`` gives the manifest's types."""
        self.shard_row_range(index)
        stored = list(self.manifest["columns"])  # analysed columns are not in the shards
        merged = {c: self.manifest["column_types"].get(c, "str") for c in stored}
        try:
            info = _read_json(self.path / self.manifest["shards"][index]["name"] / SHARD_INFO,
                              f"shard {index} description")
        except ZooError:
            return merged
        own = info.get("columns")
        if not isinstance(own, dict) or list(own) != stored:
            return merged
        fits = {("int", "float")} | {(k, k) for k in _COLUMN_KINDS} | {
            (k, "str") for k in _COLUMN_KINDS}
        if not all((own[c], merged[c]) in fits for c in stored):
            return merged
        return dict(own)

    # ------------------------------------------------------------------ selecting rows
    def filter(self, epoch: int | Sequence[int] | str | None = None,
               where: Callable[[dict[str, np.ndarray]], np.ndarray] | None = None) -> Zoo:
        """Rows at `epoch` (an int, a list, or ``"last"`` = each model's last checkpoint) and
        `where`."""
        keep = np.ones(len(self), bool)
        metrics = self.metrics
        if epoch is not None:
            epochs, models = metrics["epoch"], metrics["model"]
            if isinstance(epoch, str):
                if epoch != "last":
                    raise ZooError(f"epoch must be an int, a list of ints or 'last', got {epoch!r}")
                last = {}
                for m, e in zip(models, epochs):
                    last[m] = max(last.get(m, e), e)
                keep &= np.array([e == last[m] for m, e in zip(models, epochs)], bool)
            else:
                keep &= np.isin(epochs, np.atleast_1d(np.asarray(epoch)))
        if where is not None:
            mask = np.asarray(where(metrics))
            if mask.shape != (len(self),) or mask.dtype != bool:
                raise ZooError(f"where= must return a boolean mask of shape ({len(self)},), "
                               f"got {mask.dtype} {mask.shape}")
            keep &= mask
        return self._view(self.global_rows[keep])

    def select(self, *, epoch: int | Sequence[int] | str | None = "last", finite: bool = True,
               min_val_acc: float | None = None, models: Sequence[int] | None = None,
               activation: str | None = None, require: Sequence[str] = (),
               min_rows: int = 1) -> Zoo:
        """The rows to learn from or to evaluate: the one way to pick them, in this order.

        * `epoch`: ``"last"`` (each model's last checkpoint), an epoch, a list, or None (all);
        * `models`: model ids to keep; an id without a row at that epoch is an error;
        * `finite`: leave out rows flagged ``diverged`` and rows whose weights hold NaN or inf
          (``dropped["non_finite"]``, with a warning: no healthy zoo has them);
        * `require`: columns that must hold a finite value (numeric columns) in every row kept;
        * `min_val_acc`: keep rows with ``val_acc`` ≥ it. Selecting on test accuracy would let
          the test set choose what is later scored on it, so ``test_acc`` stands in only for a
          zoo without ``val_acc``, with a warning;
        * `activation`: None (any), a name, ``"most_common"`` (among the rows left) or
          ``"single"`` (the rows left must share one, else an error).

        The view's `dropped` counts the rows each criterion left out (``dropped["diverged"]``);
        fewer than `min_rows` rows left is a `ZooError` that names the criteria.
        """
        view, dropped, criteria = self._view(self.global_rows), {}, []

        def keep(name: str, mask: np.ndarray, description: str) -> None:
            nonlocal view
            before = len(view)
            view = view.filter(where=lambda _: np.asarray(mask, bool))
            dropped[name] = before - len(view)
            criteria.append(description)

        if epoch is not None:
            before = len(view)
            view = view.filter(epoch=epoch)
            dropped["epoch"] = before - len(view)
            criteria.append("last epoch" if epoch == "last" else f"epoch {epoch}")
        if models is not None:
            wanted = np.asarray(list(models), np.int64)
            missing = sorted(set(wanted.tolist()) - set(view.model_ids.tolist()))
            if missing:
                at = "" if epoch is None else f" at epoch {epoch}"
                raise ZooError(f"models {missing[:10]} are not in {self.path}{at}")
            keep("models", np.isin(view.metrics["model"], wanted), f"{len(wanted)} model ids")
        if finite:
            if "diverged" in self._table:
                keep("diverged", ~view.metrics["diverged"].astype(bool), "not diverged")
            # Weights are checked too: a damaged or hand-edited shard may hold NaN/inf in rows
            # that no flag marks (the rows read now are the ones a consumer reads next).
            keep("non_finite", view.finite_rows(), "finite weights")
            if dropped["non_finite"]:
                warnings.warn(f"{self.path}: {dropped['non_finite']} selected rows have NaN/inf "
                              f"weights but are not flagged diverged; leaving them out "
                              f"(`wsl zoo verify {self.path}` names them)", stacklevel=2)
        for column in require:
            if column not in self._table:
                raise ZooError(f"{self.path}: no column {column!r}; columns are {self.columns}")
            values = view.metrics[column]
            if values.dtype.kind in "biuf":
                keep(column, np.isfinite(values.astype(np.float64)), f"{column} finite")
        if min_val_acc is not None:
            column = "val_acc" if "val_acc" in self._table else "test_acc"
            if column not in self._table:
                raise ZooError(f"{self.path}: min_val_acc needs a val_acc (or test_acc) column; "
                               f"columns are {self.columns}")
            if column == "test_acc":
                warnings.warn(f"{self.path}: no val_acc column, so min_val_acc selects on "
                              f"test_acc and test accuracy is no longer held out", stacklevel=2)
            values = view.metrics[column].astype(np.float64)
            keep(column, values >= min_val_acc, f"{column} ≥ {min_val_acc}")
        if activation is not None and "activation" in self._table:
            values = view.metrics["activation"].astype(str)
            names, counts = np.unique(values, return_counts=True)
            if activation == "single":
                if len(names) > 1:
                    raise ZooError(f"{self.path}: the selected models use different activations "
                                   f"{names.tolist()}; select models of one activation")
            elif activation == "most_common":
                if len(names):
                    name = str(names[np.argmax(counts)])
                    keep("activation", values == name, f"activation {name} (the most common)")
            else:
                keep("activation", values == activation, f"activation {activation}")
        if len(view) < min_rows:
            raise ZooError(f"{self.path}: only {len(view)} rows pass the selection "
                           f"({', '.join(criteria) or 'all rows'}); need at least {min_rows}")
        view.dropped = dropped
        return view

    def split_by_model(self, fractions: Sequence[float] = (0.8, 0.1, 0.1),
                       seed: int = 0) -> tuple[Zoo, ...]:
        """Disjoint views whose models (never single rows) are split in `fractions`, shuffled by
        seed."""
        fractions = np.asarray(fractions, np.float64)
        if fractions.ndim != 1 or not len(fractions) or (fractions < 0).any() or \
                abs(fractions.sum() - 1.0) > 1e-6:
            raise ZooError(f"fractions must be non-negative and sum to 1, got {fractions.tolist()}")
        models = np.random.default_rng(seed).permutation(self.model_ids)
        bounds = np.round(np.cumsum(fractions) * len(models)).astype(int)
        parts, start = [], 0
        mine = self._table["model"][self.global_rows]
        for end in bounds:
            parts.append(self._view(self.global_rows[np.isin(mine, models[start:end])]))
            start = end
        return tuple(parts)

    # ------------------------------------------------------------------ weights
    def _rows(self, rows) -> np.ndarray:
        if rows is None:
            rows = np.arange(len(self))
        else:
            given = np.atleast_1d(np.asarray(rows))
            if given.size and given.dtype.kind not in "iu":
                # 1.5 must not quietly become row 1 (nor True row 1)
                raise ZooError(f"row indices must be integers, got {given.dtype} "
                               f"{given.tolist()[:8]}")
            rows = given.astype(np.int64)
        if rows.ndim != 1 or (len(rows) and (rows.min() < -len(self) or rows.max() >= len(self))):
            raise IndexError(f"row indices must be in [0, {len(self)}), got {rows.tolist()[:8]}")
        return self.global_rows[rows % max(len(self), 1)]

    def weights(self, rows) -> dict:
        """The params of `rows` stacked on a leading row axis (numpy)."""
        rows = self._rows(rows)
        return nest_paths({t.path: self._storage.gather(t.path, rows)
                           for t in self.weight_space.tensors})

    def params(self, i: int) -> dict:
        """The params pytree of row `i` (numpy)."""
        if not isinstance(i, (int, np.integer)) or isinstance(i, (bool, np.bool_)):
            raise ZooError(f"a row index must be an integer, got {type(i).__name__} {i!r}")
        return _first(self.weights([i]))

    def finite_rows(self, rows=None) -> np.ndarray:
        """(rows,) bool: every weight of the row is finite (reads the rows' shards once)."""
        return self._storage.finite(self._rows(rows))

    def flat(self, rows=None) -> np.ndarray:
        """(rows, num_params) in the weight space's flatten order."""
        rows = self._rows(rows)
        parts = [self._storage.gather(t.path, rows).reshape(len(rows), -1)
                 for t in self.weight_space.tensors]
        return np.concatenate(parts, axis=1)

    def batches(self, batch_size: int, *, shuffle: bool = True, seed: int = 0, flat: bool = False,
                sharding=None, columns: Sequence[str] | None = None,
                drop_last: bool = False) -> Iterator[dict]:
        """Yield {"params" or "flat", "rows", **columns} over this view, one pass.

        `columns` defaults to every metric column. With a `jax.sharding.Sharding`, weights and
        numeric columns come as jax arrays placed with it (their leading axis must then divide
        over its devices: use a fitting `batch_size` and `drop_last=True`).
        """
        if batch_size < 1:
            raise ZooError(f"batch_size must be positive, got {batch_size}")
        columns = self.columns if columns is None else list(columns)
        unknown = [c for c in columns if c not in self._table]
        if unknown:
            raise ZooError(f"unknown metric columns {unknown}; columns are {self.columns}")
        order = (np.random.default_rng(seed).permutation(len(self)) if shuffle
                 else np.arange(len(self)))
        metrics = self.metrics
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            if drop_last and len(rows) < batch_size:
                break
            batch: dict[str, Any] = ({"flat": self.flat(rows)} if flat
                                     else {"params": self.weights(rows)})
            batch["rows"] = rows
            batch.update({c: metrics[c][rows] for c in columns})
            if sharding is not None:
                batch = _place(batch, sharding, columns)
            yield batch

    # ------------------------------------------------------------------ export
    def export(self, i: int, path: str | os.PathLike, format: str | None = None,
               torch_layout: bool = False, *, force: bool = False,
               allow_non_finite: bool = False) -> Path:
        """Write row `i`'s params to one .safetensors or .npz file (PyTorch names/layouts
        optional).

        `format` defaults to the file's suffix (else safetensors); a suffix that contradicts it
        is refused. The path is checked first (`wsl.outputs.check_output_file`): an existing file
        is replaced only with `force`, never a directory or a file inside a zoo. Weights holding
        NaN or inf are refused unless `allow_non_finite`. The file is written whole or not at
        all (a temporary file renamed into place), with the usual permissions (umask)."""
        path = Path(path)
        format = export_format(path, format)
        architecture = self.manifest["architecture"]["name"]
        if torch_layout and architecture not in TORCH_LAYOUT_ARCHS:
            raise ZooError(f"torch layout is defined for {list(TORCH_LAYOUT_ARCHS)}, not "
                           f"{architecture!r}; export without --torch-layout")
        check_output_file(path, force=force)
        row = self.params(i)
        flat = self.weight_space.as_flat_dict(row)
        bad = {p: int(np.size(v) - np.isfinite(v).sum()) for p, v in flat.items()
               if np.asarray(v).dtype.kind in "fc" and not np.isfinite(v).all()}
        if bad and not allow_non_finite:
            model = self.metrics["model"][i]
            raise ZooError(f"model {model} (row {i}) has non-finite weights: "
                           + ", ".join(f"{n} NaN/inf in {p}" for p, n in bad.items())
                           + "; the network is unusable (`wsl zoo verify` checks the whole zoo); "
                             "pass --allow-non-finite to export it anyway")
        params = dict(to_torch_state(self.weight_space, row)) if torch_layout else flat
        own = self.architecture_of(i)  # a mixed-activation zoo records each row's own
        meta = {"architecture": json.dumps({"name": own.name, "config": dict(own.config)},
                                           default=list),
                "row": json.dumps({c: _format(v[i]) for c, v in self.metrics.items()}),
                "layout": "torch" if torch_layout else "jax"}
        write_state_file(path, params, format, metadata=meta)
        return path


EXPORT_FORMATS = {"safetensors": ".safetensors", "npz": ".npz"}


def export_format(path: str | os.PathLike, format: str | None = None) -> str:
    """The export format for `path`: `format` if given (its suffix must not contradict it), else
    the one its suffix names, else safetensors."""
    suffix = Path(path).suffix.lower()
    by_suffix = {v: k for k, v in EXPORT_FORMATS.items()}.get(suffix)
    if format is None:
        return by_suffix or "safetensors"
    if format not in EXPORT_FORMATS:
        raise ZooError(f"unknown export format {format!r}; choose safetensors or npz")
    if by_suffix is not None and by_suffix != format:
        raise ZooError(f"{path}: the suffix {suffix} says {by_suffix} but the format asked is "
                       f"{format}; name the file {Path(path).stem}{EXPORT_FORMATS[format]} or "
                       f"drop --format")
    return format


def _first(tree):
    return {k: (_first(v) if isinstance(v, Mapping) else np.asarray(v[0])) for k, v in tree.items()}


def _place(batch: dict, sharding, columns: Sequence[str]) -> dict:
    import jax

    devices = len(sharding.device_set)
    size = len(batch["rows"])
    if size % devices:
        raise ZooError(f"a batch of {size} rows does not divide over the sharding's {devices} "
                       f"devices; pick batch_size divisible by {devices} and drop_last=True")
    out = dict(batch)
    key = "flat" if "flat" in batch else "params"
    out[key] = jax.device_put(batch[key], sharding)
    for c in columns:
        if batch[c].dtype.kind in "biuf":
            out[c] = jax.device_put(batch[c], sharding)
    return out


@dataclasses.dataclass
class VerifyReport:
    """What `verify_zoo` read and found; `problems` is empty for a sound zoo."""

    path: Path
    shards: int = 0
    files: int = 0
    bytes: int = 0
    rows: int = 0
    non_finite_rows: list[int] = dataclasses.field(default_factory=list)  # flagged diverged
    problems: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        lines = [f"zoo          {self.path}",
                 f"checked      {self.shards} shards, {self.files} files, {self.bytes:,} bytes, "
                 f"{self.rows} rows: sha256, sizes, shapes, dtypes, finiteness of every weight"]
        if self.non_finite_rows:
            lines.append(f"diverged     {len(self.non_finite_rows)} rows hold NaN/inf weights, "
                         f"all flagged diverged (kept as data)")
        lines.append("result       " + ("ok" if self.ok else f"{len(self.problems)} problems"))
        lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)


def verify_zoo(path: str | os.PathLike) -> VerifyReport:
    """Read every file of a finished zoo: checksums, sizes, shapes and dtypes against the
    manifest, and every weight for NaN/inf (allowed only in rows flagged ``diverged``).

    A manifest that cannot be read at all raises `ZooError`; every other fault is collected in
    the report's `problems`, one line each naming the file."""
    path = _existing_zoo_dir(path)
    manifest = _read_json(path / MANIFEST, "zoo manifest")
    _check_manifest(path, manifest)
    report = VerifyReport(path, shards=len(manifest["shards"]))
    table = None
    try:
        table = _read_metrics(path, manifest)
    except ZooError as err:
        report.problems.append(str(err))
    report.files += 1
    if (path / METRICS_FILE).is_file():
        report.bytes += (path / METRICS_FILE).stat().st_size
    if table is not None and manifest.get(ANALYSIS) is not None:
        report.files += 1
        try:
            _read_analysis(path, manifest, table)
            report.bytes += (path / manifest[ANALYSIS]["file"]).stat().st_size
        except ZooError as err:
            report.problems.append(str(err))
    start = 0
    for shard in manifest["shards"]:
        folder, rows = path / shard["name"], shard["rows"]
        finite = np.ones(rows, bool)
        for file, meta in shard["files"].items():
            report.files += 1
            try:
                check_file(folder / file, meta["sha256"], size=meta.get("size"))
                report.bytes += (folder / file).stat().st_size
                if not file.endswith(".npy"):
                    continue
                array = _load_npy(folder / file)
                if list(array.shape) != meta.get("shape") or str(array.dtype) != meta.get("dtype"):
                    raise ZooError(f"{folder / file}: {array.dtype} {list(array.shape)}, the "
                                   f"manifest records {meta.get('dtype')} {meta.get('shape')}")
                finite &= _rows_finite(array)
            except ZooError as err:
                report.problems.append(str(err))
        bad = np.flatnonzero(~finite) + start
        if len(bad):
            flagged = (table["diverged"][bad] if table is not None and "diverged" in table
                       else np.zeros(len(bad), bool))
            report.non_finite_rows += bad[flagged].tolist()
            if not flagged.all():
                unflagged = bad[~flagged]
                models = (f"models {sorted(set(table['model'][unflagged].tolist()))[:10]}"
                          if table is not None else f"rows {unflagged.tolist()[:10]}")
                report.problems.append(f"{folder}: {len(unflagged)} rows hold NaN/inf weights "
                                       f"but are not flagged diverged ({models})")
        start += rows
    report.rows = start
    return report


def open_zoo(path: str | os.PathLike) -> Zoo:
    return Zoo.open(path)
