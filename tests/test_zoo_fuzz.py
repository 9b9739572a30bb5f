"""Fuzzing the files a zoo reader trusts least: whatever is done to a zoo's manifest.json or
metrics.csv, opening the zoo (`Zoo.open`, `.metrics`, `select`, reading the selected weights)
either works or raises a `WslError` — never another exception type."""

import csv
import hashlib
import io
import json
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsl.errors import WslError
from wsl.zoos.architectures import build
from wsl.zoos.store import Zoo, write_zoo

EXAMPLES = settings(max_examples=100, deadline=None, derandomize=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 3-model zoo in 2 shards written directly (no training); its pristine texts."""
    arch = build("mlp", input_shape=(3,), widths=(2,), num_classes=2)
    rng = np.random.default_rng(0)
    rows = [{"model": m, "epoch": e, "val_acc": float(rng.uniform()), "test_acc": 0.5,
             "diverged": m == 2 and e == 1, "activation": "relu"}
            for m in range(3) for e in (0, 1)]
    params = arch.weight_space.unflatten(
        rng.standard_normal((len(rows), arch.weight_space.num_params)).astype(np.float32))
    manifest = {"architecture": {"name": "mlp", "config": {"input_shape": [3], "widths": [2],
                                                           "num_classes": 2}},
                "weight_space": arch.weight_space.to_dict(), "dataset": {"name": "none"}}
    path = tmp_path_factory.mktemp("fuzz") / "zoo"
    write_zoo(path, manifest, params, rows, rows_per_shard=4)
    return path, json.loads((path / "manifest.json").read_text()), \
        (path / "metrics.csv").read_bytes()


def _open_and_read(path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            zoo = Zoo.open(path)
            assert len(zoo.metrics["model"]) == len(zoo)
            for view in (zoo.select(), zoo.select(epoch=None, finite=False)):
                view.flat()
                view.params(0)
        except WslError:
            pass


def _paths(value, prefix=()):
    """Every path (tuple of keys / indices) inside a JSON value."""
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, prefix + (i,))
    return out


def _set(root, path, value=None, delete=False):
    node = root
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value


JSON_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 10**30), st.floats(allow_nan=True),
    st.text(max_size=6), st.lists(st.integers(-2, 9), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(-1, 3), max_size=2),
    st.sampled_from(["shards/00000", "../../etc", "shards/../..", "float16", "<U3", "O", "int",
                     "str", "bool", "0" * 64]))


def _write(path, manifest_bytes: bytes, metrics_bytes: bytes) -> None:
    (path / "manifest.json").write_bytes(manifest_bytes)
    (path / "metrics.csv").write_bytes(metrics_bytes)


def _mutate_bytes(data, blob: bytes) -> bytes:
    how = data.draw(st.sampled_from(["truncate", "replace", "insert"]))
    at = data.draw(st.integers(0, max(len(blob) - 1, 0)))
    if how == "truncate":
        return blob[:at]
    new = data.draw(st.binary(min_size=1, max_size=4))
    return blob[:at] + new + blob[at + (len(new) if how == "replace" else 0):]


@EXAMPLES
@given(data=st.data())
def test_any_manifest_damage_is_a_wsl_error(tiny, data):
    path, manifest, metrics = tiny
    manifest = json.loads(json.dumps(manifest))
    for _ in range(data.draw(st.integers(1, 3))):
        how = data.draw(st.sampled_from(["delete", "retype", "retype", "bytes"]))
        if how == "bytes":
            break
        inner = [p for p in _paths(manifest) if p]
        target = data.draw(st.sampled_from(inner))
        if how == "delete":
            _set(manifest, target, delete=True)
        else:
            _set(manifest, target, data.draw(JSON_VALUES))
    text = json.dumps(manifest).encode()
    if how == "bytes":
        text = _mutate_bytes(data, text)
    _write(path, text, metrics)
    _open_and_read(path)


def _table(blob: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(blob.decode())))


def _csv(table) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(table)
    return out.getvalue().encode()


CELLS = st.one_of(st.sampled_from(["", "nan", "inf", "-1", "1e999", "true", "oops", "1.5",
                                   "9" * 40, "relu", "\x00"]), st.text(max_size=5))


@EXAMPLES
@given(data=st.data())
def test_any_metrics_table_damage_is_a_wsl_error(tiny, data):
    path, manifest, metrics = tiny
    table = _table(metrics)
    how = data.draw(st.sampled_from(["cell", "cell", "drop_column", "extra_column", "drop_rows",
                                     "ragged_row", "empty", "bytes"]))
    if how == "cell":
        for _ in range(data.draw(st.integers(1, 3))):
            i = data.draw(st.integers(0, len(table) - 1))
            table[i][data.draw(st.integers(0, len(table[i]) - 1))] = data.draw(CELLS)
    elif how == "drop_column":
        j = data.draw(st.integers(0, len(table[0]) - 1))
        table = [row[:j] + row[j + 1:] for row in table]
    elif how == "extra_column":
        table = [row + [data.draw(CELLS)] for row in table]
    elif how == "drop_rows":
        table = table[:data.draw(st.integers(0, len(table) - 1))]
    elif how == "ragged_row":
        i = data.draw(st.integers(0, len(table) - 1))
        table[i] = table[i][:data.draw(st.integers(0, len(table[i]) - 1))]
    blob = {"empty": b"", "bytes": _mutate_bytes(data, metrics)}.get(how) or _csv(table)
    forged = json.loads(json.dumps(manifest))
    if data.draw(st.booleans()) or how != "bytes":  # a forged checksum: the parser is reached
        forged["metrics_sha256"] = hashlib.sha256(blob).hexdigest()
    if how == "drop_column" and data.draw(st.booleans()):  # the manifest forged to agree
        forged["columns"] = {c: "" for c in table[0]} if table and table[0] else {}
    _write(path, json.dumps(forged).encode(), blob)
    _open_and_read(path)


def test_the_pristine_zoo_opens(tiny):
    path, manifest, metrics = tiny
    _write(path, json.dumps(manifest).encode(), metrics)
    zoo = Zoo.open(path)
    assert len(zoo.select()) == 2 and zoo.select().dropped["diverged"] == 1
