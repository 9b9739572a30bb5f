"""Errors of `wsl.zoos`: every one names the file, field or value at fault (all are `WslError`s)."""

from __future__ import annotations

from wsl.errors import UsageError, WslError


class ZooError(WslError, ValueError):
    """A zoo directory or file that is missing, malformed, damaged or cannot be used as asked."""


class PopulationError(WslError, ValueError):
    """Hyperparameters or settings a population cannot be trained with."""


class RecipeError(UsageError):
    """An unknown recipe or a recipe field with a value it cannot take."""


class DatasetError(WslError, ValueError):
    """An unknown dataset, bad dataset options, or data files that cannot be read."""


class ArchitectureError(UsageError):
    """An unknown architecture, activation or architecture config key."""


class ModelFileError(WslError, ValueError):
    """A single-model file (safetensors, npz, msgpack, torch) that cannot be read or written."""


class MissingPathError(ZooError, FileNotFoundError):
    """A folder or file a user named (an import source, a part of a published zoo) that does not
    exist; still a `FileNotFoundError` for code that catches that."""


class TensorNameError(ModelFileError, KeyError):
    """A state dict without a tensor the weight space needs; still a `KeyError` for code that
    catches that, but printed as its plain message."""

    __str__ = BaseException.__str__
