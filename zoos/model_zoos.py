"""Read Model Zoos (Schürholt et al. 2022) Ray Tune trial folders: every epoch of every model a row.

One trial folder per model::

    <trial>/params.json                      hyperparameters, keys like "model::nlin", "optim::lr"
    <trial>/result.json                      JSON lines, one per epoch (train/val/test loss and acc,
                                             training_iteration)
    <trial>/checkpoint_000NNN/checkpoints    a PyTorch state dict after epoch NNN, keys
                                             module_list.{i}.weight|bias (OIHW / out×in)

Checkpoints are read with `wsl.zoos.torch_pickle` (no torch import, no arbitrary code). The state
dict's layers, in module-list order, map onto the chosen architecture's layers in order — CNN-s by
default, or any architecture of ours for phase-transition zoos built the same way.
Every file is untrusted: errors name the file (and line or key) at fault, weights must be floating
point, and a row whose weights or recorded losses are not finite is flagged ``diverged``.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from wsl.zoos.architectures import Architecture, build
from wsl.zoos.errors import MissingPathError, ZooError
from wsl.zoos.torch_layout import from_torch_state, to_torch_state
from wsl.zoos.torch_pickle import load_torch_checkpoint

# params.json keys → wsl hyperparameter columns.
PARAM_MAP = {
    "model::nlin": "activation", "model::init_type": "init", "model::dropout": "dropout",
    "optim::lr": "lr", "optim::wd": "weight_decay", "optim::optimizer": "optimizer",
    "seed": "seed", "training::batchsize": "batch_size",
}
_RESULT_MAP = {"train_loss": "train_loss", "train_acc": "train_acc", "val_loss": "val_loss",
               "val_acc": "val_acc", "test_loss": "test_loss", "test_acc": "test_acc"}
_CHECKPOINT = re.compile(r"checkpoint_(\d+)$")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MissingPathError(f"{path}: missing "
                               "(every Model Zoos trial folder has one)") from None
    except UnicodeDecodeError as err:
        raise ZooError(f"{path}: not UTF-8 text ({err})") from err


def _read_json(path: Path) -> Any:
    text = _read_text(path)
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        raise ZooError(f"{path}: not valid JSON ({err})") from err


def _number(value: Any, path: Path, number: int, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        value = None
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        raise ZooError(f"{path}: line {number}: {key} is {value!r}, not a number") from None


def read_results(path: Path) -> dict[int, dict[str, float]]:
    """result.json's JSON lines keyed by epoch (training_iteration)."""
    out = {}
    for number, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as err:
            raise ZooError(f"{path}: line {number} is not valid JSON ({err})") from err
        if not isinstance(record, dict) or "training_iteration" not in record:
            raise ZooError(f"{path}: line {number} is not a result record (a JSON object with "
                           "training_iteration)")
        epoch = _number(record["training_iteration"], path, number, "training_iteration")
        if not (math.isfinite(epoch) and epoch.is_integer() and epoch >= 0):
            raise ZooError(f"{path}: line {number}: training_iteration is "
                           f"{record['training_iteration']!r}, not an epoch number")
        out[int(epoch)] = {ours: _number(record[theirs], path, number, theirs)
                           for theirs, ours in _RESULT_MAP.items()
                           if theirs in record and record[theirs] is not None}
    return out


def _layer_key(name: str) -> tuple[int, int]:
    match = re.fullmatch(r"module_list\.(\d+)\.(weight|bias)", str(name))
    if not match:
        raise ZooError(f"unexpected state-dict key {name!r} (expected module_list.<i>.weight|bias)")
    return int(match.group(1)), 0 if match.group(2) == "weight" else 1


def _sorted_keys(state: dict, source: str) -> list[str]:
    try:
        return sorted(state, key=_layer_key)
    except ZooError as err:
        raise ZooError(f"{source}: {err}") from None


def _float_tensor(value: Any, key: str, source: str) -> np.ndarray:
    """A state-dict entry as float32; anything but a floating-point array is refused."""
    array = np.asarray(value) if isinstance(value, np.ndarray) else None
    if array is None or not np.issubdtype(array.dtype, np.floating):
        what = array.dtype if array is not None else type(value).__name__
        raise ZooError(f"{source}: tensor {key} holds {what}; weights must be floating point")
    return array.astype(np.float32, copy=False)


def state_to_params(state: dict[str, np.ndarray], arch: Architecture, source: str):
    """Map module_list.* tensors, in module order, onto the architecture's tensors in order."""
    ours = list(to_torch_state(arch.weight_space, arch.weight_space.zeros()).items())
    theirs = _sorted_keys(state, source)
    if len(theirs) != len(ours):
        raise ZooError(f"{source}: {len(theirs)} tensors in the state dict, "
                         f"{arch.name} has {len(ours)}")
    renamed = {}
    for key, (name, template) in zip(theirs, ours):
        value = _float_tensor(state[key], key, source)
        if value.shape != template.shape:
            raise ZooError(f"{source}: {key} has shape {value.shape}; {arch.name}'s {name} "
                             f"expects {template.shape}")
        renamed[name] = value
    return from_torch_state(arch.weight_space, renamed)


def infer_cnn_s(state: dict[str, np.ndarray], source: str) -> Architecture:
    """CNN-s for the state dict's input channels and image size (28×28×1 or 32×32×3 zoos)."""
    keys = _sorted_keys(state, source)
    found = [np.shape(state[k]) for k in keys]
    if keys and len(found[0]) == 4 and 0 < found[0][1] <= 4:
        for side in (28, 32):
            arch = build("cnn_s", input_shape=(side, side, int(found[0][1])))
            shapes = [v.shape for v in
                      to_torch_state(arch.weight_space, arch.weight_space.zeros()).values()]
            if shapes == found:
                return arch
    raise ZooError(f"{source}: the state dict does not match CNN-s on 28×28 or 32×32 inputs")


def trial_folders(directory: str | os.PathLike) -> list[Path]:
    root = Path(directory)
    if not root.exists():
        raise MissingPathError(f"{root}: the Model Zoos source directory does not exist")
    if not root.is_dir():
        raise ZooError(f"{root}: not a directory (Model Zoos come as a folder of trial folders)")
    trials = sorted(p for p in root.iterdir() if p.is_dir() and (p / "params.json").exists())
    if not trials:
        raise ZooError(f"{root}: no trial folders (subfolders with params.json) found")
    return trials


def read_trial(folder: Path, arch: Architecture | None = None):
    """(architecture, list of (epoch, params, row)) for one trial folder, epochs ascending."""
    params_json = _read_json(folder / "params.json")
    if not isinstance(params_json, dict):
        raise ZooError(f"{folder / 'params.json'}: expected a JSON object")
    results = read_results(folder / "result.json")
    hyper = {ours: params_json[theirs] for theirs, ours in PARAM_MAP.items()
             if theirs in params_json}
    for theirs, ours in PARAM_MAP.items():
        if ours in hyper and not isinstance(hyper[ours], (str, int, float, bool, type(None))):
            raise ZooError(f"{folder / 'params.json'}: {theirs} is {hyper[ours]!r}; expected a "
                           "number or a string")
    checkpoints = sorted((int(m.group(1)), p) for p in folder.iterdir()
                         if (m := _CHECKPOINT.match(p.name)) and p.is_dir())
    if not checkpoints:
        raise ZooError(f"{folder}: no checkpoint_* folders")
    out = []
    for epoch, path in checkpoints:
        file = path / "checkpoints"
        if not file.is_file():
            raise MissingPathError(f"{file}: missing state dict")
        state = load_torch_checkpoint(file)
        if not isinstance(state, dict):
            raise ZooError(f"{file}: expected a state dict, got {type(state).__name__}")
        # some zoos wrap it with optimizer state
        if isinstance(state.get("model_state_dict"), dict):
            state = state["model_state_dict"]
        arch = arch or infer_cnn_s(state, str(file))
        params = state_to_params(state, arch, str(file))
        metrics = results.get(epoch, {})
        row = {"epoch": epoch, "trial": folder.name, **hyper,
               **{k: metrics.get(k, math.nan) for k in _RESULT_MAP.values()}}
        row["gap"] = row["train_acc"] - row["test_acc"]
        # A recorded non-finite loss, or any non-finite weight (a missing result line is no
        # evidence either way).
        recorded = [metrics[k] for k in ("train_loss", "val_loss", "test_loss") if k in metrics]
        row["diverged"] = bool(not all(math.isfinite(v) for v in recorded) or not all(
            np.isfinite(v).all() for v in arch.weight_space.as_flat_dict(params).values()))
        out.append((epoch, params, row))
    return arch, out
