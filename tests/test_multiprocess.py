"""Two JAX processes as one run (`wsl launch`, `wsl.distributed`): a zoo build and a training run
give what one process gives, and what a killed multi-process run leaves is resumed by a rerun
with a different number of processes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from wsl.commands import main
from wsl.zoos.store import open_zoo

TESTS = Path(__file__).resolve().parent
BUILD = ["quick", "--no-progress", "num_models=32", "models_per_shard=8", "epochs=1"]


def _launch(*argv, processes=2, devices=1, timeout=600):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "wsl.commands", "launch", "-n", str(processes),
                           "--devices-per-process", str(devices), "--", *argv],
                          env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def one_process_zoo(tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "zoo"
    assert main(["zoo", "build", *BUILD, "--out", str(out)]) == 0
    return open_zoo(out)


def _assert_same_zoo(zoo, reference):
    assert len(zoo) == len(reference) == 64
    rows = np.arange(len(zoo))
    np.testing.assert_array_equal(zoo.flat(rows), reference.flat(rows))
    for column in ("model", "epoch", "test_acc", "train_loss", "lr"):
        np.testing.assert_array_equal(zoo.metrics[column], reference.metrics[column])


def test_two_processes_build_the_zoo_one_process_builds(tmp_path, one_process_zoo):
    run = _launch("wsl", "zoo", "build", *BUILD, "--out", str(tmp_path / "zoo"))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "in each of 2 processes" in run.stdout
    assert "[process 1] process 1 of 2: trains 2 of the 4 missing shards" in run.stderr
    _assert_same_zoo(open_zoo(tmp_path / "zoo"), one_process_zoo)


KILLED_BUILD = """
import os, signal, sys
from wsl.distributed import initialize
initialize()
import jax
from wsl.zoos.build import build_zoo
from wsl.zoos.recipes import get_recipe

def die(index):
    if jax.process_index() == 1:  # killed once its first shard is written
        os.kill(os.getpid(), signal.SIGKILL)

recipe = get_recipe("quick", ["num_models=32", "models_per_shard=8", "epochs=1"], [])
build_zoo(recipe, sys.argv[1], progress=False, on_shard=die)
"""


def test_a_killed_process_leaves_shards_that_one_process_resumes(tmp_path, one_process_zoo):
    out = tmp_path / "zoo"
    run = _launch(sys.executable, "-c", KILLED_BUILD, str(out))
    assert run.returncode == 128 + 9, run.stderr[-3000:]  # SIGKILL, as a shell reports it
    written = sorted(p.name for p in (out / "shards").iterdir() if p.name.isdigit())
    assert "00001" in written and "00003" not in written, written
    assert main(["zoo", "build", *BUILD, "--out", str(out)]) == 0
    _assert_same_zoo(open_zoo(out), one_process_zoo)


TRAIN = f"""
import json, sys
sys.path.insert(0, {str(TESTS)!r})
from wsl.distributed import initialize
initialize()
import jax, numpy as np
import test_trainer as t

out, kill = sys.argv[1], int(sys.argv[2])
config = t.small_config("steps=20", "ema_decay=0.9", "eval.every=10")
try:
    result = t.train(t.Regression(), config, t.regression_data(), out, augment=[t.jitter],
                     eval_data=t.regression_data(64, seed=1), hooks=[t.kill_at(kill)])
except t.Killed:
    sys.exit(3)
if jax.process_index() == 0:
    params = {{k: np.asarray(v).tolist() for k, v in jax.device_get(result.params).items()}}
    print("RESULT " + json.dumps({{"loss": list(map(float, result.curve("train/loss")[1])),
                                   "params": params, "devices": jax.device_count()}}))
"""


def _result(stdout: str) -> dict:
    line = next(line for line in stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def _assert_same_run(a: dict, b: dict):
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5, atol=1e-6)
    for name in a["params"]:
        np.testing.assert_allclose(a["params"][name], b["params"][name], rtol=0, atol=1e-6)


def _one_process_run(path) -> dict:
    run = subprocess.run([sys.executable, "-c", TRAIN, str(path), "0"], capture_output=True,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"), text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory):
    return _result(_one_process_run(tmp_path_factory.mktemp("train") / "one").stdout)


def test_training_on_two_processes_matches_one_process(tmp_path, one_process_run):
    two = _launch(sys.executable, "-c", TRAIN, str(tmp_path / "two"), "0", devices=2)
    assert two.returncode == 0, two.stderr[-3000:]
    assert _result(two.stdout)["devices"] == 4 and one_process_run["devices"] == 1
    _assert_same_run(_result(two.stdout), one_process_run)


def test_training_killed_on_two_processes_resumes_on_one(tmp_path, one_process_run):
    # Killed after step 15 on two processes (last checkpoint: step 10), resumed on one.
    killed = _launch(sys.executable, "-c", TRAIN, str(tmp_path / "moved"), "15")
    assert killed.returncode == 3, killed.stderr[-3000:]
    resumed = _one_process_run(tmp_path / "moved")
    assert "resumed from step 10 (of 20)" in resumed.stdout
    _assert_same_run(_result(resumed.stdout), one_process_run)
