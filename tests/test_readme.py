"""Every README snippet runs as written, in order, in a fresh folder (shell at smoke sizes).

Python blocks run each in a fresh namespace, so each must be self-contained, but in one folder and
in README order, as a reader following it would (a later block may open the zoo an earlier one
built). Shell blocks run through `wsl.commands.main` in-process. The install lines are left out:
the suite already runs inside the installed package, `.ci/run` runs exactly those commands, and
tests/test_demo.py runs the `wsl demo` of the first one.
Sizes that take minutes are swapped for smoke sizes by `SMOKE`; every swap must find its text, so
an edit of the README cannot silently skip one.
"""

import re
import shlex
from pathlib import Path

import pytest

from wsl.commands import main as wsl

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"^```(python|bash)\n(.*?)^```$", re.S | re.M)

# (text in the README, its smoke-size replacement)
SMOKE = [
    ('["steps=2000", "batch_size=16"', '["steps=20", "batch_size=16"'),
    ("num_models=256 epochs=3", "num_models=6 epochs=3"),
    ("condition_scalar=val_acc\n", "condition_scalar=val_acc hidden=32 depth=1 train.steps=20 "
     "ae_steps=20 ae_hidden=32 latent_dim=8 train.log.progress=false\n"),
    ("gen sample gen -n 100", "gen sample gen -n 4"),
    ("gen calibrate gen -n 20", "gen calibrate gen -n 2"),
    ("gen eval samples --generator gen ",
     "gen eval samples --generator gen --calibration-samples 4 "),
    ("build small-cnn --out runs/small-cnn", "build quick --out runs/small-cnn num_models=16 "
     "epochs=1 models_per_shard=8 --no-progress"),
    ("build mnist-tasks --out tasks-zoo ", "build mnist-tasks --out tasks-zoo num_models=8 "
     "epochs=1 checkpoints=[0,1] models_per_shard=8 --no-progress "),
    ("condition_task=true\n", "condition_task=true hidden=32 depth=1 train.steps=20 "
     "train.log.progress=false\n"),
    ("--samples 10 --epochs 25", "--samples 2 --epochs 1 --no-progress"),
    ("--zoo runs/small-cnn --encoder nfn_hnp\n", "--zoo runs/small-cnn --encoder statnn "
     "train.steps=10 train.batch_size=8 --no-progress\n"),
]


def _blocks() -> list[tuple[str, str]]:
    text = README.read_text(encoding="utf-8")
    for old, new in SMOKE:
        assert old in text, f"README no longer contains {old!r}: update SMOKE in {__file__}"
        text = text.replace(old, new)
    return BLOCK.findall(text)


def _shell_commands(code: str) -> list[list[str]]:
    commands = []
    for line in code.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words and "pip install" not in line:
            commands.append(words)
    return commands


def test_readme_has_python_and_shell_snippets():
    kinds = [kind for kind, _ in _blocks()]
    assert kinds.count("python") >= 4 and kinds.count("bash") >= 3, kinds


def test_every_readme_snippet_runs_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for number, (kind, code) in enumerate(_blocks()):
        where = f"README block {number} ({kind})"
        if kind == "python":
            exec(compile(code, where, "exec"), {"__name__": "__readme__"})
            continue
        for words in _shell_commands(code):
            assert words[0] == "wsl", f"{where}: only wsl commands run here, got {words}"
            assert wsl(words[1:]) == 0, f"{where}: {shlex.join(words)} failed"


@pytest.mark.parametrize("line, expected", [
    ("wsl zoo info z   # a comment", [["wsl", "zoo", "info", "z"]]),
    ('wsl zoo build q \\\n    "lr=[1,2]"', [["wsl", "zoo", "build", "q", "lr=[1,2]"]]),
    ("python3 -m venv .venv && pip install -e .", []),
])
def test_shell_lines_are_split_as_a_shell_would(line, expected):
    assert _shell_commands(line) == expected


def test_readme_tables_are_printed_from_committed_result_files():
    import sys

    root = README.parent
    sys.path.insert(0, str(root))
    try:
        from benchmarks._report import KINDS, README_TABLE
    finally:
        sys.path.remove(str(root))
    tables = re.findall(README_TABLE, README.read_text(encoding="utf-8"), flags=re.S | re.M)
    assert tables, "README has no marked tables"
    for kind, pattern, body in tables:
        files = sorted(str(p) for p in root.glob(pattern))
        assert files, f"README's {kind} table names {pattern}, which matches no result file"
        expected = KINDS[kind](files)
        assert body.strip() == expected, (
            f"README's {kind} table differs from `python benchmarks/_report.py {kind} "
            f"{pattern}`; `python benchmarks/_report.py readme` reprints it:\n{expected}")


def test_readme_tables_are_printed_from_the_committed_results():
    """Every table README marks (``<!-- table: KIND GLOB -->``) is what `benchmarks/_report.py`
    prints from the result files: no number in them is typed by hand or left stale."""
    from benchmarks._report import reprint_tables

    text = README.read_text(encoding="utf-8")
    reprinted, count = reprint_tables(text, README.parent)
    assert count >= 7
    assert reprinted == text, "README tables differ from benchmarks/results: run " \
                              "python benchmarks/_report.py readme"
