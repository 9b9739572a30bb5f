"""`wsl merge`: align the networks of a zoo and merge them into one (uniform, greedy soup, Fisher).

    wsl merge --zoo ZOO_DIR --method greedy --out merged.safetensors
    wsl merge --zoo ZOO_DIR --models 0-9 12 --method fisher --align mean --out merged.npz

The zoo's dataset (named in its manifest) supplies validation data for the greedy soup and the
Fisher, and test data for the report. The merged model is written in the format its suffix names
(`wsl.zoos.model_files`); a JSON report with accuracies of the merged, the unaligned merge, the
best and the mean model is written next to it (same name, ``.json``) and printed. Models are named
by their ids in the zoo throughout. Neither file is overwritten unless ``--force`` is given.
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


def _parser() -> argparse.ArgumentParser:
    p = _help.parser("wsl merge", __doc__)
    p.add_argument("--zoo", required=True, metavar="DIR",
                   help="zoo directory (manifest.json, metrics.csv, shards)")
    p.add_argument("--method", default="uniform", choices=("uniform", "greedy", "fisher"),
                   help="uniform average, greedy soup (adds a model only if validation accuracy "
                        "does not fall) or Fisher-weighted average")
    p.add_argument("--models", nargs="*", default=None, metavar="IDS",
                   help="model ids to merge, e.g. 0-9 12 (default: every finite model)")
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
    models = None if args.models is None else _model_ids(args.models)
    report_path = out.with_suffix(".json")
    check_output_file(out, force=args.force)
    check_output_file(report_path, option="--out's report", force=args.force)

    zoo = Zoo.open(args.zoo)
    print(_devices_line(), flush=True)
    epoch = args.epoch if args.epoch == "last" else int(args.epoch)
    if epoch != "last":
        epochs = sorted({int(e) for e in zoo.metrics["epoch"]})
        if epoch not in epochs:
            raise EvaluationError(f"--epoch {epoch}: {args.zoo} has no checkpoint at epoch "
                                  f"{epoch}; its epochs are {_ranges(epochs)}")
    zoo = zoo.select(epoch=epoch, models=models, finite=True, activation="single", min_rows=2)
    note_dropped(zoo)
    model_ids = [int(m) for m in zoo.metrics["model"]]
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
    report = {**result.report, "zoo": str(args.zoo), "epoch": args.epoch, "out": str(out)}
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


def _devices_line() -> str:
    """The mesh line of `wsl probe` and `wsl gen train`, for a merge: it is not sharded, so it
    runs on JAX's default device whatever else is there."""
    import jax

    devices = jax.devices()
    line = f"mesh: 1 device ({devices[0].platform})"
    if len(devices) > 1:
        line += f"; merging is not sharded, {len(devices)} {devices[0].platform} devices available"
    return line
