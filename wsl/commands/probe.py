"""`wsl probe`: predict a zoo column (test accuracy, gap, activation, ...) from the weights.

    wsl probe --zoo Z [--target test_acc] [--encoder nfn_hnp] [--seeds 3] [--out DIR] [key=value ...]

``key=value`` words set fields of the training config (``steps=2000 optimizer.lr=3e-4``) or, prefixed
with ``encoder.``, of the encoder (``encoder.hidden=32``; see `wsl.models.encoders`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from wsl.train.probe import DEFAULT_TRAIN, ENCODERS


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="wsl probe", description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", required=True, type=Path)
    parser.add_argument("--target", default="test_acc")
    parser.add_argument("--encoder", default="nfn_hnp", choices=ENCODERS)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--epoch", default="last", choices=("last", "all"))
    parser.add_argument("--no-augment", action="store_true",
                        help="no random hidden-unit permutations of training batches")
    parser.add_argument("--out", type=Path, default=None,
                        help="results directory (default runs/probe-<encoder>-<target>)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)

    from wsl.config import override, parse_value
    from wsl.eval.probe_report import format_report, plot_probe
    from wsl.train.probe import ProbeConfig, run_probe
    from wsl.zoos.store import Zoo

    encoder_config, train_words = {}, []
    for word in args.overrides:
        if word.startswith("encoder."):
            key, _, value = word.removeprefix("encoder.").partition("=")
            encoder_config[key] = parse_value(value)
        else:
            train_words.append(word)
    config = ProbeConfig(target=args.target, encoder=args.encoder, seeds=args.seeds,
                         epoch=args.epoch, augment=not args.no_augment,
                         encoder_config=encoder_config, train=override(DEFAULT_TRAIN, train_words))
    out = args.out or Path("runs") / f"probe-{args.encoder}-{args.target}"
    report = run_probe(Zoo.open(args.zoo), config, out)
    plot_probe(report, out / "scatter.png")
    print(format_report(report))
    print(f"wrote {out / 'results.json'} and {out / 'scatter.png'}")
    return 0
