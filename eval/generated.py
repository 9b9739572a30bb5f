"""Honest evaluation of a generated population against the population it was trained on.

Reported side by side for generated and training networks, never best-of-N alone:
- test accuracy: mean / median / min / max over every sample;
- novelty: for each network the maximum IoU of its set of wrongly classified test points with that
  of any training network (1 = makes exactly the mistakes of some training model), beside the same
  number for noised copies of training models at several noise levels. "More novel than noise"
  means below the noise baseline of equal accuracy: the most noised copies whose mean accuracy is
  still within half a point of the generated mean (`equal_accuracy_baseline`). Per network, the
  baseline is noised copies of its nearest training model at its own accuracy, which also catches
  a generator that copies the best training models (more accurate than any noised population);
- diversity: mean pairwise distance of weight vectors and mean pairwise prediction disagreement;
- each sample's relative distance to the affine span of the training set (0 = inside the span,
  the failure mode of PCA-based generators).

One definition of accuracy holds in the whole report: every network's (generated, training and
noised alike) is recomputed here on the full test split of the zoo's dataset. A zoo's own
metrics.csv may have scored only the first `eval_examples` test examples of its recipe (2,000 for
`small-cnn`), so `wsl zoo info` can differ from this report; `compare_with_training` reads the
training zoo's recorded numbers for the same models and the report shows them beside, labelled.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from wsl.eval.errors import EvaluationError
from wsl.train.generator import TrainedGenerator
from wsl.zoos.architectures import Architecture
from wsl.zoos.datasets import dataset_from_spec
from wsl.zoos.scoring import population_predictions

# Gaussian noise added to training models, × each tensor's std over the training population (the
# generators' normalised units); dense where small models start to lose accuracy.
NOISE_LEVELS = (0.01, 0.03, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)
ACCURACY_TOLERANCE = 0.005  # "equal accuracy" for noise baselines: within half a point


def max_wrong_iou(wrong: np.ndarray, reference_wrong: np.ndarray, exclude_self: bool = False,
                  return_index: bool = False):
    """For each row of `wrong` (models × examples, bool), the max IoU with any reference row.

    With `return_index`, also the reference row that attains it (the nearest training model).
    """
    a, b = wrong.astype(np.float32), reference_wrong.astype(np.float32)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    if exclude_self:
        np.fill_diagonal(iou, -np.inf)
    best = iou.argmax(axis=1)
    top = iou[np.arange(len(iou)), best] if len(iou) else np.zeros(0)
    return (top, best) if return_index else top


def equal_accuracy_baseline(sigmas: Sequence[float], accs: Sequence[float],
                            ious: Sequence[float], accuracy: float,
                            tolerance: float = ACCURACY_TOLERANCE) -> dict[str, float]:
    """The most novel noised copies that are as accurate as `accuracy` (within `tolerance`).

    `accs` / `ious` are the accuracy and max IoU of noised copies at increasing noise `sigmas`.
    More noise makes copies both less accurate and more novel, so the fair baseline for networks
    of accuracy a is the *largest* σ whose copies still reach a − tolerance (interpolated in log σ
    between grid points). A nearest-accuracy rule would instead pick among the small σ, which all
    keep the accuracy, the one that happens to measure closest — and with it an IoU near 1 that a
    memorising generator beats. `as_accurate` is False when even the least noised copies fall
    short of a − tolerance (the generated networks are more accurate than the copies): the
    baseline is then the least noised level.
    """
    sigmas, ious = np.asarray(sigmas, np.float64), np.asarray(ious, np.float64)
    acc = np.minimum.accumulate(np.asarray(accs, np.float64))  # ignore sampling wiggles upwards
    target = accuracy - tolerance
    ok = np.nonzero(acc >= target)[0]
    if not len(ok):
        return {"sigma": float(sigmas[0]), "mean_acc": float(acc[0]),
                "median_max_iou": float(ious[0]), "as_accurate": False}
    k = int(ok[-1])
    if k == len(acc) - 1:
        return {"sigma": float(sigmas[k]), "mean_acc": float(acc[k]),
                "median_max_iou": float(ious[k]), "as_accurate": True}
    frac = (acc[k] - target) / max(acc[k] - acc[k + 1], 1e-12)
    log_sigma = np.log(sigmas[k]) + frac * (np.log(sigmas[k + 1]) - np.log(sigmas[k]))
    return {"sigma": float(np.exp(log_sigma)), "mean_acc": float(target),
            "median_max_iou": float(ious[k] + frac * (ious[k + 1] - ious[k])), "as_accurate": True}


def affine_span_distance(flat: np.ndarray, train_flat: np.ndarray) -> np.ndarray:
    """‖x − proj(x)‖ / ‖x − mean‖ for the affine span of the training vectors (0 = in the span)."""
    mean = train_flat.mean(axis=0)
    basis, s, _ = np.linalg.svd((train_flat - mean).T.astype(np.float64), full_matrices=False)
    basis = basis[:, s > s.max() * 1e-8]
    centred = (flat - mean).astype(np.float64)
    residual = centred - (centred @ basis) @ basis.T
    return np.linalg.norm(residual, axis=1) / np.maximum(np.linalg.norm(centred, axis=1), 1e-12)


def pairwise_stats(flat: np.ndarray, predictions: np.ndarray, limit: int = 200) -> dict[str, float]:
    """Mean pairwise L2 distance of weights and mean pairwise prediction disagreement."""
    flat, predictions = flat[:limit], predictions[:limit]
    n = len(flat)
    if n < 2:
        return {"pairwise_distance": float("nan"), "disagreement": float("nan")}
    sq = (flat ** 2).sum(1)
    dist = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * flat @ flat.T, 0))
    upper = np.triu_indices(n, 1)
    disagree = np.array([(predictions[i] != predictions[j]).mean() for i, j in zip(*upper)])
    return {"pairwise_distance": float(dist[upper].mean()), "disagreement": float(disagree.mean())}


def summary(values: np.ndarray) -> dict[str, float]:
    values = np.asarray(values, np.float64)
    finite = values[np.isfinite(values)]
    if not finite.size:
        return {k: float("nan") for k in ("mean", "median", "min", "max", "std")}
    return {"mean": float(finite.mean()), "median": float(np.median(finite)),
            "min": float(finite.min()), "max": float(finite.max()), "std": float(finite.std())}


@dataclasses.dataclass
class GeneratedReport:
    """Everything `evaluate_generated` measured; `table()` prints it, `to_dict()` saves it.

    `noise` holds one row per noise level (population summaries); `noise_acc` / `noise_iou`
    (training models × levels) the same per training model, from which `matched_max_iou` gives
    each generated network its own baseline: the IoU of noised copies of its nearest training
    model (the one it shares most mistakes with) at the sample's own accuracy.
    """

    generated_acc: np.ndarray
    train_acc: np.ndarray
    generated_max_iou: np.ndarray
    train_max_iou: np.ndarray
    noise: list[dict[str, float]]
    generated_diversity: dict[str, float]
    train_diversity: dict[str, float]
    span_distance: np.ndarray
    matched_max_iou: np.ndarray | None = None
    tolerance: float = ACCURACY_TOLERANCE
    test_examples: int | None = None  # size of the test split every accuracy is computed on
    # The training zoo's own metrics.csv numbers for the same models (`zoo_accuracy`), or None.
    zoo_metrics: dict | None = None

    def accuracy_source(self) -> dict:
        """Where every accuracy of the report comes from, and the training zoo's own numbers."""
        n = self.test_examples
        where = f"the full test split ({n} examples)" if n else "the full test split"
        return {"split": "test", "examples": n, "recomputed": True,
                "definition": f"every accuracy in this report (generated, training and noised "
                              f"networks alike) is recomputed on {where} of the zoo's dataset",
                "training_zoo_metrics": self.zoo_metrics}

    def noise_baseline_at(self, accuracy: float) -> dict[str, float]:
        """Noised training copies as accurate as `accuracy`: see `equal_accuracy_baseline`."""
        return equal_accuracy_baseline([r["sigma"] for r in self.noise],
                                       [r["mean_acc"] for r in self.noise],
                                       [r["median_max_iou"] for r in self.noise], accuracy,
                                       self.tolerance)

    def to_dict(self) -> dict:
        gen = summary(self.generated_acc)
        baseline = self.noise_baseline_at(gen["mean"])
        iou = summary(self.generated_max_iou)
        out = {
            "num_generated": int(len(self.generated_acc)), "num_train": int(len(self.train_acc)),
            "generated_acc": gen, "train_acc": summary(self.train_acc),
            "generated_max_iou": iou, "train_max_iou": summary(self.train_max_iou),
            "noise_baselines": self.noise,
            "noise_baseline_equal_acc": {**baseline, "tolerance": self.tolerance},
            "more_novel_than_noise": bool(iou["median"] < baseline["median_max_iou"]),
            "generated_diversity": self.generated_diversity,
            "train_diversity": self.train_diversity,
            "span_distance": summary(self.span_distance),
            "accuracy_source": self.accuracy_source(),
        }
        if self.matched_max_iou is not None:
            out["matched_noise_max_iou"] = summary(self.matched_max_iou)
            out["novel_fraction"] = float(np.mean(self.generated_max_iou < self.matched_max_iou))
        return out

    def table(self) -> str:
        d = self.to_dict()
        rows = [("population", "n", "acc mean", "median", "min", "max", "max IoU (median)")]
        for name, acc, iou, n in (("training", d["train_acc"], d["train_max_iou"], d["num_train"]),
                                  ("generated", d["generated_acc"], d["generated_max_iou"],
                                   d["num_generated"])):
            rows.append((name, str(n), f"{acc['mean']:.4f}", f"{acc['median']:.4f}",
                         f"{acc['min']:.4f}", f"{acc['max']:.4f}", f"{iou['median']:.3f}"))
        for row in self.noise:
            rows.append((f"train + noise σ={row['sigma']:g}", str(row["n"]),
                         f"{row['mean_acc']:.4f}", f"{row['median_acc']:.4f}",
                         f"{row['min_acc']:.4f}", f"{row['max_acc']:.4f}",
                         f"{row['median_max_iou']:.3f}"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.rjust(w) if i else c.ljust(w)
                           for i, (c, w) in enumerate(zip(r, widths)))
                 for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        n = self.test_examples
        lines.insert(0, f"test accuracy on the full test split{f' ({n} examples)' if n else ''}, "
                        f"recomputed here for every row, training models included:")
        zoo_line = _zoo_metrics_line(self.zoo_metrics, n)
        if zoo_line:
            lines.append(zoo_line)
        base = d["noise_baseline_equal_acc"]
        gen_iou = d["generated_max_iou"]["median"]
        if base["as_accurate"]:
            where = (f"σ≈{base['sigma']:.3g}, the most noise that keeps mean accuracy ≥ generated "
                     f"− {self.tolerance * 100:g} pt")
        else:
            where = (f"σ={base['sigma']:g}: no noised copies are as accurate as the generated "
                     f"networks, so this baseline is weak; see the per-network line")
        lines += [
            "",
            f"novelty: generated median max IoU {gen_iou:.3f} vs {base['median_max_iou']:.3f} for "
            f"noised training models of equal accuracy ({where}) -> "
            f"{'more novel' if d['more_novel_than_noise'] else 'NOT more novel'} than noise; "
            f"training models among themselves {d['train_max_iou']['median']:.3f}",
        ]
        if "novel_fraction" in d:
            lines.append(
                f"per network: {d['novel_fraction']:.0%} of generated networks are more novel than "
                f"noised copies of their nearest training model at their own accuracy (median "
                f"matched baseline {d['matched_noise_max_iou']['median']:.3f})")
        lines += [
            f"diversity: pairwise weight distance "
            f"{d['generated_diversity']['pairwise_distance']:.3f} "
            f"(training {d['train_diversity']['pairwise_distance']:.3f}), prediction disagreement "
            f"{d['generated_diversity']['disagreement']:.3f} "
            f"(training {d['train_diversity']['disagreement']:.3f})",
            f"distance to the training set's affine span (relative): median "
            f"{d['span_distance']['median']:.3f}, min {d['span_distance']['min']:.3f}",
        ]
        return "\n".join(lines)


def _zoo_metrics_line(zoo: dict | None, test_examples: int | None) -> str:
    """One line on the training zoo's own recorded test accuracy: how many examples it scored."""
    if not zoo:
        return ""
    if zoo.get("unavailable"):
        return f"(the training zoo's own metrics are not shown: {zoo['unavailable']})"
    recorded = (f"the training zoo's metrics.csv records test_acc mean {zoo['mean']:.4f}, median "
                f"{zoo['median']:.4f} for these {zoo['num_models']} models")
    limit = zoo.get("eval_examples")
    if limit is None:
        return (f"{recorded}, scored by its source on a test set this report does not know "
                f"(`wsl zoo info` shows those; the table below does not)")
    if limit == 0 or (test_examples is not None and limit >= test_examples):
        return f"{recorded}, on the full test split as well"
    return (f"{recorded} on its first {limit} test examples only (recipe eval_examples={limit}; "
            f"`wsl zoo info` shows those); the table below does not use them")


def evaluate_generated(arch: Architecture, generated_flat: np.ndarray, train_flat: np.ndarray,
                       x_test: np.ndarray, y_test: np.ndarray, *, seed: int = 0,
                       noise_levels: Sequence[float] = NOISE_LEVELS,
                       tolerance: float = ACCURACY_TOLERANCE) -> GeneratedReport:
    """Compare generated networks with their training population on held-out test data.

    Architectures with BatchNorm would need their statistics recomputed on training data first;
    none of ours has BatchNorm (the ResNet uses LayerNorm / GroupNorm), so weights are used as
    they are and the test set is only ever used to score.
    """
    generated_flat = np.asarray(generated_flat, np.float32)
    train_flat = np.asarray(train_flat, np.float32)
    for name, flat in (("generated", generated_flat), ("training", train_flat)):
        if flat.ndim != 2 or flat.shape[1] != arch.num_params or not len(flat):
            raise EvaluationError(f"{name} weights must be (models ≥ 1, {arch.num_params}) for "
                             f"{arch.name!r}, got {flat.shape}")
    levels = np.asarray(noise_levels, np.float64)
    if not len(levels) or (np.diff(levels) <= 0).any() or levels[0] <= 0:
        raise EvaluationError(f"noise_levels must be positive and increasing, "
                              f"got {list(noise_levels)}")
    gen_pred = population_predictions(arch, generated_flat, x_test)
    train_pred = population_predictions(arch, train_flat, x_test)
    gen_wrong, train_wrong = gen_pred != y_test, train_pred != y_test
    gen_acc = (~gen_wrong).mean(axis=1)
    gen_iou, nearest = max_wrong_iou(gen_wrong, train_wrong, return_index=True)
    rng = np.random.default_rng(seed)
    tensor_std = np.empty(arch.num_params, np.float32)
    for start, end in arch.weight_space.offsets.values():
        tensor_std[start:end] = train_flat[:, start:end].std()
    noise, noise_acc, noise_iou = [], [], []
    for sigma in levels:
        noised = (train_flat
                  + sigma * tensor_std * rng.standard_normal(train_flat.shape).astype(np.float32))
        pred = population_predictions(arch, noised, x_test)
        acc = (pred == y_test).mean(axis=1)
        iou = max_wrong_iou(pred != y_test, train_wrong)
        noise_acc.append(acc)
        noise_iou.append(iou)
        noise.append({"sigma": float(sigma), "n": int(len(noised)), "mean_acc": float(acc.mean()),
                      "median_acc": float(np.median(acc)), "min_acc": float(acc.min()),
                      "max_acc": float(acc.max()), "median_max_iou": float(np.median(iou))})
    noise_acc, noise_iou = np.stack(noise_acc, 1), np.stack(noise_iou, 1)
    matched = np.array([equal_accuracy_baseline(levels, noise_acc[m], noise_iou[m], a,
                                                tolerance)["median_max_iou"]
                        for m, a in zip(nearest, gen_acc)])
    return GeneratedReport(
        generated_acc=gen_acc,
        train_acc=(train_pred == y_test).mean(axis=1),
        generated_max_iou=gen_iou,
        train_max_iou=max_wrong_iou(train_wrong, train_wrong, exclude_self=True),
        noise=noise,
        generated_diversity=pairwise_stats(generated_flat, gen_pred),
        train_diversity=pairwise_stats(train_flat, train_pred),
        span_distance=affine_span_distance(generated_flat, train_flat),
        matched_max_iou=matched,
        tolerance=tolerance,
        test_examples=int(len(y_test)),
    )


def report_figure(report: GeneratedReport):
    """The figure `plot_report` saves (open; the caller closes it): overlaid accuracy histograms,
    and novelty against accuracy with each noise baseline's marker labelled with its σ."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    bins = np.linspace(min(report.train_acc.min(), np.nanmin(report.generated_acc)), 1.0, 30)
    left.hist(report.train_acc, bins=bins, alpha=0.6, label=f"training (n={len(report.train_acc)})")
    left.hist(report.generated_acc, bins=bins, alpha=0.6,
              label=f"generated (n={len(report.generated_acc)})")
    left.set_xlabel("test accuracy")
    left.set_ylabel("networks")
    left.legend()
    right.scatter(report.train_acc, report.train_max_iou, s=8, alpha=0.5,
                  label="training vs others")
    right.scatter(report.generated_acc, report.generated_max_iou, s=8, alpha=0.6, label="generated")
    noise_acc = [r["mean_acc"] for r in report.noise]
    noise_iou = [r["median_max_iou"] for r in report.noise]
    right.plot(noise_acc, noise_iou, "x-", color="k", lw=0.8,
               label="noised training (mean acc, median IoU)")
    for row, x, y in zip(report.noise, noise_acc, noise_iou):
        right.annotate(f"σ={row['sigma']:g}", (x, y), xytext=(4, 4), textcoords="offset points",
                       fontsize=7)
    right.set_xlabel("test accuracy")
    right.set_ylabel("max IoU of wrong predictions vs training set")
    right.legend()
    fig.tight_layout()
    return fig


def plot_report(report: GeneratedReport, path) -> None:
    """Overlaid accuracy histograms and novelty vs accuracy (noise markers labelled with their
    σ), side by side, as a PNG (`report_figure`)."""
    import matplotlib.pyplot as plt

    fig = report_figure(report)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def compare_with_training(generated, generator: str | Path | TrainedGenerator, *, seed: int = 0,
                          max_train: int = 1000):
    """The report of a generated zoo against its generator's training population.

    `generator` is a generator folder or one already loaded (`TrainedGenerator`). At most
    `max_train` training models (a random subset) are compared. The report also carries the
    training zoo's own recorded test accuracy of those models (`zoo_accuracy`), labelled with how
    many test examples it was scored on.
    """
    gen = (generator if isinstance(generator, TrainedGenerator)
           else TrainedGenerator.load(generator))
    train_flat = np.load(gen.directory / "aligned_train.npy")
    subset = np.arange(len(train_flat))
    if len(train_flat) > max_train:
        subset = np.sort(np.random.default_rng(seed).choice(len(train_flat), max_train,
                                                            replace=False))
        train_flat = train_flat[subset]
    dataset = dataset_from_spec(gen.meta.get("dataset"))
    report = evaluate_generated(gen.architecture, generated.flat(), train_flat,
                                dataset.x_test, dataset.y_test, seed=seed)
    report.zoo_metrics = zoo_accuracy(gen.meta, subset)
    return report


def zoo_accuracy(meta: dict, subset: np.ndarray, column: str = "test_acc") -> dict:
    """The training zoo's recorded `column` for the generator's training models (`subset` of
    them), with the number of test examples its recipe scored (``eval_examples``: 0 = the whole
    split, None = unknown, e.g. an imported zoo); ``{"unavailable": why}`` when the zoo is gone or
    no longer the one the generator was trained on."""
    from wsl.errors import WslError
    from wsl.zoos.store import MANIFEST, Zoo, sha256_file

    path = Path(meta.get("zoo", ""))
    rows = (meta.get("selection") or {}).get("rows")
    try:
        if rows is None or not (path / MANIFEST).is_file():
            return {"unavailable": f"{path} is not there any more"}
        if meta.get("zoo_sha256") and sha256_file(path / MANIFEST) != meta["zoo_sha256"]:
            return {"unavailable": f"{path} changed since the generator was trained"}
        zoo = Zoo.open(path)
        if column not in zoo.metrics:
            return {"unavailable": f"{path} has no {column} column"}
        values = np.asarray(zoo.metrics[column], np.float64)[np.asarray(rows)[subset]]
    except (WslError, OSError, IndexError, ValueError) as err:
        return {"unavailable": f"{path} cannot be read ({err})"}
    recipe = zoo.manifest.get("recipe") or {}
    # A generated zoo is scored on whole splits (`wsl.zoos.scoring.population_metrics`).
    limit = 0 if zoo.manifest.get("generated") else (recipe.get("config") or {}).get(
        "eval_examples")
    return {"zoo": str(path), "column": column, "num_models": int(len(values)),
            "eval_examples": None if limit is None else int(limit),
            "mean": float(values.mean()), "median": float(np.median(values))}
