"""`wsl zoo`: build, inspect, import and export model zoos.

    wsl zoo build RECIPE --out DIR [--num-models N] [--seed S] [key=value ...]   (rerun to resume)
    wsl zoo info DIR
    wsl zoo verify DIR
    wsl zoo export DIR --model ID [--epoch E] [--format safetensors|npz] [--out FILE] [--force]
                   [--torch-layout] [--allow-non-finite]
    wsl zoo export DIR --best [--by val_acc] [--epoch E] [...]   (best by a validation column)
    wsl zoo export DIR --all --out NEW_DIR [--metrics parquet|csv] [--license ID] [--name TEXT]
    wsl zoo card DIR --out NEW_DIR [--license ID] [--name TEXT] [--force]
    wsl zoo analyze DIR --metrics hessian,cka,mc,spectral,farms [--epoch last|all|E]   (resumes)
    wsl zoo plot DIR --x width --y lr --color test_acc[,...] [--out FILE.png] [--force]
    wsl zoo recipes [NAME]
    wsl zoo import --format small-cnn-zoo|model-zoos|checkpoints|wsl-export SRC --out DIR
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

from wsl.commands._help import HelpFormatter, add_cpu_devices, parse_with_overrides
from wsl.errors import UsageError

IMPORT_FORMATS = ("small-cnn-zoo", "model-zoos", "checkpoints", "wsl-export")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wsl zoo", description=__doc__.splitlines()[0],
                                     formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    add = functools.partial(sub.add_parser, formatter_class=HelpFormatter)  # defaults shown
    p = add("build", help="train a recipe's population into a zoo directory (resumes)",
                       description="Train a recipe's population into a zoo directory. Rerunning "
                       "the same command resumes an interrupted build.",
                       epilog="Overrides are recipe fields, e.g. epochs=3 lr=[1e-4,1e-2] "
                              "activation=relu,tanh arch={'widths':[64]} (see `wsl zoo recipes`).")
    p.add_argument("recipe", help="a named recipe (`wsl zoo recipes` lists them)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="recipe fields to change (see below)")
    p.add_argument("--out", required=True, help="zoo directory to write (or resume)")
    p.add_argument("--num-models", type=int, help="number of models (num_models=N)")
    p.add_argument("--seed", type=int, help="recipe seed (seed=S)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_cpu_devices(p, "the population")
    p.set_defaults(run=build)
    p = add("info", help="summarise a zoo: architecture, counts, metrics, accuracy "
                                    "histogram (checks that every shard file is there)")
    p.add_argument("zoo", help="zoo directory")
    p.set_defaults(run=info)
    p = add("verify", help="read every file of a zoo: checksums, sizes, shapes, dtypes "
                                      "and NaN/inf in the weights",
                       description="Read every file of a zoo and check it against the manifest: "
                       "sha256, size, shape, dtype, and that every weight is finite (NaN/inf is "
                       "allowed only in rows flagged diverged). Exit 1 naming the bad files.")
    p.add_argument("zoo", help="zoo directory")
    p.set_defaults(run=verify)
    p = add("export", help="write one model to .safetensors or .npz, or the whole "
                                      "zoo (--all) as a folder to share",
                       description="Write one model (--model ID, or --best: the best by a "
                       "validation column) to .safetensors or .npz, or the "
                       "whole zoo (--all) into a new folder: safetensors shards, the metrics as "
                       "Parquet (CSV without pyarrow), the manifest and a dataset card "
                       "(README.md). `wsl zoo import --format wsl-export DIR` reads it back.")
    p.add_argument("zoo", help="zoo directory")
    p.add_argument("--model", type=int, default=None, help="model id (metrics.csv 'model')")
    p.add_argument("--all", action="store_true",
                   help="export the whole zoo into the new folder --out (not with --model)")
    p.add_argument("--best", action="store_true",
                   help="export the best model by --by at --epoch, among models whose weights "
                        "and --by value are finite (instead of --model; not with --all)")
    p.add_argument("--by", default=None, metavar="COLUMN",
                   help="--best: metrics column that ranks models (default: val_acc; a *_loss "
                        "column ranks lowest first, any other highest first); never a test "
                        "column")
    p.add_argument("--epoch", default=None, help="checkpoint epoch (default: last; --model only)")
    p.add_argument("--format", choices=("safetensors", "npz"), default=None,
                   help="file format (default: from the --out suffix, else safetensors; --all "
                        "writes safetensors)")
    p.add_argument("--out", help="output file (default: model_ID_epoch_E.FORMAT in the cwd); "
                                 "with --all a new or empty folder (required); never inside a zoo")
    p.add_argument("--force", action="store_true",
                   help="overwrite an existing --out file (--model only)")
    p.add_argument("--metrics", choices=("parquet", "csv"), default=None,
                   help="--all: metrics table format (default: parquet when pyarrow is "
                        "installed, else csv)")
    p.add_argument("--license", default=None,
                   help="--all: the card's license, e.g. cc-by-4.0 (default: unknown)")
    p.add_argument("--name", default=None, help="--all: the card's title (pretty_name)")
    p.add_argument("--no-progress", action="store_true", help="--all: no progress bar")
    p.add_argument("--torch-layout", action="store_true",
                   help="PyTorch names (conv_0.weight) and layouts (OIHW, linear out x in); "
                        "load it with wsl.zoos.torch_modules.load_exported(FILE). Flax SAME "
                        "padding at stride 2 pads (0, 1) on even sizes, which "
                        "nn.Conv2d(padding=1) does not reproduce")
    p.add_argument("--allow-non-finite", action="store_true",
                   help="export a model whose weights hold NaN or inf (refused by default)")
    p.set_defaults(run=export)
    p = add("card", help="write a dataset card (README.md with Hugging Face front "
                                    "matter, and figures) for a zoo into a new folder",
                       description="Write a dataset card for a zoo into a new folder: README.md "
                       "with YAML front matter in the Hugging Face datasets convention "
                       "(pretty_name, license, tags, sizes, and under `wsl` the architecture, "
                       "dataset, recipe, columns with their meanings and provenance; citation "
                       "as BibTeX to complete) and PNG figures (accuracy histogram, "
                       "hyperparameter scatter). The zoo itself is never written to.")
    p.add_argument("zoo", help="zoo directory")
    p.add_argument("--out", required=True,
                   help="new or empty folder for README.md and figures/ (never inside a zoo)")
    p.add_argument("--license", default=None,
                   help="license identifier, e.g. cc-by-4.0 or mit (default: unknown, and the "
                        "card says so)")
    p.add_argument("--name", default=None,
                   help="the card's title (pretty_name; default: from recipe, size, "
                        "architecture and dataset)")
    p.add_argument("--force", action="store_true",
                   help="write into a folder that is not empty (replaces README.md and figures)")
    p.set_defaults(run=card)
    p = add("analyze", help="add loss-landscape, CKA and spectral columns to a zoo "
                            "(resumes; rows that have them are skipped)",
            description="Compute properties of every model at --epoch and add them as columns "
            "beside the zoo's metrics table (the table and weights are not touched): hessian "
            "(top eigenvalue, trace), mc (linear and Bezier loss barriers to a same-cell partner "
            "after alignment), cka (to the cell and to a reference model), spectral (power-law "
            "alpha, stable rank, spectral norm), farms (alpha on square sub-blocks). An "
            "interrupted run resumes without recomputing finished shards; a rerun computes only "
            "what is missing. `wsl probe --target COLUMN` then predicts any of them.")
    p.add_argument("zoo", help="zoo directory")
    p.add_argument("--metrics", default="hessian,spectral",
                   help="comma-separated: hessian, mc, cka, spectral, farms")
    p.add_argument("--epoch", default="last", help="'last' (each model's last checkpoint), "
                                                   "'all', or an epoch number")
    p.add_argument("--examples", type=int, default=512,
                   help="size of the fixed training batch (loss-based metrics and CKA)")
    p.add_argument("--lanczos-iterations", type=int, default=32,
                   help="Lanczos iterations of the Hessian's top-eigenvalue estimate")
    p.add_argument("--trace-samples", type=int, default=48,
                   help="Hessian-vector products of the Hutch++ trace estimate")
    p.add_argument("--bezier-steps", type=int, default=100,
                   help="Adam steps that fit each Bezier control point")
    p.add_argument("--batch-models", type=int, default=64, help="models per vectorised call")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=analyze)
    p = add("plot", help="phase diagram: heatmaps of columns over two grid axes",
            description="Average a column over the seeds of every (x, y) cell of a grid zoo and "
            "draw it as a heatmap, one panel per --color column; the grid is printed as text "
            "too.")
    p.add_argument("zoo", help="zoo directory")
    p.add_argument("--x", default="width", help="column on the horizontal axis")
    p.add_argument("--y", default="lr", help="column on the vertical axis")
    p.add_argument("--color", default="test_acc",
                   help="comma-separated columns, one heatmap each")
    p.add_argument("--epoch", default="last", help="'last', 'all' or an epoch number")
    p.add_argument("--out", default=None,
                   help="PNG file (default: phase-<x>-<y>.png in the current folder)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    p.set_defaults(run=plot)
    p = add("recipes", help="list the named recipes and their settings")
    p.add_argument("name", nargs="?", help="show one recipe's fields")
    p.set_defaults(run=recipes)
    p = add("import", help="import a Small CNN Zoo, Model Zoos trials or a folder of "
                                      "checkpoints (rerun to resume)")
    p.add_argument("source", type=Path, help="the folder or file to import from")
    p.add_argument("--format", required=True, choices=IMPORT_FORMATS,
                   help="wsl-export: a folder written by `wsl zoo export Z --all`")
    p.add_argument("--out", required=True, type=Path, help="zoo directory to write (or resume)")
    p.add_argument("--step", type=int, default=None,
                   help="small-cnn-zoo: keep only rows of this step (e.g. 86)")
    p.add_argument("--arch", default=None,
                   help="architecture name (checkpoints; model-zoos default: CNN-s)")
    p.add_argument("--arch-config", default="{}",
                   help="architecture config as JSON, e.g. '{\"widths\": [32]}'")
    p.add_argument("--ignore-extra", action="store_true",
                   help="checkpoints: drop tensors the architecture does not use (named in a "
                        "warning) instead of refusing the file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=import_)
    return parser


def main(argv: list[str]) -> int:
    parser = _parser()
    args = parse_with_overrides(parser, argv, lambda args: args.command == "build")
    return args.run(args)


def note(command: str, text: str) -> None:
    print(f"wsl zoo {command}: note: {text}", file=sys.stderr)


def build(args) -> int:
    from wsl.mesh import split_cpu
    from wsl.outputs import check_output_dir
    from wsl.zoos.build import build_zoo
    from wsl.zoos.recipes import get_recipe

    # First: the CPU's device count is fixed once JAX starts. Models train independently, so a
    # device per core runs them side by side (see split_cpu).
    split_cpu(args.cpu_devices)
    overrides = list(args.overrides)
    if args.num_models is not None:
        overrides.append(f"num_models={args.num_models}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    notes: list[str] = []
    recipe = get_recipe(args.recipe, overrides, notes)
    for text in notes:
        note("build", text)
    if recipe.epochs == 0:
        note("build", "epochs=0: no training; the zoo holds the untrained networks "
                      "(their initialisations) only")
    check_output_dir(args.out, allow_zoo=True)  # a zoo is resumed in place, never nested
    print(_population_mesh(), flush=True)
    start = time.perf_counter()
    zoo = build_zoo(recipe, args.out, progress=not args.no_progress)
    seconds = time.perf_counter() - start
    print(f"built {args.out}: {len(zoo.model_ids)} models, {len(zoo)} rows in {seconds:.1f} s")
    print(summarise(zoo))
    return 0


def analyze(args) -> int:
    import numpy as np

    from wsl.eval.zoo_analysis import METRICS, AnalyzeSettings, analyze_zoo, parse_metrics
    from wsl.zoos.store import Zoo

    metrics = parse_metrics(args.metrics)  # an unknown metric fails before anything runs
    settings = AnalyzeSettings(examples=args.examples,
                               lanczos_iterations=args.lanczos_iterations,
                               trace_samples=args.trace_samples, bezier_steps=args.bezier_steps,
                               batch_models=args.batch_models)
    start = time.perf_counter()
    report = analyze_zoo(args.zoo, metrics, args.epoch, settings,
                         progress=not args.no_progress)
    seconds = time.perf_counter() - start
    zoo = report.zoo or Zoo.open(args.zoo)
    print(f"analyzed {args.zoo}: {', '.join(metrics)} on {report.rows} rows in {seconds:.1f} s "
          f"({report.computed_units} shard units computed, {report.reused_units} reused from an "
          f"interrupted run)")
    for name, count in report.skipped.items():
        if count:
            print(f"  {name}: {count} rows already had values (kept)")
    view = zoo.filter(epoch=None if args.epoch == "all" else
                      (args.epoch if args.epoch == "last" else int(args.epoch)))
    width = max(len(c) for m in metrics for c in METRICS[m].columns)
    for m in metrics:
        for c in METRICS[m].columns:
            v = view.metrics[c]
            v = v[np.isfinite(v)]
            stats = (f"median {np.median(v):.4g}  [{np.min(v):.4g}, {np.max(v):.4g}]"
                     if len(v) else "no finite values")
            print(f"  {c.ljust(width)}  {len(v):5d} rows  {stats}")
    return 0


def plot(args) -> int:
    from wsl.eval.phase import phase_grid, plot_phase
    from wsl.outputs import check_output_file
    from wsl.zoos.store import Zoo

    zoo = Zoo.open(args.zoo)
    epoch = args.epoch if args.epoch in ("last", "all") else _int_epoch(args.epoch)
    colors = [c.strip() for c in args.color.split(",") if c.strip()]
    if not colors:
        raise UsageError("--color needs at least one column")
    grids = [phase_grid(zoo, args.x, args.y, c, epoch) for c in colors]
    out = Path(args.out or f"phase-{args.x}-{args.y}.png")
    check_output_file(out, option="--out", force=args.force)
    plot_phase(grids, out, title=f"{zoo.path.name}, epoch {args.epoch}")
    for grid in grids:
        print(grid.table())
        print()
    print(f"wrote {out}")
    return 0


def _int_epoch(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"--epoch must be 'last', 'all' or an epoch number, got {text!r}") \
            from None


def _population_mesh() -> str:
    """The mesh line of a build: each process trains its shards on its own devices."""
    import jax

    from wsl.mesh import describe_mesh
    from wsl.zoos.population import population_mesh

    line = describe_mesh(population_mesh())
    count = jax.process_count()
    return line + (f" in each of {count} processes (shards split between them)"
                   if count > 1 else "")


def info(args) -> int:
    from wsl.zoos.store import Zoo

    print(summarise(Zoo.open(args.zoo)))
    print(f"\nevery shard file is present with its recorded size; `wsl zoo verify {args.zoo}` "
          f"reads the weights (checksums, NaN/inf)")
    return 0


def verify(args) -> int:
    from wsl.zoos.store import ZooError, verify_zoo

    report = verify_zoo(args.zoo)
    print(report.summary())
    if not report.ok:
        more = f" (and {len(report.problems) - 1} more above)" if len(report.problems) > 1 else ""
        raise ZooError(f"{report.problems[0]}{more}")
    return 0


def export(args) -> int:
    if args.all and args.model is not None:
        raise UsageError("--all and --model exclude each other: --all exports every model of the "
                         "zoo, --model ID one")
    if args.best and (args.all or args.model is not None):
        other = "--all" if args.all else "--model"
        raise UsageError(f"--best and {other} exclude each other: --best exports the best model "
                         f"by --by, --model ID a given one, --all every model")
    if args.by is not None:
        from wsl.commands.merge import check_selection_column

        check_selection_column(args.by)
        if not args.best:
            raise UsageError(f"--by {args.by} ranks models for --best; give --best too")
    if args.all:
        return export_all(args)
    if args.model is None and not args.best:
        raise UsageError("say what to export: --model ID (one network), --best [--by COLUMN] "
                         "(the best one by a validation column) or --all (the whole zoo)")
    whole_only = [name for name, value in (("--metrics", args.metrics),
                                           ("--license", args.license), ("--name", args.name))
                  if value is not None] + (["--no-progress"] if args.no_progress else [])
    if whole_only:
        raise UsageError(f"{', '.join(whole_only)} "
                         f"{'applies' if len(whole_only) == 1 else 'apply'} to --all only")
    return export_model(args)


def export_all(args) -> int:
    from wsl.outputs import check_output_dir
    from wsl.zoos.card import LICENSE_UNKNOWN
    from wsl.zoos.export import export_zoo, metrics_format

    wrong = [name for name, given in (("--epoch", args.epoch is not None),
                                      ("--torch-layout", args.torch_layout),
                                      ("--allow-non-finite", args.allow_non_finite),
                                      ("--force", args.force)) if given]
    if wrong:
        raise UsageError(f"{', '.join(wrong)} {'applies' if len(wrong) == 1 else 'apply'} to "
                         f"--model only; --all exports every row "
                         f"as stored (diverged rows stay, flagged) into a new folder")
    if args.format not in (None, "safetensors"):
        raise UsageError(f"--all writes safetensors shards; --format {args.format} applies to "
                         f"--model only")
    if args.out is None:
        raise UsageError("--all needs --out NEW_DIR, the folder to write the export into")
    check_output_dir(args.out)  # before anything is read or written
    metrics_format(args.metrics)  # Parquet asked without pyarrow: refused before any work
    result = export_zoo(args.zoo, args.out, metrics=args.metrics,
                        license=args.license or LICENSE_UNKNOWN, pretty_name=args.name,
                        progress=not args.no_progress)
    if result.metrics_note:
        note("export", result.metrics_note)
    if args.license is None:
        note("export", "license: unknown (pass --license ID, e.g. cc-by-4.0, to set the card's)")
    shards = len(result.weights)
    print(f"wrote {result.folder}: {shards} safetensors shard{'s' if shards > 1 else ''}, "
          f"{result.metrics}, "
          f"manifest.json and the card README.md ({result.bytes:,} bytes); read it back with "
          f"`wsl zoo import --format wsl-export {result.folder} --out DIR`")
    return 0


def card(args) -> int:
    from wsl.outputs import check_output_dir
    from wsl.zoos.card import LICENSE_UNKNOWN, write_card

    check_output_dir(args.out)  # before anything is read or written; never into a zoo
    result = write_card(args.zoo, args.out, license=args.license or LICENSE_UNKNOWN,
                        pretty_name=args.name, force=args.force)
    if args.license is None:
        note("card", "license: unknown (pass --license ID, e.g. cc-by-4.0, to set it)")
    figures = ", ".join(f.path for f in result.figures) or "no figures (no accuracy column)"
    print(f"wrote {result.card} and {figures}")
    return 0


def export_model(args) -> int:
    import numpy as np

    from wsl.outputs import check_output_file
    from wsl.zoos.store import EXPORT_FORMATS, Zoo, ZooError, export_format

    if args.epoch is None:
        args.epoch = "last"
    if args.out is not None:
        try:
            fmt = export_format(args.out, args.format)
        except ZooError as err:
            raise UsageError(f"--format {args.format}: {err}") from None
        check_output_file(args.out, force=args.force)
    else:
        fmt = args.format or "safetensors"
    zoo = Zoo.open(args.zoo)
    chosen = ""
    if args.best:
        args.model, chosen = _best_model(zoo, args.by or "val_acc", args.epoch)
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
    out = args.out or f"model_{args.model}_epoch_{epoch}{EXPORT_FORMATS[fmt]}"
    check_output_file(out, force=args.force)  # before anything is written
    rows.export(0, out, fmt, torch_layout=args.torch_layout, force=args.force,
                allow_non_finite=args.allow_non_finite)
    print(f"wrote {out} ({fmt}, model {args.model}{chosen}, epoch {epoch}, "
          f"{'torch' if args.torch_layout else 'jax'} layout)")
    return 0


def _best_model(zoo, by: str, epoch: str) -> tuple[int, str]:
    """The id of the best model of `zoo` by column `by` at `epoch` ('last' or a number), among
    rows with finite weights and a finite `by`, and a note saying how it was chosen."""
    from wsl.commands.merge import best_models, check_ranking_column, lower_is_better

    if epoch != "last":
        try:
            epoch = int(epoch)
        except ValueError:
            raise UsageError(f"--epoch must be an integer or 'last', got {epoch!r}") from None
    check_ranking_column(zoo, by)
    view = zoo.select(epoch=epoch, finite=True, require=[by])
    (model,), (value,) = best_models(view, by, 1)
    how = "lowest" if lower_is_better(by) else "highest"
    return model, (f", the {how} {by} ({value:.4g}) of {len(view)} models at epoch "
                   f"{epoch}")


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
    from wsl.errors import WslError
    from wsl.outputs import check_output_dir
    from wsl.zoos import importers
    from wsl.zoos.architectures import build as build_architecture

    try:
        config = json.loads(args.arch_config)
    except json.JSONDecodeError as err:
        raise UsageError(f"--arch-config {args.arch_config!r} is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise UsageError(f"--arch-config must be a JSON object of architecture settings, e.g. "
                         f"'{{\"widths\": [32]}}', got {args.arch_config!r}")
    if args.format in ("small-cnn-zoo", "wsl-export") and (args.arch or config):
        raise UsageError(f"--arch and --arch-config do not apply to --format {args.format} (its "
                         f"architecture is fixed)")
    if args.format == "wsl-export" and args.ignore_extra:
        raise UsageError("--ignore-extra does not apply to --format wsl-export (its tensors are "
                         "checked against the zoo it was exported from)")
    if args.format != "small-cnn-zoo" and args.step is not None:
        raise UsageError(f"--step applies to --format small-cnn-zoo only, not {args.format}")
    if config and not args.arch:
        raise UsageError("--arch-config needs --arch NAME (the architecture it configures)")
    arch = None
    if args.arch:
        try:  # check the user's settings here, where the message can name the options
            arch = build_architecture(args.arch, **config)
        except WslError as err:
            raise UsageError(f"--arch {args.arch} --arch-config {args.arch_config}: {err}") \
                from None
    check_output_dir(args.out, allow_zoo=True)  # an import resumes in place, never nested
    progress = not args.no_progress
    if args.format == "small-cnn-zoo":
        zoo = importers.import_small_cnn_zoo(args.source, args.out, step=args.step,
                                             progress=progress)
    elif args.format == "wsl-export":
        zoo = importers.import_wsl_export(args.source, args.out, progress=progress)
    elif args.format == "model-zoos":
        zoo = importers.import_model_zoos(args.source, args.out, architecture=arch,
                                          progress=progress)
    else:
        if not args.arch:
            raise UsageError("--format checkpoints needs --arch (and --arch-config if not "
                             "default)")
        zoo = importers.import_checkpoints(args.source, args.out, architecture=args.arch,
                                           config=config, ignore_extra=args.ignore_extra,
                                           progress=progress)
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

    from wsl.zoos.store import manifest_fingerprint

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
        f"fingerprint  {manifest_fingerprint(zoo.manifest)[:16]} (of its content: a rebuild "
        f"with the same weights keeps it)",
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
        w = max(15, *(len(c) + 2 for c in numeric))  # analysed columns have long names
        lines += ["", f"metrics at each model's last checkpoint ({len(models)} models)",
                  f"  {'column':<{w}}"
                  + "".join(f"{h:>11}" for h in ("mean", "std", "min", "median", "max"))]
        for c in numeric:
            v = last[c].astype(np.float64)
            v = v[np.isfinite(v)]
            stats = (np.mean(v), np.std(v), np.min(v), np.median(v), np.max(v)) if len(v) else \
                (np.nan,) * 5
            # 11 wide for 10-character values such as -0.0008217: columns never touch
            lines.append(f"  {c:<{w}}" + "".join(f"{s:>11.4g}" for s in stats))
    if "test_acc" in last:
        lines += ["", "test accuracy at the last checkpoint", histogram(last["test_acc"])]
    return "\n".join(lines)
