"""wsl.zoos.torch_modules: the PyTorch twin of every architecture gives JAX's logits (≤ 1e-4), and
files written by `wsl zoo export` (safetensors / npz, JAX or PyTorch layout) load into it."""

import functools
import importlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="wsl.zoos.torch_modules needs the torch extra "
                                            "(pip install 'wsl[torch]')")

from wsl.commands import main  # noqa: E402
from wsl.weight_space import nest_paths  # noqa: E402
from wsl.zoos.architectures import ACTIVATIONS, build  # noqa: E402
from wsl.zoos.errors import ModelFileError, TensorNameError  # noqa: E402
from wsl.zoos.model_files import save_model  # noqa: E402
from wsl.zoos.store import write_zoo  # noqa: E402
from wsl.zoos.torch_layout import from_torch_state, to_torch_state  # noqa: E402
from wsl.zoos.torch_modules import ACTIVATIONS as TORCH_ACTIVATIONS  # noqa: E402
from wsl.zoos.torch_modules import (  # noqa: E402
    exported_architecture,
    flax_padding,
    load_exported,
    load_state,
    torch_module,
)

TOLERANCE = 1e-4
# Every architecture at its defaults and in configs that move what a rebuild gets wrong: odd and
# non-square sizes (SAME pads (1, 1) there, (0, 1) on even sizes at stride 2), several channels,
# group norm, more heads than the default and a q/k/v width other than the model width.
CASES = {
    "mlp": {},
    "mlp-image": ("mlp", {"input_shape": (6, 6, 2), "widths": (7, 5), "activation": "gelu"}),
    "small_cnn": {},
    "small_cnn-8x8-tanh": ("small_cnn", {"input_shape": (8, 8, 1), "activation": "tanh"}),
    "small_cnn-odd": ("small_cnn", {"input_shape": (9, 7, 3), "channels": 5, "num_layers": 2,
                                    "activation": "silu"}),
    "cnn_s": {},
    "cnn_s-rgb": ("cnn_s", {"input_shape": (23, 25, 3), "activation": "sigmoid"}),
    "resnet": {},
    "resnet-group": ("resnet", {"input_shape": (9, 8, 3), "norm": "group", "norm_groups": 4,
                                "stages": 3, "blocks_per_stage": 2, "activation": "leaky_relu"}),
    "transformer": {},
    "transformer-heads4": ("transformer", {"input_shape": (8, 8, 3), "patch": 2, "dim": 12,
                                           "heads": 4, "head_dim": 3, "depth": 2, "mlp_dim": 10,
                                           "activation": "relu"}),
}


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """These tensors are tiny: on busy cores, OpenMP's second thread costs ~0.5 s per forward
    pass in waiting, 50 times the work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _build(case_name):
    spec = CASES[case_name]
    name, config = (case_name, spec) if isinstance(spec, dict) else spec
    return build(name, **config)


@functools.lru_cache(maxsize=None)
def _reference(case_name):
    """(arch, params, x in JAX layout, JAX logits) for one case, computed once per session.

    The params are random with every tensor moved off `arch.init`'s zero biases and unit norm
    scales (kernels ~ N(0, 1/fan-in), the rest ~ N(0, 0.3²), scales 1 + N(0, 0.3²)), so that a
    misplaced bias, scale or position embedding shows; numpy draws them, as jitting `arch.init`
    per case would cost most of this file's time budget in XLA compiles.
    """
    arch = _build(case_name)
    rng = np.random.default_rng(len(case_name))
    flat = {}
    for t in arch.weight_space.tensors:
        if t.path.endswith("/kernel"):
            value = rng.normal(size=t.shape) / np.sqrt(np.prod(t.shape[:-1]))
        else:
            value = rng.normal(scale=0.3, size=t.shape) + t.path.endswith("/scale")
        flat[t.path] = value.astype(np.float32)
    params = nest_paths(flat)
    x = rng.normal(size=(3,) + arch.input_shape).astype(np.float32)
    return arch, params, x, np.asarray(_jit_apply(arch)(params, x))


@functools.lru_cache(maxsize=None)
def _jit_apply(arch):
    return jax.jit(arch.apply)


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    return (request.param, *_reference(request.param))


def _torch_logits(module, x, channels_last=False):
    if len(x.shape) == 4 and not channels_last:
        x = x.transpose(0, 3, 1, 2)
    with torch.no_grad():
        return module(torch.from_numpy(np.ascontiguousarray(x))).numpy()


def test_logits_equal_jax(case):
    name, arch, params, x, logits = case
    module = load_state(torch_module(arch), params).eval()
    worst = float(np.abs(_torch_logits(module, x) - logits).max())
    print(f"{name}: max |torch - jax| = {worst:.2e}")
    assert worst <= TOLERANCE, name
    assert logits.std() > 0.05  # the comparison is not between constants
    # JAX-layout inputs, and the two other ways to give the weights: a PyTorch-style state dict
    # of numpy arrays (`to_torch_state`, what --torch-layout writes) and another module's tensors.
    again = load_state(torch_module(arch, channels_last=True),
                       to_torch_state(arch.weight_space, params))
    np.testing.assert_allclose(_torch_logits(again, x, channels_last=True), logits,
                               atol=TOLERANCE, rtol=0)
    copy = load_state(torch_module(arch), module.state_dict())
    np.testing.assert_array_equal(_torch_logits(copy, x), _torch_logits(module, x))


@pytest.mark.parametrize("name,first", [("resnet", "stem"), ("resnet-group", "stem"),
                                         ("transformer", "embed")])
def test_norms_use_flax_s_epsilon(name, first):
    """With the first layer scaled down, the first norm sees a variance of about 1e-7, where
    PyTorch's default epsilon 1e-5 instead of Flax's 1e-6 changes the logits by far more than
    the tolerance."""
    arch, params, x, _ = _reference(name)
    tiny = {**params, first: {k: v * np.float32(1e-3) for k, v in params[first].items()}}
    if "pos_embedding" in tiny:
        tiny["pos_embedding"] = params["pos_embedding"] * np.float32(1e-3)
    logits = np.asarray(_jit_apply(arch)(tiny, x))
    module = load_state(torch_module(arch), tiny)
    np.testing.assert_allclose(_torch_logits(module, x), logits, atol=TOLERANCE, rtol=0)


def test_attention_torch_layout_round_trips_exactly():
    """torch_layout's multi-head attention rule: linear layers, head-major, exact both ways."""
    arch, params, _, _ = _reference("transformer-heads4")
    state = to_torch_state(arch.weight_space, params)
    assert state["block1_attention.query.weight"].shape == (12, 12)  # (heads·head_dim, dim)
    assert state["block1_attention.out.weight"].shape == (12, 12)
    assert state["block1_attention.key.bias"].shape == (12,)
    np.testing.assert_array_equal(state["block1_attention.value.bias"],
                                  params["block1_attention"]["value"]["bias"].reshape(-1))
    back = from_torch_state(arch.weight_space, state)
    np.testing.assert_array_equal(arch.weight_space.flatten(back),
                                  arch.weight_space.flatten(params))


def test_flax_initialised_params_load_as_they_come():
    """`arch.init`'s own tree (a jax pytree with Flax's initialisers) goes in unchanged."""
    arch, _, x, _ = _reference("small_cnn")
    params = jax.jit(arch.init)(jax.random.key(3))
    module = load_state(torch_module(arch), params)
    np.testing.assert_allclose(_torch_logits(module, x), np.asarray(_jit_apply(arch)(params, x)),
                               atol=TOLERANCE, rtol=0)


def test_every_activation_is_flax_s():
    assert set(TORCH_ACTIVATIONS) >= set(ACTIVATIONS)
    grid = np.linspace(-6, 6, 241, dtype=np.float32)
    ours = jax.jit(lambda v: [ACTIVATIONS[n](v) for n in ACTIVATIONS])(jnp.asarray(grid))
    for name, expected in zip(ACTIVATIONS, ours):
        got = TORCH_ACTIVATIONS[name](torch.from_numpy(grid)).numpy()
        np.testing.assert_allclose(got, np.asarray(expected), atol=1e-6, rtol=0, err_msg=name)


def test_padding_is_xla_s_same_and_valid():
    for size in range(1, 12):
        for kernel in range(1, 6):
            for stride in range(1, 4):
                for padding in ("SAME", "VALID"):
                    expected = jax.lax.padtype_to_pads((size,), (kernel,), (stride,), padding)
                    assert flax_padding(size, kernel, stride, padding) == tuple(expected[0])
    assert flax_padding(28, 3, 2, "SAME") == (0, 1)  # what nn.Conv2d(padding=1) gets wrong


def _zoo(path, arch, population, activations):
    manifest = {"architecture": {"name": arch.name,
                                 "config": {k: list(v) if isinstance(v, tuple) else v
                                            for k, v in arch.config.items()}},
                "weight_space": arch.weight_space.to_dict(), "dataset": {"name": "none"},
                "recipe": {"name": "test"}}
    rows = [{"model": i, "epoch": 1, "activation": a, "test_acc": 0.5}
            for i, a in enumerate(activations)]
    stacked = jax.tree.map(lambda *p: np.stack(p), *population)
    return write_zoo(path, manifest, stacked, rows)


def test_wsl_zoo_export_files_load_with_jax_s_logits(tmp_path):
    """Both layouts, both formats, through the function `wsl zoo export` calls (and the command
    itself for --torch-layout safetensors): the exported row is a tanh model in a zoo whose
    manifest says relu, so the loader must take the row's activation."""
    arch, params, x, logits = _reference("small_cnn-8x8-tanh")
    relu = build("small_cnn", **{**arch.config, "activation": "relu"})
    negated = jax.tree.map(lambda p: -p, params)
    zoo = _zoo(tmp_path / "zoo", relu, [negated, params], ["relu", "tanh"])
    assert zoo.architecture.config["activation"] == "relu"
    assert zoo.architecture_of(1) == arch

    out = tmp_path / "cli.safetensors"
    assert main(["zoo", "export", str(tmp_path / "zoo"), "--model", "1", "--out", str(out),
                 "--torch-layout"]) == 0
    files = {"cli.safetensors": out}
    for suffix in ("safetensors", "npz"):
        for torch_layout in (False, True):
            files[f"{torch_layout}.{suffix}"] = zoo.export(
                1, tmp_path / f"{torch_layout}.{suffix}", torch_layout=torch_layout)
    for label, path in files.items():
        if path.suffix == ".npz":
            with pytest.raises(ModelFileError, match="npz file carries no metadata"):
                load_exported(path)
            module = load_exported(path, zoo.architecture_of(1))
        else:
            assert exported_architecture(path) == arch
            module = load_exported(path)
        assert not module.training
        np.testing.assert_allclose(_torch_logits(module, x), logits, atol=TOLERANCE, rtol=0,
                                   err_msg=label)


@pytest.mark.parametrize("name", ["resnet-group", "transformer-heads4"])
def test_exports_of_resnet_and_transformer_load(tmp_path, name):
    """Zoo exports in JAX layout, and PyTorch-layout files (`save_model(torch_layout=True)`)."""
    arch, params, x, logits = _reference(name)
    zoo = _zoo(tmp_path / "zoo", arch, [params], [arch.config["activation"]])
    jax_file = zoo.export(0, tmp_path / "jax.safetensors")
    torch_file = save_model(tmp_path / "torch.npz", arch.weight_space, params, torch_layout=True)
    for module in (load_exported(jax_file), load_exported(torch_file, arch)):
        np.testing.assert_allclose(_torch_logits(module, x), logits, atol=TOLERANCE, rtol=0)


def test_mistakes_are_named(tmp_path):
    arch = build("small_cnn", input_shape=(8, 8, 1))
    params = _reference("small_cnn-8x8-tanh")[1]
    bare = save_model(tmp_path / "bare.safetensors", arch.weight_space, params)
    with pytest.raises(ModelFileError, match="no 'architecture' field"):
        load_exported(bare)
    np.savez(tmp_path / "extra.npz", stray=np.zeros(2, np.float32),
             **to_torch_state(arch.weight_space, params))
    with pytest.warns(UserWarning, match="stray"):
        load_exported(tmp_path / "extra.npz", arch)
    module = torch_module(arch)
    with pytest.raises(ValueError, match=r"expected inputs of shape \(batch, 1, 8, 8\)"):
        module(torch.zeros(2, 8, 8, 1))
    state = dict(module.state_dict())
    del state["conv_1.bias"]
    with pytest.raises(TensorNameError, match="conv_1.bias"):
        load_state(module, state)
    state = dict(module.state_dict(), stray=torch.zeros(1))
    with pytest.raises(ModelFileError, match="stray"):
        load_state(module, state)
    state = dict(module.state_dict())
    state["dense_0.weight"] = state["dense_0.weight"][:, :3]
    with pytest.raises(ModelFileError, match="dense_0.weight"):
        load_state(module, state)


def test_without_torch_the_import_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    monkeypatch.delitem(sys.modules, "wsl.zoos.torch_modules")
    with pytest.raises(ImportError, match=r"pip install 'wsl\[torch\]'"):
        importlib.import_module("wsl.zoos.torch_modules")
