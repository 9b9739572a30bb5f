"""Reading PyTorch zip checkpoints without torch: exact tensors, refusal of unsafe pickles, clear
errors."""

import io
import os
import pickle
import zipfile

import numpy as np
import pytest

from wsl.zoos.torch_pickle import (
    UnsafeCheckpointError,
    load_torch_checkpoint,
    write_torch_checkpoint,
)


def sample_state():
    rng = np.random.default_rng(0)
    return {
        "module_list.0.weight": rng.normal(size=(8, 1, 5, 5)).astype(np.float32),
        "module_list.0.bias": rng.normal(size=8).astype(np.float32),
        "half": rng.normal(size=(3, 4)).astype(np.float16),
        "steps": np.arange(5, dtype=np.int64),
        "scalar": np.array(2.5, dtype=np.float64),
    }


def test_round_trip_without_torch(tmp_path):
    state = sample_state()
    write_torch_checkpoint(tmp_path / "ck.pt", state)
    loaded = load_torch_checkpoint(tmp_path / "ck.pt")
    assert list(loaded) == list(state)
    for key, value in state.items():
        assert loaded[key].dtype == value.dtype and loaded[key].shape == value.shape
        np.testing.assert_array_equal(loaded[key], value)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch SHOULD_NOT_EXIST",))


def _zip_with_pickle(path, obj):
    buffer = io.BytesIO()
    pickle.dump(obj, buffer, protocol=2)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("ck/data.pkl", buffer.getvalue())
        archive.writestr("ck/byteorder", "little")


def test_malicious_pickle_is_refused_and_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _zip_with_pickle(tmp_path / "evil.pt", {"weight": _RunsCode()})
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.pt.*system"):
        load_torch_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / "SHOULD_NOT_EXIST").exists()


def test_damaged_files_are_named(tmp_path):
    (tmp_path / "legacy.pt").write_bytes(b"\x80\x02not a zip")
    with pytest.raises(ValueError, match="legacy.pt"):
        load_torch_checkpoint(tmp_path / "legacy.pt")
    write_torch_checkpoint(tmp_path / "ck.pt", sample_state())
    with zipfile.ZipFile(tmp_path / "ck.pt") as src, \
            zipfile.ZipFile(tmp_path / "short.pt", "w") as dst:
        for item in src.namelist():
            data = src.read(item)
            dst.writestr(item, data[: len(data) // 2] if item.endswith("data/0") else data)
    with pytest.raises(ValueError, match=r"short\.pt.*truncated"):
        load_torch_checkpoint(tmp_path / "short.pt")


def test_real_torch_files_both_ways(tmp_path):
    torch = pytest.importorskip("torch", reason="torch extra not installed")
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 5), torch.nn.Linear(36, 20))
    state = net.state_dict()
    state["strided"] = torch.randn(4, 6).t()  # a non-contiguous view
    torch.save(state, tmp_path / "real.pt")
    loaded = load_torch_checkpoint(tmp_path / "real.pt")
    for key, value in state.items():
        np.testing.assert_array_equal(loaded[key], value.numpy())
    torch.save(net, tmp_path / "module.pt")  # a pickled module class must be refused
    with pytest.raises(UnsafeCheckpointError, match="Sequential"):
        load_torch_checkpoint(tmp_path / "module.pt")
    write_torch_checkpoint(tmp_path / "ours.pt", sample_state())
    back = torch.load(tmp_path / "ours.pt", weights_only=True)
    for key, value in sample_state().items():
        np.testing.assert_array_equal(back[key].numpy(), value)
