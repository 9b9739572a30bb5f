"""PyTorch names and layouts: exact round trips, and the same logits as an equivalent torch
module."""

import jax
import numpy as np
import pytest

from wsl.zoos.architectures import build
from wsl.zoos.torch_layout import from_torch_state, to_torch_state


@pytest.mark.parametrize("name,config", [("mlp", {}), ("small_cnn", {"input_shape": (8, 8, 1)}),
                                         ("cnn_s", {}), ("resnet", {"input_shape": (8, 8, 1)})])
def test_round_trip_is_exact(name, config):
    arch = build(name, **config)
    params = arch.init(jax.random.key(0))
    state = to_torch_state(arch.weight_space, params)
    back = from_torch_state(arch.weight_space, state)
    np.testing.assert_array_equal(arch.weight_space.flatten(back),
                                  arch.weight_space.flatten(params))


def test_wrong_shape_and_missing_key_are_named():
    arch = build("cnn_s")
    state = to_torch_state(arch.weight_space, arch.init(jax.random.key(0)))
    state["dense_0.weight"] = state["dense_0.weight"][:, :30]
    with pytest.raises(ValueError, match="dense_0.weight"):
        from_torch_state(arch.weight_space, state)
    del state["conv_1.bias"]
    with pytest.raises(KeyError, match="conv_1.bias"):
        from_torch_state(arch.weight_space, state)


def test_cnn_s_logits_match_torch(tmp_path):
    torch = pytest.importorskip("torch", reason="torch extra not installed")
    nn = torch.nn

    class CNNs(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv_0, self.conv_1 = nn.Conv2d(1, 8, 5), nn.Conv2d(8, 6, 5)
            self.conv_2 = nn.Conv2d(6, 4, 2)
            self.dense_0, self.dense_1 = nn.Linear(36, 20), nn.Linear(20, 10)

        def forward(self, x):
            x = torch.tanh(nn.functional.max_pool2d(self.conv_0(x), 2))
            x = torch.tanh(nn.functional.max_pool2d(self.conv_1(x), 2))
            x = torch.tanh(self.conv_2(x)).flatten(1)
            return self.dense_1(torch.tanh(self.dense_0(x)))

    from safetensors.numpy import load_file

    from wsl.zoos.model_files import save_model

    arch = build("cnn_s")
    params = arch.init(jax.random.key(3))
    path = save_model(tmp_path / "cnn_s.safetensors", arch.weight_space, params, torch_layout=True)
    net = CNNs()
    net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in load_file(str(path)).items()})
    x = np.random.default_rng(0).normal(size=(5, 28, 28, 1)).astype(np.float32)
    ours = np.asarray(arch.apply(params, x))
    theirs = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).detach().numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
