"""How a probe did: a one-line summary and a plot of predicted against true values."""

from __future__ import annotations

import numpy as np

from wsl.eval.intervals import t_interval


def _mean_std(report: dict, key: str) -> str:
    s = report["summary"][key]
    return f"{s['mean']:.3f} ± {s['std']:.3f}"


def probe_figure(report: dict):
    """The figure `plot_probe` saves (open; the caller closes it).

    A regression target shows every seed's test predictions against the truth, one colour per
    seed; a class target shows the confusion matrix summed over seeds. The title gives the mean ±
    std over seeds, the numbers the report's table gives.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = report["runs"]
    seeds = f"{len(runs)} seed{'s' if len(runs) != 1 else ''}"
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    if "accuracy" in runs[0]:
        true = np.concatenate([np.asarray(r["true"], np.int64) for r in runs])
        pred = np.concatenate([np.asarray(r["prediction"], np.int64) for r in runs])
        k = int(max(true.max(), pred.max())) + 1
        matrix = np.zeros((k, k))
        np.add.at(matrix, (true, pred), 1)
        ax.imshow(matrix, cmap="Blues")
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(f"{report['encoder']}: accuracy {_mean_std(report, 'accuracy')}\n"
                     f"(mean ± std over {seeds}; counts summed over seeds)", fontsize=9)
    else:
        lo, hi = np.inf, -np.inf
        for i, run in enumerate(runs):
            true, pred = np.asarray(run["true"]), np.asarray(run["prediction"])
            ax.scatter(true, pred, s=8, alpha=0.6, color=f"C{i % 10}",
                       label=f"seed {run.get('seed', i)}: τ = {run['kendall_tau']:.3f}")
            lo = min(lo, float(min(true.min(), pred.min())))
            hi = max(hi, float(max(true.max(), pred.max())))
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.set_xlabel(f"true {report['target']}")
        ax.set_ylabel(f"predicted {report['target']}")
        ax.set_title(f"{report['encoder']}: τ = {_mean_std(report, 'kendall_tau')}, "
                     f"R² = {_mean_std(report, 'r2')}\n(mean ± std over {seeds})", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def plot_probe(report: dict, path) -> None:
    """Predicted vs true on the test split, every seed in its own colour, or a confusion matrix
    for classes; titled with the mean ± std over seeds (`probe_figure`)."""
    import matplotlib.pyplot as plt

    fig = probe_figure(report)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_report(report: dict) -> str:
    """One line: each metric's mean ± std over seeds and, with several seeds, the 95 % t-interval
    of its mean (the interval a claim about the encoder should use)."""
    runs = report.get("runs", [])
    parts = []
    for key, value in report["summary"].items():
        part = f"{key} {value['mean']:.4f} ± {value['std']:.4f}"
        per_seed = [run[key] for run in runs if key in run]
        if len(per_seed) > 1:
            low, high = t_interval(per_seed)
            part += f" [95 % CI {low:.4f}, {high:.4f}]"
        parts.append(part)
    return (f"{report['encoder']} → {report['target']} on {report['num_rows']} networks, "
            f"{report['seeds']} seed(s): " + ", ".join(parts)
            + f"  ({report['seconds']:.1f} s/seed)")
