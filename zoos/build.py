"""Zoo builds: train a recipe's population shard by shard into a zoo directory, resumably."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
from jax.sharding import Mesh
from tqdm.auto import tqdm

from wsl.config import to_dict
from wsl.zoos.architectures import Architecture, build
from wsl.zoos.datasets import Dataset, dataset_from_spec
from wsl.zoos.population import (
    FLOAT_HPARAMS,
    METRIC_COLUMNS,
    PopulationResult,
    TrainSettings,
    train_population,
)
from wsl.zoos.recipes import Recipe, plan
from wsl.zoos.store import Zoo, ZooWriter


def _hparam_columns(row: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("lr", "weight_decay", "init_scale", "bias_init", "dropout", "train_fraction", "seed",
            "activation", "optimizer", "init")
    return {k: row[k] for k in keys}


def build_manifest(recipe: Recipe, data: Dataset) -> dict:
    """The manifest a build of `recipe` writes: everything needed to rebuild and to read it."""
    models, shards = plan(recipe)
    arch = _group_architecture(recipe, data, shards[0].group["activation"])
    return {
        "architecture": {"name": arch.name, "config": _jsonable_config(arch.config)},
        "weight_space": arch.weight_space.to_dict(),
        "dataset": {**recipe.dataset_spec,
                    "num_classes": data.num_classes, "input_shape": list(data.input_shape),
                    "sizes": data.sizes},
        "recipe": {"name": recipe.name, "config": to_dict(recipe)},
        "build": {"num_models": len(models), "num_shards": len(shards),
                  "checkpoints": list(recipe.checkpoint_epochs),
                  "shards": [{"group": s.group, "models": [s.models[0], s.models[-1]]}
                             for s in shards]},
        "generated": False,
    }


def _jsonable_config(config: Mapping[str, Any]) -> dict:
    return json.loads(json.dumps(dict(config), default=list))


def _group_architecture(recipe: Recipe, data: Dataset, activation: str) -> Architecture:
    return build(recipe.architecture, **recipe.arch, activation=activation,
                 input_shape=tuple(data.input_shape), num_classes=data.num_classes)


def load_recipe_dataset(recipe: Recipe) -> Dataset:
    """The recipe's dataset, read the way a zoo's manifest is (`datasets.dataset_from_spec`)."""
    return dataset_from_spec(recipe.dataset_spec, f"recipe {recipe.name!r}")


def build_zoo(recipe: Recipe, out, *, mesh: Mesh | None = None, progress: bool = True,
              on_shard: Callable[[int], None] | None = None):
    """Train `recipe`'s population into the zoo directory `out`, resuming if it exists.

    Finished shards are verified and skipped; `on_shard(index)` runs after each new shard is
    written (a test raises there to simulate a killed build). Returns the opened `Zoo`.
    """
    data = load_recipe_dataset(recipe)
    models, shards = plan(recipe)
    writer = ZooWriter(out, build_manifest(recipe, data))
    done = set(writer.done_shards())
    for index in sorted(done):
        writer.verify_shard(index)
    total = len(models)
    finished = sum(len(s.models) for s in shards if s.index in done)
    bar = tqdm(total=total, initial=finished, unit="model", disable=not progress, smoothing=0.1,
               bar_format="{l_bar}{bar}| {n:.0f}/{total_fmt} models "
                          "[{elapsed}<{remaining}, {rate_fmt}]")
    try:
        for shard in shards:
            if shard.index in done:
                continue
            rows = [models[m] for m in shard.models]
            hparams = {k: [r[k] for r in rows] for k in FLOAT_HPARAMS + ("seed", "init")}
            arch = _group_architecture(recipe, data, shard.group["activation"])
            per_epoch = len(rows) / max(recipe.epochs, 1)
            result = train_population(
                arch, data, hparams,
                TrainSettings.from_recipe(recipe, shard.group["optimizer"]), mesh=mesh,
                on_epoch=lambda _: bar.update(per_epoch))
            writer.write_shard(shard.index, *_shard_rows(result, rows))
            bar.n = finished = finished + len(rows)  # exact count, not the sum of epoch fractions
            bar.refresh()
            if on_shard is not None:
                on_shard(shard.index)
    finally:
        bar.close()
    writer.finalize(len(shards))
    return Zoo.open(out)


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
