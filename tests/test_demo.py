"""The README's main job runs end to end, its generated networks work, and a rerun resumes.

It runs in a subprocess compiled with optimisations, as a user runs it: the demo trains for
thousands of steps, where unoptimised code (the rest of the suite's setting) would double its time.
"""

import json
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent("""
    import sys, time
    import wsl.train.trainer, wsl.zoos.build
    from wsl.commands import demo

    def no_training(*args, **kwargs):
        raise AssertionError("a rerun of a finished demo trained again")

    out = sys.argv[1]
    assert demo.main(["--out", out]) == 0
    print("== rerun", flush=True)
    # Rerunning finds every stage finished: no population, probe or generator trains again
    # (both raise if called), and the stages only read back and re-score what exists.
    wsl.zoos.build.train_population = no_training
    wsl.train.trainer.Trainer._loop = no_training
    start = time.perf_counter()
    assert demo.main(["--out", out]) == 0
    print(f"rerun of the finished demo: {time.perf_counter() - start:.1f} s")
""")


def test_demo_runs_end_to_end_and_a_rerun_trains_nothing(tmp_path, optimised_env):
    run = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], env=optimised_env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    first, rerun = run.stdout.split("== rerun")
    assert "4/4 sample 100 networks" in first and "novel than noise" in first
    evaluation = json.loads((tmp_path / "samples" / "evaluation.json").read_text())
    assert evaluation["num_generated"] == 100
    # Digits has ten classes (chance 0.1); the generated networks must really work.
    assert evaluation["generated_acc"]["mean"] > 0.5, evaluation["generated_acc"]
    assert (tmp_path / "samples" / "evaluation.png").exists()
    assert "rerun of the finished demo" in rerun
    print(rerun.strip().splitlines()[-1])
    # The rerun re-scored the samples it read back and wrote the same evaluation.
    again = json.loads((tmp_path / "samples" / "evaluation.json").read_text())
    assert again["generated_acc"] == pytest.approx(evaluation["generated_acc"])
