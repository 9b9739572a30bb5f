"""Run checkpoints with orbax: asynchronous saves, the latest n plus the best, restored on any mesh.

Each checkpoint step holds two items: ``state`` (the `TrainState` arrays) and ``meta`` (JSON: the
input pipeline's position, the early-stopping record, the data sizes the run was started with).
Restoring takes target shardings, so a run saved on one mesh continues on another.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from wsl.errors import WslError

STATE, META = "state", "meta"


class CheckpointError(WslError, FileNotFoundError):
    """No checkpoint where one was asked for."""


class Checkpoints:
    """The checkpoints of one run in `directory`; `metric` (with `mode`) selects the best one."""

    def __init__(self, directory: str | Path, *, keep: int, metric: str | None = None,
                 mode: str = "max", async_save: bool = True):
        self.metric = metric
        keep_policies = [policies.LatestN(n=keep)]
        if metric is not None:
            keep_policies.append(policies.BestN(
                get_metric_fn=lambda metrics: metrics[metric], reverse=(mode == "min"), n=1,
                keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policies.AnyPreservationPolicy(keep_policies),
            enable_async_checkpointing=async_save, create=True)
        self.manager = ocp.CheckpointManager(Path(directory).absolute(), options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, meta: dict, best: float | None = None) -> None:
        """Start saving `state` at `step`; returns once the arrays are copied off the device.

        `best` is the metric's value when this step's evaluation is a new best; the best such
        checkpoint is kept beside the latest ones. (Only new bests carry it, so "best" means what
        early stopping says, `min_delta` included.)
        """
        metrics = None if best is None else {self.metric: float(best)}
        self.manager.save(step, args=ocp.args.Composite(
            **{STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(meta)}),
            metrics=metrics, force=True)

    def restore(self, step: int, target) -> tuple[Any, dict]:
        """The state at `step` placed like `target` (shape structs with shardings), and meta."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            **{STATE: ocp.args.StandardRestore(target), META: ocp.args.JsonRestore()}))
        return restored[STATE], restored[META]

    def close(self) -> None:
        """Wait for saves in flight, then release the manager."""
        self.manager.wait_until_finished()
        self.manager.close()


def load_params(run_dir: str | Path, step: int | str = "best", ema: bool = False):
    """Parameters of a finished (or running) run as numpy arrays, on no particular mesh.

    `step` is ``"best"`` (the best evaluation; needs ``eval.metric``), ``"latest"`` or a step
    number; `ema` picks the exponential moving average instead of the raw parameters.
    """
    directory = Path(run_dir).absolute() / "checkpoints"
    if not directory.is_dir():
        raise CheckpointError(f"{directory} does not exist: no checkpoints in run {run_dir}")
    manager = ocp.CheckpointManager(
        # Not read_only=True, which only adds a warning: this manager never saves, so never deletes.
        directory, options=ocp.CheckpointManagerOptions(create=False),
        item_handlers={STATE: ocp.PyTreeCheckpointHandler(), META: ocp.JsonCheckpointHandler()})
    try:
        latest = manager.latest_step()
        if latest is None:
            raise CheckpointError(f"{directory} holds no checkpoints")
        if step == "latest":
            step = latest
        elif step == "best":
            meta = manager.restore(latest,
                                   args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))
            step = meta[META]["early_stopping"]["best_step"]
            if step is None:
                raise CheckpointError(f"run {run_dir} has no best step: set eval.metric and "
                                      f"give evaluation data")
        if int(step) not in manager.all_steps():
            raise CheckpointError(f"no checkpoint for step {step} in {directory}; "
                                  f"steps: {list(manager.all_steps())}")
        name = "ema" if ema else "params"
        tree = manager.item_metadata(int(step))[STATE].tree
        if tree.get(name) is None:
            raise CheckpointError(f"checkpoint {step} in {directory} has no {name!r} "
                                  f"(was ema_decay 0?)")
        item = {name: tree[name]}
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
        partial = ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True)
        restored = manager.restore(int(step), args=ocp.args.Composite(**{STATE: partial}))
        return restored[STATE][name]
    finally:
        manager.close()
