"""UNF encoder: builds on every architecture, exact permutation invariance / equivariance, fits."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from wsl.models.encoders import build_encoder
from wsl.models.errors import ModelError
from wsl.models.unf import UNFLayer, layer_counts, unf_structure
from wsl.weight_space import TensorSpec, WeightSpace, nest_paths
from wsl.zoos.architectures import build, list_architectures

# Small configs of every architecture; "resnet_group" adds GroupNorm blocks to the resnet.
CONFIGS = {
    "mlp": ("mlp", {"input_shape": (12,), "widths": (8, 8)}),
    "small_cnn": ("small_cnn", {"input_shape": (8, 8, 1), "channels": 4}),
    "cnn_s": ("cnn_s", {}),
    "resnet": ("resnet", {"input_shape": (8, 8, 1), "width": 4, "stages": 2}),
    "transformer": ("transformer", {"input_shape": (14, 14, 1), "patch": 7}),
    "resnet_group": ("resnet", {"input_shape": (8, 8, 1), "width": 4, "stages": 2,
                                "norm": "group", "norm_groups": 2}),
}
SMALL = {"channels": (4, 4), "head_widths": (16,)}
ONE_LAYER = {"channels": (4,), "head_widths": (8,)}  # symmetry tests: compile time is the cost
TOLERANCE = 1e-4


@functools.lru_cache(maxsize=None)
def space_of(name):
    arch, config = CONFIGS[name]
    return build(arch, **config).weight_space


@pytest.fixture
def population(random_networks):
    """`population(space, n, seed=0)`: random networks as a params tree (tests/conftest.py)."""
    return lambda space, n, seed=0: nest_paths(random_networks(space, n, seed))


def rel_diff(a, b):
    return float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-12))


def changed(space, a, b):
    """How many tensors differ between two params trees (a permutation must move something)."""
    fa, fb = space.as_flat_dict(a), space.as_flat_dict(b)
    return sum(not np.allclose(fa[p], fb[p]) for p in space.paths)


def test_every_architecture_is_covered():
    assert {a["name"] for a in list_architectures()} == {a for a, _ in CONFIGS.values()}


def test_unf_builds_for_all_five_architectures(population):
    for name in ("mlp", "small_cnn", "cnn_s", "resnet", "transformer"):
        space = space_of(name)
        encoder = build_encoder("unf", space, out_dim=2)
        out = jax.eval_shape(encoder.init_with_output, jax.random.key(0), population(space, 3))[0]
        assert out.shape == (3, 2), name


MOMENTS, STATISTICS = {"pool": "moments"}, {"statistics": True}

# Small settings per encoder that reads `statistics`, and its head's activation.
HYBRIDS = {"unf": (ONE_LAYER, jax.nn.relu),
           "nfn_hnp": (ONE_LAYER, jax.nn.relu),
           "ng_gnn": ({"dim": 8, "num_layers": 1, "head_widths": (8,)}, jax.nn.silu),
           "ng_transformer": ({"dim": 8, "heads": 2, "num_layers": 1, "head_widths": (8,)},
                              jax.nn.silu)}


@pytest.mark.parametrize("name,encoder,options", [(n, "unf", {}) for n in CONFIGS] + [
    ("transformer", "unf", MOMENTS), ("resnet", "unf", MOMENTS),
    ("small_cnn", "nfn_hnp", MOMENTS), ("mlp", "nfn_np", MOMENTS),
    ("transformer", "unf", STATISTICS), ("small_cnn", "nfn_hnp", STATISTICS),
    ("transformer", "ng_gnn", STATISTICS), ("resnet", "ng_transformer", STATISTICS)])
def test_invariant_to_random_permutations_and_not_constant(name, encoder, options, population):
    space = space_of(name)
    params = population(space, 4, seed=1)
    small = HYBRIDS[encoder][0] if encoder in HYBRIDS else ONE_LAYER
    encoder = build_encoder(encoder, space, out_dim=3, **options, **small)

    @jax.jit  # one compile: eager flax init costs a compile per op
    def run(key):
        perm = space.random_permutation(key, num=4)
        permuted = space.permute(params, perm, check=False)
        both = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), params, permuted)
        return perm, permuted, encoder.apply(encoder.init(jax.random.key(0), params), both)

    perm, permuted, out = run(jax.random.key(7))
    for g, n in space.blocks.items():  # GroupNorm: whole blocks move (a subgroup of S_n)
        block = np.asarray(perm[g]).reshape(4, n, space.group_sizes[g] // n) // (
            space.group_sizes[g] // n)
        assert (block == block[..., :1]).all()
    assert changed(space, params, permuted) >= len(space.tensors) - 2  # all but unpermuted ones
    assert out.shape == (8, 3)
    assert rel_diff(out[4:], out[:4]) < TOLERANCE
    # different networks, different outputs
    assert float(jnp.min(jnp.abs(out[:4, None] - out[None, :4]).sum(-1)
                         + jnp.eye(4) * 1e9)) > 1e-3 * float(jnp.abs(out).max())


def test_moments_pooling_sees_the_spread_the_mean_misses():
    from wsl.models.unf import pool

    # 2 models, 2 units, 1 channel: equal means, different spreads
    x = jnp.stack([jnp.array([[1.0], [-1.0]]), jnp.array([[3.0], [-3.0]])])
    assert jnp.allclose(pool(x, "mean"), 0.0)
    assert jnp.allclose(pool(x, "moments"), jnp.array([[0.0, 1.0], [0.0, 3.0]]), atol=1e-4)
    assert pool(jnp.ones((2, 3)), "moments").shape == (2, 6)  # nothing permuted: zero spread
    with pytest.raises(ModelError, match="pool"):
        build_encoder("unf", space_of("mlp"), pool="max")


@pytest.mark.parametrize("encoder", list(HYBRIDS))
def test_statistics_join_the_pooled_features(encoder, population):
    from wsl.models.statnn import stat_features

    options, act = HYBRIDS[encoder]
    space = space_of("mlp")
    params = population(space, 3)
    width = 7 * len(space.tensors)
    plain = build_encoder(encoder, space, **options)
    hybrid = build_encoder(encoder, space, statistics=True, feature_mean=[1.0] * width,
                           feature_std=[2.0] * width, **options)
    pooled = plain.init(jax.random.key(0), params)["params"]["MLP_0"]["Dense_0"]["kernel"].shape[0]
    variables = hybrid.init(jax.random.key(0), params)
    head = variables["params"]["MLP_0"]
    assert head["Dense_0"]["kernel"].shape[0] == pooled + width
    # With the pooled rows of the head zeroed, the output is the head on the standardised
    # statistics alone.
    kernel = head["Dense_0"]["kernel"].at[:pooled].set(0.0)
    variables = {"params": {**variables["params"],
                            "MLP_0": {**head, "Dense_0": {**head["Dense_0"], "kernel": kernel}}}}
    features = (stat_features(space, params) - 1.0) / 2.0
    hidden = act(features @ kernel[pooled:] + head["Dense_0"]["bias"])
    expected = hidden @ head["Dense_1"]["kernel"] + head["Dense_1"]["bias"]
    assert rel_diff(hybrid.apply(variables, params), expected) < 1e-5
    for bad, match in [({"feature_mean": [0.0] * width}, "statistics=true"),
                       ({"statistics": True, "feature_std": [1.0] * 3}, "has 3 entries"),
                       ({"statistics": "yes"}, "statistics")]:
        with pytest.raises(ModelError, match=match):
            build_encoder(encoder, space, **bad)


def permute_hidden(space, arrays, perm):
    """Permute (B, *shape, C) arrays with per-model permutations (B, n) via `space.permute`."""
    moved = nest_paths({p: jnp.moveaxis(x, -1, 1) for p, x in arrays.items()})
    channels = next(iter(arrays.values())).shape[-1]
    wide = {g: jnp.broadcast_to(p[:, None], (p.shape[0], channels, p.shape[-1]))
            for g, p in perm.items()}
    out = space.permute(moved, wide, check=False)
    return {p: jnp.moveaxis(x, 1, -1) for p, x in space.as_flat_dict(out).items()}


@pytest.mark.parametrize("name", [n for n in CONFIGS if n != "resnet_group"])  # same layer
def test_a_hidden_layer_is_equivariant(name):
    space = space_of(name)
    structure = unf_structure(space)
    rng = np.random.default_rng(2)
    hidden = {t.path: rng.standard_normal((3,) + t.shape + (2,)).astype(np.float32)
              for t in space.tensors}
    layer = UNFLayer(structure, 2, 3)

    def feats(arrays):
        return [e.fold_in(arrays[e.path]) for e in structure]

    def unfold(features):
        return {e.path: e.fold_out(f) for e, f in zip(structure, features)}

    @jax.jit
    def run(key):
        perm = space.random_permutation(key, num=3)
        permuted = permute_hidden(space, hidden, perm)
        variables = layer.init(jax.random.key(0), feats(hidden))
        out = unfold(layer.apply(variables, feats(hidden)))
        return (permuted, out, unfold(layer.apply(variables, feats(permuted))),
                permute_hidden(space, out, perm))

    permuted, out, out_of_permuted, expected = run(jax.random.key(3))
    assert changed(space, nest_paths(hidden), nest_paths(permuted)) >= len(space.tensors) - 2
    moved = 0
    for path in space.paths:
        assert out[path].shape == (3,) + space.tensor(path).shape + (3,)
        assert rel_diff(out_of_permuted[path], expected[path]) < TOLERANCE, path
        moved += not np.allclose(out_of_permuted[path], out[path], atol=1e-4)
    assert moved >= len(space.tensors) - 2  # equivariant, not invariant


def test_equivariant_output_permutes_with_its_input(population):
    space = space_of("resnet")
    params = population(space, 2)
    encoder = build_encoder("unf", space, output="equivariant", channels=(3,), out_dim=1)

    @jax.jit
    def run(key):
        perm = space.random_permutation(key, num=2)
        variables = encoder.init(jax.random.key(0), params)
        out = encoder.apply(variables, params)
        return (space.permute(out, perm, check=False),
                encoder.apply(variables, space.permute(params, perm, check=False)))

    expected, out_of_permuted = run(jax.random.key(5))
    expected = space.as_flat_dict(expected)
    for path, value in space.as_flat_dict(out_of_permuted).items():
        assert value.shape == (2,) + space.tensor(path).shape
        assert rel_diff(value, expected[path]) < TOLERANCE, path


def test_learns_the_mean_of_a_tensor(population):
    """Fit the mean of an attention kernel (heads × head dim × stream) on 8 networks: far better
    than the best constant predictor, whose error is the targets' variance."""
    space, target = space_of("transformer"), "block0_attention/query/kernel"
    params = population(space, 8, seed=4)
    shift = np.random.default_rng(5).standard_normal(8).astype(np.float32)
    flat = space.as_flat_dict(params)
    flat[target] = flat[target] + shift.reshape((8,) + (1,) * len(space.tensor(target).shape))
    params = nest_paths(flat)
    y = flat[target].reshape(8, -1).mean(-1)
    encoder = build_encoder("unf", space, **SMALL)
    optimizer = optax.adam(3e-3)

    def loss(v):
        return jnp.mean((encoder.apply(v, params)[:, 0] - y) ** 2)

    @jax.jit
    def fit():
        v = encoder.init(jax.random.key(0), params)
        state = optimizer.init(v)

        def step(carry, _):
            v, state = carry
            value, grad = jax.value_and_grad(loss)(v)
            updates, state = optimizer.update(grad, state, v)
            return (optax.apply_updates(v, updates), state), value
        (v, state), _ = jax.lax.scan(step, (v, state), None, length=80)
        return v, loss(v)

    _, final = fit()
    assert float(final) < 0.01 * float(jnp.var(y)), (float(final), float(jnp.var(y)))


def test_equals_nfn_hnp_on_an_mlp(population):
    """On a chain whose folded axes NFN lays out in the same order (an MLP), UNF's layers are
    exactly NFN-HNP's, packed alike: the same variables give the same outputs."""
    space = space_of("mlp")
    params = population(space, 3)
    unf, nfn = (build_encoder(name, space, **SMALL) for name in ("unf", "nfn_hnp"))

    @jax.jit
    def run():
        variables = unf.init(jax.random.key(0), params)
        renamed = {"params": {k.replace("UNFLayer", "NFNLayer"): v
                              for k, v in variables["params"].items()}}
        return unf.apply(variables, params), nfn.apply(renamed, params)

    out, reference = run()
    assert rel_diff(out, reference) < TOLERANCE


def test_counts_and_refusals():
    counts = layer_counts(space_of("transformer"), 4, 4)
    assert counts["matmuls"] == 14 and counts["params"] > 0
    # A tensor with one group on two axes (a recurrent matrix) is refused in one line.
    space = WeightSpace((TensorSpec("rnn/kernel", (4, 4), ("h", "h")), TensorSpec("rnn/bias",
                                                                                  (4,), ("h",))))
    with pytest.raises(ModelError, match=r"^encoder 'unf': tensor 'rnn/kernel' carries group 'h' "
                                         r"on 2 axes") as err:
        build_encoder("unf", space)
    assert "\n" not in str(err.value)
    for config, match in [({"channels": (4, 0)}, r"channels=\(4, 0\)"),
                          ({"output": "both"}, r"output='both'"),
                          ({"channels": ()}, r"needs at least one equivariant layer"),
                          ({"activation": "swish"}, r"activation='swish'")]:
        with pytest.raises(ModelError, match=match):
            build_encoder("unf", space_of("mlp"), **config)
