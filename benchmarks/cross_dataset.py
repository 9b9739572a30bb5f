"""Benchmark: how far a network trained on a task of one 8×8 digit dataset reads the other.

The transfer benchmark's cross-dataset pair (a generator trained on sklearn-digits tasks samples
networks for the same class subsets of MNIST 8×8, and back) can only be as good as a network of
one dataset is on the other. This measures that ceiling: for fixed 5-class subsets (relabelled
0..4 in order, no transform), MLPs 64-32-5 as the task zoos train them (Adam, lr 3e-3, batch 32)
are trained on the task of one dataset and scored on the validation split of the same task in
both datasets, for the plain 8×8 MNIST (`mnist8`: the whole 28×28 image, each digit at about two
thirds of the digits' scale) and MNIST framed like the digits (`mnist8-crop`: each digit's 20×20
box, then 8×8). Means over tasks of each task's mean over networks, [95 % t-interval over tasks].

    python benchmarks/cross_dataset.py            # 6 tasks × 4 networks per direction: ~1 minute
    python benchmarks/cross_dataset.py --smoke    # seconds: 1 task, 2 networks, 1 epoch
    python benchmarks/cross_dataset.py --save     # also benchmarks/results/cross_dataset.json

Prints a table, then one JSON object as the last line with, per direction (``digits->mnist8``,
...), the in-domain and cross-dataset validation accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# Appended, not prepended: an installed (non-editable) wsl must win over the repo's wsl/ folder,
# which alone is not the whole package.
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks._report import table  # noqa: E402
from wsl.eval.intervals import t_interval  # noqa: E402
from wsl.zoos.architectures import build  # noqa: E402
from wsl.zoos.population import TrainSettings, shared_hparams, train_population  # noqa: E402
from wsl.zoos.scoring import population_metrics  # noqa: E402
from wsl.zoos.tasks import Task, task_dataset  # noqa: E402

RESULT = Path(__file__).resolve().parent / "results" / "cross_dataset.json"
PAIRS = (("digits", "mnist8"), ("digits", "mnist8-crop"))
# The task zoos' training: digits-tasks 20 epochs (1,000 training images), mnist8(-crop)-tasks 5
# (about 3,000 per 5-class task, whose models reach their accuracy in fewer passes).
EPOCHS = {"digits": 20, "mnist8": 5, "mnist8-crop": 5}
CLASSES = 5  # five-way tasks, as in the task zoos
MODES = {"full": {"tasks": 6, "networks": 4}, "smoke": {"tasks": 1, "networks": 2}}
SEED = 0


def draw_tasks(count: int, seed: int = SEED) -> list[tuple[int, ...]]:
    """`count` distinct CLASSES-class subsets of the ten digits, in increasing order, by `seed`."""
    rng, tasks = np.random.default_rng(seed), []
    while len(tasks) < count:
        classes = tuple(sorted(int(c) for c in rng.choice(10, CLASSES, replace=False)))
        if classes not in tasks:
            tasks.append(classes)
    return tasks


def trained_on(source: str, targets: list[str], tasks, networks: int,
               epochs: int | None) -> list[dict]:
    """Networks trained on `source`'s task, scored on it and on each target's, task by task: one
    result per target (the source's networks are trained once for all its partners)."""
    epochs = epochs or EPOCHS[source]
    specs = ["-".join(map(str, classes)) for classes in tasks]
    own, other = [], {target: [] for target in targets}
    for spec in specs:
        data = task_dataset(Task.parse(f"{source}:{spec}:none"))
        arch = build("mlp", input_shape=data.input_shape, num_classes=data.num_classes,
                     widths=(32,))
        settings = TrainSettings(epochs=epochs, checkpoints=(epochs,), batch_size=32, seed=SEED)
        result = train_population(arch, data, shared_hparams(list(range(networks)), lr=3e-3),
                                  settings)
        params = jax.tree.map(lambda a: a[:, -1], result.params)  # the last checkpoint

        def val_acc(dataset):
            return float(population_metrics(arch, params, dataset, splits=("val",))["val_acc"]
                         .mean())

        own.append(val_acc(data))
        for target in targets:
            other[target].append(val_acc(task_dataset(Task.parse(f"{target}:{spec}:none"))))
    return [{"source": source, "target": target, "epochs": epochs, "tasks": specs,
             "in_domain": {"per_task": own, "mean": float(np.mean(own)), "ci95": t_interval(own)},
             "cross": {"per_task": other[target], "mean": float(np.mean(other[target])),
                       "ci95": t_interval(other[target])}}
            for target in targets]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="seconds: 1 task, 2 networks, 1 epoch")
    parser.add_argument("--save", action="store_true", help=f"also write {RESULT}")
    args = parser.parse_args(argv)
    mode = "smoke" if args.smoke else "full"
    size = MODES[mode]
    tasks = draw_tasks(size["tasks"])
    partners: dict[str, list[str]] = {}
    for a, b in PAIRS:
        partners.setdefault(a, []).append(b)
        partners.setdefault(b, []).append(a)
    by_direction = {}
    for source, targets in partners.items():
        for r in trained_on(source, targets, tasks, size["networks"], 1 if args.smoke else None):
            by_direction[r["source"], r["target"]] = r
            print(f"{source} -> {r['target']}: {r['in_domain']['mean']:.3f} own, "
                  f"{r['cross']['mean']:.3f} on {r['target']}", flush=True)
    # The file's order: each pair, there and back.
    results = [by_direction[d] for a, b in PAIRS for d in ((a, b), (b, a))]

    def cell(stat):
        low, high = stat["ci95"]
        return f"{stat['mean']:.3f} [{low:.3f}, {high:.3f}]"

    print("\n" + table(("trained on -> scored on", "epochs", "own val acc", "other's val acc"),
                       [(f"{r['source']} -> {r['target']}", r["epochs"], cell(r["in_domain"]),
                         cell(r["cross"])) for r in results]))
    report = {"benchmark": "cross_dataset", "mode": mode, "networks_per_task": size["networks"],
              "chance": 1 / CLASSES, "seed": SEED, "directions": results}
    if args.save and not args.smoke:
        RESULT.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {RESULT}")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
