"""The `wsl` command line: one entry point whose subcommands live beside the code they drive.

Subcommand modules are imported only when used, so `wsl --help` stays fast and a command
never pays for packages it does not need. Each module exposes `main(argv) -> int`.
"""

from __future__ import annotations

import importlib
import sys

# name -> (module with main(argv), one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("wsl.eval.demo", "the whole pipeline on the quick zoo: build, probe, align, generate, evaluate"),
    "list": ("wsl.cli", "list architectures (with parameter counts) and datasets (with sizes)"),
    "zoo": ("wsl.zoos.cli", "build, inspect, import and export model zoos"),
    "merge": ("wsl.eval.merge_cli", "align networks of a zoo and merge them (uniform, greedy soup, Fisher)"),
    "probe": ("wsl.eval.probe_cli", "train an encoder to predict a zoo column from weights (Kendall τ, R²)"),
    "gen": ("wsl.eval.gen_cli", "train weight generators on a zoo, sample and evaluate new networks"),
}


def register(name: str, module: str, help_text: str) -> None:
    COMMANDS[name] = (module, help_text)


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: wsl COMMAND [options]   (wsl COMMAND --help for a command's options)", "",
             "commands:"]
    lines += [f"  {name.ljust(width)}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def list_main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="wsl list", description=COMMANDS["list"][1])
    parser.add_argument("what", nargs="?", choices=("all", "architectures", "datasets"),
                        default="all")
    args = parser.parse_args(argv)
    if args.what in ("all", "architectures"):
        from wsl.zoos.architectures import list_architectures

        print("architectures (default config)")
        for a in list_architectures():
            print(f"  {a['name']:<12} {a['num_params']:>7,} params  {a['description']}")
            print(f"  {'':<12} {'':>7}         {a['config']}")
    if args.what in ("all", "datasets"):
        from wsl.zoos.datasets import list_datasets

        print("datasets")
        for d in list_datasets():
            sizes = d["sizes"] if isinstance(d["sizes"], str) else " / ".join(
                f"{k} {v:,}" for k, v in d["sizes"].items())
            shape = d["input_shape"]
            shape = "×".join(map(str, shape)) if isinstance(shape, (tuple, list)) else "—"
            classes = d["num_classes"] if isinstance(d["num_classes"], int) else "?"
            print(f"  {d['name']:<10} {shape:<8} {classes:>3} classes  {sizes}  — {d['description']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"wsl: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    if name == "list":
        return list_main(rest)
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
