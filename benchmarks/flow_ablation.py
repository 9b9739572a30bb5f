"""Benchmark: which ingredients make unconditional flow matching reach its training population.

An ablation over what DeepWeightFlow-style generators vary: alignment, what the network predicts
(clean weights or velocity), the source's scale, how training times are drawn, minibatch optimal
transport pairing of noise and weights, the velocity network's size and the number of training
steps. Every variant trains a flow generator on the same cached zoo as `benchmarks/generate.py`
(`build_or_open`), samples ``--samples`` networks per seed and scores them. Variants are compared
on the **validation** accuracy of their samples (the choice of what to keep is made there); test
accuracy is printed beside it, scored once per sample, never used to choose.

    python benchmarks/flow_ablation.py --smoke            # seconds: untrained digits MLPs
    python benchmarks/flow_ablation.py --quick            # 256-model zoos, 800 steps
    python benchmarks/flow_ablation.py [--zoos small-cnn] # full zoos, 4000 steps, 3 seeds
    python benchmarks/flow_ablation.py --variants V --seeds 1 --first-seed 2   # seed 2 alone

Runs are kept under ``--out`` and read back when the command is repeated. Prints a table per zoo
and one JSON object as the last line (``--save`` also writes it to
``benchmarks/results/flow_ablation-<mode>.json``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# Appended, not prepended: an installed (non-editable) wsl must win over the repo's wsl/ folder,
# which alone is not the whole package.
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._report import table  # noqa: E402
from benchmarks.generate import ZOOS, build_or_open  # noqa: E402
from wsl.config import override  # noqa: E402
from wsl.eval.generated import Nearness  # noqa: E402
from wsl.eval.intervals import bootstrap_interval  # noqa: E402
from wsl.models.weight_generator import GeneratorConfig  # noqa: E402
from wsl.train import TrainConfig  # noqa: E402
from wsl.train.generator import sample_to_zoo, train_generator  # noqa: E402
from wsl.zoos.datasets import dataset_from_spec  # noqa: E402
from wsl.zoos.scoring import population_metrics  # noqa: E402
from wsl.zoos.store import Zoo  # noqa: E402

# name: (generator config words, training words, alignment, sampling words); each changes one
# thing from "base" (the library's defaults) unless its name joins two. Variants that differ only
# in sampling share one trained generator per seed.
VARIANTS = {
    "base": (["loss_on=velocity"], [], "mean", []),
    "loss-on-data": (["loss_on=data"], [], "mean", []),
    "data+no-align": (["loss_on=data"], [], "none", []),
    "data+logit-normal": (["loss_on=data", "time_sampling=logit-normal"], [], "mean", []),
    "data+ot-pairing": (["loss_on=data", "ot_pairing=true"], [], "mean", []),
    "data+wide": (["loss_on=data", "hidden=1024"], [], "mean", []),
    "data+3x-steps": (["loss_on=data"], ["steps*3"], "mean", []),
    "data+6x-steps": (["loss_on=data"], ["steps*6"], "mean", []),
    # Is the limit the optimisation rather than capacity? A narrower network (a third of the
    # cost per step) and a larger learning rate.
    "data+narrow": (["loss_on=data", "hidden=256"], [], "mean", []),
    "data+narrow+6x-steps": (["loss_on=data", "hidden=256"], ["steps*6"], "mean", []),
    "data+lr3e-3": (["loss_on=data"], ["optimizer.lr=3e-3"], "mean", []),
    # Past 3x steps more steps stopped helping (batch2): is the limit the gradient noise of
    # 64-model batches, or the network's capacity to keep training models apart?
    "data+3x-steps+batch256": (["loss_on=data"], ["steps*3", "batch_size=256"], "mean", []),
    "data+3x-steps+wide": (["loss_on=data", "hidden=1024"], ["steps*3"], "mean", []),
    "data+3x-steps+deep": (["loss_on=data", "depth=6"], ["steps*3"], "mean", []),
    # The output projection reads a 2,048-wide layer: outputs no longer confined to 512 dims
    # (the aligned training models projected on their top 512 principal directions lose 1.6
    # points of validation accuracy on mlp-mnist1d, as much as the samples do).
    "data+head2048": (["loss_on=data", "head_width=2048"], [], "mean", []),
    "data+3x-steps+head2048": (["loss_on=data", "head_width=2048"], ["steps*3"], "mean", []),
    # Three seeds of data+3x-steps+head2048 spread from +0.0 to -1.5 test points around the
    # population (benchmarks/generate.py): does a still wider head, or sampling nearer the
    # mode, make the samples reach it on every seed?
    "data+3x-steps+head4096": (["loss_on=data", "head_width=4096"], ["steps*3"], "mean", []),
    "data+3x-steps+head2048+temperature0.9": (["loss_on=data", "head_width=2048"], ["steps*3"],
                                              "mean", ["temperature=0.9"]),
    # ... or a longer average of the generator's parameters (EMA over ~1,000 steps, not ~100),
    # or twice the models per step?
    "data+3x-steps+head2048+ema0.999": (["loss_on=data", "head_width=2048"],
                                        ["steps*3", "ema_decay=0.999"], "mean", []),
    "data+3x-steps+head2048+batch128": (["loss_on=data", "head_width=2048"],
                                        ["steps*3", "batch_size=128"], "mean", []),
    # Each aligned weight standardised on its own rather than one mean and std per tensor.
    "data+entry-norm": (["loss_on=data", "normalize=entry"], [], "mean", []),
    "velocity+entry-norm": (["normalize=entry"], [], "mean", []),
    "data+rk4x50": (["loss_on=data"], [], "mean", ["steps=50"]),
    "data+3x-steps+rk4x50": (["loss_on=data"], ["steps*3"], "mean", ["steps=50"]),
    "data+temperature0.8": (["loss_on=data"], [], "mean", ["temperature=0.8"]),
    "velocity": (["prediction=velocity"], [], "mean", []),
    "velocity+source0.1": (["prediction=velocity", "source_scale=0.1"], [], "mean", []),
    # DeepWeightFlow's recipe: velocity prediction from a tiny source N(0, 0.01²), RK4 100 steps.
    "velocity+source0.01+rk4x100": (["prediction=velocity", "source_scale=0.01"], [], "mean",
                                    ["steps=100"]),
    "rk4x50": (["loss_on=velocity"], [], "mean", ["steps=50"]),
}
STEPS = {"full": 4000, "quick": 800, "smoke": 20}
SEEDS = {"full": 3, "quick": 1, "smoke": 1}


def train_words(words: list[str], steps: int) -> list[str]:
    """The training config words, with ``steps*k`` meaning k times the mode's step count."""
    out = [f"steps={steps}"]
    for word in words:
        if word.startswith("steps*"):
            out[0] = f"steps={steps * int(word[len('steps*'):])}"
        else:
            out.append(word)
    return out


def run_variant(zoo, name: str, seed: int, workdir: Path, mode: str, samples: int) -> dict:
    """One variant at one seed: train (or read back), sample, score; the row is cached."""
    gen_words, trn_words, align, sample_words = VARIANTS[name]
    if mode == "smoke":
        gen_words = gen_words + ["hidden=64", "depth=1"]
    # The variant's own training words come last, so that they override these defaults.
    words = [f"seed={seed}", "batch_size=64", "ema_decay=0.99", "log.progress=false",
             "checkpoint.every=1000"] + train_words(trn_words, STEPS[mode])
    training = {"generator": gen_words, "train": words, "align": align, "zoo": str(zoo.path)}
    settings = {**training, "sampling": sample_words, "samples": samples}
    saved = workdir / f"{name}-seed{seed}.row.json"
    if saved.exists():
        row = json.loads(saved.read_text())
        if row.get("settings") == settings:
            if "nn_relative" not in row:  # a row written before this column existed
                row["nn_relative"] = nearness(workdir, name, seed, training)
                saved.write_text(json.dumps(row) + "\n")
            return row
    # One folder per training request: a generator is reused by every variant that samples it.
    digest = hashlib.sha256(json.dumps(training, sort_keys=True).encode()).hexdigest()[:10]
    gen_dir = workdir / f"generator-{digest}"
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    train_generator(zoo.path, gen_dir, override(GeneratorConfig(), gen_words),
                    override(TrainConfig(), words), align=align)
    train_seconds = time.perf_counter() - start
    out = workdir / f"{name}-seed{seed}-samples"
    shutil.rmtree(out, ignore_errors=True)
    options = dict(word.split("=", 1) for word in sample_words)
    for key, kind in (("steps", int), ("temperature", float)):
        if key in options:
            options[key] = kind(options[key])
    generated, _ = sample_to_zoo(gen_dir, out, samples, seed=seed, **options)
    row = {"variant": name, "seed": seed, "settings": settings, "train_s": train_seconds,
           "nn_relative": nearness(workdir, name, seed, training),
           "val_acc": [float(v) for v in generated.metrics["val_acc"]],
           "test_acc": [float(v) for v in generated.metrics["test_acc"]]}
    saved.write_text(json.dumps(row) + "\n")
    return row


def nearness(workdir: Path, name: str, seed: int, training: dict) -> float:
    """Median distance of a variant's samples to their nearest aligned training model, over the
    training models' own median distance to their nearest other one (< 1: nearer the training
    models than they are to each other, a sign of copying)."""
    # Alignment depends only on the zoo, the alignment and the seed: any generator folder that
    # shares them holds the same aligned training set.
    for folder in sorted(workdir.glob("*generator*")):
        meta = json.loads((folder / "generator.json").read_text())
        if (meta["selection"]["align"] == training["align"]
                and meta["train"]["seed"] == seed and (folder / "aligned_train.npy").exists()):
            train = np.load(folder / "aligned_train.npy")
            break
    else:
        raise FileNotFoundError(f"no aligned training set for align={training['align']} "
                                f"seed={seed} under {workdir}")
    return Nearness(train)(Zoo.open(workdir / f"{name}-seed{seed}-samples").flat())


def population(zoo) -> dict:
    """The training population's mean validation and test accuracy (last epochs, finite), scored
    as the samples are: on the zoo's dataset, every example of each split. (A zoo may record its
    metrics on a subset: small-cnn's recorded test accuracy is 2 points under its rescored one.)"""
    view = zoo.select(epoch="last", finite=True, activation="most_common", min_rows=2)
    scored = population_metrics(zoo.architecture, view.flat(),
                                dataset_from_spec(zoo.manifest["dataset"]))
    return {split: float(np.mean(scored[f"{split}_acc"])) for split in ("val", "test")}


def summarise(rows: list[dict], reference: dict) -> dict:
    """Mean accuracy over every sample of every seed, with bootstrap 95 % intervals over seeds'
    sample means (one seed: over samples), and the gap to the training population."""
    out = {}
    for split in ("val", "test"):
        per_seed = [float(np.mean(r[f"{split}_acc"])) for r in rows]
        values = per_seed if len(per_seed) >= 3 else [v for r in rows for v in r[f"{split}_acc"]]
        low, high = bootstrap_interval(np.asarray(values), np.mean, seed=0)
        out[split] = {"mean": float(np.mean(per_seed)), "ci95": [low, high],
                      "per_seed": per_seed, "gap": float(np.mean(per_seed)) - reference[split]}
    out["train_s"] = float(np.mean([r["train_s"] for r in rows]))
    out["nn_relative"] = float(np.mean([r["nn_relative"] for r in rows]))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    speed = parser.add_mutually_exclusive_group()
    speed.add_argument("--quick", action="store_true", help="256-model zoos, 800 steps, 1 seed")
    speed.add_argument("--smoke", action="store_true", help="seconds: checks that it runs")
    parser.add_argument("--zoos", default=None,
                        help="comma-separated recipes (default mlp-mnist1d,small-cnn)")
    parser.add_argument("--variants", default=None,
                        help=f"comma-separated (default all): {', '.join(VARIANTS)}")
    parser.add_argument("--seeds", type=int, default=None, help="generator seeds per variant")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds run from this one up (another seed's look at a variant)")
    parser.add_argument("--samples", type=int, default=None, help="networks per seed (100)")
    parser.add_argument("--zoo-dir", type=Path, default=None,
                        help="cached zoos (default as benchmarks/generate.py)")
    parser.add_argument("--out", type=Path, default=None, help="runs (default under --zoo-dir)")
    parser.add_argument("--save", action="store_true",
                        help="write benchmarks/results/flow_ablation-<mode>[-<tag>].json")
    parser.add_argument("--tag", default=None,
                        help="with --save: a separate result file for these variants (e.g. "
                             "a later batch on a rebuilt zoo; README prints every file)")
    args = parser.parse_args(argv)
    if args.tag is not None and not args.tag.replace("-", "").isalnum():
        parser.error(f"--tag {args.tag!r}: use letters, digits and '-'")
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    default = "data+ot-pairing" if args.smoke else ",".join(VARIANTS)
    variants = (args.variants or default).split(",")
    zoos = (args.zoos or ("quick" if args.smoke else "mlp-mnist1d,small-cnn")).split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    unknown += [z for z in zoos if z not in ZOOS or mode not in ZOOS[z][1]]
    if unknown:
        parser.error(f"unknown {unknown}; variants {list(VARIANTS)}")
    if args.first_seed < 0:
        parser.error(f"--first-seed {args.first_seed}: seeds are ≥ 0")
    seeds = args.seeds or SEEDS[mode]
    samples = args.samples or (8 if args.smoke else 100)
    if args.zoo_dir is None and args.smoke:
        with tempfile.TemporaryDirectory(prefix="wsl-bench-ablation-") as scratch:
            return run(args, mode, variants, zoos, seeds, samples, Path(scratch))
    return run(args, mode, variants, zoos, seeds, samples,
               args.zoo_dir or Path(tempfile.gettempdir()) / "wsl-bench-generate")


def run(args, mode, variants, zoos, seeds, samples, zoo_dir: Path) -> int:
    zoo_dir.mkdir(parents=True, exist_ok=True)
    root = args.out or zoo_dir / f"ablation-{mode}"
    results = {}
    for recipe in zoos:
        zoo, _ = build_or_open(recipe, mode, zoo_dir)
        reference = population(zoo)
        summaries = {}
        for name in variants:
            rows = [run_variant(zoo, name, seed, root / recipe, mode, samples)
                    for seed in range(args.first_seed, args.first_seed + seeds)]
            summaries[name] = summarise(rows, reference)
            print(f"{recipe} / {name}: val {summaries[name]['val']['mean']:.4f}", flush=True)
        best = max(summaries, key=lambda n: summaries[n]["val"]["mean"])
        lines = [(name, f"{s['val']['mean']:.4f}",
                  f"[{s['val']['ci95'][0]:.4f}, {s['val']['ci95'][1]:.4f}]",
                  f"{s['val']['gap'] * 100:+.1f}", f"{s['test']['mean']:.4f}",
                  f"{s['test']['gap'] * 100:+.1f}", f"{s['nn_relative']:.2f}",
                  f"{s['train_s']:.0f}",
                  "<- best on val" if name == best else "")
                 for name, s in summaries.items()]
        print(f"\n== {recipe}: training population val {reference['val']:.4f}, test "
              f"{reference['test']:.4f}; {seeds} seed(s) x {samples} samples per variant")
        print(table(("variant", "val acc", "95% CI", "vs pop (pt)", "test acc", "vs pop (pt)",
                     "NN dist (rel.)", "train s", ""), lines), flush=True)
        results[recipe] = {"population": reference, "best_on_val": best, "variants": summaries}
    report = {"benchmark": "flow_ablation", "mode": mode, "seeds": seeds,
              "first_seed": args.first_seed, "samples": samples,
              "steps": STEPS[mode], "variants": {v: VARIANTS[v] for v in variants},
              "zoos": results, "tag": args.tag}
    if args.save:
        suffix = f"-{args.tag}" if args.tag else ""
        path = Path(__file__).parent / "results" / f"flow_ablation-{mode}{suffix}.json"
        path.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
