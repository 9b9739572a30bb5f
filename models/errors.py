"""Errors of `wsl.models`: an encoder or generator asked for something its weight space or config
cannot give (all are `WslError`s)."""

from __future__ import annotations

from wsl.errors import WslError


class ModelError(WslError, ValueError):
    """An encoder or generator config, or an input, that does not fit the model."""


class ModelTypeError(ModelError, TypeError):
    """A value of the wrong kind for a model: a traced array where a concrete one is needed,
    strings where numbers are (also a `TypeError`, for code written against the builtin)."""


class ModelKeyError(ModelError, KeyError):
    """A named entry a model needs (a batch field, a target) that is not there (also a
    `KeyError`, for code written against the builtin)."""

    __str__ = Exception.__str__  # KeyError's own would print the message in quotes
