"""The `wsl` command line: one dispatcher, one error handler, thin `main(argv)` per command.

Each command module parses its arguments and calls the library; it never prints errors itself.
A library error (`wsl.errors.WslError`) or an unreadable file reaches `main` here, which prints
one line ``wsl COMMAND: error: ...`` and exits 2 for usage errors (a missing command too), 1 for
runtime errors, 130 for Ctrl-C. With ``--debug`` (or ``WSL_DEBUG=1``) the traceback is shown
instead. Modules are imported only when their command runs, so `wsl --help` stays fast.

Every command's parser comes from `wsl.commands._help` (`HelpFormatter`: option help with
``(default: X)`` wherever a default means something; ``--list-keys`` tables of config keys).
"""

from __future__ import annotations

import importlib
import os
import select
import sys
import warnings

from wsl.commands._help import HelpFormatter, parser, subparser  # noqa: F401  (for every command)
from wsl.errors import WslError

# name -> (module with main(argv), one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("wsl.commands.demo",
             "the whole pipeline on the quick zoo: build, probe, align, generate, evaluate"),
    "list": ("wsl.commands.listing",
             "list architectures (with parameter counts) and datasets (with sizes)"),
    "zoo": ("wsl.commands.zoo", "build, inspect, import and export model zoos"),
    "probe": ("wsl.commands.probe",
              "train an encoder to predict a zoo column from weights (Kendall τ, R²)"),
    "gen": ("wsl.commands.gen",
            "train weight generators on a zoo, sample and evaluate new networks"),
    "transfer": ("wsl.commands.transfer",
                 "sample networks for a new task from a task-conditioned generator and "
                 "fine-tune them against other inits"),
    "merge": ("wsl.commands.merge",
              "align networks of a zoo and merge them (uniform, greedy soup, Fisher)"),
    "launch": ("wsl.commands.launch",
               "run a command as N local processes of one multi-process JAX run"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: wsl [--debug] COMMAND [options]   (wsl COMMAND --help for its options)", "",
             "commands:"]
    lines += [f"  {name.ljust(width)}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "wsl probe --list-keys and wsl gen train --list-keys print the key=value keys "
                  "they take", "--debug (or WSL_DEBUG=1) shows the traceback of an error"]
    return "\n".join(lines)


def fail(prog: str, message: str, code: int) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return code


def _one_line_warning(prog: str):
    def format_warning(message, category, filename, lineno, line=None):
        return f"{prog}: warning: {message}\n"
    return format_warning


def run(prog: str, main, argv: list[str], debug: bool = False) -> int:
    """Run a command's `main(argv)`; user errors become one line and an exit code, and so do
    warnings (``wsl zoo: warning: ...``) unless `debug`."""
    previous = warnings.formatwarning
    if not debug:
        warnings.formatwarning = _one_line_warning(prog)
    try:
        return _run(prog, main, argv, debug)
    finally:
        warnings.formatwarning = previous


def _stdout_closed() -> bool:
    """Has the reader of standard output gone away? (Not a broken socket or a child's pipe.)"""
    try:
        fd = sys.stdout.fileno()
    except (ValueError, OSError):  # not a file (captured output): it cannot have a reader
        return False
    if not hasattr(select, "poll"):
        return False
    poll = select.poll()
    poll.register(fd, select.POLLOUT)
    # A pipe whose read end is closed reports an error condition to its writer.
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poll.poll(0))


def _run(prog: str, main, argv: list[str], debug: bool) -> int:
    try:
        return int(main(argv) or 0)
    except SystemExit as err:  # argparse: --help (0) or a usage error it already printed (2)
        return err.code if isinstance(err.code, int) else fail(prog, str(err.code), 2)
    except (WslError, OSError) as err:
        if debug:
            raise
        if isinstance(err, BrokenPipeError) and _stdout_closed():
            # The reader of the output went away (`wsl zoo info Z | head`): stop without a word,
            # as a pipeline expects (128 + SIGPIPE). Python flushes stdout once more on exit, so
            # it points at the null device first.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141
        message = str(err) or type(err).__name__
        if isinstance(err, OSError) and not isinstance(err, WslError) and err.filename:
            message = f"{err.filename}: {err.strerror or message}"
        return fail(prog, message, getattr(err, "exit_code", 1))
    except KeyboardInterrupt as err:
        if debug:
            raise
        detail = f" ({err})" if str(err) else ""
        print(f"\n{prog}: interrupted{detail}; run the same command again to resume",
              file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = os.environ.get("WSL_DEBUG", "") not in ("", "0")
    while argv and argv[0] == "--debug":
        debug, argv = True, argv[1:]
    if argv and argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if not argv:  # a missing command is a usage error, as a missing subcommand is
        print(usage(), file=sys.stderr)
        return fail("wsl", "missing command", 2)
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        return fail("wsl", f"unknown command {name!r}\n\n{usage()}", 2)
    module = importlib.import_module(COMMANDS[name][0])
    command = module.main if name == "launch" else _joining_processes(module.main)
    return run(f"wsl {name}", command, rest, debug)


def _joining_processes(command_main):
    """`command_main`, first joining the multi-process run the environment describes (if any)."""
    def joined(argv):
        from wsl.distributed import initialize

        initialize()
        return command_main(argv)
    return joined


if __name__ == "__main__":
    sys.exit(main())
