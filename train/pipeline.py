"""The zoo input pipeline: rows of a zoo → shuffled, augmented batches on the mesh, resumable.

A *row source* is anything with ``len(source)`` and ``source.get(rows) -> dict`` of numpy arrays
(or pytrees of them, e.g. a params tree) with a leading row axis: `ArraySource` for in-memory
arrays, `ZooSource` for a zoo. `Pipeline` cuts it into batches:

* every epoch visits every row once in an order drawn from (seed, epoch), so a run can restart at
  any `Position` (epoch, batch index) and see exactly the batches it would have seen; the last
  ``len % batch_size`` rows of an epoch's order are left out (static shapes for `jax.jit`);
* batches are placed on the mesh with the batch sharding, then augmentations
  ``augment(key, batch) -> batch`` (`wsl.models.augment.Augmentation`) run under `jax.jit` with a
  key drawn from (seed, position);
* a background thread reads and places the next `prefetch` batches while the device computes;
  augmentation runs on the consuming thread (see `Pipeline.augmented`).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

import jax
import numpy as np

from wsl.errors import WslError
from wsl.mesh import finished
from wsl.models.augment import Augmentation

_AUGMENT_STREAM = 0x61756700  # folds the seed into a key stream of its own ("aug")


class PipelineError(WslError, ValueError):
    """Rows that cannot become a batch: mismatched lengths, text columns, too few rows."""


@runtime_checkable
class RowSource(Protocol):
    def __len__(self) -> int: ...

    def get(self, rows: np.ndarray) -> Mapping[str, Any]: ...


class Position(NamedTuple):
    """Where an iterator stands: the next batch is batch `index` of epoch `epoch`."""

    epoch: int
    index: int


def _leaves_with_names(tree) -> list[tuple[str, Any]]:
    return [(jax.tree_util.keystr(path, simple=True, separator="/"), leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)]


class ArraySource:
    """In-memory rows: a dict of numpy arrays (or pytrees of them) sharing a leading row axis."""

    def __init__(self, data: Mapping[str, Any]):
        if not isinstance(data, Mapping) or not data:
            raise PipelineError("ArraySource needs a non-empty dict of arrays")
        self.data = jax.tree.map(np.asarray, dict(data))
        lengths = {name: (np.shape(leaf)[0] if np.ndim(leaf) else None)
                   for name, leaf in _leaves_with_names(self.data)}
        if len(set(lengths.values())) != 1 or None in lengths.values():
            raise PipelineError(f"every field needs the same leading row axis; "
                                f"got lengths {lengths}")
        self._len = next(iter(lengths.values()))

    def __len__(self) -> int:
        return self._len

    def get(self, rows: np.ndarray) -> dict:
        return jax.tree.map(lambda a: a[rows], self.data)


class ZooSource:
    """A zoo's rows: its weights (flat vectors under ``"flat"`` or a params tree under ``"params"``)
    plus the metric columns a task needs (e.g. ``("test_acc",)``).

    `zoo` is a `wsl.zoos.store.Zoo` (or a view of one) or anything with ``len``, ``flat(rows)``,
    ``weights(rows)`` and ``metrics``.
    """

    def __init__(self, zoo, columns: Sequence[str] = (), flat: bool = True):
        metrics = zoo.metrics
        for column in columns:
            if column not in metrics:
                raise PipelineError(f"zoo has no metric column {column!r}; "
                                    f"columns: {sorted(metrics)}")
            if np.asarray(metrics[column]).dtype.kind in "USO":
                raise PipelineError(f"metric column {column!r} holds text; encode it as numbers "
                                    f"before training on it")
        self.zoo, self.flat = zoo, flat
        self.columns = {c: np.asarray(metrics[c]) for c in columns}

    def __len__(self) -> int:
        return len(self.zoo)

    def get(self, rows: np.ndarray) -> dict:
        # Read in row order (memory-mapped shards read sequentially), then restore the batch order.
        order = np.argsort(rows, kind="stable")
        inverse = np.argsort(order)
        weights = self.zoo.flat(rows[order]) if self.flat else self.zoo.weights(rows[order])
        batch = {"flat" if self.flat else "params":
                 jax.tree.map(lambda a: np.asarray(a)[inverse], weights)}
        batch.update({c: values[rows] for c, values in self.columns.items()})
        return batch


def _device_ready(name: str, leaf) -> np.ndarray:
    array = np.asarray(leaf)
    if array.dtype.kind in "USO":
        raise PipelineError(f"field {name!r} holds {array.dtype} values, which cannot go to a "
                            f"device; encode it as numbers or leave it out of the batch")
    # float64 / int64 become float32 / int32 here (unless jax_enable_x64), not silently on device.
    return array.astype(jax.dtypes.canonicalize_dtype(array.dtype), copy=False)


class Pipeline:
    """Batches of `batch_size` rows of `source`; see the module docstring."""

    def __init__(self, source: RowSource, batch_size: int, *, seed: int = 0, shuffle: bool = True,
                 augment: Sequence[Augmentation] = (), prefetch: int = 2):
        if not isinstance(source, RowSource):
            raise PipelineError(f"{type(source).__name__} is not a row source: it needs __len__ "
                                f"and get(rows)")
        if len(source) < batch_size:
            raise PipelineError(f"batch_size={batch_size} is larger than the {len(source)} rows "
                                f"of the source")
        self.source, self.batch_size, self.seed = source, int(batch_size), int(seed)
        self.shuffle, self.prefetch = shuffle, int(prefetch)
        self.augment = tuple(augment)
        self.steps_per_epoch = len(source) // self.batch_size
        self._augment_fns: dict[Any, Callable] = {}
        self._order: tuple[int | None, np.ndarray | None] = (None, None)

    def __len__(self) -> int:
        return len(self.source)

    def epoch_order(self, epoch: int) -> np.ndarray:
        cached = self._order  # one epoch's order is reused by all its batches
        if cached[0] != epoch:
            order = (np.random.default_rng([self.seed, epoch]).permutation(len(self.source))
                     if self.shuffle else np.arange(len(self.source)))
            cached = self._order = (epoch, order)
        return cached[1]

    def position_at(self, step: int) -> Position:
        """The position after `step` batches from the start."""
        return Position(*divmod(int(step), self.steps_per_epoch))

    def rows(self, position: Position) -> np.ndarray:
        epoch, index = position
        return self.epoch_order(epoch)[index * self.batch_size:(index + 1) * self.batch_size]

    def host_batch(self, position: Position) -> dict:
        """The batch at `position` as numpy arrays, before placement and augmentation."""
        rows = self.rows(position)
        if jax.process_count() > 1:
            # Each host reads its own contiguous slice; devices are ordered host by host.
            rows = np.array_split(rows, jax.process_count())[jax.process_index()]
        batch = dict(self.source.get(rows))

        def check(path, leaf):
            name = jax.tree_util.keystr(path, simple=True, separator="/")
            if np.shape(leaf)[:1] != (len(rows),):
                raise PipelineError(f"source returned field {name!r} with shape {np.shape(leaf)} "
                                    f"for {len(rows)} rows")
            return _device_ready(name, leaf)

        return jax.tree_util.tree_map_with_path(check, batch)

    def placed_batch(self, position: Position, sharding=None):
        """The batch at `position`, placed with `sharding` (default device if None), before
        augmentation. Only transfers: safe to call from any thread."""
        batch = self.host_batch(position)
        if sharding is None:
            return jax.device_put(batch)
        if jax.process_count() == 1:
            return jax.device_put(batch, sharding)
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)

    def augmented(self, position: Position, batch, sharding=None):
        """`batch` (from `placed_batch(position, sharding)`) with the augmentations applied.

        A compiled program over the mesh: call it from the thread that runs the training step.
        Multi-device programs launched from two threads can enter the devices in different
        orders, and their collectives then wait for each other for ever.
        """
        if not self.augment:
            return batch
        epoch, index = position
        batch = self._augment_fn(sharding)(np.uint32(self.seed), epoch, index, batch)
        mesh = getattr(sharding, "mesh", None)
        return batch if mesh is None else finished(batch, mesh)

    def device_batch(self, position: Position, sharding=None):
        """The batch at `position`, placed with `sharding` (default device if None), augmented."""
        return self.augmented(position, self.placed_batch(position, sharding), sharding)

    def _augment_fn(self, sharding):
        if sharding not in self._augment_fns:
            augmentations = self.augment

            def augment(seed, epoch, index, batch):
                stream = jax.random.fold_in(jax.random.key(seed), _AUGMENT_STREAM)
                key = jax.random.fold_in(jax.random.fold_in(stream, epoch), index)
                for i, fn in enumerate(augmentations):
                    batch = fn(jax.random.fold_in(key, i), batch)
                return batch

            self._augment_fns[sharding] = jax.jit(augment, out_shardings=sharding)
        return self._augment_fns[sharding]

    def iterate(self, start: Position = Position(0, 0), sharding=None) -> BatchIterator:
        """An endless iterator of device batches from `start`; close it (or use `with`)."""
        return BatchIterator(self, Position(*start), sharding)


class _Failure(NamedTuple):
    error: BaseException


class BatchIterator:
    """Device batches in order; `position` is where the next batch handed out comes from."""

    def __init__(self, pipeline: Pipeline, start: Position, sharding):
        if not 0 <= start.index < pipeline.steps_per_epoch or start.epoch < 0:
            raise PipelineError(f"position {tuple(start)} is outside the pipeline's "
                                f"{pipeline.steps_per_epoch} batches per epoch")
        self.pipeline, self.sharding, self.position = pipeline, sharding, start
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self._thread = None
        if pipeline.prefetch > 0:
            self._queue = queue.Queue(maxsize=pipeline.prefetch)
            self._thread = threading.Thread(target=self._produce, args=(start,),
                                            name="wsl-prefetch", daemon=True)
            self._thread.start()

    def _advance(self, position: Position) -> Position:
        return self.pipeline.position_at(
            position.epoch * self.pipeline.steps_per_epoch + position.index + 1)

    def _produce(self, position: Position) -> None:
        while not self._stop.is_set():
            try:  # transfers only; augmentation runs in __next__, on the consumer's thread
                item = self.pipeline.placed_batch(position, self.sharding)
            except BaseException as err:  # handed to the consumer, which re-raises it
                item = _Failure(err)
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, _Failure):
                return
            position = self._advance(position)

    def __iter__(self):
        return self

    def __next__(self):
        if self._queue is None:
            batch = self.pipeline.device_batch(self.position, self.sharding)
        else:
            if self._stop.is_set():
                raise StopIteration
            batch = self._queue.get()
            if isinstance(batch, _Failure):
                self.close()
                raise batch.error
            batch = self.pipeline.augmented(self.position, batch, self.sharding)
        self.position = self._advance(self.position)
        return batch

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
