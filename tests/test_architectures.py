"""Every registered architecture: permutation symmetry of its weight space and its parameter
counts."""

import functools
import json

import jax
import numpy as np
import pytest

from wsl.weight_space import check_permutation, nest_paths
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
WRONG = 5  # the first configs, on which permuting one tensor alone must change the outputs

# Most of this file's time is XLA compile time, so each config's symmetry checks run as ONE
# compiled program (`_symmetry_outputs`, shared by the two tests below), the test inputs come from
# numpy, and the random permutations are drawn by the library eagerly (its per-size programs are
# shared by every config).


@functools.lru_cache(maxsize=None)
def _symmetry_outputs(index):
    """For CONFIGS[index]: the perturbed init params as a flat vector, and the flat params and
    the logits of every model the symmetry tests look at, all from one compiled program:

    0      the perturbed init params permuted by the identity (the reference),
    1 … 3  the perturbed init params permuted by the random symmetries of seeds 10, 11 and 12,
    4, 5   (the first `WRONG` configs) the init params, and the init params with only the first
           tensor permuted (flipped along its last axis), each permuted by the identity.
    """
    name, config = CONFIGS[index]
    arch = build(name, **config)
    space = arch.weight_space
    init = jax.tree.map(np.asarray, arch.init(jax.random.key(0)))
    rng = np.random.default_rng(9)
    # Perturb biases and norms away from their zero/one init so a wrong permutation would show.
    perturbed = jax.tree.map(
        lambda a: a + 0.1 * rng.standard_normal(a.shape, dtype=np.float32), init)
    x = rng.standard_normal((4,) + arch.input_shape, dtype=np.float32)
    drawn = [space.random_permutation(jax.random.key(10 + seed)) for seed in range(3)]
    for perm in drawn:
        for g, n in space.group_sizes.items():
            check_permutation(perm[g], n, f"random permutation of {g!r}")
    identity = {g: np.arange(n, dtype=np.int32) for g, n in space.group_sizes.items()}
    models = [perturbed] * 4
    perms = [identity] + [{g: np.asarray(p) for g, p in perm.items()} for perm in drawn]
    if index < WRONG:
        first = space.tensors[0].path
        broken = dict(space.as_flat_dict(init))
        broken[first] = np.flip(broken[first], axis=-1)
        models += [init, nest_paths(broken)]
        perms += [identity, identity]

    @jax.jit
    def run(models, perms, x):
        def one(model_and_perm):
            permuted = space.permute(*model_and_perm)
            return space.flatten(permuted), arch.apply(permuted, x)

        # Batched over the models, so that the program holds `permute` and `apply` once.
        return jax.vmap(one)((models, perms))

    stack = lambda *trees: jax.tree.map(lambda *leaves: np.stack(leaves), *trees)  # noqa: E731
    flat, logits = run(stack(*models), stack(*perms), x)
    # The perturbed params as one vector, in the weight space's order (as `space.flatten`).
    reference = np.concatenate([np.ravel(a) for a in space.as_flat_dict(perturbed).values()])
    return reference, np.asarray(flat), np.asarray(logits)


def test_every_registered_architecture_is_covered():
    assert {a["name"] for a in list_architectures()} == {name for name, _ in CONFIGS}


@pytest.mark.parametrize("name,config", CONFIGS, ids=lambda v: str(v))
def test_random_permutation_preserves_function(name, config):
    params, permuted, logits = _symmetry_outputs(CONFIGS.index((name, config)))
    for k in range(1, 4):  # the symmetries of seeds 10, 11, 12 against the identity
        change = np.max(np.abs(permuted[k] - params))
        assert change > 1e-2, "the permutation must really move parameters"
        diff = np.max(np.abs(logits[0] - logits[k]))
        assert diff < 1e-5, f"{name}: outputs changed by {diff}"


@pytest.mark.parametrize("name,config", CONFIGS[:WRONG], ids=lambda v: str(v))
def test_wrong_permutation_changes_function(name, config):
    # Guard against a vacuous symmetry test: permuting one tensor alone must change the outputs.
    _, _, logits = _symmetry_outputs(CONFIGS.index((name, config)))
    diff = np.max(np.abs(logits[4] - logits[5]))
    assert diff > 1e-4


def test_parameter_counts():
    assert build("small_cnn").num_params == 4970
    assert build("small_cnn", input_shape=(32, 32, 1)).num_params == 4970
    assert build("cnn_s").num_params == 2464


def test_population_init_and_dropout():
    arch = build("mlp")

    @jax.jit
    def run(key, x):  # one compiled program
        pop = arch.init_population(key, 3)
        one = jax.tree.map(lambda a: a[0], pop)
        return (pop, arch.apply(one, x),
                arch.apply(one, x, dropout_rate=0.5, key=jax.random.key(1)),
                arch.apply(one, x, dropout_rate=0.0, key=jax.random.key(1)))

    pop, clean, dropped, rate_zero = run(jax.random.key(0), np.ones((2, 40), np.float32))
    assert arch.weight_space.batch_shape(pop) == (3,)
    assert not np.allclose(clean, dropped)
    np.testing.assert_allclose(rate_zero, clean, rtol=1e-6)


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
    def logits(arch, params, x):
        traces.append(arch)
        return arch.apply(params, x)

    # The init of ("mlp", {}) is compiled once (the symmetry tests already did); the tanh MLP has
    # the same shapes.
    params = a.init(jax.random.key(0))
    x = np.ones((2, 40), np.float32)
    np.testing.assert_array_equal(logits(a, params, x), logits(b, params, x))
    assert len(traces) == 1  # equal architectures share one compiled program
    logits(build("mlp", activation="tanh"), params, x)
    assert len(traces) == 2
