"""Transfer curves: summaries, aggregation over tasks and seeds, the learning-curve plot.

A transfer report (`wsl.train.transfer.transfer`) holds, per init, the validation accuracy of
every fine-tuned network after every epoch and its test accuracy after the last one. The
summary reads off what a person compares: accuracy at epochs 0, 1, 5 and the last; the first
epoch at which an init's mean validation accuracy reaches random init's *final* mean; the final
test accuracy (the one look at the test split).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wsl.eval.intervals import t_interval

RESULT_FILE = "transfer.json"
MARKS = (0, 1, 5)  # epochs whose validation accuracy the summary reports


def epochs_to_reach(curve: Sequence[float], level: float) -> int | None:
    """The first epoch whose value is ≥ `level`; None if none is."""
    hits = np.flatnonzero(np.asarray(curve, np.float64) >= level - 1e-12)
    return int(hits[0]) if hits.size else None


def summarize(curves: Mapping[str, Mapping[str, Any]], epochs: int) -> dict[str, dict]:
    """Per init: mean and std of validation accuracy at MARKS and the last epoch, the test
    accuracy at epoch 0 (where recorded) and after the last epoch, and epochs to reach random
    init's final mean validation accuracy."""
    mean_curve = {k: np.nanmean(np.asarray(v["val_acc"], np.float64), axis=0)
                  for k, v in curves.items()}
    target = float(mean_curve["random"][-1]) if "random" in mean_curve else None
    out = {}
    for name, curve in curves.items():
        val = np.asarray(curve["val_acc"], np.float64)
        row = {f"val_epoch{e}": float(np.nanmean(val[:, e])) for e in MARKS if e <= epochs}
        row.update({f"val_epoch{e}_std": float(np.nanstd(val[:, e])) for e in MARKS
                    if e <= epochs})
        row["val_final"] = float(np.nanmean(val[:, -1]))
        if "test_acc_epoch0" in curve:  # reports from before it was recorded have none
            row["test_epoch0"] = float(np.nanmean(curve["test_acc_epoch0"]))
            row["test_epoch0_std"] = float(np.nanstd(curve["test_acc_epoch0"]))
        row["test_final"] = float(np.nanmean(curve["test_acc_final"]))
        row["test_final_std"] = float(np.nanstd(curve["test_acc_final"]))
        row["epochs_to_random_final"] = (None if target is None
                                         else epochs_to_reach(mean_curve[name], target))
        out[name] = row
    return out


def finish(report: dict, out: str | os.PathLike | None = None) -> dict:
    """Add the summary to a transfer report and, with `out`, write ``transfer.json`` and the
    curves (``transfer.png``) there."""
    report = {**report, "summary": summarize(report["curves"], report["config"]["epochs"])}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / (RESULT_FILE + ".tmp")
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        tmp.replace(out / RESULT_FILE)
        plot_curves(report, out / "transfer.png")
    return report


def table(report: dict) -> str:
    """The summary as a text table, one row per init."""
    summary = report["summary"]
    epochs = report["config"]["epochs"]
    marks = [e for e in MARKS if e <= epochs]
    has_start = all("test_epoch0" in s for s in summary.values())
    head = (["init"] + [f"val@{e}" for e in marks] + ["test@0"] * has_start
            + [f"val@{epochs}", "test (final)", "epochs to random's final"])
    rows = []
    for name, s in summary.items():
        reach = s["epochs_to_random_final"]
        lr = report["curves"].get(name, {}).get("lr")  # chosen among several rates
        label = name if lr is None else f"{name} (lr {lr:g})"
        rows.append([label] + [f"{s[f'val_epoch{e}']:.3f}±{s[f'val_epoch{e}_std']:.3f}"
                               for e in marks]
                    + [f"{s['test_epoch0']:.3f}±{s['test_epoch0_std']:.3f}"] * has_start
                    + [f"{s['val_final']:.3f}", f"{s['test_final']:.3f}±{s['test_final_std']:.3f}",
                       "never" if reach is None else str(reach)])
    widths = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]
    fmt = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths))
    return "\n".join([f"task {report['task']} (chance {report['chance']:.2f})", fmt(head)]
                     + [fmt(r) for r in rows])


def plot_curves(report: dict, path: str | os.PathLike) -> None:
    """Validation accuracy per epoch, mean ± std over the networks of each init."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, curve in report["curves"].items():
        val = np.asarray(curve["val_acc"], np.float64)
        mean, std = np.nanmean(val, 0), np.nanstd(val, 0)
        epochs = np.arange(len(mean))
        ax.plot(epochs, mean, label=name, marker="o", markersize=3)
        ax.fill_between(epochs, mean - std, mean + std, alpha=0.2)
    ax.axhline(report["chance"], color="grey", linestyle=":", label="chance")
    ax.set_xlabel("fine-tuning epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"transfer to {report['task']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def aggregate(reports: Sequence[dict], key=lambda r: r.get("seed", 0)) -> dict[str, dict]:
    """Summaries of many transfer reports (tasks × seeds) as, per init and quantity, the mean
    over seeds of each seed's mean over tasks, with a 95 % t-interval over seeds.

    `epochs_to_random_final` counts a task whose init never reaches random's final accuracy as
    epochs + 1 (so the mean is an honest lower bound) and reports the fraction reached."""
    by_seed: dict[Any, list[dict]] = {}
    for report in reports:
        by_seed.setdefault(key(report), []).append(report)
    inits = list(reports[0]["summary"])
    out = {}
    for name in inits:
        # What every report has (one written before a quantity was recorded lacks it).
        quantities = [q for q in reports[0]["summary"][name] if not q.endswith("_std")
                      and all(q in r["summary"][name] for r in reports)]
        row = {}
        for q in quantities:
            per_seed = []
            for group in by_seed.values():
                values = []
                for r in group:
                    v = r["summary"][name][q]
                    if q == "epochs_to_random_final" and v is None:
                        v = r["config"]["epochs"] + 1
                    values.append(float(v))
                per_seed.append(float(np.mean(values)))
            row[q] = {"mean": float(np.mean(per_seed)), "ci95": t_interval(per_seed),
                      "per_seed": per_seed}
        row["reached_random_final"] = float(np.mean(
            [r["summary"][name]["epochs_to_random_final"] is not None for r in reports]))
        out[name] = row
    return out
