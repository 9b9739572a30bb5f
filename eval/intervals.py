"""95 % intervals for the evaluations' claims: over networks (bootstrap) and over seeds (Student t).

Two sources of uncertainty, two tools. Within one population (100 samples of a generator, a zoo's
models) the percentile bootstrap over networks gives the interval of a mean or a median. Across
runs (generator seeds, probe seeds), each run's mean is one observation and there are few of
them: a bootstrap over 3 seeds can draw only 10 distinct resamples and its percentile interval
covers far less than 95 % (it ignores the t quantile, 4.30 at 2 degrees of freedom, and shrinks
the spread by (n − 1)/n). So a mean over seeds gets the Student-t interval of the per-seed means,
whose spread already carries each seed's sampling noise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from wsl.eval.errors import EvaluationError

BOOTSTRAP_SAMPLES = 2000
CONFIDENCE = 0.95


def bootstrap_interval(values, statistic: Callable = np.mean, n: int = BOOTSTRAP_SAMPLES,
                       seed: int = 0, level: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile-bootstrap interval (low, high) at `level` for `statistic` of the finite `values`.

    `statistic` must reduce along ``axis=1`` (np.mean, np.median, …): the `n` resamples are drawn
    as rows of one matrix (in batches of a few million elements) and reduced at once. NaN when
    there are no finite values.
    """
    if not 0 < level < 1:
        raise EvaluationError(f"level must lie in (0, 1), got {level}")
    if n < 1:
        raise EvaluationError(f"the bootstrap needs n ≥ 1 resamples, got {n}")
    values = np.asarray(values, np.float64).ravel()
    values = values[np.isfinite(values)]
    if not values.size:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    batch = max(1, 2 ** 22 // values.size)
    stats = np.concatenate([
        np.asarray(statistic(values[rng.integers(0, values.size, (min(batch, n - s),
                                                                  values.size))], axis=1))
        for s in range(0, n, batch)])
    low, high = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def t_interval(values: Sequence[float], level: float = CONFIDENCE) -> list[float]:
    """Student-t interval [low, high] at `level` of the mean of `values` (per-seed means; missing
    and non-finite values are left out); a point for one value, NaN for none."""
    from scipy import stats

    if not 0 < level < 1:
        raise EvaluationError(f"level must lie in (0, 1), got {level}")
    values = np.asarray([v for v in values if v is not None and np.isfinite(v)], np.float64)
    if values.size == 0:
        return [float("nan"), float("nan")]
    if values.size == 1:
        return [float(values[0])] * 2
    half = (stats.t.ppf((1 + level) / 2, values.size - 1) * values.std(ddof=1)
            / np.sqrt(values.size))
    return [float(values.mean() - half), float(values.mean() + half)]


def side(interval: Sequence[float], threshold: float) -> str:
    """Where an interval lies against `threshold`: "above" (all of it at or over), "below" (all of
    it under) or "straddles" — a verdict that a mean alone would not support."""
    low, high = interval
    return "above" if low >= threshold else "below" if high < threshold else "straddles"
