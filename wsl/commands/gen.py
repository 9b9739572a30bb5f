"""`wsl gen`: train a weight generator on a zoo, sample networks into a zoo, evaluate them.

    wsl gen train --zoo Z --out G [--method flow|ddpm|latent-ddpm] [--min-acc A] [--no-progress]
                  [key=value ...]
    wsl gen train --list-keys
    wsl gen sample G -n 100 --out S [--seed 0] [--sampler heun] [--steps 20]
                   [--cond-scalar 0.9|q90] [--guidance 2] [--task mnist8:0-3-5-7-9:none]
    wsl gen eval S --generator G [--no-calibration]
    wsl gen calibrate G [-n 100] [--seed 0]

``key=value`` words set fields of the generator config (``hidden=256 backbone=transformer``) or,
prefixed with ``train.``, of the training config (``train.steps=5000 train.optimizer.lr=3e-4``);
``wsl gen train --list-keys`` prints every key with its default and type.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from wsl.commands import _help
from wsl.errors import UsageError
from wsl.models.weight_generator import METHODS, scalar_condition


def calibration_report(generator, out: Path, num: int, seed: int, sample_options=None) -> dict:
    """Print and write (`calibration.json`, `calibration.png`) requested vs achieved accuracy of
    a scalar-conditioned generator at the population's q10..q90 (fresh samples of `seed`): raw,
    and through its condition map when it has one."""
    from wsl.eval.calibration import measure_calibration, plot_calibration

    sample_options = sample_options or {}
    results, labels = [measure_calibration(generator, num=num, seed=seed, use_map=False,
                                           **sample_options)], ["raw condition"]
    if generator.condition_map is not None:
        results.append(measure_calibration(generator, num=num, seed=seed, use_map=True,
                                           **sample_options))
        labels.append("condition map (fitted on validation)")
    for result in results:
        print(result.table())
    summary = {label: result.to_dict() for label, result in zip(labels, results)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "calibration.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_calibration(results, labels, out / "calibration.png")
    print(f"wrote {out / 'calibration.json'} and {out / 'calibration.png'}")
    return summary


def report(generated, generator, out: Path, seed: int) -> dict:
    """Print and write (`evaluation.json`, `evaluation.png`) the comparison with training.

    `generator` is a generator folder or a loaded `wsl.train.generator.TrainedGenerator`.
    """
    from wsl.eval.generated import compare_with_training, plot_report

    # The training side of the audit is kept beside the generator: evaluating another sample of
    # the same generator (or the same zoo's other generators' samples, when saved there) reuses it.
    directory = Path(getattr(generator, "directory", generator))
    result = compare_with_training(generated, generator, seed=seed,
                                   reference_cache=directory / "audit-reference")
    print(result.table())
    summary = result.to_dict()
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluation.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_report(result, out / "evaluation.png")
    print(f"wrote {out / 'evaluation.json'} and {out / 'evaluation.png'}")
    return summary


TRAIN_EPILOG = """\
key=value words (wsl gen train --list-keys prints every key, its default and type):
  KEY=VALUE          the generator config: hidden=256 depth=3 backbone=transformer
                     condition_scalar=val_acc sampler=heun sample_steps=20
  train.KEY=VALUE    the training config: train.steps=5000 train.optimizer.lr=3e-4
                     train.batch_size=64 (the same train. prefix as in wsl probe)

Rerunning the same command resumes the training ("resumed from step N (of M)").
"""

SAMPLE_EPILOG = """\
Every accuracy in the printed table (and evaluation.json) is recomputed on the full test split of
the zoo's dataset, the training population's included; a zoo's metrics.csv may have scored fewer
examples (its recipe's eval_examples), which the report names beside the table.
"""


CALIBRATE_EPILOG = """\
A conditioned generator asked for the 90th percentile of validation accuracy need not deliver it.
calibrate samples N networks at each of 13 condition values (evenly from the lowest to the
highest value in the training population), scores them on the validation split (never test),
and keeps the monotone curve from condition to achieved mean accuracy in
GENERATOR/condition_map.json. From then on
`wsl gen sample G --cond-scalar q90` asks for samples whose mean reaches q90 and the map picks the
condition value, under the guidance the map was fitted with. --guidance 1,2,3 fits a map for
each weight and keeps the one whose curve reaches q10..q90 best (validation again). It then
checks the map on fresh samples (seed + 1) at q10..q90 and prints both.
"""


def _parser() -> argparse.ArgumentParser:
    parser = _help.parser("wsl gen", __doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="train, sample, eval or calibrate (wsl gen COMMAND --help)")
    p = _help.subparser(sub, "train", "train a generator on a zoo", epilog=TRAIN_EPILOG)
    p.add_argument("--zoo", required=True, type=Path, metavar="DIR",
                   help="zoo to learn from (each model's last checkpoint)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR",
                   help="generator folder (a rerun into it resumes the same request)")
    p.add_argument("--method", choices=METHODS, default=None,
                   help="what to train (default: method= of the key=value words, else flow)")
    p.add_argument("--min-acc", type=float, default=None, metavar="A",
                   help="train only on models with at least this validation accuracy "
                        "(default: every finite model)")
    p.add_argument("--align", choices=("mean", "first", "none"), default="mean",
                   help="align the population by weight matching to its mean, to its first "
                        "model, or not at all")
    p.add_argument("--max-models", type=int, default=None, metavar="N",
                   help="train on a random subset of at most N models (default: all selected)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars while training (same as train.log.progress=false)")
    p.add_argument("--list-keys", action="store_true",
                   help="print every key=value key (generator keys, train.* keys) with its "
                        "default and type, then exit")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="KEY=VALUE for the generator config, train.KEY=VALUE for training "
                        "(see below and --list-keys)")
    p = _help.subparser(sub, "sample", "sample networks into a zoo and evaluate them",
                        epilog=SAMPLE_EPILOG)
    p.add_argument("generator", type=Path, help="generator folder (from wsl gen train)")
    p.add_argument("-n", "--num", type=int, default=100, metavar="N",
                   help="networks to sample")
    p.add_argument("--out", required=True, type=Path, metavar="DIR",
                   help="new or empty folder for the sampled zoo and its evaluation")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--sampler", default=None,
                   choices=("euler", "heun", "rk4", "ddpm", "ddim"),
                   help="ODE / diffusion sampler (default: the generator's sampler= key, else "
                        "rk4 for flow, ddim for diffusion)")
    p.add_argument("--steps", type=int, default=None, metavar="N",
                   help="sampling steps (default: the generator's sample_steps= key, else 10 for "
                        "rk4, 50 for ddim)")
    p.add_argument("--guidance", type=float, default=None, metavar="W",
                   help="classifier-free guidance weight for a conditioned generator (default: "
                        "the generator's guidance= key, 1.0 unless set)")
    p.add_argument("--temperature", type=float, default=None, metavar="T",
                   help="scale of the starting noise: below 1 samples nearer the modes, less "
                        "diverse (default: the generator's temperature= key, 1.0 unless set); "
                        "choose it on validation accuracy, never test")
    p.add_argument("--eta", type=float, default=None, metavar="ETA",
                   help="noise refreshed at each step, in [0, 1]: stochastic Euler steps for a "
                        "flow (with --sampler euler), DDIM's eta for diffusion (default: the "
                        "generator's eta= key, 0: deterministic); choose it on validation")
    p.add_argument("--cond-class", default=None, metavar="CLASS",
                   help="class of the class condition, e.g. relu for condition_class=activation "
                        "(default: unconditional)")
    p.add_argument("--cond-scalar", type=scalar_condition, default=None, metavar="VALUE|qNN",
                   help="target of the scalar condition: a value (0.93) or a quantile of the "
                        "training population's values (q50, q90, q100) (default: unconditional)")
    p.add_argument("--task", default=None, metavar="SPEC",
                   help="a task-conditioned generator: the task to sample for "
                        "(SOURCE:CLASSES:TRANSFORM); samples are scored on its splits")
    p.add_argument("--support", type=int, default=10, metavar="N",
                   help="with --task: support examples per class that describe the task")
    p.add_argument("--no-eval", action="store_true", help="skip the comparison with training")
    p = _help.subparser(sub, "eval", "compare a generated zoo with its generator's training zoo",
                        epilog=SAMPLE_EPILOG)
    p.add_argument("zoo", type=Path, help="generated zoo (from wsl gen sample)")
    p.add_argument("--generator", required=True, type=Path, metavar="DIR",
                   help="generator folder whose training population is the reference")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise baselines")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="folder for evaluation.json/.png (default: the generated zoo itself; "
                        "required for a zoo that is not generated)")
    p.add_argument("--no-calibration", action="store_true",
                   help="for a scalar-conditioned generator, skip sampling at q10..q90 to "
                        "report requested vs achieved accuracy (calibration.json/.png)")
    p.add_argument("--calibration-samples", type=int, default=100, metavar="N",
                   help="networks sampled per calibration target")
    p = _help.subparser(sub, "calibrate",
                        "fit a conditioned generator's condition map on validation",
                        epilog=CALIBRATE_EPILOG)
    p.add_argument("generator", type=Path, help="generator folder trained with "
                                                 "condition_scalar=val_acc (or another val_/train_ "
                                                 "acc or loss column)")
    p.add_argument("-n", "--num", type=int, default=100, metavar="N",
                   help="networks sampled at each grid value of the condition")
    p.add_argument("--seed", type=int, default=0, help="sampling seed of the map (the check "
                                                       "after it uses seed + 1)")
    p.add_argument("--guidance", type=_weights, default=None, metavar="W[,W...]",
                   help="guidance weight the map is for (default: the generator's); several "
                        "(e.g. 1,2,3): a map for each, keeping the one that reaches q10..q90 "
                        "best on validation (the smaller weight on a tie)")
    return parser


def _weights(text: str) -> tuple[float, ...]:
    # Checked here as well as in choose_condition_map: a bad option is a usage error (exit 2).
    try:
        weights = tuple(float(w) for w in text.split(","))
    except ValueError:
        weights = ()
    if not weights or any(not w >= 0 for w in weights):
        raise argparse.ArgumentTypeError(f"guidance weights are numbers ≥ 0 separated by "
                                         f"commas, e.g. 1,2,3; got {text!r}")
    return weights


def list_keys() -> str:
    """Every key=value key `wsl gen train` takes, grouped, with defaults and types."""
    from wsl.models.weight_generator import GeneratorConfig
    from wsl.train.generator import DEFAULT_TRAIN

    return _help.format_keys([
        ("generator (KEY=VALUE; --method sets method)", _help.config_keys(GeneratorConfig())),
        ("training (train.KEY=VALUE)", _help.config_keys(DEFAULT_TRAIN, "train."))])


def _refuse_bare_training_keys(gen_words: list[str], generator_config, train_config) -> None:
    """A training key written without its ``train.`` prefix (``steps=500``, which `wsl probe`
    accepts bare) gets an error that names the word to write, not the generator's key list."""
    import dataclasses

    generator = {f.name for f in dataclasses.fields(generator_config)}
    training = {f.name for f in dataclasses.fields(train_config)}
    for word in gen_words:
        key = word.partition("=")[0].partition(".")[0]
        if key in training and key not in generator:
            raise UsageError(f"{word!r} sets a training key: write train.{word} (wsl gen train "
                             f"takes generator keys bare and training keys after train.)")


def main(argv: list[str]) -> int:
    parser = _parser()
    if argv[:1] == ["train"] and _help.asks_for(argv, "--list-keys"):
        _help.relax_required(_help.subcommand(parser, "train"))  # it needs no zoo
    args = _help.parse_with_overrides(parser, argv)
    if args.command == "train" and args.list_keys:
        print(list_keys())
        return 0
    from wsl.config import ConfigError, override
    from wsl.mesh import describe_default_device, describe_mesh
    from wsl.models.weight_generator import GeneratorConfig
    from wsl.train.generator import (
        DEFAULT_TRAIN,
        SAMPLING_SETTINGS,
        TrainedGenerator,
        check_sample_out,
        sample_to_zoo,
        train_generator,
    )
    from wsl.train.layout import mesh_from_config
    from wsl.zoos.store import Zoo

    if args.command == "train":
        if args.max_models is not None and args.max_models < 2:
            raise UsageError(f"--max-models must be ≥ 2 (a generator learns from a population); "
                             f"got {args.max_models}")
        if args.min_acc is not None and not 0 <= args.min_acc <= 1:
            raise UsageError(f"--min-acc is a validation accuracy in [0, 1]; got {args.min_acc}")
        gen_words = [w for w in args.overrides if not w.startswith("train.")]
        train_words = [w.removeprefix("train.") for w in args.overrides if w.startswith("train.")]
        _refuse_bare_training_keys(gen_words, GeneratorConfig, DEFAULT_TRAIN)
        if args.no_progress:
            train_words.insert(0, "log.progress=false")  # an explicit train.log.progress wins
        # --method joins the words (last, so it wins): the config checks them all together,
        # e.g. prediction=noise only with a diffusion method.
        method = [f"method={args.method}"] if args.method else []
        try:
            config = override(GeneratorConfig(), gen_words + method)
            train_config = override(DEFAULT_TRAIN, train_words)
        except ConfigError as err:
            raise _help.unknown_key_hint(err, "wsl gen train") from err
        print(describe_mesh(mesh_from_config(train_config.mesh)), flush=True)
        train_generator(args.zoo, args.out, config, train_config,
                        min_acc=args.min_acc, align=args.align, max_models=args.max_models)
        print(f"generator written to {args.out}; sample it with "
              f"`wsl gen sample {args.out} -n 100 --out SAMPLES`")
    elif args.command == "sample":
        if args.num < 1:
            raise UsageError(f"-n/--num must be ≥ 1; got {args.num}")
        if args.steps is not None and args.steps < 1:
            raise UsageError(f"--steps must be ≥ 1; got {args.steps}")
        check_sample_out(args.out)  # before the generator is loaded
        print(describe_default_device("sampling"), flush=True)
        generator = TrainedGenerator.load(args.generator)
        zoo, info = sample_to_zoo(generator, args.out, args.num, seed=args.seed,
                                  sampler=args.sampler, steps=args.steps, guidance=args.guidance,
                                  temperature=args.temperature, eta=args.eta,
                                  cond_class=args.cond_class,
                                  cond_scalar=args.cond_scalar, task=args.task,
                                  support=args.support)
        print(f"sampled {args.num} networks in {info['sample_seconds']:.2f} s (plus "
              f"{info['compile_seconds']:.1f} s compiling) into {args.out}")
        if args.task is not None:
            # Its training population holds other tasks: compare inits with `wsl transfer`.
            acc = zoo.metrics["val_acc"]
            print(f"validation accuracy on {args.task}: mean {acc.mean():.4f}, best "
                  f"{acc.max():.4f} (compare with other inits: wsl transfer --generator "
                  f"{args.generator} --task {args.task})")
        elif not args.no_eval:
            report(zoo, generator, args.out, args.seed)
    elif args.command == "eval":
        zoo = Zoo.open(args.zoo)
        if args.out is None:
            # A generated zoo keeps its evaluation beside its samples; any other zoo is left as is.
            if not zoo.manifest.get("generated", False):
                raise UsageError(f"{args.zoo} is not a generated zoo; give --out DIR for its "
                                 f"evaluation (nothing is written into a trained zoo)")
            out = args.zoo
        else:
            from wsl.outputs import check_output_dir

            # Created only when there is something to write: a refused evaluation leaves no folder.
            out = check_output_dir(args.out)
        if args.calibration_samples < 2:
            raise UsageError(f"--calibration-samples must be ≥ 2; got {args.calibration_samples}")
        print(describe_default_device("evaluation"), flush=True)
        generator = TrainedGenerator.load(args.generator)
        if generator.meta.get("task"):
            spec = (zoo.manifest.get("dataset") or {}).get("options", {}).get("spec")
            print(f"task-conditioned generator: the samples are scored on its task {spec}; its "
                  f"training models were trained on other tasks (their accuracy here is no "
                  f"target; the memorisation audit compares predictions on the same inputs)")
        report(zoo, generator, out, args.seed)
        if generator.meta.get("scalar") and not args.no_calibration:
            provenance = zoo.manifest.get("provenance") or {}
            options = {k: provenance.get(k) for k in SAMPLING_SETTINGS}
            calibration_report(generator, out, args.calibration_samples, args.seed + 1, options)
    else:  # calibrate
        from wsl.eval.calibration import choose_condition_map, write_condition_map

        if args.num < 2:
            raise UsageError(f"-n/--num must be ≥ 2; got {args.num}")
        print(describe_default_device("calibration"), flush=True)
        generator = TrainedGenerator.load(args.generator)
        guidances = args.guidance or (generator.config.guidance,)
        condition_map = choose_condition_map(generator, guidances=guidances, num=args.num,
                                             seed=args.seed)
        write_condition_map(generator, condition_map)
        if len(guidances) > 1:
            for c in condition_map["guidance_candidates"]:
                print(f"guidance {c['guidance']:g}: the map reaches {c['reach'][0]:.4f} .. "
                      f"{c['reach'][1]:.4f}; q10..q90 fall {c['shortfall'] * 100:.1f} pt "
                      f"outside")
        print(f"condition map ({condition_map['column']} of {args.num} samples per value, "
              f"validation split, guidance {condition_map['sample_options']['guidance']:g}):")
        for c, a, m in zip(condition_map["condition"], condition_map["achieved"],
                           condition_map["monotone"]):
            print(f"  condition {c:+.2f} std -> {a:.4f} (monotone {m:.4f})")
        print(f"wrote {args.generator / 'condition_map.json'}")
        calibration_report(generator, args.generator, args.num, args.seed + 1)
    return 0
