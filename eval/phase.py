"""Phase diagrams: a zoo column averaged over the seeds of every (x, y) grid cell, as heatmaps."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np

from wsl.eval.errors import EvaluationError


@dataclasses.dataclass(frozen=True)
class PhaseGrid:
    """`mean[i, j]` (and `std`, `count`) of `color` over the rows with y = ys[i] and x = xs[j]."""

    x: str
    y: str
    color: str
    xs: np.ndarray
    ys: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    count: np.ndarray

    def table(self, digits: int = 3) -> str:
        """The grid as text: one line per y value, one column per x value."""
        head = f"{self.color}: rows {self.y}, columns {self.x} (mean over seeds)"
        width = max(8, digits + 5)
        lines = [head, f"{self.y:>10} | " + " ".join(f"{_short(v):>{width}}" for v in self.xs)]
        for i, yv in enumerate(self.ys):
            cells = " ".join(f"{'—' if np.isnan(m) else f'{m:.{digits}g}':>{width}}"
                             for m in self.mean[i])
            lines.append(f"{_short(yv):>10} | {cells}")
        return "\n".join(lines)


def _short(value) -> str:
    return f"{value:g}" if isinstance(value, (float, np.floating, int, np.integer)) else str(value)


def phase_grid(zoo, x: str, y: str, color: str, epoch: int | str = "last") -> PhaseGrid:
    """Average `color` over the models of every (`x`, `y`) cell at `epoch` (NaN values, e.g.
    rows not analysed or diverged, are left out; a cell with none is NaN)."""
    view = zoo if epoch == "all" else zoo.filter(epoch=epoch)
    metrics = view.metrics
    for name in (x, y, color):
        if name not in metrics:
            raise EvaluationError(f"no column {name!r} in {zoo.path}; columns are "
                                  f"{', '.join(zoo.columns)}")
    if metrics[color].dtype.kind not in "iufb":
        raise EvaluationError(f"--color {color!r} is not numeric")
    if len(view) == 0:
        raise EvaluationError(f"{zoo.path}: no rows at epoch {epoch!r}")
    xs, ys = np.unique(metrics[x]), np.unique(metrics[y])
    if len(xs) * len(ys) > 400:
        raise EvaluationError(f"{x} x {y} has {len(xs)} x {len(ys)} distinct values: not a grid "
                              f"(phase plots need grid recipes, e.g. phase-mlp-mnist1d)")
    values = metrics[color].astype(np.float64)
    mean = np.full((len(ys), len(xs)), np.nan)
    std, count = np.full_like(mean, np.nan), np.zeros(mean.shape, int)
    for i, yv in enumerate(ys):
        for j, xv in enumerate(xs):
            cell = values[(metrics[x] == xv) & (metrics[y] == yv)]
            cell = cell[np.isfinite(cell)]
            count[i, j] = len(cell)
            if len(cell):
                mean[i, j], std[i, j] = cell.mean(), cell.std()
    return PhaseGrid(x, y, color, xs, ys, mean, std, count)


def plot_phase(grids: Sequence[PhaseGrid], path: str | os.PathLike, title: str = "") -> None:
    """One heatmap per grid, side by side, each cell annotated with its mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(grids), figsize=(4.2 * len(grids) + 0.5, 3.8), squeeze=False)
    for ax, grid in zip(axes[0], grids):
        finite = grid.mean[np.isfinite(grid.mean)]
        image = ax.imshow(grid.mean, origin="lower", aspect="auto", cmap="viridis",
                          vmin=finite.min() if finite.size else 0,
                          vmax=finite.max() if finite.size else 1)
        ax.set_xticks(range(len(grid.xs)), [_short(v) for v in grid.xs])
        ax.set_yticks(range(len(grid.ys)), [_short(v) for v in grid.ys])
        ax.set_xlabel(grid.x)
        ax.set_ylabel(grid.y)
        ax.set_title(grid.color)
        mid = (finite.min() + finite.max()) / 2 if finite.size else 0
        for i in range(len(grid.ys)):
            for j in range(len(grid.xs)):
                m = grid.mean[i, j]
                if np.isfinite(m):
                    ax.text(j, i, f"{m:.3g}", ha="center", va="center", fontsize=7,
                            color="black" if m > mid else "white")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
