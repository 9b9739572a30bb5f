"""What every `wsl` command's ``--help`` shares: defaults shown, config keys listed.

`parser(prog, doc)` builds an `argparse.ArgumentParser` with `HelpFormatter`, which appends
``(default: X)`` to an option's help wherever the default means something (not for flags, a
``None`` that stands for "not given", or an empty list); `subparser` does the same for a
subcommand. `config_keys` / `format_keys` print the ``key=value`` words a config dataclass takes,
with their defaults and types, for ``--list-keys``.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

_NO_DEFAULT_ACTIONS = (argparse._StoreTrueAction, argparse._StoreFalseAction,
                       argparse._StoreConstAction, argparse._HelpAction, argparse._VersionAction,
                       argparse._SubParsersAction, argparse._CountAction)


def shows_default(action: argparse.Action) -> bool:
    """Whether `action`'s default is worth showing: a value the command really uses when the
    option is left out (not a flag's off state, not ``None`` or an empty list)."""
    if isinstance(action, _NO_DEFAULT_ACTIONS) or action.required:
        return False
    default = action.default
    if default is None or default is argparse.SUPPRESS:
        return False
    if isinstance(default, (list, tuple)) and not default:
        return False
    return True


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs as written (usage blocks, lists); ``(default: X)`` after every
    option whose default is meaningful, unless its help already says ``default``."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or not shows_default(action):
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


def parser(prog: str, doc: str | None, *, epilog: str | None = None,
           **kwargs: Any) -> argparse.ArgumentParser:
    """A command's parser: its description is the first line of `doc` (the module docstring),
    without the leading ```wsl NAME`:`` that the usage line already shows."""
    description = doc.strip().splitlines()[0] if doc and doc.strip() else None
    if description and description.startswith("`") and "`: " in description:
        description = description.split("`: ", 1)[1]
    return argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                   formatter_class=HelpFormatter, **kwargs)


def subparser(sub, name: str, text: str, *, epilog: str | None = None,
              **kwargs: Any) -> argparse.ArgumentParser:
    """A subcommand (``wsl gen train``) with the same formatter; `text` is its one-line help
    and description."""
    return sub.add_parser(name, help=text, description=text, epilog=epilog,
                          formatter_class=HelpFormatter, **kwargs)


def add_cpu_devices(p: argparse.ArgumentParser, what: str) -> None:
    """--cpu-devices K: how many JAX devices the CPU is split into (`wsl.mesh.split_cpu`), for a
    command whose `what` (a population of networks) trains sharded over them."""
    p.add_argument("--cpu-devices", type=int, default=None, metavar="K",
                   help=f"JAX devices the CPU is split into, {what} sharded over them (default: "
                        f"one per core, unless XLA_FLAGS or JAX_NUM_CPU_DEVICES set a count; 1: "
                        f"one device). No effect on a GPU's or TPU's devices")


def unknown_key_hint(err: Exception, command: str) -> Exception:
    """`err` (a config error) with a pointer to ``COMMAND --list-keys`` when it is about an unknown
    key; any other error as it is."""
    if "unknown config" not in str(err):
        return err
    return type(err)(f"{err} (`{command} --list-keys` prints them with defaults and types)")


def asks_for(argv: Sequence[str], option: str) -> bool:
    """Whether `argv` names `option` (or an abbreviation argparse would accept for it) before a
    ``--``: lets ``--list-keys`` work without the options a run needs."""
    for word in argv:
        if word == "--":
            return False
        if word.startswith("--") and len(word) > 4 and option.startswith(word.partition("=")[0]):
            return True
    return False


def subcommand(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    """The parser of subcommand `name` (``train`` of ``wsl gen``)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise KeyError(name)


def relax_required(parser: argparse.ArgumentParser) -> None:
    """Make every option of `parser` optional (for ``--list-keys``, which needs none of them);
    ``--help`` still shows what a run requires, because help is built before this is called."""
    for action in parser._actions:
        if action.option_strings:
            action.required = False


# ----------------------------------------------------------------------------- --list-keys
def type_name(tp: Any) -> str:
    """A field type as a reader writes it: ``int``, ``float or none``, ``adamw|adam|sgd``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return "any"
    if tp is type(None):
        return "none"
    if origin is typing.Literal:
        return "|".join(str(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        names = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or none" if type(None) in args else "")
    if origin in (tuple, list, Sequence) or tp in (tuple, list, Sequence):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        item = type_name(args[0]) if args else "value"
        return f"list of {item}s"
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def show_value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return "[" + ",".join(show_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{show_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def config_keys(config: Any, prefix: str = "") -> list[tuple[str, str, str]]:
    """Every settable dotted key of a config instance: (key, default, type), nested configs
    flattened (``optimizer.lr``)."""
    hints = typing.get_type_hints(type(config))
    rows = []
    for field in dataclasses.fields(config):
        value, tp = getattr(config, field.name), hints.get(field.name, Any)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            rows += config_keys(value, f"{prefix}{field.name}.")
        else:
            rows.append((prefix + field.name, show_value(value), type_name(tp)))
    return rows


def format_keys(groups: Iterable[tuple[str, list[tuple[str, str, str]]]]) -> str:
    """Groups of (key, default, type) rows as aligned ``key=default  type`` lines under a title."""
    groups = list(groups)
    width = max((len(f"{k}={d}") for _, rows in groups for k, d, _ in rows), default=0)
    width = min(width, 48)
    lines = []
    for title, rows in groups:
        lines += ["", f"{title}:"] if lines else [f"{title}:"]
        lines += [f"  {f'{k}={d}'.ljust(width)}  {t}" for k, d, t in rows]
    return "\n".join(lines)


def parse_with_overrides(parser: argparse.ArgumentParser, argv: Sequence[str],
                         takes_overrides=lambda args: hasattr(args, "overrides")):
    """`parser.parse_args(argv)`, with ``key=value`` words allowed before *and* after options.

    argparse alone ends a ``nargs="*"`` positional at the first option, so ``wsl probe … steps=5
    --no-progress seed=1`` would reject ``seed=1``. Left-over ``key=value`` words join
    ``args.overrides`` where `takes_overrides(args)`; anything else left over is the usual
    "unrecognized arguments" usage error.
    """
    args, extra = parser.parse_known_args(argv)
    if extra and (not takes_overrides(args)
                  or any(word.startswith("-") or "=" not in word for word in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = list(args.overrides or []) + extra
    return args
