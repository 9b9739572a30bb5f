"""`wsl list`: the registered architectures (with parameter counts) and the offline datasets."""

from __future__ import annotations

import argparse

from wsl.commands import _help


def _parser() -> argparse.ArgumentParser:
    parser = _help.parser("wsl list", __doc__)
    parser.add_argument("what", nargs="?", choices=("all", "architectures", "datasets"),
                        default="all", help="what to list")
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
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
            print(f"  {d['name']:<10} {shape:<8} {classes:>3} classes  {sizes}  "
                  f"— {d['description']}")
    return 0
