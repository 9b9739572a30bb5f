"""WeightSpace: validation, flatten/unflatten, permutations and JSON round-trips."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsl import WeightSpace, WeightSpaceError
from wsl.weight_space import check_permutation, nest_paths

# Most of this file's time is XLA compile time: every new shape of an eager jnp op compiles a
# program. So random params come from numpy, and each test that computes with the library runs
# its calls together in ONE `jax.jit`-ed program. Permutations used inside a compiled program are
# not checked by `permute` there (they are traced), so the tests check them with
# `check_permutation` on the results instead.


def mlp_space(widths):
    params, axes, prev = {}, {}, None
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        group = f"h{i}" if i < len(widths) - 2 else None
        params[f"l{i}"] = {"kernel": np.zeros((a, b)), "bias": np.zeros((b,))}
        axes[f"l{i}/kernel"] = (prev, group)
        axes[f"l{i}/bias"] = (group,)
        prev = group
    return WeightSpace.from_params(params, axes)


def random_params(space, seed, lead=()):
    """Standard-normal params of `space` with leading model axes `lead` (numpy arrays)."""
    rng = np.random.default_rng(seed)
    return nest_paths({t.path: rng.standard_normal(lead + t.shape, dtype=np.float32)
                       for t in space.tensors})


def check_permutations(space, perms):
    """Every group's permutation (one or a row per model) holds 0 … n−1 once."""
    assert set(perms) == set(space.group_sizes)
    for g, p in perms.items():
        check_permutation(np.asarray(p), space.group_sizes[g], f"permutation of {g!r}")


def test_counts_and_groups():
    space = mlp_space([4, 5, 3, 2])
    assert space.num_params == 4 * 5 + 5 + 5 * 3 + 3 + 3 * 2 + 2
    assert space.group_sizes == {"h0": 5, "h1": 3}
    assert space.members("h0") == [("l0/kernel", 1), ("l0/bias", 0), ("l1/kernel", 0)]
    assert "total 51 parameters" in space.summary()


def test_inconsistent_group_sizes_name_the_tensor_and_axis():
    params = {"a": {"kernel": np.zeros((3, 4))}, "b": {"kernel": np.zeros((5, 2))}}
    with pytest.raises(WeightSpaceError, match=r"b/kernel.*axis 0"):
        WeightSpace.from_params(params, {"a/kernel": (None, "h"), "b/kernel": ("h", None)})


def test_wrong_number_of_axis_labels_and_missing_tensor():
    params = {"a": {"kernel": np.zeros((3, 4)), "bias": np.zeros(4)}}
    with pytest.raises(WeightSpaceError, match="a/kernel"):
        WeightSpace.from_params(params, {"a/kernel": ("h",), "a/bias": ("h",)})
    with pytest.raises(WeightSpaceError, match="a/bias"):
        WeightSpace.from_params(params, {"a/kernel": (None, "h")})


def test_flatten_rejects_wrong_shapes():
    space = mlp_space([4, 5, 2])
    params = random_params(space, 0)
    params["l0"]["kernel"] = np.zeros((4, 6), np.float32)
    with pytest.raises(WeightSpaceError, match="l0/kernel"):
        space.flatten(params)
    with pytest.raises(WeightSpaceError, match="num_params"):
        space.unflatten(np.zeros(space.num_params + 1, np.float32))


def test_batched_flatten_matches_per_model():
    space = mlp_space([3, 4, 2])
    pop = random_params(space, 1, lead=(6,))

    @jax.jit
    def flatten(pop):  # one compiled program
        return space.flatten(pop), [space.flatten(jax.tree.map(lambda x: x[i], pop))
                                    for i in range(6)]

    flat, each = jax.tree.map(np.asarray, flatten(pop))
    assert flat.shape == (6, space.num_params)
    for i in range(6):
        np.testing.assert_array_equal(each[i], flat[i])


def test_permutation_algebra():
    space = mlp_space([3, 7, 5, 2])
    params = random_params(space, 2)

    @jax.jit
    def algebra(params, seeds):  # one compiled program
        # p and q: the random permutations of keys 3 and 4.
        pq = jax.vmap(lambda s: space.random_permutation(jax.random.key(s)))(seeds)
        p, q = ({g: a[i] for g, a in pq.items()} for i in (0, 1))
        inverse = space.invert_permutation(p)
        composed = space.compose_permutations(p, q)
        identity = space.identity_permutation()
        permuted = space.permute(params, p)
        flat = {"params": space.flatten(params), "permuted": space.flatten(permuted),
                "back": space.flatten(space.permute(permuted, inverse)),
                "two_steps": space.flatten(space.permute(space.permute(params, p), q)),
                "one_step": space.flatten(space.permute(params, composed)),
                "same": space.flatten(space.permute(params, identity))}
        return (p, q, inverse, composed, identity), flat

    perms, flat = jax.tree.map(np.asarray, algebra(params, np.array([3, 4])))
    for perm in perms:
        check_permutations(space, perm)
    assert not np.allclose(flat["permuted"], flat["params"])
    np.testing.assert_array_equal(flat["back"], flat["params"])
    np.testing.assert_array_equal(flat["two_steps"], flat["one_step"])
    np.testing.assert_array_equal(flat["same"], flat["params"])


def test_per_model_permutations():
    space = mlp_space([3, 6, 2])
    pop = random_params(space, 5, lead=(4,))

    @jax.jit
    def permute(pop):  # one compiled program
        perms = space.random_permutation(jax.random.key(6), num=4)
        out = space.permute(pop, perms)
        each = [space.flatten(space.permute(jax.tree.map(lambda x: x[i], pop),
                                            {g: p[i] for g, p in perms.items()}))
                for i in range(4)]
        return perms, space.flatten(out), each

    perms, out, each = jax.tree.map(np.asarray, permute(pop))
    assert perms["h0"].shape == (4, 6)
    check_permutations(space, perms)
    for i in range(4):
        np.testing.assert_array_equal(each[i], out[i])


def test_unknown_group_in_permutation():
    space = mlp_space([3, 6, 2])
    params = random_params(space, 0)
    with pytest.raises(WeightSpaceError, match="unknown groups"):
        space.permute(params, {"nope": np.arange(3)})
    with pytest.raises(WeightSpaceError, match="h0"):
        space.permute(params, {"h0": np.arange(5)})


def test_block_groups_keep_blocks_together():
    params = {"a": {"kernel": np.zeros((2, 8))}}
    space = WeightSpace.from_params(params, {"a/kernel": (None, "h")}, blocks={"h": 2})
    # The random permutations of keys 0 … 4, in one compiled program.
    draw = jax.jit(jax.vmap(lambda s: space.random_permutation(jax.random.key(s))["h"]))
    for p in np.asarray(draw(np.arange(5))):
        assert sorted(p) == list(range(8))
        assert len(set(p[:4] // 4)) == 1 and len(set(p[4:] // 4)) == 1
    with pytest.raises(WeightSpaceError, match="3 blocks"):
        WeightSpace.from_params(params, {"a/kernel": (None, "h")}, blocks={"h": 3})


def test_json_round_trip_and_bad_json():
    space = WeightSpace.from_params(
        {"a": {"kernel": np.zeros((2, 8)), "bias": np.zeros(8)}},
        {"a/kernel": (None, "h"), "a/bias": ("h",)}, nonlinearity={"h": "relu"}, blocks={"h": 2})
    again = WeightSpace.from_json(space.to_json())
    assert again == space
    with pytest.raises(WeightSpaceError, match="malformed"):
        WeightSpace.from_json('{"tensors": [{"path": "a"}]}')


def test_weight_spaces_are_hashable_static_arguments():
    space = WeightSpace.from_params(
        {"a": {"kernel": np.zeros((2, 8)), "bias": np.zeros(8)}},
        {"a/kernel": (None, "h"), "a/bias": ("h",)}, nonlinearity={"h": "relu"}, blocks={"h": 2})
    again = WeightSpace.from_dict(json.loads(space.to_json()))  # lists in, tuples kept
    assert again == space and hash(again) == hash(space) and again.to_dict() == space.to_dict()
    assert dict(again.nonlinearity) == {"h": "relu"} and again.blocks.get("h") == 2
    assert hash(mlp_space([4, 5, 3])) != hash(mlp_space([4, 6, 3]))
    with pytest.raises(TypeError):
        space.nonlinearity["h"] = "tanh"  # type: ignore[index]

    traces = []

    @functools.partial(jax.jit, static_argnums=0)
    def total(ws, vector):
        traces.append(ws)
        return sum(jnp.sum(t) for t in jax.tree.leaves(ws.unflatten(vector)))

    vector = np.ones(space.num_params, np.float32)
    assert float(total(space, vector)) == float(total(again, vector)) == space.num_params
    assert len(traces) == 1  # an equal space reuses the compiled program


@settings(max_examples=15, deadline=None)
@given(widths=st.lists(st.integers(1, 6), min_size=2, max_size=5), lead=st.integers(0, 3),
       seed=st.integers(0, 2**16))
def test_mlp_flatten_unflatten_exact(widths, lead, seed):
    space = mlp_space(widths)
    shape = (lead,) if lead else ()
    vec = np.random.default_rng(seed).standard_normal(shape + (space.num_params,),
                                                      dtype=np.float32)
    # unflatten, then flatten, in one compiled program
    np.testing.assert_array_equal(jax.jit(lambda v: space.flatten(space.unflatten(v)))(vec), vec)
    assert WeightSpace.from_json(space.to_json()) == space


@settings(max_examples=12, deadline=None)
@given(channels=st.lists(st.integers(1, 5), min_size=1, max_size=3), k=st.integers(1, 3),
       seed=st.integers(0, 2**16))
def test_cnn_permute_is_invertible(channels, k, seed):
    params, axes, prev, cin = {}, {}, None, 1
    for i, c in enumerate(channels):
        params[f"c{i}"] = {"kernel": np.zeros((k, k, cin, c)), "bias": np.zeros(c)}
        axes[f"c{i}/kernel"] = (None, None, prev, f"c{i}")
        axes[f"c{i}/bias"] = (f"c{i}",)
        prev, cin = f"c{i}", c
    space = WeightSpace.from_params(params, axes)
    x = random_params(space, seed)
    # Drawn eagerly: the library's programs per group size are shared by every example.
    p = space.random_permutation(jax.random.key(seed + 1))

    @jax.jit
    def round_trip(x, p):  # one compiled program
        inverse = space.invert_permutation(p)
        y = space.permute(space.permute(x, p), inverse)
        return inverse, space.flatten(y), space.flatten(x)

    inverse, y, x = jax.tree.map(np.asarray, round_trip(x, p))
    check_permutations(space, p)
    check_permutations(space, inverse)
    np.testing.assert_array_equal(y, x)
