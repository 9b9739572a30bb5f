"""Transfer: sample networks for a task a generator never saw, fine-tune them, compare inits.

`transfer(generator, task)` (what `wsl transfer` runs):

1. builds the task's data (`wsl.zoos.tasks.task_dataset`) and a support set of a few labelled
   training examples per class, described to the task-conditioned generator as per-class
   features (`wsl.zoos.tasks.support_features`);
2. makes `samples` starting networks for each of the inits compared:

   * ``sampled``: the generator conditioned on the support set (optionally the best `keep` of
     `samples` by *validation* accuracy of the task, and the guidance weight, among candidates,
     whose samples score best there);
   * ``random``: the training zoo's init scheme;
   * ``zoo_mean``: the average of the aligned training zoo;
   * ``nearest_task``: trained zoo models of the training task whose support features are
     nearest the target's (with `keep`: the best by validation accuracy among as many models of
     the nearest tasks as there are samples — the same selection budget);
   * ``wrong_task``: the generator conditioned on another task (the other classes of the source,
     same transform): a control that the condition, not the generator alone, carries the task;

3. fine-tunes all of them at once with the population trainer (one vmapped program, the same
   batches for every init; with `head_epochs`, the first epochs train the output layer alone)
   and records validation accuracy after every epoch; the test split is scored once, after the
   last epoch.

Nothing here reads the test split to choose anything.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Literal

import jax
import numpy as np

from wsl.config import ConfigError, coerce_fields, to_dict
from wsl.errors import WslError
from wsl.models.weight_generator import scalar_condition
from wsl.zoos.init_schemes import initial_population
from wsl.zoos.population import (
    LR_SCHEDULES,
    OPTIMIZERS,
    TrainSettings,
    shared_hparams,
    train_population,
)
from wsl.zoos.scoring import linear_probe_accuracy, population_metrics, refit_heads
from wsl.zoos.store import Zoo
from wsl.zoos.tasks import (
    Task,
    draw_support,
    source_dataset,
    support_features,
    task_dataset,
    task_support_features,
)

INITS = ("sampled", "random", "zoo_mean", "nearest_task", "wrong_task")


class TransferError(WslError, ValueError):
    """A generator, task or option that transfer cannot use."""


@dataclasses.dataclass(frozen=True)
class TransferConfig:
    """How networks are sampled for a task and fine-tuned on it."""

    samples: int = 10  # networks per init
    keep: int = 0  # sampled: keep the best `keep` of `samples` by validation accuracy; 0 = all
    # What "best" means for `keep` (and the guidance weight): "val", the networks' validation
    # accuracy as they are; "probe", the validation accuracy of a linear read-out of their
    # features fit on the task's fine-tuning training split (`linear_probe_accuracy`) — their
    # features, not their heads, since fine-tuning refits a head within an epoch.
    keep_by: Literal["val", "probe"] = "val"
    epochs: int = 25
    support: int = 10  # support examples per class (from the task's training split)
    # Labelled examples per class the networks are fine-tuned on, drawn like the support set
    # (which they contain when support ≤ train_per_class): the few-shot regime a new task
    # usually comes in. 0 = the task's whole training split.
    train_per_class: int = 0
    # Fine-tuning learning rates. With several, every init is fine-tuned at each and reported
    # at the one whose networks end best on the task's validation split: an init that starts
    # near a solution may want a smaller step than one that starts from noise, and each gets
    # its own (chosen like the guidance weight, on validation only).
    lr: tuple[float, ...] = (3e-3,)
    # Linear probing, then fine-tuning (LP-FT): the first `head_epochs` of the `epochs` train the
    # output layer alone, every init alike, and count as epochs. A network whose features suit
    # the task but whose head does not (a sampled one's, on a task its generator never saw) is
    # otherwise pulled off its features by the head's large early gradients (Kumar et al.,
    # "Fine-Tuning can Distort Pretrained Features", 2022). 0 = fine-tune everything throughout.
    head_epochs: int = 0
    # How the head-only phase trains the head: "sgd", `head_epochs` epochs of the optimizer;
    # "exact", the softmax regression of the fine-tuning training split on each network's frozen
    # features solved to convergence (`wsl.zoos.scoring.refit_heads`: one forward pass, then
    # L-BFGS on the features), counted as the one head epoch (needs head_epochs = 1) — linear
    # probing at its best, so that the epochs after it start from each network's best head.
    head_fit: Literal["sgd", "exact"] = "sgd"
    # Linear learning-rate warmup over the first `warmup_epochs` epochs of fine-tuning (of each
    # phase with head_epochs, whose optimizer starts afresh), every init alike: Adam's first
    # steps move every weight by about the learning rate whatever its gradient, which may throw
    # an init that starts near a solution off it (on the transfer benchmark it does not help the
    # sampled inits: benchmarks/transfer.py, Mode.warmup_epochs). 0 = none.
    warmup_epochs: float = 0.0
    # "constant" or "cosine" (annealed to 0 over the fine-tuning epochs, over each phase's with
    # head_epochs), every init alike (TrainSettings.lr_schedule): a short fine-tuning budget
    # usually ends annealed.
    lr_schedule: str = "constant"
    weight_decay: float = 0.0
    optimizer: str = "adam"
    batch_size: int = 32
    seed: int = 0
    # Guidance weights tried for the sampled init; the one whose (kept) samples score best on
    # the task's validation split is used. () = the generator's own.
    guidance: tuple[float, ...] = ()
    # With a generator trained also with condition_scalar (e.g. val_acc): the value asked of
    # the sampled (and wrong-task) networks, a number or a training-population quantile such as
    # "q90". "" = none (the scalar condition dropped, as in training's classifier-free dropout).
    cond_scalar: str = ""
    inits: tuple[str, ...] = INITS

    def __post_init__(self):
        coerce_fields(self)
        for field, low in (("samples", 1), ("epochs", 0), ("support", 1), ("batch_size", 1),
                           ("keep", 0), ("train_per_class", 0), ("head_epochs", 0)):
            if getattr(self, field) < low:
                raise ConfigError(f"{field}: must be ≥ {low}, got {getattr(self, field)}")
        if self.head_epochs > self.epochs:
            raise ConfigError(f"head_epochs: {self.head_epochs} of {self.epochs} epochs train the "
                              f"head alone; head_epochs ≤ epochs")
        if self.head_fit == "exact" and self.head_epochs != 1:
            raise ConfigError(f"head_fit='exact' fits the head once, counted as one epoch: it "
                              f"needs head_epochs=1, got {self.head_epochs}")
        if self.keep > self.samples:
            raise ConfigError(f"keep: the best {self.keep} of {self.samples} samples cannot be "
                              f"kept; keep ≤ samples")
        if not self.lr or any(not r > 0 for r in self.lr) or len(set(self.lr)) != len(self.lr):
            raise ConfigError(f"lr: distinct rates > 0, at least one, got {list(self.lr)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule: {self.lr_schedule!r} is none of {list(LR_SCHEDULES)}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be ≥ 0, got {self.weight_decay}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ConfigError(f"warmup_epochs: must lie in [0, epochs = {self.epochs}], got "
                              f"{self.warmup_epochs}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer: unknown {self.optimizer!r}; choose from "
                              f"{sorted(OPTIMIZERS)}")
        if any(not g >= 0 for g in self.guidance):
            raise ConfigError(f"guidance: weights must be ≥ 0, got {list(self.guidance)}")
        unknown = [i for i in self.inits if i not in INITS]
        if unknown or not self.inits or len(set(self.inits)) != len(self.inits):
            raise ConfigError(f"inits: choose distinct ones from {list(INITS)}, got "
                              f"{list(self.inits)}")

    @property
    def count(self) -> int:
        """Networks fine-tuned per init."""
        return self.keep or self.samples


def fine_tuning_data(data, config: TransferConfig):
    """The task's data with its training split cut to `config.train_per_class` examples per
    class (the same draw as the support set, so the support is among them); val and test whole."""
    if not config.train_per_class:
        return data
    x, y = draw_support(data, config.train_per_class, config.seed)
    return dataclasses.replace(data, x_train=x, y_train=y)


def control_task(task: Task) -> Task:
    """The wrong-task control: the first k source classes not in the task (same transform), or,
    where the source has too few others, the task's classes in shifted label order."""
    total = source_dataset(task.source).num_classes
    others = [c for c in range(total) if c not in task.classes]
    classes = others[:task.num_classes] if len(others) >= task.num_classes \
        else task.classes[1:] + task.classes[:1]
    return Task(task.source, tuple(classes), task.transform)


def _check_fit(gen, task: Task, data, config: TransferConfig) -> tuple[int, int]:
    info = gen.meta.get("task")
    if not info:
        raise TransferError(f"generator {gen.directory} is not task-conditioned; train one on a "
                            f"multi-task zoo with condition_task=true")
    gen.check_task_data(task.spec, data)
    if config.cond_scalar:  # an unknown quantile or a generator without the condition: now
        gen.scalar_target(_scalar(config.cond_scalar))
    return tuple(info["shape"])


def training_rows(gen) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The metrics of the generator's training rows and their aligned weights."""
    zoo = Zoo.open(gen.meta["zoo"])
    rows = np.asarray(gen.meta["selection"]["rows"], np.int64)
    metrics = {k: np.asarray(v)[rows] for k, v in zoo.metrics.items()}
    return metrics, np.load(Path(gen.directory) / "aligned_train.npy")


def _random_init(gen, metrics: dict[str, np.ndarray], count: int, seed: int) -> np.ndarray:
    """The training zoo's init scheme (its most common; the median init scale)."""
    schemes = [str(s) for s in metrics.get("init", ["default"])]
    scheme = max(set(schemes), key=schemes.count)
    scale = float(np.median(np.asarray(metrics.get("init_scale", [1.0]), np.float64)))
    bias = float(np.median(np.asarray(metrics.get("bias_init", [0.0]), np.float64)))
    arch = gen.architecture
    params = initial_population(arch, np.arange(count) + 1_000_003 * (seed + 1), [scheme] * count,
                                [scale] * count, [bias] * count, seed)
    return np.asarray(arch.weight_space.flatten(params), np.float32)


def _tasks_by_distance(target: np.ndarray, tasks: list[str], per_class: int,
                       seed: int) -> list[str]:
    """Training tasks ordered by the distance of their support features to the target's."""
    dist = [float(np.linalg.norm(task_support_features(t, per_class=per_class, seed=seed)
                                 - target)) for t in tasks]
    return [tasks[i] for i in np.argsort(dist, kind="stable")]


def _best(flat: np.ndarray, data, keep: int, arch,
          config: TransferConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The `keep` networks of `flat` (0: all) that score best by `config.keep_by`, every
    network's validation accuracy and every network's score (the same with keep_by="val")."""
    val = population_metrics(arch, flat, data, splits=("val",))["val_acc"]
    score = val
    if config.keep_by == "probe" and keep:
        train = fine_tuning_data(data, config)
        score = linear_probe_accuracy(arch, flat, (train.x_train, train.y_train),
                                      (data.x_val, data.y_val))
    if not keep:
        return np.arange(len(flat)), val, score
    return np.argsort(-np.nan_to_num(score, nan=-1.0), kind="stable")[:keep], val, score


def _scalar(text: str) -> float | str | None:
    """A `cond_scalar` setting as `TrainedGenerator.sample` takes it: a number, a quantile name
    ("q90") or None ("")."""
    return scalar_condition(text) if text else None


def _sampled(gen, task: Task, data, features, config: TransferConfig) -> tuple[np.ndarray, dict]:
    """Sampled networks for the task: at each guidance candidate `samples` networks; the
    candidate whose kept networks score best on the task's validation split wins."""
    arch = gen.architecture
    candidates = config.guidance or (None,)
    tried = []
    for guidance in candidates:
        flat = gen.sample(config.samples, seed=config.seed, cond_task=features,
                          guidance=guidance, cond_scalar=_scalar(config.cond_scalar))
        kept, val, score = _best(flat, data, config.keep, arch, config)
        tried.append({"guidance": guidance, "flat": flat[kept], "kept": kept, "val": val,
                      "score": score, "val_mean": float(np.nanmean(val[kept])),
                      "score_mean": float(np.nanmean(score[kept]))})
    best = max(tried, key=lambda t: t["score_mean"])  # the first best on ties
    note = {"task": task.spec, "guidance": best["guidance"],
            "val_acc_by_guidance": {str(t["guidance"]): t["val_mean"] for t in tried}}
    if config.keep:
        note.update(kept=best["kept"].tolist(), val_acc_of_all=best["val"].tolist())
    if config.keep and config.keep_by == "probe":
        note.update(probe_acc_by_guidance={str(t["guidance"]): t["score_mean"] for t in tried},
                    probe_acc_of_all=best["score"].tolist())
    return best["flat"], note


def make_inits(gen, task: Task, config: TransferConfig) -> dict[str, Any]:
    """The starting networks of every init (flat weights (count, params)) and what each is.

    Choices use the task's validation split only: the guidance weight and, with `keep`, which
    samples are kept; the nearest-task init gets the same budget (its `keep` best of the
    nearest tasks' models by validation accuracy)."""
    data = task_dataset(task)
    shape = _check_fit(gen, task, data, config)
    support_x, support_y = draw_support(data, config.support, config.seed)
    features = support_features(support_x, support_y, data.num_classes)
    if features.shape != shape:
        raise TransferError(f"task {task.spec}: support features {features.shape} do not match "
                            f"the generator's {shape} (classes, features)")
    arch = gen.architecture
    n = config.count
    inits: dict[str, np.ndarray] = {}
    notes: dict[str, Any] = {}
    need_zoo = {"random", "zoo_mean", "nearest_task"} & set(config.inits)
    metrics, aligned = training_rows(gen) if need_zoo else (None, None)
    if "sampled" in config.inits:
        inits["sampled"], notes["sampled"] = _sampled(gen, task, data, features, config)
    for name in config.inits:
        if name == "wrong_task":
            which = control_task(task)
            cond = support_features(*draw_support(task_dataset(which), config.support,
                                                  config.seed), which.num_classes)
            guidance = notes.get("sampled", {}).get("guidance") if config.guidance else None
            inits[name] = gen.sample(n, seed=config.seed + 1, cond_task=cond, guidance=guidance,
                                     cond_scalar=_scalar(config.cond_scalar))
            notes[name] = {"task": which.spec, "guidance": guidance}
        elif name == "random":
            inits[name] = _random_init(gen, metrics, n, config.seed)
        elif name == "zoo_mean":
            inits[name] = np.repeat(aligned.mean(0, keepdims=True), n, axis=0).astype(np.float32)
        elif name == "nearest_task":
            specs = np.asarray([str(t) for t in metrics["task"]])
            trained = sorted(set(specs.tolist()))
            if task.spec in trained:
                raise TransferError(f"task {task.spec} is one the generator's zoo was trained on; "
                                    f"transfer is measured on held-out tasks")
            same_source = [t for t in trained if t.split(":")[0] == task.source] or trained
            order = _tasks_by_distance(features, same_source, config.support, config.seed)
            # The nearest task's models, then the next task's, until there are `samples`.
            members, used = [], []
            for spec in order:
                members.extend(np.flatnonzero(specs == spec).tolist())
                used.append(spec)
                if len(members) >= (config.samples if config.keep else n):
                    break
            pool = aligned[np.asarray(members)]
            if config.keep:
                kept, _, _ = _best(pool, data, n, arch, config)
                pool = pool[kept]
            inits[name] = pool[np.arange(n) % len(pool)].astype(np.float32)
            notes[name] = {"task": used[0], "tasks": used, "models": len(members)}
    inits = {name: inits[name] for name in config.inits}  # the requested order
    return {"inits": inits, "notes": notes, "support": {"per_class": config.support,
                                                        "examples": int(len(support_y))}}


def transfer(generator, task: str | Task, config: TransferConfig = TransferConfig(), *,
             progress: bool = True, mesh=None) -> dict[str, Any]:
    """Sample for `task`, fine-tune every init for `config.epochs` epochs and return the
    learning curves (`wsl.eval.transfer` summarises, plots and writes them).

    The fine-tuned networks are sharded over `mesh` (one axis; default: every local device, as
    `wsl.zoos.population.train_population`); sampling runs on the default device."""
    from wsl.train.generator import TrainedGenerator

    gen = generator if isinstance(generator, TrainedGenerator) else \
        TrainedGenerator.load(generator)
    task = task if isinstance(task, Task) else Task.parse(task)
    made = make_inits(gen, task, config)
    names = list(made["inits"])
    flat = np.concatenate([made["inits"][k] for k in names])
    n, rates = config.count, config.lr
    arch = gen.architecture
    data = fine_tuning_data(task_dataset(task), config)
    # One population: every init at every rate, rate-major. Network i of every init and rate
    # has the same seed, so all see the same batches.
    flat = np.tile(flat, (len(rates), 1))
    total = len(flat)
    hparams = shared_hparams(list(np.tile(np.arange(n), len(names) * len(rates))),
                             lr=rates[0], weight_decay=config.weight_decay)
    hparams["lr"] = np.repeat(rates, len(names) * n).tolist()
    # (epochs, tensors trained): the head-only phase, then the rest. An exact head fit is a
    # phase of no epochs (it records where every init starts) whose networks' heads are then
    # refit; the next phase's epoch 0 is the refit networks, the curve's epoch 1.
    exact = config.head_fit == "exact"
    phases = [(0 if exact else config.head_epochs, arch.weight_space.head_paths)] \
        if config.head_epochs else []
    if config.epochs > config.head_epochs or not phases:
        phases.append((config.epochs - config.head_epochs, ()))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.epochs, unit="epoch", desc=f"fine-tuning {total} networks")
    params, curves_by_phase, test_at_start = arch.weight_space.unflatten(flat), [], None
    timing = {"fine_tuning_s": 0.0}
    try:
        for phase, (epochs, trainable) in enumerate(phases):
            start = time.perf_counter()
            # Each phase draws its own batch order (seed + phase), as one run's epochs do.
            settings = TrainSettings(epochs=epochs, checkpoints=tuple(range(epochs + 1)),
                                     batch_size=config.batch_size, optimizer=config.optimizer,
                                     seed=config.seed + phase, trainable=trainable,
                                     warmup_epochs=min(config.warmup_epochs, epochs),
                                     lr_schedule=config.lr_schedule)
            result = train_population(arch, data, hparams, settings, mesh=mesh,
                                      initial_params=params,
                                      on_epoch=(lambda _: bar.update(1)) if bar else None)
            params = jax.tree.map(lambda a: a[:, -1], result.params)
            timing["fine_tuning_s"] += time.perf_counter() - start
            # A phase's epoch 0 is the previous phase's last epoch (but the refit's, its own).
            refit = exact and phase == 1
            curves_by_phase.append(result.metrics["val_acc"][:, 0 if refit or not curves_by_phase
                                                             else 1:])
            if test_at_start is None:
                test_at_start = result.metrics["test_acc"][:, 0]
            if exact and phase == 0:
                start = time.perf_counter()
                params = arch.weight_space.unflatten(refit_heads(
                    arch, params, data.x_train, data.y_train))
                timing["head_fit_s"] = time.perf_counter() - start
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    val, test = np.concatenate(curves_by_phase, axis=1), result.metrics["test_acc"]
    curves = {}
    for i, name in enumerate(names):
        blocks = [slice((r * len(names) + i) * n, (r * len(names) + i + 1) * n)
                  for r in range(len(rates))]
        # The rate whose networks end best on validation (the first of equals).
        final = [float(np.nanmean(val[b, -1])) for b in blocks]
        best = int(np.nanargmax(np.nan_to_num(final, nan=-1.0)))
        rows = blocks[best]
        curves[name] = {"val_acc": val[rows].tolist(),
                        # Test accuracy is reported, never chosen on: after the last epoch,
                        # and of the inits themselves — the kept samples were chosen on
                        # validation accuracy, which their epoch-0 validation accuracy so
                        # overstates; their epoch-0 test accuracy does not.
                        "test_acc_final": test[rows, -1].tolist(),
                        "test_acc_epoch0": test_at_start[rows].tolist(),
                        **made["notes"].get(name, {})}
        if len(rates) > 1:
            curves[name].update(lr=rates[best],
                                val_final_by_lr={str(r): f for r, f in zip(rates, final)})
    return {"task": task.spec, "generator": str(gen.directory), "config": to_dict(config),
            "support": made["support"], "num_classes": data.num_classes,
            "chance": 1.0 / data.num_classes, "curves": curves, "timing": timing}
