"""Zoos that can be shared (issue 24): `wsl zoo card` writes a dataset card whose front matter
parses, with its figures; `wsl zoo export --all` + `wsl zoo import --format wsl-export` give back
a zoo byte-identical in every weight file and the metrics table (Parquet and CSV); bad input is
one line naming the fault, and nothing is left half-written."""

import hashlib
import json
import math
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.cli import run_wsl
from wsl.errors import WslError
from wsl.outputs import is_zoo_dir
from wsl.weight_space import nest_paths
from wsl.zoos.architectures import build
from wsl.zoos.card import read_front_matter, to_yaml
from wsl.zoos.store import Zoo, ZooError, open_zoo, write_zoo

try:
    import yaml
except ImportError:  # the library never needs it; the hand parser below reads the front matter
    yaml = None


# --------------------------------------------------------------------------- a small zoo, fast
@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> Path:
    """6 small CNNs × 2 checkpoints in 3 shards of 4 rows, written directly (no training): a
    float16 tensor, one diverged model with NaN weights, a column that is int in the first shard
    and float in the others, text with quotes, commas and non-ASCII, and a NaN loss."""
    out = tmp_path_factory.mktemp("card") / "zoo"
    arch = build("small_cnn", channels=4, input_shape=(8, 8, 1), num_classes=10)
    space = arch.weight_space
    rng = np.random.default_rng(0)
    params = {t.path: rng.normal(size=(12, *t.shape)).astype(np.float32) for t in space.tensors}
    params["dense_0/bias"] = params["dense_0/bias"].astype(np.float16)
    params["conv_0/kernel"][10:] = np.nan  # model 5 diverged
    rows = []
    for model in range(6):
        for epoch in (0, 2):
            row = len(rows)
            rows.append({
                "model": model, "epoch": epoch,
                "test_loss": math.nan if row == 3 else float(rng.uniform(0.1, 2.0)),
                "test_acc": float(rng.uniform(0.1, 0.95)), "val_acc": float(rng.uniform(0.1, 1)),
                "diverged": model == 5, "lr": float(10 ** rng.uniform(-4, -1)),
                "weight_decay": float(10 ** rng.uniform(-6, -2)),
                "optimizer": ["adam", "sgd"][model % 2],
                "mixed": row if row < 4 else row + 0.5,
                "note": ['plain', 'a, "quoted" ü', 'ends: with colon', "true"][row % 4],
            })
    manifest = {
        "architecture": {"name": arch.name, "config": json.loads(json.dumps(dict(arch.config),
                                                                            default=list))},
        "weight_space": space.to_dict(),
        "dataset": {"name": "mnist", "options": {"resize": [8, 8]}},
        "recipe": {"name": "small-cnn", "config": {"description": "a test population"}},
        "columns": {"mixed": "an int in shard 0, a float after", "note": "free text"},
    }
    write_zoo(out, manifest, nest_paths(params), rows, rows_per_shard=4)
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def _digest(root: Path) -> dict[str, str]:
    return {name: hashlib.sha256(data).hexdigest() for name, data in _files(root).items()}


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("wsl zoo: error: "), err
    assert "Traceback" not in err
    return lines[0]


# ------------------------------------------------------------- the front matter, read by hand
def _unquote(text: str) -> str:
    assert text[0] == text[-1] == '"', text
    out, i, body = [], 0, text[1:-1]
    simple = {'"': '"', "\\": "\\", "n": "\n", "t": "\t", "/": "/", "0": "\0"}
    while i < len(body):
        char = body[i]
        if char != "\\":
            out.append(char)
            i += 1
            continue
        code = body[i + 1]
        if code in simple:
            out.append(simple[code])
            i += 2
        else:
            width = {"x": 2, "u": 4, "U": 8}[code]
            out.append(chr(int(body[i + 2:i + 2 + width], 16)))
            i += 2 + width
    return "".join(out)


def _scalar(text: str):
    special = {"null": None, "true": True, "false": False, "{}": {}, "[]": [], ".nan": math.nan,
               ".inf": math.inf, "-.inf": -math.inf}
    if text in special:
        return special[text]
    if text.startswith('"'):
        return _unquote(text)
    if text.startswith("[") and text.endswith("]"):
        return [_scalar(part) for part in text[1:-1].split(", ")]
    if re.fullmatch(r"[-+]?\d+", text):
        return int(text)
    if re.fullmatch(r"[-+]?\d+\.\d*(e[-+]\d+)?", text):
        return float(text)
    return text


def _split_key(text: str) -> tuple[str, str]:
    """``key: value`` or ``key:`` (the key possibly quoted) -> (key, rest)."""
    if text.startswith('"'):
        end = 1
        while text[end] != '"':
            end += 2 if text[end] == "\\" else 1
        return _unquote(text[:end + 1]), text[end + 2:].strip()
    key, _, rest = text.partition(":")
    return key, rest.strip()


def parse_front_matter(text: str):
    """The subset of YAML `to_yaml` writes: block mappings and sequences (a sequence may stand at
    its key's indentation), flow lists of numbers, plain / double-quoted scalars, ``|`` and
    ``|-`` blocks."""
    lines = [(len(line) - len(line.lstrip(" ")), line.strip(), line) for line in
             text.split("\n")]
    pos = 0

    def peek():
        nonlocal pos
        while pos < len(lines) and not lines[pos][1]:
            pos += 1
        return lines[pos] if pos < len(lines) else None

    def literal(parent: int, keep: bool) -> str:
        nonlocal pos
        body, indent = [], None
        while pos < len(lines) and (not lines[pos][1] or lines[pos][0] > parent):
            raw = lines[pos][2]
            if raw.strip():
                indent = lines[pos][0] if indent is None else indent
                body.append(raw[indent:])
            else:
                body.append("")
            pos += 1
        while body and not body[-1]:
            body.pop()
        return "\n".join(body) + ("\n" if keep else "")

    def value(rest: str, indent: int, under_key: bool):
        nonlocal pos
        if rest in ("|", "|-"):
            return literal(indent, rest == "|")
        if rest:
            return _scalar(rest)
        following = peek()
        if following and under_key and following[0] == indent and following[1].startswith("-"):
            return node(indent)
        return node(following[0])

    def node(indent: int):
        nonlocal pos
        first = peek()
        if first[1] == "-" or first[1].startswith("- "):
            items = []
            while (line := peek()) and line[0] == indent and (line[1] == "-"
                                                              or line[1].startswith("- ")):
                rest = line[1][1:].strip()
                if rest and not rest.startswith('"') and re.match(r"[^\s:]+:( |$)", rest) \
                        or rest.startswith('"') and re.match(r'"(?:[^"\\]|\\.)*":( |$)', rest):
                    lines[pos] = (indent + 2, rest, " " * (indent + 2) + rest)  # a mapping item
                    items.append(node(indent + 2))
                else:
                    pos += 1
                    items.append(value(rest, indent, False))
            return items
        mapping = {}
        while (line := peek()) and line[0] == indent and not line[1].startswith("- "):
            key, rest = _split_key(line[1])
            pos += 1
            mapping[key] = value(rest, indent, True)
        return mapping

    return node(0)


def _load(text: str):
    return yaml.safe_load(text) if yaml is not None else parse_front_matter(text)


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


TRICKY = {
    "plain": "digits", "spaces": "wsl zoo quick", "empty": "", "yes": "yes", "true": "true",
    "null": "null", "number": "1e3", "int": "42", "time": "12:30", "date": "2024-01-01",
    "lead": " leading space", "colon": "a: b", "hash": "x #y", "dash": "- item", "star": "*ref",
    "quote": 'say "hi"', "backslash": "C:\\path", "unicode": "Schürholt – ü", "tab": "a\tb",
    "control": "bell\x07", "separator": "line\u2028break", "emoji": "zoo \U0001F98A",
    "multi": "first\n  indented second\n", "multi_strip": "@misc{k,\n  title = {T}\n}",
    "float_small": 1e-05, "float_big": 1e20, "negzero": -0.0, "nan": math.nan,
    "inf": math.inf, "ninf": -math.inf, "integer": -7, "flag": False, "none": None,
    "a: key": 1, "1": "one", "shape": [64, 32], "empty_list": [], "empty_map": {},
    "words": ["relu", "tanh", "n<1K", "true"],
    "configs": [{"config_name": "default",
                 "data_files": [{"split": "train", "path": "metrics.parquet"}]}],
    "nested": {"deeper": {"list": [[1, 2], {"k": "v"}, "x"], "text": "end\n"}},
}


def test_yaml_emitter_round_trips_tricky_values():
    text = to_yaml(TRICKY)
    assert _same(parse_front_matter(text), TRICKY), text
    if yaml is not None:  # the hand parser agrees with a real YAML reader on the same text
        assert _same(yaml.safe_load(text), TRICKY), text
    assert "shape: [64, 32]\n" in text and "- config_name: default\n" in text
    assert "multi_strip: |-\n  @misc{k,\n    title = {T}\n  }\n" in text


# ----------------------------------------------------------------------------------- the card
def test_card_front_matter_and_figures(zoo, tmp_path):
    before = _digest(zoo)
    code, out, err = run_wsl(["zoo", "card", str(zoo), "--out", str(tmp_path / "card")])
    assert code == 0, err
    assert "license: unknown" in err and "--license" in err  # said, not silent
    card = tmp_path / "card" / "README.md"
    meta = _load(read_front_matter(card))
    if yaml is not None:
        assert _same(parse_front_matter(read_front_matter(card)), meta)
    z = open_zoo(zoo)
    assert meta["license"] == "unknown"
    assert meta["pretty_name"] == "wsl zoo small-cnn: 6 trained small_cnn networks on mnist"
    assert meta["size_categories"] == ["n<1K"] and "weight-space-learning" in meta["tags"]
    assert meta["task_categories"] == ["tabular-regression"] and "configs" not in meta
    info = meta["wsl"]
    assert info["architecture"] == z.manifest["architecture"]
    assert info["parameters"] == z.weight_space.num_params
    assert info["tensors"]["conv_0/kernel"] == [3, 3, 1, 4]
    assert info["dataset"] == z.manifest["dataset"] and info["recipe"] == z.manifest["recipe"]
    assert (info["models"], info["rows"], info["checkpoints"]) == (6, 12, [0, 2])
    assert list(info["columns"]) == z.columns
    assert info["columns"]["note"] == {"type": "str", "meaning": "free text"}
    assert info["columns"]["mixed"]["type"] == "float"  # merged over shards
    assert info["provenance"]["created"] == z.manifest["provenance"]["created"]
    assert "@misc{" in meta["citation"] and "TODO" in meta["citation"]
    assert "unterthiner2020predicting" in meta["citation"]  # the small-cnn recipe's source
    text = card.read_text(encoding="utf-8")
    for figure in ("figures/accuracy_histogram.png", "figures/hyperparameters.png"):
        assert f"]({figure})" in text
        assert (tmp_path / "card" / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "coloured by optimizer" in text and "```bibtex" in text
    assert "| `note` | str | free text |" in text
    assert _digest(zoo) == before  # the zoo is read, never written
    # a license given is recorded; a second card into the same folder only with --force
    code, _, err = run_wsl(["zoo", "card", str(zoo), "--out", str(tmp_path / "card"),
                         "--license", "cc-by-4.0"])
    assert code == 1 and "not empty" in _one_error_line(err)
    assert run_wsl(["zoo", "card", str(zoo), "--out", str(tmp_path / "card"), "--license",
                 "cc-by-4.0", "--force"])[0] == 0
    assert _load(read_front_matter(card))["license"] == "cc-by-4.0"
    # never into a zoo
    code, _, err = run_wsl(["zoo", "card", str(zoo), "--out", str(zoo / "card")])
    assert code == 1 and "inside the zoo" in _one_error_line(err)
    assert _digest(zoo) == before


def test_metrics_frame(zoo, monkeypatch):
    pd = pytest.importorskip("pandas", reason="metrics_frame needs pandas (optional)")
    z = open_zoo(zoo)
    frame = z.metrics_frame()
    assert isinstance(frame, pd.DataFrame) and list(frame.columns) == z.columns
    assert len(frame) == 12
    for column, values in z.metrics.items():
        np.testing.assert_array_equal(frame[column].to_numpy(), values)
    view = z.select(epoch="last")  # a view's frame holds the view's rows
    assert frame.shape[1] == view.metrics_frame().shape[1] and len(view.metrics_frame()) == 5
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if it were not installed
    with pytest.raises(ZooError, match="pip install pandas"):
        z.metrics_frame()


# --------------------------------------------------------------------- export and import back
def _round_trip(zoo: Path, tmp_path: Path, metrics: str) -> tuple[Path, Path]:
    export, back = tmp_path / "export", tmp_path / "back"
    code, out, err = run_wsl(["zoo", "export", str(zoo), "--all", "--out", str(export), "--metrics",
                           metrics, "--license", "cc-by-4.0", "--no-progress"])
    assert code == 0, err
    assert "license: unknown" not in err
    assert not is_zoo_dir(export)  # the zoo manifest is nested: an export is not a zoo
    code, out, err = run_wsl(["zoo", "import", "--format", "wsl-export", str(export), "--out",
                           str(back), "--no-progress"])
    assert code == 0, err
    assert "warning" not in err, err
    assert run_wsl(["zoo", "verify", str(back)])[0] == 0
    return export, back


@pytest.mark.parametrize("metrics", ["parquet", "csv"])
def test_export_all_and_import_back_is_byte_identical(zoo, tmp_path, metrics):
    if metrics == "parquet":
        pytest.importorskip("pyarrow", reason="Parquet needs pyarrow (the parquet extra)")
    before = _digest(zoo)
    export, back = _round_trip(zoo, tmp_path, metrics)
    assert _digest(zoo) == before
    original, copy = _files(zoo), _files(back)
    assert sorted(original) == sorted(copy)
    for name, data in original.items():  # every tensor of every shard, rows.csv, metrics.csv
        if name != "manifest.json":
            assert copy[name] == data, name
    a, b = open_zoo(zoo), open_zoo(back)
    for column in a.columns:  # same values, same types, same row order
        assert a.metrics[column].dtype == b.metrics[column].dtype, column
        np.testing.assert_array_equal(a.metrics[column], b.metrics[column])
    for t in a.weight_space.tensors:
        x, y = a.weights(None)[t.path.split("/")[0]], b.weights(None)[t.path.split("/")[0]]
        for key in x:
            assert x[key].dtype == y[key].dtype and x[key].tobytes() == y[key].tobytes()
    assert b.metrics["mixed"].dtype == np.float64
    assert (back / "shards" / "00000" / "rows.csv").read_text().splitlines()[1].split(",")[9] \
        == "0"  # shard 0 kept its int column as int
    manifest = {k: v for k, v in b.manifest.items() if k != "provenance"}
    assert manifest == {k: v for k, v in a.manifest.items() if k != "provenance"}
    assert b.manifest["provenance"]["imported"]["format"] == "wsl-export"
    # the export itself: a card pointing at its files, one safetensors file per shard
    front = _load(read_front_matter(export / "README.md"))
    assert front["license"] == "cc-by-4.0"
    assert front["configs"] == [{"config_name": "default", "data_files": [
        {"split": "train", "path": f"metrics.{metrics}"}]}]
    assert front["wsl"]["files"]["weights"] == [f"weights/{i:05d}.safetensors" for i in range(3)]
    assert (export / f"metrics.{metrics}").is_file()
    from safetensors import safe_open

    with safe_open(str(export / "weights" / "00001.safetensors"), framework="np") as f:
        assert sorted(f.keys()) == sorted(t.path for t in a.weight_space.tensors)
        meta = f.metadata()
        assert json.loads(meta["architecture"])["name"] == "small_cnn"
        assert json.loads(meta["weight_space"]) == a.weight_space.to_dict()
        assert json.loads(meta["rows"])["start"] == 4
        assert json.loads(meta["rows"])["model"] == [2, 2, 3, 3]
        assert f.get_tensor("dense_0/bias").dtype == np.float16


def test_without_pyarrow_metrics_are_csv_and_said(zoo, tmp_path, monkeypatch):
    from wsl.zoos import export as export_module

    monkeypatch.setattr(export_module, "parquet_available", lambda: False)
    code, _, err = run_wsl(["zoo", "export", str(zoo), "--all", "--out", str(tmp_path / "e"),
                         "--no-progress"])
    assert code == 0 and "metrics.csv" in err and "pip install" in err and "pyarrow" in err
    assert (tmp_path / "e" / "metrics.csv").read_bytes() == (zoo / "metrics.csv").read_bytes()
    code, _, err = run_wsl(["zoo", "export", str(zoo), "--all", "--out", str(tmp_path / "f"),
                         "--metrics", "parquet", "--no-progress"])
    assert code == 1 and "pyarrow" in _one_error_line(err) and not (tmp_path / "f").exists()


# ------------------------------------------------------------------------------------ bad input
def test_all_and_model_exclude_each_other(zoo, tmp_path):
    code, _, err = run_wsl(["zoo", "export", str(zoo), "--all", "--model", "1", "--out",
                         str(tmp_path / "x")])
    line = _one_error_line(err)
    assert code == 2 and "--all" in line and "--model" in line
    code, _, err = run_wsl(["zoo", "export", str(zoo), "--out", str(tmp_path / "x")])
    assert code == 2 and "--model ID" in _one_error_line(err)
    code, _, err = run_wsl(["zoo", "export", str(zoo), "--all", "--out", str(tmp_path / "x"),
                         "--torch-layout"])
    assert code == 2 and "--torch-layout applies to --model only" in _one_error_line(err)
    assert not (tmp_path / "x").exists()


def test_export_all_refuses_a_folder_that_holds_something(zoo, tmp_path):
    target = tmp_path / "full"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    code, _, err = run_wsl(["zoo", "export", str(zoo), "--all", "--out", str(target),
                         "--metrics", "csv", "--no-progress"])
    assert code == 1 and "not empty" in _one_error_line(err)
    assert _files(target) == {"keep.txt": b"mine"}
    code, _, err = run_wsl(["zoo", "export", str(zoo), "--all", "--out", str(zoo / "x"),
                         "--metrics", "csv"])
    assert code == 1 and "inside the zoo" in _one_error_line(err)
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary folder left behind


@pytest.fixture(scope="module")
def exported(zoo, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exported") / "export"
    code, _, err = run_wsl(["zoo", "export", str(zoo), "--all", "--out", str(out), "--metrics",
                         "csv", "--no-progress"])
    assert code == 0, err
    return out


def _damage_missing(export: Path) -> str:
    (export / "weights" / "00001.safetensors").unlink()
    return "weights/00001.safetensors: missing"


def _damage_checksum(export: Path) -> str:
    file = export / "weights" / "00002.safetensors"
    data = bytearray(file.read_bytes())
    data[-5] ^= 0xFF  # same size, different bytes
    file.write_bytes(bytes(data))
    return "weights/00002.safetensors: checksum mismatch"


def _damage_metrics(export: Path) -> str:
    file = export / "metrics.csv"
    file.write_text(file.read_text().replace("adam", "adom", 1))
    return "metrics.csv: checksum mismatch"


def _damage_manifest_path(export: Path) -> str:
    manifest = json.loads((export / "manifest.json").read_text())
    manifest["weights"][0]["file"] = "../../elsewhere.safetensors"
    (export / "manifest.json").write_text(json.dumps(manifest))
    return "must be weights/NAME inside the export"


def _damage_truncated_manifest(export: Path) -> str:
    text = (export / "manifest.json").read_text()
    (export / "manifest.json").write_text(text[:len(text) // 2])
    return "truncated or not valid JSON"


@pytest.mark.parametrize("damage", [_damage_missing, _damage_checksum, _damage_metrics,
                                    _damage_manifest_path, _damage_truncated_manifest])
def test_import_of_a_damaged_export_names_the_fault(exported, tmp_path, damage):
    copy = tmp_path / "export"
    shutil.copytree(exported, copy)
    expected = damage(copy)
    before = _digest(copy)
    code, _, err = run_wsl(["zoo", "import", "--format", "wsl-export", str(copy), "--out",
                         str(tmp_path / "zoo"), "--no-progress"])
    assert code == 1 and expected in _one_error_line(err), err
    assert not (tmp_path / "zoo").exists()  # nothing half-imported left behind
    assert _digest(copy) == before
    from wsl.zoos.importers import import_zoo

    with pytest.raises(WslError, match=re.escape(expected)):
        import_zoo("wsl-export", copy, tmp_path / "zoo2", progress=False)


def test_import_refuses_a_zoo_and_an_out_inside_the_export(zoo, exported, tmp_path):
    code, _, err = run_wsl(["zoo", "import", "--format", "wsl-export", str(zoo), "--out",
                         str(tmp_path / "z")])
    assert code == 1 and "not a wsl export" in _one_error_line(err)
    code, _, err = run_wsl(["zoo", "import", "--format", "wsl-export", str(exported), "--out",
                         str(exported / "z")])
    assert code == 1 and "inside the export" in _one_error_line(err)
    assert not (exported / "z").exists()
    assert isinstance(Zoo.open(zoo), Zoo)
