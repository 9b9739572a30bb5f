"""The trainer: a task learns, a killed run resumes exactly, sharded runs match, bad configs fail.

Tests marked ``eight_devices`` need 8 devices; tests/test_eight_devices.py runs them in one
subprocess with 8 fake CPU devices.
"""

import importlib.machinery
import json
import os
import subprocess
import sys
import types
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wsl.config import ConfigError, load, override
from wsl.train import (
    OptimizerConfig,
    TaskError,
    TrainConfig,
    TrainError,
    config_from_argv,
    load_params,
    train,
)
from wsl.train.checkpoint import Checkpoints
from wsl.train.early_stopping import EarlyStopping
from wsl.train.optim import make_optimizer, make_schedule
from wsl.train.run_log import RunLog, read_records


class Regression:
    """A small tanh MLP regressing y = sin(x·w / 4) from 16 inputs."""

    def init(self, key, batch):
        k1, k2 = jax.random.split(key)
        dim = batch["x"].shape[-1]
        return {"w1": jax.random.normal(k1, (dim, 32)) / np.sqrt(dim), "b1": jnp.zeros(32),
                "w2": jax.random.normal(k2, (32,)) / np.sqrt(32), "b2": jnp.zeros(())}

    @staticmethod
    def predict(params, x):
        return jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]

    def loss(self, params, batch, key):
        # Input noise from the step key: a resume must restore the key stream, not only the data.
        x = batch["x"] + 0.01 * jax.random.normal(key, batch["x"].shape)
        return jnp.mean((self.predict(params, x) - batch["y"]) ** 2), {}

    def evaluate(self, params, data):
        return {"mse": float(_mse(params, data["x"], data["y"]))}


@jax.jit
def _mse(params, x, y):
    return jnp.mean((Regression.predict(params, x) - y) ** 2)


def regression_data(n=256, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 16)).astype(np.float32)
    return {"x": x, "y": np.sin(x @ rng.normal(size=16) / 4).astype(np.float32)}


def small_config(*overrides):
    base = ["steps=40", "batch_size=32", "optimizer.lr=1e-2", "log.every=1", "log.progress=false",
            "checkpoint.every=10", "checkpoint.keep=2"]
    return override(TrainConfig(), base + list(overrides))


def jitter(key, batch):
    """An augmentation whose randomness must be reproduced exactly after a resume."""
    return {**batch, "x": batch["x"] + 0.01 * jax.random.normal(key, batch["x"].shape)}


class Killed(Exception):
    pass


def kill_at(step):
    def hook(done, state):
        if done == step:
            raise Killed(f"simulated kill after step {step}")
    return hook


def assert_trees_close(a, b, atol=1e-6):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=atol)


# ---------------------------------------------------------------------------------------- learning
def test_regression_loss_falls_by_90_percent(tmp_path):
    config = small_config("steps=150")
    result = train(Regression(), config, regression_data(), tmp_path)
    steps, loss = result.curve("train/loss")
    assert list(steps) == list(range(1, 151))
    assert loss[-10:].mean() <= 0.1 * loss[0], (loss[0], loss[-10:].mean())
    # The run keeps its config and its metrics beside its checkpoints.
    assert load(TrainConfig, tmp_path / "config.json") == config
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 150 and json.loads(lines[-1])["step"] == 150
    assert {"train/loss", "train/lr", "train/grad_norm"} <= set(json.loads(lines[-1]))


def test_a_log_is_the_mean_over_the_updates_since_the_last_one(tmp_path):
    # Logs every 5 updates, read a step late, with checkpoints in between (7, 14, 21) and the
    # on-device record of the last 5 updates wrapping around: the same means as logging each one.
    data = regression_data()
    each = train(Regression(), small_config("steps=23", "checkpoint.every=0"), data,
                 tmp_path / "each").curve("train/loss")[1]
    config = small_config("steps=23", "log.every=5", "checkpoint.every=7")
    steps, loss = train(Regression(), config, data, tmp_path / "five").curve("train/loss")
    assert list(steps) == [5, 10, 15, 20, 23]
    expected = [np.mean(each[start:end]) for start, end in zip([0, 5, 10, 15, 20], steps)]
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    # A run stopped at a log step whose record was still on its way keeps that record.
    with pytest.raises(Killed):
        train(Regression(), config, data, tmp_path / "killed", hooks=[kill_at(10)])
    assert [r["step"] for r in read_records(tmp_path / "killed")] == [5, 10]


def test_schedule_warms_up_then_decays_and_clipping_bounds_the_update():
    config = OptimizerConfig(lr=0.1, warmup_steps=10, final_lr_fraction=0.1)
    schedule = make_schedule(config, total_steps=110)
    lrs = [float(schedule(step)) for step in (0, 5, 10, 60, 110)]
    np.testing.assert_allclose(lrs, [0.0, 0.05, 0.1, 0.055, 0.01], rtol=1e-5)
    sgd = OptimizerConfig(name="sgd", lr=1.0, momentum=0.0, schedule="constant", clip_norm=2.0)
    tx = make_optimizer(sgd, make_schedule(sgd, 10))
    grads = {"w": jnp.full(4, 5.0)}  # norm 10
    updates, _ = tx.update(grads, tx.init(grads))
    np.testing.assert_allclose(updates["w"], -jnp.full(4, 1.0), rtol=1e-6)  # clipped to norm 2


# ---------------------------------------------------------------------------------------- resume
def test_kill_and_resume_gives_the_uninterrupted_result(tmp_path):
    config = small_config("ema_decay=0.9", "eval.every=20", "eval.metric=mse", "eval.mode=min")
    data, held_out = regression_data(), regression_data(64, seed=1)
    whole = train(Regression(), config, data, tmp_path / "whole", eval_data=held_out,
                  augment=[jitter])

    with pytest.raises(Killed):
        train(Regression(), config, data, tmp_path / "killed", eval_data=held_out,
              augment=[jitter], hooks=[kill_at(27)])
    meta = json.loads((tmp_path / "killed/checkpoints/20/meta/metadata").read_text())
    assert meta["step"] == 20 and meta["position"] == [2, 4]  # 256 rows / 32 = 8 batches an epoch
    resumed = train(Regression(), config, data, tmp_path / "killed", eval_data=held_out,
                    augment=[jitter])
    # The training time up to the checkpoint is kept, so that a resumed run's time counts whole.
    assert whole.earlier_seconds == 0.0 and meta["seconds"] > 0
    assert resumed.earlier_seconds == meta["seconds"]
    final = json.loads((tmp_path / "killed/checkpoints/40/meta/metadata").read_text())
    assert final["seconds"] > meta["seconds"]

    assert_trees_close(resumed.params, whole.params)
    assert_trees_close(resumed.ema_params, whole.ema_params)
    assert resumed.best_step == whole.best_step
    assert resumed.best_value == pytest.approx(whole.best_value)
    # Records written after the last checkpoint by the killed run are dropped, not duplicated.
    steps, loss = resumed.curve("train/loss")
    assert list(steps) == list(range(1, 41))
    np.testing.assert_allclose(loss, whole.curve("train/loss")[1], rtol=1e-6)
    # Running a finished run again trains nothing and returns the same result.
    again = train(Regression(), config, data, tmp_path / "killed", eval_data=held_out,
                  augment=[jitter])
    assert_trees_close(again.params, whole.params)
    assert again.earlier_seconds == final["seconds"]
    # A resume that could not be exact is refused, naming what changed.
    with pytest.raises(TrainError, match="rows=256, now rows=240"):
        train(Regression(), config, regression_data(240), tmp_path / "killed")
    with pytest.raises(TrainError, match="already holds checkpoints.*checkpoint.resume=true"):
        train(Regression(), override(config, ["checkpoint.resume=false"]), data,
              tmp_path / "killed")


# ---------------------------------------------------------------------------------------- best
class Scripted(Regression):
    """Evaluations return a scripted score sequence: with min_delta 0.05 the best is the second."""

    scores = [0.5, 0.9, 0.91, 0.6, 0.8, 0.95]

    def __init__(self):
        self.calls = 0

    def evaluate(self, params, data):
        self.calls += 1
        return {"score": self.scores[self.calls - 1]}


def test_best_checkpoint_is_kept_and_early_stopping_stops(tmp_path):
    config = small_config("steps=60", "checkpoint.every=5", "checkpoint.keep=1", "eval.every=10",
                          "eval.metric=score", "eval.patience=2", "eval.min_delta=0.05")
    seen = {}
    result = train(Scripted(), config, regression_data(), tmp_path, eval_data=regression_data(64),
                   hooks=[lambda step, state: seen.__setitem__(step, jax.device_get(state.params))])
    # 0.91 at step 30 is higher than 0.9 but not by min_delta: not a new best, and not kept.
    assert result.stopped_early and max(seen) == 40
    assert (result.best_step, result.best_value) == (20, 0.9)
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [20, 40]
    assert_trees_close(result.best_params(), seen[20], atol=0)
    assert_trees_close(load_params(tmp_path, "latest"), seen[40], atol=0)
    assert result.curve("eval/score")[1].tolist() == [0.5, 0.9, 0.91, 0.6]


def test_the_best_checkpoint_outlives_a_resume(tmp_path):
    # Killed after step 27 (best at step 20, kept beside the latest one), resumed from step 25:
    # the saves after the resume must not delete the best checkpoint, which the resumed run's
    # result loads (orbax forgot the best of a run before a resume: a probe failed to load it).
    config = small_config("steps=60", "checkpoint.every=5", "checkpoint.keep=1", "eval.every=10",
                          "eval.metric=score", "eval.patience=2", "eval.min_delta=0.05")
    seen = {}
    hooks = [lambda step, state: seen.__setitem__(step, jax.device_get(state.params))]
    with pytest.raises(Killed):
        train(Scripted(), config, regression_data(), tmp_path, eval_data=regression_data(64),
              hooks=[*hooks, kill_at(27)])
    scripted = Scripted()
    scripted.calls = 2  # the evaluations at steps 10 and 20 ran before the kill
    result = train(scripted, config, regression_data(), tmp_path, eval_data=regression_data(64),
                   hooks=hooks)
    assert result.stopped_early and (result.best_step, result.best_value) == (20, 0.9)
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [20, 40]
    assert_trees_close(result.best_params(), seen[20], atol=0)


def test_early_stopping_modes_and_min_delta():
    lower = EarlyStopping(mode="min", patience=2, min_delta=0.05)
    assert [lower.update(s, v) for s, v in enumerate([1.0, 0.97, 0.9, float("nan"), 0.88])] == [
        True, False, True, False, False]
    assert lower.should_stop and (lower.best_step, lower.best_value) == (2, 0.9)
    higher = EarlyStopping(mode="max")
    assert higher.update(0, -3.0) and not higher.update(1, -3.0) and not higher.should_stop


@pytest.mark.slow
def test_sigkilled_process_resumes_to_the_uninterrupted_result(tmp_path):
    """A real SIGKILL: no cleanup runs, an asynchronous save may be cut off half-written."""
    child = f"""
import os, signal, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
import test_trainer as t
def kill(step, state):
    if step == 27:
        os.kill(os.getpid(), signal.SIGKILL)
t.train(t.Regression(), t.small_config("ema_decay=0.9"), t.regression_data(),
        {str(tmp_path / "run")!r}, augment=[t.jitter], hooks=[kill])
"""
    killed = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert killed.returncode == -9, killed.stderr[-3000:]
    saved = [int(p.name) for p in (tmp_path / "run/checkpoints").iterdir() if p.name.isdigit()]
    assert max(saved) in (10, 20)  # 20 unless its asynchronous write was cut off
    config = small_config("ema_decay=0.9")
    resumed = train(Regression(), config, regression_data(), tmp_path / "run", augment=[jitter])
    whole = train(Regression(), config, regression_data(), tmp_path / "whole", augment=[jitter])
    assert_trees_close(resumed.params, whole.params)
    assert_trees_close(resumed.ema_params, whole.ema_params)
    assert list(resumed.curve("train/loss")[0]) == list(range(1, 41))


def test_a_failed_background_save_raises_when_the_checkpoints_close(tmp_path):
    checkpoints = Checkpoints(tmp_path, keep=1, background=True)

    def disk_full(*args, **kwargs):
        raise OSError("no space left on device")

    checkpoints.manager.save = disk_full
    checkpoints.save(1, {"w": jnp.ones(3)}, {"step": 1})  # handed on: returns at once
    with pytest.raises(OSError, match="no space left"):
        checkpoints.close()


def test_run_log_writes_tensorboard_scalars_when_a_writer_is_installed(tmp_path, monkeypatch):
    written = []

    class SummaryWriter:
        def __init__(self, logdir):
            written.append(("dir", logdir))

        def add_scalar(self, tag, value, step):
            written.append((tag, value, step))

        def close(self):
            written.append("closed")

    fake = types.ModuleType("tensorboardX")
    fake.__spec__ = importlib.machinery.ModuleSpec("tensorboardX", None)
    fake.SummaryWriter = SummaryWriter
    monkeypatch.setitem(sys.modules, "tensorboardX", fake)
    log = RunLog(tmp_path, total_steps=10, progress=False)
    log.write(3, {"train/loss": 0.5, "eval/tau": float("nan")})
    log.close()
    assert written == [("dir", str(tmp_path / "tensorboard")), ("train/loss", 0.5, 3),
                       ("eval/tau", pytest.approx(float("nan"), nan_ok=True), 3), "closed"]
    assert read_records(tmp_path) == [{"step": 3, "train/loss": 0.5, "eval/tau": "nan"}]
    # Reopening at step 2 (a resume from an earlier checkpoint) drops the later record.
    RunLog(tmp_path, total_steps=10, resume_step=2, progress=False, tensorboard=False).close()
    assert read_records(tmp_path) == []


# ---------------------------------------------------------------------------------------- errors
class NoiselessRegression(Regression):
    """`Regression` whose loss ignores its key: micro-batches (one key each) change nothing."""

    def loss(self, params, batch, key):
        return jnp.mean((self.predict(params, batch["x"]) - batch["y"]) ** 2), {}


def test_micro_batches_give_the_whole_batch_update(tmp_path):
    data = regression_data()
    whole = train(NoiselessRegression(), small_config("steps=12"), data, tmp_path / "whole")
    micro = train(NoiselessRegression(), small_config("steps=12", "microbatch=8"), data,
                  tmp_path / "micro")
    for metric in ("train/loss", "train/grad_norm"):
        np.testing.assert_allclose(micro.curve(metric)[1], whole.curve(metric)[1], rtol=1e-5)
    assert_trees_close(micro.params, whole.params, atol=1e-5)
    # The key reaches every micro-batch, each its own: the noisy task's update differs.
    noisy = train(Regression(), small_config("steps=1", "microbatch=8"), data, tmp_path / "noisy")
    assert np.isfinite(noisy.curve("train/loss")[1]).all()
    with pytest.raises(ConfigError, match="microbatch: must divide batch_size=32, got 12"):
        small_config("microbatch=12")
    with pytest.raises(ConfigError, match="microbatch: must be ≥ 0"):
        small_config("microbatch=-1")


def test_a_run_saved_before_a_config_key_existed_resumes_without_a_warning(tmp_path):
    config = small_config("steps=10")
    train(Regression(), config, regression_data(), tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["microbatch"]  # as written before the key was added, with its default meaning
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(Regression(), config, regression_data(), tmp_path)
    with pytest.warns(UserWarning, match=r"changed config keys \['microbatch'\]"):
        train(Regression(), small_config("steps=10", "microbatch=8"), regression_data(), tmp_path)


def test_bad_config_field_gives_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=r"optimizer\.lrr.*valid keys.*optimizer\.lr"):
        override(TrainConfig(), ["optimizer.lrr=1e-3"])
    with pytest.raises(ConfigError, match="eval.patience.*eval.metric"):
        override(TrainConfig(), ["eval.patience=3"])
    with pytest.raises(ConfigError, match="steps: must be ≥ 1"):
        override(TrainConfig(), ["steps=0"])
    with pytest.raises(ConfigError, match=r"mesh.fsdp=1024 needs 1024 devices; \d+ are available"):
        train(Regression(), small_config("mesh.fsdp=1024"), regression_data(), tmp_path)
    # A saved run config is the base the command line overrides.
    (tmp_path / "run").mkdir()
    path = tmp_path / "run/config.json"
    path.write_text(json.dumps({"steps": 7, "optimizer": {"lr": 0.5}}))
    assert config_from_argv(TrainConfig(), ["--config", str(path), "batch_size=8"]) == override(
        TrainConfig(), ["steps=7", "optimizer.lr=0.5", "batch_size=8"])
    path.write_text(json.dumps({"step": 7}))
    with pytest.raises(ConfigError, match=r"\['step'\].*valid keys: seed, steps"):
        config_from_argv(TrainConfig(), ["--config", str(path)])


def test_bad_tasks_give_clear_errors(tmp_path):
    data = regression_data(64)

    class NoLoss:
        def init(self, key, batch):
            return {}

    with pytest.raises(TaskError, match="NoLoss is not a task: it has no loss"):
        train(NoLoss(), small_config(), data, tmp_path / "a")
    class NoEvaluate(NoLoss):
        def loss(self, params, batch, key):
            return 0.0, {}

    with pytest.raises(TaskError, match="has no evaluate method .*eval_data was given"):
        train(NoEvaluate(), small_config(), data, tmp_path / "a", eval_data=data)
    with pytest.raises(TrainError, match=r"eval.metric='tau'.*\['mse'\]"):
        train(Regression(), small_config("steps=2", "eval.metric=tau"), data, tmp_path / "b",
              eval_data=data)

    class Diverges(Regression):
        def loss(self, params, batch, key):
            return super().loss(params, batch, key)[0] * jnp.nan, {}

    with pytest.raises(TrainError, match="training loss became nan by step 1"):
        train(Diverges(), small_config("steps=2"), data, tmp_path / "c")



# ---------------------------------------------------------------------------------------- 8 devices
def _run_on_mesh(tmp_path, name, *mesh, hooks=()):
    config = small_config("mesh.fsdp_min_size=1", *mesh)
    return train(Regression(), config, regression_data(), tmp_path / name, hooks=hooks)


@pytest.mark.eight_devices
def test_eight_devices_match_one_device_and_checkpoints_move_between_meshes(tmp_path):
    one = _run_on_mesh(tmp_path, "one", "mesh.data=1")
    data_parallel = _run_on_mesh(tmp_path, "dp", "mesh.data=8")
    assert len(one.params["w1"].sharding.device_set) == 1
    assert len(data_parallel.params["w1"].sharding.device_set) == 8
    np.testing.assert_allclose(data_parallel.curve("train/loss")[1], one.curve("train/loss")[1],
                               rtol=1e-5)
    assert_trees_close(data_parallel.params, one.params, atol=1e-5)

    # FSDP on a 4 × 2 mesh until a kill after step 25, then resumed on a single device.
    layout = {}

    def record_layout(step, state):  # the state is donated to the next step: keep no arrays
        w1 = state.params["w1"]
        layout.update(spec=w1.sharding.spec, shards={s.data.shape for s in w1.addressable_shards})

    with pytest.raises(Killed):
        _run_on_mesh(tmp_path, "moved", "mesh.data=4", "mesh.fsdp=2",
                     hooks=[record_layout, kill_at(25)])
    assert layout == {"spec": jax.sharding.PartitionSpec(None, "fsdp"), "shards": {(16, 16)}}
    with pytest.warns(UserWarning, match=r"changed config keys \['mesh.data', 'mesh.fsdp'\]"):
        moved = _run_on_mesh(tmp_path, "moved", "mesh.data=1")
    assert len(moved.params["w1"].sharding.device_set) == 1
    np.testing.assert_allclose(moved.curve("train/loss")[1], one.curve("train/loss")[1], rtol=1e-5)
    assert_trees_close(moved.params, one.params, atol=1e-5)


@pytest.mark.eight_devices
def test_eight_devices_batch_size_must_divide_over_the_mesh(tmp_path):
    with pytest.raises(ConfigError, match="batch_size=12 must divide evenly over the mesh's 8"):
        train(Regression(), small_config("batch_size=12"), regression_data(), tmp_path)
    with pytest.raises(ConfigError, match="microbatch=4 must divide evenly over the mesh's 8"):
        train(Regression(), small_config("microbatch=4"), regression_data(), tmp_path)


@pytest.mark.eight_devices
def test_eight_devices_micro_batches_keep_every_device_and_the_update(tmp_path):
    data = regression_data()
    one = train(NoiselessRegression(), small_config("steps=12", "mesh.data=1"), data,
                tmp_path / "one")
    micro = train(NoiselessRegression(), small_config("steps=12", "microbatch=16"), data,
                  tmp_path / "micro")
    assert len(micro.params["w1"].sharding.device_set) == 8
    np.testing.assert_allclose(micro.curve("train/loss")[1], one.curve("train/loss")[1],
                               rtol=1e-5)
    assert_trees_close(micro.params, one.params, atol=1e-5)
