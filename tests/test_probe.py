"""Probing: an encoder trained through the loop predicts a zoo column far better than a constant."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from wsl.commands import main
from wsl.config import ConfigError, override
from wsl.eval.probe_report import format_report, plot_probe
from wsl.train.probe import DEFAULT_TRAIN, ProbeConfig, ProbeError, run_probe
from wsl.zoos.architectures import build
from wsl.zoos.store import write_zoo


@pytest.fixture(scope="module")
def scaled_zoo(tmp_path_factory):
    """120 MLPs whose weight scale sets the target (as init scale sets accuracy in real zoos)."""
    arch = build("mlp", input_shape=(6,), widths=(8,), num_classes=3)
    rng = np.random.default_rng(0)
    scale = rng.uniform(0.2, 2.0, 120)
    pop = arch.init_population(jax.random.key(0), 120)
    flat = np.asarray(arch.weight_space.flatten(pop)) * scale[:, None]
    target = 1 / (1 + np.exp(-(scale - 1.1) * 3))
    rows = [{"model": i, "epoch": 0, "test_acc": float(target[i]),
             "kind": ("small", "large")[int(scale[i] > 1.1)], "diverged": False}
            for i in range(120)]
    manifest = {"architecture": {"name": "mlp", "config": dict(arch.config)},
                "weight_space": arch.weight_space.to_dict()}
    return write_zoo(tmp_path_factory.mktemp("zoo") / "z", manifest,
                     arch.weight_space.unflatten(flat), rows)


def test_statnn_probe_beats_constant(scaled_zoo, tmp_path):
    config = ProbeConfig(encoder="statnn",
                         train=override(DEFAULT_TRAIN, ["steps=400", "eval.every=100"]))
    report = run_probe(scaled_zoo, config, tmp_path / "probe")
    assert report["summary"]["kendall_tau"]["mean"] > 0.6
    assert report["summary"]["r2"]["mean"] > 0.4  # a constant predictor scores R² ≤ 0
    assert (tmp_path / "probe" / "results.json").exists()
    plot_probe(report, tmp_path / "scatter.png")
    assert (tmp_path / "scatter.png").stat().st_size > 0
    assert "kendall_tau" in format_report(report)


def test_probe_line_gives_the_interval_over_seeds_only_with_several():
    runs = [{"seed": s, "kendall_tau": t, "r2": 0.5} for s, t in enumerate((0.70, 0.74, 0.72))]
    report = {"encoder": "statnn", "target": "test_acc", "num_rows": 99, "seeds": 3,
              "seconds": 1.0, "runs": runs,
              "summary": {"kendall_tau": {"mean": 0.72, "std": 0.0163},
                          "r2": {"mean": 0.5, "std": 0.0}}}
    line = format_report(report)
    assert "kendall_tau 0.7200 ± 0.0163 [95 % CI 0.6703, 0.7697]" in line
    assert "r2 0.5000 ± 0.0000 [95 % CI 0.5000, 0.5000]" in line
    one = {**report, "seeds": 1, "runs": runs[:1]}
    assert "CI" not in format_report(one)


def test_statnn_features_are_standardised_on_the_training_split(scaled_zoo, monkeypatch):
    """StatNN is a fair baseline only with its statistics standardised (fitted on training
    models): the probe passes the fitted mean and std to the encoder."""
    import wsl.train.probe as probe_module

    seen = []
    real = probe_module.build_encoder
    monkeypatch.setattr(probe_module, "build_encoder",
                        lambda *a, **k: seen.append(k) or real(*a, **k))
    run_probe(scaled_zoo, ProbeConfig(encoder="statnn", train=override(
        DEFAULT_TRAIN, ["steps=5", "eval.every=5"])))
    (kwargs,) = seen
    features = 7 * len(scaled_zoo.weight_space.tensors)
    assert len(kwargs["feature_mean"]) == len(kwargs["feature_std"]) == features
    assert min(kwargs["feature_std"]) > 0 and np.ptp(kwargs["feature_mean"]) > 0


def test_gbt_and_classification(scaled_zoo, tmp_path):
    report = run_probe(scaled_zoo, ProbeConfig(encoder="statnn_gbt", target="kind"))
    assert report["summary"]["accuracy"]["mean"] > 0.8  # two balanced classes: chance is 0.5


def test_bad_probe_requests(scaled_zoo):
    with pytest.raises(ProbeError, match="unknown target 'nope'"):
        run_probe(scaled_zoo, ProbeConfig(target="nope"))
    with pytest.raises(ProbeError, match="unknown encoder"):
        run_probe(scaled_zoo, ProbeConfig(encoder="resnet50"))


def test_cli_probe_with_noise_and_mixup(scaled_zoo, tmp_path, capsys):
    out = tmp_path / "probe"
    assert main(["probe", "--zoo", str(scaled_zoo.path), "--encoder", "statnn",
                 "--augment", "noise,mixup", "--out", str(out), "steps=150", "eval.every=50",
                 "noise_scale=0.1", "mixup_alpha=0.5"]) == 0
    report = json.loads((out / "results.json").read_text())
    config = report["config"]
    assert config["augment"] == ["mixup", "noise"]  # mixup first: it needs the common alignment
    assert (config["noise_scale"], config["mixup_alpha"]) == (0.1, 0.5)
    assert report["summary"]["kendall_tau"]["mean"] > 0.5
    assert set(report["validation"]) == {"kendall_tau", "r2"}
    assert main(["probe", "--zoo", str(scaled_zoo.path), "--augment", "noise,rotate"]) == 2
    err = capsys.readouterr().err
    assert "unknown augmentation(s) ['rotate']; valid: dropout, mixup, noise, permute, prune" in err
    assert main(["probe", "--zoo", str(scaled_zoo.path), "--no-augment", "--augment", "noise"]) == 2


def test_probe_config_names_augmentations_and_checks_strengths():
    assert ProbeConfig().augment == ("permute",)
    assert ProbeConfig(augment="noise,permute").augment == ("permute", "noise")
    assert ProbeConfig(augment=None).augment == ProbeConfig(augment="none").augment == ()
    assert override(ProbeConfig(), ["augment=none"]).augment == ()
    assert override(ProbeConfig(), ["augment=prune,dropout,mixup"]).augment == (
        "mixup", "dropout", "prune")
    with pytest.raises(ConfigError, match="valid: dropout, mixup, noise, permute, prune"):
        ProbeConfig(augment=("permute", "flip"))
    for field, bad in (("noise_scale", -0.1), ("dropout_rate", 1.0), ("prune_fraction", -0.5),
                       ("mixup_alpha", 0.0)):
        with pytest.raises(ConfigError, match=field):
            override(ProbeConfig(), [f"{field}={bad}"])


def test_a_probe_folder_from_before_a_new_field_still_resumes(scaled_zoo, tmp_path):
    """`log_scale` came later: a probe.json without it ran with its default and is this run."""
    import wsl.train.probe as probe_module

    config = ProbeConfig(encoder="statnn", train=override(DEFAULT_TRAIN, ["steps=5",
                                                                          "eval.every=5"]))
    out = tmp_path / "probe"
    first = run_probe(scaled_zoo, config, out)
    record = json.loads((out / probe_module.PROBE_FILE).read_text())
    record.pop("log_scale")
    (out / probe_module.PROBE_FILE).write_text(json.dumps(record))
    again = run_probe(scaled_zoo, config, out)  # accepted: resumes (nothing left to train)
    # Its s/seed still counts the training the first call did (kept in the checkpoints).
    trained = json.loads((out / "statnn-seed0/checkpoints/5/meta/metadata").read_text())
    assert again["seconds"] >= trained["seconds"] > 0 and first["seconds"] >= trained["seconds"]
    with pytest.raises(Exception, match="log_scale"):
        run_probe(scaled_zoo, dataclasses.replace(config, log_scale=1.0), out)


def test_probe_loss_option(scaled_zoo, tmp_path):
    """`loss="mse"` fits an accuracy standardised (not through a sigmoid) and still ranks the
    models; a loss that cannot apply to the target is refused in one line naming it."""
    with pytest.raises(ConfigError, match="loss must be one of auto, bce, mse; got 'l1'"):
        ProbeConfig(loss="l1")
    with pytest.raises(ProbeError, match="'kind' is a text column.*loss mse"):
        run_probe(scaled_zoo, ProbeConfig(encoder="statnn", target="kind", loss="mse"))
    with pytest.raises(ProbeError, match=r"loss bce needs a target in \[0, 1\]; 'model' spans"):
        run_probe(scaled_zoo, ProbeConfig(encoder="statnn", target="model", loss="bce"))
    import wsl.train.probe as probe_module

    assert probe_module._target(np.array([0.2, 0.9]), "acc")[0] == "bce"
    assert probe_module._target(np.array([0.2, 0.9]), "acc", "mse")[0] == "mse"
    config = ProbeConfig(encoder="statnn", loss="mse",
                         train=override(DEFAULT_TRAIN, ["steps=400", "eval.every=100"]))
    report = run_probe(scaled_zoo, config, tmp_path / "probe")
    assert report["config"]["loss"] == "mse"
    assert report["summary"]["kendall_tau"]["mean"] > 0.6
    assert report["summary"]["r2"]["mean"] > 0.4  # predictions come back in the target's units


def test_first_seed_runs_later_splits(scaled_zoo, tmp_path, capsys):
    """`first_seed` runs seeds first_seed, … : each seed's split is the one that seed gives
    (new models under test), and a folder of other seeds is refused rather than mixed."""
    config = ProbeConfig(encoder="statnn", seeds=2, first_seed=3,
                         train=override(DEFAULT_TRAIN, ["steps=5", "eval.every=5"]))
    report = run_probe(scaled_zoo, config, tmp_path / "probe")
    assert [run["seed"] for run in report["runs"]] == [3, 4]
    view = scaled_zoo.select(epoch="last", finite=True, require=("test_acc",))
    for run in report["runs"]:
        test = view.split_by_model(config.split, seed=run["seed"])[2]
        assert run["model"] == [int(m) for m in test.metrics["model"]]
    assert (tmp_path / "probe" / "statnn-seed3").is_dir()
    with pytest.raises(Exception, match="first_seed"):
        run_probe(scaled_zoo, dataclasses.replace(config, first_seed=0), tmp_path / "probe")
    with pytest.raises(ConfigError, match="first_seed must be ≥ 0; got -1"):
        ProbeConfig(first_seed=-1)
    assert main(["probe", "--zoo", str(scaled_zoo.path), "--encoder", "statnn", "--seeds", "1",
                 "--first-seed", "7", "--out", str(tmp_path / "cli"), "steps=5",
                 "eval.every=5"]) == 0
    cli = json.loads((tmp_path / "cli" / "results.json").read_text())
    assert [run["seed"] for run in cli["runs"]] == [7]
