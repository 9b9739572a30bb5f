"""Run checkpoints with orbax: asynchronous saves, the latest n plus the best, restored on any mesh.

Each checkpoint step holds two items: ``state`` (the `TrainState` arrays) and ``meta`` (JSON: the
input pipeline's position, the early-stopping record, the data sizes the run was started with).
Restoring takes target shardings, so a run saved on one mesh continues on another. Arrays are
written without compression: zstd gains under a tenth on trained weights and costs about a third
of a save's CPU time (checkpoints written compressed by earlier versions restore as before).

A pipeline's output folder (a probe, a generator) records what it holds in a JSON file written
before anything else; `claim_run_dir` compares a new request with that record before anything is
written, so a rerun resumes its own run and never another's.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from wsl.errors import WslError
from wsl.outputs import check_output_dir
from wsl.train.config import flat_items

STATE, META = "state", "meta"

# With best_fn set (see Checkpoints), orbax warns at every save without metrics; only new bests
# carry them, by design.
logging.getLogger("absl").addFilter(
    lambda record: "did not provide metrics" not in record.getMessage())


def _array_types():
    """orbax's types, but jax arrays without a sharding file and an array-metadata file: a restore
    is always given target shardings (or reads numpy arrays), and the files cost a tenth of a
    save's CPU time."""
    return ocp.type_handlers.create_type_handler_registry(
        (jax.Array, ocp.type_handlers.ArrayHandler(enable_write_sharding_file=False)),
        (np.ndarray, ocp.type_handlers.NumpyHandler()),
        (np.number, ocp.type_handlers.ScalarHandler()),
        (int, ocp.type_handlers.ScalarHandler()),
        (float, ocp.type_handlers.ScalarHandler()))


class CheckpointError(WslError, FileNotFoundError):
    """No checkpoint where one was asked for."""


class RunDirError(WslError, ValueError):
    """An output folder that holds something other than the run asked for."""


_UNSET = object()


def _show(value: Any) -> str:
    if value is _UNSET:
        return "unset"
    text = repr(value)
    return text if len(text) <= 60 else text[:55] + "...'"


# The keys of a run record that name the zoo it read (a record older than a key lacks it).
_ZOO_IDENTITY = ("zoo_sha256", "zoo_fingerprint")


def claim_run_dir(directory: str | Path, record: Mapping[str, Any], *, file: str, what: str,
                  option: str = "--out", mutable: Sequence[str] = (),
                  defaults: Mapping[str, Any] | None = None) -> bool:
    """May `directory` hold the run `record` describes? True if it holds that run already.

    Nothing is written. Refused, as a `WslError` naming the fault: a folder that is a file, not
    writable or inside a zoo (`wsl.outputs.check_output_dir`); a folder whose `file` records a
    different run (the first differing key is named, e.g. "target='test_acc', not 'gap'"); a
    non-empty folder without `file`. `record` is compared key by key (nested dicts flattened to
    ``a.b``), except for keys under a `mutable` prefix (settings a resumed run may change, details
    the request does not fix); a key the stored record lacks is skipped when the new value is None
    or its value in `defaults` (a record of the same shape holding the configs' defaults): a
    record written before the key existed, which ran with that default. The zoo is known by its
    content: when both records have ``zoo_fingerprint`` (`wsl.zoos.store.zoo_fingerprint`), the
    zoo's path and manifest file may change (a rebuild of the same zoo, elsewhere); records
    written before the fingerprint existed compare ``zoo_sha256`` (the manifest file's hash) and
    let the path change.
    """
    directory = check_output_dir(directory, option=option)
    path = directory / file
    if not path.exists():
        if directory.is_dir() and any(directory.iterdir()):
            raise RunDirError(f"{option} {directory} is not empty and has no {file}, so it is "
                              f"not {what} folder; choose a new or empty folder")
        return False
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise RunDirError(f"{path}: not a readable {what} record ({err}); choose another "
                          f"{option}") from None
    if not isinstance(stored, dict):
        raise RunDirError(f"{path}: not a {what} record (a JSON object); choose another {option}")
    new = flat_items(json.loads(json.dumps(dict(record), default=list)))
    old = flat_items(stored)
    default = flat_items(json.loads(json.dumps(dict(defaults or {}), default=list)))
    skip = tuple(mutable)
    if "zoo_fingerprint" in old and "zoo_fingerprint" in new:
        skip += ("zoo", "zoo_sha256")
    elif "zoo_sha256" in old and "zoo_sha256" in new:
        skip += ("zoo",)
    differ = []
    for key in list(new) + [k for k in old if k not in new]:
        if any(key == m or key.startswith(m + ".") for m in skip):
            continue
        if key.split(".")[0] not in record:
            continue  # stored details the request does not describe (architecture, timings)
        before, now = old.get(key, _UNSET), new.get(key, _UNSET)
        if before is _UNSET and (now is None or key in _ZOO_IDENTITY
                                 or default.get(key, _UNSET) == now):
            continue  # a record written before the key existed
        if before != now:
            differ.append((key, before, now))
    if not differ:
        return True
    key, before, now = differ[0]
    if key in _ZOO_IDENTITY:
        then, zoo = stored.get("zoo"), record.get("zoo")
        fault = (f"of the zoo {then}, not {zoo}" if then != zoo
                 else f"of an earlier version of the zoo {zoo} (its "
                 f"{'content' if key == 'zoo_fingerprint' else 'manifest'} changed)")
    else:
        fault = f"with {key}={_show(before)}, not {_show(now)}"
    more = (f" (and {len(differ) - 1} more differences: "
            f"{', '.join(k for k, _, _ in differ[1:4])}{', ...' if len(differ) > 4 else ''})"
            if len(differ) > 1 else "")
    raise RunDirError(f"{option} {directory} holds {what} {fault}{more}; choose another {option} "
                      f"or delete {directory} to start over")


class Checkpoints:
    """The checkpoints of one run in `directory`; `metric` (with `mode`) selects the best one.

    With `background` (for single-process runs), `save` hands each save to a worker thread and
    returns at once: the training thread never waits for orbax (step folders, the device→host
    copy, its thread start-ups) while the device runs dry. The worker copies the arrays to the host
    itself, as orbax writes numpy arrays with a quarter less CPU time than device arrays (they
    restore onto any sharding alike). The saved arrays must stay alive and must not be donated
    until then: the trainer passes a device copy of its state. A failed background save raises at
    the next `save` or at `close`.
    """

    def __init__(self, directory: str | Path, *, keep: int, metric: str | None = None,
                 mode: str = "max", async_save: bool = True, background: bool = False):
        self.metric = metric
        keep_policies = [policies.LatestN(n=keep)]
        score = None if metric is None else (lambda metrics: metrics[metric])
        if score is not None:
            keep_policies.append(policies.BestN(
                get_metric_fn=score, reverse=(mode == "min"), n=1,
                keep_checkpoints_without_metrics=False))
        # best_fn makes orbax write each new best's metrics beside it and read them back when a
        # run resumes: without it, BestN knew only the metrics saved in this process, and the
        # first save after a resume deleted the best checkpoint of the run before it.
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policies.AnyPreservationPolicy(keep_policies),
            best_fn=score,
            best_mode=mode,
            # Behind the worker, orbax's own asynchronous commit would only add threads (and a
            # tenth of a save's CPU time).
            enable_async_checkpointing=async_save and not background, create=True)
        handlers = {STATE: ocp.PyTreeCheckpointHandler(use_compression=False,
                                                       type_handler_registry=_array_types()),
                    META: ocp.JsonCheckpointHandler()}
        self.manager = ocp.CheckpointManager(Path(directory).absolute(), options=options,
                                             item_handlers=handlers)
        self._worker = (ThreadPoolExecutor(1, thread_name_prefix="wsl-checkpoint")
                        if background else None)
        self._saving: Future | None = None

    def latest_step(self) -> int | None:
        self._wait_for_worker()
        return self.manager.latest_step()

    def save(self, step: int, state, meta: dict, best: float | None = None) -> None:
        """Start saving `state` at `step`; returns once the arrays are copied off the device (at
        once with `background`).

        `best` is the metric's value when this step's evaluation is a new best; the best such
        checkpoint is kept beside the latest ones. (Only new bests carry it, so "best" means what
        early stopping says, `min_delta` included.)
        """
        metrics = None if best is None else {self.metric: float(best)}
        if self._worker is None:
            self._write(step, state, meta, metrics)
            return
        # As orbax's own save does, finish the previous checkpoint before starting one: a run killed
        # then still finds it, and a slow disk holds back training instead of piling up copies.
        self._wait_for_worker()
        self._saving = self._worker.submit(self._write, step, state, meta, metrics, on_host=True)

    def _write(self, step: int, state, meta: dict, metrics: dict | None,
               on_host: bool = False) -> None:
        if on_host:
            state = jax.tree.map(np.asarray, state)
        self.manager.save(step, args=ocp.args.Composite(
            **{STATE: ocp.args.PyTreeSave(state), META: ocp.args.JsonSave(meta)}),
            metrics=metrics, force=True)

    def wait(self) -> None:
        """Wait until every save started is written (raising a failed one's error)."""
        self._wait_for_worker()
        self.manager.wait_until_finished()

    def _wait_for_worker(self) -> None:
        saving, self._saving = self._saving, None
        if saving is not None:
            saving.result()

    def restore(self, step: int, target) -> tuple[Any, dict]:
        """The state at `step` placed like `target` (shape structs with shardings), and meta."""
        self._wait_for_worker()
        state = ocp.args.PyTreeRestore(
            item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target))
        restored = self.manager.restore(step, args=ocp.args.Composite(
            **{STATE: state, META: ocp.args.JsonRestore()}))
        return restored[STATE], restored[META]

    def close(self) -> None:
        """Wait for saves in flight, then release the manager."""
        try:
            self._wait_for_worker()
        finally:
            if self._worker is not None:
                self._worker.shutdown()
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
