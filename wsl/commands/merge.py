"""`wsl merge`: align the networks of a zoo and merge them into one (uniform, greedy soup, Fisher).

    wsl merge --zoo ZOO_DIR --method greedy --out merged.safetensors
    wsl merge --zoo ZOO_DIR --models 0-9 12 --method fisher --align mean --out merged.npz

The zoo's dataset (named in its manifest) supplies validation data for the greedy soup and the
Fisher, and test data for the report. The merged model is written in the format its suffix names
(`wsl.zoos.model_files`); a JSON report with accuracies of the merged, the unaligned merge, the
best and the mean model is written next to it (same name, ``.json``) and printed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from wsl.errors import UsageError


def _model_ids(specs: list[str]) -> list[int]:
    ids: list[int] = []
    for spec in specs:
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                if "-" in part:
                    lo, hi = part.split("-", 1)
                    ids.extend(range(int(lo), int(hi) + 1))
                else:
                    ids.append(int(part))
            except ValueError:
                raise UsageError(f"--models takes ids and ranges like '0-9 12'; got "
                                 f"{part!r}") from None
    return ids

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wsl merge", description=__doc__.splitlines()[0])
    p.add_argument("--zoo", required=True,
                   help="zoo directory (manifest.json, metrics.csv, shards)")
    p.add_argument("--method", default="uniform", choices=("uniform", "greedy", "fisher"))
    p.add_argument("--models", nargs="*", default=None,
                   help="model ids to merge (e.g. 0-9 12); default every model")
    p.add_argument("--epoch", default="last",
                   help="checkpoint to take from each model: 'last' (default) or an epoch number")
    p.add_argument("--align", default="best",
                   help="align to the 'best' validation model (default), the population 'mean', a "
                        "model row index, or 'none'")
    p.add_argument("--max-sweeps", type=int, default=100)
    p.add_argument("--restarts", type=int, default=1)
    p.add_argument("--fisher-samples", type=int, default=256,
                   help="validation inputs the Fisher is computed on")
    p.add_argument("--seed", type=int, default=0, help="group orders of weight matching")
    p.add_argument("--out", required=True, help="merged model file (.safetensors, .npz, ...)")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    import jax

    from wsl.eval.merging import merge
    from wsl.zoos.model_files import format_from_suffix, save_model
    from wsl.zoos.store import Zoo

    out = Path(args.out)
    try:
        format_from_suffix(out)
    except ValueError as err:
        raise UsageError(f"--out {err}") from None
    if args.epoch != "last" and not args.epoch.isdigit():
        raise UsageError(f"--epoch takes 'last' or an epoch number, got {args.epoch!r}")
    zoo = Zoo.open(args.zoo).select(
        epoch=args.epoch if args.epoch == "last" else int(args.epoch),
        models=None if args.models is None else _model_ids(args.models),
        finite=True, activation="single", min_rows=2)
    if zoo.dropped.get("diverged"):
        print(f"wsl merge: leaving out {zoo.dropped['diverged']} diverged models")
    if args.align in ("best", "mean", "none"):
        align = args.align
    elif args.align.isdigit() and int(args.align) < len(zoo):
        align = int(args.align)
    else:
        raise UsageError(f"--align takes best, mean, none or a row index below {len(zoo)}; got "
                         f"{args.align!r}")
    arch = zoo.architecture_of(0)
    population = zoo.weights(np.arange(len(zoo)))
    data = zoo.dataset()
    result = merge(arch, population, args.method, x_val=data.x_val, y_val=data.y_val,
                   x_test=data.x_test, y_test=data.y_test, align=align,
                   key=jax.random.key(args.seed), fisher_samples=args.fisher_samples,
                   max_sweeps=args.max_sweeps, restarts=args.restarts)
    save_model(out, zoo.weight_space, jax.tree.map(np.asarray, result.params))
    model_ids = zoo.metrics["model"]
    report = {**result.report, "zoo": str(args.zoo), "epoch": args.epoch,
              "member_models": [int(model_ids[i]) for i in result.members], "out": str(out)}
    report_path = out.with_suffix(".json")
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"merged {report['members']} of {report['models']} models ({args.method}, aligned to "
          f"{args.align}) -> {out}")
    for split in ("val", "test"):
        r = report[split]
        print(f"  {split:4s} accuracy: merged {r['merged_acc']:.4f}, unaligned merge "
              f"{r['unaligned_merge_acc']:.4f}, best model {r['best_model_acc']:.4f}, mean model "
              f"{r['mean_model_acc']:.4f}")
    print(f"  report: {report_path}")
    return 0
