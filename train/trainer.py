"""The training loop: a task brings init / loss / evaluate, the trainer owns everything else.

`train(task, config, data, run_dir)` builds the mesh, the optimizer and the input pipeline from
`config`, compiles one update with explicit shardings and a donated state, and runs it —
resuming from the latest checkpoint in `run_dir` when there is one. The run directory holds::

    config.json          the TrainConfig of the run
    metrics.jsonl        one JSON object per log / evaluation: {"step": …, "train/loss": …}
    checkpoints/<step>/  orbax checkpoints: the latest `checkpoint.keep` plus the best evaluation
    tensorboard/         only if tensorboardX (or torch's SummaryWriter) is installed:
                         ``pip install "wsl[tensorboard]"`` (``-e ".[tensorboard]"`` in a clone)

Resuming is announced on stdout (``resumed from step N (of M) in RUN_DIR``), so that a rerun
never continues an old run silently.

The training thread waits for the device only at evaluations and at checkpoints that fall on a
log step (the log is read first, so that a diverged state is never saved). Each update writes its
metrics into a small on-device record; a log copies that record to the host in the background
and reads it once the next update is queued behind it. A checkpoint queues a device copy of the
state and hands it to a checkpoint thread, which runs orbax's save while training goes on
(single-process runs with ``checkpoint.async_save``; otherwise the training thread saves, without
the copy, as orbax then synchronises processes with device programs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from wsl.config import save, to_dict
from wsl.errors import WslError
from wsl.mesh import finished, launches_one_at_a_time, replicated
from wsl.train.checkpoint import Checkpoints, load_params
from wsl.train.config import TrainConfig, flat_items
from wsl.train.early_stopping import EarlyStopping
from wsl.train.layout import (
    batch_sharding,
    check_batch_size,
    mesh_from_config,
    state_shardings,
    with_shardings,
)
from wsl.train.optim import make_optimizer, make_schedule
from wsl.train.pipeline import ArraySource, Augmentation, Pipeline, Position
from wsl.train.run_log import RunLog, read_records
from wsl.train.step import TrainState, make_init, make_train_step
from wsl.train.task import TaskError, check_task

StepCallback = Callable[[int, TrainState], None]  # called after every step
# Config keys a resumed run may change without a warning: they change what is shown, not the run.
QUIET_KEYS = ("log.progress",)


class TrainError(WslError, RuntimeError):
    """A run that cannot start or go on: a diverged loss, a checkpoint that does not fit."""


@dataclasses.dataclass
class TrainResult:
    """What `train` returns: the final state, every logged record, the best evaluation."""

    state: TrainState
    history: list[dict]
    run_dir: Path
    best_step: int | None
    best_value: float | None
    stopped_early: bool
    # Wall seconds that earlier calls spent training up to the checkpoint this one resumed from
    # (0 for a fresh run), so that a resumed run's time can be reported whole.
    earlier_seconds: float = 0.0

    @property
    def params(self):
        return self.state.params

    @property
    def ema_params(self):
        return self.state.ema

    def best_params(self, ema: bool | None = None):
        """Parameters of the best evaluation as numpy arrays (EMA ones if the run kept an EMA)."""
        ema = self.state.ema is not None if ema is None else ema
        return load_params(self.run_dir, "best", ema=ema)

    def curve(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of one logged quantity: ``"train/loss"``, ``"eval/kendall_tau"``, …"""
        rows = [(r["step"], float(r[key])) for r in self.history if key in r]
        if not rows:
            known = sorted({k for r in self.history for k in r} - {"step"})
            raise KeyError(f"nothing logged under {key!r}; logged: {known}")
        steps, values = zip(*rows)
        return np.asarray(steps), np.asarray(values)


def note_dropped(view, noun: str = "models") -> int:
    """Warn (one line under `wsl`) how many flagged-diverged rows `Zoo.select(finite=True)` left
    out (``dropped["diverged"]``; `Zoo.select` itself warns about unflagged NaN / inf weights);
    returns that number."""
    count = int(getattr(view, "dropped", {}).get("diverged", 0))
    if count:
        noun = noun.removesuffix("s") if count == 1 else noun
        warnings.warn(f"leaving out {count} {noun} of {view.path} that diverged (NaN or inf loss "
                      f"or weights)", stacklevel=3)
    return count


def _nonfinite_fields(source) -> str:
    """Which in-memory training fields hold NaN or inf, e.g. "x: 1 of 16 rows"; "" if none (or
    the source is not in memory, which is not scanned)."""
    if not isinstance(source, ArraySource):
        return ""
    bad = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(source.data):
        leaf = np.asarray(leaf)
        if leaf.dtype.kind != "f" or not leaf.ndim:
            continue
        rows = int((~np.isfinite(leaf.reshape(len(leaf), -1))).any(1).sum())
        if rows:
            name = jax.tree_util.keystr(path, simple=True, separator="/")
            bad.append(f"{name}: {rows} of {len(leaf)} rows")
    return "; ".join(bad)


class Trainer:
    """One run of `task` under `config` in `run_dir`; `fit` trains (or resumes) it.

    `label` names the run on its progress bar and in the resume notice (``"autoencoder"``).
    """

    def __init__(self, task, config: TrainConfig, run_dir: str | Path, *,
                 label: str | None = None):
        self.task, self.config, self.run_dir = task, config, Path(run_dir)
        self.label = label
        self.mesh = mesh_from_config(config.mesh)
        check_batch_size(config.batch_size, self.mesh, config.microbatch)
        self.batch_sharding = batch_sharding(self.mesh)
        self.schedule = make_schedule(config.optimizer, config.steps)
        self.tx = make_optimizer(config.optimizer, self.schedule)
        self.state_shardings = None  # known once the first batch fixes the parameter shapes
        self._source = None

    # ------------------------------------------------------------------ setup
    def _save_config(self) -> None:
        if jax.process_index() != 0:
            return
        path = self.run_dir / "config.json"
        if path.exists():
            # A key the saved file lacks was added to the config after the run began: it ran
            # with that key's default.
            before = {**flat_items(to_dict(type(self.config)())),
                      **flat_items(json.loads(path.read_text()))}
            now = flat_items(to_dict(self.config))
            changed = sorted(k for k in before.keys() | now.keys()
                             if before.get(k) != now.get(k) and k not in QUIET_KEYS)
            if changed:
                warnings.warn(f"{path}: continuing the run with changed config keys {changed}",
                              stacklevel=4)
        save(self.config, path)

    def _start(self, pipeline: Pipeline, checkpoints: Checkpoints) -> tuple[TrainState, dict]:
        """A fresh state on the mesh, or the latest checkpoint restored onto it."""
        cfg = self.config
        example = pipeline.device_batch(Position(0, 0), self.batch_sharding)
        seed = np.uint32(cfg.seed)
        init = make_init(self.task, self.tx, use_ema=cfg.ema_decay > 0)
        abstract = jax.eval_shape(init, seed, example)
        self.state_shardings = state_shardings(abstract, self.mesh, cfg.mesh.fsdp_min_size)
        identity = {"rows": len(pipeline), "batch_size": cfg.batch_size, "seed": cfg.seed,
                    "shuffle": cfg.data.shuffle}
        latest = checkpoints.latest_step()
        if latest is None:
            state = finished(jax.jit(init, out_shardings=self.state_shardings)(seed, example),
                             self.mesh)
            stopper = EarlyStopping(cfg.eval.mode, cfg.eval.patience, cfg.eval.min_delta)
            return state, {"step": 0, "position": [0, 0], "early_stopping": stopper.to_dict(),
                           "finished": False, "stopped_early": False, **identity}
        if not cfg.checkpoint.resume:
            raise TrainError(f"{self.run_dir} already holds checkpoints (latest step {latest}); "
                             f"set checkpoint.resume=true to continue it or choose a new run_dir")
        state, meta = checkpoints.restore(latest, with_shardings(abstract, self.state_shardings))
        for key, value in identity.items():
            if meta.get(key) != value:
                raise TrainError(f"cannot resume {self.run_dir} at step {latest}: it was trained "
                                 f"with {key}={meta.get(key)!r}, now {key}={value!r}; resuming "
                                 f"exactly needs the same data and config (or use a new run_dir)")
        return state, meta

    def _announce_resume(self, meta: dict) -> None:
        """Say on stdout that a run continues from a checkpoint, and whether anything is left."""
        step = int(meta["step"])
        if step == 0 or jax.process_index() != 0:
            return
        steps = self.config.steps
        what = f"{self.label}: " if self.label else ""
        line = f"{what}resumed from step {step} (of {steps}) in {self.run_dir}"
        if meta.get("stopped_early"):
            line += ": it stopped early (no improvement), nothing left to train"
        elif meta["finished"] or step >= steps:
            line += ": already finished, nothing left to train"
        print(line, flush=True)

    # ------------------------------------------------------------------ pieces of the loop
    def _evaluate(self, state: TrainState, eval_data) -> dict[str, float]:
        cfg = self.config.eval
        params = state.ema if cfg.use_ema and state.ema is not None else state.params
        metrics = self.task.evaluate(params, eval_data)
        if not isinstance(metrics, Mapping):
            raise TaskError(f"{type(self.task).__name__}.evaluate returned "
                            f"{type(metrics).__name__}; it must return a dict of metrics")
        metrics = {str(k): float(v) for k, v in metrics.items()}
        if cfg.metric is not None and cfg.metric not in metrics:
            raise TrainError(f"eval.metric={cfg.metric!r} is not among the metrics "
                             f"{type(self.task).__name__}.evaluate returned: {sorted(metrics)}")
        return metrics

    def _log_training(self, log: RunLog, step: int, count: int, record) -> None:
        """Write the mean metrics of the `count` updates up to `step`, read from `record` (see
        `_recording`; as `_fetch` returns it)."""
        rows = np.arange(step - count, step) % len(jax.tree.leaves(record)[0])  # in step order
        means = {f"train/{k}": float(np.mean(v[rows])) for k, v in jax.device_get(record).items()}
        loss = means["train/loss"]
        if not math.isfinite(loss):
            when = f"by step {step} (mean of steps {step - count + 1}–{step})"
            bad = _nonfinite_fields(self._source)
            if bad:
                raise TrainError(f"training loss became {loss} {when}: the training data holds "
                                 f"NaN or inf values ({bad}); leave those rows out")
            raise TrainError(f"training loss became {loss} {when}: the learning rate may be too "
                             f"high (lower optimizer.lr) or the data may hold NaN or inf values "
                             f"(e.g. diverged networks in a zoo)")
        rate = log.advance(step, loss)
        log.write(step, {**means, "train/steps_per_sec": rate})

    @staticmethod
    def _fetch(record) -> dict:
        """`record` as this process's own copy (it is replicated), its copy to the host started:
        reading it later waits for the device but not for a transfer."""
        local = jax.tree.map(lambda a: a.addressable_data(0), record)
        for leaf in jax.tree.leaves(local):
            leaf.copy_to_host_async()
        return local

    # ------------------------------------------------------------------ the loop
    def fit(self, data, eval_data: Any = None, *, augment: Sequence[Augmentation] = (),
            hooks: Sequence[StepCallback] = ()) -> TrainResult:
        """Train on `data` (a row source or a dict of arrays with a leading row axis).

        `eval_data` goes to ``task.evaluate`` every `eval.every` steps and at the end; `augment`
        hooks run on every batch; `hooks` are called as ``hook(step, state)`` once each update
        has been evaluated and its checkpoint (if any) handed on; a log's training metrics are
        written by then if the step also saves a checkpoint (evaluations and the end do), else
        with the next update (reading the state from a hook synchronises the device; keep no
        reference to it, the next update donates its buffers).
        """
        cfg = self.config
        check_task(self.task, needs_evaluate=eval_data is not None)
        source = ArraySource(data) if isinstance(data, Mapping) else data
        self._source = source
        pipeline = Pipeline(source, cfg.batch_size, seed=cfg.seed, shuffle=cfg.data.shuffle,
                            augment=augment, prefetch=cfg.data.prefetch)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # A save in a thread of its own must not launch programs: orbax synchronises several
        # processes with one, and a mesh of CPU devices runs one program at a time.
        background = (cfg.checkpoint.async_save and jax.process_count() == 1
                      and not launches_one_at_a_time(self.mesh))
        checkpoints = Checkpoints(self.run_dir / "checkpoints", keep=cfg.checkpoint.keep,
                                  metric=cfg.eval.metric, mode=cfg.eval.mode,
                                  async_save=cfg.checkpoint.async_save, background=background)
        try:
            state, meta = self._start(pipeline, checkpoints)
            self._save_config()  # only once the run is known to start or resume
            self._announce_resume(meta)
            stopper = EarlyStopping.from_dict({**meta["early_stopping"], "mode": cfg.eval.mode,
                                               "patience": cfg.eval.patience,
                                               "min_delta": cfg.eval.min_delta})
            # Training seconds up to the checkpoint (none for a fresh run, nor from checkpoints
            # written before they were kept).
            meta.setdefault("seconds", 0.0)
            earlier = meta["seconds"]
            if meta["finished"] or meta["step"] >= cfg.steps:
                return TrainResult(state, read_records(self.run_dir), self.run_dir,
                                   stopper.best_step, stopper.best_value, meta["stopped_early"],
                                   earlier)
            state, stopped_early = self._loop(state, meta, stopper, pipeline, checkpoints,
                                              eval_data, hooks, background)
        finally:
            checkpoints.close()
        return TrainResult(state, read_records(self.run_dir), self.run_dir, stopper.best_step,
                           stopper.best_value, stopped_early, earlier)

    def _loop(self, state, meta, stopper, pipeline, checkpoints, eval_data, hooks, background):
        cfg = self.config
        update = make_train_step(self.task, self.tx, self.schedule, cfg.ema_decay,
                                 cfg.microbatch)
        rows = min(cfg.log.every, cfg.steps)  # never more updates than that between two logs
        metrics_sharding = replicated(self.mesh)
        train_step = jax.jit(_recording(update, rows),
                             in_shardings=(self.state_shardings, self.batch_sharding,
                                           metrics_sharding),
                             out_shardings=(self.state_shardings, metrics_sharding),
                             donate_argnums=0)
        # A background save reads its state while the next updates run, and they donate theirs.
        copy_state = (jax.jit(lambda tree: jax.tree.map(jnp.copy, tree),
                              out_shardings=self.state_shardings) if background else None)
        step, stopped_early = int(meta["step"]), False
        # Training time up to each checkpoint, over every call that trained it (kept in its meta).
        started = time.perf_counter()
        record, count = None, 0  # the metrics of the last `rows` updates; updates since the log
        fetching = None  # (step, count, record) of a log whose values are on their way to the host
        log = RunLog(self.run_dir, total_steps=cfg.steps, resume_step=step,
                     progress=cfg.log.progress, tensorboard=cfg.log.tensorboard,
                     primary=jax.process_index() == 0, label=self.label)
        batches = pipeline.iterate(Position(*meta["position"]), self.batch_sharding)
        try:
            while step < cfg.steps and not stopped_early:
                batch = next(batches)
                if record is None:
                    shapes = jax.eval_shape(update, state, batch)[1]
                    record = jax.device_put(jax.tree.map(
                        lambda s: np.zeros((rows, *s.shape), s.dtype), shapes), metrics_sharding)
                state, record = finished(train_step(state, batch, record), self.mesh)
                step, count = step + 1, count + 1
                if fetching is not None:  # read now that this update is queued behind it
                    self._log_training(log, *fetching)
                    fetching = None
                last = step == cfg.steps
                evaluation, new_best = None, None
                due = last or (cfg.eval.every and step % cfg.eval.every == 0)
                if eval_data is not None and due:
                    evaluation = self._evaluate(state, eval_data)
                    if cfg.eval.metric is not None:
                        if stopper.update(step, evaluation[cfg.eval.metric]):
                            new_best = evaluation[cfg.eval.metric]
                        stopped_early = stopper.should_stop and not last
                save = (last or stopped_early or evaluation is not None
                        or (cfg.checkpoint.every and step % cfg.checkpoint.every == 0))
                if last or stopped_early or step % cfg.log.every == 0:
                    if save:
                        self._log_training(log, step, count, self._fetch(record))
                    else:
                        fetching = step, count, self._fetch(record)
                    count = 0
                if evaluation is not None:
                    log.write(step, {f"eval/{k}": v for k, v in evaluation.items()})
                if save:
                    # Nothing donates the state after the last update: it needs no copy.
                    final = last or stopped_early
                    saved = state if copy_state is None or final else copy_state(state)
                    checkpoints.save(step, saved, {
                        **meta, "step": step, "position": list(batches.position),
                        "early_stopping": stopper.to_dict(), "finished": final,
                        "stopped_early": stopped_early,
                        "seconds": meta["seconds"] + time.perf_counter() - started}, new_best)
                for hook in hooks:
                    hook(step, state)
        except BaseException:
            if fetching is not None:  # its update did happen: keep its record, as before
                with contextlib.suppress(Exception):
                    self._log_training(log, *fetching)
            raise
        finally:
            batches.close()
            log.close()
        return state, stopped_early


def _recording(update, rows: int):
    """`update` that also writes its metrics into row ``state.step % rows`` of `record` (arrays
    with a leading axis of `rows`), so that a log fetches one array per metric rather than one per
    metric and update. `record` is not donated: a log reads it while the next updates run."""

    def train_step(state: TrainState, batch, record):
        row = state.step % rows
        state, metrics = update(state, batch)
        return state, jax.tree.map(lambda r, m: r.at[row].set(m), record, metrics)

    return train_step


def train(task, config: TrainConfig, data, run_dir: str | Path, *, eval_data: Any = None,
          augment: Sequence[Augmentation] = (), hooks: Sequence[StepCallback] = (),
          label: str | None = None) -> TrainResult:
    """Train `task` on `data` under `config`, writing (and resuming) the run in `run_dir`.

    `label` names the run on its progress bar and in the ``resumed from step N`` notice.
    """
    return Trainer(task, config, run_dir, label=label).fit(data, eval_data, augment=augment,
                                                           hooks=hooks)
