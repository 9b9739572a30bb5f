"""The `wsl zoo` command: build, inspect and export model zoos (importers register more subcommands).

Each subcommand is ``SUBCOMMANDS[name] = (module, function, help)``; the function takes argv and
returns an exit code, and its module is imported only when the subcommand runs. `register` adds one
(e.g. ``register("import", "wsl.zoos.importers", "import_main", "convert a published zoo")``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "build": ("wsl.zoos.cli", "build_main", "train a recipe's population into a zoo directory (resumes)"),
    "info": ("wsl.zoos.cli", "info_main", "summarise a zoo: architecture, counts, metrics, accuracy histogram"),
    "export": ("wsl.zoos.cli", "export_main", "write one model to .safetensors or .npz"),
    "recipes": ("wsl.zoos.cli", "recipes_main", "list the named recipes and their settings"),
    "import": ("wsl.zoos.importers", "import_main",
               "import a Small CNN Zoo, Model Zoos trials or a folder of checkpoints"),
}


def register(name: str, module: str, function: str, help_text: str) -> None:
    SUBCOMMANDS[name] = (module, function, help_text)


def _usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = ["usage: wsl zoo SUBCOMMAND [options]   (wsl zoo SUBCOMMAND --help)", "", "subcommands:"]
    lines += [f"  {n.ljust(width)}  {h}" for n, (_, _, h) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] not in SUBCOMMANDS:
        print(f"wsl zoo: unknown subcommand {argv[0]!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module, function, _ = SUBCOMMANDS[argv[0]]
    return int(getattr(importlib.import_module(module), function)(argv[1:]) or 0)


def _fail(prog: str, err: Exception, code: int = 2) -> int:
    print(f"{prog}: error: {err}", file=sys.stderr)
    return code


# ------------------------------------------------------------------------------------ build
def build_main(argv: list[str]) -> int:
    from wsl.zoos.recipes import RECIPES

    parser = argparse.ArgumentParser(
        prog="wsl zoo build", description="Train a recipe's population into a zoo directory. "
        "Rerunning the same command resumes an interrupted build.",
        epilog=f"recipes: {', '.join(RECIPES)}. Overrides are recipe fields, e.g. epochs=3 "
               "lr=[1e-4,1e-2] activation=relu,tanh arch={'widths':[64]} "
               "(see `wsl zoo recipes`).")
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    parser.add_argument("--out", required=True, help="zoo directory to write (or resume)")
    parser.add_argument("--num-models", type=int, help="number of models (num_models=N)")
    parser.add_argument("--seed", type=int, help="recipe seed (seed=S)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_intermixed_args(argv)

    from wsl.zoos.population import PopulationError, build_zoo
    from wsl.zoos.recipes import RecipeError, get_recipe
    from wsl.zoos.store import ZooError

    overrides = list(args.overrides)
    if args.num_models is not None:
        overrides.append(f"num_models={args.num_models}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    try:
        recipe = get_recipe(args.recipe, overrides)
    except RecipeError as err:
        return _fail("wsl zoo build", err)
    start = time.perf_counter()
    try:
        zoo = build_zoo(recipe, args.out, progress=not args.no_progress)
    except (ZooError, PopulationError, FileNotFoundError, ImportError) as err:
        return _fail("wsl zoo build", err, 1)
    seconds = time.perf_counter() - start
    print(f"built {args.out}: {len(zoo.model_ids)} models, {len(zoo)} rows in {seconds:.1f} s")
    print(summarise(zoo))
    return 0


# ------------------------------------------------------------------------------------- info
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
    lines = [
        f"zoo          {zoo.path}",
        f"architecture {arch['name']} {arch.get('config', {})}"
        f"{'  (activation varies: see below)' if 'activation' in m and len(np.unique(m['activation'])) > 1 else ''}",
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


def info_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="wsl zoo info", description=SUBCOMMANDS["info"][2])
    parser.add_argument("zoo", help="zoo directory")
    args = parser.parse_args(argv)
    from wsl.zoos.store import Zoo, ZooError

    try:
        print(summarise(Zoo.open(args.zoo)))
    except ZooError as err:
        return _fail("wsl zoo info", err, 1)
    return 0


# ----------------------------------------------------------------------------------- export
def export_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="wsl zoo export", description=SUBCOMMANDS["export"][2])
    parser.add_argument("zoo", help="zoo directory")
    parser.add_argument("--model", type=int, required=True, help="model id (metrics.csv 'model')")
    parser.add_argument("--epoch", default="last", help="checkpoint epoch (default: last)")
    parser.add_argument("--format", choices=("safetensors", "npz"), default="safetensors")
    parser.add_argument("--out", help="output file (default: model_ID_epoch_E.FORMAT in the cwd)")
    parser.add_argument("--torch-layout", action="store_true",
                        help="PyTorch names (conv_0.weight) and layouts (OIHW, dense out x in)")
    args = parser.parse_args(argv)
    import numpy as np

    from wsl.zoos.store import Zoo, ZooError

    try:
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
                raise ZooError(f"--epoch must be an integer or 'last', got {args.epoch!r}") from None
            have = np.unique(rows.metrics["epoch"]).tolist()
            rows = rows.filter(epoch=epoch)
            if not len(rows):
                raise ZooError(f"model {args.model} has no checkpoint at epoch {epoch}; it has {have}")
        epoch = int(rows.metrics["epoch"][0])
        out = args.out or f"model_{args.model}_epoch_{epoch}.{args.format}"
        rows.export(0, out, args.format, torch_layout=args.torch_layout)
    except ZooError as err:
        return _fail("wsl zoo export", err, 1)
    print(f"wrote {out} (model {args.model}, epoch {epoch}, "
          f"{'torch' if args.torch_layout else 'jax'} layout)")
    return 0


# ---------------------------------------------------------------------------------- recipes
def recipes_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="wsl zoo recipes", description=SUBCOMMANDS["recipes"][2])
    parser.add_argument("name", nargs="?", help="show one recipe's fields")
    args = parser.parse_args(argv)
    from wsl.zoos.recipes import RECIPES, RecipeError, describe, get_recipe

    if args.name:
        try:
            print(describe(get_recipe(args.name)))
        except RecipeError as err:
            return _fail("wsl zoo recipes", err)
        return 0
    width = max(map(len, RECIPES))
    for name, recipe in RECIPES.items():
        print(f"  {name.ljust(width)}  {recipe.num_models:>5} × {recipe.architecture:<10} "
              f"{recipe.description}")
    return 0
