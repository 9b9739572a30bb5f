"""Benchmark: predicting a small CNN's test accuracy from its weights, every encoder side by side.

Each encoder is trained with `eval.probe.run_probe` (each model's last checkpoint, split by model
70/15/15, per-tensor normalisation, random hidden-unit permutations as augmentation, early stopping
on validation Kendall τ) once per seed; the table reports test Kendall τ (mean ± std over seeds),
R² and training seconds per seed. StatNN-GBT is scikit-learn's histogram gradient boosting on the
same 7 statistics per tensor; the flat MLP sees the raw (normalised) weight vector.

    python benchmarks/probe.py --quick            # 256-model zoo, 1 seed, short training: minutes
    python benchmarks/probe.py --zoo Z            # the acceptance run: ≥ 2,000 models, 3 seeds

Without ``--zoo`` it builds (once, cached under ``--zoo-dir``) a `small-cnn` recipe zoo: 256 models
× 3 epochs with ``--quick``, else 2,000 × 6 epochs (about 25 minutes on 2 cores). Prints the table,
then one JSON object as the last line with ``tau`` (mean test τ) per encoder name.

The full run takes hours on a laptop, so every encoder's runs live under ``--out`` (default: beside
the cached zoos, one folder per zoo, target and step count): run the command again after an
interruption and finished encoders are read back, an unfinished one resumes from its checkpoints
(its s/seed then counts only the resumed part).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._report import table  # noqa: E402
from wsl.config import override, to_dict  # noqa: E402
from wsl.eval.probe import DEFAULT_TRAIN, ENCODERS, ProbeConfig, run_probe  # noqa: E402
from wsl.zoos.build import build_zoo  # noqa: E402
from wsl.zoos.recipes import get_recipe  # noqa: E402
from wsl.zoos.store import Zoo, ZooError  # noqa: E402

# The seven, in the order of the published tables; ProbeX is an optional extra row.
DEFAULT_ENCODERS = ("flat_mlp", "statnn", "statnn_gbt", "nfn_np", "nfn_hnp", "ng_gnn",
                    "ng_transformer")
# The encoders' defaults follow the papers (NFN channels 16-16-5 and a 1000-1000 head; StatNN
# head 1000-1000); the neural-graph encoders run 2 layers of width 64 instead of 4, for 2 CPU cores.
ENCODER_CONFIG = {"ng_gnn": {"num_layers": 2}, "ng_transformer": {"num_layers": 2}}
EQUIVARIANT = ("nfn_np", "nfn_hnp", "ng_gnn", "ng_transformer")


def open_or_build(zoo_dir: Path, quick: bool) -> Zoo:
    words = ["num_models=256", "epochs=3", "checkpoints=[0,3]"] if quick else ["num_models=2000"]
    path = zoo_dir / ("probe-small-cnn-quick" if quick else "probe-small-cnn-2000")
    try:
        return Zoo.open(path)
    except ZooError:
        print(f"building {path} ({' '.join(words)}) ...", flush=True)
        return build_zoo(get_recipe("small-cnn", words), path, progress=True)


def finished_report(folder: Path, zoo: Zoo, config: ProbeConfig) -> dict | None:
    """The results a previous run of this very configuration wrote in `folder`, if it finished."""
    try:
        report = json.loads((folder / "results.json").read_text())
    except (OSError, ValueError):
        return None
    if (report.get("zoo") != str(zoo.path)
            or report.get("config") != json.loads(json.dumps(to_dict(config)))):
        return None
    print(f"{config.encoder}: reusing {folder / 'results.json'}", flush=True)
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small zoo, one seed, short training")
    parser.add_argument("--zoo", type=Path, default=None, help="zoo directory (default: build one)")
    parser.add_argument("--zoo-dir", type=Path,
                        default=Path(tempfile.gettempdir()) / "wsl-bench-probe")
    parser.add_argument("--encoders", default=",".join(DEFAULT_ENCODERS))
    parser.add_argument("--seeds", type=int, default=None, help="default 1 quick, 3 full")
    parser.add_argument("--steps", type=int, default=None, help="default 400 quick, 3000 full")
    parser.add_argument("--target", default="test_acc")
    parser.add_argument("--out", type=Path, default=None,
                        help="runs and results per encoder (default: under --zoo-dir); reused on rerun")
    args = parser.parse_args(argv)
    encoders = args.encoders.split(",")
    unknown = [e for e in encoders if e not in ENCODERS]
    if unknown:
        parser.error(f"unknown encoders {unknown}; choose from {list(ENCODERS)}")
    seeds = args.seeds or (1 if args.quick else 3)
    steps = args.steps or (400 if args.quick else 3000)
    if args.zoo is not None:
        zoo = Zoo.open(args.zoo)
    else:
        args.zoo_dir.mkdir(parents=True, exist_ok=True)
        zoo = open_or_build(args.zoo_dir, args.quick)
    train = override(DEFAULT_TRAIN, [f"steps={steps}",
                                     f"eval.every={max(steps // 20, 25)}"])
    out = args.out or args.zoo_dir / f"runs-{zoo.path.name}-{args.target}-{steps}steps"
    rows = []
    for name in encoders:
        config = ProbeConfig(target=args.target, encoder=name, seeds=seeds,
                             encoder_config=ENCODER_CONFIG.get(name, {}), train=train)
        report = finished_report(out / name, zoo, config)
        if report is None:
            report = run_probe(zoo, config, out / name)
        tau, r2 = report["summary"]["kendall_tau"], report["summary"]["r2"]
        rows.append({"encoder": name, "tau": tau["mean"], "tau_std": tau["std"],
                     "r2": r2["mean"], "seconds_per_seed": report["seconds"],
                     "num_rows": report["num_rows"]})
        print(f"{name:15s} τ {tau['mean']:.4f} ± {tau['std']:.4f}  R² {r2['mean']:.3f}  "
              f"{report['seconds']:.0f} s/seed", flush=True)
    head = ("encoder", "Kendall τ", "± std", "R²", "train s/seed")
    lines = [(r["encoder"], f"{r['tau']:.4f}", f"{r['tau_std']:.4f}", f"{r['r2']:.3f}",
                       f"{r['seconds_per_seed']:.0f}") for r in rows]
    print(f"\n{zoo.path}: {rows[0]['num_rows']} networks (last checkpoints), target "
          f"{args.target}, {seeds} seed(s), {steps} steps\n" + table(head, lines))
    tau = {r["encoder"]: r["tau"] for r in rows}
    best_equivariant = max((tau[e] for e in EQUIVARIANT if e in tau), default=None)
    verdict = {}
    if best_equivariant is not None and "statnn" in tau:
        verdict["best_equivariant_minus_statnn"] = best_equivariant - tau["statnn"]
    if "flat_mlp" in tau:
        verdict["equivariant_minus_flat_mlp"] = {e: tau[e] - tau["flat_mlp"]
                                                 for e in EQUIVARIANT if e in tau}
    print(json.dumps({"benchmark": "probe", "mode": "quick" if args.quick else "full",
                      "zoo": str(zoo.path), "num_rows": rows[0]["num_rows"], "seeds": seeds,
                      "steps": steps, "tau": tau, **verdict,
                      "tau_std": {r["encoder"]: r["tau_std"] for r in rows},
                      "r2": {r["encoder"]: r["r2"] for r in rows},
                      "seconds_per_seed": {r["encoder"]: r["seconds_per_seed"] for r in rows}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
