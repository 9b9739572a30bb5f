"""The population trainer and recipes: learning, resume, device-count invariance, divergence,
errors."""

import dataclasses
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wsl.mesh import make_mesh
from wsl.zoos import fast_conv
from wsl.zoos.architectures import build
from wsl.zoos.build import build_manifest, build_zoo, load_recipe_dataset
from wsl.zoos.datasets import load_dataset
from wsl.zoos.fast_conv import _matmul_conv_interceptor
from wsl.zoos.init_schemes import initial_population
from wsl.zoos.population import PopulationError, TrainSettings, train_population
from wsl.zoos.recipes import RecipeError, get_recipe, plan

ONE_DEVICE = make_mesh(("models",), devices=jax.devices()[:1])


@pytest.fixture(scope="module")
def quick_zoo(tmp_path_factory):
    return build_zoo(get_recipe("quick"), tmp_path_factory.mktemp("z") / "quick", progress=False,
                     mesh=ONE_DEVICE)


def test_quick_learns_well_above_chance(quick_zoo):
    last = quick_zoo.filter(epoch="last").metrics
    first = quick_zoo.filter(epoch=0).metrics
    assert len(quick_zoo.model_ids) == 32 and len(quick_zoo) == 32 * 5
    assert np.mean(last["test_acc"]) > 0.6, last["test_acc"]  # 10 classes: chance is 0.1
    assert np.mean(first["test_acc"]) < 0.3  # untrained networks are near chance
    assert np.all(last["test_loss"] < first["test_loss"] + 1e-6) or np.mean(last["test_loss"]) < 1.0
    np.testing.assert_allclose(last["gap"], last["train_acc"] - last["test_acc"], atol=1e-12)
    assert np.ptp(last["test_acc"]) > 0.05  # hyperparameters spread the accuracies
    assert not last["diverged"].any()


def _killed(index):
    raise KeyboardInterrupt(f"killed after shard {index}")


def test_interrupted_build_resumes_to_identical_zoo(quick_zoo, tmp_path):
    recipe = get_recipe("quick")
    out = tmp_path / "resumed"

    with pytest.raises(KeyboardInterrupt):
        build_zoo(recipe, out, progress=False, mesh=ONE_DEVICE, on_shard=_killed)
    assert sorted(os.listdir(out / "shards")) == ["00000"]
    assert not (out / "metrics.csv").exists()
    kept = (out / "shards" / "00000" / "dense_0.kernel.npy").stat().st_mtime_ns
    resumed = build_zoo(recipe, out, progress=False, mesh=ONE_DEVICE)
    assert (out / "shards" / "00000" / "dense_0.kernel.npy").stat().st_mtime_ns == kept
    np.testing.assert_array_equal(resumed.flat(), quick_zoo.flat())
    for column in quick_zoo.columns:
        np.testing.assert_array_equal(resumed.metrics[column], quick_zoo.metrics[column])
    with pytest.raises(Exception, match="different zoo"):
        build_zoo(get_recipe("quick", ["seed=1"]), out, progress=False)


PARENT_WORDS = ["num_models=8", "models_per_shard=4", "init_seeds=2", "init_scale=1.0",
                "epochs=2", "checkpoints=[0,2]", "lr=[0.003,0.01]", "data_order=per_model"]


def test_children_branch_from_trained_parents(tmp_path):
    """parent_epochs: the models of one shared initialisation start from one trained parent
    (their epoch 0), and a build killed after its first shard resumes to the same zoo (the
    parents are recomputed, not stored)."""
    recipe = get_recipe("quick", PARENT_WORDS + ["parent_epochs=2"])
    zoo = build_zoo(recipe, tmp_path / "zoo", progress=False, mesh=ONE_DEVICE)
    start = zoo.filter(epoch=0)
    parent_of = np.asarray(start.metrics["seed"]) % 2
    flat = start.flat()
    assert set(parent_of) == {0, 1}
    for j in (0, 1):
        np.testing.assert_array_equal(flat[parent_of == j], flat[parent_of == j][:1].repeat(
            (parent_of == j).sum(), 0))
    assert not np.array_equal(flat[parent_of == 0][0], flat[parent_of == 1][0])
    # The parents are trained (untrained MLPs are near chance, 0.1), the children train on.
    assert np.mean(start.metrics["val_acc"]) > 0.5
    last = zoo.filter(epoch="last")
    assert not np.array_equal(last.flat()[0], flat[0]) and np.ptp(last.flat()[:, 0]) > 0
    assert zoo.manifest["recipe"]["config"]["parent_epochs"] == 2
    plain = get_recipe("quick", PARENT_WORDS)
    assert "parent_epochs" not in build_manifest(plain, load_recipe_dataset(plain))["recipe"][
        "config"]  # zoos built before the field existed still resume

    with pytest.raises(KeyboardInterrupt):
        build_zoo(recipe, tmp_path / "resumed", progress=False, mesh=ONE_DEVICE, on_shard=_killed)
    resumed = build_zoo(recipe, tmp_path / "resumed", progress=False, mesh=ONE_DEVICE)
    np.testing.assert_array_equal(resumed.flat(), zoo.flat())


def _tiny_hparams(n, lr=0.01):
    return {"lr": np.full(n, lr), "weight_decay": np.zeros(n), "init_scale": np.ones(n),
            "bias_init": np.zeros(n), "dropout": np.full(n, 0.1), "train_fraction": np.full(n, 0.5),
            "seed": np.arange(n), "init": ["default"] * n}


def _small():
    """A population small enough for tests; shared so that its program compiles once."""
    data = load_dataset("digits", max_train=512)
    arch = build("mlp", input_shape=(8, 8, 1), widths=(16,))
    settings = TrainSettings(epochs=3, checkpoints=(0, 1, 3), batch_size=32, optimizer="sgd")
    return arch, data, _tiny_hparams(4, lr=0.3), settings


@pytest.mark.eight_devices
def test_eight_devices_match_one_device():
    # 4 models on 8 devices: padded to 8, each device trains one model.
    arch, data, hparams, settings = _small()
    result = train_population(arch, data, hparams, settings, mesh=ONE_DEVICE)
    sharded = train_population(arch, data, hparams, settings, mesh=make_mesh(("models",)))
    assert len(jax.devices()) == 8
    flat = np.asarray(arch.weight_space.flatten(result.params))
    assert np.abs(flat[:, 1] - flat[:, 0]).max() > 1e-3  # the models really trained
    np.testing.assert_allclose(np.asarray(arch.weight_space.flatten(sharded.params)), flat,
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(sharded.metrics["test_acc"], result.metrics["test_acc"], atol=1e-6)


@pytest.mark.eight_devices
def test_a_diverging_member_is_flagged_on_eight_devices_as_on_one():
    # `wsl zoo build` shards populations over one CPU device per core: divergence is handled there
    # as on one device (flagged, last finite weights kept, the others unaffected).
    arch, data, hparams, settings = _small()
    hparams["lr"][2] = 1e12  # explodes at once
    one = train_population(arch, data, hparams, settings, mesh=ONE_DEVICE)
    eight = train_population(arch, data, hparams, settings, mesh=make_mesh(("models",)))
    assert len(jax.devices()) == 8
    assert eight.metrics["diverged"][:, -1].tolist() == [False, False, True, False]
    np.testing.assert_array_equal(eight.metrics["diverged"], one.metrics["diverged"])
    flat = np.asarray(arch.weight_space.flatten(eight.params))
    assert np.isfinite(flat).all()  # the exploded member's last weights (~1e18) agree to ~1e-3
    healthy = [0, 1, 3]
    np.testing.assert_allclose(flat[healthy],
                               np.asarray(arch.weight_space.flatten(one.params))[healthy],
                               rtol=1e-4, atol=1e-5)


def test_diverging_member_is_flagged_and_others_unaffected():
    arch, data, hparams, settings = _small()
    hparams["lr"][2] = 1e12  # explodes at once
    result = train_population(arch, data, hparams, settings, mesh=ONE_DEVICE)
    assert result.metrics["diverged"][:, 0].tolist() == [False] * 4  # nothing before training
    assert result.metrics["diverged"][:, -1].tolist() == [False, False, True, False]
    flat = np.asarray(arch.weight_space.flatten(result.params))
    assert np.isfinite(flat).all()  # the diverged member keeps its last finite weights
    assert np.isfinite(result.metrics["test_acc"]).all()  # and its rows
    # with a sane learning rate for member 2, members 0, 1 and 3 train exactly the same
    hparams["lr"][2] = 0.3
    calm = train_population(arch, data, hparams, settings, mesh=ONE_DEVICE)
    assert not calm.metrics["diverged"].any()
    healthy = [0, 1, 3]
    np.testing.assert_allclose(np.asarray(arch.weight_space.flatten(calm.params))[healthy],
                               flat[healthy], rtol=1e-5, atol=1e-6)
    assert (calm.metrics["test_acc"][:, -1] > 0.5).all(), calm.metrics["test_acc"]


def test_frozen_tensors_keep_their_values_and_the_trainable_ones_learn():
    """`trainable` paths train (weight decay too); every other tensor keeps its values exactly."""
    arch, data, hparams, settings = _small()
    hparams["weight_decay"] = [1e-2] * 4
    head = arch.weight_space.head_paths
    assert head == ("dense_1/kernel", "dense_1/bias")
    probe = train_population(arch, data, hparams, dataclasses.replace(settings, trainable=head),
                             mesh=ONE_DEVICE)
    space = arch.weight_space
    for t in space.tensors:
        start, end = space.offsets[t.path]
        flat = np.asarray(space.flatten(probe.params))[:, :, start:end]
        moved = np.abs(flat[:, -1] - flat[:, 0]).max()
        assert (moved > 1e-3) if t.path in head else (moved == 0.0), (t.path, moved)
    assert (probe.metrics["val_acc"][:, -1] > probe.metrics["val_acc"][:, 0] + 0.1).all()
    with pytest.raises(PopulationError, match="trainable: no tensor.*'dense_9/kernel'"):
        train_population(arch, data, hparams,
                         dataclasses.replace(settings, trainable=("dense_9/kernel",)),
                         mesh=ONE_DEVICE)


def test_warmup_scales_each_step_by_its_share_of_the_warmup():
    """Full-batch epochs (one step each) warmed up over 2: the first step takes half the rate,
    the second the whole rate — as two runs at those rates one after the other (no dropout:
    its masks follow the step count, which the second run restarts)."""
    arch, data, hparams, settings = _small()
    hparams["dropout"] = np.zeros(4)
    settings = dataclasses.replace(settings, epochs=2, checkpoints=(0, 2), batch_size=512)
    warmed = train_population(arch, data, hparams,
                              dataclasses.replace(settings, warmup_epochs=2.0), mesh=ONE_DEVICE)
    one = dataclasses.replace(settings, epochs=1, checkpoints=(0, 1))
    half = train_population(arch, data, {**hparams, "lr": [0.15] * 4}, one, mesh=ONE_DEVICE)
    start = jax.tree.map(lambda a: a[:, -1], half.params)
    full = train_population(arch, data, hparams, one, mesh=ONE_DEVICE, initial_params=start)
    space = arch.weight_space
    got, want = (np.asarray(space.flatten(r.params))[:, -1] for r in (warmed, full))
    assert np.abs(got - np.asarray(space.flatten(start))).max() > 1e-3  # it trained
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(PopulationError, match="warmup_epochs must be ≥ 0"):
        dataclasses.replace(settings, warmup_epochs=-1.0)


def test_cosine_schedule_anneals_the_rate_over_the_run():
    """Full-batch epochs (one step each), two of them, annealed: the first step takes the whole
    rate, the second half of it (½(1 + cos(π/2))) — as two runs at those rates one after the
    other."""
    arch, data, hparams, settings = _small()
    hparams["dropout"] = np.zeros(4)
    settings = dataclasses.replace(settings, epochs=2, checkpoints=(0, 2), batch_size=512)
    annealed = train_population(arch, data, hparams,
                                dataclasses.replace(settings, lr_schedule="cosine"),
                                mesh=ONE_DEVICE)
    one = dataclasses.replace(settings, epochs=1, checkpoints=(0, 1))
    first = train_population(arch, data, hparams, one, mesh=ONE_DEVICE)
    start = jax.tree.map(lambda a: a[:, -1], first.params)
    second = train_population(arch, data, {**hparams, "lr": [0.15] * 4}, one, mesh=ONE_DEVICE,
                              initial_params=start)
    space = arch.weight_space
    got, want = (np.asarray(space.flatten(r.params))[:, -1] for r in (annealed, second))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    constant = train_population(arch, data, hparams, settings, mesh=ONE_DEVICE)
    assert np.abs(np.asarray(space.flatten(constant.params))[:, -1] - got).max() > 1e-4
    with pytest.raises(PopulationError, match="unknown lr_schedule 'linear'"):
        dataclasses.replace(settings, lr_schedule="linear")


def test_shared_initialisation_gives_every_model_the_same_start():
    arch, data, hparams, settings = _small()
    hparams["lr"] = [0.3, 0.1, 0.3, 0.1]
    shared = train_population(arch, data, hparams, dataclasses.replace(settings, init_seeds=2),
                              mesh=ONE_DEVICE)
    start = np.asarray(arch.weight_space.flatten(shared.params))[:, 0]
    # Model seeds are 0..3: with two shared draws, models 0 and 2 start alike, 1 and 3 too.
    np.testing.assert_array_equal(start[0], start[2])
    np.testing.assert_array_equal(start[1], start[3])
    assert np.abs(start[0] - start[1]).max() > 1e-2
    end = np.asarray(arch.weight_space.flatten(shared.params))[:, -1]
    assert np.abs(end[0] - end[2]).max() > 1e-3  # different learning rates, different endpoints
    with pytest.raises(PopulationError, match="init_seeds"):
        dataclasses.replace(settings, init_seeds=-1)


def test_matmul_conv_matches_flax_conv():
    key = jax.random.key(0)
    x = jax.random.normal(key, (3, 9, 7, 2))
    for kwargs in ({"strides": (2, 2), "padding": "SAME"},
                   {"kernel_size": (2, 3), "strides": (1, 2), "padding": "VALID"}):
        conv = nn.Conv(5, kwargs.pop("kernel_size", (3, 3)), **kwargs)
        shapes = jax.eval_shape(conv.init, jax.random.key(1), x)  # no eager init: fast
        rng = np.random.default_rng(2)
        params = jax.tree.map(lambda l: rng.standard_normal(l.shape).astype(np.float32), shapes)

        def fast(params, x):
            with nn.intercept_methods(_matmul_conv_interceptor):
                return conv.apply(params, x)

        np.testing.assert_allclose(jax.jit(fast)(params, x), jax.jit(conv.apply)(params, x),
                                   rtol=1e-5, atol=1e-5)



@pytest.mark.parametrize("formulation", ["patches", "dense"])
def test_population_conv_formulations_match_flax_conv(formulation, monkeypatch):
    # Both batched formulations, forced whatever the shape, against flax's conv vmapped over a
    # population of kernels: outputs and gradients, for shared and per-model inputs, with the
    # paddings and strides the zoo architectures use.
    monkeypatch.setattr(fast_conv, "conv_formulation", lambda *args: formulation)
    rng = np.random.default_rng(3)
    cases = [((4, 4, 3), {"kernel_size": (3, 3), "strides": (2, 2), "padding": "SAME"}),
             ((2, 2, 3), {"kernel_size": (3, 3), "strides": (2, 2), "padding": "SAME"}),
             ((9, 9, 2), {"kernel_size": (5, 5), "padding": "VALID"}),
             ((5, 7, 2), {"kernel_size": (2, 3), "strides": (1, 2), "padding": "VALID"})]
    for shape, kwargs in cases:
        conv = nn.Conv(4, **kwargs)
        one = jax.eval_shape(conv.init, jax.random.key(0), np.zeros((1,) + shape, np.float32))
        params = jax.tree.map(
            lambda l: rng.standard_normal((3,) + l.shape).astype(np.float32), one)
        shared = rng.standard_normal((5,) + shape).astype(np.float32)
        own = rng.standard_normal((3, 5) + shape).astype(np.float32)

        def fast(p, x):
            with nn.intercept_methods(_matmul_conv_interceptor):
                return conv.apply(p, x)

        for x, axes in ((shared, (0, None)), (own, (0, 0))):
            loss = lambda f: lambda p, x: jnp.sum(jnp.sin(jax.vmap(f, axes)(p, x)))
            got = jax.jit(jax.value_and_grad(loss(fast)))(params, x)
            want = jax.jit(jax.value_and_grad(loss(conv.apply)))(params, x)
            np.testing.assert_allclose(got[0], want[0], rtol=1e-4, err_msg=str(kwargs))
            for g, w in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1])):
                np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4, err_msg=str(kwargs))


def test_small_cnn_layers_choose_their_formulation():
    # The small CNN on 8x8 MNIST: 8x8 and 4x4 maps train as patches, the 2x2 map dense; at the
    # evaluation batch the 4x4 map runs dense too.
    choose = fast_conv.conv_formulation
    assert [choose(s, s, (3, 3), 32) for s in (8, 4, 2)] == ["patches", "patches", "dense"]
    assert [choose(s, s, (3, 3), 500) for s in (8, 4, 2)] == ["patches", "dense", "dense"]
    assert choose(28, 28, (5, 5), 500) == "patches"

def test_init_schemes_have_their_scales():
    arch = build("mlp", input_shape=(400,), widths=(300,))
    n = 4
    for scheme, scale, std in (("normal", 0.3, 0.3), ("truncated_normal", 0.05, 0.05),
                               ("uniform", 2.0, 2.0), ("kaiming_normal", 1.0, np.sqrt(2 / 400)),
                               ("kaiming_uniform", 0.5, 0.5 * np.sqrt(2 / 400)),
                               ("default", 1.0, np.sqrt(1 / 400))):
        params = initial_population(arch, range(n), [scheme] * n, [scale] * n, [0.25] * n)
        kernel = params["dense_0"]["kernel"]
        assert abs(kernel.std() / std - 1) < 0.02, (scheme, kernel.std(), std)
        assert (params["dense_0"]["bias"] == 0.25).all()
        assert not np.allclose(kernel[0], kernel[1])  # seeds differ
    again = initial_population(arch, [1], ["normal"], [1.0], [0.0])
    np.testing.assert_array_equal(again["dense_0"]["kernel"][0],
                                  initial_population(arch, [0, 1], ["normal"] * 2, [1.0] * 2,
                                                  [0.0] * 2)["dense_0"]["kernel"][1])


def test_plan_is_reproducible_and_grouped():
    models, shards = plan(get_recipe("small-cnn", ["num_models=300"]))
    again, _ = plan(get_recipe("small-cnn", ["num_models=300"]))
    assert models == again
    small, _ = plan(get_recipe("small-cnn", ["num_models=30"]))
    by_seed = {m["seed"]: m for m in models}
    for m in small:  # a smaller zoo holds the same models as the first seeds of a larger one
        assert {k: v for k, v in m.items() if k != "model"} == \
               {k: v for k, v in by_seed[m["seed"]].items() if k != "model"}
    assert sorted(m["model"] for m in models) == list(range(300))
    for shard in shards:
        groups = {(models[i]["activation"], models[i]["optimizer"]) for i in shard.models}
        assert len(groups) == 1 and len(shard.models) <= 128
    assert len({(s.group["activation"], s.group["optimizer"]) for s in shards}) == 6
    lrs = np.array([m["lr"] for m in models])
    assert lrs.min() >= 5e-4 and lrs.max() <= 5e-2 and lrs.max() / lrs.min() > 20
    grid, _ = plan(get_recipe("cnn-s"))
    points = {tuple(sorted((k, v) for k, v in m.items() if k not in ("model", "seed")))
              for m in grid}
    assert len(points) == 256  # the full grid, one model per point


def test_recipe_errors_are_clear():
    with pytest.raises(RecipeError, match="unknown recipe 'nope'.*quick"):
        get_recipe("nope")
    with pytest.raises(RecipeError, match="unknown config key 'epochz'.*epochs"):
        get_recipe("quick", ["epochz=3"])
    with pytest.raises(RecipeError, match="num_models"):
        get_recipe("quick", ["num_models=many"])
    with pytest.raises(RecipeError, match="key=value"):
        get_recipe("quick", ["epochs"])
    with pytest.raises(RecipeError, match=r"activation: unknown \['swish'\]"):
        get_recipe("quick", ["activation=relu,swish"])
    with pytest.raises(RecipeError, match="log-uniform range needs positive bounds"):
        get_recipe("quick", ["weight_decay=[0,1e-3]"])
    with pytest.raises(RecipeError, match="checkpoints"):
        get_recipe("quick", ["checkpoints=[0,9]"])
    with pytest.raises(RecipeError, match="parent_epochs: .*init_seeds >= 1"):
        get_recipe("quick", ["parent_epochs=1", "init_scale=1.0"])
    with pytest.raises(RecipeError, match=r"\['init_scale'\] describe the parents"):
        get_recipe("quick", ["parent_epochs=1", "init_seeds=1"])
    with pytest.raises(RecipeError, match="parent_lr > 0"):
        get_recipe("quick", ["parent_epochs=1", "init_seeds=1", "init_scale=1.0", "parent_lr=0"])
    recipe = get_recipe("quick", ["activation=relu,tanh", "lr=0.01", "arch={'widths': [8]}"])
    assert recipe.activation == ("relu", "tanh") and recipe.lr == (0.01,)
    assert recipe.arch == {"widths": (8,)} and hash(recipe) == hash(get_recipe(
        "quick", ["lr=[0.01]", "activation=[relu, tanh]", "arch={'widths': (8,)}"]))


def test_recipes_are_typed_hashable_and_read_back_from_manifests(quick_zoo):
    from wsl.config import from_dict
    from wsl.zoos.recipes import Recipe

    recipe = get_recipe("quick")
    # The manifest keeps the recipe as plain JSON (lists, dicts) and reads back to an equal recipe.
    stored = quick_zoo.manifest["recipe"]["config"]
    assert stored["arch"] == {"widths": [32]} and stored["lr"] == [1e-3, 3e-2]
    assert from_dict(Recipe, stored) == recipe and hash(from_dict(Recipe, stored)) == hash(recipe)
    # Validated on creation, in code as from the command line; overrides apply all at once.
    with pytest.raises(RecipeError, match="num_models: must be >= 1"):
        Recipe(num_models=0)
    with pytest.raises(RecipeError, match=r"arch: unknown config \['widht'\]"):
        Recipe(arch={"widht": (3,)})
    assert Recipe(lr=[0.1], arch={"widths": [4]}) == Recipe(lr=(0.1,), arch={"widths": (4,)})
    for order in (["epochs=3", "checkpoints=[0,3]"], ["checkpoints=[0,3]", "epochs=3"]):
        assert get_recipe("mlp-mnist1d", order).checkpoint_epochs == (0, 3)
    settings = TrainSettings.from_recipe(get_recipe("seeds", ["eval_examples=7"]), "sgd")
    assert settings == TrainSettings(epochs=5, checkpoints=(0, 1, 2, 3, 4, 5), batch_size=32,
                                     optimizer="sgd", seed=0, data_order="per_model",
                                     eval_examples=7)


def test_bad_population_inputs_are_named():
    data = load_dataset("digits", max_train=64)
    arch = build("mlp", input_shape=(8, 8, 1), widths=(4,))
    settings = TrainSettings(epochs=1, checkpoints=(0, 1))
    bad = _tiny_hparams(2)
    bad["dropout"][1] = 1.5
    with pytest.raises(PopulationError, match=r"dropout must be in \[0, 1\); model 1"):
        train_population(arch, data, bad, settings)
    with pytest.raises(PopulationError, match="expects"):
        train_population(build("mlp", input_shape=(40,)), data, _tiny_hparams(2), settings)
    with pytest.raises(PopulationError, match="checkpoints"):
        TrainSettings(epochs=1, checkpoints=(0, 3))
    with pytest.raises(PopulationError, match="unknown optimizer"):
        TrainSettings(epochs=1, checkpoints=(0,), optimizer="lbfgs")


def test_dropout_prng_bits_look_uniform_and_independent():
    from wsl.zoos.dropout_prng import DROPOUT_PRNG

    keys = jax.random.wrap_key_data(np.array([[1, 2], [1, 3], [2, 2]], np.uint32),
                                    impl=DROPOUT_PRNG)
    masks = np.asarray(jax.vmap(lambda k: jax.random.bernoulli(jax.random.fold_in(k, 7), 0.7,
                                                               (200, 100)))(keys))
    assert np.all(np.abs(masks.mean(axis=(1, 2)) - 0.7) < 0.01)
    assert np.all(np.abs(masks.mean(axis=1) - 0.7) < 0.12)  # no stuck columns
    # neighbouring keys give unrelated masks (agreement of independent masks: .7² + .3² = .58)
    assert abs((masks[0] == masks[1]).mean() - 0.58) < 0.01
    assert abs((masks[0] == masks[2]).mean() - 0.58) < 0.01
    counts = np.bincount(np.asarray(jax.random.bits(keys[0], (64000,), jnp.uint8)) >> 4,
                         minlength=16)
    assert counts.min() > 3600 and counts.max() < 4400  # 16 bins of 4000 expected


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mlp-mnist1d", "small-cnn", "cnn-s", "seeds"])
def test_every_recipe_builds_small(name, tmp_path):
    recipe = get_recipe(name, ["num_models=6", "epochs=1", "checkpoints=[0,1]",
                               "models_per_shard=6"])
    zoo = build_zoo(recipe, tmp_path / name, progress=False)
    assert len(zoo.model_ids) == 6 and len(zoo) == 12
    last = zoo.filter(epoch="last").metrics
    assert np.isfinite(last["test_acc"]).all() and last["test_acc"].max() > 0.15
    assert zoo.architecture.weight_space.num_params == zoo.flat([0]).shape[1]


@pytest.mark.parametrize("name, config", [("mlp", {"widths": (16,)}),
                                          ("small_cnn", {"channels": 4})])
def test_linear_probe_reads_the_penultimate_features(name, config):
    """`head_inputs` is what the head reads (head applied to it = the logits), and the probe is
    ridge least squares on those features, scored by argmax."""
    from wsl.zoos.scoring import head_inputs, linear_probe_accuracy

    data = load_dataset("digits", max_train=300)
    arch = build(name, input_shape=(8, 8, 1), num_classes=10, **config)
    params = arch.init_population(jax.random.key(0), 3)
    space = arch.weight_space
    flat = np.asarray(space.flatten(params))
    x, y, xv, yv = data.x_train, data.y_train, data.x_val[:200], data.y_val[:200]
    ridge, reference = 1e-4, []
    for vector in flat:
        one = space.unflatten(vector)
        features = np.asarray(head_inputs(arch, one, x), np.float64)
        kernel, bias = (np.asarray(space.as_flat_dict(one)[p]) for p in space.head_paths)
        np.testing.assert_allclose(features @ kernel + bias, arch.apply(one, x), atol=1e-4)
        fit = np.c_[features, np.ones(len(x))]
        held = np.c_[np.asarray(head_inputs(arch, one, xv), np.float64), np.ones(len(xv))]
        readout = np.linalg.solve(fit.T @ fit + ridge * len(x) * np.eye(fit.shape[1]),
                                  fit.T @ np.eye(10)[y])
        reference.append(np.mean(np.argmax(held @ readout, 1) == yv))
    probe = linear_probe_accuracy(arch, flat, (x, y), (xv, yv), ridge=ridge, model_chunk=2)
    np.testing.assert_allclose(probe, reference, atol=1e-2)
    assert (probe > 0.2).all()  # random features of digits still read out above chance (0.1)


@pytest.mark.parametrize("name, config", [("mlp", {"widths": (16,)}),
                                          ("small_cnn", {"channels": 4})])
def test_refit_heads_is_softmax_regression_on_the_features(name, config):
    """`refit_heads` replaces only the output layer, by the penalised softmax regression of the
    data on the network's own features: the solution scikit-learn's LogisticRegression finds for
    the same objective (its C = 1 / (2 · weight · n), the bias as a penalised constant feature)."""
    from sklearn.linear_model import LogisticRegression

    from wsl.zoos.scoring import head_inputs, refit_heads

    data = load_dataset("digits", max_train=300)
    arch = build(name, input_shape=(8, 8, 1), num_classes=10, **config)
    space = arch.weight_space
    flat = np.asarray(space.flatten(arch.init_population(jax.random.key(0), 3)))
    x, y, weight = data.x_train, data.y_train, 1e-3
    refit = refit_heads(arch, flat, x, y, weight=weight, model_chunk=2)
    head = np.zeros(arch.num_params, bool)
    for path in space.head_paths:
        head[slice(*space.offsets[path])] = True
    np.testing.assert_array_equal(refit[:, ~head], flat[:, ~head])  # the features untouched
    for before, after in zip(flat, refit):
        features = np.asarray(head_inputs(arch, space.unflatten(before), x), np.float64)
        reference = LogisticRegression(C=1 / (2 * weight * len(y)), fit_intercept=False,
                                       tol=1e-10, max_iter=10_000).fit(
            np.c_[features, np.ones(len(y))], y)
        kernel, bias = (np.asarray(space.as_flat_dict(space.unflatten(after))[p])
                        for p in space.head_paths)
        np.testing.assert_allclose(np.r_[kernel, bias[None]], reference.coef_.T, atol=2e-3)
        logits = np.asarray(arch.apply(space.unflatten(after), x))
        assert np.mean(logits.argmax(1) == y) >= np.mean(
            np.asarray(arch.apply(space.unflatten(before), x)).argmax(1) == y)
