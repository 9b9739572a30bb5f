"""Benchmark: networks sampled for held-out tasks as initialisations (`wsl transfer`), honestly.

For each experiment (a multi-task zoo, built once and cached under ``--out``; a target source)
and each of ``--seeds`` generator seeds:

1. train a task-conditioned flow-matching generator on the zoo's aligned last-epoch models
   (`wsl.train.generator.train_generator` with ``condition_task=true``);
2. for each of ``tasks`` held-out tasks of the zoo (never trained on, drawn by a fixed seed; for the
   cross-dataset experiments the same class subsets of the *other* dataset), run
   `wsl.train.transfer.transfer`: sampled, random, zoo-mean, nearest-task and wrong-task inits,
   ``samples`` networks each, fine-tuned together for ``epochs`` epochs.

What is chosen is chosen on the held-out task's validation split only: the sampled init draws
``samples`` networks at each guidance weight of ``guidance``, keeps the ``keep`` best and uses the
weight whose kept networks score best; the nearest-task init keeps the ``keep`` best of as many
models of the nearest training tasks. Each init is
summarised by validation accuracy at epochs 0, 1, 5 and the last, the epochs it needs to reach
random init's final validation accuracy, and the test accuracy after the last epoch (the test
split of every held-out task is scored once, there). Per quantity: mean over seeds of each seed's
mean over tasks, with a 95 % t-interval over seeds; the verdicts use the intervals.

Experiments: ``main`` (mnist-tasks: MNIST 8x8 class subsets x transforms), ``digits->mnist8``
(generator on digits-tasks, transfer to MNIST 8x8) and ``mnist8->digits`` (the reverse).

    python benchmarks/transfer.py --smoke   # seconds: a tiny digits zoo, 2 tasks, 1 seed
    python benchmarks/transfer.py --quick   # mnist8-tasks (500 models), 5 tasks, 1 seed
    python benchmarks/transfer.py           # 3 experiments, 12 / 10 / 10 tasks, 3 seeds (~45 min)
    python benchmarks/transfer.py --fewshot # the same, fine-tuned on 10 examples per class

Prints a table per experiment and one JSON object as the last line; ``--save`` writes it to
``benchmarks/results/transfer-<mode>.json`` (``transfer-<mode>-<N>steps-<experiments>.json`` for
generators trained ``--gen-steps N`` and a subset of ``--experiments``). Zoos, generators and
every finished (task, seed) report live under ``--out``: rerun after an interruption and finished
work is read back. An ablation (any of --words, --lr, --seeds, ...) is never saved as the
benchmark; ``--save-ablation TAG`` writes it, with its options, to
``benchmarks/results/transfer_ablation-<mode>-<TAG>.json`` for the README's ablation table.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

# Appended, not prepended: an installed (non-editable) wsl must win over the repo's wsl/ folder,
# which alone is not the whole package.
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._report import without_options  # noqa: E402
from wsl.config import override, to_dict  # noqa: E402
from wsl.eval.intervals import t_interval  # noqa: E402
from wsl.eval.transfer import aggregate, finish  # noqa: E402
from wsl.models.weight_generator import GeneratorConfig  # noqa: E402
from wsl.train import TrainConfig  # noqa: E402
from wsl.train.generator import DEFAULT_TRAIN, TrainedGenerator, train_generator  # noqa: E402
from wsl.train.transfer import TransferConfig, transfer  # noqa: E402
from wsl.zoos.build import build_zoo  # noqa: E402
from wsl.zoos.errors import ZooError  # noqa: E402
from wsl.zoos.population import LR_SCHEDULES, OPTIMIZERS  # noqa: E402
from wsl.zoos.recipes import get_recipe  # noqa: E402
from wsl.zoos.store import Zoo  # noqa: E402
from wsl.zoos.tasks import Task, tasks_of  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CACHE = "/tmp/wsl-bench-transfer"  # zoos, generators and runs, reused across runs


@dataclasses.dataclass(frozen=True)
class Experiment:
    name: str
    recipe: str
    zoo_words: tuple[str, ...] = ()
    target_source: str | None = None  # None: the zoo's own source (its held-out tasks)


@dataclasses.dataclass(frozen=True)
class Mode:
    experiments: tuple[Experiment, ...]
    tasks: tuple[int, ...]  # held-out tasks per experiment
    seeds: int
    gen_steps: int
    hidden: int
    # Sampled per guidance weight. More samples to keep the best of is a lever (`--samples`):
    # on the full main experiment (seed 0, validation accuracy of its 12 held-out tasks) 500
    # instead of 50 start the kept networks at 0.904 rather than 0.879 and reach random init's
    # last accuracy in 6.4 fine-tuning epochs rather than 7.4 (nearest-task init, given the same
    # budget: 0.838, 11.3). So the full mode samples 500 (chosen on that validation run).
    # Averaging the best samples instead (a soup: aligned samples of one generator share a
    # basin) barely helps: of the same 500, the best 2 / 5 / 10 averaged score 0.915 / 0.915 /
    # 0.912 where the best one alone scores 0.914 and the kept ten 0.904 on average.
    samples: int
    keep: int  # networks per init (the best by validation accuracy)
    # Guidance weights tried (the best on the task's validation wins). Finer weights near 1
    # (`--guidance 0.5,0.75,1,1.5`, full main experiment, seed 0) start samples at 0.908 rather
    # than 0.904 and need 7.2 epochs to random's last rather than 6.4: no gain.
    guidance: tuple[float, ...]
    epochs: int
    train_per_class: int = 0  # 0: fine-tune on the task's whole training split
    batch_size: int = 32
    zoos_of: str | None = None  # another mode whose zoos and generators this one reuses
    # The generator's config words. The loss on the weights rather than the velocity: on the
    # quick run its samples score 0.872 at epoch 0 against 0.797 (benchmarks/generate.py finds
    # the same on the whole-zoo generators: `flow-data`). A 2,048-wide output head (`head_width`):
    # on the full main experiment (seed 0, validation accuracy of its 12 held-out tasks) samples
    # then start at 0.879 rather than 0.854 and reach random init's last accuracy in 7.7
    # fine-tuning epochs rather than 8.6 (both runs with the three rates below). The 512-wide
    # last layer confines every sample to a 512-dimensional subspace: on training tasks its
    # samples scored 0.83 against the zoo models' 0.95. Over three seeds (50 samples) the gain is
    # within noise: 0.864 [0.822, 0.907] at epoch 0 and 8.6 [5.5, 11.7] epochs, against 0.849
    # [0.838, 0.861] and 8.9 [6.8, 11.1] without the head. Training longer does not help: seed 0's
    # generator at 27,000 steps (`--gen-steps 27000`) started its samples at 0.866, not 0.879,
    # and needed 7.8 epochs, not 7.3.
    generator_words: tuple[str, ...] = ("loss_on=data", "head_width=2048")
    # Fine-tuning rates; several: each init at its best on validation. 3e-3 alone: with 3e-3,
    # 1e-3 and 3e-4 on the same run every init but two (of 60 init-task pairs) ended best at
    # 3e-3; sampled inits needed 8.6 epochs (7.9 in an earlier run of that seed at 3e-3 alone).
    lr: tuple[float, ...] = (3e-3,)
    # With condition_scalar among the generator words: the value asked of sampled networks.
    # Not used: on the main experiment (seed 0) a generator trained also on val_acc started its
    # samples at 0.806 asked for q90 and 0.845 asked nothing, reaching random's last accuracy in
    # 10.1 epochs either way, against 0.879 and 7.7 for the task-only generator (val_acc is
    # ranked over all tasks of the zoo, so q90 asks a hard task for an easy task's accuracy).
    cond_scalar: str = ""
    # Of `epochs`, the first that train the head alone (LP-FT), every init alike. 0: on the full
    # main experiment (seed 0, validation) one head-only epoch leaves samples at 0.932 and they
    # need 7.9 epochs to random init's last accuracy, not 6.4 (`--head-epochs 1`), although a
    # head refit to convergence on the task's training split would start them level with it.
    # (These ablations' files: benchmarks/results/transfer_ablation-full-*.json.)
    head_epochs: int = 0
    # How the head epoch trains the head (TransferConfig.head_fit; "exact" with head_epochs=1).
    # "sgd": with the head refit to convergence instead (`--head-epochs 1 --head-fit exact`, full
    # main experiment, seed 0, validation) samples stand at 0.955 after the head epoch, then at
    # 0.952-0.957 through epoch 10, and need 12.7 epochs to random init's last accuracy, not 6.4.
    head_fit: str = "sgd"
    # What `keep` keeps the best by (TransferConfig.keep_by). "val": with "probe" (`--keep-by
    # probe`, full main experiment, seed 0, validation) samples start at 0.780, not 0.904, and
    # need 6.2 epochs to random init's last accuracy, not 6.4.
    keep_by: str = "val"
    # Linear learning-rate warmup over the first fine-tuning epochs (TransferConfig.warmup_epochs),
    # every init alike. 0: with one epoch (`--warmup-epochs 1`, full main experiment, seed 0,
    # validation) samples stand at 0.940 after the first epoch, not 0.946, and need 7.9 epochs
    # to random init's last accuracy, not 6.4 — Adam's large first steps are not what holds
    # them back.
    warmup_epochs: float = 0.0
    # Labelled examples per class of the new task the generator is conditioned on (and the
    # nearest training tasks are found by). 10, as the generators were trained with.
    support: int = 10
    # The fine-tuning rate's schedule (TransferConfig.lr_schedule), every init alike.
    lr_schedule: str = "constant"
    # The fine-tuning optimizer (TransferConfig.optimizer), every init alike.
    optimizer: str = "adam"

    def transfer_config(self, seed: int) -> TransferConfig:
        return TransferConfig(samples=self.samples, keep=self.keep, guidance=self.guidance,
                              epochs=self.epochs, seed=seed, train_per_class=self.train_per_class,
                              batch_size=self.batch_size, lr=self.lr,
                              cond_scalar=self.cond_scalar, head_epochs=self.head_epochs,
                              head_fit=self.head_fit,
                              keep_by=self.keep_by, warmup_epochs=self.warmup_epochs,
                              support=self.support, lr_schedule=self.lr_schedule,
                              optimizer=self.optimizer)


def _trained_for(epochs: int) -> tuple[str, ...]:
    """Zoo words: the zoo's models train for as many epochs as the inits are fine-tuned. A
    generator can only start a task as far along as its zoo's models are: from zoo models trained
    5 epochs (the MNIST task recipes' default) sampled inits start at 0.864 and need 16.8 of 25
    fine-tuning epochs to reach random init's last accuracy, from models trained 25 epochs 0.904
    and 6.4 (full main experiment, seed 0, validation accuracy of its 12 held-out tasks;
    `transfer_ablation-full-zoo-5-epochs.json`; first decided on a quick run).

    Past that, the zoo is not what holds samples back (`--zoo-words`, full main experiment, seed
    0, validation accuracy of its 12 held-out tasks, against 0.904 at epoch 0 and 6.4 epochs to
    random's last from the 2,000 models trained 25 epochs): models trained 75 epochs (zoo 0.959
    against 0.951) start samples at 0.878 and need 5.5 epochs, within the seeds' spread (6.4,
    8.8, 8.1; `transfer_ablation-full-zoo-75-epochs.json` in benchmarks/results); 8,000 models (8
    per training task, not 2) start them at 0.883 and need 9.2 epochs, and the nearest-task init,
    with four times the models to pick from, catches up (0.886;
    `transfer_ablation-full-zoo-8000-models.json`); models trained with the fine-tuning recipe
    itself (lr 3e-3, no weight decay: no hyperparameter spread, zoo validation 0.952 against
    0.951) start them at 0.875 and need 8.3 (`transfer_ablation-full-zoo-fixed-recipe.json`).
    What holds them back is mostly reaching new tasks: on 12 of its *training* tasks seed 0's
    generator keeps 10 of 500 samples at 0.946 on validation, a point under the zoo's own models of
    those tasks (0.956; `benchmarks/transfer_fidelity.py`, `transfer_fidelity.json`)."""
    return f"epochs={epochs}", f"checkpoints=[0,1,5,{epochs}]"


def with_zoo_words(experiment: Experiment, words: Sequence[str]) -> Experiment:
    """The experiment with `words` (``key=value``, `--zoo-words`) in its zoo recipe's words: a
    word replaces the experiment's word of the same key in place, others are appended (a zoo is
    cached under its words, so the same settings name the same zoo)."""
    merged = {w.split("=", 1)[0]: w for w in experiment.zoo_words}
    merged.update({w.split("=", 1)[0]: w for w in words})
    return dataclasses.replace(experiment, zoo_words=tuple(merged.values()))


MODES = {
    "smoke": Mode((Experiment("main", "digits-tasks",
                              ("num_models=40", "epochs=3", "checkpoints=[0,3]",
                               "models_per_shard=40")),),
                  tasks=(2,), seeds=1, gen_steps=60, hidden=64, samples=4, keep=2,
                  guidance=(1.0, 2.0), epochs=2, generator_words=("loss_on=data",)),
    "quick": Mode((Experiment("main", "mnist8-tasks", ("num_models=500", *_trained_for(10))),
                   Experiment("digits->mnist8-crop", "digits-tasks",
                              ("num_models=500", *_trained_for(10)), target_source="mnist8-crop")),
                  tasks=(5, 5), seeds=1, gen_steps=1500, hidden=512, samples=30, keep=10,
                  guidance=(1.0, 2.0, 3.0, 5.0), epochs=10),
    # The cross-dataset pair is digits <-> MNIST framed like digits (`mnist8-crop`): MNIST's
    # plain 8x8 downsampling leaves each digit in a 20x20 box of 28 pixels, at another scale
    # than sklearn's, and even a network trained on the very task on one dataset scores only
    # about a third on the other (an ad-hoc check, 6 tasks, one seed: 0.32 / 0.30 validation
    # accuracy digits -> MNIST / back, against 0.57 / 0.75 framed alike).
    # 9000 generator steps, not 3000: on the main experiment (seed 0, validation accuracy of its
    # 12 held-out tasks) sampled inits then start at 0.854 rather than 0.815 and reach random
    # init's last accuracy in 7.9 fine-tuning epochs rather than 11.1.
    "full": Mode((Experiment("main", "mnist-tasks", _trained_for(25)),
                  Experiment("digits->mnist8-crop", "digits-tasks", _trained_for(25),
                             target_source="mnist8-crop"),
                  Experiment("mnist8-crop->digits", "mnist8-crop-tasks", _trained_for(25),
                             target_source="digits")),
                 tasks=(12, 10, 10), seeds=3, gen_steps=9000, hidden=512, samples=500, keep=10,
                 guidance=(1.0, 2.0, 3.0, 5.0), epochs=25),
}
# Few-shot: the full mode's zoos, generators and tasks, but every init is fine-tuned on 10
# labelled examples per class (the support set itself) in batches of 10 — 5 steps an epoch.
MODES["fewshot"] = dataclasses.replace(MODES["full"], train_per_class=10, batch_size=10,
                                       zoos_of="full")


def _digest(value, size: int = 8) -> str:
    """A short hash of a JSON-able value: cached zoos, generators and runs are named by what
    made them, so nothing cached under other settings is reused."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:size]


def open_or_build(root: Path, experiment: Experiment, mode: str) -> Zoo:
    path = root / f"{experiment.recipe}-{mode}-{_digest(experiment.zoo_words)}"
    try:
        return Zoo.open(path)
    except ZooError:
        print(f"building {path} ...", flush=True)
        return build_zoo(get_recipe(experiment.recipe, list(experiment.zoo_words)), path,
                         progress=mode != "smoke")


def target_tasks(zoo: Zoo, experiment: Experiment, count: int) -> list[Task]:
    """`count` of the zoo's held-out tasks, drawn by a fixed seed (the table lists tasks in
    lexicographic order, whose first ones all share classes 0, 1, 2), moved to the target source
    for a cross-dataset experiment."""
    held = tasks_of(zoo.manifest, "heldout")
    pick = np.sort(np.random.default_rng(0).choice(len(held), min(count, len(held)),
                                                   replace=False))
    held = [held[i] for i in pick]
    if experiment.target_source:
        held = [Task(experiment.target_source, t.classes, t.transform) for t in held]
    return held


# Generator, training and transfer config fields added after generators and runs were cached,
# with their defaults: named in a cache key only when set, so that cached ones keep their names.
_ADDED_LATER = {"task_relabel": False, "head_epochs": 0, "keep_by": "val", "warmup_epochs": 0.0,
                "microbatch": 0, "lr_schedule": "constant", "head_fit": "sgd", "eta": 0.0}


def _described(config) -> dict:
    """A config as its cache key names it (see _ADDED_LATER)."""
    return {k: v for k, v in to_dict(config).items()
            if k not in _ADDED_LATER or v != _ADDED_LATER[k]}


def generator_settings(zoo_name: str, mode: Mode, seed: int, words: Sequence[str] = ()
                       ) -> tuple[GeneratorConfig, TrainConfig, str]:
    """The generator config, its training config and its cached folder's name."""
    words = [*mode.generator_words, *words]
    config = override(GeneratorConfig(method="flow", condition_task=True, hidden=mode.hidden),
                      words)
    train = dataclasses.replace(DEFAULT_TRAIN, steps=mode.gen_steps, seed=seed)
    name = f"gen-{zoo_name}-seed{seed}-{mode.gen_steps}-" \
           f"{_digest([_described(config), _described(train)])}"
    return config, train, name


def generator_for(zoo: Zoo, root: Path, mode: Mode, seed: int,
                  words: Sequence[str] = ()) -> tuple[TrainedGenerator, str]:
    """The trained generator of (zoo, mode, seed, words) and the name of its folder, which
    says everything it was trained with (a generator or run cached under other settings is
    never reused)."""
    config, train, name = generator_settings(zoo.path.name, mode, seed, words)
    out = root / name
    if not (out / "trained").exists():  # trained generators are not realigned on a rerun
        train_generator(zoo.path, out, config, train)
        (out / "trained").write_text("trained\n")
    return TrainedGenerator.load(out), name


def run_experiment(root: Path, experiment: Experiment, count: int, mode_name: str,
                   mode: Mode, words: Sequence[str] = ()) -> dict:
    zoo = open_or_build(root, experiment, mode.zoos_of or mode_name)
    tasks = target_tasks(zoo, experiment, count)
    reports = []
    for seed in range(mode.seeds):
        gen, gen_name = generator_for(zoo, root, mode, seed, words)
        for task in tasks:
            config = mode.transfer_config(seed)
            tag = _digest(_described(config), 10)
            cache = (root / "runs" / experiment.name.replace(">", "") / gen_name
                     / f"{task.spec.replace(':', '_')}-{tag}.json")
            if cache.exists():
                report = json.loads(cache.read_text())
            else:
                start = time.perf_counter()
                report = finish(transfer(gen, task, config, progress=False))
                report["seconds"] = time.perf_counter() - start
                cache.parent.mkdir(parents=True, exist_ok=True)
                cache.write_text(json.dumps(report) + "\n")
            report["seed"] = seed
            reports.append(report)
            print(f"  {experiment.name} seed {seed} {task.spec}: " + ", ".join(
                f"{k} {v['val_epoch0']:.3f}->{v['val_final']:.3f}"
                for k, v in report["summary"].items()), flush=True)
    summary = aggregate(reports)
    chance = reports[0]["chance"]
    return {"experiment": experiment.name, "recipe": experiment.recipe,
            "zoo": str(zoo.path), "models": len(zoo.select(epoch="last")),
            "target_source": experiment.target_source,
            "tasks": [t.spec for t in tasks], "seeds": mode.seeds, "chance": chance,
            "summary": summary, "verdicts": verdicts(reports, summary, chance, mode.epochs),
            "mean_curves": mean_curves(reports), "seconds_per_task": seconds_per_task(reports)}


def mean_curves(reports: list[dict]) -> dict[str, list[float]]:
    """Per init, validation accuracy after each epoch: the mean over every (task, seed) report
    of its networks' mean."""
    return {name: np.mean([np.nanmean(np.asarray(r["curves"][name]["val_acc"], np.float64), 0)
                           for r in reports], axis=0).tolist()
            for name in reports[0]["curves"]}


def seconds_per_task(reports: list[dict]) -> dict[str, float]:
    """Mean wall seconds per (task, seed): the whole transfer and, where the reports record them,
    its fine-tuning and exact head fit."""
    out = {"transfer": float(np.mean([r["seconds"] for r in reports]))}
    for part in ("fine_tuning_s", "head_fit_s"):
        if all(part in r.get("timing", {}) for r in reports):
            out[part[:-2]] = float(np.mean([r["timing"][part] for r in reports]))
    return out


def _paired(reports: list[dict], a: str, b: str, quantity: str) -> dict:
    """Per seed, the mean over tasks of init a's minus init b's `quantity`; mean and interval."""
    by_seed: dict[int, list[float]] = {}
    for r in reports:
        if a in r["summary"] and b in r["summary"]:
            by_seed.setdefault(r["seed"], []).append(
                r["summary"][a][quantity] - r["summary"][b][quantity])
    per_seed = [float(np.mean(v)) for v in by_seed.values()]
    return {"mean": float(np.mean(per_seed)), "ci95": t_interval(per_seed)}


def verdicts(reports: list[dict], summary: dict, chance: float, epochs: int) -> dict:
    """The issue's acceptance lines, each decided on 95 % intervals over seeds."""
    s = summary["sampled"]
    out = {"sampled_epoch0_at_least_2x_chance": s["val_epoch0"]["ci95"][0] >= 2 * chance}
    for other in ("wrong_task", "zoo_mean", "nearest_task"):
        if other in summary:
            diff = _paired(reports, "sampled", other, "val_epoch0")
            out[f"sampled_minus_{other}_epoch0"] = diff
            out[f"sampled_above_{other}_epoch0"] = diff["ci95"][0] > 0
            if "test_epoch0" in s:  # the same on test: the kept samples were chosen on val
                out[f"sampled_minus_{other}_test_epoch0"] = _paired(reports, "sampled", other,
                                                                    "test_epoch0")
    reach = s["epochs_to_random_final"]["mean"]
    out["sampled_epochs_to_random_final"] = reach
    out["sampled_reaches_random_final_within_5_epochs"] = reach <= 5
    for split in ("val_final", "test_final"):
        diff = _paired(reports, "sampled", "random", split)
        out[f"sampled_minus_random_{split}"] = diff
        out[f"sampled_not_below_random_{split}"] = diff["ci95"][1] >= 0
    return out


def print_table(result: dict) -> None:
    target = f" of {result['target_source']}" if result["target_source"] else ""
    print(f"\n{result['experiment']}: {result['recipe']} zoo ({result['models']} models) -> "
          f"{len(result['tasks'])} held-out tasks{target}, {result['seeds']} seed(s); "
          f"chance {result['chance']:.2f}")
    cols = ["val_epoch0", "test_epoch0", "val_epoch1", "val_epoch5", "val_final", "test_final",
            "epochs_to_random_final"]
    head = ["init"] + cols
    rows = []
    for name, row in result["summary"].items():
        cells = [name]
        for c in cols:
            if c not in row:
                cells.append("-")
                continue
            lo, hi = row[c]["ci95"]
            cells.append(f"{row[c]['mean']:.3f} [{lo:.3f}, {hi:.3f}]")
        rows.append(cells)
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    for r in [head] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    for k, v in result["verdicts"].items():
        if isinstance(v, bool):
            print(f"  {k}: {'yes' if v else 'NO'}")


# ----------------------------------------------------------------------------- diagnoses
# Scripts that look into one cached generator of the main experiment (transfer_heads.py,
# transfer_fidelity.py) share their options, their setup and how they report.
def diagnosis_parser(doc: str, benchmark: str) -> argparse.ArgumentParser:
    """--smoke, --seed, --out and --save (to benchmarks/results/{benchmark}.json)."""
    parser = argparse.ArgumentParser(description=" ".join(doc.split("\n\n")[0].split()))
    parser.add_argument("--smoke", action="store_true", help="seconds: a tiny digits zoo")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    parser.add_argument("--out", default=None,
                        help=f"zoos and generators (default: the transfer benchmark's cache, "
                             f"{CACHE})")
    parser.add_argument("--save", action="store_true",
                        help=f"write benchmarks/results/{benchmark}.json (not with --smoke)")
    return parser


def diagnosis_mode(parser: argparse.ArgumentParser, args) -> tuple[str, Mode]:
    """The mode (smoke or full) of parsed `args`; a seed the mode never trains is an error."""
    name = "smoke" if args.smoke else "full"
    mode = MODES[name]
    if not 0 <= args.seed < mode.seeds:
        parser.error(f"--seed: the {name} mode trains generator seeds 0..{mode.seeds - 1}")
    return name, mode


@contextlib.contextmanager
def main_generator(args, mode_name: str, mode: Mode):
    """(zoo, generator, its folder's name) of the main experiment at `args.seed`, built or
    trained if not cached (in a scratch folder with --smoke, removed afterwards)."""
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.out or (scratch if args.smoke else CACHE))
        zoo = open_or_build(root, mode.experiments[0], mode_name)
        gen, name = generator_for(zoo, root, mode, args.seed)
        yield zoo, gen, name


def save_and_print(payload: dict, save: bool) -> None:
    """Write `payload` to benchmarks/results/{its benchmark}.json with `save` (never a smoke run)
    and print it as the last line."""
    if save and payload["mode"] != "smoke":
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"{payload['benchmark']}.json").write_text(json.dumps(payload, indent=1)
                                                              + "\n")
    print(json.dumps(payload))


# The options that change what the benchmark runs (argparse dests; None or "" when not given): any
# of them makes the run an ablation, which --save refuses.
ABLATION_OPTIONS = ("words", "lr", "cond_scalar", "samples", "seeds", "guidance", "zoo_words",
                    "head_epochs", "head_fit", "keep_by", "warmup_epochs", "support", "lr_schedule",
                    "optimizer", "epochs")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    speed = parser.add_mutually_exclusive_group()
    speed.add_argument("--quick", action="store_true", help="one experiment, 5 tasks, 1 seed")
    speed.add_argument("--smoke", action="store_true", help="seconds: a tiny digits zoo")
    speed.add_argument("--fewshot", action="store_true",
                       help="the full run's zoos, generators and tasks; fine-tuning on 10 "
                            "examples per class")
    parser.add_argument("--out", default=None,
                        help="zoos, generators and finished reports (default: a temporary folder "
                             f"in smoke mode, {CACHE} otherwise)")
    parser.add_argument("--experiments", default=None,
                        help="comma-separated subset of the mode's experiments")
    parser.add_argument("--save", action="store_true",
                        help="write benchmarks/results/transfer-<mode>.json (not in smoke mode; "
                             "-<N>steps and -<experiments> are added for --gen-steps and a "
                             "subset of --experiments)")
    parser.add_argument("--words", default="",
                        help="extra generator config words, space-separated, after the mode's "
                             "(an ablation of the benchmark's generator, e.g. "
                             "'loss_on=velocity'; not with --save)")
    parser.add_argument("--lr", default=None, metavar="R[,R...]",
                        help="fine-tuning learning rate(s) instead of the mode's (an ablation; "
                             "not with --save)")
    parser.add_argument("--cond-scalar", default="", metavar="V",
                        help="the scalar condition asked of sampled networks (with "
                             "--words condition_scalar=COLUMN; an ablation, not with --save)")
    parser.add_argument("--gen-steps", type=int, default=None, metavar="N",
                        help="generator training steps instead of the mode's (--save then "
                             "writes transfer-<mode>-<N>steps.json)")
    parser.add_argument("--samples", type=int, default=None, metavar="N",
                        help="networks sampled per guidance weight instead of the mode's (the "
                             "best --keep of them are kept on validation; an ablation, not with "
                             "--save)")
    parser.add_argument("--seeds", type=int, default=None,
                        help="the first N generator seeds only (a look at one seed; not with "
                             "--save)")
    parser.add_argument("--guidance", default=None, metavar="W[,W...]",
                        help="guidance weights tried for the sampled init instead of the mode's "
                             "(the best on validation is used; an ablation, not with --save)")
    parser.add_argument("--zoo-words", default="",
                        help="zoo recipe words, space-separated, replacing the experiments' own "
                             "of the same key (new zoos and generators, e.g. 'num_models=8000' "
                             "or 'epochs=75 checkpoints=[0,1,5,75]'; an ablation, not with "
                             "--save)")
    parser.add_argument("--head-epochs", type=int, default=None, metavar="N",
                        help="of the fine-tuning epochs, the first N train the head alone, for "
                             "every init (linear probing, then fine-tuning) instead of the "
                             "mode's (an ablation, not with --save)")
    parser.add_argument("--head-fit", choices=("sgd", "exact"), default=None,
                        help="how the head epochs train the head: the optimizer (sgd) or, with "
                             "--head-epochs 1, a softmax regression solved to convergence "
                             "(exact), instead of the mode's (an ablation, not with --save)")
    parser.add_argument("--keep-by", choices=("val", "probe"), default=None,
                        help="keep the sampled (and nearest-task) networks best by validation "
                             "accuracy as they are (val) or of a linear probe of their features "
                             "(probe) instead of the mode's (an ablation, not with --save)")
    parser.add_argument("--warmup-epochs", type=float, default=None, metavar="E",
                        help="raise the fine-tuning learning rate linearly over the first E "
                             "epochs, every init alike, instead of the mode's (an ablation, not "
                             "with --save)")
    parser.add_argument("--support", type=int, default=None, metavar="N",
                        help="labelled examples per class the sampled init is conditioned on "
                             "(and the nearest tasks found by) instead of the mode's; the "
                             "generators are the mode's (an ablation, not with --save)")
    parser.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=None,
                        help="the fine-tuning rate's schedule, every init alike, instead of the "
                             "mode's (an ablation, not with --save)")
    parser.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default=None,
                        help="the fine-tuning optimizer, every init alike, instead of the mode's "
                             "(pair it with --lr; an ablation, not with --save)")
    parser.add_argument("--epochs", type=int, default=None, metavar="N",
                        help="fine-tuning epochs instead of the mode's (with --lr-schedule cosine: "
                             "a shorter budget, annealed; an ablation, not with --save)")
    parser.add_argument("--save-ablation", default=None, metavar="TAG",
                        help="with ablation options: write the run to "
                             "benchmarks/results/transfer_ablation-<mode>-<TAG>.json, its "
                             "options recorded (never over the benchmark's own file)")
    args = parser.parse_args(argv)
    flag = lambda dest: "--" + dest.replace("_", "-")
    given = [flag(a) for a in ABLATION_OPTIONS if getattr(args, a) not in (None, "")]
    ablation = bool(given)
    if ablation and args.save:
        parser.error(f"{', '.join(map(flag, ABLATION_OPTIONS))} run an ablation, not the "
                     f"benchmark (given: {', '.join(given)}): drop --save (--save-ablation TAG "
                     f"keeps it apart)")
    if args.save_ablation is not None:
        if not ablation:
            parser.error("--save-ablation saves an ablation: give its options (--seeds 1 for "
                         "the benchmark's first seed alone); --save saves the benchmark")
        if not args.save_ablation.replace("-", "").isalnum():
            parser.error(f"--save-ablation {args.save_ablation!r}: use letters, digits and '-'")
    if args.gen_steps is not None and args.gen_steps < 1:
        parser.error(f"--gen-steps must be positive, got {args.gen_steps}")
    try:
        override(GeneratorConfig(condition_task=True), args.words.split())  # as generator_for
    except ValueError as error:  # ConfigError: an unknown key or a bad value, named
        parser.error(f"--words: {error}")
    mode_name = ("smoke" if args.smoke else "quick" if args.quick else
                 "fewshot" if args.fewshot else "full")
    mode = MODES[mode_name]

    def checked(mode: Mode, option: str, **fields) -> Mode:
        """`mode` with `fields` replaced, as TransferConfig reads and checks them."""
        try:
            config = TransferConfig(epochs=mode.epochs, **fields)
        except ValueError as error:  # ConfigError, naming the field
            parser.error(f"{option}: {error}")
        return dataclasses.replace(mode, **{k: getattr(config, k) for k in fields})

    if args.epochs is not None:
        if args.epochs < 1:
            parser.error(f"--epochs must be positive, got {args.epochs}")
        mode = dataclasses.replace(mode, epochs=args.epochs)  # first: the checks below read it
    if args.lr:
        mode = checked(mode, "--lr", lr=args.lr)
    if args.cond_scalar:
        mode = dataclasses.replace(mode, cond_scalar=args.cond_scalar)
    if args.keep_by:
        mode = dataclasses.replace(mode, keep_by=args.keep_by)
    if args.head_epochs is not None:
        mode = checked(mode, "--head-epochs", head_epochs=args.head_epochs)
    if args.head_fit:
        mode = checked(mode, "--head-fit", head_fit=args.head_fit, head_epochs=mode.head_epochs)
    if args.warmup_epochs is not None:
        mode = checked(mode, "--warmup-epochs", warmup_epochs=args.warmup_epochs)
    if args.guidance:
        mode = checked(mode, "--guidance", guidance=args.guidance)
    if args.support is not None:
        mode = checked(mode, "--support", support=args.support)
    if args.lr_schedule:
        mode = dataclasses.replace(mode, lr_schedule=args.lr_schedule)
    if args.optimizer:
        mode = dataclasses.replace(mode, optimizer=args.optimizer)
    if args.samples is not None:
        if args.samples < mode.keep:
            parser.error(f"--samples must be at least the mode's keep ({mode.keep}); got "
                         f"{args.samples}")
        mode = dataclasses.replace(mode, samples=args.samples)
    if args.seeds:
        mode = dataclasses.replace(mode, seeds=min(args.seeds, mode.seeds))
    if args.gen_steps:
        mode = dataclasses.replace(mode, gen_steps=args.gen_steps)
    if args.zoo_words:
        mode = dataclasses.replace(mode, experiments=tuple(
            with_zoo_words(e, args.zoo_words.split()) for e in mode.experiments))
        for experiment in mode.experiments:
            try:
                get_recipe(experiment.recipe, list(experiment.zoo_words))
            except ValueError as error:  # RecipeError: an unknown key or a bad value, named
                parser.error(f"--zoo-words: {error}")
    chosen = None if args.experiments is None else set(args.experiments.split(","))
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.out or (scratch if args.smoke else CACHE))
        root.mkdir(parents=True, exist_ok=True)
        results = []
        for experiment, count in zip(mode.experiments, mode.tasks):
            if chosen is None or experiment.name in chosen:
                results.append(run_experiment(root, experiment, count, mode_name, mode,
                                              args.words.split()))
    for result in results:
        print_table(result)
    payload = {"benchmark": "transfer", "mode": mode_name, "cpu_count": os.cpu_count(),
               "settings": dataclasses.asdict(mode), "experiments": results}
    if args.save and mode_name != "smoke":
        # Longer-trained generators or a subset of the experiments: a file of their own, beside
        # (never over) the mode's.
        suffix = "" if mode.gen_steps == MODES[mode_name].gen_steps else f"-{mode.gen_steps}steps"
        if chosen is not None:
            suffix += "-" + "+".join(e.name for e in mode.experiments if e.name in chosen)
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"transfer-{mode_name}{suffix}.json").write_text(
            json.dumps(payload, indent=2) + "\n")
    if args.save_ablation is not None and mode_name != "smoke":
        # The options as given, beside the settings they produced: the table names the ablation.
        options = without_options(argv if argv is not None else sys.argv[1:],
                                  "--save-ablation")
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"transfer_ablation-{mode_name}-{args.save_ablation}.json").write_text(
            json.dumps({**payload, "ablation": {"tag": args.save_ablation, "options": options}},
                       indent=2) + "\n")
    print(json.dumps(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
