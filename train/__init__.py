"""wsl.train: one jit-compiled, sharded, resumable training loop, and the pipelines that train.

A task supplies ``init``, ``loss`` and (optionally) ``evaluate`` (see `wsl.train.task`); `train`
does the rest — optimizer and schedule, mesh and shardings, the zoo input pipeline, orbax
checkpoints and resume, logging and early stopping — all driven by one `TrainConfig`.
"""

from wsl.train.augment import AUGMENTATIONS, make_augmentations
from wsl.train.checkpoint import CheckpointError, Checkpoints, load_params
from wsl.train.config import (
                          CheckpointConfig,
                          DataConfig,
                          EvalConfig,
                          LogConfig,
                          MeshConfig,
                          OptimizerConfig,
                          TrainConfig,
                          config_from_argv,
)
from wsl.train.pipeline import (
                          ArraySource,
                          BatchIterator,
                          Pipeline,
                          PipelineError,
                          Position,
                          RowSource,
                          ZooSource,
)
from wsl.train.step import TrainState
from wsl.train.task import Task, TaskError
from wsl.train.trainer import Trainer, TrainError, TrainResult, train

__all__ = [
    "AUGMENTATIONS", "ArraySource", "BatchIterator", "CheckpointConfig", "CheckpointError",
    "Checkpoints", "DataConfig", "EvalConfig", "LogConfig", "MeshConfig", "OptimizerConfig",
    "Pipeline", "PipelineError", "Position", "RowSource", "Task", "TaskError", "TrainConfig",
    "TrainError",
    "TrainResult", "TrainState", "Trainer", "ZooSource", "config_from_argv", "load_params",
    "make_augmentations", "train",
]
