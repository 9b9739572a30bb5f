"""The trainer's mesh and shardings: batches split over all devices, large parameters over fsdp.

The mesh has two axes, ``("data", "fsdp")``. A batch's leading axis is split over both (every
device sees a different slice of the batch); a state leaf with at least ``fsdp_min_size`` elements
has its largest axis that divides evenly split over ``fsdp`` (FSDP-style: XLA gathers it for the
forward pass), everything else is replicated. The rule looks only at shapes, so optimizer moments
and EMA copies get the same sharding as their parameters.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from wsl.config import ConfigError
from wsl.mesh import make_mesh
from wsl.train.config import MeshConfig, TrainConfig

AXES = ("data", "fsdp")
BATCH_SPEC = P(AXES)


def mesh_from_config(config: MeshConfig, devices=None) -> Mesh:
    devices = list(jax.devices() if devices is None else devices)
    data = config.data if config.data != -1 else len(devices) // config.fsdp
    if data < 1 or data * config.fsdp > len(devices):
        raise ConfigError(f"mesh.data={config.data} × mesh.fsdp={config.fsdp} needs "
                          f"{max(data, 1) * config.fsdp} devices; {len(devices)} are available")
    return make_mesh(AXES, (data, config.fsdp), devices[: data * config.fsdp])


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, BATCH_SPEC)


def check_batch_size(batch_size: int, mesh: Mesh, microbatch: int = 0) -> None:
    shards = mesh.devices.size
    if batch_size % shards:
        raise ConfigError(f"batch_size={batch_size} must divide evenly over the mesh's {shards} "
                          f"devices (mesh {dict(mesh.shape)}); use a multiple of {shards}")
    if microbatch and microbatch % shards:
        raise ConfigError(f"microbatch={microbatch} must divide evenly over the mesh's {shards} "
                          f"devices (mesh {dict(mesh.shape)}); use a multiple of {shards}")


def fit_batch_size(config: TrainConfig, rows: int, what: str = "rows") -> int:
    """`config.batch_size`, cut to `rows` for a small dataset (every row in every batch) and
    rounded down to a multiple of the mesh's device count (of `config.microbatch` when set)."""
    devices = mesh_from_config(config.mesh).devices.size
    unit = config.microbatch or devices
    size = min(config.batch_size, rows)
    size -= size % unit
    if size < 1:
        raise ConfigError(f"{rows} {what} cannot fill one batch of a multiple of {unit} "
                          f"({'microbatch' if config.microbatch else 'devices'}); use more "
                          f"{what}, fewer devices (mesh.data) or a smaller microbatch")
    return size


def leaf_spec(shape: tuple[int, ...], fsdp: int, min_size: int) -> P:
    """Split the largest evenly divisible axis of a large leaf over ``fsdp``; else replicate."""
    if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
        if shape[axis] % fsdp == 0:
            return P(*(("fsdp" if a == axis else None) for a in range(len(shape))))
    return P()


def state_shardings(abstract_state, mesh: Mesh, min_size: int):
    """A `NamedSharding` for every leaf of `abstract_state` (shapes from `jax.eval_shape`)."""
    fsdp = int(mesh.shape["fsdp"])
    return jax.tree.map(lambda leaf: NamedSharding(mesh, leaf_spec(leaf.shape, fsdp, min_size)),
                        abstract_state)


def with_shardings(abstract_state, shardings):
    """Shape/dtype structs carrying target shardings: what orbax restores onto."""
    return jax.tree.map(lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s),
                        abstract_state, shardings)

