"""Errors of `wsl.models`: an encoder or generator asked for something its weight space or config
cannot give (all are `WslError`s)."""

from __future__ import annotations

from wsl.errors import WslError


class ModelError(WslError, ValueError):
    """An encoder or generator config, or an input, that does not fit the model."""
