"""The training config: one frozen dataclass tree that every run saves beside its outputs.

`TrainConfig` follows the project's config style (`wsl.config`): override it from the command line
with ``key=value`` (``optimizer.lr=3e-4 mesh.fsdp=2``), save and load it as JSON. Values that cannot
work (a negative step count, patience without a metric) are refused when the config is built, with
the field named.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeVar

from wsl.config import ConfigError, load, override

C = TypeVar("C")


def _require(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{field}: {message}")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """Optimizer, learning-rate schedule and gradient clipping (all from optax)."""

    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4  # adamw only (decoupled)
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    momentum: float = 0.9  # sgd only
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = 0  # linear warmup from 0 to lr
    final_lr_fraction: float = 0.0  # cosine ends at lr * final_lr_fraction
    clip_norm: float | None = 1.0  # global gradient-norm clipping; None turns it off

    def __post_init__(self):
        _require(self.lr > 0, "optimizer.lr", f"must be positive, got {self.lr}")
        _require(self.warmup_steps >= 0, "optimizer.warmup_steps",
                 f"must be ≥ 0, got {self.warmup_steps}")
        _require(0.0 <= self.final_lr_fraction <= 1.0, "optimizer.final_lr_fraction",
                 f"must lie in [0, 1], got {self.final_lr_fraction}")
        _require(self.clip_norm is None or self.clip_norm > 0, "optimizer.clip_norm",
                 f"must be positive or none, got {self.clip_norm}")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh: a ``data`` axis (batch) and an ``fsdp`` axis (batch and large parameters)."""

    data: int = -1  # devices on the data axis; -1: every device the fsdp axis leaves
    fsdp: int = 1  # devices that split each large parameter
    fsdp_min_size: int = 1 << 18  # parameters with fewer elements stay replicated

    def __post_init__(self):
        _require(self.data == -1 or self.data >= 1, "mesh.data",
                 f"must be -1 (all devices) or ≥ 1, got {self.data}")
        _require(self.fsdp >= 1, "mesh.fsdp", f"must be ≥ 1, got {self.fsdp}")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """orbax checkpoints under ``run_dir/checkpoints``: periodic, latest n + best, resumable."""

    every: int = 1000  # save every k steps (and at every evaluation and at the end); 0: only those
    keep: int = 3  # latest checkpoints kept, besides the best one
    async_save: bool = True
    resume: bool = True  # continue from run_dir's latest checkpoint; false: refuse to touch it

    def __post_init__(self):
        _require(self.every >= 0, "checkpoint.every", f"must be ≥ 0, got {self.every}")
        _require(self.keep >= 1, "checkpoint.keep", f"must be ≥ 1, got {self.keep}")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """When the task's `evaluate` runs, which metric picks the best checkpoint, early stopping."""

    every: int = 0  # evaluate every k steps; 0: only at the end
    metric: str | None = None  # a key of the dict `evaluate` returns, e.g. "kendall_tau"
    mode: Literal["max", "min"] = "max"
    patience: int = 0  # stop after this many evaluations without improvement; 0: never stop early
    min_delta: float = 0.0  # an improvement must beat the best by more than this
    use_ema: bool = True  # evaluate the EMA parameters when ema_decay > 0

    def __post_init__(self):
        _require(self.every >= 0, "eval.every", f"must be ≥ 0, got {self.every}")
        _require(self.patience >= 0, "eval.patience", f"must be ≥ 0, got {self.patience}")
        _require(self.patience == 0 or self.metric is not None, "eval.patience",
                 "early stopping needs eval.metric to name the metric to watch")
        _require(self.min_delta >= 0, "eval.min_delta", f"must be ≥ 0, got {self.min_delta}")


@dataclasses.dataclass(frozen=True)
class LogConfig:
    """JSON-lines metrics (and TensorBoard when installed) in the run directory; a progress bar."""

    every: int = 50  # fetch and write training metrics every k steps (the only device sync)
    progress: bool = True
    # Only if tensorboardX or torch's SummaryWriter is installed: pip install "wsl[tensorboard]"
    tensorboard: bool = True

    def __post_init__(self):
        _require(self.every >= 1, "log.every", f"must be ≥ 1, got {self.every}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The input pipeline: shuffling and prefetching."""

    shuffle: bool = True  # a fresh order every epoch, from (seed, epoch)
    prefetch: int = 2  # batches prepared ahead on a background thread; 0: none

    def __post_init__(self):
        _require(self.prefetch >= 0, "data.prefetch", f"must be ≥ 0, got {self.prefetch}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything the trainer owns; the task's own config lives beside it."""

    seed: int = 0
    steps: int = 1000
    batch_size: int = 64
    # Rows per gradient micro-batch (accumulated over the batch, `step.micro_batched`): less
    # memory, and on CPU often faster for wide encoders; 0: the whole batch at once.
    microbatch: int = 0
    ema_decay: float = 0.0  # exponential moving average of parameters; 0: off
    optimizer: OptimizerConfig = OptimizerConfig()
    mesh: MeshConfig = MeshConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    eval: EvalConfig = EvalConfig()
    log: LogConfig = LogConfig()
    data: DataConfig = DataConfig()

    def __post_init__(self):
        _require(0 <= self.seed < 2**32, "seed", f"must lie in [0, 2**32), got {self.seed}")
        _require(self.steps >= 1, "steps", f"must be ≥ 1, got {self.steps}")
        _require(self.batch_size >= 1, "batch_size", f"must be ≥ 1, got {self.batch_size}")
        _require(self.microbatch >= 0, "microbatch", f"must be ≥ 0, got {self.microbatch}")
        _require(self.microbatch == 0 or self.batch_size % self.microbatch == 0, "microbatch",
                 f"must divide batch_size={self.batch_size}, got {self.microbatch}")
        _require(0.0 <= self.ema_decay < 1.0, "ema_decay",
                 f"must lie in [0, 1), got {self.ema_decay}")


def config_from_argv(default: C, argv: Sequence[str]) -> C:
    """A config from command-line words: ``[--config FILE] key=value ...`` applied over `default`.

    ``--config`` loads a saved ``config.json`` (e.g. from an earlier run) as the base; the
    ``key=value`` words then override it. Works for any config dataclass, `TrainConfig` or one that
    nests it.
    """
    words = list(argv)
    config = default
    if "--config" in words:
        i = words.index("--config")
        if i + 1 >= len(words):
            raise ConfigError("--config needs a file path")
        config = load(type(default), words[i + 1])
        del words[i:i + 2]
    return override(config, words)


def flat_items(data: Mapping, prefix: str = "") -> dict[str, Any]:
    """A nested dict (a config's `to_dict`, a run record) as ``{"a.b.c": value}``."""
    out = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            out.update(flat_items(value, f"{prefix}{key}."))
        else:
            out[prefix + str(key)] = value
    return out
