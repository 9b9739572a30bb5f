"""The README's main job runs end to end, its generated networks work, and a rerun resumes."""

import json
import time

import pytest

import wsl.train.trainer
import wsl.zoos.build
from wsl.commands import demo


def _no_training(*args, **kwargs):
    raise AssertionError("a rerun of a finished demo trained again")


def test_demo_runs_end_to_end_and_a_rerun_trains_nothing(tmp_path, capsys, monkeypatch):
    assert demo.main(["--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "4/4 sample 100 networks" in out and "novelty:" in out
    evaluation = json.loads((tmp_path / "samples" / "evaluation.json").read_text())
    assert evaluation["num_generated"] == 100
    # Digits has ten classes (chance 0.1); the generated networks must really work.
    assert evaluation["generated_acc"]["mean"] > 0.5, evaluation["generated_acc"]
    assert (tmp_path / "samples" / "evaluation.png").exists()

    # Rerunning finds every stage finished: no population, probe or generator trains again
    # (both raise if called), and the stages only read back and re-score what exists.
    monkeypatch.setattr(wsl.zoos.build, "train_population", _no_training)
    monkeypatch.setattr(wsl.train.trainer.Trainer, "_loop", _no_training)
    start = time.perf_counter()
    assert demo.main(["--out", str(tmp_path)]) == 0
    rerun = time.perf_counter() - start
    again = json.loads((tmp_path / "samples" / "evaluation.json").read_text())
    assert again["generated_acc"] == pytest.approx(evaluation["generated_acc"])
    print(f"\nrerun of the finished demo: {rerun:.1f} s")
