"""The README's main job runs end to end and its generated networks work."""

import json

from wsl.commands import demo


def test_demo_runs_end_to_end(tmp_path, capsys):
    assert demo.main(["--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "4/4 sample 100 networks" in out and "novelty:" in out
    evaluation = json.loads((tmp_path / "samples" / "evaluation.json").read_text())
    assert evaluation["num_generated"] == 100
    # Digits has ten classes (chance 0.1); the generated networks must really work.
    assert evaluation["generated_acc"]["mean"] > 0.5, evaluation["generated_acc"]
    assert (tmp_path / "samples" / "evaluation.png").exists()
    # Rerunning finds every stage finished and reuses it.
    assert demo.main(["--out", str(tmp_path)]) == 0
