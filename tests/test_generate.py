"""End to end: a flow trained on a tiny zoo samples working, evaluated networks into a generated
zoo."""

import json
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest

from wsl.config import ConfigError, override
from wsl.eval.generated import compare_with_training
from wsl.models.weight_generator import GeneratorConfig
from wsl.train import TrainConfig
from wsl.train.generator import (
    GenerateError,
    TrainedGenerator,
    condition_for,
    sample_to_zoo,
    select_and_align,
    train_generator,
)
from wsl.zoos.build import build_zoo
from wsl.zoos.recipes import get_recipe
from wsl.zoos.store import Zoo, ZooError

ROOT = Path(__file__).resolve().parents[1]
FAST_TRAIN = ["steps=300", "batch_size=16", "ema_decay=0.99", "log.progress=false",
              "checkpoint.every=0", "checkpoint.async_save=false"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """16 MLPs on digits and a small flow generator trained on them (conditioned on val_acc)."""
    root = tmp_path_factory.mktemp("gen")
    build_zoo(get_recipe("quick", ["num_models=16"]), root / "zoo", progress=False)
    config = GeneratorConfig(method="flow", hidden=128, depth=2, condition_scalar="val_acc",
                             sampler="euler", sample_steps=10)
    train_generator(root / "zoo", root / "generator", config, override(TrainConfig(), FAST_TRAIN))
    return root


def test_flow_samples_working_networks_into_a_generated_zoo(trained):
    zoo, info = sample_to_zoo(trained / "generator", trained / "samples", 24, seed=3)
    assert info["sample_seconds"] > 0 and info["compile_seconds"] > 0
    manifest = json.loads((trained / "samples" / "manifest.json").read_text())
    assert manifest["generated"] is True
    assert manifest["recipe"] == {"name": "generated", "num": 24}
    provenance = manifest["provenance"]
    assert provenance["generator"] == str((trained / "generator").resolve())
    assert provenance["method"] == "flow" and provenance["sampler"] == "euler"
    assert provenance["training_zoo"] == str((trained / "zoo").resolve())
    assert provenance["selection"]["num_models"] == 16
    test_acc = Zoo.open(trained / "samples").metrics["test_acc"]
    assert len(test_acc) == 24 and np.isfinite(test_acc).all()
    training = Zoo.open(trained / "zoo").filter(epoch="last").metrics["test_acc"]
    # Ten classes: chance is 0.1. The training population averages about 0.7.
    assert test_acc.mean() > 0.5, (test_acc.mean(), training.mean())

    report = compare_with_training(zoo, trained / "generator")
    d = report.to_dict()
    assert d["num_generated"] == 24 and d["num_train"] == 16
    assert np.isfinite(report.generated_max_iou).all() and (report.generated_max_iou <= 1).all()
    assert 0 <= d["novel_fraction"] <= 1
    assert ([r["sigma"] for r in d["noise_baselines"]]
            == sorted(r["sigma"] for r in d["noise_baselines"]))
    assert "novelty" in report.table()


def test_sampling_is_deterministic_for_a_seed(trained):
    gen = TrainedGenerator.load(trained / "generator")
    a = gen.sample(6, seed=1)
    b = gen.sample(6, seed=1)
    c = gen.sample(6, seed=2)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    # Chunking does not change which networks a seed gives for the first chunk.
    np.testing.assert_array_equal(gen.sample(8, seed=1, chunk=6)[:6], a)


def test_accuracy_condition_and_its_errors(trained):
    gen = TrainedGenerator.load(trained / "generator")
    stats = gen.meta["scalar"]
    assert stats["column"] == "val_acc" and stats["q10"] <= stats["q90"]
    assert gen.scalar_target("q90") == pytest.approx((stats["q90"] - stats["mean"]) / stats["std"])
    high = gen.sample(4, seed=0, cond_scalar="q90", guidance=2.0)
    assert high.shape == (4, gen.architecture.num_params) and np.isfinite(high).all()
    with pytest.raises(GenerateError, match="q80.*q75"):
        gen.sample(2, cond_scalar="q80")
    with pytest.raises(GenerateError, match="rk5"):
        gen.sample(2, sampler="rk5")
    with pytest.raises(GenerateError, match="not a generator directory"):
        TrainedGenerator.load(trained / "zoo")


def test_condition_map_translates_targets_into_conditions():
    # Achieved accuracy rises by 0.1 per std of condition, flat below −1, and falls for a loss.
    rising = {"condition": [-2, -1, 0, 1, 2], "monotone": [0.4, 0.4, 0.5, 0.6, 0.7],
              "increasing": True}
    assert condition_for(rising, 0.55) == pytest.approx(0.5)
    assert condition_for(rising, 0.4) == pytest.approx(-1.5)  # the middle of the flat stretch
    assert condition_for(rising, 0.9) == pytest.approx(2.0)  # clamped to the measured range
    falling = {"condition": [-1, 0, 1], "monotone": [2.0, 1.0, 0.5], "increasing": False}
    assert condition_for(falling, 0.75) == pytest.approx(0.5)


def test_calibration_measures_requested_against_achieved(trained, tmp_path):
    from wsl.eval.calibration import (
        QUANTILES,
        fit_condition_map,
        measure_calibration,
        write_condition_map,
    )

    gen = TrainedGenerator.load(trained / "generator")
    raw = measure_calibration(gen, num=6, seed=1)
    assert [r["target"] for r in raw.rows] == list(QUANTILES) and not raw.mapped
    stats = gen.meta["scalar"]
    for row in raw.rows:
        assert row["requested"] == stats[row["target"]]
        assert row["error"] == pytest.approx(row["achieved"] - row["requested"])
        assert row["achieved_ci95"][0] <= row["achieved"] <= row["achieved_ci95"][1]
    assert raw.calibrated == all(abs(r["error"]) <= raw.tolerance for r in raw.rows)
    assert "calibration (raw condition)" in raw.table() and "NN dist (rel.)" in raw.table()
    # How near the samples are to training models: copies are at 0, noised copies further out.
    from wsl.eval.generated import Nearness

    assert all(np.isfinite(r["nn_relative"]) and r["nn_relative"] > 0 for r in raw.rows)
    nearness = Nearness(np.load(trained / "generator" / "aligned_train.npy"))
    copies = nearness.train[:5]
    assert nearness(copies) == 0
    noisy = copies + np.random.default_rng(0).normal(0, copies.std(), copies.shape)
    assert nearness(noisy) > 1

    copy = tmp_path / "generator"
    import shutil

    shutil.copytree(trained / "generator", copy)
    gen = TrainedGenerator.load(copy)
    condition_map = fit_condition_map(gen, num=6, grid=(-2.0, 0.0, 2.0))
    assert condition_map["column"] == "val_acc" and len(condition_map["achieved"]) == 3
    assert np.all(np.diff(condition_map["monotone"]) >= 0)
    write_condition_map(gen, condition_map)
    reloaded = TrainedGenerator.load(copy)
    assert reloaded.condition_map == condition_map
    assert reloaded.scalar_target("q90") == pytest.approx(condition_for(condition_map,
                                                                        stats["q90"]))
    assert reloaded.scalar_target("q90", use_map=False) == pytest.approx(
        (stats["q90"] - stats["mean"]) / stats["std"])
    mapped = measure_calibration(reloaded, num=6, seed=1, targets=("q50", 0.5))
    assert mapped.mapped and [r["requested"] for r in mapped.rows] == [stats["q50"], 0.5]
    zoo, _ = sample_to_zoo(reloaded, tmp_path / "samples", 4, cond_scalar="q90")
    provenance = zoo.manifest["provenance"]
    assert provenance["condition_map"] is True
    assert provenance["condition_value"] == pytest.approx(reloaded.scalar_target("q90"))
    # The map holds for the settings it was fitted at; sampling at another guidance says so.
    with pytest.warns(UserWarning, match=r"guidance 2.0 \(map: 1.0\)"):
        reloaded.sample(2, cond_scalar="q90", guidance=2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reloaded.sample(2, cond_scalar="q90", guidance=2.0, use_map=False)  # raw: no map
        reloaded.sample(2, cond_scalar="q90")
    # A map fitted at guidance 2 samples its targets at guidance 2 unless told otherwise.
    write_condition_map(reloaded, fit_condition_map(reloaded, num=4, grid=(-1.0, 1.0),
                                                    guidance=2.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(reloaded.sample(3, seed=5, cond_scalar="q90"),
                                      reloaded.sample(3, seed=5, cond_scalar="q90", guidance=2.0))
    zoo, _ = sample_to_zoo(reloaded, tmp_path / "samples-g2", 2, cond_scalar="q90")
    assert zoo.manifest["provenance"]["guidance"] == 2.0  # what the samples were drawn with
    assert not np.allclose(reloaded.sample(3, seed=5, cond_scalar="q90", use_map=False),
                           reloaded.sample(3, seed=5, cond_scalar="q90", guidance=2.0,
                                           use_map=False))


def test_the_guidance_of_a_condition_map_is_chosen_by_its_reach(monkeypatch):
    import types

    from wsl.eval import calibration
    from wsl.eval.errors import EvaluationError

    stats = {"q10": 0.40, "q25": 0.45, "q50": 0.50, "q75": 0.55, "q90": 0.60}
    gen = types.SimpleNamespace(meta={"scalar": stats})
    # What each guidance weight's samples reach on validation: 1 stops 5 points short of q90,
    # 2 reaches it, 3 reaches it too (a tie: the smaller weight wins).
    tops = {1.0: 0.55, 2.0: 0.61, 3.0: 0.63}
    fake = lambda gen, *, num, seed, guidance: {"monotone": [0.35, 0.5, tops[guidance]],
                                                "sample_options": {"guidance": guidance}}
    monkeypatch.setattr(calibration, "fit_condition_map", fake)
    chosen = calibration.choose_condition_map(gen, guidances=(3, 1, 2), num=4)
    assert chosen["sample_options"]["guidance"] == 2.0
    assert [(c["guidance"], c["shortfall"]) for c in chosen["guidance_candidates"]] == [
        (1.0, 0.05), (2.0, 0.0), (3.0, 0.0)]
    assert calibration.choose_condition_map(gen, guidances=(1,), num=4)[
        "sample_options"]["guidance"] == 1.0
    # Below q10 counts as well: a map whose curve starts above the lowest target falls short.
    assert calibration.reach_shortfall(gen, {"monotone": [0.43, 0.7]}) == pytest.approx(0.03)
    with pytest.raises(EvaluationError, match="at least one guidance"):
        calibration.choose_condition_map(gen, guidances=(), num=4)


def test_a_generator_saved_before_the_smooth_scalar_embedding_loads_as_it_was_trained(
        trained, tmp_path):
    import shutil

    copy = tmp_path / "generator"
    shutil.copytree(trained / "generator", copy)
    assert TrainedGenerator.load(copy).config.scalar_embedding == "smooth"
    meta = json.loads((copy / "generator.json").read_text())
    del meta["generator"]["scalar_embedding"]
    (copy / "generator.json").write_text(json.dumps(meta))
    legacy = TrainedGenerator.load(copy)
    assert legacy.config.scalar_embedding == "sinusoidal"
    assert not np.allclose(legacy.sample(3, seed=0, cond_scalar="q90"),
                           TrainedGenerator.load(trained / "generator").sample(
                               3, seed=0, cond_scalar="q90"))


def test_min_acc_selects_on_validation_not_test_accuracy(trained):
    zoo = Zoo.open(trained / "zoo")
    last = zoo.filter(epoch="last")
    val, test = last.metrics["val_acc"], last.metrics["test_acc"]
    threshold = float(np.median(val))
    selection = select_and_align(zoo, GeneratorConfig(), min_acc=threshold, align="none")
    assert sorted(selection.zoo.global_rows) == sorted(last.global_rows[val >= threshold])
    assert (val >= threshold).sum() >= 2 and not np.array_equal(val >= threshold, test >= threshold)
    with pytest.raises(ZooError, match="val_acc ≥ 2.0"):
        select_and_align(zoo, GeneratorConfig(), min_acc=2.0, align="none")


def _losses(run_dir, devices: int) -> list[float]:
    from wsl.models.weight_generator import GeneratorTask, make_generator
    from wsl.train import train

    x = np.random.default_rng(0).normal(size=(32, 24)).astype(np.float32)
    config = override(TrainConfig(), [
        f"mesh.data={devices}", "steps=12", "batch_size=16", "log.every=4", "log.progress=false",
        "checkpoint.every=0", "checkpoint.async_save=false", "data.shuffle=false"])
    task = GeneratorTask(make_generator(GeneratorConfig(method="flow", hidden=32, depth=1), 24))
    result = train(task, config, {"x": x}, run_dir)
    leaf = jax.tree.leaves(result.params)[0]
    assert len(leaf.sharding.device_set) == devices  # replicated over the whole mesh
    return [r["train/loss"] for r in result.history if "train/loss" in r]


@pytest.mark.eight_devices
def test_sharded_training_gives_the_same_loss(tmp_path):
    one = _losses(tmp_path / "one", 1)
    eight = _losses(tmp_path / "eight", 8)
    assert len(one) == 3
    np.testing.assert_allclose(eight, one, rtol=1e-4)


def test_calibrate_and_eval_commands_report_requested_against_achieved(trained, tmp_path, capsys):
    import shutil

    from wsl.commands import main

    gen_dir = tmp_path / "generator"
    shutil.copytree(trained / "generator", gen_dir)
    assert main(["gen", "calibrate", str(gen_dir), "-n", "4"]) == 0
    out = capsys.readouterr().out
    assert "condition map (val_acc of 4 samples per value" in out
    assert "calibration (through the condition map fitted on validation)" in out
    saved = json.loads((gen_dir / "condition_map.json").read_text())
    assert len(saved["condition"]) == 13 and saved["column"] == "val_acc"
    # Measured over the training population's range of the condition only (q0..q100).
    stats = json.loads((gen_dir / "generator.json").read_text())["scalar"]
    ends = [(stats[q] - stats["mean"]) / stats["std"] for q in ("q0", "q100")]
    assert [saved["condition"][0], saved["condition"][-1]] == pytest.approx(ends, abs=1e-3)
    assert main(["gen", "sample", str(gen_dir), "-n", "4", "--out", str(tmp_path / "s"),
                 "--cond-scalar", "q50", "--no-eval"]) == 0
    capsys.readouterr()
    assert main(["gen", "eval", str(tmp_path / "s"), "--generator", str(gen_dir),
                 "--calibration-samples", "4"]) == 0
    out = capsys.readouterr().out
    assert "calibration (raw condition)" in out and "max IoU" in out
    calibration = json.loads((tmp_path / "s" / "calibration.json").read_text())
    assert set(calibration) == {"raw condition", "condition map (fitted on validation)"}
    assert [r["target"] for r in calibration["raw condition"]["rows"]] == [
        "q10", "q25", "q50", "q75", "q90"]
    assert (tmp_path / "s" / "calibration.png").stat().st_size > 1000
    refused = tmp_path / "refused"  # a refused evaluation leaves no output folder behind
    assert main(["gen", "eval", str(tmp_path / "s"), "--generator", str(gen_dir),
                 "--out", str(refused), "--calibration-samples", "1"]) == 2
    assert "--calibration-samples must be ≥ 2" in capsys.readouterr().err
    assert not refused.exists()
    assert main(["gen", "calibrate", str(gen_dir), "-n", "1"]) == 2
    assert "-n/--num must be ≥ 2" in capsys.readouterr().err
    assert main(["gen", "calibrate", str(gen_dir), "-n", "2", "--guidance", "1,two"]) == 2
    assert "guidance weights are numbers ≥ 0 separated by commas" in capsys.readouterr().err
    assert main(["gen", "calibrate", str(gen_dir), "-n", "2", "--guidance=1,-2"]) == 2
    assert "got '1,-2'" in capsys.readouterr().err
    assert main(["gen", "calibrate", str(gen_dir), "-n", "2", "--guidance", "1,2"]) == 0
    out = capsys.readouterr().out
    assert "guidance 1: the map reaches" in out and "guidance 2: the map reaches" in out
    saved = json.loads((gen_dir / "condition_map.json").read_text())
    assert [c["guidance"] for c in saved["guidance_candidates"]] == [1.0, 2.0]
    assert saved["sample_options"]["guidance"] in (1.0, 2.0)


def test_temperature_is_a_sampling_option(trained, tmp_path):
    gen = TrainedGenerator.load(trained / "generator")
    cold, warm = gen.sample(6, seed=1, temperature=0.3), gen.sample(6, seed=1)
    assert not np.allclose(cold, warm)  # what it does to a mode: test_generator_models
    with pytest.raises(GenerateError, match="temperature must be positive"):
        gen.sample(2, temperature=0.0)
    zoo, _ = sample_to_zoo(gen, tmp_path / "s", 3, temperature=0.5)
    assert zoo.manifest["provenance"]["temperature"] == 0.5


def test_eta_is_a_sampling_option_of_euler_steps(trained, tmp_path):
    """Stochastic Euler steps (what they do to a mode: test_generator_models): η = 0 is the
    generator's Euler sampler; an ODE solver or an η outside [0, 1] is refused by name; the
    η used is recorded with the samples, from the library and from `wsl gen sample`."""
    from wsl.commands import main

    gen = TrainedGenerator.load(trained / "generator")  # sampler=euler, sample_steps=10
    plain = gen.sample(6, seed=1)
    np.testing.assert_array_equal(gen.sample(6, seed=1, eta=0.0), plain)
    assert not np.allclose(gen.sample(6, seed=1, eta=0.5), plain)
    with pytest.raises(GenerateError, match="stochastic Euler steps, not 'rk4'"):
        gen.sample(2, sampler="rk4", eta=0.5)
    with pytest.raises(GenerateError, match=r"eta must lie in \[0, 1\], got 1.5"):
        gen.sample(2, eta=1.5)
    zoo, _ = sample_to_zoo(gen, tmp_path / "s", 3, eta=0.25)
    assert zoo.manifest["provenance"]["eta"] == 0.25
    assert main(["gen", "sample", str(trained / "generator"), "-n", "3", "--out",
                 str(tmp_path / "cli"), "--eta", "0.5", "--no-eval"]) == 0
    assert Zoo.open(tmp_path / "cli").manifest["provenance"]["eta"] == 0.5
    with pytest.raises(ConfigError, match="eta: needs sampler=euler"):
        GeneratorConfig(eta=0.5)


def test_per_weight_normalisation_is_fitted_saved_and_read_back(tmp_path):
    """`normalize=entry` standardises every aligned weight over the training models (a weight
    that never moves is not blown up), the generator saves its vectors and loads them back as
    per-weight statistics (not as one value per tensor), and its samples come back in weight
    units."""
    from wsl.models.normalize import EntryNormalizer, TensorNormalizer

    build_zoo(get_recipe("quick", ["num_models=8"]), tmp_path / "zoo", progress=False)
    config = GeneratorConfig(method="flow", hidden=32, depth=1, normalize="entry",
                             sampler="euler", sample_steps=4)
    train_generator(tmp_path / "zoo", tmp_path / "gen", config,
                    override(TrainConfig(), ["steps=5", *FAST_TRAIN[1:]]))
    gen = TrainedGenerator.load(tmp_path / "gen")
    assert isinstance(gen.normalizer, EntryNormalizer)
    # The connectivity check ran on the aligned models and is recorded with the selection.
    check = gen.meta["selection"]["connectivity"]
    assert check["pairs"] == 16 and 0.3 < check["member_val_acc"] <= 1
    train = np.load(tmp_path / "gen" / "aligned_train.npy")
    z = gen.normalizer.normalize(train)
    floor = TensorNormalizer.fit(gen.architecture.weight_space, train).std * 1e-3
    moving = train.std(0) > 2 * floor  # (weights of always-blank pixels hardly move)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(z.std(0)[moving], 1, rtol=1e-3)
    frozen = np.zeros_like(train)
    frozen[:, 1:] = train[:, 1:]
    frozen[:, 0] = 0.5  # a weight equal in every model
    fitted = EntryNormalizer.fit(gen.architecture.weight_space, frozen)
    assert 0 < fitted.std[0] < 1e-2 and np.isfinite(fitted.normalize(frozen)).all()
    samples = gen.sample(16, seed=0)
    assert np.shape(samples) == (16, train.shape[1])
    # In weight units: within the training models' range scale, not standardised.
    assert np.abs(samples.mean(0) - train.mean(0)).mean() < 3 * train.std(0).mean() + 1e-3


def test_midpoint_check_tells_one_basin_from_permuted_copies():
    """Copies of one network are one basin; copies with their hidden units permuted (what alignment
    undoes, here left in place) compute the same function, but their midpoints do not."""
    from wsl.train.generator import midpoint_check
    from wsl.zoos.architectures import build as build_arch

    arch = build_arch("mlp", input_shape=(6,), widths=(16,), num_classes=3)
    space = arch.weight_space
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 6)).astype(np.float32)
    teacher = arch.init(jax.random.key(0))
    y = np.asarray(arch.apply(teacher, x)).argmax(1)
    flat = np.asarray(space.flatten(teacher))
    same = np.stack([flat + 1e-4 * rng.normal(size=flat.size) for _ in range(8)])
    one = midpoint_check(arch, same, x, y)
    assert one["connected"] and one["member_val_acc"] > 0.99 and one["midpoint_val_acc"] > 0.99
    batch = jax.tree.map(lambda a: np.repeat(a[None], 8, 0), teacher)
    permuted = space.permute(batch, space.random_permutation(jax.random.key(1), 8))
    two = midpoint_check(arch, np.asarray(space.flatten(permuted)), x, y)
    assert two["member_val_acc"] > 0.99 and not two["connected"], two
