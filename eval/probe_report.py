"""How a probe did: a one-line summary and a plot of predicted against true values."""

from __future__ import annotations

import numpy as np


def plot_probe(report: dict, path) -> None:
    """Predicted vs true on the test split (first seed), or a confusion matrix for classes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = report["runs"][0]
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    true, pred = np.asarray(run["true"]), np.asarray(run["prediction"])
    if "accuracy" in run:
        k = int(max(true.max(), pred.max())) + 1
        matrix = np.zeros((k, k))
        np.add.at(matrix, (true, pred), 1)
        ax.imshow(matrix, cmap="Blues")
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(f"{report['encoder']}: accuracy {run['accuracy']:.3f}")
    else:
        ax.scatter(true, pred, s=8, alpha=0.6)
        lo, hi = float(min(true.min(), pred.min())), float(max(true.max(), pred.max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.set_xlabel(f"true {report['target']}")
        ax.set_ylabel(f"predicted {report['target']}")
        ax.set_title(f"{report['encoder']}: τ = {run['kendall_tau']:.3f}, R² = {run['r2']:.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_report(report: dict) -> str:
    parts = [f"{k} {v['mean']:.4f} ± {v['std']:.4f}" for k, v in report["summary"].items()]
    return (f"{report['encoder']} → {report['target']} on {report['num_rows']} networks, "
            f"{report['seeds']} seed(s): " + ", ".join(parts)
            + f"  ({report['seconds']:.1f} s/seed)")
