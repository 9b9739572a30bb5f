"""`wsl merge`: align the networks of a zoo and merge them into one (uniform, greedy soup, Fisher).

    wsl merge --zoo ZOO_DIR --method greedy --out merged.safetensors
    wsl merge --zoo ZOO_DIR --models 0-9 12 --method fisher --align mean --out merged.npz
    wsl merge --zoo ZOO_DIR --top 8 --by val_acc --method uniform --out merged.safetensors

The zoo's dataset (named in its manifest) supplies validation data for the greedy soup and the
Fisher, and test data for the report. The merged model is written in the format its suffix names
(`wsl.zoos.model_files`); a JSON report with accuracies of the merged, the unaligned merge, the
best and the mean model is written next to it (same name, ``.json``) and printed. Models are named
by their ids in the zoo throughout. ``--top K --by COLUMN`` merges only the K best models by a
validation column at the chosen epoch (never a test column: the test split scores the merge);
the report records that selection. Neither file is overwritten unless ``--force`` is given.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from wsl.commands import _help
from wsl.errors import UsageError


def _model_ids(specs: list[str]) -> list[int]:
    ids: list[int] = []
    for spec in specs:
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            lo, dash, hi = part.partition("-")
            try:
                lo, hi = int(lo), int(hi if dash else lo)
            except ValueError:
                raise UsageError(f"--models takes ids and ranges like '0-9 12'; got "
                                 f"{part!r}") from None
            if lo > hi:
                raise UsageError(f"--models {part} is an empty range (reversed); write the lower "
                                 f"id first: {hi}-{lo}")
            ids.extend(range(lo, hi + 1))
    if not ids:
        raise UsageError("--models names no model ids; give ids and ranges like '0-9 12'")
    return ids


DEFAULT_BY = "val_acc"


def check_selection_column(by: str, option: str = "--by") -> str:
    """A column that may choose models: anything but test data (test_* and the gap, which is
    train_acc − test_acc), since the test split later scores what was chosen."""
    if by.startswith("test_") or by == "gap":
        what = "the gap is train_acc − test_acc" if by == "gap" else f"{by} is test data"
        raise UsageError(f"{option} {by}: selection must not use test data ({what}, and the "
                         f"test split scores what is selected); use a validation column such "
                         f"as val_acc or val_loss")
    return by


def lower_is_better(by: str) -> bool:
    """Loss columns rank lowest first; every other column highest first."""
    return by.endswith("loss")


def check_ranking_column(zoo, by: str, option: str = "--by") -> np.ndarray:
    """`by` as float64 values of `zoo`'s rows; a UsageError if the zoo has no such numeric
    column."""
    if by not in zoo.columns:
        raise UsageError(f"{option} {by}: {zoo.path} has no such column; its columns are "
                         f"{', '.join(zoo.columns)}")
    values = np.asarray(zoo.metrics[by])
    if values.dtype.kind not in "biuf":
        raise UsageError(f"{option} {by}: not a numeric column (it holds {values.dtype}); rank "
                         f"models by a number such as val_acc")
    return values.astype(np.float64)


def best_models(zoo, by: str, top: int, option: str = "--by") -> tuple[list[int], list[float]]:
    """The ids of the `top` best models of a selected zoo view (one row per model) by column
    `by`, best first (ties: lower id first), and their values. Rows whose `by` is not finite
    must already be left out (``Zoo.select(require=[by])``)."""
    values = check_ranking_column(zoo, by, option)
    ids = np.asarray(zoo.metrics["model"], np.int64)
    key = values if lower_is_better(by) else -values
    order = np.lexsort((ids, key))[:top]
    return [int(i) for i in ids[order]], [float(v) for v in values[order]]


def _parser() -> argparse.ArgumentParser:
    p = _help.parser("wsl merge", __doc__)
    p.add_argument("--zoo", required=True, metavar="DIR",
                   help="zoo directory (manifest.json, metrics.csv, shards)")
    p.add_argument("--method", default="uniform", choices=("uniform", "greedy", "fisher"),
                   help="uniform average, greedy soup (adds a model only if validation accuracy "
                        "does not fall) or Fisher-weighted average")
    p.add_argument("--models", nargs="*", default=None, metavar="IDS",
                   help="model ids to merge, e.g. 0-9 12 (default: every finite model)")
    p.add_argument("--top", type=int, default=None, metavar="K",
                   help="merge only the K best models by --by (among --models if given), at "
                        "--epoch, leaving out models whose value is not finite")
    p.add_argument("--by", default=None, metavar="COLUMN",
                   help=f"metrics column that ranks models for --top (default: {DEFAULT_BY}; "
                        f"a *_loss column ranks lowest first, any other highest first); never "
                        f"a test column")
    p.add_argument("--epoch", default="last",
                   help="checkpoint to take from each model: 'last' or an epoch number")
    p.add_argument("--align", default="best",
                   help="align to the 'best' validation model, the population 'mean', a model "
                        "id, or 'none'")
    p.add_argument("--max-sweeps", type=int, default=100, metavar="N",
                   help="weight-matching sweeps over the permutation groups, at most")
    p.add_argument("--restarts", type=int, default=1, metavar="N",
                   help="weight-matching restarts from random group orders (the best is kept)")
    p.add_argument("--fisher-samples", type=int, default=256, metavar="N",
                   help="validation inputs the Fisher is computed on")
    p.add_argument("--seed", type=int, default=0, help="seed of weight matching's group orders")
    p.add_argument("--out", required=True, metavar="FILE",
                   help="merged model file (.safetensors, .npz, ...); its report goes beside it "
                        "as .json")
    p.add_argument("--force", action="store_true",
                   help="overwrite --out and its .json report if they exist")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    import jax

    from wsl.eval.errors import EvaluationError
    from wsl.eval.merging import merge
    from wsl.mesh import describe_default_device
    from wsl.outputs import check_output_file
    from wsl.train.trainer import note_dropped
    from wsl.zoos.model_files import format_from_suffix, save_model
    from wsl.zoos.store import Zoo

    # Every option, then both output files, before the zoo is read or anything is written.
    out = Path(args.out)
    try:
        format_from_suffix(out)
    except ValueError as err:
        raise UsageError(f"--out {err}") from None
    if args.epoch != "last" and not args.epoch.isdigit():
        raise UsageError(f"--epoch takes 'last' or an epoch number, got {args.epoch!r}")
    if args.align not in ("best", "mean", "none") and not args.align.isdigit():
        raise UsageError(f"--align takes best, mean, none or a model id; got {args.align!r}")
    for option, value, least in (("--max-sweeps", args.max_sweeps, 1),
                                 ("--restarts", args.restarts, 1),
                                 ("--fisher-samples", args.fisher_samples, 1)):
        if value < least:
            raise UsageError(f"{option} must be ≥ {least}; got {value}")
    if args.by is not None:
        check_selection_column(args.by)
    if args.by is not None and args.top is None:
        raise UsageError(f"--by {args.by} ranks models for --top K; give --top K too")
    if args.top is not None and args.top < 2:
        raise UsageError(f"--top must be ≥ 2 (a merge needs two models); got {args.top}")
    by = check_selection_column(args.by or DEFAULT_BY) if args.top is not None else None
    models = None if args.models is None else _model_ids(args.models)
    report_path = out.with_suffix(".json")
    check_output_file(out, force=args.force)
    check_output_file(report_path, option="--out's report", force=args.force)

    zoo = Zoo.open(args.zoo)
    print(describe_default_device("merging"), flush=True)
    epoch = args.epoch if args.epoch == "last" else int(args.epoch)
    if epoch != "last":
        epochs = sorted({int(e) for e in zoo.metrics["epoch"]})
        if epoch not in epochs:
            raise EvaluationError(f"--epoch {epoch}: {args.zoo} has no checkpoint at epoch "
                                  f"{epoch}; its epochs are {_ranges(epochs)}")
    selection: dict = {"top": args.top, "by": by}
    if by is not None:
        check_ranking_column(zoo, by)  # a missing column is the option's fault, named so
        zoo = zoo.select(epoch=epoch, models=models, finite=True, require=[by], min_rows=2)
        note_dropped(zoo)
        chosen, values = best_models(zoo, by, args.top)
        if len(chosen) < args.top:
            raise EvaluationError(f"--top {args.top}: only {len(chosen)} models at epoch "
                                  f"{args.epoch} have a finite {by}")
        selection.update(values=values)
        zoo = zoo.select(epoch=None, models=chosen, finite=False, activation="single",
                         min_rows=2)
        print(f"selected the {args.top} best models by {by} "
              f"({'lowest' if lower_is_better(by) else 'highest'} first): "
              f"{', '.join(str(i) for i in chosen)}")
    else:
        zoo = zoo.select(epoch=epoch, models=models, finite=True, activation="single",
                         min_rows=2)
        note_dropped(zoo)
    model_ids = [int(m) for m in zoo.metrics["model"]]
    # Best first with --top; otherwise every model merged, by id.
    selection["models"] = chosen if by is not None else model_ids
    if args.align in ("best", "mean", "none"):
        align = args.align
    elif int(args.align) in model_ids:
        align = model_ids.index(int(args.align))
    else:
        raise UsageError(f"--align {args.align}: model {args.align} is not among the models "
                         f"merged ({_ranges(model_ids)})")
    arch = zoo.architecture_of(0)
    population = zoo.weights(np.arange(len(zoo)))
    data = zoo.dataset()
    result = merge(arch, population, args.method, x_val=data.x_val, y_val=data.y_val,
                   x_test=data.x_test, y_test=data.y_test, align=align,
                   key=jax.random.key(args.seed), fisher_samples=args.fisher_samples,
                   max_sweeps=args.max_sweeps, restarts=args.restarts, model_ids=model_ids)
    save_model(out, zoo.weight_space, jax.tree.map(np.asarray, result.params))
    report = {**result.report, "zoo": str(args.zoo), "epoch": args.epoch,
              "selection": selection, "out": str(out)}
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"merged {report['members']} of {report['models']} models ({args.method}, aligned to "
          f"{args.align}) -> {out}")
    if report.get("why"):
        print(f"  {report['why']}")
    for split in ("val", "test"):
        r = report[split]
        print(f"  {split:4s} accuracy: merged {r['merged_acc']:.4f}, unaligned merge "
              f"{r['unaligned_merge_acc']:.4f}, best model (id {report['best_model']}) "
              f"{r['best_model_acc']:.4f}, mean model {r['mean_model_acc']:.4f}")
    print(f"  report: {report_path}")
    return 0


def _ranges(ids: list[int]) -> str:
    """Sorted ids as compact ranges: [0, 1, 2, 5] -> '0-2, 5'."""
    parts, ids = [], sorted(set(ids))
    for i in ids:
        if parts and i == parts[-1][1] + 1:
            parts[-1][1] = i
        else:
            parts.append([i, i])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in parts)
