"""`wsl probe`: predict a zoo column (test accuracy, gap, activation, ...) from the weights.

    wsl probe --zoo Z [--target test_acc] [--encoder nfn_hnp] [--seeds 3] [--out DIR]
              [--augment permute,noise,mixup | --no-augment] [key=value ...]

``--augment`` names the augmentations of training batches (default ``permute``; ``none`` for
none; see `wsl.train.augment`). ``key=value`` words set their strengths (``noise_scale=0.1``,
``dropout_rate``, ``prune_fraction``, ``mixup_alpha``), fields of the training config
(``steps=2000 optimizer.lr=3e-4``) or, prefixed with ``encoder.``, of the encoder
(``encoder.hidden=32``; see `wsl.models.encoders`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from wsl.train.probe import DEFAULT_TRAIN, ENCODERS

# ProbeConfig fields a key=value word may set; every other word goes to the training config.
STRENGTHS = ("noise_scale", "dropout_rate", "prune_fraction", "mixup_alpha")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="wsl probe", description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", required=True, type=Path)
    parser.add_argument("--target", default="test_acc")
    parser.add_argument("--encoder", default="nfn_hnp", choices=ENCODERS)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--epoch", default="last", choices=("last", "all"))
    augment = parser.add_mutually_exclusive_group()
    augment.add_argument("--augment", default="permute", metavar="NAMES",
                         help="augmentations of training batches, comma-separated: permute, "
                              "noise, dropout, prune, mixup, or none (default permute)")
    augment.add_argument("--no-augment", dest="augment", action="store_const", const="none",
                         help="no augmentation (same as --augment none)")
    parser.add_argument("--out", type=Path, default=None,
                        help="results directory (default runs/probe-<encoder>-<target>)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)

    from wsl.config import override, parse_value
    from wsl.eval.probe_report import format_report, plot_probe
    from wsl.train.probe import ProbeConfig, run_probe
    from wsl.zoos.store import Zoo

    encoder_config, probe_words, train_words = {}, [], []
    for word in args.overrides:
        if word.startswith("encoder."):
            key, _, value = word.removeprefix("encoder.").partition("=")
            encoder_config[key] = parse_value(value)
        elif word.partition("=")[0].strip() in STRENGTHS:
            probe_words.append(word)
        else:
            train_words.append(word)
    config = override(ProbeConfig(target=args.target, encoder=args.encoder, seeds=args.seeds,
                                  epoch=args.epoch, augment=args.augment,
                                  encoder_config=encoder_config,
                                  train=override(DEFAULT_TRAIN, train_words)), probe_words)
    out = args.out or Path("runs") / f"probe-{args.encoder}-{args.target}"
    report = run_probe(Zoo.open(args.zoo), config, out)
    plot_probe(report, out / "scatter.png")
    print(format_report(report))
    print(f"wrote {out / 'results.json'} and {out / 'scatter.png'}")
    return 0
