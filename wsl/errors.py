"""The library's one error base class, so that commands can tell a user's mistake from a bug.

Every error the library raises about its input (a malformed zoo, an unknown option, a wrong shape,
a truncated file) derives from `WslError`. The `wsl` command prints such an error as one line and
exits with its `exit_code`: 2 for a usage error (the command line itself is wrong), 1 for a runtime
error (a file, a zoo or a run that cannot be used as asked). Anything else is a bug and keeps its
traceback. Subclasses also derive from the matching builtin (`ValueError`, ...) so that code
written against the builtins keeps working.
"""

from __future__ import annotations


class WslError(Exception):
    """Base of every error wsl raises about its input; printed without a traceback by `wsl`."""

    exit_code = 1


class UsageError(WslError, ValueError):
    """The command line or a config is wrong: an unknown option, key or value (exit code 2)."""

    exit_code = 2
