"""`wsl probe`: predict a zoo column (test accuracy, gap, activation, ...) from the weights.

    wsl probe --zoo Z [--target test_acc] [--encoder nfn_hnp] [--seeds 3] [--first-seed 0]
              [--out DIR] [--augment permute,noise,mixup | --no-augment] [--no-progress]
              [key=value ...]
    wsl probe --list-keys [--encoder NAME]

``--augment`` names the augmentations of training batches (default ``permute``; ``none`` for
none; see `wsl.train.augment`). ``key=value`` words set, prefixed with ``train.``, fields of the
training config (``train.steps=2000 train.optimizer.lr=3e-4``; bare training keys such as
``steps=2000`` are accepted too), prefixed with ``encoder.``, options of the encoder
(``encoder.head_widths=[64,64]``; see `wsl.models.encoders`), and unprefixed the augmentation
strengths (``noise_scale=0.1``, ``dropout_rate``, ``prune_fraction``, ``mixup_alpha``,
``log_scale``).
``--list-keys`` prints every key with its default and type.
"""

from __future__ import annotations

from pathlib import Path

from wsl.commands import _help
from wsl.train.probe import DEFAULT_TRAIN, ENCODERS

# ProbeConfig fields a key=value word may set; every other word goes to the training config.
STRENGTHS = ("noise_scale", "dropout_rate", "prune_fraction", "mixup_alpha", "log_scale")
# Encoder options the probe sets itself (from the target and the training split).
RESERVED = ("out_dim", "normalizer")

EPILOG = """\
key=value words (wsl probe --list-keys [--encoder NAME] prints every key, its default and type):
  train.KEY=VALUE    the training config: train.steps=2000 train.optimizer.lr=3e-4
                     train.batch_size=64 (the train. prefix is the convention, as in wsl gen
                     train; bare training keys such as steps=2000 are accepted too)
  encoder.KEY=VALUE  the encoder's options: encoder.head_widths=[64,64] encoder.dropout=0.1
  noise_scale=0.1    strengths of --augment: noise_scale, dropout_rate, prune_fraction,
                     mixup_alpha, log_scale (scale: per-unit log s in ±log_scale)

Rerunning the same command resumes its training runs ("resumed from step N (of M)").
"""


def _parser():
    parser = _help.parser("wsl probe", __doc__, epilog=EPILOG)
    parser.add_argument("--zoo", required=True, type=Path, metavar="DIR",
                        help="zoo directory to probe (wsl zoo build / import)")
    parser.add_argument("--target", default="test_acc",
                        help="zoo column to predict: a number (test_acc, gap, lr, ...) or a text "
                             "column to classify (activation, optimizer, ...)")
    parser.add_argument("--encoder", default="nfn_hnp", choices=ENCODERS, metavar="NAME",
                        help=f"encoder that reads the weights: {', '.join(ENCODERS)}")
    parser.add_argument("--seeds", type=int, default=1, metavar="N",
                        help="training runs with different splits and initialisations; the "
                             "report gives mean ± std over them")
    parser.add_argument("--first-seed", type=int, default=0, metavar="S",
                        help="run seeds S, S+1, …: splits and initialisations no earlier run "
                             "with seeds below S has used")
    parser.add_argument("--loss", default="auto", choices=("auto", "bce", "mse"),
                        help="numeric targets: auto (binary cross-entropy for values in [0, 1], "
                             "as in the NFN recipe; else MSE), bce, or mse on standardised "
                             "values (better when accuracies span a narrow range)")
    parser.add_argument("--epoch", default="last", choices=("last", "all"),
                        help="rows probed: each model's last checkpoint, or every checkpoint")
    augment = parser.add_mutually_exclusive_group()
    augment.add_argument("--augment", default="permute", metavar="NAMES",
                         help="augmentations of training batches, comma-separated: permute, "
                              "scale, sign, noise, dropout, prune, mixup, or none")
    augment.add_argument("--no-augment", dest="augment", action="store_const", const="none",
                         help="no augmentation (same as --augment none)")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="results directory (default: runs/probe-ENCODER-TARGET)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar while training (same as train.log.progress=false)")
    parser.add_argument("--list-keys", action="store_true",
                        help="print every key=value key (train.*, encoder.* of --encoder, "
                             "augmentation strengths) with its default and type, then exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="train.KEY=VALUE, encoder.KEY=VALUE or a strength (see below and "
                             "--list-keys)")
    return parser


def list_keys(encoder: str) -> str:
    """Every key=value key `wsl probe` takes with `encoder`, grouped, with defaults and types."""
    from wsl.train.probe import ProbeConfig

    probe = ProbeConfig()
    groups = [("training (train.KEY=VALUE; bare KEY=VALUE is accepted too)",
               _help.config_keys(DEFAULT_TRAIN, "train.")),
              ("augmentation strengths (with --augment)",
               [row for row in _help.config_keys(probe) if row[0] in STRENGTHS])]
    if encoder == "statnn_gbt":
        groups.append(("encoder statnn_gbt (gradient-boosted trees): no encoder.* keys", []))
    else:
        groups.append((f"encoder {encoder} (encoder.KEY=VALUE; other encoders: --list-keys "
                       f"--encoder NAME)", _encoder_keys(encoder)))
    return _help.format_keys(groups)


def _encoder_keys(name: str) -> list[tuple[str, str, str]]:
    import typing

    from wsl.models.encoders import _encoder_class, default_config

    try:
        hints = typing.get_type_hints(_encoder_class(name))
    except Exception:  # an annotation that does not resolve: types from the defaults instead
        hints = {}
    rows = []
    for key, default in default_config(name).items():
        if key in RESERVED:
            continue
        kind = (_help.type_name(hints[key]) if key in hints
                else type(default).__name__ if default is not None else "any")
        rows.append((f"encoder.{key}", _help.show_value(default), kind))
    return rows


def main(argv: list[str]) -> int:
    parser = _parser()
    if _help.asks_for(argv, "--list-keys"):
        _help.relax_required(parser)  # --list-keys needs no zoo
    args = _help.parse_with_overrides(parser, argv)
    if args.list_keys:
        print(list_keys(args.encoder))
        return 0

    from wsl.config import ConfigError, override, parse_value
    from wsl.distributed import is_primary
    from wsl.eval.probe_report import format_report, plot_probe
    from wsl.mesh import describe_mesh
    from wsl.train.layout import mesh_from_config
    from wsl.train.probe import ProbeConfig, run_probe
    from wsl.zoos.store import Zoo

    encoder_config, probe_words = {}, []
    train_words = [] if not args.no_progress else ["log.progress=false"]
    for word in args.overrides:
        if word.startswith("encoder."):
            key, _, value = word.removeprefix("encoder.").partition("=")
            encoder_config[key] = parse_value(value)
        elif word.startswith("train."):
            train_words.append(word.removeprefix("train."))
        elif word.partition("=")[0].strip() in STRENGTHS:
            probe_words.append(word)
        else:  # a bare training key (steps=2000), kept for compatibility
            train_words.append(word)
    try:
        config = override(ProbeConfig(target=args.target, encoder=args.encoder, seeds=args.seeds,
                                      first_seed=args.first_seed, epoch=args.epoch,
                                      augment=args.augment, loss=args.loss,
                                      encoder_config=encoder_config,
                                      train=override(DEFAULT_TRAIN, train_words)), probe_words)
    except ConfigError as err:
        raise _help.unknown_key_hint(err, "wsl probe") from err
    if config.encoder == "statnn_gbt":
        print("mesh: none (statnn_gbt fits gradient-boosted trees with scikit-learn on the CPU)")
    else:
        print(describe_mesh(mesh_from_config(config.train.mesh)), flush=True)
    out = args.out or Path("runs") / f"probe-{args.encoder}-{args.target}"
    report = run_probe(Zoo.open(args.zoo), config, out)
    if not is_primary():  # one process of a multi-process run reports and plots
        return 0
    plot_probe(report, out / "scatter.png")
    print(format_report(report))
    print(f"wrote {out / 'results.json'} and {out / 'scatter.png'}")
    return 0
