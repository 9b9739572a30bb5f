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


def mlp_space(widths):
    params, axes, prev = {}, {}, None
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        group = f"h{i}" if i < len(widths) - 2 else None
        params[f"l{i}"] = {"kernel": np.zeros((a, b)), "bias": np.zeros((b,))}
        axes[f"l{i}/kernel"] = (prev, group)
        axes[f"l{i}/bias"] = (group,)
        prev = group
    return WeightSpace.from_params(params, axes)


def random_params(space, key, lead=()):
    vec = jax.random.normal(key, lead + (space.num_params,))
    return space.unflatten(vec)


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
    params = random_params(space, jax.random.key(0))
    params["l0"]["kernel"] = jnp.zeros((4, 6))
    with pytest.raises(WeightSpaceError, match="l0/kernel"):
        space.flatten(params)
    with pytest.raises(WeightSpaceError, match="num_params"):
        space.unflatten(jnp.zeros(space.num_params + 1))


def test_batched_flatten_matches_per_model():
    space = mlp_space([3, 4, 2])
    pop = random_params(space, jax.random.key(1), lead=(6,))
    flat = space.flatten(pop)
    assert flat.shape == (6, space.num_params)
    for i in range(6):
        one = jax.tree.map(lambda x: x[i], pop)
        np.testing.assert_array_equal(space.flatten(one), flat[i])


def test_permutation_algebra():
    space = mlp_space([3, 7, 5, 2])
    params = random_params(space, jax.random.key(2))
    p = space.random_permutation(jax.random.key(3))
    q = space.random_permutation(jax.random.key(4))
    permuted = space.permute(params, p)
    assert not np.allclose(space.flatten(permuted), space.flatten(params))
    back = space.permute(permuted, space.invert_permutation(p))
    np.testing.assert_array_equal(space.flatten(back), space.flatten(params))
    two_steps = space.permute(space.permute(params, p), q)
    one_step = space.permute(params, space.compose_permutations(p, q))
    np.testing.assert_array_equal(space.flatten(two_steps), space.flatten(one_step))
    same = space.permute(params, space.identity_permutation())
    np.testing.assert_array_equal(space.flatten(same), space.flatten(params))


def test_per_model_permutations():
    space = mlp_space([3, 6, 2])
    pop = random_params(space, jax.random.key(5), lead=(4,))
    perms = space.random_permutation(jax.random.key(6), num=4)
    assert perms["h0"].shape == (4, 6)
    out = space.permute(pop, perms)
    for i in range(4):
        one = space.permute(jax.tree.map(lambda x: x[i], pop), {g: p[i] for g, p in perms.items()})
        np.testing.assert_array_equal(space.flatten(one), space.flatten(out)[i])


def test_unknown_group_in_permutation():
    space = mlp_space([3, 6, 2])
    params = random_params(space, jax.random.key(0))
    with pytest.raises(WeightSpaceError, match="unknown groups"):
        space.permute(params, {"nope": jnp.arange(3)})
    with pytest.raises(WeightSpaceError, match="h0"):
        space.permute(params, {"h0": jnp.arange(5)})


def test_block_groups_keep_blocks_together():
    params = {"a": {"kernel": np.zeros((2, 8))}}
    space = WeightSpace.from_params(params, {"a/kernel": (None, "h")}, blocks={"h": 2})
    for seed in range(5):
        p = np.asarray(space.random_permutation(jax.random.key(seed))["h"])
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

    vector = jnp.ones(space.num_params)
    assert float(total(space, vector)) == float(total(again, vector)) == space.num_params
    assert len(traces) == 1  # an equal space reuses the compiled program


@settings(max_examples=15, deadline=None)
@given(widths=st.lists(st.integers(1, 6), min_size=2, max_size=5), lead=st.integers(0, 3),
       seed=st.integers(0, 2**16))
def test_mlp_flatten_unflatten_exact(widths, lead, seed):
    space = mlp_space(widths)
    shape = (lead,) if lead else ()
    vec = jax.random.normal(jax.random.key(seed), shape + (space.num_params,))
    params = space.unflatten(vec)
    np.testing.assert_array_equal(space.flatten(params), vec)
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
    x = random_params(space, jax.random.key(seed))
    p = space.random_permutation(jax.random.key(seed + 1))
    y = space.permute(space.permute(x, p), space.invert_permutation(p))
    np.testing.assert_array_equal(space.flatten(y), space.flatten(x))
