"""The zoo store: exact round trips, views and splits, lazy checksummed reads, damage, export
layouts."""

import csv
import json

import jax
import numpy as np
import pytest

from wsl.mesh import leading_axis, make_mesh
from wsl.weight_space import nest_paths
from wsl.zoos import open_zoo
from wsl.zoos.architectures import build
from wsl.zoos.model_files import read_model
from wsl.zoos.store import (
    Zoo,
    ZooError,
    ZooWriter,
    manifest_fingerprint,
    same_zoo,
    sha256_file,
    write_zoo,
    zoo_fingerprint,
)
from wsl.zoos.torch_layout import to_torch_state

MODELS, EPOCHS = 6, (0, 2, 5)


def _population(arch, rows, seed=0):
    rng = np.random.default_rng(seed)
    return arch.weight_space.unflatten(
        rng.standard_normal((rows, arch.weight_space.num_params)).astype(np.float32))


def _rows():
    rng = np.random.default_rng(1)
    out = []
    for m in range(MODELS):
        lr = float(10 ** rng.uniform(-4, -1))
        for e in EPOCHS:
            acc = float(rng.uniform())
            out.append({"model": m, "epoch": e, "test_acc": acc, "train_acc": min(acc + 0.1, 1.0),
                        "gap": 0.1, "diverged": bool(m == 3 and e == 5), "lr": lr,
                        "activation": "relu" if m % 2 else "tanh"})
    return out


def _manifest(arch):
    return {"architecture": {"name": arch.name, "config": {k: list(v) if isinstance(v, tuple) else v
                                                           for k, v in arch.config.items()}},
            "weight_space": arch.weight_space.to_dict(), "dataset": {"name": "none"},
            "recipe": {"name": "test"}, "generated": True}


@pytest.fixture(scope="module")
def arch():
    return build("mlp", input_shape=(6,), widths=(5, 4), num_classes=3)


@pytest.fixture()
def zoo_dir(tmp_path, arch):
    rows = _rows()
    params = _population(arch, len(rows))
    write_zoo(tmp_path / "zoo", _manifest(arch), params, rows, rows_per_shard=7)
    return tmp_path / "zoo", params, rows


def test_round_trip_is_exact(zoo_dir, arch):
    path, params, rows = zoo_dir
    zoo = open_zoo(path)
    assert isinstance(zoo, Zoo) and len(zoo) == len(rows) == MODELS * len(EPOCHS)
    assert len(zoo.manifest["shards"]) == 3  # 18 rows in shards of 7
    assert zoo.weight_space.to_dict() == arch.weight_space.to_dict()
    assert zoo.architecture.weight_space.num_params == arch.weight_space.num_params
    m = zoo.metrics
    assert m["model"].dtype == np.int64 and m["diverged"].dtype == bool
    assert m["activation"].dtype.kind == "U"
    np.testing.assert_array_equal(m["test_acc"], [r["test_acc"] for r in rows])  # repr round trip
    flat = np.asarray(arch.weight_space.flatten(params))
    np.testing.assert_array_equal(zoo.flat(), flat)
    np.testing.assert_array_equal(zoo.flat([17, 3, 8]), flat[[17, 3, 8]])
    one = zoo.params(9)
    np.testing.assert_array_equal(one["dense_1"]["kernel"], params["dense_1"]["kernel"][9])
    stacked = zoo.weights([2, 15])
    assert stacked["dense_0"]["kernel"].shape == (2, 6, 5)


def test_metrics_table_opens_without_wsl(zoo_dir):
    path, _, rows = zoo_dir
    with open(path / "metrics.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows)
    assert table[0]["model"] == "0" and table[0]["epoch"] == "0"
    manifest = json.loads((path / "manifest.json").read_text())
    assert set(manifest["columns"]) == set(rows[0]) and manifest["generated"] is True
    assert manifest["columns"]["test_acc"].startswith("accuracy on the test split")


def test_filter_and_split_by_model(zoo_dir):
    zoo = open_zoo(zoo_dir[0])
    last = zoo.filter(epoch="last")
    assert len(last) == MODELS and set(last.metrics["epoch"]) == {5}
    assert len(zoo.filter(epoch=[0, 2])) == 2 * MODELS
    good = zoo.filter(epoch="last", where=lambda m: ~m["diverged"])
    assert 3 not in good.metrics["model"] and len(good) == MODELS - 1
    # a view's row i is the parent's row global_rows[i]
    np.testing.assert_array_equal(good.flat([1]), zoo.flat(good.global_rows[[1]]))
    parts = zoo.split_by_model((0.5, 0.25, 0.25), seed=3)
    ids = [set(p.metrics["model"]) for p in parts]
    assert sum(len(p) for p in parts) == len(zoo)
    assert set().union(*ids) == set(range(MODELS))
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    for p in parts:  # never one model's rows in two parts: each model keeps all its epochs
        for m in set(p.metrics["model"]):
            assert (p.metrics["model"] == m).sum() == len(EPOCHS)
    assert [set(p.metrics["model"]) for p in zoo.split_by_model((0.5, 0.25, 0.25), seed=3)] == ids
    with pytest.raises(ZooError, match="sum to 1"):
        zoo.split_by_model((0.5, 0.2))
    with pytest.raises(ZooError, match="boolean mask"):
        zoo.filter(where=lambda m: m["lr"])


def test_select_is_the_one_way_to_pick_rows(zoo_dir):
    zoo = open_zoo(zoo_dir[0])
    m = zoo.metrics
    # Defaults: each model's last checkpoint, diverged rows (model 3 at epoch 5) left out.
    view = zoo.select()
    assert sorted(view.metrics["model"]) == [0, 1, 2, 4, 5] and set(view.metrics["epoch"]) == {5}
    assert view.dropped == {"epoch": 2 * MODELS, "diverged": 1, "non_finite": 0}
    assert len(zoo.select(epoch=None, finite=False)) == len(zoo)
    assert len(zoo.select(epoch=[0, 2])) == 2 * MODELS
    assert sorted(zoo.select(models=[4, 1, 3]).metrics["model"]) == [1, 4]
    assert set(zoo.select(activation="tanh").metrics["activation"]) == {"tanh"}
    # The most common activation among the rows left: model 3 diverged, so tanh (0, 2, 4).
    assert set(zoo.select(activation="most_common").metrics["activation"]) == {"tanh"}
    assert len(zoo.select(models=[0, 2], activation="single")) == 2
    with pytest.raises(ZooError, match=r"different activations \['relu', 'tanh'\]"):
        zoo.select(activation="single")
    # No val_acc in this zoo: min_val_acc falls back to test_acc, and says so.
    last = m["test_acc"][(m["epoch"] == 5) & ~m["diverged"]]
    threshold = float(np.median(last))
    with pytest.warns(UserWarning, match="no val_acc column"):
        picked = zoo.select(min_val_acc=threshold)
    assert np.all(picked.metrics["test_acc"] >= threshold)
    assert len(picked) == (last >= threshold).sum()
    with pytest.raises(ZooError, match=r"models \[9\] are not in .* at epoch last"):
        zoo.select(models=[9])
    empty = (r"only 0 rows pass the selection \(last epoch, not diverged, finite weights, "
             r"test_acc ≥ 2\.0\); need")
    with pytest.raises(ZooError, match=empty), pytest.warns(UserWarning):
        zoo.select(min_val_acc=2.0)
    with pytest.raises(ZooError, match="need at least 6"):
        zoo.select(min_rows=6)
    with pytest.raises(ZooError, match="no column 'nope'"):
        zoo.select(require=("nope",))


def test_select_requires_finite_columns(tmp_path, arch):
    rows = [{"model": i, "epoch": 1, "val_acc": [0.5, float("nan"), 0.9][i], "diverged": False}
            for i in range(3)]
    zoo = write_zoo(tmp_path / "z", _manifest(arch), _population(arch, 3), rows)
    assert sorted(zoo.select(require=("val_acc",)).metrics["model"]) == [0, 2]
    assert zoo.select(require=("val_acc",)).dropped["val_acc"] == 1
    assert zoo.select(min_val_acc=0.6).metrics["model"].tolist() == [2]  # val_acc: no warning


def test_batches_numpy_and_sharded(zoo_dir):
    zoo = open_zoo(zoo_dir[0])
    seen = []
    for batch in zoo.batches(4, shuffle=True, seed=1, flat=True, columns=["test_acc"]):
        assert set(batch) == {"flat", "rows", "test_acc"}
        np.testing.assert_array_equal(batch["flat"], zoo.flat(batch["rows"]))
        np.testing.assert_array_equal(batch["test_acc"], zoo.metrics["test_acc"][batch["rows"]])
        seen.extend(batch["rows"].tolist())
    assert sorted(seen) == list(range(len(zoo)))
    sharding = leading_axis(make_mesh(("data",), devices=jax.devices()[:1]))
    batch = next(zoo.batches(6, sharding=sharding, columns=["test_acc", "activation"]))
    assert isinstance(batch["params"]["dense_0"]["kernel"], jax.Array)
    assert isinstance(batch["test_acc"], jax.Array) and batch["activation"].dtype.kind == "U"


def test_damaged_shard_is_named_and_others_still_read(zoo_dir):
    path, params, _ = zoo_dir
    victim = path / "shards" / "00001" / "dense_0.kernel.npy"
    blob = bytearray(victim.read_bytes())
    blob[-3] ^= 0xFF
    victim.write_bytes(bytes(blob))
    zoo = open_zoo(path)  # metrics and manifest are intact: opening works
    with pytest.raises(ZooError, match=r"shards/00001/dense_0\.kernel\.npy: checksum mismatch"):
        zoo.params(8)  # row 8 lives in shard 1
    np.testing.assert_array_equal(zoo.params(2)["dense_0"]["kernel"],
                                  params["dense_0"]["kernel"][2])
    np.testing.assert_array_equal(zoo.params(15)["dense_0"]["kernel"],
                                  params["dense_0"]["kernel"][15])


def test_truncated_manifest_and_metrics(zoo_dir):
    path = zoo_dir[0]
    text = (path / "manifest.json").read_text()
    (path / "manifest.json").write_text(text[: len(text) // 2])
    with pytest.raises(ZooError, match=r"manifest\.json: truncated or not valid JSON"):
        open_zoo(path)
    (path / "manifest.json").write_text(text)
    lines = (path / "metrics.csv").read_text().splitlines(keepends=True)
    (path / "metrics.csv").write_text("".join(lines[:-2]))
    with pytest.raises(ZooError, match=r"metrics\.csv: checksum mismatch"):
        open_zoo(path)
    with pytest.raises(ZooError, match="no such zoo directory"):
        open_zoo(path / "nope")


def test_writer_resume_rules(tmp_path, arch):
    rows = _rows()[:6]
    params = _population(arch, 6)
    half = lambda a: jax.tree.map(lambda x: x[:3], a)
    writer = ZooWriter(tmp_path / "z", _manifest(arch))
    writer.write_shard(0, half(params), rows[:3])
    # a crash mid-write leaves only a temp folder, which does not count as done
    (tmp_path / "z" / "shards" / ".tmp-00001-999").mkdir()
    assert ZooWriter(tmp_path / "z", _manifest(arch)).done_shards() == [0]
    other = {**_manifest(arch), "dataset": {"name": "something else"}}
    with pytest.raises(ZooError, match=r"different zoo.*dataset\.name"):
        ZooWriter(tmp_path / "z", other)
    # A recipe description reworded by a newer wsl is prose: the build still resumes.
    described = {**_manifest(arch), "recipe": {"name": "r", "config": {"description": "new words"}}}
    ZooWriter(tmp_path / "y", {**described, "recipe": {"name": "r", "config": {
        "description": "old words"}}})
    assert ZooWriter(tmp_path / "y", described).done_shards() == []
    with pytest.raises(ZooError, match=r"different zoo.*recipe\.name"):
        ZooWriter(tmp_path / "y", {**described, "recipe": {"name": "s", "config": {}}})
    with pytest.raises(ZooError, match="already written"):
        writer.write_shard(0, half(params), rows[:3])
    with pytest.raises(ZooError, match="leading axes"):
        writer.write_shard(1, params, rows[:3])
    with pytest.raises(ZooError, match=r"cannot finalize, shards \[1\]"):
        writer.finalize(2)
    with pytest.raises(ZooError, match="not finished"):
        open_zoo(tmp_path / "z")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file.txt").write_text("x")
    with pytest.raises(ZooError, match="not empty"):
        ZooWriter(tmp_path / "junk", _manifest(arch))


def test_a_rebuild_with_the_same_content_keeps_the_fingerprint_not_the_manifest_hash(tmp_path,
                                                                                     arch):
    rows, params = _rows(), _population(arch, len(_rows()))
    write_zoo(tmp_path / "a", _manifest(arch), params, rows, rows_per_shard=7)
    write_zoo(tmp_path / "b", _manifest(arch), params, rows, rows_per_shard=7)
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    manifest["provenance"] = {**manifest["provenance"], "created": "2001-01-01T00:00:00+00:00",
                              "command": "another command"}
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(manifest, indent=1))
    assert sha256_file(tmp_path / "a" / "manifest.json") != sha256_file(
        tmp_path / "b" / "manifest.json")
    assert zoo_fingerprint(tmp_path / "a") == zoo_fingerprint(tmp_path / "b")
    assert manifest_fingerprint(Zoo.open(tmp_path / "b").manifest) == zoo_fingerprint(
        tmp_path / "a")
    record = {"zoo_fingerprint": zoo_fingerprint(tmp_path / "a"),
              "zoo_sha256": sha256_file(tmp_path / "a" / "manifest.json")}
    assert same_zoo(tmp_path / "b", record)
    # Records written before the fingerprint compare the manifest file; a record of neither says
    # nothing.
    assert not same_zoo(tmp_path / "b", {"zoo_sha256": record["zoo_sha256"]})
    assert same_zoo(tmp_path / "a", {"zoo_sha256": record["zoo_sha256"]})
    assert same_zoo(tmp_path / "b", {})
    # Other weights (or metrics) are another zoo.
    write_zoo(tmp_path / "c", _manifest(arch), _population(arch, len(rows), seed=1), rows,
              rows_per_shard=7)
    assert zoo_fingerprint(tmp_path / "c") != zoo_fingerprint(tmp_path / "a")
    assert not same_zoo(tmp_path / "c", record)


def test_export_files_and_torch_layout(tmp_path, zoo_dir):
    zoo = open_zoo(zoo_dir[0])
    zoo.export(4, tmp_path / "m.npz", "npz")
    with np.load(tmp_path / "m.npz") as f:
        np.testing.assert_array_equal(f["dense_1/kernel"], zoo.params(4)["dense_1"]["kernel"])
    from safetensors.numpy import load_file

    zoo.export(4, tmp_path / "m.safetensors", torch_layout=True)
    loaded = load_file(str(tmp_path / "m.safetensors"))
    np.testing.assert_array_equal(loaded["dense_1.weight"], zoo.params(4)["dense_1"]["kernel"].T)
    with pytest.raises(ZooError, match="unknown export format"):
        zoo.export(4, tmp_path / "m.bin", "pickle")


def test_torch_layout_of_cnn_s_computes_the_same_function(tmp_path):
    arch = build("cnn_s")
    rng = np.random.default_rng(0)
    params = {t.path: rng.standard_normal(t.shape).astype(np.float32)
              for t in arch.weight_space.tensors}
    torch = to_torch_state(arch.weight_space, nest_paths(params))
    assert torch["dense_0.weight"].shape == (20, 36)
    assert torch["conv_1.weight"].shape == (6, 8, 5, 5)
    np.testing.assert_array_equal(torch["conv_1.weight"][2, 3, 1, 4],
                                  params["conv_1/kernel"][1, 4, 3, 2])
    # dense_0 on a (H, W, C) map in JAX equals the torch weight on the NCHW-flattened map
    feature = np.random.default_rng(0).standard_normal((3, 3, 4)).astype(np.float32)
    jax_out = np.einsum("hwc,hwco->o", feature, params["dense_0/kernel"])
    torch_out = torch["dense_0.weight"] @ feature.transpose(2, 0, 1).reshape(-1)
    np.testing.assert_allclose(torch_out, jax_out, rtol=1e-5, atol=1e-6)
    transformer = build("transformer")
    zoo = write_zoo(tmp_path / "t", {"architecture": {"name": "transformer", "config": {}},
                                     "weight_space": transformer.weight_space.to_dict()},
                    jax.tree.map(lambda a: np.asarray(a)[None],
                                 transformer.init(jax.random.key(0))),
                    [{"model": 0, "epoch": 0}])
    # Attention kernels become PyTorch linear layers (heads first); the file reads back exactly.
    zoo.export(0, tmp_path / "t.safetensors", torch_layout=True)
    back, extra = read_model(tmp_path / "t.safetensors", transformer.weight_space)
    assert not extra
    for path, value in transformer.weight_space.as_flat_dict(zoo.params(0)).items():
        np.testing.assert_array_equal(transformer.weight_space.as_flat_dict(back)[path], value)
