"""Benchmark: models analysed per second by `wsl zoo analyze`, vectorised against one at a time.

For every metric (hessian, spectral, farms, cka, mc) it times the analysis of the phase zoo's last
checkpoint twice: vectorised as `wsl zoo analyze` runs it (models of a shard `jax.vmap`ped in
chunks of 64) and one model at a time through the same jitted per-model function (chunks of 1,
the loop a user would write). Both are timed after an untimed warm-up call that compiles their
programs; the loop on a sample of models (it is slow), the vectorised run on all of them. For the
loss-based metrics (hessian, mc) on a phase zoo it also times both width by width (milliseconds
per model), which shows where vectorising gains and where one model already keeps the cores busy.

    python benchmarks/analyze.py --smoke   # seconds: a 4-model digits grid (checks it runs)
    python benchmarks/analyze.py --quick   # a few minutes: the MLP phase zoo, 2 seeds, 10 epochs
    python benchmarks/analyze.py           # full: phase-mlp-mnist1d as the recipe says (120)

The values computed in the vectorised run are written into the zoo as analysed columns, and the
phase grid (width x learning rate, mean over seeds) of the accuracies and of every measured
column is printed and kept in the JSON. Prints tables, then one JSON object as the last line;
``--save`` also writes it to benchmarks/results/analyze-<mode>.json and the heatmaps of test
accuracy, Hessian trace and alpha to analyze-<mode>-phase.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

# Appended, not prepended: an installed (non-editable) wsl must win over the repo's wsl/ folder,
# which alone is not the whole package.
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from wsl.eval.zoo_analysis import METRICS, AnalyzeSettings, _Context  # noqa: E402
from wsl.zoos.build import build_zoo  # noqa: E402
from wsl.zoos.recipes import get_recipe  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SETUPS = {
    # mode: (recipe, overrides, models timed one at a time)
    # smoke: one width (one compiled program per metric and chunk size), two seeds per cell
    "smoke": ("phase-mlp-mnist1d", ["dataset=digits", "arch={'widths': [16, 16]}",
                                    "width=[16]", "lr=[0.03,0.3]", "num_models=4", "epochs=1",
                                    "checkpoints=[0,1]", "models_per_shard=4"], 1),
    "quick": ("phase-mlp-mnist1d", ["num_models=60", "epochs=10", "checkpoints=[0,10]",
                                    "models_per_shard=60"], 6),  # 2 seeds per cell
    "full": ("phase-mlp-mnist1d", [], 12),
}
# Smoke: chunks of one model, so that both columns share one compiled program per metric (the
# script's code paths in seconds; its ratios mean nothing).
SETTINGS = {"smoke": AnalyzeSettings(examples=64, lanczos_iterations=8, trace_samples=9,
                                     bezier_steps=10, batch_models=1),
            "quick": AnalyzeSettings(), "full": AnalyzeSettings()}


def _zoo(mode: str, scratch: str | None):
    """The mode's phase zoo: kept under $TMPDIR between runs (a rerun reuses it), except in
    smoke mode, which builds it in `scratch` and leaves nothing behind."""
    recipe_name, overrides, _ = SETUPS[mode]
    recipe = get_recipe(recipe_name, overrides)
    folder = Path(scratch or tempfile.gettempdir()) / "wsl-bench-analyze" / mode
    return build_zoo(recipe, folder, progress=mode != "smoke")


def _time(zoo, settings: AnalyzeSettings, metric: str, rows: np.ndarray
          ) -> tuple[float, dict[str, np.ndarray]]:
    """Seconds to compute `metric` for `rows` in a fresh context (nothing cached but the
    compiled programs; the training batch is read before the clock starts), and the values."""
    context = _Context(zoo, settings)
    if METRICS[metric].needs_data:
        context.data()
    start = time.perf_counter()
    values = context.compute(metric, rows)
    jax.block_until_ready(jax.tree.leaves(values))
    return time.perf_counter() - start, values


def measure(zoo, metric: str, settings: AnalyzeSettings, sample: int) -> dict:
    rows = zoo.filter(epoch="last").global_rows
    # Spread the sample over the grid: widths differ in cost (and in compiled programs).
    pick = rows[np.linspace(0, len(rows) - 1, sample).round().astype(int)]
    one = dataclasses.replace(settings, batch_models=1)
    for r in pick:  # warm-up: compiles the one-model program of every width in the sample
        _time(zoo, one, metric, np.array([r]))
    loop_s = sum(_time(zoo, one, metric, np.array([r]))[0] for r in pick)
    first, _ = _time(zoo, settings, metric, rows)  # compiles the chunk programs
    steady, values = _time(zoo, settings, metric, rows)
    return {"metric": metric, "models": len(rows), "vmapped_models_per_s": len(rows) / steady,
            "vmapped_models_per_s_with_compile": len(rows) / first,
            "loop_models_per_s": sample / loop_s, "loop_sample": sample,
            "speedup": (len(rows) / steady) / (sample / loop_s), "rows": rows,
            "values": values}


def matmul_peak_flops(size: int = 1024, repeats: int = 5) -> float:
    """FLOP/s of one jitted size³ float32 matmul on this machine (best of `repeats`): the rate
    no program made of smaller matmuls exceeds."""
    a = jax.random.normal(jax.random.key(0), (size, size), np.float32)
    f = jax.jit(lambda a: a @ a)
    jax.block_until_ready(f(a))
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(f(a))
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best


def hessian_flops(zoo, settings: AnalyzeSettings, row: int) -> float:
    """Floating-point operations of the Hessian metric for one model: (Lanczos iterations +
    trace samples) Hessian-vector products, each counted by XLA's cost analysis of one product
    as the metric computes it (reverse over reverse, at the model's narrowed width). XLA counts
    a loop's body once, so the product is compiled alone and multiplied."""
    from wsl.eval.hessian import _flat_operator
    from wsl.eval.zoo_analysis import _loss

    context = _Context(zoo, settings)
    x, y = context.data()[:2]
    arch, rows = next(context.groups(np.array([row])))
    params = jax.tree.map(lambda a: a[0], context.params(rows, arch))
    flat, _, matvec = _flat_operator(lambda p: _loss(arch, p, x, y), params, None, reverse=True)
    cost = jax.jit(matvec).lower(flat).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return (settings.lanczos_iterations + settings.trace_samples) * float(cost["flops"])


def by_width(zoo, metric: str, settings: AnalyzeSettings, peak: float | None = None
             ) -> list[dict]:
    """Per width of the phase grid, milliseconds per model one at a time (the best of the
    width's first two models, after a warm-up) and vectorised (all the width's models, after a
    warm-up): where the vectorised program gains, and where both are bound by arithmetic.

    For the Hessian, with `peak` (FLOP/s, `matmul_peak_flops`) it also gives the model's FLOPs,
    the rate each run reaches, and ``ceiling``: loop time / (FLOPs at the peak rate), the
    largest speed-up any vectorised program could have over the loop on this machine."""
    rows = zoo.filter(epoch="last").global_rows
    widths = zoo._table["width"][rows].astype(int)
    one = dataclasses.replace(settings, batch_models=1)
    out = []
    for w in np.unique(widths):
        mine = rows[widths == w]
        _time(zoo, one, metric, mine[:1])
        loop = min(_time(zoo, one, metric, mine[i:i + 1])[0] for i in range(min(2, len(mine))))
        _time(zoo, settings, metric, mine)
        vmapped = _time(zoo, settings, metric, mine)[0] / len(mine)
        line = {"width": int(w), "models": int(len(mine)), "loop_ms": 1000 * loop,
                "vmapped_ms": 1000 * vmapped, "speedup": loop / vmapped}
        if metric == "hessian" and peak:
            flops = hessian_flops(zoo, settings, int(mine[0]))
            line.update({"gflop": flops / 1e9, "loop_gflop_per_s": flops / loop / 1e9,
                         "vmapped_gflop_per_s": flops / vmapped / 1e9,
                         "ceiling": loop / (flops / peak)})
        out.append(line)
    return out


def ceiling_summary(lines: list[dict], peak: float) -> dict:
    """Over the grid (each width weighted by its models): loop time against the time the
    Hessian's FLOPs take at the peak rate — the bound on the whole-zoo speed-up."""
    loop = sum(r["loop_ms"] * r["models"] for r in lines)
    ideal = sum(r["gflop"] * 1e9 / peak * 1000 * r["models"] for r in lines)
    vmapped = sum(r["vmapped_ms"] * r["models"] for r in lines)
    return {"matmul_peak_gflop_per_s": peak / 1e9, "loop_ms_total": loop,
            "vmapped_ms_total": vmapped, "at_peak_ms_total": ideal,
            "speedup_ceiling": loop / ideal, "share_of_peak_vmapped": ideal / vmapped}


PHASE_COLORS = ("test_acc", "train_acc", "hessian_top_eigenvalue", "hessian_trace",
                "spectral_alpha", "farms_alpha", "cka_cell", "mc_linear_barrier",
                "mc_bezier_barrier")


def phase_report(zoo, rows: list[dict], png: Path | None) -> dict:
    """Write the values measured into the zoo, then the phase grid (width x lr, mean over seeds)
    of the accuracies and every measured column; a heatmap PNG of the headline ones."""
    from wsl.eval.phase import phase_grid, plot_phase
    from wsl.zoos.store import write_analysis

    total = len(zoo._table["model"])
    columns, analysed, meanings = {}, {}, {}
    for r in rows:
        for c, v in r["values"].items():
            columns[c] = np.full(total, np.nan)
            columns[c][r["rows"]] = v
            analysed[c] = np.isin(np.arange(total), r["rows"])
            meanings[c] = METRICS[r["metric"]].columns[c]
    zoo = write_analysis(zoo.path, columns, meanings,
                         {r["metric"]: {"by": "benchmarks/analyze.py"} for r in rows})
    grids = {c: phase_grid(zoo, "width", "lr", c) for c in PHASE_COLORS if c in zoo.columns}
    if png is not None:
        plot_phase([grids[c] for c in ("test_acc", "hessian_trace", "spectral_alpha")
                    if c in grids], png, title=f"{zoo.manifest['recipe']['name']}: mean over "
                                               f"seeds at the last epoch")
    for grid in grids.values():
        print(grid.table())
    return {"x": "width", "y": "lr", "xs": next(iter(grids.values())).xs.tolist(),
            "ys": next(iter(grids.values())).ys.tolist(),
            "mean": {c: [[None if np.isnan(v) else round(float(v), 6) for v in line]
                         for line in g.mean] for c, g in grids.items()},
            "seeds": next(iter(grids.values())).count.tolist()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    speed = parser.add_mutually_exclusive_group()
    speed.add_argument("--quick", action="store_true", help="a smaller phase zoo (minutes)")
    speed.add_argument("--smoke", action="store_true", help="seconds: a tiny digits grid")
    parser.add_argument("--metrics", default=",".join(METRICS),
                        help="comma-separated subset of " + ", ".join(METRICS))
    parser.add_argument("--save", action="store_true",
                        help="write benchmarks/results/analyze-<mode>.json (not in smoke mode)")
    args = parser.parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        parser.error(f"unknown metrics {unknown}; choose from {list(METRICS)}")
    with tempfile.TemporaryDirectory() as scratch:
        zoo = _zoo(mode, scratch if mode == "smoke" else None)
        rows = [measure(zoo, m, SETTINGS[mode], SETUPS[mode][2]) for m in metrics]
        # The loss-based metrics, width by width (the phase zoo's cost grows with width).
        peak = matmul_peak_flops(256 if mode == "smoke" else 1024)
        per_width = {m: by_width(zoo, m, SETTINGS[mode], peak) for m in metrics
                     if m in ("hessian", "mc") and "width" in zoo.columns}
        ceiling = (ceiling_summary(per_width["hessian"], peak)
                   if "ceiling" in per_width.get("hessian", [{}])[0] else None)
        save = args.save and mode != "smoke"
        phase = phase_report(zoo, rows, RESULTS / f"analyze-{mode}-phase.png" if save else None)

    cols = ["metric", "models", "vmapped_models_per_s", "vmapped_models_per_s_with_compile",
            "loop_models_per_s", "speedup"]
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
    table = [[fmt(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in table)) for i, c in enumerate(cols)]
    print(f"zoo: {zoo.path.name} ({zoo.manifest['recipe']['name']}), "
          f"{len(zoo.filter(epoch='last'))} models at the last epoch, "
          f"{zoo.weight_space.num_params:,} stored parameters each; {jax.device_count()} "
          f"{jax.default_backend()} device(s)")
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths)))
    for t in table:
        print("  ".join(v.rjust(w) for v, w in zip(t, widths)))
    print(f"(loop: one model per jitted call, timed on {SETUPS[mode][2]} models spread over the "
          f"grid after a warm-up; vmapped: every model, steady state = second run)")
    for m, lines in per_width.items():
        print(f"\n{m}, width by width (ms per model):")
        roof = m == "hessian" and ceiling is not None
        print("  ".join(f"{c:>10}" for c in ("width", "models", "loop", "vmapped", "speedup")
                        + (("GFLOP", "loop GF/s", "vmap GF/s", "ceiling") if roof else ())))
        for r in lines:
            print(f"{r['width']:>10}  {r['models']:>10}  {r['loop_ms']:>10.1f}  "
                  f"{r['vmapped_ms']:>10.1f}  {r['speedup']:>9.2f}x" + (
                      f"  {r['gflop']:>10.3f}  {r['loop_gflop_per_s']:>10.1f}  "
                      f"{r['vmapped_gflop_per_s']:>10.1f}  {r['ceiling']:>9.2f}x" if roof else ""))
        if roof:
            c = ceiling
            print(f"ceiling: at this machine's matmul peak ({c['matmul_peak_gflop_per_s']:.0f} "
                  f"GFLOP/s, one square matmul) the grid's Hessian FLOPs take "
                  f"{c['at_peak_ms_total']:.0f} ms against the loop's {c['loop_ms_total']:.0f} "
                  f"ms: no program doing this arithmetic can beat the loop by more than "
                  f"{c['speedup_ceiling']:.2f}x here (the vectorised run reaches "
                  f"{100 * c['share_of_peak_vmapped']:.0f} % of that peak)")
    result = {"benchmark": "analyze", "mode": mode, "cpu_count": os.cpu_count(),
              "recipe": zoo.manifest["recipe"]["name"], "settings":
                  dataclasses.asdict(SETTINGS[mode])}
    for r in rows:
        m = r["metric"]
        result.update({f"{m}_vmapped_models_per_s": r["vmapped_models_per_s"],
                       f"{m}_vmapped_models_per_s_with_compile":
                           r["vmapped_models_per_s_with_compile"],
                       f"{m}_loop_models_per_s": r["loop_models_per_s"],
                       f"{m}_speedup": r["speedup"], f"{m}_models": r["models"]})
    for m, lines in per_width.items():
        result[f"{m}_by_width"] = lines
    if ceiling is not None:
        result["hessian_ceiling"] = ceiling
    if rows:
        result["min_speedup"] = min(r["speedup"] for r in rows)
    result["phase"] = phase
    if save:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"analyze-{mode}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
