"""The best evaluation so far and when to stop: a small record that checkpoints carry on resume."""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass
class EarlyStopping:
    """Tracks one metric (higher is better in mode "max"); stops after `patience` flat evals."""

    mode: str = "max"
    patience: int = 0  # 0: never stop
    min_delta: float = 0.0
    best_value: float | None = None
    best_step: int | None = None
    evals_since_best: int = 0

    def improves(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best_value is None:
            return True
        gain = value - self.best_value if self.mode == "max" else self.best_value - value
        return gain > self.min_delta

    def update(self, step: int, value: float) -> bool:
        """Record an evaluation; True when it is the new best."""
        if self.improves(value):
            self.best_value, self.best_step, self.evals_since_best = float(value), int(step), 0
            return True
        self.evals_since_best += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.evals_since_best >= self.patience

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> EarlyStopping:
        return cls(**data)
