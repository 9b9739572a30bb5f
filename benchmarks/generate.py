"""Benchmark: weight generators (flow, DDPM, latent DDPM, each also conditioned on accuracy),
scored by an audit a reviewer would accept.

For each benchmark zoo (fixed-seed `mlp-mnist1d`, `small-cnn`, `resnet-mnist` and
`transformer-mnist`, built once and cached under ``--zoo-dir``; the recipes are narrowed to one
activation and optimizer, moderate hyperparameter ranges and one shared initialisation, listed in
ZOOS) and every method, at each of ``--seeds`` generator seeds:

1. train a generator on the aligned last-epoch models (`wsl.train.generator.train_generator`);
2. ``+acc`` methods are conditioned on each model's *validation* accuracy. Their condition map is
   fitted on validation (`wsl.eval.calibration.fit_condition_map`: which condition value reaches
   which mean validation accuracy), they are asked for the population's 90th percentile through
   it, and their calibration (requested vs achieved mean validation accuracy at q10..q90, fresh
   samples) is measured, raw and through the map. Guidance is 1 for every method: no weight is
   tuned;
3. sample ``--samples`` networks and score them: validation accuracy (what every choice is made
   on), and the memorisation audit of `wsl.eval.generated` on the test split (accuracy, median max
   IoU of wrong predictions against every training model beside noised copies, midpoints of
   aligned pairs and k-NN averages, all with bootstrap 95 % intervals; nearest-neighbour distance;
   novel fraction).

Per zoo the best method is the one with the highest mean *validation* accuracy over seeds; test
accuracy is reported beside it, scored once, never chosen on. Means over seeds carry 95 %
Student-t intervals over the per-seed means (one seed: a bootstrap over its samples); a file
written with the earlier two-level bootstrap is upgraded when read back (`upgrade_intervals`).
Sampling 1,000 networks is timed (compilation apart) for the first seed.

    python benchmarks/generate.py --smoke     # seconds: 16 untrained digits MLPs, flow, 1 seed
    python benchmarks/generate.py --quick     # 256-model zoos, 800 steps, 1 seed (over 30 min)
    python benchmarks/generate.py             # 1,000-model zoos, 4,000 steps, 3 seeds (hours)

Prints a table per zoo, then one JSON object as the last line, which quick and full runs also
write to ``benchmarks/results/generate-<mode>.json`` (``python benchmarks/_report.py generate
FILE`` prints README's table from it). Generators, samples and each finished (method, seed) row
live under ``--out`` (default: beside the cached zoos): run the command again after an
interruption and finished rows are read back, an unfinished generator resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

# Appended, not prepended: an installed (non-editable) wsl must win over the repo's wsl/ folder,
# which alone is not the whole package.
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._report import table  # noqa: E402
from wsl.config import override, to_dict  # noqa: E402
from wsl.eval.calibration import (  # noqa: E402
    fit_condition_map,
    measure_calibration,
    write_condition_map,
)
from wsl.eval.generated import compare_with_training  # noqa: E402
from wsl.eval.intervals import bootstrap_interval, side, t_interval  # noqa: E402
from wsl.models.weight_generator import GeneratorConfig  # noqa: E402
from wsl.train import TrainConfig  # noqa: E402
from wsl.train.generator import TrainedGenerator, sample_to_zoo, train_generator  # noqa: E402
from wsl.zoos.build import build_zoo  # noqa: E402
from wsl.zoos.recipes import get_recipe  # noqa: E402
from wsl.zoos.store import Zoo, ZooError  # noqa: E402

# The benchmark zoos are "fixed seed" zoos (Schürholt et al. 2022): every model starts from one
# shared initialisation and sees its own data order, with one activation and optimizer and moderate
# hyperparameter ranges. In zoos of independent initialisations the small CNNs sit in different
# basins even after alignment (aligned midpoints lose 13 points; the note of issue 7 has the
# figures) and no generator here samples working networks from a few hundred of them.
SHARED = ["activation=relu", "optimizer=adam", "init_seeds=1", "data_order=per_model",
          "models_per_shard=128"]
ZOOS = {
    # recipe: (overrides for every mode, {mode: overrides}); a zoo runs in the modes it lists
    "mlp-mnist1d": (SHARED + ["lr=[1e-3,1e-2]", "weight_decay=[1e-6,1e-3]", "init_scale=1.0",
                              "dropout=[0.0,0.2]", "train_fraction=[0.5,1.0]"],
                    {"quick": ["num_models=256", "epochs=20", "checkpoints=[0,20]"],
                     "full": ["num_models=1000", "epochs=40", "checkpoints=[0,40]"]}),
    "small-cnn": (SHARED + ["lr=[2e-3,1e-2]", "weight_decay=[1e-6,1e-4]", "init_scale=0.1",
                            "dropout=[0.0,0.1]", "train_fraction=[0.5,1.0]"],
                  {"quick": ["num_models=256", "epochs=3", "checkpoints=[0,3]"],
                   "full": ["num_models=1000", "epochs=6", "checkpoints=[0,6]"]}),
    # Whole networks beyond MLPs and small CNNs: residual streams with LayerNorm, attention heads.
    # The tiny ResNets of one bare initialisation end in different basins (aligned midpoints lose
    # 23 points on 64 models); children of a parent trained 2 epochs are linearly connected
    # (midpoints +1.6 over the population; `parent_epochs` in wsl.zoos.recipes). The transformers
    # of one initialisation already are (midpoints −0.4).
    "resnet-mnist": (SHARED + ["parent_epochs=2"],
                     {"quick": ["num_models=256"], "full": ["num_models=1000"]}),
    "transformer-mnist": (SHARED, {"quick": ["num_models=256"], "full": ["num_models=1000"]}),
    # Smoke: sklearn's digits load in a moment, where MNIST-1D is generated for seconds; the
    # networks stay untrained (no training program to compile), so each starts from its own draw.
    "quick": (SHARED, {"smoke": ["num_models=16", "epochs=0", "checkpoints=[0]",
                                 "init_seeds=0"]}),
}
# name: (generator config words, sampling options). Guidance 1 everywhere (nothing to tune);
# "+acc" methods ask for q90 of validation accuracy through their condition map.
METHODS = {
    "flow": ([], {}),
    "flow-data": (["loss_on=data"], {}),  # the loss on the weights: see benchmarks/flow_ablation
    # The output projection reads a 2,048-wide layer instead of the 512-wide last block: outputs
    # leave the 512-dimensional subspace that cannot hold 1,000 training models
    # (benchmarks/flow_ablation.py, data+3x-steps+head2048).
    "flow-data-head": (["loss_on=data", "head_width=2048"], {}),
    # The same generator sampled with stochastic Euler steps (`FlowMatching.sample`'s eta): each
    # step refreshes part of the noise (a pilot on a smaller generator: +0.75 validation points
    # at η = 0.5; on this one, seeds 10-15, level with RK4: generate-full-12000steps-6seeds-...).
    "flow-data-head-eta0.25": (["loss_on=data", "head_width=2048"],
                               {"sampler": "euler", "steps": 40, "eta": 0.25}),
    "flow-data-head-eta0.5": (["loss_on=data", "head_width=2048"],
                              {"sampler": "euler", "steps": 40, "eta": 0.5}),
    "ddpm": (["method=ddpm"], {}),
    "latent-ddpm": (["method=latent-ddpm"], {}),
    "flow+acc": (["condition_scalar=val_acc"], {"cond_scalar": "q90"}),
    "flow-data+acc": (["loss_on=data", "condition_scalar=val_acc"], {"cond_scalar": "q90"}),
    "flow-data-head+acc": (["loss_on=data", "head_width=2048", "condition_scalar=val_acc"],
                           {"cond_scalar": "q90"}),
    "ddpm+acc": (["method=ddpm", "condition_scalar=val_acc"], {"cond_scalar": "q90"}),
    "latent-ddpm+acc": (["method=latent-ddpm", "condition_scalar=val_acc"],
                        {"cond_scalar": "q90"}),
}
# Methods that only sample another method's generator differently: they share its training.
SAMPLES_GENERATOR_OF = {"flow-data-head-eta0.25": "flow-data-head",
                        "flow-data-head-eta0.5": "flow-data-head"}
DEFAULT_STEPS = {"full": 4000, "quick": 800, "smoke": 20}  # generator training steps
TARGET_DROP = 0.01  # acceptance: generated mean ≥ training mean − 1 point
INTERVAL = ("95 % Student-t interval over the per-seed means; one seed: percentile bootstrap "
            "over its samples")
TIMED = {"full": 1000, "quick": 1000, "smoke": 32}  # networks in the sampling-speed measurement
SEEDS = {"full": 3, "quick": 1, "smoke": 1}
AUDIT_SEED = 0  # the memorisation audit's noise and bootstrap (generator seeds vary the generator)
MAP_SAMPLES = {"full": 50, "quick": 50, "smoke": 4}  # per grid value of a condition map
MODE_WORDS = {"full": [], "quick": ["ae_steps=600"],
              "smoke": ["ae_steps=20", "hidden=64", "depth=1"]}


def build_or_open(recipe_name: str, mode: str, zoo_dir: Path) -> tuple[Zoo, dict]:
    both, per_mode = ZOOS[recipe_name]
    words = both + per_mode[mode]
    path = zoo_dir / f"{recipe_name}-{mode}"
    record = path.with_suffix(".build.json")
    try:
        zoo = Zoo.open(path)
        info = json.loads(record.read_text()) if record.exists() else {}
        if info.get("overrides") == words:
            return zoo, {**info, "cached": True}
    except ZooError:
        pass
    shutil.rmtree(path, ignore_errors=True)
    start = time.perf_counter()
    zoo = build_zoo(get_recipe(recipe_name, words), path, progress=False)
    info = {"overrides": words, "build_seconds": time.perf_counter() - start,
            "num_models": int(len(zoo.model_ids))}
    record.write_text(json.dumps(info, indent=2) + "\n")
    return zoo, {**info, "cached": False}


def population(zoo: Zoo) -> dict:
    """The selected training population's recorded mean validation accuracy (what the
    generators' selection keeps: last epochs, finite, the most common activation)."""
    view = zoo.select(epoch="last", finite=True, activation="most_common", min_rows=2)
    return {"val": float(np.mean(view.metrics["val_acc"])), "num_models": int(len(view))}


def run_seed(zoo: Zoo, name: str, seed: int, workdir: Path, mode: str, samples: int,
             steps: int, extra: Sequence[str] = ()) -> dict:
    """One method at one generator seed, read back from ``workdir`` when an earlier run
    finished it."""
    words, sample_options = METHODS[name]
    words = words + MODE_WORDS[mode] + list(extra)
    saved = workdir / f"{name}-seed{seed}.row.json"
    settings = {"words": words, "sample_options": sample_options, "steps": steps,
                "samples": samples, "zoo": str(zoo.path), "timed": TIMED[mode] if seed == 0
                else 0, "map_samples": MAP_SAMPLES[mode],
                # the whole config: a row of a generator whose defaults changed is redone
                "generator": to_dict(override(GeneratorConfig(), words))}
    if saved.exists():
        row = json.loads(saved.read_text())
        if _same_settings(row.get("settings"), settings):
            print(f"{name} seed {seed}: reusing {saved}", flush=True)
            return row
        if not _same_training(row.get("settings"), settings):
            shutil.rmtree(generator_dir(workdir, name, seed), ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    row = {**_run_seed(zoo, name, seed, words, sample_options, workdir, samples, steps,
                       settings), "settings": settings}
    saved.write_text(json.dumps(row, indent=1) + "\n")
    return row


def generator_dir(workdir: Path, name: str, seed: int) -> Path:
    """Where a method's generator of one seed lives (shared by methods that sample it alike)."""
    return workdir / f"{SAMPLES_GENERATOR_OF.get(name, name)}-seed{seed}-generator"


def _same_training(saved: dict | None, settings: dict) -> bool:
    """Whether a saved row's generator was trained as `settings` would train it (a row that
    differs only in how it samples keeps the generator, which other methods may share)."""
    keys = ("words", "steps", "zoo", "generator")
    return bool(saved) and _same_settings({k: v for k, v in saved.items() if k in keys},
                                          {k: settings[k] for k in keys})


def _same_settings(saved: dict | None, settings: dict) -> bool:
    """Whether a saved row ran with `settings`. A config field added since then counts at its
    default (the value the row ran with); a changed default does not match."""
    if not saved:
        return False
    generator = {**to_dict(GeneratorConfig()), **saved.get("generator", {})}
    return {**saved, "generator": generator} == settings


def _run_seed(zoo: Zoo, name: str, seed: int, words: list[str], sample_options: dict,
              workdir: Path, samples: int, steps: int, settings: dict) -> dict:
    config = override(GeneratorConfig(), words)
    train_config = override(TrainConfig(), [f"steps={steps}", "batch_size=64", "ema_decay=0.99",
                                            "log.progress=false", "checkpoint.every=1000",
                                            f"seed={seed}"])
    gen_dir = generator_dir(workdir, name, seed)
    start = time.perf_counter()
    train_generator(zoo.path, gen_dir, config, train_config)
    row = {"method": name, "seed": seed, "train_s": time.perf_counter() - start}
    if name in SAMPLES_GENERATOR_OF:  # trained (and timed) by the method it shares
        row["generator_of"] = SAMPLES_GENERATOR_OF[name]
    gen = TrainedGenerator.load(gen_dir)
    if config.condition_scalar:
        # Chosen on validation: the condition value that reaches each target (seed's own
        # samples), then checked on fresh samples of another seed; raw conditioning beside it.
        start = time.perf_counter()
        write_condition_map(gen, fit_condition_map(gen, num=settings["map_samples"],
                                                   seed=seed))
        row["map_s"] = time.perf_counter() - start
        row["calibration"] = measure_calibration(gen, num=samples, seed=seed + 100).to_dict()
        row["calibration_raw"] = measure_calibration(gen, num=samples, seed=seed + 100,
                                                     use_map=False).to_dict()
    shutil.rmtree(workdir / f"{name}-seed{seed}-samples", ignore_errors=True)  # interrupted
    generated, info = sample_to_zoo(gen, workdir / f"{name}-seed{seed}-samples", samples,
                                    seed=seed, **sample_options)
    # The audit's reference populations (noised copies, their bootstrap) are one fixed draw per
    # aligned training set, shared by every method and seed that aligns the zoo alike: scoring
    # them is most of an audit (half an hour for the 1,000 full ResNets), so it is done once.
    report = compare_with_training(generated, gen, seed=AUDIT_SEED,
                                   reference_cache=workdir / "audit-reference").to_dict()
    row.update({
        "val_acc": [float(v) for v in generated.metrics["val_acc"]],
        "test_acc": [float(v) for v in generated.metrics["test_acc"]],
        "evaluation": {k: report[k] for k in (
            "num_generated", "num_train", "generated_acc", "train_acc", "populations",
            "verdicts", "verdict_rule", "noise_baseline_equal_acc", "more_novel_than_noise",
            "novel_fraction", "matched_noise_max_iou", "generated_diversity",
            "train_diversity", "span_distance", "bootstrap") if k in report},
        "align_s": gen.meta["selection"]["align_seconds"],
        "sample_100_s": info["sample_seconds"],
    })
    if settings["timed"]:
        # Time 1,000 networks (smoke: fewer, scaled to 1,000) with the same settings;
        # compilation apart.
        timed = settings["timed"]
        row["compile_s"] = gen.compile(timed, **sample_options)
        start = time.perf_counter()
        gen.sample(timed, seed=1, **sample_options)
        row["sample_1000_s"] = (time.perf_counter() - start) * 1000 / timed
    return row


def seeds_interval(groups: list[list[float]]) -> list[float]:
    """95 % interval of the mean over seeds of each seed's mean: Student t over the per-seed
    means (`wsl.eval.intervals` says why not a bootstrap over three seeds); one seed: the
    percentile bootstrap over its samples."""
    if len(groups) > 1:
        return t_interval([float(np.mean(g)) for g in groups])
    return list(bootstrap_interval(groups[0], np.mean))


def target_verdict(test: dict, target: float) -> dict:
    """Whether the mean test accuracy meets `target`, and where its interval lies."""
    return {"value": target, "met": bool(test["mean"] >= target),
            "interval": side(test["ci95"], target)}


def reinterval(summary: dict) -> dict:
    """A method's summary from a file written before INTERVAL: its multi-seed intervals (two-level
    bootstrap, far narrower than 95 % over three seeds) recomputed from the per-seed means, the
    old ones kept beside them, and the target verdict redone. One seed's interval is unchanged (it
    was, and is, the bootstrap over that seed's samples)."""
    if len(summary.get("seeds", ())) < 2:
        return summary
    summary = dict(summary)
    for split in ("val", "test"):
        old = summary[split]
        summary[split] = {**old, "ci95": t_interval(old["per_seed"]),
                          "ci95_two_level_bootstrap": old["ci95"]}
    summary["target"] = target_verdict(summary["test"], summary["target"]["value"])
    return summary


def upgrade_intervals(report: dict) -> dict:
    """A result file's report with every method's intervals as INTERVAL says (`reinterval` on the
    files written before it); reports that already have them come back unchanged."""
    if report.get("interval") == INTERVAL:
        return report
    zoos = {recipe: {**zoo, "methods": {name: reinterval(m) for name, m in zoo["methods"].items()}}
            for recipe, zoo in report.get("zoos", {}).items()}
    return {**report, "interval": INTERVAL, "zoos": zoos}


def aggregate(rows: list[dict], reference: dict) -> dict:
    """One method's rows (one per seed) as means over seeds with 95 % intervals, the novelty
    verdicts that hold at every seed, and calibration errors averaged over seeds."""
    out = {"method": rows[0]["method"], "seeds": [r["seed"] for r in rows]}
    for split in ("val", "test"):
        groups = [r[f"{split}_acc"] for r in rows]
        per_seed = [float(np.mean(g)) for g in groups]
        out[split] = {"mean": float(np.mean(per_seed)), "ci95": seeds_interval(groups),
                      "per_seed": per_seed,
                      "median": float(np.median(np.concatenate(groups))),
                      "min": float(np.min(np.concatenate(groups))),
                      "max": float(np.max(np.concatenate(groups)))}
    train_test = float(np.mean([r["evaluation"]["train_acc"]["mean"] for r in rows]))
    out["population"] = {"val": reference["val"], "test": train_test}
    out["target"] = target_verdict(out["test"], train_test - TARGET_DROP)
    out["val"]["gap"] = out["val"]["mean"] - reference["val"]
    out["test"]["gap"] = out["test"]["mean"] - train_test
    novelty = {}
    for pop in rows[0]["evaluation"]["populations"]:
        if pop.startswith("noise_"):
            continue
        per = [r["evaluation"]["populations"][pop] for r in rows]
        novelty[pop] = {"median_max_iou": float(np.mean([p["median_max_iou"] for p in per])),
                        "median_max_iou_ci": [float(np.min([p["median_max_iou_ci"][0]
                                                            for p in per])),
                                              float(np.max([p["median_max_iou_ci"][1]
                                                            for p in per]))],
                        "acc_mean": float(np.mean([p["acc"]["mean"] for p in per])),
                        "nn_distance_relative": float(np.mean([p["nn_distance_relative"]
                                                               for p in per]))}
    noise = [r["evaluation"]["noise_baseline_equal_acc"] for r in rows]
    novelty["noise_equal_acc"] = {
        "median_max_iou": float(np.mean([n["median_max_iou"] for n in noise])),
        "median_max_iou_ci": [float(np.min([n["median_max_iou_ci"][0] for n in noise])),
                              float(np.max([n["median_max_iou_ci"][1] for n in noise]))],
        "as_accurate": bool(all(n["as_accurate"] for n in noise))}
    out["novelty"] = novelty
    keys = rows[0]["evaluation"]["verdicts"]
    out["verdicts"] = {k: (None if any(r["evaluation"]["verdicts"][k] is None for r in rows)
                           else bool(all(r["evaluation"]["verdicts"][k] for r in rows)))
                       for k in keys}
    out["novel_fraction"] = float(np.mean([r["evaluation"].get("novel_fraction", np.nan)
                                           for r in rows]))
    if "calibration" in rows[0]:
        out["calibration"] = {}
        for key in ("calibration", "calibration_raw"):
            targets = [row["target"] for row in rows[0][key]["rows"]]
            errors = {t: float(np.mean([next(x["error"] for x in r[key]["rows"]
                                             if x["target"] == t) for r in rows]))
                      for t in targets}
            out["calibration"][key] = {
                "errors": errors, "max_abs_error": float(max(abs(e) for e in errors.values())),
                "calibrated": bool(all(abs(e) <= rows[0][key]["tolerance"]
                                       for e in errors.values())),
                "tolerance": rows[0][key]["tolerance"],
                "per_seed": [r[key] for r in rows]}
    for key in ("train_s", "align_s", "sample_100_s", "map_s"):
        if key in rows[0]:
            out[key] = float(np.mean([r[key] for r in rows]))
    for key in ("sample_1000_s", "compile_s"):
        if key in rows[0]:
            out[key] = rows[0][key]
    return out


def method_table(recipe: str, summaries: list[dict], build: dict, best: str,
                 num_train: int) -> str:
    per_model = build["build_seconds"] / build["num_models"]
    head = ("method", "val acc [95% CI]", "test acc [95% CI]", "vs pop", "target",
            "median/min/max", "gen IoU", "noise", "midpt", "knn-2", "knn-4", "novel/net",
            "calib err", "1000 in s", "vs training")
    lines = []

    def iou(s, name):
        n = s["novelty"].get(name)
        return "-" if n is None else f"{n['median_max_iou']:.2f}"

    for s in summaries:
        ratio = (1000 / s["sample_1000_s"]) * per_model if "sample_1000_s" in s else None
        calib = s.get("calibration", {}).get("calibration")
        mark = " *" if s["method"] == best else ""
        lines.append((
            s["method"] + mark,
            f"{s['val']['mean']:.4f} [{s['val']['ci95'][0]:.3f},{s['val']['ci95'][1]:.3f}]",
            f"{s['test']['mean']:.4f} [{s['test']['ci95'][0]:.3f},{s['test']['ci95'][1]:.3f}]",
            f"{s['test']['gap'] * 100:+.1f}", "met" if s["target"]["met"] else "no",
            f"{s['test']['median']:.3f}/{s['test']['min']:.3f}/{s['test']['max']:.3f}",
            iou(s, "generated"), iou(s, "noise_equal_acc"), iou(s, "midpoints"),
            iou(s, "knn-2"), iou(s, "knn-4"), f"{s['novel_fraction']:.0%}",
            "-" if calib is None else f"{calib['max_abs_error'] * 100:.1f} pt",
            f"{s['sample_1000_s']:.2f}" if "sample_1000_s" in s else "-",
            f"{ratio:.0f}x" if ratio else "-"))
    source = "cached build" if build.get("cached") else "built in this run"
    pop = summaries[0]["population"]
    return (f"\n== {recipe}: {num_train} training models, "
            f"population val {pop['val']:.4f}, test {pop['test']:.4f}; population trainer "
            f"{per_model:.3f} s/model ({source}); * = best on validation\n"
            + table(head, lines))


def merge_earlier(report: dict, path: Path) -> dict:
    """`report` plus what the file at `path` holds of the same experiment (mode, steps, samples,
    seeds, words): zoos this run did not touch, and methods it did not run on a zoo it did — if
    the zoo is the same build (same overrides and training population). Otherwise the file's
    rows are dropped, so a table never mixes zoos. The best method is chosen again over all."""
    try:
        earlier = upgrade_intervals(json.loads(path.read_text()))
    except (OSError, ValueError):
        return report
    # Files from before --words ran without any, and from before --first-seed, from seed 0.
    unset = {"extra_words": [], "first_seed": 0}
    same = ("mode", "steps", "samples", "seeds", "first_seed", "extra_words")
    if any(earlier.get(k, unset.get(k)) != report.get(k, unset.get(k)) for k in same):
        return report
    zoos, overrides = dict(earlier.get("zoos", {})), dict(earlier.get("zoo_overrides", {}))
    for recipe, new in report["zoos"].items():
        old = zoos.get(recipe)
        methods = dict(new["methods"])
        if (old is not None and overrides.get(recipe) == report["zoo_overrides"][recipe]
                and old["population"] == new["population"]):
            methods = {**old["methods"], **methods}
        best = max(methods.values(), key=lambda m: m["val"]["mean"])["method"]
        zoos[recipe] = {**new, "best_on_val": best, "methods": methods}
    overrides.update(report["zoo_overrides"])
    return {**report, "zoo_overrides": overrides, "zoos": zoos}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    speed = parser.add_mutually_exclusive_group()
    speed.add_argument("--quick", action="store_true", help="small zoos, short training")
    speed.add_argument("--smoke", action="store_true",
                       help="seconds: 16 untrained digits MLPs, flow only, 20 steps, in a "
                            "temporary directory unless --zoo-dir is given (checks it runs)")
    parser.add_argument("--zoos", default=None,
                        help="comma-separated recipes (default: every zoo of the mode; smoke: "
                             "quick)")
    parser.add_argument("--methods", default=None,
                        help="comma-separated methods (default all; smoke: flow+acc)")
    parser.add_argument("--seeds", type=int, default=None,
                        help="generator seeds per method (default 3 full, 1 quick and smoke)")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="the first generator seed (default 0): fresh seeds for a declared "
                             "test saves to generate-<mode>[-<steps>steps]-<n>seeds-from<first>"
                             ".json")
    parser.add_argument("--samples", type=int, default=None,
                        help="networks per evaluation (default 100; smoke: 16)")
    parser.add_argument("--steps", type=int, default=None,
                        help="generator training steps (default 800 quick, 4000 full, 20 smoke; "
                             "another count saves to generate-<mode>-<steps>steps.json)")
    parser.add_argument("--zoo-dir", type=Path, default=None,
                        help="cached zoos (default: wsl-bench-generate in the temporary "
                             "directory; smoke: a new temporary directory, removed at the end)")
    parser.add_argument("--out", "--keep", type=Path, default=None,
                        help="generators, samples and finished rows (default: under --zoo-dir)")
    parser.add_argument("--no-save", action="store_true",
                        help="do not write benchmarks/results/generate-<mode>.json (which "
                             "otherwise keeps the file's rows of the same zoo builds that this "
                             "run did not redo)")
    parser.add_argument("--words", default="",
                        help="extra generator config words for every method, space-separated "
                             "(an ablation of a library default, e.g. "
                             "'scalar_embedding=sinusoidal'); needs --no-save")
    args = parser.parse_args(argv)
    if args.words and not args.no_save:
        parser.error("--words runs an ablation, not the benchmark: add --no-save")
    try:
        override(GeneratorConfig(), args.words.split())
    except ValueError as error:  # ConfigError: an unknown key or a bad value, named
        parser.error(f"--words: {error}")
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    steps = args.steps or DEFAULT_STEPS[mode]
    samples = args.samples or (16 if args.smoke else 100)
    seeds = args.seeds or SEEDS[mode]
    methods = (args.methods or ("flow+acc" if args.smoke else ",".join(METHODS))).split(",")
    zoos = (args.zoos or ",".join(z for z in ZOOS if mode in ZOOS[z][1])).split(",")
    unknown = [m for m in methods if m not in METHODS]
    unknown += [z for z in zoos if z not in ZOOS or mode not in ZOOS[z][1]]
    if unknown:
        parser.error(f"unknown {unknown}; {mode} zoos "
                     f"{[z for z in ZOOS if mode in ZOOS[z][1]]}, methods {list(METHODS)}")
    if seeds < 1:
        parser.error(f"--seeds must be ≥ 1, got {seeds}")
    if args.first_seed < 0:
        parser.error(f"--first-seed must be ≥ 0, got {args.first_seed}")
    if args.zoo_dir is None and args.smoke:
        with tempfile.TemporaryDirectory(prefix="wsl-bench-generate-") as scratch:
            return run(args, mode, steps, samples, seeds, methods, zoos, Path(scratch))
    default = Path(tempfile.gettempdir()) / "wsl-bench-generate"
    return run(args, mode, steps, samples, seeds, methods, zoos, args.zoo_dir or default)


def run(args, mode: str, steps: int, samples: int, seeds: int, methods: list[str],
        zoos: list[str], zoo_dir: Path) -> int:
    zoo_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    extra = args.words.split()
    # Runs of other words in their own folder: a row's generator is redone when its config differs.
    root = args.out or zoo_dir / "-".join([f"runs-{mode}-{steps}", *extra])
    for recipe in zoos:
        zoo, build = build_or_open(recipe, mode, zoo_dir)
        reference = population(zoo)
        summaries = []
        for method in methods:
            rows = [run_seed(zoo, method, seed, root / recipe, mode, samples, steps, extra)
                    for seed in range(args.first_seed, args.first_seed + seeds)]
            summaries.append(aggregate(rows, reference))
        best = max(summaries, key=lambda s: s["val"]["mean"])
        print(method_table(recipe, summaries, build, best["method"], reference["num_models"]),
              flush=True)
        results[recipe] = {
            "best_on_val": best["method"], "population": best["population"],
            "num_train": reference["num_models"],
            "build_s_per_model": build["build_seconds"] / build["num_models"],
            "methods": {s["method"]: s for s in summaries},
        }
    report = {"benchmark": "generate", "mode": mode, "steps": steps, "samples": samples,
              "seeds": seeds, "first_seed": args.first_seed,
              "zoo_overrides": {z: ZOOS[z][0] + ZOOS[z][1][mode] for z in zoos},
              "extra_words": extra,
              "protocol": "every choice on validation accuracy of the samples; test scored once; "
                          "guidance 1; +acc methods sampled at q90 through a condition map "
                          "fitted on validation",
              "interval": INTERVAL, "zoos": results}
    if mode != "smoke" and not args.no_save:
        # Another step count is another experiment: its own file beside the mode's.
        suffix = "" if steps == DEFAULT_STEPS[mode] else f"-{steps}steps"
        if args.first_seed:
            suffix += f"-{seeds}seeds-from{args.first_seed}"
        path = Path(__file__).resolve().parent / "results" / f"generate-{mode}{suffix}.json"
        report = merge_earlier(report, path)
        path.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {path}", flush=True)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
