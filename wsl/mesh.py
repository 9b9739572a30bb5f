"""Device-mesh helpers: one way to build a mesh and place populations and batches on it.

The same code runs on one CPU, on fake CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``), on one GPU or on many hosts.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from wsl.errors import UsageError

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def make_mesh(axis_names: Sequence[str] = ("data",), shape: Sequence[int] | None = None,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over `devices` (default: all); `shape` defaults to every device on the first axis."""
    devices = list(jax.devices() if devices is None else devices)
    if shape is None:
        shape = (len(devices),) + (1,) * (len(axis_names) - 1)
    shape = tuple(int(s) for s in shape)
    if len(shape) != len(axis_names):
        raise UsageError(f"mesh shape {shape} does not match axis names {tuple(axis_names)}")
    if int(np.prod(shape)) != len(devices):
        raise UsageError(f"mesh shape {shape} needs {int(np.prod(shape))} devices, "
                         f"{len(devices)} are available")
    return Mesh(np.asarray(devices).reshape(shape), tuple(axis_names))


def describe_mesh(mesh: Mesh) -> str:
    """One line naming the devices a run uses: ``mesh: 1 device (cpu)``, ``mesh: data=8 × fsdp=1
    over 8 cpu devices``, ``... over 4 cpu devices of 2 processes``."""
    devices = list(mesh.devices.flat)
    kind = "/".join(sorted({d.platform for d in devices}))
    if len(devices) == 1:
        return f"mesh: 1 device ({kind})"
    axes = " × ".join(f"{name}={size}" for name, size in mesh.shape.items())
    processes = len({d.process_index for d in devices})
    where = f" of {processes} processes" if processes > 1 else ""
    return f"mesh: {axes} over {len(devices)} {kind} devices{where}"


def cpu_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _cpu_devices_set_elsewhere() -> bool:
    """Whether the CPU device count was already chosen: by XLA_FLAGS, JAX_NUM_CPU_DEVICES or the
    jax_num_cpu_devices setting."""
    return (DEVICE_COUNT_FLAG in os.environ.get("XLA_FLAGS", "")
            or getattr(jax.config, "jax_num_cpu_devices", -1) != -1)


def split_cpu(count: int | None = None) -> int | None:
    """Give JAX's CPU backend `count` devices (None: one per core); returns the count set, or None
    where the process keeps the devices it has.

    For work made of independent parts, a population of models split over its model axis: XLA:CPU
    spreads a single program's small operations over the cores poorly (a small-CNN population
    step keeps ~1.3 of 2 cores busy), while one program per device runs the devices side by side
    (`benchmarks/zoo_build.py` on 2 cores: 7.3 small-CNN models a second against 4.6 on one).
    Results agree with one device up to float rounding, as on any other mesh.

    The count is fixed when JAX starts its backends, so this must run first: in a process where
    JAX already ran (the test suite, a notebook), None (`count` given explicitly: an error). A
    count chosen elsewhere (XLA_FLAGS, JAX_NUM_CPU_DEVICES) wins, and with no explicit `count` a
    multi-process run keeps its own (`wsl launch --devices-per-process`). Only the CPU backend
    changes; a GPU or TPU host's default devices stay as they are.
    """
    from jax._src import xla_bridge  # whether the backends started: no public API says so

    from wsl.distributed import requested

    if count is not None and count < 1:
        raise UsageError(f"the CPU device count must be ≥ 1, got {count}")
    fixed = None
    if _cpu_devices_set_elsewhere():
        fixed = (f"the count is already set (XLA_FLAGS {DEVICE_COUNT_FLAG}, "
                 f"JAX_NUM_CPU_DEVICES or jax_num_cpu_devices)")
    elif xla_bridge.backends_are_initialized():
        fixed = "JAX has already started in this process"
    if fixed:
        if count is not None and count != len(jax.devices("cpu")):
            raise UsageError(f"cannot split the CPU into {count} devices: {fixed}")
        return None
    if count is None:
        if requested():
            return None
        count = cpu_cores()
    if count == 1:
        return None
    if hasattr(jax.config, "jax_num_cpu_devices"):
        jax.config.update("jax_num_cpu_devices", count)
    else:  # older JAX: the flag, read when the backends start
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} " \
                                  f"{DEVICE_COUNT_FLAG}={count}".strip()
    return count


def device_summary() -> str:
    """The devices JAX sees, as result files record them: ``1 × cpu (cpu)``, ``1 × gpu (NVIDIA
    H200)``."""
    device = jax.devices()[0]
    return f"{jax.device_count()} × {device.platform} ({device.device_kind})"


def host_summary() -> str:
    """The processor and the cores this process may use, as speed results record them (``AMD
    EPYC, 2 cores``): a speed ratio against a baseline is a property of the host as much as of
    the code (the per-model loops of `benchmarks/zoo_build.py` ran 53 % faster on one 2-core host
    than on another)."""
    try:
        with open("/proc/cpuinfo") as f:  # Linux: platform.processor() says only "x86_64"
            model = next((line.split(":", 1)[1].strip() for line in f
                          if line.startswith("model name")), None)
    except OSError:
        model = None
    model = model or platform.processor() or platform.machine()
    return f"{model}, {cpu_cores()} cores"


def describe_default_device(what: str) -> str:
    """The mesh line of work that is not sharded (`what`: "merging", "sampling"): it runs on
    JAX's default device whatever else is there."""
    devices = jax.devices()
    line = f"mesh: 1 device ({devices[0].platform})"
    if len(devices) > 1:
        line += f"; {what} is not sharded, {len(devices)} {devices[0].platform} devices available"
    return line


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def leading_axis(mesh: Mesh, axis: str | None = None) -> NamedSharding:
    """Shard the leading (model or batch) axis over mesh axis `axis` (default: the first)."""
    return NamedSharding(mesh, P(axis or mesh.axis_names[0]))


def axis_size(mesh: Mesh, axis: str | None = None) -> int:
    return int(mesh.shape[axis or mesh.axis_names[0]])


def round_up(n: int, multiple: int) -> int:
    """Smallest multiple of `multiple` ≥ n: a sharded leading axis must divide evenly."""
    return -(-n // multiple) * multiple


def shard_leading(tree, mesh: Mesh, axis: str | None = None):
    """Place every leaf with its leading axis split over `axis`; the axis must divide evenly."""
    size = axis_size(mesh, axis)
    for leaf in jax.tree.leaves(tree):
        if np.shape(leaf)[0] % size:
            raise UsageError(f"leading axis {np.shape(leaf)[0]} is not divisible by the "
                             f"{size} devices of mesh axis {axis or mesh.axis_names[0]!r}; "
                             f"pad to {round_up(np.shape(leaf)[0], size)}")
    return jax.device_put(tree, leading_axis(mesh, axis))


def launches_one_at_a_time(mesh: Mesh) -> bool:
    """Whether each multi-device program on `mesh` must finish before the next is launched.

    True for a mesh of several CPU devices. XLA:CPU runs every device's share of a program as a
    task on one shared thread pool, and a device waiting in a collective (an all-reduce of
    gradients) holds its thread. With two programs in flight, the devices that already started
    the second can hold every thread while the last device still needs one to finish the first,
    and the all-reduce then waits for ever (seen as ``only 7 of 8 arrived``). Waiting costs
    nothing that matters on fake CPU devices; GPUs and TPUs queue programs per device and keep
    asynchronous dispatch.
    """
    devices = list(mesh.devices.flat)
    return len(devices) > 1 and all(d.platform == "cpu" for d in devices)


def finished(tree, mesh: Mesh):
    """`tree`, waited for when `mesh` launches one program at a time (else returned at once)."""
    return jax.block_until_ready(tree) if launches_one_at_a_time(mesh) else tree
