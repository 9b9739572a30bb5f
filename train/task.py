"""The `Task` protocol: what a model brings to the trainer (init, loss, evaluation).

The trainer owns everything else — optimizer, mesh and shardings, compilation, checkpoints,
logging, the input pipeline. A task is any object with these methods::

    init(key, batch) -> params
        Parameters for one example batch (a dict of arrays with a leading batch axis, already on
        the mesh). Called under `jax.jit`, so it must be pure.
    loss(params, batch, key) -> (loss, aux)
        A scalar loss to minimise and a dict of scalar metrics to log (may be empty). Called under
        `jax.jit` inside `jax.value_and_grad`; `key` is fresh every step.
    evaluate(params, data) -> dict[str, float]          (optional)
        Host-side evaluation on whatever `data` the caller passed to `train(..., eval_data=)`:
        validation Kendall τ for an encoder, sample accuracy for a generator. Compile its hot
        parts yourself; the trainer calls it every `eval.every` steps and at the end.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import jax

from wsl.errors import WslError

Batch = Mapping[str, Any]
Params = Any


class TaskError(WslError, TypeError):
    """An object passed as a task lacks a method the trainer needs."""


class Task(Protocol):
    def init(self, key: jax.Array, batch: Batch) -> Params: ...

    def loss(self, params: Params, batch: Batch, key: jax.Array) -> tuple[jax.Array, dict]: ...


def check_task(task: Any, needs_evaluate: bool) -> None:
    """Refuse a task that lacks `init` / `loss` (or `evaluate` when evaluation data was given)."""
    needed = ["init", "loss"] + (["evaluate"] if needs_evaluate else [])
    missing = [name for name in needed if not callable(getattr(task, name, None))]
    if missing:
        why = " (evaluate is needed because eval_data was given)" if "evaluate" in missing else ""
        raise TaskError(f"{type(task).__name__} is not a task: it has no "
                        f"{' and no '.join(missing)} method{why}; see train/task.py")
