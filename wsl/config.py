"""Configs: frozen dataclasses everywhere, overridable from the command line as ``key=value``.

One style for the whole project: a config is a frozen dataclass (fields may be nested config
dataclasses) that validates itself in ``__post_init__``. `override(config, ["optimizer.lr=3e-4",
"widths=[64,64]"])` returns a new config; an unknown key is an error that lists the valid ones.
A tuple field also takes a bare comma-separated list (``activation=relu,tanh``). `to_dict` /
`from_dict` / `save` / `load` write the JSON that every run keeps beside its outputs.

Specs and configs are hashable, so that they can be static arguments of `jax.jit`: mapping
fields hold a `FrozenMap`, sequences are tuples (`freeze`).

`builder_config` is how a registry (architectures, encoders) checks the keyword config of one of
its builders: defaults from the builder's signature, unknown keys listed.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import json
import math
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from wsl.errors import UsageError, WslError

C = TypeVar("C")


class ConfigError(UsageError):
    """A config key or value that does not fit the config's fields."""


class FrozenMap(Mapping):
    """An immutable, hashable mapping whose values are frozen too (`freeze`).

    Reads like a dict (``m["k"]``, ``m.get``, ``dict(m)``, ``**m``) and compares equal to any
    mapping with the same items; equal maps hash equal whatever their key order.
    """

    __slots__ = ("_data", "_hash")

    def __init__(self, data: Mapping | Iterable[tuple[Any, Any]] = (), **kwargs: Any):
        self._data = {k: freeze(v) for k, v in dict(data, **kwargs).items()}
        self._hash: int | None = None

    def __getitem__(self, key):
        return self._data[key]

    def __iter__(self) -> Iterator:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __eq__(self, other) -> bool:
        return isinstance(other, Mapping) and self._data == dict(other.items())

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(frozenset(self._data.items()))
        return self._hash

    def __repr__(self) -> str:
        return repr(self._data)

    def __reduce__(self):
        return FrozenMap, (self._data,)


def freeze(value: Any) -> Any:
    """A hashable copy of plain data: mappings become `FrozenMap`s, lists and tuples tuples."""
    if isinstance(value, FrozenMap):
        return value
    if isinstance(value, Mapping):
        return FrozenMap(value)
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    if isinstance(value, (set, frozenset)):
        return frozenset(freeze(v) for v in value)
    return value


def _show(value: Any, limit: int = 80) -> str:
    """A value's repr for a one-line message, shortened when long."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 5]}...{text[-2:]}"


def _json_default(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return str(value)


# ------------------------------------------------------------------------- builder configs
REQUIRED = inspect.Parameter.empty  # a builder parameter without a default


def builder_defaults(builder: Callable, exclude: Iterable[str] = ()) -> dict[str, Any]:
    """The keyword parameters of `builder` (a function or dataclass) and their defaults, in
    signature order; `REQUIRED` marks one without a default."""
    skip = set(exclude)
    return {name: p.default for name, p in inspect.signature(builder).parameters.items()
            if name not in skip and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def builder_config(builder: Callable, config: Mapping[str, Any], *, what: str,
                   exclude: Iterable[str] = ()) -> dict[str, Any]:
    """`builder`'s defaults updated with `config`: the full keyword config to call it with.

    An unknown key raises a `ConfigError` that lists the valid ones, and so does a required
    parameter that `config` leaves out; `what` names the builder (``"architecture 'mlp'"``).
    """
    defaults = builder_defaults(builder, exclude)
    unknown = sorted(set(config) - set(defaults))
    if unknown:
        raise ConfigError(f"unknown config {unknown} for {what}; valid: {sorted(defaults)}")
    missing = [k for k, v in defaults.items() if v is REQUIRED and k not in config]
    if missing:
        raise ConfigError(f"{what} needs config {missing}")
    return {**defaults, **config}


@functools.lru_cache(maxsize=None)
def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls)}


def coerce_fields(config) -> None:
    """Convert every field of a frozen config to its declared type, in place (lists to tuples,
    mappings to `FrozenMap`, ints to floats; a value that does not fit raises `ConfigError`).

    Call it first in ``__post_init__``: a config written in code then gets the types and checks
    that one read from the command line or a file gets.
    """
    for name, tp in _field_types(type(config)).items():
        object.__setattr__(config, name, _coerce(getattr(config, name), tp, name))


def _is_config(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a parsed value to a field's type where that is unambiguous (lists → tuples,
    int → float)."""
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
                errors.append(str(err).removeprefix(f"{key}: "))
        raise ConfigError(f"{key}: {_show(value)} fits none of {tp} ({'; '.join(errors)})")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: {_show(value)} is not one of {typing.get_args(tp)}")
        return value
    if origin in (tuple, list) or tp in (tuple, list):
        args = typing.get_args(tp)
        if isinstance(value, str):
            value = _words(value, str in args)
        elif not isinstance(value, (list, tuple)):
            value = (value,)
        if args and not (len(args) == 2 and args[1] is Ellipsis) and len(args) != len(value):
            raise ConfigError(f"{key}: expected {len(args)} items, got {len(value)}")
        item = args[0] if args else Any
        items = [_coerce(v, args[i] if args and args[-1] is not Ellipsis else item, key)
                 for i, v in enumerate(value)]
        return tuple(items) if (origin or tp) is tuple else list(items)
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {_show(value)}")
        # A field typed Mapping is a frozen (hashable) one; one typed dict stays a plain dict.
        return FrozenMap(value) if (origin or tp) is Mapping else dict(value)
    if _is_config(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, Mapping):
            return from_dict(tp, value, prefix=f"{key}.")
        raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {_show(value)}")
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an int beyond float range
            number = math.inf
        if not math.isfinite(number):  # 1e999, nan: no config takes them; nan slips past checks
            raise ConfigError(f"{key}: expected a finite number, got {_show(value)}")
        return number
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {_show(value)}")
    if tp in (int, float) and isinstance(value, bool):  # bool is an int to Python, not to a user
        raise ConfigError(f"{key}: expected {tp.__name__}, got {_show(value)}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {_show(value)}")
    return value


def _words(text: str, strings: bool) -> tuple:
    """A bare list from the command line: ``relu,tanh`` or ``[relu, tanh]`` (no quotes needed);
    items of a non-string field are read as literals (``1e-4,1e-2``)."""
    stripped = text.strip()
    if stripped[:1] in "[(" and stripped[-1:] in "])":
        stripped = stripped[1:-1]
    parts = [p.strip().strip("'\"") for p in stripped.split(",") if p.strip()]
    return tuple(parts if strings else (parse_value(p) for p in parts))


def parse_value(text: str) -> Any:
    """A CLI value: a Python/JSON literal where it parses as one, else the bare string."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        # Not a literal (a bare word), or one that cannot be built ({[1]: 2}, too deep, too
        # long): the field's type then decides, and names the key, if a string will not do.
        return text


class _Nested(dict):
    """Assignments below one config field (``optim.lr=..``, ``optim.schedule=..``)."""


def _apply(config, updates: Mapping[str, Any], prefix: str = ""):
    """One `dataclasses.replace` per config level, so that validation in ``__post_init__`` sees
    every assignment at once (``epochs=3 checkpoints=[0,3]`` passes in either order)."""
    types_ = _field_types(type(config))
    changes = {}
    for name, value in updates.items():
        key = f"{prefix}{name}"
        if name not in types_:
            raise ConfigError(f"unknown config key {key!r}; valid keys: "
                              f"{', '.join(valid_keys(type(config), prefix))}")
        if isinstance(value, _Nested):
            child = getattr(config, name)
            if not dataclasses.is_dataclass(child):
                raise ConfigError(f"config key {key + '.' + next(iter(value))!r}: {name!r} has "
                                  f"no sub-keys")
            changes[name] = _apply(child, value, f"{key}.")
        else:
            changes[name] = _coerce(value, types_[name], key)
    return _construct(lambda: dataclasses.replace(config, **changes),
                      [f"{prefix}{name}" for name in changes])


def _construct(make: Callable[[], C], keys: Iterable[str]) -> C:
    """Build a config; a builtin error from its own checks (a bug there, or a value its declared
    type lets through) becomes a `ConfigError` naming the keys given, never a traceback."""
    try:
        return make()
    except WslError:
        raise
    except (TypeError, ValueError, ArithmeticError) as err:
        raise ConfigError(f"{', '.join(keys) or 'config'}: {err}") from err


def valid_keys(cls, prefix: str = "") -> list[str]:
    """Every settable dotted key of a config class."""
    keys = []
    for name, tp in _field_types(cls).items():
        keys.extend(valid_keys(tp, f"{prefix}{name}.") if _is_config(tp) else [prefix + name])
    return keys


def override(config: C, assignments: Iterable[str] | Mapping[str, Any]) -> C:
    """A copy of `config` with ``key=value`` assignments (strings from the CLI) or a mapping
    applied."""
    if isinstance(assignments, str):
        raise ConfigError(f"overrides are a list of key=value strings or a mapping; got the "
                          f"string {_show(assignments)}")
    items = (assignments.items() if isinstance(assignments, Mapping)
             else (_split(a) for a in assignments))
    updates = _Nested()
    for key, value in items:
        if not isinstance(key, str) or not key:
            raise ConfigError(f"config key {_show(key)} is not a name; keys look like "
                              f"'epochs' or 'optimizer.lr'")
        node = updates
        *parents, leaf = key.split(".")
        for i, name in enumerate(parents):
            child = node.setdefault(name, _Nested())
            if not isinstance(child, _Nested):
                raise ConfigError(f"config key {key!r} overlaps the assignment to "
                                  f"{'.'.join(parents[:i + 1])!r}; give one or the other")
            node = child
        if isinstance(node.get(leaf), _Nested):
            raise ConfigError(f"config key {key!r} overlaps the assignments to its sub-keys; "
                              f"give one or the other")
        node[leaf] = value
    return _apply(config, updates)


def _split(assignment: str) -> tuple[str, Any]:
    if not isinstance(assignment, str):
        raise ConfigError(f"override {_show(assignment)} must be a key=value string")
    key, sep, text = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {_show(assignment)} must look like key=value")
    return key.strip(), parse_value(text)


def to_dict(config) -> dict:
    """The config as plain JSON data (tuples as lists, frozen maps as dicts)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=_json_default))


def from_dict(cls: type[C], data: Mapping[str, Any], prefix: str = "") -> C:
    """Build a config from a mapping; unknown keys are an error naming the valid ones."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: expected a mapping of config "
                          f"keys, got {_show(data)}")
    types_ = _field_types(cls)
    unknown = sorted((k for k in data if k not in types_), key=str)
    if unknown:
        raise ConfigError(f"unknown config keys {[f'{prefix}{k}' for k in unknown]}; valid keys: "
                          f"{', '.join(valid_keys(cls, prefix))}")
    values = {k: _coerce(v, types_[k], prefix + k) for k, v in data.items()}
    return _construct(lambda: cls(**values), [prefix + k for k in values])


def save(config, path: str | Path) -> None:
    Path(path).write_text(json.dumps(to_dict(config), indent=2) + "\n")


def load(cls: type[C], path: str | Path) -> C:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from err
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config ({err.strerror or err})") from err
    try:
        return from_dict(cls, data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err
