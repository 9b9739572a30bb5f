"""`wsl gen`: train a weight generator on a zoo, sample networks into a zoo, evaluate them.

    wsl gen train --zoo Z --out G [--method flow|ddpm|latent-ddpm] [--min-acc A] [key=value ...]
    wsl gen sample G -n 100 --out S [--seed 0] [--sampler heun] [--steps 20]
                   [--cond-scalar 0.9|q90] [--guidance 2]
    wsl gen eval S --generator G

``key=value`` words set fields of the generator config (``hidden=256 backbone=transformer``) or,
prefixed with ``train.``, of the training config (``train.steps=5000 train.optimizer.lr=3e-4``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from wsl.errors import UsageError
from wsl.models.weight_generator import METHODS


def _scalar(text: str):
    try:
        return float(text)
    except ValueError:
        return text  # a quantile name, checked against the generator's statistics


def report(generated, generator, out: Path, seed: int) -> dict:
    """Print and write (`evaluation.json`, `evaluation.png`) the comparison with training.

    `generator` is a generator folder or a loaded `wsl.train.generator.TrainedGenerator`.
    """
    from wsl.eval.generated import compare_with_training, plot_report

    result = compare_with_training(generated, generator, seed=seed)
    print(result.table())
    summary = result.to_dict()
    (out / "evaluation.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_report(result, out / "evaluation.png")
    print(f"wrote {out / 'evaluation.json'} and {out / 'evaluation.png'}")
    return summary


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wsl gen", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a generator on a zoo")
    p.add_argument("--zoo", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--method", choices=METHODS, default=None)
    p.add_argument("--min-acc", type=float, default=None,
                   help="train only on models with at least this validation accuracy")
    p.add_argument("--align", choices=("mean", "first", "none"), default="mean")
    p.add_argument("--max-models", type=int, default=None)
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p = sub.add_parser("sample", help="sample networks into a zoo and evaluate them")
    p.add_argument("generator", type=Path)
    p.add_argument("-n", "--num", type=int, default=100)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sampler", default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--cond-class", default=None)
    p.add_argument("--cond-scalar", type=_scalar, default=None,
                   help="target of the scalar condition: a value (0.93) or a quantile of the "
                        "training population's values (q50, q90, q100)")
    p.add_argument("--no-eval", action="store_true", help="skip the comparison with training")
    p = sub.add_parser("eval", help="compare a generated zoo with its generator's training zoo")
    p.add_argument("zoo", type=Path)
    p.add_argument("--generator", required=True, type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None,
                   help="folder for evaluation.json/.png (default: the generated zoo itself; "
                        "required for a zoo that is not generated)")
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from wsl.config import override
    from wsl.models.weight_generator import GeneratorConfig
    from wsl.train.generator import (
        DEFAULT_TRAIN,
        TrainedGenerator,
        check_sample_out,
        sample_to_zoo,
        train_generator,
    )
    from wsl.zoos.store import Zoo

    if args.command == "train":
        if args.max_models is not None and args.max_models < 2:
            raise UsageError(f"--max-models must be ≥ 2 (a generator learns from a population); "
                             f"got {args.max_models}")
        if args.min_acc is not None and not 0 <= args.min_acc <= 1:
            raise UsageError(f"--min-acc is a validation accuracy in [0, 1]; got {args.min_acc}")
        gen_words = [w for w in args.overrides if not w.startswith("train.")]
        train_words = [w.removeprefix("train.") for w in args.overrides if w.startswith("train.")]
        # --method joins the words (last, so it wins): the config checks them all together,
        # e.g. prediction=noise only with a diffusion method.
        method = [f"method={args.method}"] if args.method else []
        config = override(GeneratorConfig(), gen_words + method)
        train_generator(args.zoo, args.out, config, override(DEFAULT_TRAIN, train_words),
                        min_acc=args.min_acc, align=args.align, max_models=args.max_models)
        print(f"generator written to {args.out}; sample it with "
              f"`wsl gen sample {args.out} -n 100 --out SAMPLES`")
    elif args.command == "sample":
        if args.num < 1:
            raise UsageError(f"-n/--num must be ≥ 1; got {args.num}")
        if args.steps is not None and args.steps < 1:
            raise UsageError(f"--steps must be ≥ 1; got {args.steps}")
        check_sample_out(args.out)  # before the generator is loaded
        generator = TrainedGenerator.load(args.generator)
        zoo, info = sample_to_zoo(generator, args.out, args.num, seed=args.seed,
                                  sampler=args.sampler, steps=args.steps, guidance=args.guidance,
                                  cond_class=args.cond_class, cond_scalar=args.cond_scalar)
        print(f"sampled {args.num} networks in {info['sample_seconds']:.2f} s (plus "
              f"{info['compile_seconds']:.1f} s compiling) into {args.out}")
        if not args.no_eval:
            report(zoo, generator, args.out, args.seed)
    else:
        zoo = Zoo.open(args.zoo)
        if args.out is None:
            # A generated zoo keeps its evaluation beside its samples; any other zoo is left as is.
            if not zoo.manifest.get("generated", False):
                raise UsageError(f"{args.zoo} is not a generated zoo; give --out DIR for its "
                                 f"evaluation (nothing is written into a trained zoo)")
            out = args.zoo
        else:
            from wsl.outputs import check_output_dir

            out = check_output_dir(args.out)
            out.mkdir(parents=True, exist_ok=True)
        report(zoo, args.generator, out, args.seed)
    return 0
