"""Bad inputs to the core, the architectures and the models (issue 23): every one is refused at
once, as one line, by a `WslError` subclass whose message names the option and the value.

One parametrised line per case; nothing here trains or initialises a network.
"""

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wsl.config import ConfigError, coerce_fields, from_dict, load, override
from wsl.errors import UsageError, WslError
from wsl.models.encoders import build_encoder, check_encoder_options, encoder_names
from wsl.models.errors import ModelError
from wsl.models.neural_graph import ChainError
from wsl.weight_space import WeightSpace, WeightSpaceError, check_permutation
from wsl.zoos.architectures import _REGISTRY, build, check_config
from wsl.zoos.errors import ArchitectureError


def refused(error: type[Exception], match: str, call) -> str:
    """Run `call`; it must raise `error` (a WslError) as one line matching `match`."""
    assert issubclass(error, WslError)
    with pytest.raises(error, match=match) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    return message


# ------------------------------------------------------------------------------ permutations
def _space() -> WeightSpace:
    params = {"l0": {"kernel": np.zeros((2, 3)), "bias": np.zeros(3)},
              "l1": {"kernel": np.zeros((3, 2)), "bias": np.zeros(2)}}
    axes = {"l0/kernel": (None, "h"), "l0/bias": ("h",), "l1/kernel": ("h", None),
            "l1/bias": (None,)}
    return WeightSpace.from_params(params, axes)


SPACE = _space()
PARAMS = SPACE.unflatten(np.arange(SPACE.num_params, dtype=np.float32))
POPULATION = SPACE.unflatten(np.arange(2 * SPACE.num_params, dtype=np.float32).reshape(2, -1))


@pytest.mark.parametrize("perm,match", [
    (np.zeros(3, int), r"'h' repeats index 0 and misses 1"),
    (np.arange(3) + 100, r"'h' holds index 102, outside 0 … 2"),
    (-np.ones(3, int), r"'h' holds index -1, outside 0 … 2"),
    (jnp.zeros(3, jnp.int32), r"'h' repeats index 0"),
    (np.arange(3.0), r"'h' has dtype float64; a permutation is an integer array"),
    (np.array([True, False, True]), r"'h' has dtype bool"),
    ([0, 1, 1], r"'h' repeats index 1 and misses 2"),
    (np.arange(4), r"'h' has shape \(4,\); expected \(\.\.\., 3\)"),
])
def test_permute_refuses_what_is_not_a_permutation(perm, match):
    refused(WeightSpaceError, match, lambda: SPACE.permute(PARAMS, {"h": perm}))


def test_per_model_permutations_name_the_bad_row():
    perms = {"h": np.array([[2, 0, 1], [0, 0, 1]])}
    refused(WeightSpaceError, r"'h' \(row 1\) repeats index 0 and misses 2",
            lambda: SPACE.permute(POPULATION, perms))
    refused(WeightSpaceError, "index 5, outside 0 … 1: not a permutation of 2",
            lambda: check_permutation([0, 5], 2))
    refused(WeightSpaceError, r"unknown groups \['nope'\]",
            lambda: SPACE.permute(PARAMS, {"nope": [0]}))
    check_permutation(np.array([[2, 0, 1], [0, 1, 2]]), 3)  # valid ones pass


def test_traced_permutations_are_the_callers_duty():
    """Under jit nothing can be checked (and nothing is): jitted callers keep working."""
    permute = jax.jit(lambda params, perm: SPACE.permute(params, {"h": perm}))
    out = permute(PARAMS, jnp.array([2, 0, 1]))
    np.testing.assert_array_equal(out["l0"]["bias"], np.asarray(PARAMS["l0"]["bias"])[[2, 0, 1]])
    trusted = SPACE.permute(PARAMS, {"h": np.array([2, 0, 1])}, check=False)
    np.testing.assert_array_equal(trusted["l0"]["bias"], out["l0"]["bias"])


# ------------------------------------------------------------------------------ architectures
@pytest.mark.parametrize("name,config,match", [
    ("mlp", {"widths": (-3,)}, r"'mlp': widths=\(-3,\): expected a sequence of integers ≥ 1"),
    ("mlp", {"widths": "abc"}, r"'mlp': widths='abc': expected a sequence"),
    ("mlp", {"widths": [-3]}, r"widths=\(-3,\)"),  # the arch={'widths':[-3]} override
    ("mlp", {"widths": (2.5,)}, r"widths=\(2\.5,\)"),
    ("mlp", {"widths": 32}, r"widths=32: expected a sequence"),
    ("mlp", {"num_classes": 1}, r"num_classes=1: expected an integer ≥ 2"),
    ("mlp", {"num_classes": True}, r"num_classes=True"),
    ("mlp", {"activation": "swishy"}, r"activation='swishy': expected one of \["),
    ("mlp", {"input_shape": (0,)}, r"input_shape=\(0,\)"),
    ("mlp", {"input_shape": ()}, r"input_shape=\(\): expected at least one dimension"),
    ("mlp", {"input_shape": "abc"}, r"input_shape='abc'"),
    ("mlp", {"widht": (3,)}, r"unknown config \['widht'\] for architecture 'mlp'"),
    ("small_cnn", {"channels": -1}, r"'small_cnn': channels=-1: expected an integer ≥ 1"),
    ("small_cnn", {"num_layers": 0}, r"num_layers=0"),
    ("small_cnn", {"input_shape": (8, 8)}, r"input_shape=\(8, 8\): expected 3 numbers"),
    ("cnn_s", {"input_shape": (8, 8, 1)}, r"'cnn_s': input_shape=\(8, 8, 1\): expected images "
                                          r"of at least 20×20"),
    ("cnn_s", {"activation": 3}, r"activation=3"),
    ("resnet", {"width": 0}, r"'resnet': width=0: expected an integer ≥ 1"),
    ("resnet", {"stages": 0}, r"stages=0"),
    ("resnet", {"blocks_per_stage": -1}, r"blocks_per_stage=-1"),
    ("resnet", {"norm": "batch"}, r"norm='batch': expected one of \['group', 'layer'\]"),
    ("resnet", {"norm": "group", "norm_groups": 3}, r"norm_groups=3: expected a divisor of "
                                                     r"width=8"),
    ("transformer", {"heads": 0}, r"'transformer': heads=0"),
    ("transformer", {"dim": -1}, r"dim=-1"),
    ("transformer", {"patch": 3}, r"patch=3: expected a divisor of the input's length 40"),
    ("transformer", {"input_shape": (9, 8, 1)}, r"patch=4: .*height and width 9×8"),
    ("transformer", {"input_shape": (2, 2, 2, 2)}, r"input_shape=\(2, 2, 2, 2\)"),
])
def test_architecture_configs_are_checked_on_creation(name, config, match):
    assert issubclass(ArchitectureError, UsageError)
    refused(ArchitectureError, match, lambda: build(name, **config))


def test_every_registered_default_config_passes_the_checks():
    for name in _REGISTRY:
        assert check_config(name)["input_shape"]


# ------------------------------------------------------------------------------ encoders
COMMON = [("dropout", 5.0, r"dropout=5\.0: expected a number in \[0, 1\)"),
          ("dropout", -0.1, r"dropout=-0\.1"),
          ("dropout", math.nan, r"dropout=nan"),
          ("out_dim", 0, r"out_dim=0: expected an integer ≥ 1"),
          ("out_dim", 1.5, r"out_dim=1\.5"),
          ("head_widths", (-1,), r"head_widths=\(-1,\): expected a sequence of integers ≥ 1"),
          ("head_widths", 8, r"head_widths=8")]
SPECIFIC = [
    ("nfn_hnp", {"channels": -1}, r"channels=-1: expected a sequence of integers ≥ 1"),
    ("nfn_np", {"channels": (4, 0)}, r"channels=\(4, 0\)"),
    ("nfn_hnp", {"output": "both"}, r"output must be one of"),
    ("ng_gnn", {"activation": "swish"}, r"activation='swish': expected one of"),
    ("ng_gnn", {"dim": 0}, r"dim=0"),
    ("ng_gnn", {"num_layers": 0}, r"num_layers=0"),
    ("ng_transformer", {"heads": 0}, r"heads=0"),
    ("ng_transformer", {"dim": 6, "heads": 4}, r"dim 6 is not divisible by heads 4"),
    ("probex", {"num_probes": 0}, r"num_probes=0"),
    ("probex", {"projection_dim": -1}, r"projection_dim=-1"),
    ("probex", {"representation_dim": 0}, r"representation_dim=0"),
    ("probex", {"transpose": "yes"}, r"transpose='yes': expected true or false"),
    ("probex", {"layer": 3}, r"layer=3"),
    ("probex", {"layer": "dense_9"}, r"'dense_9' is not in the weight space"),  # WeightSpaceError
    ("statnn", {"feature_std": (0.0,) * 28}, r"feature_std=\(0\.0, "),
    ("statnn", {"feature_mean": (1.0,)}, r"feature_mean has 1 entries"),
    ("flat_mlp", {"normalizer": "zscore"}, r"normalizer='zscore'"),
    ("flat_mlp", {"normalizer": {"paths": ["l0/kernel"], "means": [0], "stds": [0],
                                 "sizes": [6]}}, r"positive finite std"),
]


@pytest.mark.parametrize("name,config,match", [
    (name, {option: value}, match) for name in encoder_names() for option, value, match in COMMON
] + SPECIFIC)
def test_encoder_configs_are_checked_on_creation(name, config, match):
    error = WeightSpaceError if config.get("layer") == "dense_9" else ModelError
    message = refused(error, match, lambda: build_encoder(name, SPACE, **config))
    assert message.startswith(f"encoder {name!r}: ")
    option = next(iter(config))
    if len(config) == 1 and option in ("out_dim", "dropout", "head_widths", "channels", "dim"):
        # and before any weight space exists (a probe config checks its encoder on creation)
        refused(ModelError, match, lambda: check_encoder_options(name, config))


@pytest.fixture(scope="module")
def non_chain_spaces():
    return {"resnet": build("resnet", input_shape=(8, 8, 1), width=4).weight_space,
            "transformer": build("transformer", dim=8, heads=2, head_dim=4, mlp_dim=8)
            .weight_space}


@pytest.mark.parametrize("encoder", ["nfn_np", "nfn_hnp"])  # the NG encoders read any space
@pytest.mark.parametrize("arch,match", [
    ("resnet", r"hidden group 'stream_0' is written by 2 kernels .*residual stream"),
    ("transformer", r"'block0_attention/query/kernel' .*multi-head attention"),
])
def test_chain_encoders_name_the_structure_they_cannot_read(non_chain_spaces, encoder, arch,
                                                           match):
    assert issubclass(ChainError, WslError)
    message = refused(ChainError, match, lambda: build_encoder(encoder, non_chain_spaces[arch]))
    assert message.startswith(f"{encoder} supports chain weight spaces only")


# ------------------------------------------------------------------------------ configs
@dataclasses.dataclass(frozen=True)
class Inner:
    lr: float = 1e-3


@dataclasses.dataclass(frozen=True)
class Outer:
    n: int = 1
    lr: float = 1e-3
    widths: tuple[int, ...] = (4,)
    arch: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    inner: Inner = Inner()
    limit: Any = 1

    def __post_init__(self):
        coerce_fields(self)
        if self.limit < 0:  # a raw TypeError for limit='x': must still come out as ConfigError
            raise ConfigError(f"limit: must be ≥ 0, got {self.limit}")


@pytest.mark.parametrize("assignment,match", [
    ("arch={[1]:2}", r"^arch: expected a mapping, got '\{\[1\]:2\}'"),
    ("arch={{1}}", r"^arch: expected a mapping"),
    ("arch=[1,2]", r"^arch: expected a mapping, got \[1, 2\]"),
    ("n=True", r"^n: expected int, got True"),
    ("n=abc", r"^n: expected int, got 'abc'"),
    ("n=" + "1" * 5000, r"^n: expected int, got '1111.*\.\.\."),
    ("lr=1e999", r"^lr: expected a finite number, got inf"),
    ("lr=" + "9" * 400, r"^lr: expected a finite number"),
    ("widths=abc", r"^widths: expected int, got 'abc'"),
    ("widths=[1,[2]]", r"^widths: expected int, got \[2\]"),
    ("widths={'a':1}", r"^widths: expected int"),
    ("inner={1:2}", r"unknown config keys \['inner\.1'\]"),
    ("inner=[1]", r"^inner: expected a mapping for Inner"),
    ("inner.lr=fast", r"^inner\.lr: expected float, got 'fast'"),
    ("limit=x", r"^limit: '<' not supported"),
    ("n" + "=", r"^n: expected int, got ''"),
    ("=3", r"override '=3' must look like key=value"),
])
def test_overrides_that_cannot_be_parsed_name_the_key(assignment, match):
    refused(ConfigError, match, lambda: override(Outer(), [assignment]))


@pytest.mark.parametrize("call,match", [
    (lambda: override(Outer(), {1: 2}), r"config key 1 is not a name"),
    (lambda: override(Outer(), "n=2"), r"a list of key=value strings"),
    (lambda: override(Outer(), [3]), r"override 3 must be a key=value string"),
    (lambda: from_dict(Outer, [1, 2]), r"Outer: expected a mapping of config keys, got \[1, 2\]"),
    (lambda: from_dict(Outer, {1: 2}), r"unknown config keys \['1'\]"),
    (lambda: from_dict(Outer, {"limit": "x"}), r"^limit: "),
    (lambda: Outer(n=True), r"^n: expected int, got True"),
])
def test_configs_from_code_and_mappings_are_checked(call, match):
    refused(ConfigError, match, call)


@pytest.mark.parametrize("content,match", [
    (None, r"cannot read the config \(No such file"),
    (b"\xff\xfe{", r"not valid JSON"),
    (b"[1, 2]", r"Outer: expected a mapping of config keys"),
    (b'{"n": "x"}', r"n: expected int, got 'x'"),
])
def test_config_files_are_untrusted(tmp_path, content, match):
    path = tmp_path / "config.json"
    if content is not None:
        path.write_bytes(content)
    message = refused(ConfigError, match, lambda: load(Outer, path))
    assert str(path) in message


# ------------------------------------------------------------------------------ generator config
@pytest.mark.parametrize("config,match", [
    ({"hidden": True}, r"^hidden: expected int, got True"),
    ({"hidden": 0}, r"^hidden: must be ≥ 1, got 0"),
    ({"ae_hidden": "abc"}, r"^ae_hidden: expected int, got 'abc'"),
    ({"ae_hidden": (8, 0)}, r"^ae_hidden: widths must be ≥ 1"),
    ({"cond_dropout": 1.5}, r"^cond_dropout: must lie in \[0, 1\), got 1\.5"),
    ({"guidance": math.nan}, r"^guidance: expected a finite number, got nan"),
    ({"source_scale": math.inf}, r"^source_scale: expected a finite number"),
    ({"sample_steps": 0}, r"^sample_steps: must be ≥ 1 or none"),
    ({"method": "gan"}, r"^method: 'gan' is not one of"),
])
def test_generator_configs_are_checked_on_creation(config, match):
    from wsl.models.weight_generator import GeneratorConfig

    refused(ConfigError, match, lambda: GeneratorConfig(**config))


@pytest.mark.parametrize("cls,config,match", [
    ("flow", {"dim": 0}, r"flow dim=0: must be ≥ 1"),
    ("flow", {"dim": 4, "source_scale": -1.0}, r"flow source_scale=-1\.0: must be positive"),
    ("diffusion", {"dim": 4, "num_steps": 0}, r"diffusion num_steps=0: must be ≥ 1"),
    ("diffusion", {"dim": 4, "cond_dropout": 1.0}, r"diffusion cond_dropout=1\.0"),
])
def test_generator_models_are_checked_on_creation(cls, config, match):
    from wsl.models.diffusion import Diffusion
    from wsl.models.flow import FlowMatching

    model = {"flow": FlowMatching, "diffusion": Diffusion}[cls]
    refused(ModelError, match, lambda: model(None, **config))


# ------------------------------------------------------------------------------ augmentations
def _mixup(**options):
    from wsl.models.mixup import aligned_mixup

    return aligned_mixup(SPACE, **options)


def _augment(name, **options):
    from wsl.models import augment

    return getattr(augment, name)(SPACE, **options)


@pytest.mark.parametrize("call,match", [
    (lambda: _mixup(alpha=0), r"alpha must be a positive finite number; got 0"),
    (lambda: _mixup(alpha="x"), r"alpha must be a positive number; got 'x'"),
    (lambda: _mixup(alpha=math.inf), r"alpha must be a positive finite number; got inf"),
    (lambda: _mixup(targets="val_acc"), r"targets must be a list of batch entry names"),
    (lambda: _mixup(targets=["params"]), r"targets \['params'\] are the weights"),
    (lambda: _mixup(max_sweeps=0), r"max_sweeps must be an integer ≥ 1; got 0"),
    (lambda: _mixup(tol=-1.0), r"tol must be a finite number ≥ 0; got -1\.0"),
    (lambda: _mixup(targets=["nope"])(jax.random.key(0), {"params": POPULATION}),
     r"mixup targets \['nope'\] are not in the batch"),
    (lambda: _mixup(targets=["name"])(jax.random.key(0), {"params": POPULATION,
                                                          "name": np.array(["a", "b"])}),
     r"mixup target 'name' has dtype <U1; only numbers interpolate"),
    (lambda: jax.jit(_mixup())(jax.random.key(0), {"params": POPULATION}),
     r"cannot run under jax\.jit.*prealigned=True"),
    (lambda: _augment("gaussian_noise", scale=math.nan), r"noise scale must be a finite number"),
    (lambda: _augment("gaussian_noise", scale="x"), r"noise scale must be a number; got 'x'"),
    (lambda: _augment("weight_dropout", rate=True), r"dropout rate must be a number; got True"),
    (lambda: _augment("magnitude_pruning", fraction=1.0), r"pruning fraction must be in \[0, 1\)"),
])
def test_augmentations_refuse_bad_options_as_model_errors(call, match):
    refused(ModelError, match, call)
