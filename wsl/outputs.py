"""Is this output path safe to write? One check used by every command before it writes anything.

A command that writes must never destroy what a user already has: a file where a directory is
expected, a folder it cannot write, another zoo's files, or an earlier result. Each command calls
`check_output_dir` or `check_output_file` *before* its first write, so a refusal leaves every
existing file byte-identical.

A zoo directory is recognised by its ``manifest.json`` holding ``schema_version`` and
``weight_space`` (see `wsl.zoos.store`); the check reads only that file, so it needs no zoo code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from wsl.errors import WslError

ZOO_MANIFEST = "manifest.json"


class OutputError(WslError, ValueError):
    """An output path that cannot be written without losing or corrupting something."""


def is_zoo_dir(path: str | os.PathLike) -> bool:
    """True if `path` holds a wsl zoo (finished or being built)."""
    manifest = Path(path) / ZOO_MANIFEST
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "schema_version" in data and "weight_space" in data


def enclosing_zoo(path: str | os.PathLike) -> Path | None:
    """The zoo directory that is `path` or contains it, if any."""
    path = Path(path).absolute()
    for candidate in (path, *path.parents):
        if is_zoo_dir(candidate):
            return candidate
    return None


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def _check_writable(path: Path, option: str) -> None:
    existing = _nearest_existing(path.absolute())
    if not existing.is_dir():
        raise OutputError(f"{option} {path}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {path}: the folder {existing} is not writable")


def check_output_dir(path: str | os.PathLike, *, option: str = "--out",
                     allow_zoo: bool = False) -> Path:
    """Refuse an output directory that is a file, unwritable, or inside a zoo.

    `allow_zoo=True` (for `wsl zoo build` resuming, or writing a new zoo) accepts `path` being a
    zoo itself but never a folder *inside* another zoo. Returns `path` as a `Path`.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{option} {path} is a file, not a directory")
    zoo = enclosing_zoo(path)
    if zoo is not None and not (allow_zoo and zoo == path.absolute()):
        where = "is the zoo" if zoo == path.absolute() else f"is inside the zoo {zoo}"
        raise OutputError(f"{option} {path} {where}; write this output to another folder")
    _check_writable(path, option)
    return path


def check_output_file(path: str | os.PathLike, *, option: str = "--out",
                      force: bool = False) -> Path:
    """Refuse an output file that exists (unless `force`), is a directory, or lies in a zoo.

    The file's folder must exist already: creating folders from a typo is a surprise.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{option} {path} is a directory; give a file name")
    if path.exists() and not force:
        raise OutputError(f"{option} {path} already exists; pass --force to overwrite it")
    parent = path.absolute().parent
    if not parent.is_dir():
        problem = (f"{parent} is a file, not a folder" if parent.exists()
                   else f"the folder {parent} does not exist")
        raise OutputError(f"{option} {path}: {problem}")
    zoo = enclosing_zoo(parent)
    if zoo is not None:
        raise OutputError(f"{option} {path} is inside the zoo {zoo}; write it to another folder")
    _check_writable(parent, option)
    return path
