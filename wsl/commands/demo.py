"""`wsl demo`: the whole pipeline end to end on the embedded `quick` zoo, in a few minutes on a CPU.

build the quick zoo → probe it (predict test accuracy from weights) → align it → train a flow
generator on the aligned weights → sample 100 networks → evaluate them against the zoo.
Everything is written under ``--out`` (default ``runs/demo``); rerunning resumes what exists.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from wsl.commands import _help
from wsl.errors import UsageError

# One shared initialisation with per-model data orders keeps the population in one basin, which a
# generator needs (independent initialisations on 32 models give it only copies).
DEMO_ZOO = ["num_models=128", "init_seeds=1", "data_order=per_model"]


EPILOG = """\
build the quick zoo (128 MLPs) → probe it (predict test accuracy from weights) → align it → train a
flow generator on the aligned weights → sample networks → evaluate them against the zoo.
"""


def _stage(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def _parser() -> argparse.ArgumentParser:
    parser = _help.parser("wsl demo", __doc__, epilog=EPILOG)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), metavar="DIR",
                        help="folder for the zoo, probe, generator and samples (a rerun resumes)")
    parser.add_argument("--samples", type=int, default=100, metavar="N",
                        help="networks to sample from the generator")
    parser.add_argument("--generator-steps", type=int, default=1500, metavar="N",
                        help="training steps of the flow-matching generator")
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    begin = time.perf_counter()
    # Every option is checked before any work: a bad one costs nothing.
    for option, value in (("--samples", args.samples), ("--generator-steps", args.generator_steps)):
        if value < 1:
            raise UsageError(f"{option} must be ≥ 1; got {value}")

    from wsl.commands.gen import report
    from wsl.commands.zoo import summarise
    from wsl.config import override
    from wsl.eval.probe_report import format_report, plot_probe
    from wsl.mesh import describe_mesh
    from wsl.models.weight_generator import GeneratorConfig
    from wsl.outputs import check_output_dir
    from wsl.train import generator as generators
    from wsl.train import probe
    from wsl.train.layout import mesh_from_config
    from wsl.zoos.build import build_zoo
    from wsl.zoos.recipes import get_recipe
    from wsl.zoos.store import Zoo

    recipe = get_recipe("quick", DEMO_ZOO)
    probe_config = probe.ProbeConfig(
        encoder="statnn", train=override(probe.DEFAULT_TRAIN, ["steps=600", "eval.every=100"]))
    config = GeneratorConfig(method="flow", hidden=256, depth=2)
    train_config = dataclasses.replace(
        override(generators.DEFAULT_TRAIN, [f"steps={args.generator_steps}", "ema_decay=0.99"]),
        batch_size=32)
    zoo_dir, gen_dir, samples_dir = args.out / "zoo", args.out / "generator", args.out / "samples"
    check_output_dir(args.out)
    check_output_dir(zoo_dir, allow_zoo=True)
    if (samples_dir / "manifest.json").exists():
        num = Zoo.open(samples_dir).manifest.get("recipe", {}).get("num")
        if num != args.samples:
            raise UsageError(f"--out {args.out} holds {num} samples, not --samples "
                             f"{args.samples}; choose another --out")
    else:
        generators.check_sample_out(samples_dir, option="--out's samples folder")

    print(describe_mesh(mesh_from_config(train_config.mesh)), flush=True)
    t = _stage("1/4 build the quick zoo (a population trained in one compiled program)")
    zoo = build_zoo(recipe, zoo_dir)  # resumes, or is finished
    print(summarise(zoo))
    print(f"   ({time.perf_counter() - t:.0f} s)")

    t = _stage("2/4 probe: predict each network's test accuracy from its weights (StatNN)")
    result = probe.run_probe(zoo, probe_config, args.out / "probe")
    plot_probe(result, args.out / "probe" / "scatter.png")
    print(format_report(result))
    print(f"   ({time.perf_counter() - t:.0f} s)")

    t = _stage("3/4 align the zoo by weight matching and train a flow-matching generator")
    generators.train_generator(zoo_dir, gen_dir, config, train_config)
    print(f"   ({time.perf_counter() - t:.0f} s)")

    t = _stage(f"4/4 sample {args.samples} networks and evaluate them on held-out data")
    if (samples_dir / "manifest.json").exists():
        generated = Zoo.open(samples_dir)
    else:
        generated = generators.sample_to_zoo(gen_dir, samples_dir, args.samples)[0]
    report(generated, gen_dir, samples_dir, seed=0)
    print(f"   ({time.perf_counter() - t:.0f} s)")
    print(f"\ndemo finished in {time.perf_counter() - begin:.0f} s; everything is in {args.out}")
    return 0
