"""Tasks and multi-task zoos: specs, transforms, task tables, per-model tasks in the trainer."""

import json

import numpy as np
import pytest

from wsl.zoos.architectures import build
from wsl.zoos.datasets import DatasetError, dataset_from_spec
from wsl.zoos.errors import RecipeError
from wsl.zoos.population import TrainSettings, train_population
from wsl.zoos.recipes import get_recipe, plan, recipe_tasks
from wsl.zoos.tasks import (
    Task,
    TaskArrays,
    TaskError,
    apply_transform,
    source_dataset,
    support_features,
    task_dataset,
    task_table,
)


def test_spec_round_trip_and_errors():
    task = Task.parse("mnist8:0-3-5-7-9:rot90")
    assert (task.source, task.classes, task.transform) == ("mnist8", (0, 3, 5, 7, 9), "rot90")
    assert Task.parse(task.spec) == task
    assert Task.parse("digits:1-2").transform == "none"
    for bad, words in (("mnist9:0-1", "unknown task source"), ("mnist8:0-0", "distinct"),
                       ("mnist8:0-1:blur", "unknown transform"), ("mnist8", "SOURCE:CLASSES"),
                       ("mnist8:a-b", "labels joined")):
        with pytest.raises(TaskError, match=words):
            Task.parse(bad)


def test_transforms_are_exact_permutations_and_affine_maps():
    x = np.random.default_rng(0).uniform(size=(3, 8, 8, 1)).astype(np.float32)
    np.testing.assert_array_equal(apply_transform(x, "rot90"), np.rot90(x, 1, axes=(1, 2)))
    np.testing.assert_array_equal(apply_transform(apply_transform(x, "rot90"), "rot90"),
                                  apply_transform(x, "rot180"))
    np.testing.assert_allclose(apply_transform(x, "invert"), 1 - x)
    np.testing.assert_array_equal(apply_transform(x, "flip"), x[:, :, ::-1])
    perm = apply_transform(x, "perm3")
    np.testing.assert_array_equal(np.sort(perm.reshape(3, -1), 1), np.sort(x.reshape(3, -1), 1))
    assert not np.array_equal(perm, x)
    signal = np.arange(12, dtype=np.float32).reshape(2, 6)
    np.testing.assert_array_equal(apply_transform(signal, "invert"), -signal)
    with pytest.raises(TaskError, match="square images"):
        apply_transform(signal, "rot90")


def test_task_dataset_relabels_in_the_given_order():
    source = source_dataset("digits")
    task = task_dataset("digits:7-2-5")
    assert task.num_classes == 3 and task.input_shape == source.input_shape
    for label, original in enumerate((7, 2, 5)):
        np.testing.assert_array_equal(task.x_val[task.y_val == label],
                                      source.x_val[source.y_val == original])
    with pytest.raises(TaskError, match="classes 0..9"):
        task_dataset("digits:3-11")


def test_task_tables_are_reproducible_and_held_out_tasks_are_never_trained():
    table = task_table(["digits"], 3, ["none", "rot90"], heldout=20, seed=4)
    assert table == task_table(["digits"], 3, ["none", "rot90"], heldout=20, seed=4)
    assert len(table) == 120 * 2 and sum(t["split"] == "heldout" for t in table) == 20
    assert task_table(["digits"], 3, ["none"], 20, 5) != task_table(["digits"], 3, ["none"], 20, 4)
    specs = [t["spec"] for t in table]
    assert len(set(specs)) == len(specs)  # no task is both: (classes, transform) pairs differ
    recipe = get_recipe("digits-tasks", ["num_models=300", "heldout_tasks=100"])
    held = {t["spec"] for t in recipe_tasks(recipe) if t["split"] == "heldout"}
    models, shards = plan(recipe)
    assert held and not held & {m["task"] for m in models}
    assert all(s.group["source"] == "digits" for s in shards)
    # The other draws of a model do not depend on whether it also draws a task.
    plain = get_recipe("quick")
    assert [m["lr"] for m in plan(plain)[0]] == [m["lr"] for m in plan(plain)[0]]


def test_recipe_rules_for_tasks():
    with pytest.raises(RecipeError, match="dataset"):
        get_recipe("digits-tasks", ["dataset=digits"])
    with pytest.raises(RecipeError, match="dataset"):
        get_recipe("quick", ["dataset=tasks"])
    with pytest.raises(RecipeError, match="unknown"):
        get_recipe("digits-tasks", ["task_sources=cifar"])
    with pytest.raises(RecipeError, match="transform"):
        get_recipe("digits-tasks", ["task_transforms=blur"])
    with pytest.raises(RecipeError, match="training tasks"):
        plan(get_recipe("digits-tasks", ["task_classes=9", "heldout_tasks=10"]))
    with pytest.raises(DatasetError, match="multi-task zoo"):
        dataset_from_spec({"name": "tasks", "options": {}})


def _hparams(n, lr=3e-3):
    return dict(lr=[lr] * n, weight_decay=[0.0] * n, init_scale=[1.0] * n, bias_init=[0.0] * n,
                dropout=[0.0] * n, train_fraction=[1.0] * n, seed=list(range(n)),
                init=["default"] * n)


def test_per_model_tasks_train_as_each_task_alone():
    """Two models with tasks of equal size train, in one program, exactly as each would alone on
    its own task's dataset (same batches, same labels, same transformed inputs)."""
    source = source_dataset("digits")
    tasks = [Task.parse("digits:0-1-2"), Task.parse("digits:0-1-2:perm5")]
    arch = build("mlp", widths=(16,), input_shape=source.input_shape, num_classes=3)
    settings = TrainSettings(epochs=2, checkpoints=(0, 2))
    together = train_population(arch, source, _hparams(2), settings,
                                tasks=TaskArrays.build(tasks, source))
    for m, task in enumerate(tasks):
        alone = train_population(arch, task_dataset(task), {k: v[m:m + 1] for k, v in
                                                            _hparams(2).items()}, settings)
        for column in ("train_acc", "val_acc", "test_acc", "val_loss"):
            np.testing.assert_allclose(together.metrics[column][m], alone.metrics[column][0],
                                       rtol=1e-5, atol=1e-6)
    assert together.metrics["val_acc"][:, -1].min() > 0.8  # 3-way: learned, not chance


def test_fine_tuning_starts_from_given_networks():
    data = task_dataset("digits:0-1-2")
    arch = build("mlp", widths=(16,), input_shape=data.input_shape, num_classes=3)
    first = train_population(arch, data, _hparams(2), TrainSettings(epochs=2, checkpoints=(0, 2)))
    last = {k: {kk: vv[:, -1] for kk, vv in v.items()} for k, v in first.params.items()}
    again = train_population(arch, data, _hparams(2), TrainSettings(epochs=1, checkpoints=(0, 1)),
                             initial_params=last)
    np.testing.assert_allclose(again.metrics["val_acc"][:, 0], first.metrics["val_acc"][:, -1],
                               rtol=1e-6)
    with pytest.raises(Exception, match="initial_params"):
        train_population(arch, data, _hparams(3), TrainSettings(epochs=1, checkpoints=(0, 1)),
                         initial_params=last)


def test_support_features_invariant_to_order_equivariant_to_relabelling():
    data = task_dataset("digits:0-1-2")
    x, y = data.x_train[:30], data.y_train[:30]
    feats = support_features(x, y, 3)
    order = np.random.default_rng(1).permutation(30)
    np.testing.assert_allclose(support_features(x[order], y[order], 3), feats, rtol=1e-5,
                               atol=1e-6)
    relabel = np.array([2, 0, 1])  # class c becomes relabel[c]
    moved = support_features(x, relabel[y], 3)
    np.testing.assert_allclose(moved[relabel], feats, rtol=1e-5, atol=1e-6)
    with pytest.raises(TaskError, match=r"no example of class\(es\) \[2\]"):
        support_features(x[y < 2], y[y < 2], 3)


def test_multitask_zoo_build_records_tasks(tmp_path):
    from wsl.zoos.build import build_zoo

    zoo = build_zoo(get_recipe("digits-tasks", ["num_models=6", "epochs=2",
                                                "checkpoints=0,2", "models_per_shard=3"]),
                    tmp_path / "zoo", progress=False)
    manifest = json.loads((tmp_path / "zoo" / "manifest.json").read_text())
    assert manifest["dataset"]["name"] == "tasks" and manifest["tasks"]["num_classes"] == 5
    table = {t["spec"]: t["split"] for t in manifest["tasks"]["table"]}
    assert manifest["tasks"]["num_heldout"] == 26 == sum(v == "heldout" for v in table.values())
    trained = set(map(str, zoo.metrics["task"]))
    assert trained and all(table[t] == "train" for t in trained)
    last = zoo.select(epoch="last")
    assert np.nanmean(last.metrics["val_acc"]) > 0.6  # each model scored on its own 5-way task
    with pytest.raises(DatasetError, match="multi-task zoo"):
        zoo.dataset()


def test_every_source_loads_and_mnist1d_variants_differ():
    from wsl.zoos.tasks import SOURCES

    signals = {}
    # MNIST sources are the zoo recipes' datasets, loaded elsewhere; the new ones here.
    for name in [s for s in SOURCES if not s.startswith("mnist") or s.startswith("mnist1d")]:
        data = source_dataset(name)
        assert data.num_classes == 10 and len(data.y_train) > 500, name
        if name.startswith("mnist1d"):
            assert data.input_shape == (40,)
            signals[name] = data.x_train[:50]
    # The generator settings really change the data (same seed, other noise / shift / scale).
    names = sorted(signals)
    for a, b in zip(names, names[1:]):
        assert not np.allclose(signals[a], signals[b]), (a, b)
