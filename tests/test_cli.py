"""The `wsl` entry point: help, unknown commands, the listing."""

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
