"""Single-model files: exact round trips in every format, torch layouts, clear errors."""

import jax
import numpy as np
import pytest

from wsl.zoos.architectures import build
from wsl.zoos.model_files import load_model, save_model


@pytest.fixture(scope="module")
def model():
    arch = build("cnn_s")
    return arch, arch.init(jax.random.key(0))


@pytest.mark.parametrize("suffix,torch_layout", [(".safetensors", False), (".safetensors", True),
                                                 (".npz", False), (".npz", True),
                                                 (".msgpack", False), (".pt", None)])
def test_round_trip(tmp_path, model, suffix, torch_layout):
    arch, params = model
    path = save_model(tmp_path / f"m{suffix}", arch.weight_space, params, torch_layout=torch_layout)
    back = load_model(path, arch.weight_space)
    np.testing.assert_array_equal(arch.weight_space.flatten(back),
                                  arch.weight_space.flatten(params))


def test_torch_layout_names(tmp_path, model):
    from safetensors.numpy import load_file

    arch, params = model
    save_model(tmp_path / "m.safetensors", arch.weight_space, params, torch_layout=True)
    state = load_file(str(tmp_path / "m.safetensors"))
    assert state["conv_0.weight"].shape == (8, 1, 5, 5)
    assert state["dense_0.weight"].shape == (20, 36)


def test_errors_name_the_file(tmp_path, model):
    arch, params = model
    with pytest.raises(ValueError, match="suffix"):
        save_model(tmp_path / "m.bogus", arch.weight_space, params)
    (tmp_path / "broken.safetensors").write_bytes(b"\x10\x00garbage")
    with pytest.raises(ValueError, match="broken.safetensors"):
        load_model(tmp_path / "broken.safetensors", arch.weight_space)
    save_model(tmp_path / "small.npz", build("small_cnn").weight_space,
               build("small_cnn").init(jax.random.key(0)))
    with pytest.raises(ValueError, match="small.npz"):
        load_model(tmp_path / "small.npz", arch.weight_space)
    with pytest.raises(FileNotFoundError, match="nothere"):
        load_model(tmp_path / "nothere.npz", arch.weight_space)
