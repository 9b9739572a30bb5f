"""Zoo builds: train a recipe's population shard by shard into a zoo directory, resumably."""

from __future__ import annotations

import dataclasses
import json
import signal
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from wsl.config import to_dict
from wsl.distributed import agree, barrier, is_primary
from wsl.outputs import check_output_dir
from wsl.zoos.architectures import Architecture, build
from wsl.zoos.datasets import Dataset, dataset_from_spec
from wsl.zoos.population import (
    FLOAT_HPARAMS,
    METRIC_COLUMNS,
    PopulationResult,
    TrainSettings,
    shared_hparams,
    train_population,
)
from wsl.zoos.recipes import (
    OPTIONAL_HPARAMS,
    PARENT_FIELDS,
    TASK_FIELDS,
    Recipe,
    plan,
    recipe_tasks,
)
from wsl.zoos.store import Zoo, ZooWriter
from wsl.zoos.tasks import SOURCES, Task, TaskArrays, source_dataset


def _hparam_columns(row: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("lr", "weight_decay", "init_scale", "bias_init", "dropout", "train_fraction", "seed",
            "activation", "optimizer", "init") + tuple(k for k in OPTIONAL_HPARAMS + ("task",)
                                                       if k in row)
    return {k: row[k] for k in keys}


def _recipe_entry(recipe: Recipe) -> dict:
    """The manifest's recipe config. Optional fields left empty are not written, so a zoo
    begun before such a field existed still resumes (its manifest compares equal)."""
    config = to_dict(recipe)
    for field in OPTIONAL_HPARAMS:
        if not config.get(field):
            config.pop(field, None)
    if not recipe.is_multitask:
        for field in TASK_FIELDS:
            config.pop(field, None)
    if not recipe.parent_epochs:
        for field in PARENT_FIELDS:
            config.pop(field, None)
    return {"name": recipe.name, "config": config}


def build_manifest(recipe: Recipe, data: Dataset) -> dict:
    """The manifest a build of `recipe` writes: everything needed to rebuild and to read it."""
    models, shards = plan(recipe)
    arch = _group_architecture(recipe, data, shards[0].group["activation"])
    if recipe.is_multitask:
        # Each model has its own task: the dataset entry names the sources; the task table says
        # what every task is (`wsl.zoos.tasks`) and which are held out.
        table = recipe_tasks(recipe)
        dataset = {**recipe.dataset_spec, "num_classes": arch.num_classes,
                   "input_shape": list(data.input_shape),
                   "sources": {s: SOURCES[s] for s in recipe.task_sources}}
        tasks = {"num_classes": arch.num_classes,
                 "num_train": sum(t["split"] == "train" for t in table),
                 "num_heldout": sum(t["split"] == "heldout" for t in table), "table": table}
    else:
        dataset = {**recipe.dataset_spec, "num_classes": data.num_classes,
                   "input_shape": list(data.input_shape), "sizes": data.sizes}
    manifest = {
        "architecture": {"name": arch.name, "config": _jsonable_config(arch.config)},
        "weight_space": arch.weight_space.to_dict(),
        "dataset": dataset,
        "recipe": _recipe_entry(recipe),
        "build": {"num_models": len(models), "num_shards": len(shards),
                  "checkpoints": list(recipe.checkpoint_epochs),
                  "shards": [{"group": s.group, "models": [s.models[0], s.models[-1]]}
                             for s in shards]},
        "generated": False,
    }
    if recipe.is_multitask:
        manifest["tasks"] = tasks
    return manifest


def _jsonable_config(config: Mapping[str, Any]) -> dict:
    return json.loads(json.dumps(dict(config), default=list))


def _group_architecture(recipe: Recipe, data: Dataset, activation: str) -> Architecture:
    classes = data.num_classes
    if recipe.is_multitask:  # the classes of a task, not of its source
        classes = recipe.task_classes or data.num_classes
    return build(recipe.architecture, **recipe.arch, activation=activation,
                 input_shape=tuple(data.input_shape), num_classes=classes)


def load_recipe_dataset(recipe: Recipe, source: str | None = None) -> Dataset:
    """The recipe's dataset, read the way a zoo's manifest is (`datasets.dataset_from_spec`);
    for a multi-task recipe, the data of one of its sources (default the first)."""
    if recipe.is_multitask:
        return source_dataset(source or recipe.task_sources[0])
    return dataset_from_spec(recipe.dataset_spec, f"recipe {recipe.name!r}")


class _StopOnSigint:
    """While active, the first Ctrl-C only asks the build to stop at the next safe point (the end
    of an epoch, where the current shard is abandoned); a second one interrupts at once. A
    KeyboardInterrupt raised inside a compiled call or a garbage-collector callback can crash
    the process or be swallowed, hence the flag. Outside the main thread it does nothing."""

    def __init__(self):
        self.requested = False
        self._installed = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc):
        if self._installed:  # None: a handler not set from Python; the default is closest
            signal.signal(signal.SIGINT, self._previous if self._previous is not None
                          else signal.default_int_handler)
        return False

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt("interrupted twice; stopped at once")
        self.requested = True


def build_zoo(recipe: Recipe, out, *, mesh: Mesh | None = None, progress: bool = True,
              on_shard: Callable[[int], None] | None = None):
    """Train `recipe`'s population into the zoo directory `out`, resuming if it exists.

    Finished shards are verified and skipped; `on_shard(index)` runs after each new shard is
    written (a test raises there to simulate a killed build). Returns the opened `Zoo`.

    In a multi-process run (`wsl.distributed`) every process trains its own share of the shards
    still missing, on its own devices, into the same directory (shared by all hosts); process 0
    writes the manifest first and, once every process has finished, verifies every shard and
    commits the metrics table. The zoo is the one a single process would build on as many
    devices (on another device count, the same up to float rounding), and a rerun with any
    number of processes resumes whatever a killed process left unwritten.

    Ctrl-C (SIGINT, in the main thread) stops the build at the end of the running epoch: the
    shard being trained is abandoned (no partial files stay), finished shards are kept, and
    `KeyboardInterrupt` is raised saying how far it got; rerunning the same build resumes.
    """
    check_output_dir(out, allow_zoo=True)
    primary, processes = is_primary(), jax.process_count()
    with _StopOnSigint() as stop:
        data = load_recipe_dataset(recipe)
        models, shards = plan(recipe)
        manifest = build_manifest(recipe, data)
        if primary:  # one process creates (or checks) the manifest and cleans up, alone
            writer = ZooWriter(out, manifest, option="--out")
            for index in writer.done_shards():
                writer.verify_shard(index)
        barrier("wsl-zoo-build-start")
        if not primary:
            writer = ZooWriter(out, manifest, option="--out", clean=False)
        # Every process must split the same list of missing shards: process 0's view of it.
        done = set(agree(writer.done_shards() if primary else []))
        missing = [s for s in shards if s.index not in done]
        mine = missing[jax.process_index()::processes]
        if processes > 1:
            print(f"process {jax.process_index()} of {processes}: trains {len(mine)} of the "
                  f"{len(missing)} missing shards", file=sys.stderr, flush=True)
        # One process counts from the models already built; several count their own share.
        trained = sum(len(s.models) for s in shards if s.index in done) if processes == 1 else 0
        bar = tqdm(total=trained + sum(len(s.models) for s in mine), initial=trained,
                   unit="model", disable=not (progress and primary),
                   smoothing=0.1, bar_format="{l_bar}{bar}| {n:.0f}/{total_fmt} models "
                                             "[{elapsed}<{remaining}, {rate_fmt}]")

        def interrupted(where: str) -> KeyboardInterrupt:
            written = len(writer.done_shards())
            return KeyboardInterrupt(f"stopped {where}; {written} of {len(shards)} shards are "
                                     f"written in {out}")

        def on_epoch(_):
            # Fractions of a shard per epoch; float sums can pass the total by an ulp, which
            # tqdm answers with a warning and a negative time left.
            bar.update(min(per_epoch, bar.total - bar.n))
            if stop.requested:
                raise interrupted(f"during shard {shard.index}, which was abandoned")

        parents = {}  # (activation, optimizer) group: its trained parents, once per build
        try:
            for shard in mine:
                if stop.requested:
                    raise interrupted("between shards")
                rows = [models[m] for m in shard.models]
                hparams = {k: [r[k] for r in rows] for k in FLOAT_HPARAMS + ("seed", "init")
                           + tuple(k for k in OPTIONAL_HPARAMS if k in rows[0])}
                tasks = None
                if recipe.is_multitask:  # the shard's source; every model its own task on it
                    data = load_recipe_dataset(recipe, shard.group["source"])
                    tasks = TaskArrays.build([Task.parse(r["task"]) for r in rows], data)
                arch = _group_architecture(recipe, data, shard.group["activation"])
                initial = None
                if recipe.parent_epochs:
                    group = tuple(sorted(shard.group.items()))
                    if group not in parents:
                        if progress and primary:
                            bar.write(f"training {recipe.init_seeds} parent(s) for "
                                      f"{recipe.parent_epochs} epochs (parent_epochs)")
                        parents[group] = train_parents(recipe, data, arch,
                                                       shard.group["optimizer"], mesh)
                    ids = np.asarray(hparams["seed"]) % recipe.init_seeds
                    initial = jax.tree.map(lambda p, ids=ids: p[ids], parents[group])
                per_epoch = len(rows) / max(recipe.epochs, 1)
                result = train_population(
                    arch, data, hparams,
                    TrainSettings.from_recipe(recipe, shard.group["optimizer"]), mesh=mesh,
                    on_epoch=on_epoch, tasks=tasks, initial_params=initial)
                writer.write_shard(shard.index, *_shard_rows(result, rows))
                bar.n = trained = trained + len(rows)  # exact count, not the sum of fractions
                bar.refresh()
                if on_shard is not None:
                    on_shard(shard.index)
        finally:
            bar.close()
        barrier("wsl-zoo-build-trained")
        if primary:
            for shard in missing:
                if shard not in mine:  # written by another process: checked before committed
                    writer.verify_shard(shard.index)
            writer.finalize(len(shards))
        barrier("wsl-zoo-build-committed")
    return Zoo.open(out)


def train_parents(recipe: Recipe, data: Dataset, arch: Architecture, optimizer: str,
                  mesh: Mesh | None = None) -> dict:
    """The parents of a recipe with ``parent_epochs`` > 0 (`wsl.zoos.recipes`): its
    ``init_seeds`` shared initialisations, trained together for ``parent_epochs`` epochs; a
    population pytree whose model j is the parent of the models with init id j (seed mod
    init_seeds). A function of the recipe alone, so a resumed or multi-process build recomputes
    the same parents instead of storing them."""
    hparams = shared_hparams(range(recipe.init_seeds), lr=recipe.parent_lr,
                             init_scale=recipe.init_scale[0], bias_init=recipe.bias_init[0],
                             init=recipe.init[0])
    settings = dataclasses.replace(TrainSettings.from_recipe(recipe, optimizer),
                                   epochs=recipe.parent_epochs,
                                   checkpoints=(recipe.parent_epochs,))
    result = train_population(arch, data, hparams, settings, mesh=mesh)
    return jax.tree.map(lambda a: np.asarray(a)[:, -1], result.params)


def _shard_rows(result: PopulationResult, models: Sequence[Mapping[str, Any]]):
    """Flatten (models, checkpoints) into rows ordered by model then epoch."""
    n, c = len(models), len(result.epochs)
    params = jax.tree.map(lambda a: a.reshape((n * c,) + a.shape[2:]), result.params)
    rows = []
    for i, model in enumerate(models):
        for j, epoch in enumerate(result.epochs):
            row = {"model": int(model["model"]), "epoch": int(epoch)}
            for k in METRIC_COLUMNS + ("gap",):
                row[k] = float(result.metrics[k][i, j])
            row["diverged"] = bool(result.metrics["diverged"][i, j])
            row.update(_hparam_columns(model))
            rows.append(row)
    return params, rows
