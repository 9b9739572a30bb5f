"""Benchmark: predicting a small CNN's test accuracy from its weights, every encoder side by side.

Each encoder is trained with `train.probe.run_probe` (each model's last checkpoint, split by model
70/15/15, per-tensor normalisation, random hidden-unit permutations as augmentation, early stopping
on validation Kendall τ) once per seed; the table reports test Kendall τ (mean ± std over seeds),
R² and training seconds per seed. StatNN-GBT is scikit-learn's histogram gradient boosting on the
same 7 statistics per tensor; the flat MLP sees the raw (normalised) weight vector.

    python benchmarks/probe.py --smoke            # seconds: 24 untrained MLPs, StatNN, temp dir
    python benchmarks/probe.py --quick            # 256-model zoo, 1 seed, short training: minutes
    python benchmarks/probe.py --zoo Z            # the acceptance run: ≥ 2,000 models, 3 seeds
    python benchmarks/probe.py --zoo-recipe resnet-mnist-wide   # another architecture's zoo
    python benchmarks/probe.py --zoo-recipe resnet-mnist-wide --num-models 2000   # a larger one
    python benchmarks/probe.py --encoders unf,unf:pool=moments  # an encoder option as its own row
    python benchmarks/probe.py --microbatch 4     # gradients over micro-batches: same updates, and
                                                  # NG-GNN steps 1.2-1.3x faster on 2 CPU cores
    python benchmarks/probe.py --quick --augmentations --save benchmarks/results/X.json

``--augmentations`` measures the augmentations of Shamsian et al. 2023 instead
(`wsl.train.augment`): one encoder (``--encoders``, default statnn) trained with each setting of
``--settings`` (none, permute, permute+noise, ...) on the same zoo and the same splits (seed s
splits alike for every setting), ≥ 3 seeds each; the table gives validation τ, test τ with its
95 % t-interval over seeds and the paired test-τ change against ``none``. The setting to use is
the one with the best mean validation τ; test τ is only reported.

Without ``--zoo`` it builds (once, cached under ``--zoo-dir``) a `small-cnn` recipe zoo: 256 models
× 3 epochs with ``--quick``, else 2,000 × 6 epochs (about 25 minutes on 2 cores). Prints the table,
then one JSON object as the last line with ``tau`` (mean test τ) per encoder name,
``tau_runs`` (test τ per seed), ``minus_statnn_paired`` and ``minus_flat_mlp_paired`` (each
encoder's per-seed difference from StatNN and from the flat MLP with its 95 % t-interval: seed s
splits the zoo alike for every encoder), where the interval of the best equivariant encoder on
validation lies against StatNN + 0.02 (``margin_over_statnn``) and each equivariant encoder's
against the flat MLP (``equivariant_over_flat_mlp``).

The full run takes hours on a laptop, so every encoder's runs live under ``--out`` (default: beside
the cached zoos, one folder per zoo, target and step count): run the command again after an
interruption and finished encoders are read back, an unfinished one resumes from its checkpoints
(its s/seed adds the training time its checkpoints record from earlier calls; checkpoints written
before they recorded it add nothing).
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

# Appended, not prepended: an installed (non-editable) wsl must win over the repo's wsl/ folder,
# which alone is not the whole package.
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._report import paired_interval, table  # noqa: E402
from wsl.config import override, to_dict  # noqa: E402
from wsl.errors import WslError  # noqa: E402
from wsl.eval.intervals import side, t_interval  # noqa: E402
from wsl.mesh import device_summary  # noqa: E402
from wsl.models.encoders import build_encoder  # noqa: E402
from wsl.train.config import flat_items  # noqa: E402
from wsl.train.probe import (  # noqa: E402
    DEFAULT_TRAIN,
    ENCODERS,
    PROBE_FILE,
    ProbeConfig,
    run_probe,
)
from wsl.zoos.build import build_zoo  # noqa: E402
from wsl.zoos.recipes import get_recipe  # noqa: E402
from wsl.zoos.store import (  # noqa: E402
    MANIFEST,
    Zoo,
    ZooError,
    manifest_fingerprint,
    same_zoo,
    sha256_file,
)

# The seven, in the order of the published tables; ProbeX is an optional extra row.
DEFAULT_ENCODERS = ("flat_mlp", "statnn", "statnn_gbt", "nfn_np", "nfn_hnp", "ng_gnn",
                    "ng_transformer", "unf")
# The encoders' defaults follow the papers (NFN channels 16-16-5 and a 1000-1000 head; StatNN
# head 1000-1000); the neural-graph encoders run 2 layers of width 64 instead of 4, for 2 CPU cores.
ENCODER_CONFIG = {"ng_gnn": {"num_layers": 2}, "ng_transformer": {"num_layers": 2}}
EQUIVARIANT = ("nfn_np", "nfn_hnp", "ng_gnn", "ng_transformer", "unf")
# Issue 20: the best equivariant encoder (chosen on validation) ≥ StatNN + 0.02 test τ.
MARGIN = 0.02
# --augmentations: settings compared (names joined by "+"), each against no augmentation.
AUGMENT_SETTINGS = ("none", "permute", "permute+noise", "permute+dropout", "permute+prune",
                    "permute+mixup")


def encoder_spec(spec: str) -> tuple[str, dict]:
    """``name[:key=value[:key=value]]`` → (encoder name, its config): the benchmark's defaults for
    the encoder, then the options written after it (``unf:pool=moments``); a value is read as
    JSON where it parses (numbers, lists, true/false), else kept as a string."""
    name, *words = spec.split(":")
    config = dict(ENCODER_CONFIG.get(name, {}))
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise ValueError(f"encoder option {word!r} in {spec!r} is not key=value")
        try:
            config[key] = json.loads(value)
        except json.JSONDecodeError:
            config[key] = value
    return name, config


def folder_name(text: str) -> str:
    """`text` with only word characters and ``.=+-`` left: orbax's store rejects paths with
    brackets."""
    return re.sub(r"[^\w.=+-]", "_", text)


def is_equivariant(spec: str) -> bool:
    return spec.split(":")[0] in EQUIVARIANT


def open_or_build(zoo_dir: Path, quick: bool, smoke: bool = False,
                  recipe: str | None = None, num_models: int | None = None) -> Zoo:
    """The benchmark's zoo, built once and cached under `zoo_dir`: a `small-cnn` zoo (256 models
    × 3 epochs quick, 2,000 full), or the named recipe's (256 models quick, its own size full);
    `num_models` sets the size instead (the folder is then named by it)."""
    if smoke:  # untrained digits MLPs: a zoo in seconds, enough rows for a 70/15/15 split
        path = zoo_dir / "probe-quick-smoke"
        words = ["num_models=24", "epochs=0", "checkpoints=[0]"]
        return build_zoo(get_recipe("quick", words), path, progress=False)
    if recipe is None:
        recipe = "small-cnn"
        words = ["num_models=256", "epochs=3", "checkpoints=[0,3]"] if quick else \
            ["num_models=2000"]
        path = zoo_dir / ("probe-small-cnn-quick" if quick else "probe-small-cnn-2000")
    else:
        words = ["num_models=256"] if quick else []
        path = zoo_dir / f"probe-{recipe}-{'quick' if quick else 'full'}"
    if num_models is not None:
        words = [w for w in words if not w.startswith("num_models=")] + [f"num_models={num_models}"]
        # --quick's shorter training named too: not the full zoo of the same size.
        path = zoo_dir / f"probe-{recipe}-{num_models}{'-quick' if quick else ''}"
    try:
        return Zoo.open(path)
    except ZooError:
        print(f"building {path} ({recipe} {' '.join(words)}) ...", flush=True)
        return build_zoo(get_recipe(recipe, words), path, progress=True)


def finished_report(folder: Path, zoo: Zoo, config: ProbeConfig) -> dict | None:
    """The results a previous run of this very configuration wrote in `folder`, if it finished."""
    try:
        report = json.loads((folder / "results.json").read_text())
    except (OSError, ValueError):
        return None
    wanted = flat_items(json.loads(json.dumps(to_dict(config))))
    # A field added to ProbeConfig (or its `train`) after the run was written reads as its
    # default there: the run did what the default does (a new field's default keeps the old
    # behaviour). `encoder_config` holds overrides only: it has no defaults to fill in.
    defaults = flat_items(json.loads(json.dumps(to_dict(ProbeConfig()))))
    stored = {**{k: v for k, v in defaults.items() if not k.startswith("encoder_config.")},
              **flat_items(report.get("config", {}))}
    if report.get("zoo") != str(zoo.path) or stored != wanted:
        return None
    # The same path may hold another zoo: the run's claim names the zoo it probed.
    try:
        claim = json.loads((folder / PROBE_FILE).read_text())
    except (OSError, ValueError):
        claim = {}
    if not isinstance(claim, dict) or not same_zoo(zoo.path, claim):
        return None
    print(f"{config.encoder}: reusing {folder / 'results.json'}", flush=True)
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small zoo, one seed, short training")
    parser.add_argument("--smoke", action="store_true",
                        help="seconds: 24 untrained digits MLPs, statnn, 20 steps, in a "
                             "temporary --zoo-dir removed at exit (checks it runs)")
    parser.add_argument("--zoo", type=Path, default=None, help="zoo directory (default: build one)")
    parser.add_argument("--zoo-recipe", default=None, metavar="RECIPE",
                        help="build (once) and probe a zoo of this recipe instead of small-cnn, "
                             "e.g. resnet-mnist-wide or transformer-mnist-wide (256 models with "
                             "--quick)")
    parser.add_argument("--num-models", type=int, default=None, metavar="N",
                        help="build the zoo (small-cnn or --zoo-recipe) with N models instead of "
                             "its default size; cached as probe-RECIPE-N[-quick]")
    parser.add_argument("--zoo-dir", type=Path,
                        default=Path(tempfile.gettempdir()) / "wsl-bench-probe")
    parser.add_argument("--encoders", default=None,
                        help="default: the seven; statnn with --augmentations. Options follow "
                             "a name after colons: unf:pool=moments (compared as its own row)")
    parser.add_argument("--seeds", type=int, default=None,
                        help="default 1 quick, 3 full or with --augmentations")
    parser.add_argument("--first-seed", type=int, default=0, metavar="S",
                        help="run seeds S … S + seeds − 1 (each splits the zoo its own way): a "
                             "declared comparison on splits no earlier run has looked at")
    parser.add_argument("--steps", type=int, default=None, help="default 400 quick, 3000 full")
    parser.add_argument("--train", nargs="+", default=[], metavar="KEY=VALUE",
                        help="training settings for every encoder (TrainConfig keys, e.g. "
                             "ema_decay=0.995 optimizer.weight_decay=1e-2)")
    parser.add_argument("--microbatch", type=int, default=0, metavar="M",
                        help="accumulate each step's gradient over micro-batches of M networks "
                             "(train.microbatch: the same updates up to float rounding; on 2 CPU "
                             "cores NG-GNN on the transformer zoo steps 1.2-1.3x faster at 4-8 "
                             "of 32); 0: whole batches")
    parser.add_argument("--target", default="test_acc")
    parser.add_argument("--loss", default="auto", choices=("auto", "bce", "mse"),
                        help="the probe's loss for a numeric target (ProbeConfig.loss)")
    parser.add_argument("--out", type=Path, default=None,
                        help="runs and results per encoder (default: under --zoo-dir); reused "
                             "on rerun")
    parser.add_argument("--augmentations", action="store_true",
                        help="compare augmentation settings instead of encoders")
    parser.add_argument("--settings", default=",".join(AUGMENT_SETTINGS),
                        help="--augmentations: comma-separated settings, names joined by '+'")
    parser.add_argument("--save", type=Path, default=None,
                        help="also write the final JSON object to this file")
    args = parser.parse_args(argv)
    if args.smoke:
        args.quick = False
        args.encoders = args.encoders or "statnn"  # the others only add compile time
        args.seeds = args.seeds or (3 if args.augmentations else 1)
        args.steps = args.steps or 20
        # Only a scratch directory: a smoke run leaves nothing behind.
        args.zoo_dir = Path(tempfile.mkdtemp(prefix="wsl-bench-probe-"))
        atexit.register(shutil.rmtree, args.zoo_dir, True)
    # Commas inside brackets belong to an option's list (unf:head_widths=[64,64]).
    encoders = (re.split(r",(?![^\[]*\])", args.encoders) if args.encoders
                else ["statnn"] if args.augmentations else list(DEFAULT_ENCODERS))
    unknown = [e for e in encoders if e.split(":")[0] not in ENCODERS]
    if unknown:
        parser.error(f"unknown encoders {unknown}; choose from {list(ENCODERS)}")
    if args.augmentations and "statnn_gbt" in encoders:
        parser.error("statnn_gbt trains no network on batches: nothing to augment")
    if args.num_models is not None and (args.zoo is not None or args.smoke):
        parser.error("--num-models sizes the zoo the benchmark builds; it does not apply to "
                     + ("--zoo (a zoo already built)" if args.zoo is not None else "--smoke"))
    if args.num_models is not None and args.num_models < 20:
        parser.error(f"--num-models must be ≥ 20 (a 70/15/15 split of whole models); got "
                     f"{args.num_models}")
    if args.first_seed < 0:  # before a zoo is built for nothing
        parser.error(f"--first-seed must be ≥ 0; got {args.first_seed}")
    seeds = args.seeds or (1 if args.quick and not args.augmentations else 3)
    if args.augmentations and seeds < 3:
        parser.error("--augmentations needs --seeds ≥ 3 for its intervals")
    steps = args.steps or (400 if args.quick else 3000)
    if args.zoo is not None:
        zoo = Zoo.open(args.zoo)
    else:
        args.zoo_dir.mkdir(parents=True, exist_ok=True)
        zoo = open_or_build(args.zoo_dir, args.quick, args.smoke, args.zoo_recipe,
                            args.num_models)
    try:
        train = override(DEFAULT_TRAIN, [f"steps={steps}", f"eval.every={max(steps // 20, 25)}",
                                         f"microbatch={args.microbatch}"])
    except ValueError as err:  # ConfigError naming the field
        parser.error(f"--microbatch: {err}")
    try:
        train = override(train, args.train)
    except ValueError as err:
        parser.error(f"--train: {err}")
    # Runs of other seeds or training settings go to a folder of their own (a probe folder
    # refuses a config other than its own).
    out = args.out or args.zoo_dir / (
        f"runs-{zoo.path.name}-{args.target}-{steps}steps"
        + ("" if args.loss == "auto" else f"-{args.loss}")
        + (f"-from-seed{args.first_seed}" if args.first_seed else "")
        + "".join(f"-{folder_name(word)}" for word in args.train))
    if args.augmentations:
        settings = [s.strip() for s in args.settings.split(",") if s.strip()]
        try:
            configs = {s: ProbeConfig(augment=s.replace("+", ",")) for s in settings}
        except ValueError as err:
            parser.error(str(err))
        result = augmentation_report(zoo, encoders, configs, train, seeds, args.target, out,
                                     args.first_seed)
        mode = "smoke" if args.smoke else "quick" if args.quick else "full"
        result.update({"mode": f"augmentations-{mode}", "steps": steps,
                       "first_seed": args.first_seed, "train_settings": args.train})
        return finish(result, args.save)
    rows, skipped = [], {}
    for name in encoders:  # a name here is a spec: the encoder, then any options
        try:
            encoder, encoder_config = encoder_spec(name)
        except ValueError as err:
            parser.error(str(err))
        config = ProbeConfig(target=args.target, encoder=encoder, seeds=seeds,
                             first_seed=args.first_seed, loss=args.loss,
                             encoder_config=encoder_config, train=train)
        if encoder != "statnn_gbt":
            try:  # an encoder that cannot read this weight space says why, in one line
                build_encoder(encoder, zoo.weight_space, **encoder_config)
            except WslError as err:
                skipped[name] = str(err)
                print(f"{name:15s} skipped: {err}", flush=True)
                continue
        folder = out / folder_name(name.replace(":", "+"))
        report = finished_report(folder, zoo, config)
        if report is None:
            report = run_probe(zoo, config, folder)
        tau, r2 = report["summary"]["kendall_tau"], report["summary"]["r2"]
        runs = sorted(report["runs"], key=lambda run: run["seed"])
        rows.append({"encoder": name, "tau": tau["mean"], "tau_std": tau["std"],
                     "val_tau": report["validation"]["kendall_tau"]["mean"],
                     "tau_runs": [run["kendall_tau"] for run in runs],
                     "val_tau_runs": [run["val"]["kendall_tau"] for run in runs],
                     "r2": r2["mean"], "seconds_per_seed": report["seconds"],
                     "num_rows": report["num_rows"]})
        print(f"{name:15s} τ {tau['mean']:.4f} ± {tau['std']:.4f}  R² {r2['mean']:.3f}  "
              f"{report['seconds']:.0f} s/seed", flush=True)
    tau_runs = {r["encoder"]: r["tau_runs"] for r in rows}
    paired, paired_flat = paired_differences(tau_runs), paired_differences(tau_runs, "flat_mlp")
    head = ("encoder", "Kendall τ", "± std", "− StatNN [paired 95 %]", "R²", "train s/seed")
    lines = [(r["encoder"], f"{r['tau']:.4f}", f"{r['tau_std']:.4f}",
              paired_text(paired.get(r["encoder"])), f"{r['r2']:.3f}",
              f"{r['seconds_per_seed']:.0f}") for r in rows]
    print(f"\n{zoo.path}: {rows[0]['num_rows']} networks (last checkpoints), target "
          f"{args.target}, {seeds} seed(s)"
          + (f" from seed {args.first_seed}" if args.first_seed else "")
          + "".join(f", {word}" for word in args.train)
          + f", {steps} steps\n" + table(head, lines))
    tau = {r["encoder"]: r["tau"] for r in rows}
    val_tau = {r["encoder"]: r["val_tau"] for r in rows}
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    return finish({"benchmark": "probe", "mode": mode, "device": device_summary(),
                   "zoo": str(zoo.path), "zoo_sha256": sha256_file(zoo.path / MANIFEST),
                   "zoo_fingerprint": manifest_fingerprint(zoo.manifest),
                   "num_rows": rows[0]["num_rows"], "seeds": seeds,
                   "first_seed": args.first_seed, "train_settings": args.train,
                   "steps": steps, "microbatch": args.microbatch, "loss": args.loss, "tau": tau,
                   **verdict(tau, val_tau, paired, paired_flat), "val_tau": val_tau,
                   "tau_std": {r["encoder"]: r["tau_std"] for r in rows},
                   "tau_runs": tau_runs,
                   "val_tau_runs": {r["encoder"]: r["val_tau_runs"] for r in rows},
                   "minus_statnn_paired": paired, "minus_flat_mlp_paired": paired_flat,
                   "r2": {r["encoder"]: r["r2"] for r in rows},
                   "seconds_per_seed": {r["encoder"]: r["seconds_per_seed"] for r in rows},
                   "skipped": skipped},
                  args.save)


def paired_differences(tau_runs: dict[str, list[float]],
                       against: str = "statnn") -> dict[str, dict]:
    """Every encoder's test τ minus `against`'s, seed by seed (seed s splits the zoo alike for
    every encoder), with the 95 % Student-t interval of the mean difference; empty without it."""
    reference = tau_runs.get(against)
    if reference is None:
        return {}
    out = {}
    for name, runs in tau_runs.items():
        if name == against or len(runs) != len(reference):
            continue
        per_seed = [float(a - b) for a, b in zip(runs, reference)]
        out[name] = {"per_seed": per_seed, "mean": float(np.mean(per_seed)),
                     "ci95": t_interval(per_seed)}
    return out


def paired_text(difference: dict | None) -> str:
    """`+0.0438 [-0.003, +0.091]` (one seed: the difference alone; none: an en dash)."""
    if difference is None:
        return "–"
    return f"{difference['mean']:+.4f}{paired_interval(difference)}"


def verdict(tau: dict[str, float], val_tau: dict[str, float],
            paired: dict[str, dict] | None = None,
            paired_flat: dict[str, dict] | None = None) -> dict:
    """Test τ of the equivariant encoders against StatNN and the flat MLP. Which equivariant
    encoder (or option setting) is "the best" is chosen on validation τ, never on test τ. With
    per-seed differences (`paired_differences` against StatNN and the flat MLP), where the best
    one's interval lies against StatNN + MARGIN and each one's against the flat MLP (issue 20's
    lines: above only if the whole interval is)."""
    out = {}
    best = max((e for e in tau if is_equivariant(e)), key=val_tau.__getitem__, default=None)
    if best is not None and "statnn" in tau:
        out["best_equivariant"] = best
        out["best_equivariant_minus_statnn"] = tau[best] - tau["statnn"]
        if paired and best in paired and len(paired[best]["per_seed"]) > 1:
            out["best_equivariant_minus_statnn_ci95"] = paired[best]["ci95"]
            out["margin_over_statnn"] = {"margin": MARGIN,
                                         "interval": side(paired[best]["ci95"], MARGIN)}
    if "flat_mlp" in tau:
        out["equivariant_minus_flat_mlp"] = {e: t - tau["flat_mlp"] for e, t in tau.items()
                                             if is_equivariant(e)}
    intervals = {e: d["ci95"] for e, d in (paired_flat or {}).items()
                 if is_equivariant(e) and len(d["per_seed"]) > 1}
    if intervals:
        out["equivariant_over_flat_mlp"] = {e: side(ci, 0.0) for e, ci in intervals.items()}
    return out


def finish(result: dict, save: Path | None) -> int:
    """Print `result` as the last line (and write it to `save`)."""
    if save is not None:
        save.parent.mkdir(parents=True, exist_ok=True)
        save.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0


def interval(values) -> tuple[float, float]:
    """Mean and half-width of the 95 % Student-t interval of the mean over seeds (NaN for one
    seed: no spread to measure)."""
    low, high = t_interval(values)
    return (low + high) / 2, (high - low) / 2 if len(values) > 1 else float("nan")


def augmentation_report(zoo: Zoo, encoders, configs: dict[str, ProbeConfig], train, seeds: int,
                        target: str, out: Path, first_seed: int = 0) -> dict:
    """Every encoder under every augmentation setting; the setting with the best mean validation
    τ is the choice, its test τ what is reported for it."""
    results, lines, num_rows = {}, [], None
    for encoder in encoders:
        per_setting = {}
        for setting, base in configs.items():
            config = dataclasses.replace(base, target=target, encoder=encoder, seeds=seeds,
                                         first_seed=first_seed,
                                         encoder_config=ENCODER_CONFIG.get(encoder, {}),
                                         train=train)
            folder = out / f"augment-{encoder}-{setting}"
            report = finished_report(folder, zoo, config) or run_probe(zoo, config, folder)
            num_rows = report["num_rows"]
            test = [r["kendall_tau"] for r in report["runs"]]
            val = [r["val"]["kendall_tau"] for r in report["runs"]]
            per_setting[setting] = {"augment": list(config.augment), "test_tau_runs": test,
                                    "val_tau_runs": val, "seconds_per_seed": report["seconds"]}
            tau, half = interval(test)
            print(f"{encoder} {setting:18s} val τ {np.mean(val):.4f}  test τ {tau:.4f} ± "
                  f"{half:.4f}  {report['seconds']:.0f} s/seed", flush=True)
        none = per_setting.get("none")
        for setting, row in per_setting.items():
            row["val_tau"], row["val_tau_ci95"] = interval(row["val_tau_runs"])
            row["test_tau"], row["test_tau_ci95"] = interval(row["test_tau_runs"])
            if none is not None and setting != "none":
                # Paired over seeds: seed s splits the zoo alike under every setting.
                delta = np.subtract(row["test_tau_runs"], none["test_tau_runs"])
                row["test_tau_minus_none"], row["test_tau_minus_none_ci95"] = interval(delta)
        chosen = max(per_setting, key=lambda s: per_setting[s]["val_tau"])
        results[encoder] = {"settings": per_setting, "chosen_by_val": chosen,
                            "chosen_test_tau": per_setting[chosen]["test_tau"],
                            "chosen_test_tau_ci95": per_setting[chosen]["test_tau_ci95"]}
        for setting, row in per_setting.items():
            delta = (f"{row['test_tau_minus_none']:+.4f} ± {row['test_tau_minus_none_ci95']:.4f}"
                     if "test_tau_minus_none" in row else "")
            lines.append((encoder, setting + (" *" if setting == chosen else ""),
                          f"{row['val_tau']:.4f}", f"{row['test_tau']:.4f}",
                          f"± {row['test_tau_ci95']:.4f}", delta,
                          f"{row['seconds_per_seed']:.0f}"))
    head = ("encoder", "augment", "val τ", "test τ", "95 % CI", "Δ test τ vs none (paired)",
            "train s/seed")
    print(f"\n{zoo.path}: {num_rows} networks (last checkpoints), target {target}, {seeds} "
          f"seeds, {train.steps} steps; * = chosen by validation τ\n" + table(head, lines))
    strengths = {k: getattr(next(iter(configs.values())), k)
                 for k in ("noise_scale", "dropout_rate", "prune_fraction", "mixup_alpha")}
    return {"benchmark": "probe", "zoo": str(zoo.path), "num_rows": num_rows, "seeds": seeds,
            "target": target, "strengths": strengths, "encoders": results}


if __name__ == "__main__":
    sys.exit(main())
