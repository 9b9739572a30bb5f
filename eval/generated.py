"""Honest evaluation of a generated population against the population it was trained on.

Every population below is scored the same way, against the *whole* (aligned) training set, and
reported side by side, never best-of-N alone:
- the training networks themselves (each compared with the others), the generated networks, and
  baselines that a memorising generator would resemble: noised copies of training models at
  several noise levels, midpoints (w_i + w_j) / 2 of random aligned training pairs, and averages
  of k aligned training models that are nearest neighbours in weight space (k = 2 and 4);
- test accuracy: mean / median / min / max / std, with a bootstrap 95 % interval for the mean;
- novelty: for each network the maximum IoU of its set of wrongly classified test points with that
  of any training network (1 = makes exactly the mistakes of some training model); the median per
  population with a bootstrap 95 % interval;
- weight distance to the nearest training vector after alignment (training models exclude
  themselves), as a median and relative to the training models' own median;
- the per-network novel fraction: the share of networks whose max IoU lies below noised copies of
  their nearest training model (the one they share most mistakes with) at their own accuracy.
  This also catches a generator that copies the best training models (more accurate than any
  noised population);
- diversity: mean pairwise distance of weight vectors and mean pairwise prediction disagreement;
- each sample's relative distance to the affine span of the training set (0 = inside the span,
  the failure mode of PCA-based generators).

Verdicts use intervals, not point estimates: the generated networks are "more novel than noise"
only when the upper end of their median-max-IoU interval lies below the lower end of the noise
baseline of equal accuracy (`equal_accuracy_baseline`: the most noised copies whose mean accuracy
is still within half a point of the generated mean, its interval interpolated between the
bracketing noise levels like the point value); likewise against midpoints and k-NN averages.

One definition of accuracy holds in the whole report: every network's (generated, training, noised
and the other baselines alike) is recomputed here on the full test split of the zoo's dataset. A
zoo's own metrics.csv may have scored only the first `eval_examples` test examples of its recipe
(2,000 for `small-cnn`), so `wsl zoo info` can differ from this report; `compare_with_training`
reads the training zoo's recorded numbers for the same models and the report shows them beside,
labelled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from wsl.eval.errors import EvaluationError
from wsl.eval.intervals import BOOTSTRAP_SAMPLES, CONFIDENCE, bootstrap_interval
from wsl.train.generator import TrainedGenerator
from wsl.zoos.architectures import Architecture
from wsl.zoos.datasets import dataset_from_spec
from wsl.zoos.scoring import population_predictions

# Gaussian noise added to training models, × each tensor's std over the training population (the
# generators' normalised units); dense where small models start to lose accuracy.
NOISE_LEVELS = (0.01, 0.03, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)
ACCURACY_TOLERANCE = 0.005  # "equal accuracy" for noise baselines: within half a point
KNN_SIZES = (2, 4)  # k of the "average of k nearest aligned training models" baselines
IOU_CHUNK = 1000  # rows of wrong-prediction matrices compared with all reference rows at once
WEIGHT_CHUNK = 256  # rows of weight vectors per nearest-neighbour step (fewer for huge networks)
VERDICT_RULE = ("generated median max IoU 95 % interval entirely below the baseline's "
                "(percentile bootstrap over networks)")


def max_wrong_iou(wrong: np.ndarray, reference_wrong: np.ndarray, exclude_self: bool = False,
                  return_index: bool = False, chunk: int = IOU_CHUNK):
    """For each row of `wrong` (models × examples, bool), the max IoU with any reference row.

    With `return_index`, also the reference row that attains it (the nearest training model).
    `exclude_self` (for `wrong` and `reference_wrong` the same population) skips row i of the
    reference for row i. Rows go `chunk` at a time against all reference rows, so memory stays
    at chunk × references floats whatever the population sizes.
    """
    if exclude_self and len(wrong) != len(reference_wrong):
        raise EvaluationError(f"exclude_self compares a population with itself, got "
                              f"{len(wrong)} and {len(reference_wrong)} rows")
    if chunk < 1:
        raise EvaluationError(f"chunk must be ≥ 1, got {chunk}")
    # float32 counts are exact up to 2**24 examples.
    b = np.asarray(reference_wrong, bool).astype(np.float32)
    b_count = b.sum(1)
    top = np.zeros(len(wrong), np.float64)
    best = np.zeros(len(wrong), np.int64)
    for start in range(0, len(wrong), chunk):
        a = np.asarray(wrong[start:start + chunk], bool).astype(np.float32)
        inter = a @ b.T
        union = a.sum(1)[:, None] + b_count[None, :] - inter
        iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
        if exclude_self:
            rows = np.arange(len(a))
            iou[rows, start + rows] = -np.inf
        if not iou.shape[1]:
            raise EvaluationError("max_wrong_iou needs at least one reference row")
        best[start:start + len(a)] = iou.argmax(axis=1)
        top[start:start + len(a)] = iou[np.arange(len(a)), best[start:start + len(a)]]
    return (top, best) if return_index else top


def nearest_neighbours(flat: np.ndarray, reference: np.ndarray, k: int = 1,
                       exclude: np.ndarray | None = None, chunk: int = WEIGHT_CHUNK):
    """The `k` reference vectors nearest (L2) to each row of `flat`: (indices, distances), both
    (rows, k), nearest first.

    `exclude[i]` names a reference row that row i must not match (itself, for a population
    compared with its own members). Candidates are ranked with one matrix product per chunk of
    rows on vectors centred at the reference mean (less cancellation), then their distances are
    recomputed directly, so an exact copy is at distance 0.
    """
    flat = np.asarray(flat, np.float32)
    reference = np.asarray(reference, np.float32)
    if flat.ndim != 2 or reference.ndim != 2 or flat.shape[1] != reference.shape[1]:
        raise EvaluationError(f"nearest_neighbours needs (rows, d) and (references, d) arrays, "
                              f"got {flat.shape} and {reference.shape}")
    available = len(reference) - (exclude is not None)
    if not 1 <= k <= available:
        raise EvaluationError(f"cannot find {k} nearest neighbours among {available} vectors")
    if exclude is not None:
        exclude = np.asarray(exclude, np.int64)
        if exclude.shape != (len(flat),):
            raise EvaluationError(f"exclude needs one reference row per row, got {exclude.shape} "
                                  f"for {len(flat)} rows")
    # Bounded temporaries (rows × d) also for large networks.
    chunk = max(1, min(chunk, 2 ** 24 // max(flat.shape[1], 1)))
    centre = reference.mean(axis=0)
    centred = reference - centre
    ref_sq = np.einsum("ij,ij->i", centred, centred)
    index = np.zeros((len(flat), k), np.int64)
    distance = np.zeros((len(flat), k), np.float64)
    for start in range(0, len(flat), chunk):
        rows = flat[start:start + chunk]
        # ‖q − r‖² up to the per-row constant ‖q‖², which does not change the ranking.
        score = ref_sq[None, :] - 2 * ((rows - centre) @ centred.T)
        if exclude is not None:
            score[np.arange(len(rows)), exclude[start:start + len(rows)]] = np.inf
        candidates = np.argpartition(score, k - 1, axis=1)[:, :k]
        exact = np.stack([np.sqrt(((rows - reference[candidates[:, j]]) ** 2)
                                  .sum(1, dtype=np.float64)) for j in range(k)], axis=1)
        order = np.argsort(exact, axis=1, kind="stable")
        index[start:start + len(rows)] = np.take_along_axis(candidates, order, axis=1)
        distance[start:start + len(rows)] = np.take_along_axis(exact, order, axis=1)
    return index, distance



class Nearness:
    """How near networks lie to a training set (aligned, flat): the median distance to their
    nearest training vector over the training vectors' own median distance to their nearest
    other one — near 0: copies; about 1: as far from the training set as its members are from
    each other (the report's ``nn_distance_relative``)."""

    def __init__(self, train: np.ndarray):
        self.train = np.asarray(train, np.float32)
        own = nearest_neighbours(self.train, self.train, exclude=np.arange(len(self.train)))[1]
        self.scale = float(np.median(own[:, 0]))

    def __call__(self, flat) -> float:
        distance = float(np.median(nearest_neighbours(flat, self.train)[1][:, 0]))
        return distance / self.scale if self.scale > 0 else float("nan")


def midpoint_population(train_flat: np.ndarray, num: int, rng: np.random.Generator):
    """`num` midpoints (w_i + w_j) / 2 of random aligned training pairs, i ≠ j: (vectors, pairs).

    A baseline: a generator that interpolates between training models produces these.
    """
    train_flat = np.asarray(train_flat, np.float32)
    n = len(train_flat)
    if n < 2:
        raise EvaluationError(f"midpoints need at least 2 training models, got {n}")
    first = rng.integers(0, n, num)
    second = (first + rng.integers(1, n, num)) % n  # any other model, uniformly
    pairs = np.stack([first, second], axis=1)
    return 0.5 * (train_flat[first] + train_flat[second]), pairs


def knn_average_population(train_flat: np.ndarray, num: int, k: int, rng: np.random.Generator,
                           chunk: int = WEIGHT_CHUNK):
    """`num` averages of k aligned training models: a random one (distinct while `num` ≤ the
    training set) and its k − 1 nearest others by L2 weight distance. (vectors, members), members
    (num, k) with the random model first.

    A baseline: what a generator that averages a neighbourhood of training models produces.
    """
    train_flat = np.asarray(train_flat, np.float32)
    n = len(train_flat)
    if not 1 <= k <= n:
        raise EvaluationError(f"an average of {k} nearest models needs ≥ {k} training models, "
                              f"got {n}")
    anchors = rng.choice(n, size=num, replace=num > n)
    if k == 1:
        members = anchors[:, None]
    else:
        others, _ = nearest_neighbours(train_flat[anchors], train_flat, k - 1, exclude=anchors,
                                       chunk=chunk)
        members = np.concatenate([anchors[:, None], others], axis=1)
    return train_flat[members].mean(axis=1), members


def equal_accuracy_baseline(sigmas: Sequence[float], accs: Sequence[float],
                            ious: Sequence[float], accuracy: float,
                            tolerance: float = ACCURACY_TOLERANCE,
                            ious_ci: Sequence[Sequence[float]] | None = None) -> dict:
    """The most novel noised copies that are as accurate as `accuracy` (within `tolerance`).

    `accs` / `ious` are the accuracy and max IoU of noised copies at increasing noise `sigmas`.
    More noise makes copies both less accurate and more novel, so the fair baseline for networks
    of accuracy a is the *largest* σ whose copies still reach a − tolerance (interpolated in log σ
    between grid points). A nearest-accuracy rule would instead pick among the small σ, which all
    keep the accuracy, the one that happens to measure closest — and with it an IoU near 1 that a
    memorising generator beats. `as_accurate` is False when even the least noised copies fall
    short of a − tolerance (the generated networks are more accurate than the copies): the
    baseline is then the least noised level.

    With `ious_ci` ((low, high) per level, e.g. bootstrap intervals of each level's median), the
    result also has `median_max_iou_ci`: both ends interpolated with the same weights as the point
    value, a conservative stand-in for bootstrapping the interpolated quantity itself.
    """
    sigmas, ious = np.asarray(sigmas, np.float64), np.asarray(ious, np.float64)
    acc = np.minimum.accumulate(np.asarray(accs, np.float64))  # ignore sampling wiggles upwards
    target = accuracy - tolerance
    ok = np.nonzero(acc >= target)[0]
    if not len(ok):
        k, frac, out = 0, 0.0, {"sigma": float(sigmas[0]), "mean_acc": float(acc[0]),
                                "as_accurate": False}
    elif int(ok[-1]) == len(acc) - 1:
        k, frac = int(ok[-1]), 0.0
        out = {"sigma": float(sigmas[k]), "mean_acc": float(acc[k]), "as_accurate": True}
    else:
        k = int(ok[-1])
        frac = float((acc[k] - target) / max(acc[k] - acc[k + 1], 1e-12))
        log_sigma = np.log(sigmas[k]) + frac * (np.log(sigmas[k + 1]) - np.log(sigmas[k]))
        out = {"sigma": float(np.exp(log_sigma)), "mean_acc": float(target), "as_accurate": True}

    def at(series):
        series = np.asarray(series, np.float64)
        return float(series[k] + frac * (series[k + 1] - series[k]) if frac else series[k])

    out["median_max_iou"] = at(ious)
    if ious_ci is not None:
        ci = np.asarray(ious_ci, np.float64).reshape(len(ious), 2)
        out["median_max_iou_ci"] = [at(ci[:, 0]), at(ci[:, 1])]
    return out


def matched_noise_baseline(sigmas: Sequence[float], noise_acc: np.ndarray, noise_iou: np.ndarray,
                           nearest: np.ndarray, accuracy: np.ndarray,
                           tolerance: float = ACCURACY_TOLERANCE) -> np.ndarray:
    """Per network: the max IoU of noised copies of its nearest training model (`nearest`, the
    one it shares most mistakes with) at its own `accuracy` (`equal_accuracy_baseline`).

    `noise_acc` / `noise_iou` are (training models × noise levels).
    """
    return np.array([equal_accuracy_baseline(sigmas, noise_acc[m], noise_iou[m], a,
                                             tolerance)["median_max_iou"]
                     for m, a in zip(nearest, accuracy)], np.float64)


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
    """Mean / median / min / max / std of the finite values (NaN for each when there are none)."""
    values = np.asarray(values, np.float64)
    finite = values[np.isfinite(values)]
    if not finite.size:
        return {k: float("nan") for k in ("mean", "median", "min", "max", "std")}
    return {"mean": float(finite.mean()), "median": float(np.median(finite)),
            "min": float(finite.min()), "max": float(finite.max()), "std": float(finite.std())}


@dataclasses.dataclass
class Population:
    """One scored population's per-network numbers, all against the full training set.

    `nn_distance` is the L2 distance to the nearest aligned training vector; `matched_max_iou`
    each network's own noise baseline (`matched_noise_baseline`), None where it means nothing
    (noised copies are the baseline).
    """

    label: str  # short, for the table
    acc: np.ndarray
    max_iou: np.ndarray
    nn_distance: np.ndarray | None = None
    matched_max_iou: np.ndarray | None = None
    sigma: float | None = None  # noise level, for noised copies
    description: str = ""  # what the networks are, for the verdict lines


def population_summary(pop: Population, *, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0,
                       train_nn_median: float = float("nan")) -> dict:
    """The report's numbers for one population: accuracy summary with a bootstrap interval for
    the mean, median max IoU with its interval, nearest-training distance (median, and relative
    to `train_nn_median`), and the per-network novel fraction where a matched baseline exists."""
    nn = np.asarray(pop.nn_distance, np.float64) if pop.nn_distance is not None else None
    nn_median = float(np.median(nn)) if nn is not None and nn.size else float("nan")
    out = {
        "label": pop.label, "description": pop.description or pop.label,
        "n": int(len(pop.acc)), "acc": summary(pop.acc),
        "acc_mean_ci": list(bootstrap_interval(pop.acc, np.mean, samples, seed)),
        "median_max_iou": summary(pop.max_iou)["median"],
        "median_max_iou_ci": list(bootstrap_interval(pop.max_iou, np.median, samples, seed)),
        "nn_distance_median": nn_median,
        "nn_distance_relative": (nn_median / train_nn_median
                                 if np.isfinite(train_nn_median) and train_nn_median > 0
                                 else float("nan")),
        "novel_fraction": None, "matched_noise_max_iou_median": None,
    }
    if pop.sigma is not None:
        out["sigma"] = pop.sigma
    if pop.matched_max_iou is not None and len(pop.matched_max_iou):
        out["novel_fraction"] = float(np.mean(pop.max_iou < pop.matched_max_iou))
        out["matched_noise_max_iou_median"] = float(np.median(pop.matched_max_iou))
    return out


def _ci_text(ci, digits: int) -> str:
    return f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def _verdict_key(baseline: str) -> str:
    """``more_novel_than_midpoints``, ``more_novel_than_knn2``, … for a baseline population."""
    return "more_novel_than_" + baseline.replace("-", "")


def _apart(generated_ci, baseline_ci) -> bool:
    """The verdict rule: the generated interval lies entirely below the baseline's."""
    return bool(generated_ci[1] < baseline_ci[0])


@dataclasses.dataclass
class GeneratedReport:
    """Everything `evaluate_generated` measured; `table()` prints it, `to_dict()` saves it.

    `noise` holds one row per noise level (population summaries); `noise_acc` / `noise_iou` /
    `noise_nn_distance` (training models × levels) the same per noised copy, from which
    `matched_max_iou` gives each generated network its own baseline: the IoU of noised copies of
    its nearest training model (the one it shares most mistakes with) at the sample's own
    accuracy (`train_matched_max_iou` the same for training models). `baselines` holds the other
    reference populations (midpoints, k-NN averages), scored like the generated one.
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
    generated_nn_distance: np.ndarray | None = None
    train_nn_distance: np.ndarray | None = None  # to the nearest *other* training model
    train_matched_max_iou: np.ndarray | None = None
    noise_acc: np.ndarray | None = None
    noise_iou: np.ndarray | None = None
    noise_nn_distance: np.ndarray | None = None
    baselines: dict[str, Population] = dataclasses.field(default_factory=dict)
    bootstrap_samples: int = BOOTSTRAP_SAMPLES
    seed: int = 0  # of the bootstrap
    _summaries: dict | None = dataclasses.field(default=None, init=False, repr=False,
                                                compare=False)

    def accuracy_source(self) -> dict:
        """Where every accuracy of the report comes from, and the training zoo's own numbers."""
        n = self.test_examples
        where = f"the full test split ({n} examples)" if n else "the full test split"
        return {"split": "test", "examples": n, "recomputed": True,
                "definition": f"every accuracy in this report (generated, training, noised and "
                              f"the other baseline networks alike) is recomputed on {where} of "
                              f"the zoo's dataset",
                "training_zoo_metrics": self.zoo_metrics}

    def populations(self) -> dict[str, Population]:
        """Every scored population by name: training, generated, ``noise_<σ>`` per noise level
        (where the per-copy numbers are kept), then the baselines (midpoints, knn-k)."""
        out = {
            "training": Population("training (vs others)", self.train_acc, self.train_max_iou,
                                   self.train_nn_distance, self.train_matched_max_iou,
                                   description="training models, each against the others"),
            "generated": Population("generated", self.generated_acc, self.generated_max_iou,
                                    self.generated_nn_distance, self.matched_max_iou),
        }
        if self.noise_acc is not None and self.noise_iou is not None:
            for j, row in enumerate(self.noise):
                nn = None if self.noise_nn_distance is None else self.noise_nn_distance[:, j]
                out[f"noise_{row['sigma']:g}"] = Population(
                    f"train + noise σ={row['sigma']:g}", self.noise_acc[:, j],
                    self.noise_iou[:, j], nn, sigma=float(row["sigma"]))
        out.update(self.baselines)
        return out

    def population_summaries(self) -> dict[str, dict]:
        """`population_summary` of every population (computed once: the bootstrap is seeded)."""
        if self._summaries is None:
            pops = self.populations()
            train_nn = pops["training"].nn_distance
            train_nn_median = (float(np.median(train_nn)) if train_nn is not None
                               and len(train_nn) else float("nan"))
            self._summaries = {name: population_summary(pop, samples=self.bootstrap_samples,
                                                        seed=self.seed,
                                                        train_nn_median=train_nn_median)
                               for name, pop in pops.items()}
        return self._summaries

    def noise_baseline_at(self, accuracy: float) -> dict:
        """Noised training copies as accurate as `accuracy`: see `equal_accuracy_baseline`. Its
        interval (`median_max_iou_ci`) interpolates the bracketing levels' bootstrap intervals;
        a report without them (built by hand) gets the point value at both ends."""
        ci = ([r["median_max_iou_ci"] for r in self.noise]
              if all("median_max_iou_ci" in r for r in self.noise)
              else [(r["median_max_iou"], r["median_max_iou"]) for r in self.noise])
        return equal_accuracy_baseline([r["sigma"] for r in self.noise],
                                       [r["mean_acc"] for r in self.noise],
                                       [r["median_max_iou"] for r in self.noise], accuracy,
                                       self.tolerance, ious_ci=ci)

    def verdicts(self) -> dict[str, bool | None]:
        """``more_novel_than_<baseline>``: True only when the generated median-max-IoU interval
        lies entirely below the baseline's (`VERDICT_RULE`); None when the baseline is missing
        (too few training models)."""
        summaries = self.population_summaries()
        gen_ci = summaries["generated"]["median_max_iou_ci"]
        noise = self.noise_baseline_at(summaries["generated"]["acc"]["mean"])
        out: dict[str, bool | None] = {
            "more_novel_than_noise": _apart(gen_ci, noise["median_max_iou_ci"]),
            "more_novel_than_midpoints": None}
        for k in KNN_SIZES:
            out[_verdict_key(f"knn-{k}")] = None
        for name in self.baselines:
            out[_verdict_key(name)] = _apart(
                gen_ci, summaries[name]["median_max_iou_ci"])
        return out

    def to_dict(self) -> dict:
        """Every number of the report, JSON-ready (the keys of earlier versions kept)."""
        summaries = self.population_summaries()
        gen = summary(self.generated_acc)
        baseline = self.noise_baseline_at(gen["mean"])
        verdicts = self.verdicts()
        out = {
            "num_generated": int(len(self.generated_acc)), "num_train": int(len(self.train_acc)),
            "generated_acc": gen, "train_acc": summary(self.train_acc),
            "generated_max_iou": summary(self.generated_max_iou),
            "train_max_iou": summary(self.train_max_iou),
            "noise_baselines": self.noise,
            "noise_baseline_equal_acc": {**baseline, "tolerance": self.tolerance},
            "more_novel_than_noise": verdicts["more_novel_than_noise"],
            "verdicts": verdicts, "verdict_rule": VERDICT_RULE,
            "populations": summaries,
            "bootstrap": {"method": "percentile", "samples": self.bootstrap_samples,
                          "level": CONFIDENCE, "seed": self.seed},
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
        """One row per population (accuracy and median max IoU with 95 % intervals, distance to
        the nearest training model, novel fraction), then the verdicts quoting the intervals."""
        d = self.to_dict()
        rows = [("population", "n", "acc mean [95% CI]", "median", "min", "max",
                 "max IoU median [95% CI]", "NN dist (rel.)", "novel/net")]
        for s in d["populations"].values():
            acc = s["acc"]
            nn = ("-" if not np.isfinite(s["nn_distance_median"]) else
                  f"{s['nn_distance_median']:.3g} ({s['nn_distance_relative']:.2f})")
            novel = "-" if s["novel_fraction"] is None else f"{s['novel_fraction']:.0%}"
            rows.append((s["label"], str(s["n"]),
                         f"{acc['mean']:.4f} {_ci_text(s['acc_mean_ci'], 4)}",
                         f"{acc['median']:.4f}", f"{acc['min']:.4f}", f"{acc['max']:.4f}",
                         f"{s['median_max_iou']:.3f} {_ci_text(s['median_max_iou_ci'], 3)}",
                         nn, novel))
        if self.noise_acc is None:  # a report built by hand: the noise rows' summaries only
            for row in self.noise:
                rows.append((f"train + noise σ={row['sigma']:g}", str(row.get("n", "?")),
                             f"{row['mean_acc']:.4f}", f"{row.get('median_acc', np.nan):.4f}",
                             f"{row.get('min_acc', np.nan):.4f}",
                             f"{row.get('max_acc', np.nan):.4f}",
                             f"{row['median_max_iou']:.3f}", "-", "-"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.rjust(w) if i else c.ljust(w)
                           for i, (c, w) in enumerate(zip(r, widths)))
                 for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        n = self.test_examples
        lines.insert(0, f"test accuracy on the full test split{f' ({n} examples)' if n else ''}, "
                        f"recomputed here for every row, training models included; max IoU and "
                        f"NN dist (L2 to the nearest aligned training vector, relative to the "
                        f"training models' own median) against all training models:")
        zoo_line = _zoo_metrics_line(self.zoo_metrics, n)
        if zoo_line:
            lines.append(zoo_line)
        lines += ["", *self._verdict_lines(d)]
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

    def _verdict_lines(self, d: dict) -> list[str]:
        pops, verdicts = d["populations"], d["verdicts"]
        gen = pops["generated"]
        base = d["noise_baseline_equal_acc"]
        if base["as_accurate"]:
            where = (f"σ≈{base['sigma']:.3g}, the most noise that keeps mean accuracy ≥ generated "
                     f"− {self.tolerance * 100:g} pt")
        else:
            where = (f"σ={base['sigma']:g}: no noised copies are as accurate as the generated "
                     f"networks, so this baseline is weak; see the per-network line")

        def verdict(ok: bool, name: str) -> str:
            return f"{'more novel' if ok else 'NOT more novel'} than {name}"

        lines = [
            f"novelty (a verdict needs the 95% intervals apart, generated below): generated "
            f"median max IoU {gen['median_max_iou']:.3f} {_ci_text(gen['median_max_iou_ci'], 3)} "
            f"(mean acc {gen['acc']['mean']:.4f})",
            f"  vs {base['median_max_iou']:.3f} {_ci_text(base['median_max_iou_ci'], 3)} for "
            f"noised training models of equal accuracy ({where}) -> "
            f"{verdict(verdicts['more_novel_than_noise'], 'noise')}",
        ]
        for name in self.baselines:
            s = pops[name]
            lines.append(
                f"  vs {s['median_max_iou']:.3f} {_ci_text(s['median_max_iou_ci'], 3)} for "
                f"{s['description']} (mean acc {s['acc']['mean']:.4f}) -> "
                f"{verdict(verdicts[_verdict_key(name)], name)}")
        train = pops["training"]
        lines.append(f"  training models among themselves {train['median_max_iou']:.3f} "
                     f"{_ci_text(train['median_max_iou_ci'], 3)}")
        return lines


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


def reference_fingerprint(train_flat: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                          seed: int, noise_levels: Sequence[float], bootstrap_samples: int) -> str:
    """What a `TrainingReference` depends on, as a hash: the aligned training set, the test split,
    the seed and the noise levels and bootstrap size."""
    digest = hashlib.sha256()
    # The training set as the audit uses it (float32), whatever dtype it was stored in.
    for array in (np.asarray(train_flat, np.float32), x_test, y_test):
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.data)
    digest.update(repr((int(seed), [float(v) for v in noise_levels],
                        int(bootstrap_samples))).encode())
    return digest.hexdigest()


@dataclasses.dataclass
class TrainingReference:
    """The training side of the audit: the training models' test predictions, their max IoU with
    each other and nearest other model, and the noised-copy baselines (one row per noise level in
    `noise`; accuracy, max IoU and nearest distance of every copy as training models × levels).

    It depends on the training set, the test split and the seed only — not on the generated
    networks — and scoring every training model and every noised copy is most of an audit
    (1,000 tiny ResNets × 10 populations × 10,000 test images: half an hour on 2 cores), so a
    benchmark that audits many generators of one zoo computes it once (`save` / `load`,
    `compare_with_training(reference_cache=...)`).
    """

    fingerprint: str
    train_pred: np.ndarray
    train_iou: np.ndarray
    train_nearest: np.ndarray
    train_nn: np.ndarray
    noise: list[dict]
    noise_acc: np.ndarray
    noise_iou: np.ndarray
    noise_nn: np.ndarray

    ARRAYS = ("train_pred", "train_iou", "train_nearest", "train_nn", "noise_acc", "noise_iou",
              "noise_nn")

    def save(self, path: Path) -> None:
        """One .npz, written whole or not at all (a temporary file renamed into place)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        arrays = {name: getattr(self, name) for name in self.ARRAYS}
        if 0 <= arrays["train_pred"].min() and arrays["train_pred"].max() < 256:
            arrays["train_pred"] = arrays["train_pred"].astype(np.uint8)  # a quarter of the file
        with open(partial, "wb") as f:
            np.savez(f, fingerprint=self.fingerprint, noise=json.dumps(self.noise), **arrays)
        partial.replace(path)

    @classmethod
    def load(cls, path: Path) -> TrainingReference:
        try:
            with np.load(path) as data:
                arrays = {name: data[name] for name in cls.ARRAYS}
                arrays["train_pred"] = arrays["train_pred"].astype(np.int32)
                return cls(fingerprint=str(data["fingerprint"]),
                           noise=json.loads(str(data["noise"])), **arrays)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
            raise EvaluationError(f"{path} is not a readable training reference ({err}); "
                                  f"delete it to recompute it") from err


def training_reference(arch: Architecture, train_flat: np.ndarray, x_test: np.ndarray,
                       y_test: np.ndarray, *, seed: int = 0,
                       noise_levels: Sequence[float] = NOISE_LEVELS,
                       bootstrap_samples: int = BOOTSTRAP_SAMPLES,
                       chunk: int = IOU_CHUNK) -> TrainingReference:
    """Score the training models and their noised copies (`seed` draws the noise and the
    bootstrap of the noise rows' intervals) for `evaluate_generated`."""
    train_flat = np.asarray(train_flat, np.float32)
    levels = np.asarray(noise_levels, np.float64)
    num_train = len(train_flat)
    train_pred = population_predictions(arch, train_flat, x_test)
    train_wrong = train_pred != y_test
    train_iou, train_nearest = max_wrong_iou(train_wrong, train_wrong, exclude_self=True,
                                             return_index=True, chunk=chunk)
    train_nn = (nearest_neighbours(train_flat, train_flat, exclude=np.arange(num_train))[1][:, 0]
                if num_train > 1 else np.full(num_train, np.nan))
    rng = np.random.default_rng(seed)
    tensor_std = np.empty(arch.num_params, np.float32)
    for start, end in arch.weight_space.offsets.values():
        tensor_std[start:end] = train_flat[:, start:end].std()
    noise, noise_acc, noise_iou, noise_nn = [], [], [], []
    for sigma in levels:
        noised = (train_flat
                  + sigma * tensor_std * rng.standard_normal(train_flat.shape).astype(np.float32))
        wrong = population_predictions(arch, noised, x_test) != y_test
        acc = (~wrong).mean(axis=1)
        iou = max_wrong_iou(wrong, train_wrong, chunk=chunk)
        noise_acc.append(acc)
        noise_iou.append(iou)
        noise_nn.append(nearest_neighbours(noised, train_flat)[1][:, 0])
        noise.append({"sigma": float(sigma), "n": int(len(noised)), "mean_acc": float(acc.mean()),
                      "median_acc": float(np.median(acc)), "min_acc": float(acc.min()),
                      "max_acc": float(acc.max()), "median_max_iou": float(np.median(iou)),
                      "median_max_iou_ci": list(bootstrap_interval(iou, np.median,
                                                                   bootstrap_samples, seed))})
    return TrainingReference(
        fingerprint=reference_fingerprint(train_flat, x_test, y_test, seed, levels,
                                          bootstrap_samples),
        train_pred=train_pred, train_iou=train_iou, train_nearest=train_nearest,
        train_nn=train_nn, noise=noise, noise_acc=np.stack(noise_acc, 1),
        noise_iou=np.stack(noise_iou, 1), noise_nn=np.stack(noise_nn, 1))


def evaluate_generated(arch: Architecture, generated_flat: np.ndarray, train_flat: np.ndarray,
                       x_test: np.ndarray, y_test: np.ndarray, *, seed: int = 0,
                       noise_levels: Sequence[float] = NOISE_LEVELS,
                       tolerance: float = ACCURACY_TOLERANCE, baseline_size: int | None = None,
                       knn_sizes: Sequence[int] = KNN_SIZES,
                       bootstrap_samples: int = BOOTSTRAP_SAMPLES,
                       chunk: int = IOU_CHUNK,
                       reference: TrainingReference | None = None) -> GeneratedReport:
    """Compare generated networks with their training population on held-out test data.

    `generated_flat` must be in the basis of `train_flat` (the aligned training set). Besides
    noised copies of every training model, it scores `baseline_size` (default: as many as
    generated) midpoints of random training pairs and averages of each k in `knn_sizes` nearest
    training models, all against every training model (`chunk` rows at a time). `seed` fixes the
    noise, the baseline draws and the bootstrap. `reference` is the training side, computed once
    by `training_reference` for the same arguments (it is most of the work: every training model
    and every noised copy scored); without it, it is computed here.

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
    if baseline_size is not None and baseline_size < 1:
        raise EvaluationError(f"baseline_size must be ≥ 1, got {baseline_size}")
    if any(k < 1 for k in knn_sizes):
        raise EvaluationError(f"knn_sizes must be ≥ 1, got {list(knn_sizes)}")
    num_train = len(train_flat)
    if reference is None:
        reference = training_reference(arch, train_flat, x_test, y_test, seed=seed,
                                       noise_levels=levels, bootstrap_samples=bootstrap_samples,
                                       chunk=chunk)
    elif reference.fingerprint != reference_fingerprint(train_flat, x_test, y_test, seed, levels,
                                                        bootstrap_samples):
        raise EvaluationError("the training reference was computed for another training set, "
                              "test split, seed, noise levels or bootstrap size")
    train_pred, train_wrong = reference.train_pred, reference.train_pred != y_test
    train_iou, train_nearest, train_nn = (reference.train_iou, reference.train_nearest,
                                          reference.train_nn)
    noise, noise_acc, noise_iou = reference.noise, reference.noise_acc, reference.noise_iou

    def score(flat):
        """Predictions, accuracy, max IoU, IoU-nearest training model, nearest weight distance."""
        pred = population_predictions(arch, flat, x_test)
        wrong = pred != y_test
        iou, nearest = max_wrong_iou(wrong, train_wrong, return_index=True, chunk=chunk)
        return (pred, (~wrong).mean(axis=1), iou, nearest,
                nearest_neighbours(flat, train_flat)[1][:, 0])

    gen_pred, gen_acc, gen_iou, nearest, gen_nn = score(generated_flat)

    def matched(nearest_models, accuracy):
        return matched_noise_baseline(levels, noise_acc, noise_iou, nearest_models, accuracy,
                                      tolerance)

    # A stream of its own, so that the noise above stays what `seed` alone gave before.
    baseline_rng = np.random.default_rng([seed, 1])
    size = baseline_size or len(generated_flat)
    drawn = []
    if num_train > 1:
        drawn.append(("midpoints", "midpoints (w_i+w_j)/2",
                      "midpoints of random aligned training pairs",
                      midpoint_population(train_flat, size, baseline_rng)[0]))
    for k in knn_sizes:
        if k <= num_train:
            drawn.append((f"knn-{k}", f"k-NN average, k={k}",
                          f"averages of {k} nearest aligned training models",
                          knn_average_population(train_flat, size, k, baseline_rng)[0]))
    baselines = {}
    for name, label, description, vectors in drawn:
        _, acc, iou, near, nn = score(vectors)
        baselines[name] = Population(label, acc, iou, nn, matched(near, acc),
                                     description=description)
    train_acc = (~train_wrong).mean(axis=1)
    return GeneratedReport(
        generated_acc=gen_acc,
        train_acc=train_acc,
        generated_max_iou=gen_iou,
        train_max_iou=train_iou,
        noise=noise,
        generated_diversity=pairwise_stats(generated_flat, gen_pred),
        train_diversity=pairwise_stats(train_flat, train_pred),
        span_distance=affine_span_distance(generated_flat, train_flat),
        matched_max_iou=matched(nearest, gen_acc),
        tolerance=tolerance,
        test_examples=int(len(y_test)),
        generated_nn_distance=gen_nn,
        train_nn_distance=train_nn,
        train_matched_max_iou=matched(train_nearest, train_acc) if num_train > 1 else None,
        noise_acc=noise_acc,
        noise_iou=noise_iou,
        noise_nn_distance=reference.noise_nn,
        baselines=baselines,
        bootstrap_samples=bootstrap_samples,
        seed=seed,
    )


def report_figure(report: GeneratedReport):
    """The figure `plot_report` saves (open; the caller closes it): overlaid accuracy histograms,
    and novelty against accuracy with each noise baseline's marker labelled with its σ and the
    generated population and the other baselines (midpoints, k-NN averages) as markers at (mean
    accuracy, median max IoU) with their 95 % intervals as error bars."""
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
    summaries = report.population_summaries()
    # Generated in the colour of its scatter (C1), the baselines in the next colours.
    styles = zip(("o", "s", "D", "^", "v", "P", "*"), ("C1", "C2", "C3", "C4", "C5", "C6", "C7"))
    for name in ("generated", *report.baselines):
        s = summaries[name]
        marker, colour = next(styles, ("o", None))
        x, y = s["acc"]["mean"], s["median_max_iou"]
        right.errorbar(x, y, xerr=[[x - s["acc_mean_ci"][0]], [s["acc_mean_ci"][1] - x]],
                       yerr=[[y - s["median_max_iou_ci"][0]], [s["median_max_iou_ci"][1] - y]],
                       fmt=marker, color=colour, ms=7, mec="k", capsize=3,
                       label=f"{name} (mean acc, median IoU, 95% CI)")
    right.set_xlabel("test accuracy")
    right.set_ylabel("max IoU of wrong predictions vs training set")
    right.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_report(report: GeneratedReport, path) -> None:
    """Overlaid accuracy histograms and novelty vs accuracy (noise markers labelled with their
    σ, baseline populations as markers), side by side, as a PNG (`report_figure`)."""
    import matplotlib.pyplot as plt

    fig = report_figure(report)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def compare_with_training(generated, generator: str | Path | TrainedGenerator, *, seed: int = 0,
                          reference_cache: str | Path | None = None):
    """The report of a generated zoo against its generator's whole aligned training population.

    `generator` is a generator folder or one already loaded (`TrainedGenerator`, or anything with
    its `directory`, `meta` and `architecture`). Every training model is compared — a subset would
    make a generated copy of a left-out model look novel. The report also carries the training
    zoo's own recorded test accuracy of those models (`zoo_accuracy`), labelled with how many test
    examples it was scored on. With `reference_cache` (a folder), the training side of the audit
    (`TrainingReference`) is read from there when an earlier call computed it for the same aligned
    training set, test split and seed, and saved there otherwise.
    """
    gen = TrainedGenerator.load(generator) if isinstance(generator, (str, Path)) else generator
    train_flat = np.load(gen.directory / "aligned_train.npy")
    spec = gen.meta.get("dataset")
    if gen.meta.get("task"):
        # A task-conditioned generator samples for one task at a time (its training zoo has no
        # single dataset): everything is scored on the samples' task, the training models too —
        # they were trained on other tasks, so their accuracy there is no target, but the
        # memorisation audit compares predictions on the same inputs all the same.
        spec = generated.manifest.get("dataset")
        if not isinstance(spec, dict) or spec.get("name") != "task":
            name = spec.get("name") if isinstance(spec, dict) else spec
            raise EvaluationError(f"{gen.directory} is task-conditioned, but the zoo evaluated "
                                  f"names no task (its dataset is {name!r}); sample one with "
                                  f"wsl gen sample --task SPEC")
    dataset = dataset_from_spec(spec)
    reference = None
    if reference_cache is not None:
        key = reference_fingerprint(train_flat, dataset.x_test, dataset.y_test, seed,
                                    NOISE_LEVELS, BOOTSTRAP_SAMPLES)
        path = Path(reference_cache) / f"reference-{key[:20]}.npz"
        if path.is_file():
            reference = TrainingReference.load(path)
        else:
            reference = training_reference(gen.architecture, train_flat, dataset.x_test,
                                           dataset.y_test, seed=seed)
            try:
                reference.save(path)
            except OSError as err:  # a read-only generator folder: the audit goes on uncached
                warnings.warn(f"could not keep the audit's training reference in {path}: {err}",
                              stacklevel=2)
    report = evaluate_generated(gen.architecture, generated.flat(), train_flat,
                                dataset.x_test, dataset.y_test, seed=seed, reference=reference)
    report.zoo_metrics = zoo_accuracy(gen.meta, np.arange(len(train_flat)))
    return report


def zoo_accuracy(meta: dict, subset: np.ndarray, column: str = "test_acc") -> dict:
    """The training zoo's recorded `column` for the generator's training models (`subset` of
    them), with the number of test examples its recipe scored (``eval_examples``: 0 = the whole
    split, None = unknown, e.g. an imported zoo); ``{"unavailable": why}`` when the zoo is gone or
    no longer the one the generator was trained on."""
    from wsl.errors import WslError
    from wsl.zoos.store import MANIFEST, Zoo, same_zoo

    path = Path(meta.get("zoo", ""))
    rows = (meta.get("selection") or {}).get("rows")
    try:
        if rows is None or not (path / MANIFEST).is_file():
            return {"unavailable": f"{path} is not there any more"}
        if not same_zoo(path, meta):
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
