"""Errors of `wsl.eval` (all are `WslError`s)."""

from __future__ import annotations

from wsl.errors import WslError


class EvaluationError(WslError, ValueError):
    """Networks, data or options that an evaluation (LMC, merging, generated networks) cannot
    use."""
