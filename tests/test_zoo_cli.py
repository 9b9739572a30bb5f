"""`wsl zoo`: build, info, export and recipes through the real entry point, and their error
paths."""

import subprocess
import sys

import jax
import numpy as np
import pytest

from wsl.commands import main as wsl
from wsl.commands.zoo import histogram
from wsl.errors import UsageError
from wsl.mesh import cpu_cores, host_summary, make_mesh, split_cpu
from wsl.zoos.build import build_zoo
from wsl.zoos.recipes import get_recipe
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


def test_host_summary_names_the_processor_and_the_usable_cores(monkeypatch):
    model, cores = host_summary().rsplit(", ", 1)
    assert model and cores == f"{cpu_cores()} cores"
    # Where there is no /proc/cpuinfo (macOS, Windows), platform's name for the processor.
    real_open = open
    def no_cpuinfo(path, *args, **kwargs):
        if path == "/proc/cpuinfo":
            raise FileNotFoundError(path)
        return real_open(path, *args, **kwargs)
    monkeypatch.setattr("builtins.open", no_cpuinfo)
    monkeypatch.setattr("platform.processor", lambda: "Apple M2")
    assert host_summary() == f"Apple M2, {cpu_cores()} cores"


def test_split_cpu_leaves_a_started_jax_as_it_is(tmp_path, capsys):
    # JAX has started in this process: the default keeps its devices, another count is refused,
    # by the commands that split the CPU too, before they write anything.
    have = len(jax.devices("cpu"))
    assert split_cpu() is None and split_cpu(have) is None
    with pytest.raises(UsageError, match=f"cannot split the CPU into {have + 1} devices"):
        split_cpu(have + 1)
    with pytest.raises(UsageError, match="must be ≥ 1, got 0"):
        split_cpu(0)
    assert len(jax.devices("cpu")) == have
    capsys.readouterr()
    for command in (["zoo", "build", "quick", "--out", str(tmp_path / "zoo")],
                    ["transfer", "--generator", str(tmp_path / "g"), "--task", "digits:0-1:none"]):
        assert wsl([*command, "--cpu-devices", str(have + 1)]) == 2
        assert (f"wsl {command[0]}: error: cannot split the CPU into {have + 1} devices: JAX has "
                f"already started" in capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


def test_build_splits_the_cpu_into_a_device_per_core(tmp_path, unset_devices_env):
    build = [sys.executable, "-m", "wsl.commands", "zoo", "build", "quick", "--no-progress",
             "num_models=6", "epochs=1"]
    runs = {name: subprocess.run([*build, "--out", str(tmp_path / name), *extra],
                                 env=unset_devices_env, capture_output=True, text=True,
                                 timeout=600)
            for name, extra in (("auto", []), ("three", ["--cpu-devices", "3"]))}
    for run in runs.values():
        assert run.returncode == 0, run.stderr[-3000:]
    cores = cpu_cores()
    assert (f"mesh: models={cores} over {cores} cpu devices" if cores > 1
            else "mesh: 1 device (cpu)") in runs["auto"].stdout
    assert "mesh: models=3 over 3 cpu devices" in runs["three"].stdout
    one = make_mesh(("models",), devices=jax.devices()[:1])
    reference = build_zoo(get_recipe("quick", ["num_models=6", "epochs=1"]), tmp_path / "one",
                          progress=False, mesh=one)
    rows = np.arange(len(reference))
    acc, epoch = reference.metrics["test_acc"], reference.metrics["epoch"]
    assert acc[epoch == 1].mean() > acc[epoch == 0].mean() + 0.1  # the models really trained
    for name in runs:  # the same models as on one device, up to float rounding
        zoo = open_zoo(tmp_path / name)
        np.testing.assert_allclose(zoo.flat(rows), reference.flat(rows), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(zoo.metrics["test_acc"], reference.metrics["test_acc"],
                                   atol=1e-6)
