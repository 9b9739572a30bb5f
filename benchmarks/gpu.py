"""GPU readiness: the three jobs a weight-space lab runs at scale, timed end to end on this machine.

(a) build a Small-CNN-Zoo-sized zoo: the `small-cnn` recipe (4,970-parameter CNNs on MNIST 8×8,
    the ranges of Unterthiner et al. 2020), 30,000 models, trained by the population trainer;
(b) train an NFN-HNP probe of test accuracy on that zoo's last checkpoints for 50 epochs;
(c) sample 100,000 networks from a flow generator trained on it (training not timed: it only
    provides weights to sample with; compile time reported apart).

Goals on one H100/H200: (a) ≤ 10 min, (b) ≤ 5 min, (c) ≤ 30 s. On a CPU the full sizes take
hours; `--smoke` runs every job at toy sizes (seconds) so that the script cannot rot unnoticed.

    python benchmarks/gpu.py --smoke                 # seconds, any machine (a test runs it)
    python benchmarks/gpu.py                         # full sizes, on a GPU
    python benchmarks/gpu.py --models 3000 --epochs 5 --samples 10000   # a smaller trial

The zoo, probe and generator go to `--workdir` (default: a temporary folder); pointing it at a
folder kept from an earlier run resumes the zoo build instead of retraining it. Prints a table;
the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import jax

# Appended, not prepended: an installed (non-editable) wsl must win over the repo's wsl/ folder,
# which alone is not the whole package.
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._report import table  # noqa: E402
from wsl.config import override  # noqa: E402
from wsl.mesh import device_summary  # noqa: E402
from wsl.models.weight_generator import GeneratorConfig  # noqa: E402
from wsl.train.generator import DEFAULT_TRAIN as GENERATOR_TRAIN  # noqa: E402
from wsl.train.generator import TrainedGenerator, train_generator  # noqa: E402
from wsl.train.probe import ProbeConfig, run_probe  # noqa: E402
from wsl.zoos.build import build_zoo  # noqa: E402
from wsl.zoos.recipes import get_recipe  # noqa: E402

GOALS = {"zoo_build": 600.0, "probe": 300.0, "sample": 30.0}  # seconds on one H100/H200
FULL = {"models": 30_000, "epochs": 50, "samples": 100_000, "models_per_shard": 5_000}
SMOKE = {"models": 16, "epochs": 1, "samples": 256, "models_per_shard": 16}


def _software() -> dict:
    import flax
    import optax
    return {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
            "python": sys.version.split()[0]}


def recipe(models: int, per_shard: int, smoke: bool, mnist_idx: Path | None = None):
    """The small-cnn recipe at this size; `mnist_idx`: MNIST read from IDX files there (the same
    images, so the same splits, as the package's copy)."""
    options = {"resize": [8, 8], "max_train": 10000}
    overrides = [f"num_models={models}", f"models_per_shard={per_shard}"]
    if smoke:  # one epoch on 1,000 images, one compiled program: the same code path, in seconds
        options["max_train"] = 1000
        overrides += ["epochs=1", "checkpoints=[0,1]", "eval_examples=200", "activation=relu",
                      "optimizer=adam"]
    if mnist_idx is not None:
        options["path"] = str(mnist_idx.resolve())
        overrides.append("dataset=idx")
    return get_recipe("small-cnn", overrides + [f"dataset_options={options!r}"], [])


def build(workdir: Path, zoo_recipe, smoke: bool) -> tuple[object, float]:
    start = time.perf_counter()
    zoo = build_zoo(zoo_recipe, workdir / "zoo", progress=not smoke)
    return zoo, time.perf_counter() - start


def probe(zoo, workdir: Path, epochs: int, batch_size: int) -> tuple[dict, float]:
    train_rows = int(0.7 * len(zoo.model_ids))
    per_epoch = max(1, train_rows // batch_size)
    config = override(ProbeConfig(encoder="nfn_hnp", seeds=1), [
        f"train.steps={epochs * per_epoch}", f"train.batch_size={batch_size}",
        f"train.eval.every={per_epoch}", "train.log.progress=false"])
    start = time.perf_counter()
    report = run_probe(zoo, config, workdir / "probe")
    return report, time.perf_counter() - start


def sample(zoo, workdir: Path, num: int, train_steps: int, smoke: bool) -> dict:
    train_config = override(GENERATOR_TRAIN, [f"steps={train_steps}", "log.progress=false"])
    tiny = ["hidden=32", "depth=1", "sample_steps=4"]  # smoke: the code path, not the model
    config = override(GeneratorConfig(), tiny if smoke else [])
    train_generator(zoo.path, workdir / "generator", config, train_config)
    generator = TrainedGenerator.load(workdir / "generator")
    compile_seconds = generator.compile(num, chunk=min(num, 10_000))
    start = time.perf_counter()
    flat = generator.sample(num, chunk=min(num, 10_000))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "compile_seconds": compile_seconds, "shape": list(flat.shape)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="toy sizes, seconds on any machine")
    parser.add_argument("--models", type=int, help=f"zoo size (default {FULL['models']})")
    parser.add_argument("--models-per-shard", type=int,
                        help=f"models trained together (default {FULL['models_per_shard']})")
    parser.add_argument("--epochs", type=int, help=f"probe epochs (default {FULL['epochs']})")
    parser.add_argument("--samples", type=int, help=f"networks sampled (default "
                                                    f"{FULL['samples']})")
    parser.add_argument("--batch-size", type=int, default=32, help="probe batch size")
    parser.add_argument("--generator-steps", type=int, default=None,
                        help="generator training steps (default 2000; smoke 20)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep the zoo, probe and generator here (a rerun resumes the zoo)")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    parser.add_argument("--mnist-idx", type=Path, default=None,
                        help="read MNIST from the IDX files in this folder (train-/t10k-, plain "
                             "or .gz) instead of the wsl[mnist] package: a GPU machine without it")
    args = parser.parse_args(argv)
    if args.mnist_idx is not None and not args.mnist_idx.is_dir():
        parser.error(f"--mnist-idx: {args.mnist_idx} is not a folder")
    sizes = dict(SMOKE if args.smoke else FULL)
    for key in ("models", "epochs", "samples", "models_per_shard"):
        if getattr(args, key) is not None:
            sizes[key] = getattr(args, key)
    steps = args.generator_steps or (20 if args.smoke else 2000)
    with tempfile.TemporaryDirectory(prefix="wsl-gpu-") as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        zoo_recipe = recipe(sizes["models"], sizes["models_per_shard"], args.smoke,
                            args.mnist_idx)
        zoo, build_seconds = build(workdir, zoo_recipe, args.smoke)
        print(f"(a) zoo built in {build_seconds:.1f} s", flush=True)
        report, probe_seconds = probe(zoo, workdir, sizes["epochs"], args.batch_size)
        print(f"(b) probe trained in {probe_seconds:.1f} s", flush=True)
        sampled = sample(zoo, workdir, sizes["samples"], steps, args.smoke)
    seconds = {"zoo_build": build_seconds, "probe": probe_seconds, "sample": sampled["seconds"]}
    on_gpu = jax.devices()[0].platform == "gpu"
    rows = [(f"(a) build {sizes['models']:,} small-cnn models", f"{build_seconds:.1f}",
             f"{GOALS['zoo_build']:.0f}"),
            (f"(b) NFN-HNP probe, {sizes['epochs']} epochs (test τ "
             f"{report['summary']['kendall_tau']['mean']:.3f})", f"{probe_seconds:.1f}",
             f"{GOALS['probe']:.0f}"),
            (f"(c) sample {sizes['samples']:,} networks (compile "
             f"{sampled['compile_seconds']:.1f} s apart)", f"{sampled['seconds']:.2f}",
             f"{GOALS['sample']:.0f}")]
    print(f"device: {device_summary()}")
    print(table(("job", "seconds", "goal (H100/H200)"), rows))
    if not on_gpu:
        print("not a GPU: the goals apply to one H100/H200 at full sizes, not to this run")
    mode = "smoke" if args.smoke else "custom" if sizes != FULL else "full"
    result = {"benchmark": "gpu", "mode": mode, "device": device_summary(), "on_gpu": on_gpu,
              "software": _software(),
              **{f"{k}_size": v for k, v in sizes.items()}, "seconds": seconds, "goals": GOALS,
              "meets_goals": {k: on_gpu and not args.smoke and seconds[k] <= GOALS[k]
                              for k in GOALS},
              "probe_test_tau": report["summary"]["kendall_tau"]["mean"],
              "probe_val_tau": report["validation"]["kendall_tau"]["mean"],
              "sample_compile_seconds": sampled["compile_seconds"]}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
