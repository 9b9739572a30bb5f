"""Commands explain themselves (issue 24): every option's help shows its text and default,
``--list-keys`` lists the key=value keys, ``wsl probe`` takes ``train.`` keys as ``wsl gen train``
does, runs print their mesh and a progress bar, and a run that resumes says so.

One 16-model quick zoo is built per module; the probe and the generator train for a few steps.
"""

import argparse
import json

import pytest

from wsl.commands import _help, demo, gen, launch, listing, merge, probe, transfer
from wsl.commands import main as wsl
from wsl.commands import zoo as zoo_command
from wsl.eval.generated import _zoo_metrics_line

# (words before --help, the parser those words reach)
PARSERS = [
    (["probe"], probe._parser),
    (["gen"], gen._parser),
    (["gen", "train"], lambda: _help.subcommand(gen._parser(), "train")),
    (["gen", "sample"], lambda: _help.subcommand(gen._parser(), "sample")),
    (["gen", "eval"], lambda: _help.subcommand(gen._parser(), "eval")),
    (["merge"], merge._parser),
    (["demo"], demo._parser),
    (["list"], listing._parser),
    (["transfer"], transfer._parser),
    (["launch"], launch._parser),
] + [(["zoo", name], lambda name=name: _help.subcommand(zoo_command._parser(), name))
     for action in zoo_command._parser()._actions
     if isinstance(action, argparse._SubParsersAction) for name in action.choices]
# Defaults a reader must see in each --help, written as the help shows them.
SHOWN = {
    "probe": ["(default: test_acc)", "(default: nfn_hnp)", "(default: 1)", "(default: permute)",
              "(default: runs/probe-ENCODER-TARGET)", "--list-keys", "--no-progress",
              "train.steps=2000"],
    "gen": ["train", "sample", "eval", "wsl gen COMMAND --help"],
    "gen train": ["(default: mean)", "--list-keys", "--no-progress", "train.steps=5000"],
    "gen sample": ["(default: 100)", "(default: 0)", "full test split"],
    "gen eval": ["(default: 0)", "full test split"],
    "merge": ["(default: uniform)", "(default: best)", "(default: last)", "(default: 256)"],
    "demo": ["(default: runs/demo)", "(default: 100)", "(default: 1500)"],
    "list": ["(default: all)"],
}


def _has_default(action: argparse.Action) -> bool:
    """A default the option really takes when left out (flags and "not given" have none)."""
    return (action.nargs != 0 and not action.required and action.default is not None
            and action.default is not argparse.SUPPRESS and action.default != [])


@pytest.mark.parametrize("words, make", PARSERS, ids=[" ".join(w) for w, _ in PARSERS])
def test_every_option_has_help_and_shows_its_default(words, make, capsys):
    with pytest.raises(SystemExit) as exit_:  # argparse itself, the way `wsl` runs it
        make().parse_args(["--help"])
    assert exit_.value.code == 0
    capsys.readouterr()
    assert wsl([*words, "--help"]) == 0
    out = capsys.readouterr().out
    flat = " ".join(out.split())  # argparse wraps lines anywhere
    for action in make()._actions:
        name = "/".join(action.option_strings) or action.dest
        assert action.help and action.help.strip(), f"{name} has no help text"
        for option in action.option_strings:
            assert option in out, f"{option} missing from --help"
        if _has_default(action):
            if "default" in action.help.lower():  # the help states its own default
                assert "(default: " in action.help, f"{name}: {action.help!r}"
            else:
                assert f"(default: {action.default})" in flat, f"{name}'s default not shown"
    for text in SHOWN.get(" ".join(words), ()):
        assert text in flat, f"{text!r} missing from `wsl {' '.join(words)} --help`"


def test_list_keys_prints_every_key_with_default_and_type(capsys):
    assert wsl(["probe", "--list-keys"]) == 0
    out = capsys.readouterr().out
    for line in ("train.steps=3000", "train.optimizer.lr=0.001", "train.log.progress=true",
                 "noise_scale=0.05", "encoder.channels=[16,16,5]", "encoder.head_widths="):
        assert line in out, line
    assert "encoder.out_dim" not in out  # set by the probe itself
    steps = next(line for line in out.splitlines() if "train.steps=" in line)
    assert steps.split()[-1] == "int"
    # --list-keys needs no zoo and reads --encoder wherever it stands
    assert wsl(["probe", "--list-keys", "--encoder", "ng_gnn"]) == 0
    assert "encoder.dim=64" in capsys.readouterr().out
    assert wsl(["gen", "train", "--list-keys"]) == 0
    out = capsys.readouterr().out
    for line in ("method=flow", "hidden=512", "sampler=none", "train.steps=3000",
                 "train.ema_decay=0.999"):
        assert line in out, line
    assert "flow|ddpm|latent-ddpm" in out
    # an unknown key points at --list-keys; a missing --zoo is still required for a run
    assert wsl(["probe", "--zoo", "nowhere", "train.stepz=3"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'stepz'" in err and "wsl probe --list-keys" in err
    assert wsl(["gen", "train", "--zoo", "nowhere", "--out", "nowhere", "hiddn=3"]) == 2
    assert "wsl gen train --list-keys" in capsys.readouterr().err
    # a training key without its train. prefix names the word to write instead
    assert wsl(["gen", "train", "--zoo", "nowhere", "--out", "nowhere", "steps=20"]) == 2
    assert "write train.steps=20" in capsys.readouterr().err
    assert wsl(["gen", "train", "--zoo", "nowhere", "--out", "nowhere", "optimizer.lr=1"]) == 2
    assert "write train.optimizer.lr=1" in capsys.readouterr().err
    assert wsl(["probe"]) == 2
    assert "required: --zoo" in capsys.readouterr().err


def test_zoo_metrics_are_labelled_by_the_examples_they_scored():
    recorded = {"mean": 0.91, "median": 0.92, "num_models": 5, "eval_examples": 2000}
    line = _zoo_metrics_line(recorded, 10000)
    assert "first 2000 test examples only" in line and "mean 0.9100" in line
    assert "full test split as well" in _zoo_metrics_line({**recorded, "eval_examples": 0}, 10000)
    assert "does not know" in _zoo_metrics_line({**recorded, "eval_examples": None}, 10000)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    path = tmp_path_factory.mktemp("help") / "zoo"
    assert wsl(["zoo", "build", "quick", "--out", str(path), "--num-models", "16", "epochs=1",
                "--no-progress"]) == 0
    return path


def test_probe_takes_train_keys_shows_progress_and_announces_a_resume(zoo, tmp_path, capsys):
    out = tmp_path / "probe"
    words = ["probe", "--zoo", str(zoo), "--encoder", "statnn", "--seeds", "1", "--out", str(out),
             "train.batch_size=4", "encoder.head_widths=[8]"]
    assert wsl([*words, "train.steps=3"]) == 0
    captured = capsys.readouterr()
    assert "mesh: 1 device (cpu)" in captured.out or "mesh: data=" in captured.out
    assert "resumed" not in captured.out
    assert "statnn: 100%" in captured.err and "3/3" in captured.err  # the bar, labelled
    report = json.loads((out / "results.json").read_text())
    assert report["config"]["train"]["steps"] == 3
    run = report["runs"][0]
    assert len(run["model"]) == len(run["epoch"]) == len(run["prediction"]) >= 2
    assert all(isinstance(m, int) and 0 <= m < 16 for m in run["model"])
    # The same request with the bare key of old (same config): it resumes, and says so.
    (out / "results.json").unlink()
    assert wsl([*words, "steps=3", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert f"statnn: resumed from step 3 (of 3) in {out / 'statnn-seed0'}" in captured.out
    assert "already finished" in captured.out
    assert "%|" not in captured.err  # --no-progress
    assert json.loads((out / "results.json").read_text())["runs"][0]["model"] == run["model"]


def test_interrupted_generator_resumes_and_says_from_where(zoo, tmp_path, capsys, monkeypatch):
    import wsl.train.generator as generators

    train = generators.train

    def interrupted(*args, **kwargs):
        def stop(step, state):
            if step == 2:
                raise KeyboardInterrupt
        return train(*args, hooks=[stop], **kwargs)

    words = ["gen", "train", "--zoo", str(zoo), "--out", str(tmp_path / "gen"), "--align",
             "none", "hidden=16", "depth=1", "train.steps=4", "train.batch_size=8",
             "train.checkpoint.every=2"]
    monkeypatch.setattr(generators, "train", interrupted)
    assert wsl(words) == 130
    captured = capsys.readouterr()
    assert "mesh: " in captured.out and "resumed" not in captured.out
    assert "flow matching:" in captured.err  # the bar's label
    monkeypatch.undo()
    assert wsl(words) == 0
    out = capsys.readouterr().out
    assert (f"flow matching: resumed from step 2 (of 4) in {tmp_path / 'gen' / 'generator'}"
            in out.splitlines())

    # Sampling reports every accuracy on the full test split, the zoo's own numbers labelled.
    samples = tmp_path / "samples"
    assert wsl(["gen", "sample", str(tmp_path / "gen"), "-n", "4", "--out", str(samples),
                "--sampler", "euler", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "recomputed here for every row, training models included" in out
    assert "the training zoo's metrics.csv records test_acc" in out
    assert "on the full test split as well" in out  # the quick recipe scores whole splits
    evaluation = json.loads((samples / "evaluation.json").read_text())
    source = evaluation["accuracy_source"]
    assert source["split"] == "test" and source["recomputed"] is True
    assert source["examples"] > 0 and f"({source['examples']} examples)" in out
    recorded = source["training_zoo_metrics"]
    assert recorded["eval_examples"] == 0 and recorded["num_models"] == evaluation["num_train"]
    # Same models, same split, same definition: the zoo's record and the table agree.
    assert recorded["mean"] == pytest.approx(evaluation["train_acc"]["mean"], abs=2e-3)
