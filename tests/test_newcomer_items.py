"""Issue 24's smaller items: `wsl merge --top K --by COLUMN` and `wsl zoo export --best` (never by
test data), σ labels on the noise markers of `evaluation.png`, probe plots titled with the mean ±
std over seeds, recipe descriptions without counts that overrides change. (Generated-zoo
provenance under `provenance`: tests/test_generate.py.)

One 8-model quick zoo (one epoch) is built per module through the CLI.
"""

import json
import re

import numpy as np
import pytest

from wsl.commands import main as wsl
from wsl.commands.zoo import summarise
from wsl.eval.generated import GeneratedReport, report_figure
from wsl.eval.probe_report import probe_figure
from wsl.zoos.recipes import RECIPES
from wsl.zoos.store import Zoo


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("newcomer") / "zoo"
    assert wsl(["zoo", "build", "quick", "--out", str(path), "--num-models", "8", "epochs=1",
                "--no-progress"]) == 0
    return path


def _last(zoo_dir):
    m = Zoo.open(zoo_dir).filter(epoch="last").metrics
    return np.asarray(m["model"]), np.asarray(m["val_acc"], np.float64)


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_merge_top_k_by_validation_column(zoo_dir, tmp_path, capsys):
    ids, val = _last(zoo_dir)
    expected = [int(i) for i in ids[np.lexsort((ids, -val))[:3]]]
    out = tmp_path / "merged.npz"
    assert wsl(["merge", "--zoo", str(zoo_dir), "--top", "3", "--out", str(out)]) == 0
    assert f"selected the 3 best models by val_acc (highest first): " \
           f"{', '.join(map(str, expected))}" in capsys.readouterr().out
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["selection"]["top"] == 3 and report["selection"]["by"] == "val_acc"
    assert report["selection"]["models"] == expected
    assert report["selection"]["values"] == sorted(report["selection"]["values"], reverse=True)
    assert report["models"] == 3 and set(report["member_models"]) <= set(expected)
    assert report["best_model"] == expected[0]

    # Selection by test data is refused, in one line that says why, before anything is read.
    for column in ("test_acc", "test_loss", "gap"):
        assert wsl(["merge", "--zoo", str(zoo_dir), "--top", "3", "--by", column,
                    "--out", str(tmp_path / "t.npz")]) == 2
        line = _error_line(capsys)
        assert "selection must not use test data" in line and f"--by {column}" in line
    assert not (tmp_path / "t.npz").exists()
    assert wsl(["merge", "--zoo", str(zoo_dir), "--by", "val_acc", "--out", str(out),
                "--force"]) == 2
    assert "give --top K too" in _error_line(capsys)
    assert wsl(["merge", "--zoo", str(zoo_dir), "--top", "3", "--by", "nope", "--out", str(out),
                "--force"]) == 2
    assert "has no such column" in _error_line(capsys)
    assert wsl(["merge", "--zoo", str(zoo_dir), "--top", "9", "--out", str(out),
                "--force"]) == 1
    assert "only 8 models" in _error_line(capsys)


def test_export_best_by_validation_column(zoo_dir, tmp_path, capsys):
    ids, val = _last(zoo_dir)
    best = int(ids[np.lexsort((ids, -val))[0]])
    assert wsl(["zoo", "export", str(zoo_dir), "--best", "--out", str(tmp_path / "b.npz")]) == 0
    assert f"model {best}, the highest val_acc" in capsys.readouterr().out
    assert wsl(["zoo", "export", str(zoo_dir), "--model", str(best),
                "--out", str(tmp_path / "m.npz")]) == 0
    with np.load(tmp_path / "b.npz") as b, np.load(tmp_path / "m.npz") as m:
        assert set(b.files) == set(m.files)
        for name in b.files:
            np.testing.assert_array_equal(b[name], m[name])
    # Lowest first for a loss column.
    loss = Zoo.open(zoo_dir).filter(epoch="last").metrics["val_loss"].astype(np.float64)
    lowest = int(ids[np.lexsort((ids, loss))[0]])
    assert wsl(["zoo", "export", str(zoo_dir), "--best", "--by", "val_loss",
                "--out", str(tmp_path / "l.npz")]) == 0
    assert f"model {lowest}, the lowest val_loss" in capsys.readouterr().out

    for words, text in ((["--best", "--by", "test_acc"], "selection must not use test data"),
                        (["--best", "--model", "0"], "--best and --model exclude each other"),
                        (["--best", "--all"], "--best and --all exclude each other"),
                        (["--by", "val_acc", "--model", "0"], "give --best too")):
        assert wsl(["zoo", "export", str(zoo_dir), *words, "--out", str(tmp_path / "x.npz")]) == 2
        assert text in _error_line(capsys), words
    assert not (tmp_path / "x.npz").exists()


def test_noise_markers_of_the_evaluation_plot_carry_their_sigma():
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)
    sigmas = (0.01, 0.03, 0.1, 0.3)
    report = GeneratedReport(
        generated_acc=rng.uniform(0.5, 0.9, 10), train_acc=rng.uniform(0.6, 0.9, 12),
        generated_max_iou=rng.uniform(0, 1, 10), train_max_iou=rng.uniform(0, 1, 12),
        noise=[{"sigma": s, "n": 12, "mean_acc": 0.9 - s, "median_max_iou": 1 - s}
               for s in sigmas],
        generated_diversity={}, train_diversity={}, span_distance=np.zeros(10))
    fig = report_figure(report)
    try:
        labels = [t.get_text() for t in fig.axes[1].texts]
    finally:
        plt.close(fig)
    assert labels == [f"σ={s:g}" for s in sigmas]


def _probe_report(classes: bool) -> dict:
    rng = np.random.default_rng(1)
    runs = []
    for seed, tau in enumerate((0.5, 0.6, 0.7)):
        true = rng.integers(0, 3, 20) if classes else rng.uniform(0, 1, 20)
        run = {"seed": seed, "true": true.tolist(), "prediction": true.tolist()}
        run.update({"accuracy": tau} if classes else {"kendall_tau": tau, "r2": tau / 2})
        runs.append(run)
    keys = ("accuracy",) if classes else ("kendall_tau", "r2")
    summary = {k: {"mean": float(np.mean([r[k] for r in runs])),
                   "std": float(np.std([r[k] for r in runs]))} for k in keys}
    return {"encoder": "statnn", "target": "kind" if classes else "test_acc", "runs": runs,
            "summary": summary}


@pytest.mark.parametrize("classes", [False, True], ids=["regression", "classes"])
def test_probe_plot_is_titled_with_the_mean_over_seeds(classes):
    import matplotlib.pyplot as plt

    report = _probe_report(classes)
    fig = probe_figure(report)
    try:
        ax = fig.axes[0]
        title = ax.get_title()
        legend = ax.get_legend()
        entries = [t.get_text() for t in legend.get_texts()] if legend else []
    finally:
        plt.close(fig)
    key = "accuracy" if classes else "kendall_tau"
    s = report["summary"][key]
    assert f"{s['mean']:.3f} ± {s['std']:.3f}" in title and "over 3 seeds" in title
    if not classes:  # every seed's predictions, each in its own colour and named
        assert entries == ["seed 0: τ = 0.500", "seed 1: τ = 0.600", "seed 2: τ = 0.700"]


def test_recipe_descriptions_and_summary_state_no_stale_counts(zoo_dir):
    for name, recipe in RECIPES.items():
        text = recipe.description
        assert not re.search(rf"\b{recipe.num_models}\b", text), (name, text)
        assert not re.search(rf"\b{recipe.epochs} epochs\b", text), (name, text)
    summary = summarise(Zoo.open(zoo_dir))
    assert "recipe       quick" in summary and "counts       8 models" in summary
    assert "32" not in summary.split("counts")[0].split("recipe")[1]
