"""Running the `wsl` command in-process, as the tests of its messages need it."""

import contextlib
import io

from wsl.commands import main as wsl


def run_wsl(argv) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of `wsl argv` (arguments may be paths or numbers)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = wsl([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()
