"""Configs: frozen dataclasses everywhere, overridable from the command line as ``key=value``.

One style for the whole project: a config is a frozen dataclass (fields may be nested config
dataclasses). `override(config, ["optimizer.lr=3e-4", "widths=[64,64]"])` returns a new config;
an unknown key is an error that lists the valid ones. `to_dict` / `from_dict` / `save` / `load`
write the JSON that every run keeps beside its outputs.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from wsl.errors import UsageError

C = TypeVar("C")


class ConfigError(UsageError):
    """A config key or value that does not fit the config's fields."""


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls)}


def _is_config(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a parsed value to a field's type where that is unambiguous (lists → tuples, int → float)."""
    origin = typing.get_origin(tp)
    if tp is Any or tp is None:
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{key}: {value!r} fits none of {tp}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: {value!r} is not one of {typing.get_args(tp)}")
        return value
    if origin in (tuple, list) or tp in (tuple, list):
        if not isinstance(value, (list, tuple)):
            value = (value,)
        args = typing.get_args(tp)
        if args and not (len(args) == 2 and args[1] is Ellipsis) and len(args) != len(value):
            raise ConfigError(f"{key}: expected {len(args)} items, got {len(value)}")
        item = args[0] if args else Any
        items = [_coerce(v, args[i] if args and args[-1] is not Ellipsis else item, key)
                 for i, v in enumerate(value)]
        return tuple(items) if (origin or tp) is tuple else list(items)
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if _is_config(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, Mapping):
            return from_dict(tp, value, prefix=f"{key}.")
        raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {value!r}")
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}")
    return value


def parse_value(text: str) -> Any:
    """A CLI value: a Python/JSON literal where it parses as one, else the bare string."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _replace_path(config, path: list[str], value: Any, full_key: str, prefix: str = ""):
    types_ = _field_types(type(config))
    name = path[0]
    if name not in types_:
        raise ConfigError(f"unknown config key {full_key!r}; valid keys: "
                          f"{', '.join(valid_keys(type(config), prefix))}")
    if len(path) == 1:
        return dataclasses.replace(config, **{name: _coerce(value, types_[name], full_key)})
    child = getattr(config, name)
    if not dataclasses.is_dataclass(child):
        raise ConfigError(f"config key {full_key!r}: {name!r} has no sub-keys")
    return dataclasses.replace(
        config, **{name: _replace_path(child, path[1:], value, full_key, f"{prefix}{name}.")})


def valid_keys(cls, prefix: str = "") -> list[str]:
    """Every settable dotted key of a config class."""
    keys = []
    for name, tp in _field_types(cls).items():
        keys.extend(valid_keys(tp, f"{prefix}{name}.") if _is_config(tp) else [prefix + name])
    return keys


def override(config: C, assignments: Iterable[str] | Mapping[str, Any]) -> C:
    """A copy of `config` with ``key=value`` assignments (strings from the CLI) or a mapping applied."""
    items = (assignments.items() if isinstance(assignments, Mapping)
             else (_split(a) for a in assignments))
    for key, value in items:
        config = _replace_path(config, key.split("."), value, key)
    return config


def _split(assignment: str) -> tuple[str, Any]:
    key, sep, text = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {assignment!r} must look like key=value")
    return key.strip(), parse_value(text)


def to_dict(config) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def from_dict(cls: type[C], data: Mapping[str, Any], prefix: str = "") -> C:
    """Build a config from a mapping; unknown keys are an error naming the valid ones."""
    types_ = _field_types(cls)
    unknown = sorted(set(data) - set(types_))
    if unknown:
        raise ConfigError(f"unknown config keys {[prefix + k for k in unknown]}; valid keys: "
                          f"{', '.join(valid_keys(cls, prefix))}")
    return cls(**{k: _coerce(v, types_[k], prefix + k) for k, v in data.items()})


def save(config, path: str | Path) -> None:
    Path(path).write_text(json.dumps(to_dict(config), indent=2) + "\n")


def load(cls: type[C], path: str | Path) -> C:
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from err
    return from_dict(cls, data)
