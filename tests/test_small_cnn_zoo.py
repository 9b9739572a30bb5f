"""Small CNN Zoo reader: layout-driven mapping onto SmallCNN, lazy reads, the split protocol, errors."""

import csv
import gzip

import jax
import numpy as np
import pytest

from wsl.zoos.architectures import build
from wsl.zoos.small_cnn_zoo import SmallCNNZoo

TF_NAMES = {"conv_0": "conv2d", "conv_1": "conv2d_1", "conv_2": "conv2d_2", "dense_0": "dense"}


def write_fixture(directory, num_models=6, steps=(0, 86), gz=True, bias_first=True, seed=0):
    """A Small CNN Zoo in the published layout, from known SmallCNN params."""
    directory.mkdir(parents=True, exist_ok=True)
    arch = build("small_cnn")
    pop = arch.init_population(jax.random.key(seed), num_models * len(steps))
    flat_ours = np.asarray(arch.weight_space.flatten(pop))
    layout, start = [], 0
    for layer in ("conv_0", "conv_1", "conv_2", "dense_0"):
        kinds = ("bias", "kernel") if bias_first else ("kernel", "bias")
        for kind in kinds:
            shape = arch.weight_space.tensor(f"{layer}/{kind}").shape
            size = int(np.prod(shape))
            layout.append((f"sequential/{TF_NAMES[layer]}/{kind}:0", start, start + size, size,
                           str(shape), f"{layer}/{kind}"))
            start += size
    offsets = arch.weight_space.offsets
    tf_rows = np.zeros_like(flat_ours)
    for name, a, b, size, shape, ours in layout:
        lo, hi = offsets[ours]
        tf_rows[:, a:b] = flat_ours[:, lo:hi]
    np.save(directory / "weights.npy", tf_rows)
    with open(directory / "layout.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["varname", "start_idx", "end_idx", "size", "shape"])
        w.writerows(row[:5] for row in layout)
    header = ["config.activation", "config.dataset", "config.learning_rate", "config.l2reg",
              "config.optimizer", "config.train_fraction", "modeldir", "step", "test_accuracy",
              "test_loss", "train_accuracy", "train_loss"]
    rng = np.random.default_rng(seed)
    rows = []
    for m in range(num_models):
        lr, act = 10 ** rng.uniform(-4, -1), ("relu", "tanh")[m % 2]
        for step in steps:
            acc = rng.uniform(0.1, 0.9)
            rows.append([act, "mnist", lr, 0.001, "adam", 0.5, f"/zoo/model_{m}", step, acc,
                         rng.uniform(0.3, 2), acc + 0.02, rng.uniform(0.3, 2)])
    opener = gzip.open if gz else open
    with opener(directory / ("metrics.csv.gz" if gz else "metrics.csv"), "wt", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return flat_ours


@pytest.mark.parametrize("bias_first,gz", [(True, True), (False, False)])
def test_layout_maps_onto_small_cnn_exactly(tmp_path, bias_first, gz):
    flat_ours = write_fixture(tmp_path / "zoo", bias_first=bias_first, gz=gz)
    zoo = SmallCNNZoo(tmp_path / "zoo")
    assert len(zoo) == 12 and zoo.architecture.num_params == 4970
    rows = np.array([7, 0, 3])
    np.testing.assert_array_equal(zoo.flat(rows), flat_ours[rows])
    params = zoo.params(rows)
    assert params["conv_1"]["kernel"].shape == (3, 3, 3, 16, 16)
    m = zoo.metrics
    assert m["model"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert set(m["epoch"].tolist()) == {0, 86}
    np.testing.assert_allclose(m["gap"], 0.02, atol=1e-9)
    assert m["activation"][2] == "tanh"


def test_standard_split_protocol(tmp_path):
    write_fixture(tmp_path / "zoo", num_models=20)
    zoo = SmallCNNZoo(tmp_path / "zoo")
    split = zoo.standard_split(step=86, seed=1)
    every = np.concatenate(list(split.values()))
    assert len(every) == len(set(every.tolist())) == 20
    assert (zoo.metrics["epoch"][every] == 86).all()
    assert len(split["test"]) == 10 and len(split["train"]) == 8 and len(split["val"]) == 2
    again = zoo.standard_split(step=86, seed=1)
    assert all((again[k] == split[k]).all() for k in split)
    with pytest.raises(ValueError, match="step == 5"):
        zoo.standard_split(step=5)


def test_bad_zoo_files_are_named(tmp_path):
    write_fixture(tmp_path / "zoo")
    with pytest.raises(FileNotFoundError, match="layout.csv"):
        (tmp_path / "zoo" / "layout.csv").rename(tmp_path / "elsewhere.csv")
        SmallCNNZoo(tmp_path / "zoo")
    (tmp_path / "elsewhere.csv").rename(tmp_path / "zoo" / "layout.csv")
    weights = np.load(tmp_path / "zoo" / "weights.npy")
    np.save(tmp_path / "zoo" / "weights.npy", weights[:, :4000])
    with pytest.raises(ValueError, match="layout covers 4970 entries"):
        SmallCNNZoo(tmp_path / "zoo")
    np.save(tmp_path / "zoo" / "weights.npy", weights[:5])
    with pytest.raises(ValueError, match="12 metric rows"):
        SmallCNNZoo(tmp_path / "zoo")
    raw = (tmp_path / "zoo" / "weights.npy").read_bytes()
    (tmp_path / "zoo" / "weights.npy").write_bytes(raw[:100])
    with pytest.raises(ValueError, match="weights.npy"):
        SmallCNNZoo(tmp_path / "zoo")
