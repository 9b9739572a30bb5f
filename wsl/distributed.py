"""Several JAX processes (hosts) as one run, on JAX's own distributed runtime.

A process joins a multi-process run when `initialize()` finds one described in its environment:

* ``JAX_COORDINATOR_ADDRESS`` (host:port of process 0), ``WSL_NUM_PROCESSES`` and
  ``WSL_PROCESS_ID``: what `wsl launch` sets for local processes, and what a person sets by hand
  on each host of a cluster without a scheduler;
* a SLURM allocation of several tasks (``srun``): JAX reads the job's own variables.

Otherwise the run is one process, as before. On CPU the cross-process collectives are gloo's.
Every `wsl` command calls `initialize()` before it touches a device.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from wsl.errors import UsageError

COORDINATOR = "JAX_COORDINATOR_ADDRESS"
NUM_PROCESSES = "WSL_NUM_PROCESSES"
PROCESS_ID = "WSL_PROCESS_ID"


def _int_env(name: str) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"{name}={value!r} must be an integer") from None


def requested() -> bool:
    """Whether the environment asks for a multi-process run."""
    if os.environ.get(NUM_PROCESSES) or os.environ.get(PROCESS_ID):
        return True
    return int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_JOB_ID" in os.environ


def initialize() -> bool:
    """Join the multi-process run the environment describes (see the module docstring); returns
    whether this process is part of one. Safe to call twice."""
    if not requested():
        return False
    if jax.distributed.is_initialized():
        return True
    if os.environ.get(NUM_PROCESSES) or os.environ.get(PROCESS_ID):
        missing = [n for n in (COORDINATOR, NUM_PROCESSES, PROCESS_ID) if not os.environ.get(n)]
        if missing:
            raise UsageError(f"a multi-process run needs {', '.join(missing)} set too "
                             f"(or start it with `wsl launch -n N -- wsl ...`)")
        count, index = _int_env(NUM_PROCESSES), _int_env(PROCESS_ID)
        if not 0 <= index < count:
            raise UsageError(f"{PROCESS_ID}={index} must be in [0, {NUM_PROCESSES}={count})")
        kwargs = {"coordinator_address": os.environ[COORDINATOR], "num_processes": count,
                  "process_id": index}
    else:
        kwargs = {}  # SLURM: JAX reads the allocation itself
    # Cross-process collectives on CPU need an implementation; gloo ships with jaxlib.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)
    return True


def is_primary() -> bool:
    """Process 0: the one that prints summaries and commits shared files."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process has reached the barrier called `name` (nothing with one)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def agree(values: list[int]) -> list[int]:
    """Process 0's list of small integers, handed to every process (one process: `values`)."""
    if jax.process_count() == 1:
        return list(values)
    from jax.experimental import multihost_utils

    length = int(multihost_utils.broadcast_one_to_all(np.int32(len(values))))
    padded = np.full(max(length, 1), -1, np.int32)
    if is_primary():
        padded[:length] = values
    return [int(v) for v in multihost_utils.broadcast_one_to_all(padded)[:length]]
