"""Every registered architecture: permutation symmetry of its weight space and its parameter
counts."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wsl.zoos.architectures import build, list_architectures

CONFIGS = [
    ("mlp", {}),
    ("mlp", {"widths": (16, 8, 12), "activation": "tanh", "input_shape": (8, 8, 1)}),
    ("small_cnn", {}),
    ("small_cnn", {"channels": 8, "activation": "tanh", "input_shape": (8, 8, 3)}),
    ("cnn_s", {}),
    ("cnn_s", {"activation": "gelu"}),
    ("resnet", {"input_shape": (8, 8, 1)}),
    ("resnet", {"input_shape": (8, 8, 1), "norm": "group", "norm_groups": 2,
                "blocks_per_stage": 2}),
    ("resnet", {"input_shape": (8, 8, 3), "width": 4, "stages": 3, "activation": "gelu"}),
    ("transformer", {}),
    ("transformer", {"input_shape": (8, 8, 1), "patch": 2, "depth": 2, "heads": 4, "head_dim": 4}),
]


def test_every_registered_architecture_is_covered():
    assert {a["name"] for a in list_architectures()} == {name for name, _ in CONFIGS}


@pytest.mark.parametrize("name,config", CONFIGS, ids=lambda v: str(v))
def test_random_permutation_preserves_function(name, config):
    arch = build(name, **config)
    space = arch.weight_space
    params = arch.init(jax.random.key(0))
    # Perturb biases and norms away from their zero/one init so a wrong permutation would show.
    params = space.unflatten(space.flatten(params)
                             + 0.1 * jax.random.normal(jax.random.key(9), (space.num_params,)))
    x = jax.random.normal(jax.random.key(1), (4,) + arch.input_shape)
    apply, permute = jax.jit(arch.apply), jax.jit(space.permute)
    for seed in range(3):
        perm = space.random_permutation(jax.random.key(10 + seed))
        permuted = permute(params, perm)
        change = jnp.max(jnp.abs(space.flatten(permuted) - space.flatten(params)))
        assert change > 1e-2, "the permutation must really move parameters"
        diff = jnp.max(jnp.abs(apply(params, x) - apply(permuted, x)))
        assert diff < 1e-5, f"{name}: outputs changed by {diff}"


@pytest.mark.parametrize("name,config", CONFIGS[:5], ids=lambda v: str(v))
def test_wrong_permutation_changes_function(name, config):
    # Guard against a vacuous symmetry test: permuting one tensor alone must change the outputs.
    arch = build(name, **config)
    params = arch.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (4,) + arch.input_shape)
    first = arch.weight_space.tensors[0]
    flat = arch.weight_space.as_flat_dict(params)
    broken = dict(flat)
    broken[first.path] = jnp.flip(flat[first.path], axis=-1)
    from wsl.weight_space import nest_paths
    diff = jnp.max(jnp.abs(arch.apply(params, x) - arch.apply(nest_paths(broken), x)))
    assert diff > 1e-4


def test_parameter_counts():
    assert build("small_cnn").num_params == 4970
    assert build("small_cnn", input_shape=(32, 32, 1)).num_params == 4970
    assert build("cnn_s").num_params == 2464


def test_population_init_and_dropout():
    arch = build("mlp")
    pop = arch.init_population(jax.random.key(0), 3)
    assert arch.weight_space.batch_shape(pop) == (3,)
    one = jax.tree.map(lambda a: a[0], pop)
    x = jnp.ones((2, 40))
    clean = arch.apply(one, x)
    dropped = arch.apply(one, x, dropout_rate=0.5, key=jax.random.key(1))
    assert not np.allclose(clean, dropped)
    np.testing.assert_allclose(arch.apply(one, x, dropout_rate=0.0, key=jax.random.key(1)), clean,
                               rtol=1e-6)


def test_bad_config_is_named():
    with pytest.raises(ValueError, match="widht"):
        build("mlp", widht=(3,))
    with pytest.raises(ValueError, match="registered"):
        build("vgg")
    with pytest.raises(ValueError, match="activation"):
        build("mlp", activation="swishy").init(jax.random.key(0))


def test_architectures_are_hashable_static_arguments():
    a, b = build("mlp"), build("mlp")
    assert a == b and hash(a) == hash(b) and a is not b
    assert build("mlp", widths=[32, 32]) == a  # a list config freezes to the same tuple
    assert build("mlp", widths=(16,)) != a and build("mlp", activation="tanh") != a
    # The config reads like a dict, is immutable, and rebuilds the same architecture from JSON.
    assert dict(a.config)["widths"] == (32, 32) and a.config.get("activation") == "relu"
    with pytest.raises(TypeError):
        a.config["widths"] = (8,)  # type: ignore[index]
    assert build("mlp", **json.loads(json.dumps(dict(a.config)))) == a
    assert hash(a.weight_space) == hash(b.weight_space)

    traces = []

    @functools.partial(jax.jit, static_argnums=0)
    def logits(arch, x):
        traces.append(arch)
        return arch.apply(arch.init(jax.random.key(0)), x)

    x = jnp.ones((2, 40))
    np.testing.assert_array_equal(logits(a, x), logits(b, x))
    assert len(traces) == 1  # equal architectures share one compiled program
    logits(build("mlp", activation="tanh"), x)
    assert len(traces) == 2
