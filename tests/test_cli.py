"""The `wsl` entry point: help, unknown commands, the listing."""

import pytest

from wsl.commands import main


def test_help_and_unknown_command(capsys):
    assert main(["--help"]) == 0
    assert "list" in capsys.readouterr().out
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_list_shows_reference_parameter_counts(capsys):
    assert main(["list", "architectures"]) == 0
    out = capsys.readouterr().out
    assert "small_cnn      4,970 params" in out
    assert "cnn_s          2,464 params" in out


def test_user_errors_are_one_line_with_exit_codes(tmp_path, capsys, monkeypatch):
    # Runtime error (a zoo that is not there): one line on stderr, exit 1, no traceback.
    assert main(["zoo", "info", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("wsl zoo: error:") and "no such zoo directory" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    # Usage error (a config key that does not exist): exit 2.
    assert main(["zoo", "build", "quick", "--out", str(tmp_path / "z"), "epochz=2"]) == 2
    assert "unknown config key 'epochz'" in capsys.readouterr().err
    # --debug and WSL_DEBUG=1 let the error through with its traceback.
    from wsl.errors import WslError

    with pytest.raises(WslError, match="no such zoo directory"):
        main(["--debug", "zoo", "info", str(tmp_path / "missing")])
    monkeypatch.setenv("WSL_DEBUG", "1")
    with pytest.raises(WslError):
        main(["zoo", "info", str(tmp_path / "missing")])


def test_every_library_error_is_a_wsl_error():
    """Each error class the packages define derives from the one base the commands catch."""
    import importlib
    import inspect
    import pkgutil

    import wsl
    from wsl.errors import WslError

    classes = []
    for info in pkgutil.walk_packages(wsl.__path__, "wsl."):
        if info.name.startswith("wsl.commands"):
            continue
        module = importlib.import_module(info.name)
        classes += [c for _, c in inspect.getmembers(module, inspect.isclass)
                    if c.__module__ == module.__name__ and issubclass(c, Exception)]
    for package in ("wsl.zoos", "wsl.models", "wsl.train", "wsl.eval"):
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, package + "."):
            module = importlib.import_module(info.name)
            classes += [c for _, c in inspect.getmembers(module, inspect.isclass)
                        if c.__module__ == module.__name__ and issubclass(c, Exception)]
    assert len(classes) >= 10
    assert [c.__name__ for c in classes if not issubclass(c, WslError)] == []


def test_key_value_words_may_follow_options(capsys):
    import argparse

    from wsl.commands._help import parse_with_overrides

    parser = argparse.ArgumentParser(prog="wsl x")
    parser.add_argument("--flag", action="store_true")
    parser.add_argument("overrides", nargs="*")
    args = parse_with_overrides(parser, ["a=1", "--flag", "b=2"])
    assert args.flag and args.overrides == ["a=1", "b=2"]
    for bad in (["a=1", "--flag", "--nope"], ["--flag", "a=1", "--nope", "b=2"],
                ["a=1", "--flag", "word"]):
        with pytest.raises(SystemExit) as stop:
            parse_with_overrides(parser, bad)
        assert stop.value.code == 2
        assert "unrecognized arguments" in capsys.readouterr().err
    # A command without key=value words refuses them wherever they stand.
    plain = argparse.ArgumentParser(prog="wsl y")
    plain.add_argument("--flag", action="store_true")
    with pytest.raises(SystemExit):
        parse_with_overrides(plain, ["--flag", "a=1"])


def test_a_reader_that_stops_early_ends_the_command_quietly(tmp_path):
    import subprocess
    import sys

    # A command whose output outlives its reader (`wsl zoo info Z | head`): no error line, the
    # pipeline's usual status; a broken pipe that is not standard output stays an error.
    script = tmp_path / "chatty.py"
    script.write_text(
        "import os, sys\n"
        "from wsl.commands import run\n"
        "def chatty(argv):\n"
        "    for i in range(200_000):\n"
        "        print('line', i)\n"
        "def other_pipe(argv):\n"
        "    raise BrokenPipeError(32, 'Broken pipe')\n"
        "sys.exit(run('wsl x', chatty if sys.argv[1] == 'chatty' else other_pipe, []))\n")
    for which, code, stderr in (("chatty", 141, ""), ("other", 1, "wsl x: error: ")):
        out = subprocess.run(f"{sys.executable} {script} {which} | head -1; "
                             f"exit ${{PIPESTATUS[0]}}", shell=True, executable="/bin/bash",
                             capture_output=True, text=True, timeout=60)
        assert out.stdout == ("line 0\n" if which == "chatty" else "")
        assert out.returncode == code and out.stderr.startswith(stderr), out
