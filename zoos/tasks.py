"""Tasks: classification problems carved from offline datasets, each reproducible from one spec.

A task is ``SOURCE:CLASSES:TRANSFORM``, e.g. ``mnist8:0-3-5-7-9:rot90``:

* ``SOURCE`` names a dataset with fixed options (`SOURCES`: MNIST at 8×8 or 14×14, sklearn
  digits, MNIST-1D and variants of its generator with other noise / shift / scale settings);
* ``CLASSES`` are source labels, relabelled 0..k-1 in the order given (so ``3-0`` and ``0-3`` are
  different tasks: their output units are swapped);
* ``TRANSFORM`` is a fixed change of the inputs: ``none``, ``rot90`` / ``rot180`` / ``rot270``
  (square images), ``flip`` (mirror the last spatial axis; time reversal for signals), ``invert``
  (1 − x for images, −x for signals) or ``perm<seed>`` (a fixed random permutation of all input
  positions).

Every transform is an index gather over the flattened input followed by an affine map, so the
population trainer can give each model its own task inside one compiled program (`TaskArrays`).

Multi-task zoo recipes (`task_table`) enumerate every (source, k-subset of classes, transform),
shuffle that list with the recipe's seed and hold out the first tasks: no held-out task is ever
trained on, so a generator conditioned on tasks can be measured on tasks it never saw.

A task is described to a generator by data, never by its id: `support_features` takes a few
labelled examples per class and returns per-class means of fixed features (the raw inputs and
fixed random ReLU features) — invariant to the order of the support examples, and permuted
like the labels when the classes are relabelled.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from wsl.errors import WslError
from wsl.zoos.datasets import Dataset, dataset_from_spec


class TaskError(WslError, ValueError):
    """A task spec, task table or support set that cannot be used."""


# Sources: a name per dataset + options, so that a task spec stays short and exact.
SOURCES: dict[str, dict[str, Any]] = {
    "mnist8": {"name": "mnist", "options": {"resize": [8, 8], "max_train": 10000}},
    # MNIST framed like sklearn's digits: MNIST centres each digit in a 20x20 box inside 28x28
    # pixels, the digits dataset scales each digit to fill its frame. Cropping to that box before
    # downsampling puts both at one scale — the cross-dataset pair digits <-> mnist8-crop.
    "mnist8-crop": {"name": "mnist", "options": {"crop": [4, 4, 20, 20], "resize": [8, 8],
                                                 "max_train": 10000}},
    "mnist14": {"name": "mnist", "options": {"resize": [14, 14], "max_train": 10000}},
    "digits": {"name": "digits", "options": {}},
    "mnist1d": {"name": "mnist1d", "options": {}},
    # MNIST-1D generator variants (defaults: corr_noise 0.25, iid_noise 0.02, max_translation 48,
    # shear 0.75, scale_coeff 0.4).
    "mnist1d-clean": {"name": "mnist1d", "options": {"corr_noise_scale": 0.0,
                                                     "iid_noise_scale": 0.0}},
    "mnist1d-noisy": {"name": "mnist1d", "options": {"corr_noise_scale": 0.5,
                                                     "iid_noise_scale": 0.05}},
    "mnist1d-still": {"name": "mnist1d", "options": {"max_translation": 1, "shear_scale": 0.0}},
    "mnist1d-scaled": {"name": "mnist1d", "options": {"scale_coeff": 0.8}},
}
_TRANSFORM = re.compile(r"^(none|rot90|rot180|rot270|flip|invert|perm\d+)$")
RANDOM_FEATURES = 128  # fixed random ReLU features per support example, beside the raw input
FEATURE_SEED = 20240  # fixed: the features are part of what a task-conditioned generator read


@dataclasses.dataclass(frozen=True)
class Task:
    """One task: a source dataset, its classes in label order, and an input transform."""

    source: str
    classes: tuple[int, ...]
    transform: str = "none"

    def __post_init__(self):
        if self.source not in SOURCES:
            raise TaskError(f"unknown task source {self.source!r}; sources: {sorted(SOURCES)}")
        classes = tuple(int(c) for c in self.classes)
        object.__setattr__(self, "classes", classes)
        if len(classes) < 2 or len(set(classes)) != len(classes) or min(classes) < 0:
            raise TaskError(f"task {self.spec}: classes must be ≥ 2 distinct labels, "
                            f"got {list(classes)}")
        if not _TRANSFORM.match(self.transform):
            raise TaskError(f"task {self.spec}: unknown transform {self.transform!r}; choose "
                            f"none, rot90, rot180, rot270, flip, invert or perm<seed>")

    @property
    def spec(self) -> str:
        return f"{self.source}:{'-'.join(map(str, self.classes))}:{self.transform}"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @classmethod
    def parse(cls, spec: str) -> Task:
        """``SOURCE:C1-C2-...:TRANSFORM`` (the transform may be left out: none)."""
        parts = str(spec).strip().split(":")
        if len(parts) not in (2, 3) or not all(parts):
            raise TaskError(f"task spec {spec!r} is not SOURCE:CLASSES[:TRANSFORM], e.g. "
                            f"mnist8:0-3-5-7-9:rot90")
        try:
            classes = tuple(int(c) for c in parts[1].split("-"))
        except ValueError:
            raise TaskError(f"task spec {spec!r}: classes must be labels joined by '-', e.g. "
                            f"0-3-5") from None
        return cls(parts[0], classes, parts[2] if len(parts) == 3 else "none")

    def describe(self) -> dict[str, Any]:
        """The task table's row: everything needed to rebuild the task's data."""
        return {"spec": self.spec, "source": self.source, "dataset": SOURCES[self.source],
                "classes": list(self.classes), "transform": self.transform}


# ----------------------------------------------------------------------------- data
@functools.lru_cache(maxsize=16)
def source_dataset(source: str) -> Dataset:
    """A source's whole dataset (all classes, no transform)."""
    if source not in SOURCES:
        raise TaskError(f"unknown task source {source!r}; sources: {sorted(SOURCES)}")
    return dataset_from_spec(SOURCES[source], f"task source {source!r}")


def transform_arrays(transform: str, input_shape: Sequence[int]) -> tuple[np.ndarray, float,
                                                                           float]:
    """(gather index over the flattened input, scale, shift): x' = x.flat[index] · scale + shift."""
    shape = tuple(int(s) for s in input_shape)
    size = int(np.prod(shape))
    grid = np.arange(size).reshape(shape)
    image = len(shape) == 3
    if transform == "none":
        return grid.reshape(-1), 1.0, 0.0
    if transform.startswith("rot"):
        if not image or shape[0] != shape[1]:
            raise TaskError(f"transform {transform} needs square images, inputs are {shape}")
        return np.rot90(grid, int(transform[3:]) // 90, axes=(0, 1)).reshape(-1), 1.0, 0.0
    if transform == "flip":
        return np.flip(grid, axis=1 if image else 0).reshape(-1), 1.0, 0.0
    if transform == "invert":
        return grid.reshape(-1), -1.0, 1.0 if image else 0.0
    seed = int(transform[4:])
    return np.random.default_rng([seed, 7]).permutation(size), 1.0, 0.0


def apply_transform(x: np.ndarray, transform: str) -> np.ndarray:
    index, scale, shift = transform_arrays(transform, x.shape[1:])
    flat = x.reshape(len(x), -1)[:, index] * np.float32(scale) + np.float32(shift)
    return np.ascontiguousarray(flat.reshape(x.shape), np.float32)


@functools.lru_cache(maxsize=64)
def _task_dataset(spec: str) -> Dataset:
    task = Task.parse(spec)
    source = source_dataset(task.source)
    bad = [c for c in task.classes if c >= source.num_classes]
    if bad:
        raise TaskError(f"task {spec}: source {task.source!r} has classes "
                        f"0..{source.num_classes - 1}, not {bad}")
    relabel = np.full(source.num_classes, -1, np.int32)
    relabel[list(task.classes)] = np.arange(task.num_classes, dtype=np.int32)
    arrays = {}
    for split in ("train", "val", "test"):
        x, y = source.split(split)
        keep = relabel[y] >= 0
        arrays[f"x_{split}"] = apply_transform(x[keep], task.transform)
        arrays[f"y_{split}"] = relabel[y[keep]]
    for a in arrays.values():
        a.flags.writeable = False
    return Dataset(name=spec, num_classes=task.num_classes, **arrays)


def task_dataset(task: Task | str) -> Dataset:
    """The task's train / val / test data: the source's splits restricted to its classes,
    relabelled and transformed."""
    return _task_dataset(task.spec if isinstance(task, Task) else Task.parse(task).spec)


# ----------------------------------------------------------------------------- task tables
def task_universe(sources: Sequence[str], num_classes: int,
                  transforms: Sequence[str]) -> list[Task]:
    """Every (source, k-subset of its classes in increasing order, transform), in a fixed order."""
    tasks = []
    for source in sources:
        total = source_dataset(source).num_classes
        k = num_classes or total
        if not 2 <= k <= total:
            raise TaskError(f"tasks of {k} classes cannot be drawn from source {source!r} with "
                            f"{total} classes")
        for classes in itertools.combinations(range(total), k):
            tasks.extend(Task(source, classes, t) for t in transforms)
    return tasks


def task_table(sources: Sequence[str], num_classes: int, transforms: Sequence[str],
               heldout: int, seed: int) -> list[dict[str, Any]]:
    """The manifest's task table: every task of the universe with its ``split`` ("train" or
    "heldout"); the held-out ones are chosen by `seed` alone."""
    universe = task_universe(sources, num_classes, transforms)
    if not 0 <= heldout < len(universe):
        raise TaskError(f"heldout_tasks={heldout}: must leave training tasks among the "
                        f"{len(universe)} tasks")
    order = np.random.default_rng([seed, 11]).permutation(len(universe))
    held = set(order[:heldout].tolist())
    # A row per task; its source's dataset spec is the manifest's ``dataset.sources`` entry.
    return [{"id": i, **{k: v for k, v in task.describe().items() if k != "dataset"},
             "split": "heldout" if i in held else "train"} for i, task in enumerate(universe)]


def tasks_of(manifest: Mapping[str, Any], split: str | None = None) -> list[Task]:
    """The tasks a zoo's manifest lists (optionally one split), in table order."""
    table = (manifest.get("tasks") or {}).get("table")
    if not table:
        raise TaskError("this zoo has no task table: it was not built by a multi-task recipe "
                        "(e.g. `wsl zoo build mnist-tasks`)")
    return [Task.parse(row["spec"]) for row in table if split is None or row["split"] == split]


# ----------------------------------------------------------------------------- trainer view
@dataclasses.dataclass(frozen=True, eq=False)
class TaskArrays:
    """Per-model task of a population trained on one source: labels, pools and transforms.

    label_map (models, source classes): the model's label of each source class, −1 = not in its
    task; index (models, input size), scale, shift (models,): the input transform."""

    label_map: np.ndarray
    index: np.ndarray
    scale: np.ndarray
    shift: np.ndarray

    @classmethod
    def build(cls, tasks: Sequence[Task], source: Dataset) -> TaskArrays:
        label_map = np.full((len(tasks), source.num_classes), -1, np.int32)
        index, scale, shift = [], [], []
        for m, task in enumerate(tasks):
            if max(task.classes) >= source.num_classes:
                raise TaskError(f"task {task.spec}: the source has {source.num_classes} classes")
            label_map[m, list(task.classes)] = np.arange(task.num_classes)
            i, a, b = transform_arrays(task.transform, source.input_shape)
            index.append(i)
            scale.append(a)
            shift.append(b)
        return cls(label_map, np.stack(index).astype(np.int32), np.asarray(scale, np.float32),
                   np.asarray(shift, np.float32))

    def pools(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(models, L) indices of each model's own examples among labels `y` (padded with 0),
        and how many each model has."""
        members = [np.flatnonzero(row[y] >= 0) for row in self.label_map]
        counts = np.asarray([len(m) for m in members], np.int32)
        pool = np.zeros((len(members), max(counts.max(initial=1), 1)), np.int32)
        for m, idx in enumerate(members):
            pool[m, :len(idx)] = idx
        return pool, counts


# ----------------------------------------------------------------------------- support sets
@functools.lru_cache(maxsize=8)
def _random_features(size: int) -> np.ndarray:
    rng = np.random.default_rng([FEATURE_SEED, size])
    return (rng.standard_normal((size, RANDOM_FEATURES)) / np.sqrt(size)).astype(np.float32)


def example_features(x: np.ndarray) -> np.ndarray:
    """Fixed features of examples: the flattened input and ReLU(x R) for a fixed random R."""
    flat = np.asarray(x, np.float32).reshape(len(x), -1)
    return np.concatenate([flat, np.maximum(flat @ _random_features(flat.shape[1]), 0.0)], 1)


def support_features(x: np.ndarray, y: np.ndarray, num_classes: int) -> np.ndarray:
    """(classes, features): the mean features of each class's support examples. Invariant to the
    order of the examples; relabelling the classes permutes the rows the same way."""
    y = np.asarray(y)
    missing = [c for c in range(num_classes) if not (y == c).any()]
    if missing:
        raise TaskError(f"the support set has no example of class(es) {missing}; every one of "
                        f"the {num_classes} classes needs at least one")
    feats = example_features(x)
    return np.stack([feats[y == c].mean(0) for c in range(num_classes)]).astype(np.float32)


def draw_support(data: Dataset, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`per_class` training examples of every class, drawn by `seed` (all if a class has fewer)."""
    if per_class < 1:
        raise TaskError(f"support size must be ≥ 1 example per class, got {per_class}")
    rng = np.random.default_rng([seed, 13])
    picks = [rng.permutation(np.flatnonzero(data.y_train == c))[:per_class]
             for c in range(data.num_classes)]
    if any(len(p) == 0 for p in picks):
        empty = [c for c, p in enumerate(picks) if len(p) == 0]
        raise TaskError(f"task {data.name}: no training example of class(es) {empty}")
    idx = np.concatenate(picks)
    return data.x_train[idx], data.y_train[idx]


def task_support_features(task: Task | str, *, per_class: int = 10, seed: int = 0) -> np.ndarray:
    data = task_dataset(task)
    return support_features(*draw_support(data, per_class, seed), data.num_classes)


def _seed_of(spec: str, seed: int, draw: int) -> int:
    digest = hashlib.sha256(f"{spec}|{seed}|{draw}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def zoo_support_features(zoo, *, draws: int = 4, per_class: int = 10,
                         seed: int = 0) -> tuple[np.ndarray, dict[str, Any]]:
    """(models, draws, classes, features) support features of every selected model's task, and
    how they were made (recorded with a task-conditioned generator)."""
    tasks = {t.spec: t for t in tasks_of(zoo.manifest)}
    if "task" not in zoo.metrics:
        raise TaskError(f"{zoo.path}: the zoo has a task table but no 'task' column")
    cache: dict[str, np.ndarray] = {}
    out = []
    for spec in map(str, zoo.metrics["task"]):
        if spec not in tasks:
            raise TaskError(f"{zoo.path}: task {spec!r} of the metrics table is not in the task "
                            f"table")
        if spec not in cache:
            cache[spec] = np.stack([task_support_features(spec, per_class=per_class,
                                                          seed=_seed_of(spec, seed, d))
                                    for d in range(draws)])
        out.append(cache[spec])
    info = {"draws": draws, "per_class": per_class, "seed": seed,
            "random_features": RANDOM_FEATURES, "feature_seed": FEATURE_SEED}
    return np.stack(out).astype(np.float32), info
