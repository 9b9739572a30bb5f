"""`wsl probe`: predict a zoo column (test accuracy, gap, activation, ...) from the weights.

    wsl probe --zoo Z [--target test_acc] [--encoder nfn_hnp] [--seeds 3] [--out DIR] [key=value ...]

``key=value`` words set fields of the training config (``steps=2000 optimizer.lr=3e-4``) or, prefixed
with ``encoder.``, of the encoder (``encoder.hidden=32``; see `models.encoders.list_encoders`).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from wsl.eval.probe import DEFAULT_TRAIN, ENCODERS, ProbeConfig, ProbeError, format_report, run_probe
from wsl.config import ConfigError, parse_value, override


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="wsl probe", description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", required=True, type=Path)
    parser.add_argument("--target", default="test_acc")
    parser.add_argument("--encoder", default="nfn_hnp", choices=ENCODERS)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--epoch", default="last", choices=("last", "all"))
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument("--out", type=Path, default=None,
                        help="results directory (default runs/probe-<encoder>-<target>)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    from wsl.zoos.store import Zoo, ZooError

    try:
        encoder_config = {}
        train_words = []
        for word in args.overrides:
            if word.startswith("encoder."):
                key, _, value = word.removeprefix("encoder.").partition("=")
                encoder_config[key] = parse_value(value)
            else:
                train_words.append(word)
        config = ProbeConfig(target=args.target, encoder=args.encoder, seeds=args.seeds,
                             epoch=args.epoch, augment=not args.no_augment,
                             encoder_config=encoder_config,
                             train=override(DEFAULT_TRAIN, train_words))
        out = args.out or Path("runs") / f"probe-{args.encoder}-{args.target}"
        report = run_probe(Zoo.open(args.zoo), config, out)
    except (ConfigError, ProbeError, ZooError, FileNotFoundError, ValueError) as err:
        print(f"wsl probe: {err}", file=sys.stderr)
        return 2
    print(format_report(report))
    print(f"wrote {out / 'results.json'} and {out / 'scatter.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
