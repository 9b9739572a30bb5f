"""Generators conditioned on a task given by data (per-class support features, (k, F) per model).

The task encoder is equivariant to relabelling until its last, label-ordered map; flow matching
and diffusion trained on two tasks sample each task's mode with its mean and spread (and both
unconditioned); dropping, guidance, configs and the parameter tree without a task stay as before;
the generator pipeline records the task's shape, reloads, and checks what a sampler is given."""

import functools
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from wsl.config import ConfigError, override
from wsl.models.backbones import MLPBackbone, TokenTransformer, init_backbone
from wsl.models.diffusion import Diffusion
from wsl.models.errors import ModelError
from wsl.models.flow import FlowMatching, drop_conditions, guided
from wsl.models.task_encoder import TaskEncoder
from wsl.models.weight_generator import (
    GeneratorConfig,
    GeneratorTask,
    make_generator,
    relabel_maps,
)
from wsl.train import TrainConfig
from wsl.train.generator import GenerateError, TrainedGenerator, train_generator
from wsl.zoos.architectures import build
from wsl.zoos.store import write_zoo

DIM = 4
K, F = 2, 3
# Task B is task A with its two classes relabelled: a generator that pooled the classes without
# their order could not tell them apart.
TASK_A = np.asarray([[1.0, 0.0, 0.5], [0.0, 1.0, -0.5]], np.float32)
TASK_B = TASK_A[::-1].copy()
TASKS = np.stack([TASK_A, TASK_B])
MEANS = np.stack([np.full(DIM, 2.0), np.full(DIM, -2.0)]).astype(np.float32)
# As in tests/test_generator_models.py (TRAINED_STDS): modes much narrower than the unit source
# take far longer to learn.
STDS = (0.5, 1.0)
DRAWS = 3  # support draws per example: the task plus a little noise, as few-shot means vary
STEPS = {"flow": 600, "ddpm": 700}
N = 300  # samples per task (and unconditioned)
init_params = jax.jit(init_backbone, static_argnums=(0, 2))


def task_batch(key, n=128):
    """Examples of both tasks (equal weights): x on the task's mode, and DRAWS noisy support
    draws (n, DRAWS, K, F) of its task."""
    k1, k2, k3 = jax.random.split(key, 3)
    c = jax.random.bernoulli(k1, 0.5, (n,)).astype(jnp.int32)
    x = jnp.asarray(MEANS)[c] + jnp.asarray(STDS)[c][:, None] * jax.random.normal(k2, (n, DIM))
    tasks = jnp.asarray(TASKS)[c][:, None] + 0.05 * jax.random.normal(k3, (n, DRAWS, K, F))
    return x, tasks


def test_task_encoder_is_equivariant_per_class_and_ordered_at_the_end():
    encoder = TaskEncoder(dim=16, embed=8)
    support = jax.random.normal(jax.random.key(0), (5, 4, F))
    params = encoder.init(jax.random.key(1), support)
    perm = np.asarray([2, 0, 3, 1])
    per_class = encoder.apply(params, support, method=TaskEncoder.per_class)
    permuted = encoder.apply(params, support[:, perm], method=TaskEncoder.per_class)
    assert per_class.shape == (5, 4, 8)
    rel = float(jnp.linalg.norm(permuted - per_class[:, perm]) / jnp.linalg.norm(per_class))
    assert rel < 1e-5, rel
    # The final vector knows which class is which label: swapping two rows changes it.
    out = encoder.apply(params, support)
    swapped = encoder.apply(params, support[:, [1, 0, 2, 3]])
    assert out.shape == (5, 16)
    change = float(jnp.linalg.norm(swapped - out) / jnp.linalg.norm(out))
    assert change > 0.01, change


@pytest.mark.parametrize("name, config", [
    ("mlp", dict(widths=(6,), input_shape=(4,), num_classes=3)),
    ("small_cnn", dict(channels=4, num_layers=2, input_shape=(6, 6, 1), num_classes=3)),
])
def test_relabel_maps_reorder_the_output_units_and_nothing_else(name, config):
    arch = build(name, **config)
    space = arch.weight_space
    orders, index = relabel_maps(space, 3)
    assert orders.shape == (6, 3) and index.shape == (6, space.num_params)
    assert len({tuple(o) for o in orders}) == 6  # every order of 3 classes, once
    params = arch.init(jax.random.key(0))
    flat = np.asarray(space.flatten(params))
    x = np.asarray(jax.random.normal(jax.random.key(1), (5, *config["input_shape"])))
    logits = np.asarray(arch.apply(params, x))
    for order, idx in zip(orders, index):
        assert sorted(idx) == list(range(space.num_params))  # a permutation of the entries
        relabelled = np.asarray(arch.apply(space.unflatten(flat[idx]), x))
        np.testing.assert_allclose(relabelled, logits[:, order], rtol=1e-5, atol=1e-6)
    with pytest.raises(ModelError, match="no output axis of size 4"):
        relabel_maps(space, 4)


def test_relabelled_training_takes_support_rows_and_weights_in_one_order():
    """With relabelling, the loss of a batch equals the plain loss of the same batch relabelled
    by the orders the task drew: support rows and output units move together."""
    arch = build("mlp", widths=(4,), input_shape=(3,), num_classes=2)
    space = arch.weight_space
    orders, index = relabel_maps(space, 2)
    gen = FlowMatching(MLPBackbone(space.num_params, hidden=32, depth=1, task_shape=(2, F),
                                   task_embed=8), space.num_params)
    # Every parameter random: the zero-initialised output layer would make the loss a function
    # of |x| alone, blind to any order.
    params = init_params(gen.backbone, jax.random.key(0), space.num_params)
    leaves, tree = jax.tree.flatten(params)
    params = jax.tree.unflatten(tree, [0.3 * jax.random.normal(jax.random.key(i), p.shape)
                                       for i, p in enumerate(leaves)])
    x = jax.random.normal(jax.random.key(1), (6, space.num_params))
    tasks = jax.random.normal(jax.random.key(2), (6, 2, F))
    relabelled = GeneratorTask(gen, (orders, index))
    key = jax.random.key(3)
    loss = relabelled.loss(params, {"x": x, "cond_task": tasks}, key)[0]
    # Replay the draws: the task condition's draw key first, then the order's.
    key, _ = jax.random.split(key)
    key, k_order = jax.random.split(key)
    pick = np.asarray(jax.random.randint(k_order, (6,), 0, len(orders)))
    assert len(set(pick.tolist())) > 1  # both orders drawn: the check below can fail
    x_r = np.stack([np.asarray(x)[i, index[p]] for i, p in enumerate(pick)])
    t_r = np.stack([np.asarray(tasks)[i, orders[p]] for i, p in enumerate(pick)])
    expected = gen.loss(params, jnp.asarray(x_r), key, None, None, jnp.asarray(t_r))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    # ... and not the loss of the batch as it was (the orders drawn changed it).
    assert not np.allclose(loss, gen.loss(params, x, key, None, None, tasks), rtol=1e-4)
    for words, message in ((["task_relabel=true"], "needs condition_task=true"),
                           (["task_relabel=true", "condition_task=true", "normalize=entry"],
                            "not with latent-ddpm or normalize=entry")):
        with pytest.raises(ConfigError, match=message):
            override(GeneratorConfig(), words)


def fit(gen, steps):
    """Adam on fresh batches of both tasks through `GeneratorTask.loss` (so that one support draw
    per example is picked), every step in one compiled program."""
    task = GeneratorTask(gen)
    opt = optax.adam(optax.cosine_decay_schedule(3e-3, steps))

    def step(carry, i):
        p, s = carry
        k = jax.random.fold_in(jax.random.key(1), i)
        x, tasks = task_batch(k)
        loss, g = jax.value_and_grad(
            lambda p: task.loss(p, {"x": x, "cond_task": tasks}, jax.random.fold_in(k, 1))[0])(p)
        u, s = opt.update(g, s, p)
        return (optax.apply_updates(p, u), s), loss

    @jax.jit
    def train(params):
        return jax.lax.scan(step, (params, opt.init(params)), jnp.arange(steps))[0][0]

    return train(init_params(gen.backbone, jax.random.key(0), gen.dim))


def backbone():
    return MLPBackbone(DIM, hidden=64, depth=2, task_shape=(K, F), task_embed=16)


@functools.cache
def trained(kind):
    """A generator of `kind` fitted to the two tasks, with samples for task A, task B and no task
    (N each), and its parameters."""
    # Conditions dropped at 0.2 (default 0.1): the unconditional field learns the mode weights.
    gen = (FlowMatching(backbone(), DIM, cond_dropout=0.2) if kind == "flow"
           else Diffusion(backbone(), DIM, num_steps=200, cond_dropout=0.2))
    params = fit(gen, STEPS[kind])
    method, steps = ("rk4", 10) if kind == "flow" else ("ddim", 50)
    tasks = jnp.asarray(np.repeat(TASKS, N, axis=0))

    @jax.jit
    def run(params, key):
        return (gen.sample(params, key, 2 * N, steps=steps, method=method, cond_task=tasks),
                gen.sample(params, key, N, steps=steps, method=method))

    conditioned, unconditioned = jax.tree.map(np.asarray, run(params, jax.random.key(5)))
    return gen, params, conditioned, unconditioned


@pytest.mark.parametrize("kind", ["flow", "ddpm"])
def test_trained_generator_samples_each_task_on_its_mode(kind):
    """Each task on its mode: mean within 0.15 (per dimension, averaged) and std within a factor
    4/3 of the data's (the tolerances of the class condition's test, tests/test_generator_models);
    without a task, both modes, near their weight 1/2."""
    _, _, conditioned, unconditioned = trained(kind)
    for m in (0, 1):
        x = conditioned[m * N:(m + 1) * N].astype(np.float64)
        nearest = ((x[:, None] - MEANS[None]) ** 2).sum(-1).argmin(1)
        assert (nearest == m).mean() >= 0.95, (kind, m, (nearest == m).mean())
        mean_err = float(np.abs(x.mean(0) - MEANS[m]).mean())
        spread = float(x.std(0).mean() / STDS[m])
        assert mean_err < 0.15, (kind, m, mean_err)
        assert 3 / 4 < spread < 4 / 3, (kind, m, spread)
    nearest = ((unconditioned[:, None] - MEANS[None]) ** 2).sum(-1).argmin(1)
    assert 0.3 < (nearest == 0).mean() < 0.7, (kind, (nearest == 0).mean())


def test_drop_conditions_drops_whole_tasks_at_the_rate():
    n, rate = 4000, 0.3
    cond_class = jnp.zeros((n,), jnp.int32)
    cond_task = jnp.ones((n, K, F))
    key = jax.random.key(3)
    cls, sca, task = drop_conditions(key, cond_class, None, rate, cond_task)
    dropped = np.isnan(np.asarray(task[:, 0, 0]))
    assert sca is None
    assert abs(dropped.mean() - rate) < 0.03, dropped.mean()
    # A dropped task is NaN throughout; a kept one untouched.
    assert np.isnan(np.asarray(task)[dropped]).all()
    assert (np.asarray(task)[~dropped] == 1).all()
    # Independent of the class: about rate² of examples lose both.
    both = (dropped & (np.asarray(cls) < 0)).mean()
    assert abs(both - rate ** 2) < 0.03, both
    # The class's draws are those of a call without a task.
    np.testing.assert_array_equal(cls, drop_conditions(key, cond_class, None, rate)[0])
    assert drop_conditions(key, cond_class, None, 0.0, cond_task)[2] is cond_task


def test_guidance_one_is_the_conditional_field_and_zero_the_unconditional():
    gen, params, _, _ = trained("flow")
    x = jax.random.normal(jax.random.key(0), (6, DIM))
    t = jnp.full((6,), 0.4)
    tasks = jnp.asarray(np.repeat(TASKS, 3, axis=0))

    @jax.jit
    def fields(params):
        return (gen.velocity(params, x, t, cond_task=tasks),
                guided(gen.velocity, params, x, t, None, None, 1.0, tasks),
                gen.velocity(params, x, t),
                guided(gen.velocity, params, x, t, None, None, 0.0, tasks),
                gen.velocity(params, x, t, cond_task=jnp.full_like(tasks, jnp.nan)))

    conditional, guided_1, none, guided_0, nan_task = fields(params)
    np.testing.assert_array_equal(guided_1, conditional)
    # Guidance 0 is the field with every condition none: the NaN task, or no task at all.
    np.testing.assert_allclose(guided_0, none, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(nan_task, none, rtol=1e-6, atol=1e-6)
    assert not np.allclose(conditional, none, atol=1e-2)


def test_generator_task_loss_picks_one_draw_and_configs_are_checked():
    gen = FlowMatching(backbone(), DIM)
    params = init_params(gen.backbone, jax.random.key(0), DIM)
    task = GeneratorTask(gen)
    x, tasks = task_batch(jax.random.key(1), 8)
    same = jnp.repeat(tasks[:, :1], DRAWS, axis=1)

    @jax.jit
    def losses(params, key):
        return (task.loss(params, {"x": x, "cond_task": tasks}, key)[0],
                task.loss(params, {"x": x, "cond_task": same}, key)[0],
                gen.loss(params, x, jax.random.split(key)[0], cond_task=same[:, 0]))

    loss, with_draws, without = losses(params, jax.random.key(2))
    assert np.isfinite(float(loss))
    # With all draws equal, picking a draw is picking the task: the same loss as without draws
    # (given the key the loss passes on).
    np.testing.assert_allclose(with_draws, without, rtol=1e-6)
    with pytest.raises(ModelError, match="cond_task has shape"):
        jax.eval_shape(task.loss, params, {"x": x, "cond_task": tasks[:, 0, 0]},
                       jax.random.key(2))
    with pytest.raises(ModelError, match=r"expected \(batch, 2, 3\)"):
        jax.eval_shape(lambda p: gen.loss(p, x, jax.random.key(2), cond_task=jnp.ones((8, 3, 3))),
                       params)

    with pytest.raises(ConfigError, match=r"^task_embed: must be ≥ 1, got 0"):
        GeneratorConfig(condition_task=True, task_embed=0)
    config = GeneratorConfig(hidden=16, depth=1, condition_task=True, task_embed=4)
    with pytest.raises(ModelError, match="task_shape"):
        make_generator(config, DIM)
    with pytest.raises(ModelError, match="task_shape"):
        make_generator(config, DIM, task_shape=(3,))
    made = make_generator(config, DIM, task_shape=(K, F))
    assert made.backbone.task_shape == (K, F) and made.backbone.task_embed == 4
    # Without condition_task a given shape changes nothing.
    assert make_generator(GeneratorConfig(hidden=16, depth=1), DIM,
                          task_shape=(K, F)).backbone.task_shape == ()


def _paths(tree):
    return {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)}


def test_backbones_without_a_task_keep_their_old_parameters():
    """No task shape: exactly the parameters of a backbone written before the task condition (so
    trained generators still load); with one, those plus the task's, and nothing else changes."""
    space = build("mlp", widths=(4,), input_shape=(3,), num_classes=2).weight_space
    for plain, with_task in (
            (MLPBackbone(DIM, hidden=16, depth=1, num_classes=2, use_scalar=True),
             MLPBackbone(DIM, hidden=16, depth=1, num_classes=2, use_scalar=True,
                         task_shape=(K, F), task_embed=4)),
            (TokenTransformer(space, token_dim=8, dim=16, depth=1, heads=2),
             TokenTransformer(space, token_dim=8, dim=16, depth=1, heads=2, task_shape=(K, F),
                              task_embed=4))):
        dim = plain.out_dim if isinstance(plain, MLPBackbone) else space.num_params
        # Traced only (eval_shape): the tree's paths, without compiling an initialiser.
        old, new = (_paths(jax.eval_shape(lambda b=b: init_backbone(b, jax.random.key(0), dim)))
                    for b in (plain, with_task))
        assert not any("task" in p for p in old), old
        assert old < new
        assert all("task" in p for p in new - old), new - old
        assert any("task_encoder" in p for p in new) and any("task_null" in p for p in new)
        # A backbone without a task refuses one rather than ignoring it.
        with pytest.raises(ModelError, match="no task condition"):
            jax.eval_shape(lambda: plain.init(jax.random.key(0), jnp.zeros((1, dim)),
                                              jnp.zeros((1,)), None, None, jnp.zeros((1, K, F))))


def test_trained_generator_checks_the_task_it_is_given(tmp_path):
    """Sampling through `TrainedGenerator`: a task (k, F) for every sample reproduces the model's
    own conditional samples; a wrong shape, or a task for a generator without one, is refused
    by name; no task samples unconditionally."""
    gen, params, conditioned, _ = trained("flow")
    identity = types.SimpleNamespace(mean=np.zeros(DIM, np.float32),
                                     std=np.ones(DIM, np.float32))
    config = GeneratorConfig(hidden=64, depth=2, condition_task=True, task_embed=16)
    tg = TrainedGenerator(tmp_path, {"task": {"shape": [K, F]}, "latent": None}, config,
                          identity, gen, params)
    x = tg.sample(N, seed=0, cond_task=TASK_B)
    assert x.shape == (N, DIM)
    assert np.abs(x.mean(0) - MEANS[1]).mean() < 0.15
    per_sample = tg.sample(N, seed=0, cond_task=np.repeat(TASK_B[None], N, axis=0))
    np.testing.assert_allclose(per_sample, x, rtol=1e-6, atol=1e-6)
    with pytest.raises(GenerateError, match=r"expected \(2, 3\)"):
        tg.sample(4, cond_task=np.zeros((3, 3)))
    with pytest.raises(GenerateError, match=r"\(4, 2, 3\)"):
        tg.sample(4, cond_task=np.zeros((5, K, F)))
    partial = TASK_A.copy()
    partial[1, 2] = np.nan
    with pytest.raises(GenerateError, match="non-finite"):
        tg.sample(4, cond_task=partial)
    assert np.isfinite(tg.sample(4, seed=1)).all()  # no task: the null task
    plain = TrainedGenerator(tmp_path, {"task": None, "latent": None}, GeneratorConfig(),
                             identity, gen, params)
    with pytest.raises(GenerateError, match="no task condition"):
        plain.sample(2, cond_task=TASK_A)


def test_pipeline_records_the_task_and_reloads(tmp_path, monkeypatch):
    """`train_generator` takes the support features from `wsl.zoos.tasks` (here a stand-in, its
    own tests are elsewhere), records their shape and info in generator.json, trains on them and
    loads back a generator that samples for a task."""
    arch = build("mlp", widths=(4,), input_shape=(3,), num_classes=2)
    space = arch.weight_space
    n = 6
    population = arch.init_population(jax.random.key(0), n)
    rows = [{"model": i, "epoch": 1, "val_acc": 0.5 + 0.01 * i, "diverged": False}
            for i in range(n)]
    manifest = {"architecture": {"name": arch.name, "config": dict(arch.config)},
                "weight_space": space.to_dict(), "dataset": None}
    write_zoo(tmp_path / "zoo", manifest, population, rows)
    calls = []

    def zoo_support_features(view, seed):
        calls.append((len(view), seed))
        rng = np.random.default_rng(seed)
        features = rng.normal(size=(len(view), 2, K, F)).astype(np.float32)
        return features, {"features": "stand-in", "draws": np.int64(2)}

    fake = types.ModuleType("wsl.zoos.tasks")
    fake.zoo_support_features = zoo_support_features
    monkeypatch.setitem(sys.modules, "wsl.zoos.tasks", fake)
    config = GeneratorConfig(hidden=16, depth=1, condition_task=True, task_embed=4,
                             sample_steps=2)
    train_config = override(TrainConfig(), ["steps=5", "batch_size=4", "ema_decay=0", "seed=3",
                                            "log.progress=false", "checkpoint.every=0",
                                            "checkpoint.async_save=false"])
    train_generator(tmp_path / "zoo", tmp_path / "gen", config, train_config)
    assert calls == [(n, 3)]
    gen = TrainedGenerator.load(tmp_path / "gen")
    assert gen.meta["task"] == {"features": "stand-in", "draws": 2, "shape": [K, F]}
    assert gen.generator.backbone.task_shape == (K, F)
    x = gen.sample(3, cond_task=TASK_A)
    assert x.shape == (3, space.num_params) and np.isfinite(x).all()
    with pytest.raises(GenerateError, match=r"expected \(2, 3\)"):
        gen.sample(3, cond_task=np.zeros((K, F + 1)))
