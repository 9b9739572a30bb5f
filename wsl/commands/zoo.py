"""`wsl zoo`: build, inspect, import and export model zoos.

    wsl zoo build RECIPE --out DIR [--num-models N] [--seed S] [key=value ...]   (rerun to resume)
    wsl zoo info DIR
    wsl zoo export DIR --model ID [--epoch E] --format safetensors|npz [--out FILE] [--torch-layout]
    wsl zoo recipes [NAME]
    wsl zoo import --format small-cnn-zoo|model-zoos|checkpoints SRC --out DIR
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from wsl.errors import UsageError

IMPORT_FORMATS = ("small-cnn-zoo", "model-zoos", "checkpoints")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wsl zoo", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    p = sub.add_parser("build", help="train a recipe's population into a zoo directory (resumes)",
                       description="Train a recipe's population into a zoo directory. Rerunning "
                       "the same command resumes an interrupted build.",
                       epilog="Overrides are recipe fields, e.g. epochs=3 lr=[1e-4,1e-2] "
                              "activation=relu,tanh arch={'widths':[64]} (see `wsl zoo recipes`).")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--out", required=True, help="zoo directory to write (or resume)")
    p.add_argument("--num-models", type=int, help="number of models (num_models=N)")
    p.add_argument("--seed", type=int, help="recipe seed (seed=S)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=build)
    p = sub.add_parser("info", help="summarise a zoo: architecture, counts, metrics, accuracy "
                                    "histogram")
    p.add_argument("zoo", help="zoo directory")
    p.set_defaults(run=info)
    p = sub.add_parser("export", help="write one model to .safetensors or .npz")
    p.add_argument("zoo", help="zoo directory")
    p.add_argument("--model", type=int, required=True, help="model id (metrics.csv 'model')")
    p.add_argument("--epoch", default="last", help="checkpoint epoch (default: last)")
    p.add_argument("--format", choices=("safetensors", "npz"), default="safetensors")
    p.add_argument("--out", help="output file (default: model_ID_epoch_E.FORMAT in the cwd)")
    p.add_argument("--torch-layout", action="store_true",
                   help="PyTorch names (conv_0.weight) and layouts (OIHW, dense out x in)")
    p.set_defaults(run=export)
    p = sub.add_parser("recipes", help="list the named recipes and their settings")
    p.add_argument("name", nargs="?", help="show one recipe's fields")
    p.set_defaults(run=recipes)
    p = sub.add_parser("import", help="import a Small CNN Zoo, Model Zoos trials or a folder of "
                                      "checkpoints (rerun to resume)")
    p.add_argument("source", type=Path)
    p.add_argument("--format", required=True, choices=IMPORT_FORMATS)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--step", type=int, default=None,
                   help="small-cnn-zoo: keep only rows of this step (e.g. 86)")
    p.add_argument("--arch", default=None,
                   help="architecture name (checkpoints; model-zoos default: CNN-s)")
    p.add_argument("--arch-config", default="{}",
                   help="architecture config as JSON, e.g. '{\"widths\": [32]}'")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=import_)
    return parser


def main(argv: list[str]) -> int:
    parser = _parser()
    # key=value overrides may come before or after options (argparse alone stops at the first)
    args, extra = parser.parse_known_args(argv)
    if extra and (args.command != "build" or any(w.startswith("-") or "=" not in w for w in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    return args.run(args)


def build(args) -> int:
    from wsl.zoos.build import build_zoo
    from wsl.zoos.recipes import get_recipe

    overrides = list(args.overrides)
    if args.num_models is not None:
        overrides.append(f"num_models={args.num_models}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    recipe = get_recipe(args.recipe, overrides)
    start = time.perf_counter()
    zoo = build_zoo(recipe, args.out, progress=not args.no_progress)
    seconds = time.perf_counter() - start
    print(f"built {args.out}: {len(zoo.model_ids)} models, {len(zoo)} rows in {seconds:.1f} s")
    print(summarise(zoo))
    return 0


def info(args) -> int:
    from wsl.zoos.store import Zoo

    print(summarise(Zoo.open(args.zoo)))
    return 0


def export(args) -> int:
    import numpy as np

    from wsl.zoos.store import Zoo, ZooError

    zoo = Zoo.open(args.zoo)
    rows = zoo.filter(where=lambda m: m["model"] == args.model)
    if not len(rows):
        raise ZooError(f"{args.zoo}: no model {args.model}; ids run "
                       f"{zoo.model_ids.min()}..{zoo.model_ids.max()}")
    if args.epoch == "last":
        rows = rows.filter(epoch="last")
    else:
        try:
            epoch = int(args.epoch)
        except ValueError:
            raise UsageError(f"--epoch must be an integer or 'last', got {args.epoch!r}") from None
        have = np.unique(rows.metrics["epoch"]).tolist()
        rows = rows.filter(epoch=epoch)
        if not len(rows):
            raise ZooError(f"model {args.model} has no checkpoint at epoch {epoch}; it has {have}")
    epoch = int(rows.metrics["epoch"][0])
    out = args.out or f"model_{args.model}_epoch_{epoch}.{args.format}"
    rows.export(0, out, args.format, torch_layout=args.torch_layout)
    print(f"wrote {out} (model {args.model}, epoch {epoch}, "
          f"{'torch' if args.torch_layout else 'jax'} layout)")
    return 0


def recipes(args) -> int:
    from wsl.zoos.recipes import RECIPES, describe, get_recipe

    if args.name:
        print(describe(get_recipe(args.name)))
        return 0
    width = max(map(len, RECIPES))
    for name, recipe in RECIPES.items():
        print(f"  {name.ljust(width)}  {recipe.num_models:>5} × {recipe.architecture:<10} "
              f"{recipe.description}")
    return 0


def import_(args) -> int:
    from wsl.zoos import importers
    from wsl.zoos.architectures import build as build_architecture

    try:
        config = json.loads(args.arch_config)
    except json.JSONDecodeError as err:
        raise UsageError(f"--arch-config is not valid JSON: {err}") from None
    progress = not args.no_progress
    if args.format == "small-cnn-zoo":
        zoo = importers.import_small_cnn_zoo(args.source, args.out, step=args.step,
                                             progress=progress)
    elif args.format == "model-zoos":
        arch = build_architecture(args.arch, **config) if args.arch else None
        zoo = importers.import_model_zoos(args.source, args.out, architecture=arch,
                                          progress=progress)
    else:
        if not args.arch:
            raise UsageError("--format checkpoints needs --arch (and --arch-config if not "
                             "default)")
        zoo = importers.import_checkpoints(args.source, args.out, architecture=args.arch,
                                           config=config, progress=progress)
    print(f"imported {len(zoo)} rows into {args.out}; see `wsl zoo info {args.out}`")
    return 0


def histogram(values, bins: int = 10, lo: float | None = None, hi: float | None = None,
              width: int = 40) -> str:
    """A text histogram of `values` (non-finite ones counted apart); the range defaults to the
    data's, widened to multiples of 0.05, so a narrow spread still fills the bins."""
    import numpy as np

    values = np.asarray(values, np.float64)
    finite = values[np.isfinite(values)]
    if lo is None:
        lo = np.floor(finite.min(initial=0.0) * 20) / 20 if len(finite) else 0.0
    if hi is None:
        hi = np.ceil(finite.max(initial=1.0) * 20) / 20 if len(finite) else 1.0
    hi = max(hi, lo + 0.05)
    counts, edges = np.histogram(np.clip(finite, lo, hi), bins=bins, range=(lo, hi))
    scale = width / max(counts.max(initial=0), 1)
    lines = [f"  [{edges[i]:.2f}, {edges[i + 1]:.2f}{']' if i == bins - 1 else ')'} "
             f"{'#' * int(round(c * scale)):<{width}} {c}" for i, c in enumerate(counts)]
    if len(finite) < len(values):
        lines.append(f"  not finite: {len(values) - len(finite)}")
    return "\n".join(lines)


def summarise(zoo) -> str:
    import numpy as np

    m = zoo.metrics
    arch = zoo.manifest["architecture"]
    models = zoo.model_ids
    epochs = np.unique(m["epoch"])
    last = zoo.filter(epoch="last").metrics
    varies = "activation" in m and len(np.unique(m["activation"])) > 1
    lines = [
        f"zoo          {zoo.path}",
        f"architecture {arch['name']} {arch.get('config', {})}"
        f"{'  (activation varies: see below)' if varies else ''}",
        f"             {zoo.weight_space.num_params:,} parameters in "
        f"{len(zoo.weight_space.tensors)} tensors",
        f"dataset      {zoo.manifest.get('dataset', {}).get('name', '?')} "
        f"{zoo.manifest.get('dataset', {}).get('options', {})}",
        f"recipe       {zoo.manifest.get('recipe', {}).get('name', '?')}"
        f"{'  (generated)' if zoo.manifest.get('generated') else ''}",
        f"counts       {len(models)} models, {len(zoo)} rows, checkpoints at epochs "
        f"{epochs.tolist()}",
    ]
    if "diverged" in last:
        lines.append(f"diverged     {int(np.sum(last['diverged']))} of {len(models)} models")
    for key in ("activation", "optimizer", "init"):
        if key in last and len(np.unique(last[key])) > 1:
            values, counts = np.unique(last[key], return_counts=True)
            lines.append(f"{key:<12} " + ", ".join(f"{v} {c}" for v, c in zip(values, counts)))
    numeric = [c for c in zoo.columns if c not in ("model", "epoch", "seed", "diverged")
               and last[c].dtype.kind in "fi"]
    if numeric:
        lines += ["", f"metrics at each model's last checkpoint ({len(models)} models)",
                  f"  {'column':<15}{'mean':>10}{'std':>10}{'min':>10}{'median':>10}{'max':>10}"]
        for c in numeric:
            v = last[c].astype(np.float64)
            v = v[np.isfinite(v)]
            stats = (np.mean(v), np.std(v), np.min(v), np.median(v), np.max(v)) if len(v) else \
                (np.nan,) * 5
            lines.append(f"  {c:<15}" + "".join(f"{s:>10.4g}" for s in stats))
    if "test_acc" in last:
        lines += ["", "test accuracy at the last checkpoint", histogram(last["test_acc"])]
    return "\n".join(lines)
