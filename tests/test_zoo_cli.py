"""`wsl zoo`: build, info, export and recipes through the real entry point, and their error
paths."""

import numpy as np
import pytest

from wsl.commands import main as wsl
from wsl.commands.zoo import histogram
from wsl.zoos.store import open_zoo


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "zoo"
    code = wsl(["zoo", "build", "quick", "--out", str(out), "--num-models", "16", "epochs=2",
                "--seed", "3", "--no-progress"])
    assert code == 0
    return out


def test_build_then_info(built, capsys):
    zoo = open_zoo(built)
    assert len(zoo.model_ids) == 16 and set(zoo.metrics["epoch"]) == {0, 1, 2}
    assert zoo.manifest["recipe"]["config"]["seed"] == 3
    assert wsl(["zoo", "info", str(built)]) == 0
    out = capsys.readouterr().out
    assert "architecture mlp" in out and "16 models, 48 rows" in out
    assert "test accuracy at the last checkpoint" in out
    bars = [line for line in out.splitlines() if line.startswith("  [")]
    assert len(bars) == 10 and sum(int(b.split()[-1]) for b in bars) == 16


def test_export_both_formats(built, tmp_path, capsys):
    zoo = open_zoo(built)
    target = tmp_path / "m.npz"
    assert wsl(["zoo", "export", str(built), "--model", "5", "--format", "npz",
                "--out", str(target)]) == 0
    row = int(np.flatnonzero((zoo.metrics["model"] == 5) & (zoo.metrics["epoch"] == 2))[0])
    with np.load(target) as f:
        np.testing.assert_array_equal(f["dense_0/kernel"], zoo.params(row)["dense_0"]["kernel"])
    target = tmp_path / "m.safetensors"
    assert wsl(["zoo", "export", str(built), "--model", "5", "--epoch", "0", "--out",
                str(target), "--torch-layout"]) == 0
    from safetensors.numpy import load_file

    row0 = int(np.flatnonzero((zoo.metrics["model"] == 5) & (zoo.metrics["epoch"] == 0))[0])
    np.testing.assert_array_equal(load_file(str(target))["dense_0.weight"],
                                  zoo.params(row0)["dense_0"]["kernel"].T)
    assert "wrote" in capsys.readouterr().out


def test_errors_are_clear_and_touch_nothing(built, tmp_path, capsys):
    before = sorted(p.name for p in (built / "shards").iterdir())
    assert wsl(["zoo", "build", "nosuch", "--out", str(tmp_path / "a")]) == 2
    assert "unknown recipe 'nosuch'" in capsys.readouterr().err
    assert wsl(["zoo", "build", "quick", "--out", str(tmp_path / "b"), "epochz=2"]) == 2
    assert "unknown config key 'epochz'" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    # a different recipe into an existing zoo is refused, and the zoo is left as it was
    assert wsl(["zoo", "build", "quick", "--out", str(built), "--num-models", "8",
                "--no-progress"]) == 1
    assert "different zoo" in capsys.readouterr().err
    assert sorted(p.name for p in (built / "shards").iterdir()) == before
    open_zoo(built)
    assert wsl(["zoo", "export", str(built), "--model", "99"]) == 1
    assert "no model 99" in capsys.readouterr().err
    assert wsl(["zoo", "export", str(built), "--model", "1", "--epoch", "7"]) == 1
    assert "no checkpoint at epoch 7" in capsys.readouterr().err
    assert wsl(["zoo", "info", str(tmp_path / "missing")]) == 1
    assert "no such zoo directory" in capsys.readouterr().err
    assert wsl(["zoo", "frobnicate"]) == 2


def test_help_recipes_and_registration(capsys):
    assert wsl(["zoo", "--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("build", "info", "export"))
    assert wsl(["zoo", "recipes"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("quick", "small-cnn", "cnn-s", "mlp-mnist1d", "seeds"))
    assert wsl(["zoo", "recipes", "small-cnn"]) == 0
    assert "train_fraction" in capsys.readouterr().out


def test_histogram_counts_everything():
    text = histogram([0.1, 0.12, 0.5, 0.93, float("nan")])
    lines = text.splitlines()
    assert sum(int(l.split()[-1]) for l in lines if l.startswith("  [")) == 4
    assert lines[-1] == "  not finite: 1"
