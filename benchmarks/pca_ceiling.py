"""Benchmark: how much of a zoo's accuracy its top principal components keep — the ceiling of a
generator in a PCA space.

DeepWeightFlow often reduces the aligned weights to 99 principal components before flow matching.
A generator over k components can only produce networks in their span (shifted by the mean), and
the population it learns is the training models projected onto that span. This aligns and
normalises a zoo exactly as a generator's training does (`wsl.train.generator.select_and_align`),
projects every selected model onto its top k components for several k and scores the projected
networks on the zoo's validation and test splits, beside the variance those components explain.

If the projection already costs accuracy, no generator in that space can reach the population,
however well it learns: the measurement needs no generator and no choice (nothing is selected, on
any split).

    python benchmarks/pca_ceiling.py --smoke     # seconds: 16 untrained digits MLPs
    python benchmarks/pca_ceiling.py --quick     # the 256-model zoos of benchmarks/generate.py
    python benchmarks/pca_ceiling.py [--save]    # the full 1,000-model zoos (cached zoos reused)

Prints a table per zoo and one JSON object as the last line (``--save`` also writes it to
``benchmarks/results/pca_ceiling-<mode>.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

# Appended, not prepended: an installed (non-editable) wsl must win over the repo's wsl/ folder,
# which alone is not the whole package.
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._report import table  # noqa: E402
from benchmarks.generate import ZOOS, build_or_open  # noqa: E402
from wsl.models.weight_generator import GeneratorConfig  # noqa: E402
from wsl.train.generator import select_and_align  # noqa: E402
from wsl.zoos.architectures import build  # noqa: E402
from wsl.zoos.datasets import dataset_from_spec  # noqa: E402
from wsl.zoos.scoring import population_metrics  # noqa: E402

COMPONENTS = {"full": (16, 32, 64, 99, 128, 256, 512), "quick": (16, 32, 64, 99, 128),
              "smoke": (4, 8)}  # and every component the models span
DEFAULT_ZOOS = {"full": "mlp-mnist1d,small-cnn", "quick": "mlp-mnist1d,small-cnn",
                "smoke": "quick"}


def principal_axes(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, principal axes (rows, by decreasing variance) and each axis' share of the variance
    of the rows of `x`."""
    mean = x.mean(0)
    _, s, axes = np.linalg.svd(x - mean, full_matrices=False)
    rank = int(np.sum(s > s[0] * 1e-6)) if s.size and s[0] > 0 else 0
    variance = s[:rank] ** 2
    return mean, axes[:rank], variance / variance.sum()


def project(x: np.ndarray, mean: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """The rows of `x` projected onto the affine span of `axes` through `mean`."""
    return mean + (x - mean) @ axes.T @ axes


def measure(recipe: str, mode: str, zoo_dir: Path) -> dict:
    zoo, info = build_or_open(recipe, mode, zoo_dir)
    # The generators' own selection and alignment (seed 0: benchmarks/generate.py's first seed).
    selection = select_and_align(zoo, GeneratorConfig(), seed=0)
    arch_config = dict(selection.zoo.architecture.config)
    if selection.activation is not None:
        arch_config["activation"] = selection.activation
    arch = build(selection.zoo.architecture.name, **arch_config)
    data = dataset_from_spec(zoo.manifest["dataset"])
    normalizer = selection.normalizer

    def scores(normalised: np.ndarray) -> dict:
        weights = (normalised * normalizer.std + normalizer.mean).astype(np.float32)
        metrics = population_metrics(arch, weights, data, splits=("val", "test"))
        return {split: float(np.mean(metrics[f"{split}_acc"])) for split in ("val", "test")}

    x = selection.x.astype(np.float64)
    mean, axes, share = principal_axes(x)
    population = scores(selection.x)
    rows = []
    for k in sorted({k for k in COMPONENTS[mode] if k < len(axes)} | {len(axes)}):
        projected = scores(project(x, mean, axes[:k]))
        rows.append({"components": k, "explained": float(share[:k].sum()), **projected,
                     **{f"{split}_drop": population[split] - projected[split]
                        for split in ("val", "test")}})
    return {"num_models": int(len(x)), "num_params": int(x.shape[1]), "rank": int(len(axes)),
            "population": population, "rows": rows, "zoo_cached": bool(info.get("cached"))}


def print_zoo(recipe: str, result: dict) -> None:
    pop = result["population"]
    print(f"\n{recipe}: {result['num_models']} aligned models, {result['num_params']} weights, "
          f"span of rank {result['rank']}; population val {pop['val']:.4f}, "
          f"test {pop['test']:.4f}")
    print(table(("components", "variance explained", "val acc", "val drop (pt)", "test acc",
                 "test drop (pt)"),
                [(r["components"], f"{r['explained']:.3f}", f"{r['val']:.4f}",
                  f"{r['val_drop'] * 100:.1f}", f"{r['test']:.4f}",
                  f"{r['test_drop'] * 100:.1f}") for r in result["rows"]]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    speed = parser.add_mutually_exclusive_group()
    speed.add_argument("--quick", action="store_true", help="256-model zoos")
    speed.add_argument("--smoke", action="store_true", help="seconds: checks that it runs")
    parser.add_argument("--zoos", default=None,
                        help="comma-separated recipes (default mlp-mnist1d,small-cnn)")
    parser.add_argument("--zoo-dir", type=Path, default=None,
                        help="cached zoos (default as benchmarks/generate.py)")
    parser.add_argument("--save", action="store_true",
                        help="write benchmarks/results/pca_ceiling-<mode>.json")
    args = parser.parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    zoos = (args.zoos or DEFAULT_ZOOS[mode]).split(",")
    unknown = [z for z in zoos if z not in ZOOS or mode not in ZOOS[z][1]]
    if unknown:
        parser.error(f"unknown zoos {unknown} for {mode} mode; recipes "
                     f"{[z for z in ZOOS if mode in ZOOS[z][1]]}")
    if args.zoo_dir is None and args.smoke:
        with tempfile.TemporaryDirectory(prefix="wsl-bench-pca-") as scratch:
            return run(args, mode, zoos, Path(scratch))
    return run(args, mode, zoos, args.zoo_dir or Path(tempfile.gettempdir()) / "wsl-bench-generate")


def run(args, mode: str, zoos: list[str], zoo_dir: Path) -> int:
    zoo_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    for recipe in zoos:
        results[recipe] = measure(recipe, mode, zoo_dir)
        print_zoo(recipe, results[recipe])
    report = {"benchmark": "pca_ceiling", "mode": mode, "zoos": results}
    if args.save:
        path = Path(__file__).resolve().parent / "results" / f"pca_ceiling-{mode}.json"
        path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {path}")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
