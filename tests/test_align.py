"""Alignment: exact assignments, weight matching on every architecture, activations, zoos, mixup."""

import itertools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from benchmarks._reference_matching import published_weight_matching
from wsl import assignment
from wsl.align import (
    activation_matching,
    align_zoo,
    group_orders,
    matching_objective,
    weight_matching,
)
from wsl.models.mixup import aligned_mixup
from wsl.weight_space import TensorSpec, WeightSpace, WeightSpaceError, nest_paths
from wsl.zoos.architectures import build

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _value(scores, perm):
    return scores[np.arange(len(perm)), perm].sum()


# ------------------------------------------------------------------------------ assignment
def test_solve_reaches_scipys_optimum_on_hard_and_easy_matrices():
    rng = np.random.default_rng(0)
    hard = rng.normal(size=(40, 12, 12))
    easy = rng.normal(size=(40, 12, 12)) * 0.1 + np.eye(12)[rng.permutation(12)] * 3
    ties = rng.integers(0, 3, size=(40, 7, 7)).astype(float)  # many optimal assignments
    for scores in (hard, easy, ties):
        got = assignment.solve(scores)
        for s, p in zip(scores, got):
            assert sorted(p) == list(range(len(p)))
            best = linear_sum_assignment(s, maximize=True)[1]
            assert _value(s, p) == pytest.approx(_value(s, best), abs=1e-9)
    # The row-argmax shortcut must have been taken for the easy ones, never wrongly for the hard.
    assert (assignment.solve(easy) == easy.argmax(-1)).all()


def test_solve_keeps_batch_shape_threads_and_rejects_bad_input():
    scores = np.random.default_rng(1).normal(size=(2, 3, 5, 5))
    assert assignment.solve(scores).shape == (2, 3, 5)
    many = np.random.default_rng(2).normal(size=(64, 96, 96))
    assert assignment._threads(3, len(many), 96) == 3  # enough work to hand out
    threaded = assignment.solve(many, workers=3)
    np.testing.assert_allclose(assignment.assignment_value(many, threaded),
                               assignment.assignment_value(many, assignment.solve_reference(many)))
    with pytest.raises(ValueError, match="square"):
        assignment.solve(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="NaN"):
        assignment.solve(np.full((2, 3, 3), np.nan))
    with pytest.raises(ValueError, match="blocks"):
        assignment.solve(np.zeros((6, 6)), blocks=4)


@pytest.mark.parametrize("n,blocks", [(6, 2), (6, 3), (8, 2)])
def test_block_solver_is_the_best_block_respecting_permutation(n, blocks):
    rng = np.random.default_rng(n * blocks)
    size = n // blocks
    admissible = []
    for order in itertools.permutations(range(blocks)):
        for inner in itertools.product(itertools.permutations(range(size)), repeat=blocks):
            admissible.append(np.concatenate([order[b] * size + np.array(inner[b])
                                              for b in range(blocks)]))
    admissible = np.stack(admissible)
    for _ in range(5):
        s = rng.normal(size=(n, n))
        p = assignment.solve(s, blocks=blocks)
        assert any((p == a).all() for a in admissible), "not block-respecting"
        assert _value(s, p) == pytest.approx(max(_value(s, a) for a in admissible))


# ------------------------------------------------------------------------------ weight matching
def _random_population(space, seed, num):
    """Random networks: kernels at fan-in scale, biases and norm scales spread around 0 and 1."""
    rng = np.random.default_rng(seed)
    out = {}
    for t in space.tensors:
        if len(t.shape) >= 2:
            value = rng.normal(size=(num,) + t.shape) / np.sqrt(np.prod(t.shape[:-1]))
        else:
            value = rng.normal(size=(num,) + t.shape) * 0.1 + (t.path.endswith("scale"))
        out[t.path] = value.astype(np.float32)
    return nest_paths(out)


def _small_mlp(**config):
    return build("mlp", widths=(16, 16), **config)


# Test inputs are made in NumPy: eager jax ops would compile a small program for every new shape.
def _random_perms(space, seed, num):
    """`num` uniformly random symmetries per group, GroupNorm blocks moving whole (as
    `WeightSpace.random_permutation` draws them): group -> (num, n)."""
    rng = np.random.default_rng(seed)
    out = {}
    for g, n in space.group_sizes.items():
        blocks = space.blocks.get(g, 1)
        size = n // blocks
        order = rng.permuted(np.tile(np.arange(blocks), (num, 1)), axis=1)
        inner = rng.permuted(np.tile(np.arange(size), (num, blocks, 1)), axis=2)
        out[g] = (order[:, :, None] * size + inner).reshape(num, n)
    return out


def _permute(space, params, perms):
    """`space.permute` for params with one leading model axis and per-model permutations:
    along each axis of group g, unit i of the result is unit perms[g][model, i] of the input."""
    def one(t, x):
        x = np.asarray(x)
        for axis, g in enumerate(t.axes):
            if g is not None and g in perms:
                p = np.asarray(perms[g])
                index = p.reshape((len(p),) + (1,) * axis + (p.shape[-1],)
                                  + (1,) * (len(t.shape) - axis - 1))
                x = np.take_along_axis(x, index, axis=1 + axis)
        return x
    return space.map_tensors(one, params)


def _flatten(space, params):
    """`space.flatten`: (*models, num_params)."""
    flat = {p: np.asarray(a) for p, a in space.as_flat_dict(params).items()}
    lead = space.batch_shape(params)
    return np.concatenate([flat[t.path].reshape(lead + (t.size,)) for t in space.tensors], -1)


def _unflatten(space, vectors):
    """`space.unflatten` of (models, num_params) vectors."""
    out, start = {}, 0
    for t in space.tensors:
        out[t.path] = vectors[:, start:start + t.size].reshape((len(vectors),) + t.shape)
        start += t.size
    return nest_paths(out)


def _recovered(space, planted, perms):
    inverse = {g: np.argsort(p, axis=-1) for g, p in planted.items()}
    return np.all([np.all(inverse[g] == perms[g], axis=-1) for g in inverse], axis=0)


RECOVERY = [
    # (architecture, config, restarts, required exact recoveries out of 100)
    ("mlp", {}, 1, 99),
    ("small_cnn", {"input_shape": (8, 8, 1)}, 1, 99),
    ("resnet", {"input_shape": (8, 8, 1)}, 3, 95),
]
SLOW_RECOVERY = [
    ("resnet", {"input_shape": (8, 8, 1), "width": 4}, 3, 95),
    # GroupNorm: permutations must keep the norm's blocks together.
    ("resnet", {"input_shape": (8, 8, 1), "width": 4, "norm": "group", "norm_groups": 2}, 3, 95),
    ("transformer", {}, 3, 95),
    ("resnet", {"input_shape": (8, 8, 1), "width": 2, "blocks_per_stage": 2}, 3, 95),
]


def _check_architecture(name, config, restarts, required, capsys=None):
    arch = build(name, **config)
    space = arch.weight_space
    key = jax.random.key(0)
    # Planted permutations: 100 different networks, each permuted by its own random symmetry.
    pop = _random_population(space, 1, 100)
    planted = _random_perms(space, 2, 100)
    al = weight_matching(space, pop, _permute(space, pop, planted), key=jax.random.fold_in(key, 3),
                         restarts=restarts)
    count = int(_recovered(space, planted, al.perms).sum())
    print(f"\n{name} {config}: planted permutation recovered exactly in {count}/100 trials")
    assert count >= required

    # Independent networks: a non-trivial alignment that keeps every network's function.
    other = _random_population(space, 4, 100)
    al = weight_matching(space, pop, other, key=jax.random.fold_in(key, 5))
    three = lambda t: jax.tree.map(lambda a: a[:3], t)
    aligned = _permute(space, three(other), {g: p[:3] for g, p in al.perms.items()})
    x = np.random.default_rng(6).normal(size=(8,) + arch.input_shape).astype(np.float32)
    apply = jax.jit(jax.vmap(arch.apply, in_axes=(0, None)))
    np.testing.assert_allclose(apply(aligned, x), apply(three(other), x), atol=1e-5, rtol=1e-5)
    for i in range(3):
        assert not all((al.perms[g][i] == np.arange(len(al.perms[g][i]))).all() for g in al.perms)
    # The objective never decreases over the sweeps, and it is the objective of the result.
    history = al.objective
    assert (np.diff(history, axis=-1) >= 0).all()
    assert (history[:, -1] > history[:, 0]).all()
    np.testing.assert_allclose(history[:, -1], matching_objective(space, pop, other, al.perms),
                               rtol=1e-5)
    for g, n in space.group_sizes.items():
        if g in space.blocks:
            size = n // space.blocks[g]
            src = al.perms[g].reshape(100, space.blocks[g], size) // size
            assert (src == src[..., :1]).all(), f"{g}: permutation splits a GroupNorm block"


@pytest.mark.parametrize("name,config,restarts,required", RECOVERY, ids=lambda v: str(v))
def test_planted_recovery_function_and_monotone_objective(name, config, restarts, required):
    _check_architecture(name, config, restarts, required)


@pytest.mark.slow
@pytest.mark.parametrize("name,config,restarts,required", SLOW_RECOVERY, ids=lambda v: str(v))
def test_planted_recovery_slow_architectures(name, config, restarts, required):
    _check_architecture(name, config, restarts, required)


def test_same_permutations_as_the_published_algorithm_pair_by_pair():
    space = _small_mlp().weight_space
    pop = _random_population(space, 1, 16)
    ref = jax.tree.map(lambda a: a[0], pop)
    key = jax.random.key(2)
    al = weight_matching(space, ref, pop, key=key)
    orders = group_orders(key, list(space.group_sizes), 100)
    flat_ref = {p: np.asarray(a, np.float64) for p, a in space.as_flat_dict(ref).items()}
    for i in range(16):
        other = {p: np.asarray(a[i], np.float64) for p, a in space.as_flat_dict(pop).items()}
        expected = published_weight_matching(space, flat_ref, other, orders, 1e-6)
        for g in expected:
            np.testing.assert_array_equal(al.perms[g][i], expected[g])
    # Model 0 is the reference itself: the identity, and the objective is its squared norm.
    assert all((al.perms[g][0] == np.arange(len(al.perms[g][0]))).all() for g in al.perms)


def test_batched_equals_one_pair_at_a_time_and_pairwise_references():
    space = _small_mlp().weight_space
    a = _random_population(space, 3, 16)
    b = _random_population(space, 4, 16)
    batched = weight_matching(space, a, b, key=jax.random.key(5))
    for i in range(3):
        one = lambda t: jax.tree.map(lambda x: x[i], t)
        single = weight_matching(space, one(a), one(b), key=jax.random.key(5))
        assert single.objective.ndim == 1 and single.sweeps.ndim == 0
        for g in single.perms:
            np.testing.assert_array_equal(single.perms[g], batched.perms[g][i])


def test_objective_per_sweep_matches_recomputation_and_never_decreases():
    space = _small_mlp().weight_space
    a = _random_population(space, 6, 1)
    b = _random_population(space, 7, 16)
    ref = jax.tree.map(lambda x: x[0], a)
    key = jax.random.key(8)
    full = weight_matching(space, ref, b, key=key)
    assert full.sweeps.max() >= 3, "too easy to test several sweeps"
    previous = matching_objective(space, ref, b)
    np.testing.assert_allclose(full.objective[:, 0], previous, rtol=1e-6)
    for k in range(1, int(full.sweeps.max()) + 1):
        # The group orders depend only on the key, so stopping after k sweeps replays a prefix.
        part = weight_matching(space, ref, b, key=key, max_sweeps=k)
        value = matching_objective(space, ref, b, part.perms)
        assert (value >= previous - 1e-4 * np.abs(previous)).all()
        np.testing.assert_allclose(value, full.objective[:, k], rtol=1e-5)
        previous = value


def _quadratic_space(n=10):
    # A residual MLP: the stream group labels both axes of the square residual kernel.
    return WeightSpace((TensorSpec("w_in", (5, n), (None, "s")), TensorSpec("b", (n,), ("s",)),
                        TensorSpec("w_res", (n, n), ("s", "s")),
                        TensorSpec("h", (n, 7), ("s", "h")),
                        TensorSpec("w_out", (7, 3), ("h", None))))


def test_group_on_two_axes_of_one_tensor():
    space = _quadratic_space()
    rng = np.random.default_rng(9)
    pop = _unflatten(space, rng.normal(size=(50, space.num_params)))
    planted = {g: np.stack([rng.permutation(n) for _ in range(50)])
               for g, n in space.group_sizes.items()}
    # Coordinate descent on a quadratic group meets more local optima: restarts matter here.
    al = weight_matching(space, pop, _permute(space, pop, planted), key=jax.random.key(11),
                         restarts=5)
    assert _recovered(space, planted, al.perms).sum() >= 48
    other = _unflatten(space, rng.normal(size=(50, space.num_params)))
    al = weight_matching(space, pop, other, key=jax.random.key(13))
    assert (np.diff(al.objective, axis=-1) >= -1e-4).all()
    np.testing.assert_allclose(al.objective[:, -1], matching_objective(space, pop, other, al.perms),
                               rtol=1e-4)


def test_groupnorm_blocks_move_whole():
    space = WeightSpace((TensorSpec("w1", (6, 12), (None, "g")), TensorSpec("b", (12,), ("g",)),
                         TensorSpec("w2", (12, 4), ("g", None))), blocks={"g": 3})
    rng = np.random.default_rng(5)
    pop = _unflatten(space, rng.normal(size=(40, space.num_params)).astype(np.float32))
    # Block-respecting random permutations: whole blocks of 4 move, units shuffle inside.
    planted = {"g": np.stack([(rng.permutation(3)[:, None] * 4
                               + np.stack([rng.permutation(4) for _ in range(3)])).reshape(12)
                              for _ in range(40)])}
    al = weight_matching(space, pop, _permute(space, pop, planted))
    assert _recovered(space, planted, al.perms).all()
    other = _unflatten(space, rng.normal(size=(40, space.num_params)).astype(np.float32))
    al = weight_matching(space, pop, other)
    src = al.perms["g"].reshape(40, 3, 4) // 4
    assert (src == src[..., :1]).all() and (np.sort(src[..., 0], -1) == np.arange(3)).all()
    unconstrained = weight_matching(WeightSpace(space.tensors), pop, other)
    assert (al.final_objective <= unconstrained.final_objective + 1e-4).all()
    assert (al.final_objective < unconstrained.final_objective - 1e-4).any()


def test_diverged_models_are_flagged_not_fatal():
    space = _small_mlp().weight_space
    pop = _random_population(space, 14, 16)
    broken = jax.tree.map(np.copy, pop)
    broken["dense_0"]["kernel"][1, 0, 0] = np.nan
    al = weight_matching(space, jax.tree.map(lambda a: a[0], pop), broken)
    assert al.valid.tolist() == [True, False] + [True] * 14
    assert (al.perms["dense_0"][1] == np.arange(16)).all()
    assert np.isnan(al.objective[1]).all() and np.isfinite(al.objective[[0, 2]]).all()
    with pytest.raises(ValueError, match="reference has NaN"):
        weight_matching(space, jax.tree.map(lambda a: a[1], broken), pop)


def test_bad_inputs_are_named():
    space = _small_mlp().weight_space
    a = _random_population(space, 0, 3)
    b = _random_population(space, 1, 2)
    with pytest.raises(WeightSpaceError, match="one per model"):
        weight_matching(space, a, b)
    with pytest.raises(WeightSpaceError, match="fixed names unknown groups"):
        weight_matching(space, a, a, fixed=["dense_9"])
    with pytest.raises(ValueError, match="need a key"):
        weight_matching(space, a, a, restarts=2)
    with pytest.raises(WeightSpaceError, match="not a permutation"):
        weight_matching(space, a, a, init={"dense_0": np.zeros(16, int)})
    with pytest.raises(WeightSpaceError, match="dense_0/kernel"):
        weight_matching(space, a, _random_population(build("mlp", widths=(9,)).weight_space, 0, 3))


def test_fixed_groups_keep_their_init():
    space = _small_mlp().weight_space
    a, b = (_random_population(space, k, 16) for k in (15, 16))
    start = np.random.default_rng(17).permutation(16)
    al = weight_matching(space, a, b, init={"dense_0": start}, fixed=["dense_0"])
    assert (al.perms["dense_0"] == start).all()


@pytest.mark.eight_devices
def test_sharded_over_eight_devices_gives_the_same_alignment():
    from wsl.mesh import make_mesh

    assert len(jax.devices()) == 8
    space = build("mlp", widths=(8, 8)).weight_space
    pop = space.unflatten(np.random.default_rng(0).normal(size=(21, space.num_params)))
    ref = jax.tree.map(lambda a: a[0], pop)
    plain = weight_matching(space, ref, pop, key=jax.random.key(1))
    sharded = weight_matching(space, ref, pop, key=jax.random.key(1), mesh=make_mesh())
    assert sharded.perms["dense_0"].shape == (21, 8)
    for g in plain.perms:
        np.testing.assert_array_equal(plain.perms[g], sharded.perms[g])
    np.testing.assert_allclose(plain.objective, sharded.objective, rtol=1e-5)


# ------------------------------------------------------------------------------ activations
def test_activation_matching_recovers_planted_permutations():
    from wsl.eval.lmc import unit_features

    # tanh: no unit is dead on all inputs (dead ReLU units are indistinguishable by activations).
    arch = _small_mlp(activation="tanh")
    space = arch.weight_space
    pop = _random_population(space, 18, 16)
    planted = _random_perms(space, 19, 16)
    x = np.random.default_rng(20).normal(size=(300, 40)).astype(np.float32)
    al = activation_matching(space, unit_features(arch), pop, _permute(space, pop, planted), x,
                             batch_size=128)
    assert _recovered(space, planted, al.perms).all()


def test_activation_matching_hands_featureless_groups_to_weight_matching():
    space = _small_mlp().weight_space
    a, b = _random_population(space, 30, 16), _random_population(space, 31, 16)
    # Features for the first hidden layer only: the second is left to weight matching.
    features = lambda p, x: {"dense_0": jnp.tanh(x @ p["dense_0"]["kernel"] + p["dense_0"]["bias"])}
    x = np.random.default_rng(0).normal(size=(200, 40)).astype(np.float32)
    al = activation_matching(space, features, a, b, x)
    fixed = weight_matching(space, a, b, init={"dense_0": al.perms["dense_0"]}, fixed=["dense_0"])
    np.testing.assert_array_equal(al.perms["dense_1"], fixed.perms["dense_1"])
    assert not (al.perms["dense_1"] == np.arange(16)).all()
    ident = activation_matching(space, features, a, b, x, remaining="identity")
    assert (ident.perms["dense_1"] == np.arange(16)).all()
    np.testing.assert_array_equal(ident.perms["dense_0"], al.perms["dense_0"])
    with pytest.raises(WeightSpaceError, match="unknown group"):
        activation_matching(space, lambda p, x: {"nope": x}, a, b, x)


@pytest.mark.slow
def test_activation_matching_on_a_transformer():
    from wsl.eval.lmc import unit_features

    arch = build("transformer", depth=1, heads=2, head_dim=4, dim=8, mlp_dim=8)
    space = arch.weight_space
    features = unit_features(arch)(arch.init(jax.random.key(0)), jnp.zeros((2, 40)))
    assert set(features) == {"stream", "block0_mlp"}  # heads and head dims have no single axis
    pop = _random_population(space, 21, 6)
    other = _random_population(space, 22, 6)
    x = np.asarray(jax.random.normal(jax.random.key(23), (64, 40)))
    al = activation_matching(space, unit_features(arch), pop, other, x)
    assert set(al.perms) == set(space.group_sizes)
    np.testing.assert_allclose(arch.apply(jax.tree.map(lambda a: a[0], al.apply(space, other)), x),
                               arch.apply(jax.tree.map(lambda a: a[0], other), x), atol=1e-4)
    ident = activation_matching(space, unit_features(arch), pop, other, x, remaining="identity")
    assert (ident.perms["block0_heads"] == np.arange(2)).all()


# ------------------------------------------------------------------------------ zoos
def test_align_zoo_to_reference_and_to_the_mean():
    space = _small_mlp().weight_space
    pop = _random_population(space, 24, 16)
    fixed = align_zoo(space, pop, reference=3, key=jax.random.key(25))
    assert fixed.rounds == 1
    assert (fixed.perms["dense_0"][3] == np.arange(16)).all()
    mean = align_zoo(space, pop, reference="mean", key=jax.random.key(25), rounds=6)
    np.testing.assert_allclose(_flatten(space, mean.params),
                               _flatten(space, _permute(space, pop, mean.perms)), atol=0)
    np.testing.assert_allclose(_flatten(space, mean.reference),
                               _flatten(space, mean.params).mean(0), rtol=1e-5, atol=1e-6)
    assert 1 <= mean.rounds <= 6 and len(mean.objective) >= 1
    # A common basis pulls the models closer together than the unaligned population.
    spread = lambda p: float(np.var(_flatten(space, p), axis=0).sum())
    assert spread(mean.params) < spread(pop)
    # A diverged model (even model 0) is carried along unaligned and left out of the mean.
    broken = jax.tree.map(np.copy, pop)
    broken["dense_0"]["bias"][0, 0] = np.nan
    res = align_zoo(space, broken, reference="mean", key=jax.random.key(25), rounds=2)
    assert not res.alignment.valid[0] and res.alignment.valid[1:].all()
    assert np.isfinite(_flatten(space, res.reference)).all()
    with pytest.raises(ValueError, match="'mean'"):
        align_zoo(space, pop, reference="median")
    with pytest.raises(IndexError):
        align_zoo(space, pop, reference=16)


# ------------------------------------------------------------------------------ mixup
def test_aligned_mixup_of_permuted_copies_keeps_the_function():
    arch = _small_mlp()
    space = arch.weight_space
    base = _random_population(space, 26, 1)
    rng = np.random.default_rng(27)
    perms = {g: np.stack([rng.permutation(n) for _ in range(16)])
             for g, n in space.group_sizes.items()}
    repeated = jax.tree.map(lambda a: np.repeat(a, 16, 0), base)
    copies = _permute(space, repeated, perms)
    y = rng.uniform(size=16).astype(np.float32)
    batch = {"params": copies, "test_acc": y, "model": np.arange(16), "rows": np.arange(16),
             "activation": np.array(["relu"] * 16)}
    x = rng.normal(size=(16, 40)).astype(np.float32)
    apply = jax.jit(jax.vmap(arch.apply, in_axes=(0, None)))
    want = np.asarray(apply(repeated, x)[0])  # the shapes of every other call: one compile
    out = aligned_mixup(space)(jax.random.key(0), batch)
    lam = np.asarray(out["mixup_lambda"])
    # Every network is a permuted copy of one network, so every aligned mixture computes it.
    np.testing.assert_allclose(apply(out["params"], x), np.broadcast_to(want, (16,) + want.shape),
                               atol=2e-5)
    mixed_y = np.asarray(out["test_acc"])
    for i in range(16):
        # The target mixes like the weights; ids come from the parent with the larger weight.
        partners = np.flatnonzero(np.isclose(lam[i] * y[i] + (1 - lam[i]) * y, mixed_y[i],
                                             atol=1e-6))
        assert len(partners) >= 1
        assert int(out["model"][i]) in ([i] if lam[i] >= 0.5 else partners.tolist())
    np.testing.assert_array_equal(out["rows"], out["model"])  # ids travel together
    assert out["activation"].tolist() == ["relu"] * 16
    # Interpolating the same pairs without aligning them changes the function.
    naive = aligned_mixup(space, prealigned=True)(jax.random.key(0), batch)
    change = np.abs(np.asarray(apply(naive["params"], x)) - want).max(axis=(1, 2))
    assert (change > 1e-3).mean() > 0.5


def test_prealigned_mixup_is_jittable_and_interpolates():
    space = _small_mlp().weight_space
    pop = _random_population(space, 29, 16)
    batch = {"flat": _flatten(space, pop), "val_acc": np.linspace(0.1, 0.6, 16, dtype=np.float32)}
    hook = jax.jit(aligned_mixup(space, prealigned=True))
    out = hook(jax.random.key(3), batch)
    lam = np.asarray(out["mixup_lambda"])
    assert out["flat"].shape == batch["flat"].shape and ((lam >= 0) & (lam <= 1)).all()
    # Each mixed network lies on the segment between its parents: recover the partner from y.
    y, flat = np.asarray(batch["val_acc"]), np.asarray(batch["flat"])
    for i in range(16):
        if abs(lam[i] - 1) < 1e-6:
            continue
        partner_y = (np.asarray(out["val_acc"])[i] - lam[i] * y[i]) / (1 - lam[i])
        j = int(np.argmin(np.abs(y - partner_y)))
        np.testing.assert_allclose(np.asarray(out["flat"])[i], lam[i] * flat[i]
                                   + (1 - lam[i]) * flat[j], rtol=1e-4, atol=1e-5)
    with pytest.raises(TypeError, match="prealigned=True"):
        jax.jit(aligned_mixup(space))(jax.random.key(0), {"params": pop})
    with pytest.raises(KeyError, match="targets"):
        aligned_mixup(space, targets=["nope"])(jax.random.key(0), {"params": pop})
