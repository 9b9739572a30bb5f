"""Device-mesh helpers: one way to build a mesh and place populations and batches on it.

The same code runs on one CPU, on fake CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``), on one GPU or on many hosts.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from wsl.errors import UsageError


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


def device_summary() -> str:
    """The devices JAX sees, as result files record them: ``1 × cpu (cpu)``, ``1 × gpu (NVIDIA
    H200)``."""
    device = jax.devices()[0]
    return f"{jax.device_count()} × {device.platform} ({device.device_kind})"


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
