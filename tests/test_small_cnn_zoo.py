"""Small CNN Zoo reader: layout-driven mapping onto SmallCNN, lazy reads, split protocol, errors."""

import numpy as np
import pytest

from wsl.zoos.small_cnn_zoo import SmallCNNZoo


@pytest.mark.parametrize("bias_first,gz", [(True, True), (False, False)])
def test_layout_maps_onto_small_cnn_exactly(tmp_path, bias_first, gz, write_small_cnn_zoo):
    flat_ours = write_small_cnn_zoo(tmp_path / "zoo", bias_first=bias_first, gz=gz)
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


def test_standard_split_protocol(tmp_path, write_small_cnn_zoo):
    write_small_cnn_zoo(tmp_path / "zoo", num_models=20)
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


def test_bad_zoo_files_are_named(tmp_path, write_small_cnn_zoo):
    write_small_cnn_zoo(tmp_path / "zoo")
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
