"""Calibration of accuracy-conditioned generators: requested against achieved accuracy.

A generator conditioned on a score column (``condition_scalar=val_acc``) is asked for networks at
targets inside its training range — the population's q10, q25, q50, q75 and q90, or absolute
values — and every sample is scored on the zoo's splits. Calibrated means that the samples'
mean *validation* accuracy lies within `TOLERANCE` of each target between q10 and q90; test
accuracy is reported beside it and never used.

A raw conditional generator need not be calibrated (samples asked for q90 may land at the
population mean). `fit_condition_map` measures, on validation, which condition value achieves
which mean accuracy over a grid of values and keeps the monotone (isotonic) curve through them;
with that map (`wsl gen calibrate`, stored in the generator folder) a target is translated into the
condition value that reaches it. The map is fitted on samples of one seed and checked on fresh
samples of another. A map cannot ask for more than the top condition gives: `choose_condition_map`
fits one per guidance weight and keeps the one whose curve reaches q10..q90 best (validation
again); mapped targets are then sampled at that weight.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Sequence

import numpy as np
from scipy.optimize import isotonic_regression

from wsl.eval.errors import EvaluationError
from wsl.eval.generated import Nearness
from wsl.eval.intervals import bootstrap_interval
from wsl.train.generator import CONDITION_MAP_FILE, TrainedGenerator
from wsl.zoos.datasets import dataset_from_spec
from wsl.zoos.scoring import population_metrics

QUANTILES = ("q10", "q25", "q50", "q75", "q90")
TOLERANCE = 0.02  # |achieved mean val acc − target| for a calibrated target
# Condition values the map is measured at: this many, evenly over the training population's range
# of the condition (its q0..q100). Beyond that range the generator never saw a condition, and
# measured there (a grid of ±3 std) its samples got *less* accurate as the condition rose, which
# the monotone fit then averaged into the top of the map.
MAP_POINTS = 13


def scored_column(gen: TrainedGenerator) -> tuple[str, str]:
    """The generator's scalar condition column and the split its samples are scored on."""
    stats = gen.meta.get("scalar")
    if not stats:
        raise EvaluationError(f"{gen.directory}: the generator has no scalar condition; "
                              f"calibration needs one (condition_scalar=val_acc)")
    column = stats["column"]
    split, _, metric = column.partition("_")
    if split not in ("train", "val") or metric not in ("acc", "loss"):
        raise EvaluationError(f"{gen.directory}: calibration scores samples on the column they "
                              f"are conditioned on, which must be train_/val_ acc or loss; "
                              f"this generator is conditioned on {column!r}")
    return column, split


@functools.lru_cache(maxsize=2)
def _dataset(spec: str):
    # Loading (and resizing) a dataset takes about a second, and a calibration scores 13 grid
    # values and 10 targets on it: load it once.
    return dataset_from_spec(json.loads(spec))


def _score(gen: TrainedGenerator, num: int, seed: int, condition: dict, sample_options,
           nearness: Nearness | None = None) -> dict:
    """The samples' metrics on the split of the condition column and on test (reported beside),
    and with `nearness` their ``nn_relative``."""
    arch = gen.architecture
    flat = gen.sample(num, seed=seed, **condition, **sample_options)
    dataset = _dataset(json.dumps(gen.meta.get("dataset"), sort_keys=True))
    _, split = scored_column(gen)
    metrics = population_metrics(arch, flat, dataset,
                                 splits=tuple(dict.fromkeys((split, "test"))))
    if nearness is not None:
        metrics["nn_relative"] = nearness(flat)
    return metrics


@dataclasses.dataclass
class Calibration:
    """One row per target: requested value, achieved mean of the conditioned column (with its
    bootstrap 95 % interval) and the test accuracy beside it."""

    column: str
    rows: list[dict]
    tolerance: float = TOLERANCE
    mapped: bool = False  # targets went through the generator's condition map

    @property
    def calibrated(self) -> bool:
        """Every quantile target between q10 and q90 is met within the tolerance."""
        inside = [r for r in self.rows if r["target"] in QUANTILES]
        return bool(inside) and all(abs(r["error"]) <= self.tolerance for r in inside)

    def to_dict(self) -> dict:
        return {"column": self.column, "tolerance": self.tolerance, "mapped": self.mapped,
                "calibrated": self.calibrated, "rows": self.rows}

    def table(self) -> str:
        head = ("target", "requested", f"achieved {self.column}", "95% CI", "error (pt)",
                "test_acc", "within", "NN dist (rel.)")
        lines = [head]
        for r in self.rows:
            near = r.get("nn_relative")  # absent from results saved before it was measured
            lines.append((str(r["target"]), f"{r['requested']:.4f}", f"{r['achieved']:.4f}",
                          f"[{r['achieved_ci95'][0]:.4f}, {r['achieved_ci95'][1]:.4f}]",
                          f"{r['error'] * 100:+.2f}", f"{r['test_acc']:.4f}",
                          "yes" if abs(r["error"]) <= self.tolerance else "NO",
                          "-" if near is None else f"{near:.2f}"))
        widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
        text = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                          enumerate(zip(line, widths))) for line in lines]
        text.insert(1, "  ".join("-" * w for w in widths))
        how = "through the condition map fitted on validation" if self.mapped else "raw condition"
        verdict = ("calibrated" if self.calibrated else "NOT calibrated")
        return (f"calibration ({how}): requested vs achieved {self.column} of the samples\n"
                + "\n".join(text)
                + f"\n-> {verdict}: every target q10..q90 within ±{self.tolerance * 100:g} pt "
                  f"required\n   NN dist (rel.): the samples' median distance to their nearest "
                  f"aligned training model over the training models' own (near 0: copies)")


def measure_calibration(gen: TrainedGenerator, *, targets: Sequence[str | float] = QUANTILES,
                        num: int = 100, seed: int = 1, use_map: bool = True,
                        **sample_options) -> Calibration:
    """Sample `num` networks at each target (a quantile name of the training population or a
    raw value of the condition column) and compare the achieved mean with the target.

    With `use_map` (default) the generator's condition map is used when it has one.
    """
    column, _ = scored_column(gen)
    stats = gen.meta["scalar"]
    mapped = bool(use_map and gen.condition_map is not None)
    # A target reached only by copying the most accurate training models shows in this.
    nearness = Nearness(np.load(gen.directory / "aligned_train.npy"))
    rows = []
    for i, target in enumerate(targets):
        requested = float(stats[target]) if isinstance(target, str) and target in stats else None
        if requested is None:
            try:
                requested = float(target)
            except (TypeError, ValueError):
                keys = sorted(k for k in stats if k.startswith("q"))
                raise EvaluationError(f"calibration target {target!r}: give a number or one "
                                      f"of {keys}") from None
        metrics = _score(gen, num, seed * 1000 + i,
                         {"cond_scalar": target, "use_map": mapped}, sample_options, nearness)
        achieved = np.asarray(metrics[column], np.float64)
        low, high = bootstrap_interval(achieved, np.mean, seed=i)
        rows.append({"target": target, "requested": requested,
                     "achieved": float(achieved.mean()), "achieved_ci95": [low, high],
                     "error": float(achieved.mean() - requested),
                     "test_acc": float(np.mean(metrics["test_acc"])),
                     "achieved_std": float(achieved.std()),
                     "nn_relative": metrics["nn_relative"]})
    return Calibration(column, rows, mapped=mapped)


def map_grid(gen: TrainedGenerator, points: int = MAP_POINTS) -> np.ndarray:
    """`points` standardised condition values evenly over the training population's range."""
    stats = gen.meta["scalar"]
    ends = [(stats[q] - stats["mean"]) / stats["std"] for q in ("q0", "q100")]
    return np.round(np.linspace(*ends, points), 3)


def fit_condition_map(gen: TrainedGenerator, *, num: int = 100, seed: int = 0,
                      grid: Sequence[float] | None = None, **sample_options) -> dict:
    """Which standardised condition value achieves which mean of the condition column, measured
    over `grid` (default `map_grid`: the training range) on validation (never test) and made
    non-decreasing by isotonic regression.

    Returns the map as `TrainedGenerator` reads it from ``condition_map.json``.
    """
    column, _ = scored_column(gen)
    grid = map_grid(gen) if grid is None else grid
    grid = np.asarray(sorted(set(float(g) for g in grid)), np.float64)
    if len(grid) < 2:
        raise EvaluationError("the condition map needs at least two grid values")
    achieved = []
    for i, value in enumerate(grid):
        raw = value * gen.meta["scalar"]["std"] + gen.meta["scalar"]["mean"]
        metrics = _score(gen, num, seed * 1000 + i, {"cond_scalar": raw, "use_map": False},
                         sample_options)
        achieved.append(float(np.mean(metrics[column])))
    increasing = not column.endswith("_loss")
    monotone = isotonic_regression(np.asarray(achieved), increasing=increasing).x
    return {"column": column, "condition": grid.tolist(), "achieved": achieved,
            "monotone": monotone.tolist(), "increasing": increasing, "samples": num,
            "seed": seed, "sample_options": {k: v for k, v in sample_options.items()
                                             if v is not None}}


def reach_shortfall(gen: TrainedGenerator, condition_map: dict) -> float:
    """How far the q10..q90 targets lie outside the scores a map's monotone curve reaches (0 when
    every target is inside): the calibration error no condition value can remove."""
    stats = gen.meta["scalar"]
    low, high = min(condition_map["monotone"]), max(condition_map["monotone"])
    return float(max(max(0.0, low - stats[q], stats[q] - high) for q in QUANTILES))


def choose_condition_map(gen: TrainedGenerator, *, guidances: Sequence[float] = (1.0,),
                         num: int = 100, seed: int = 0, **sample_options) -> dict:
    """`fit_condition_map` at each guidance weight, keeping the map whose curve reaches the
    population's q10..q90 best (the least `reach_shortfall`, to 0.1 point; the smaller weight on
    a tie) — measured on validation, like the map itself.

    Guidance extends the range a condition can reach (a raw generator asked for q90 may land at
    the mean, and the map cannot ask for more than the top condition gives), but departs from the
    trained conditional: it is used only where it reaches measurably further. The map records
    every candidate under ``guidance_candidates``.
    """
    if not guidances:
        raise EvaluationError("choose_condition_map needs at least one guidance weight")
    if any(not g >= 0 for g in guidances):
        raise EvaluationError(f"guidance weights must be ≥ 0; got {list(guidances)}")
    fitted = []
    for guidance in sorted(set(float(g) for g in guidances)):
        condition_map = fit_condition_map(gen, num=num, seed=seed, guidance=guidance,
                                          **sample_options)
        fitted.append((round(reach_shortfall(gen, condition_map), 3), guidance, condition_map))
    _, _, best = min(fitted, key=lambda f: f[:2])
    best["guidance_candidates"] = [
        {"guidance": g, "reach": [min(m["monotone"]), max(m["monotone"])], "shortfall": short}
        for short, g, m in fitted]
    return best


def write_condition_map(gen: TrainedGenerator, condition_map: dict) -> None:
    path = gen.directory / CONDITION_MAP_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(condition_map, indent=2) + "\n")
    tmp.replace(path)
    gen.condition_map = condition_map


def calibration_figure(calibrations: Sequence[Calibration], labels: Sequence[str]):
    """Requested against achieved (with 95 % intervals) for each calibration, the diagonal and
    the ± tolerance band (open; the caller closes it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    lows = [r["requested"] for c in calibrations for r in c.rows]
    highs = [r["achieved"] for c in calibrations for r in c.rows]
    lo, hi = min(lows + highs) - 0.02, max(lows + highs) + 0.02
    diagonal = np.linspace(lo, hi, 2)
    tol = calibrations[0].tolerance if calibrations else TOLERANCE
    ax.fill_between(diagonal, diagonal - tol, diagonal + tol, color="0.9",
                    label=f"±{tol * 100:g} pt")
    ax.plot(diagonal, diagonal, color="0.5", lw=0.8)
    for cal, label in zip(calibrations, labels):
        req = np.array([r["requested"] for r in cal.rows])
        ach = np.array([r["achieved"] for r in cal.rows])
        ci = np.array([r["achieved_ci95"] for r in cal.rows])
        ax.errorbar(req, ach, yerr=[ach - ci[:, 0], ci[:, 1] - ach], fmt="o-", capsize=3,
                    label=label)
        for r in cal.rows:
            ax.annotate(str(r["target"]), (r["requested"], r["achieved"]), xytext=(4, -10),
                        textcoords="offset points", fontsize=7)
    column = calibrations[0].column if calibrations else "accuracy"
    ax.set_xlabel(f"requested {column}")
    ax.set_ylabel(f"achieved mean {column} of the samples")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_calibration(calibrations: Sequence[Calibration], labels: Sequence[str], path) -> None:
    import matplotlib.pyplot as plt

    fig = calibration_figure(calibrations, labels)
    fig.savefig(path, dpi=110)
    plt.close(fig)
