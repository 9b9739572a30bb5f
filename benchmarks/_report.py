"""Plain-text tables for the benchmarks' reports: a label column on the left, figures right."""

from __future__ import annotations

import json
import os
import sys

# Appended, not prepended, as in the benchmarks: run as a script, this folder is first on the path.
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._goals import goals_markdown  # noqa: E402


def table(head: tuple, rows: list[tuple]) -> str:
    """`head` and `rows` as aligned columns under a dashed rule; cells may be any printable
    value."""
    lines = [tuple(str(c) for c in line) for line in [head, *rows]]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                      enumerate(zip(line, widths))) for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)


def _load(paths: list[str]) -> list[dict]:
    """The result files' JSON objects, in order."""
    out = []
    for path in paths:
        with open(path) as f:
            out.append(json.load(f))
    return out


def without_options(argv: list[str], *options: str) -> list[str]:
    """`argv` less each of `options` and its value (``--option V`` or ``--option=V``)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in options:
            skip = True
        elif not arg.startswith(tuple(f"{option}=" for option in options)):
            out.append(arg)
    return out


def _num(value, spec: str) -> str:
    """`value` formatted, or an en dash where a result file does not have it."""
    return "–" if value is None else format(value, spec)


def augmentation_markdown(paths: list[str]) -> str:
    """The README's augmentation table, printed from `benchmarks/probe.py --augmentations --save`
    result files (README numbers come from committed JSON, never typed)."""
    lines = ["| encoder | augment | val τ | test τ ± 95 % CI | Δ test τ vs none (paired) |",
             "|---|---|---|---|---|"]
    for report in _load(paths):
        for encoder, result in report["encoders"].items():
            for setting, row in result["settings"].items():
                chosen = " (chosen on val)" if setting == result["chosen_by_val"] else ""
                delta = (f"{row['test_tau_minus_none']:+.4f} ± "
                         f"{row['test_tau_minus_none_ci95']:.4f}"
                         if "test_tau_minus_none" in row else "")
                lines.append(f"| {encoder} | {setting}{chosen} | {row['val_tau']:.4f} | "
                             f"{row['test_tau']:.4f} ± {row['test_tau_ci95']:.4f} | {delta} |")
    return "\n".join(lines)


def timed(method: dict) -> str:
    """Seconds for 1,000 samples, measured at seed 0 only (a run from --first-seed has none)."""
    return f"{method['sample_1000_s']:.1f} s" if "sample_1000_s" in method else "–"


def generate_markdown(paths: list[str]) -> str:
    """README's generator table, printed from `benchmarks/generate.py` result files: per zoo and
    method, validation (what is chosen on) and test accuracy over seeds with 95 % intervals, the
    novelty audit and calibration."""
    lines = ["| zoo | method | val acc [95 % CI] | test acc [95 % CI] | vs population (test) | "
             "median max IoU: generated / noise / midpoints / knn-2 / knn-4 | novel than | "
             "calibration error q10–q90 (map / raw) | 1,000 samples |",
             "|---|---|---|---|---|---|---|---|---|"]
    # Runs of one zoo at several generator step counts (`--steps`): fewest steps first.
    for report in sorted(_load(paths), key=lambda r: (r["steps"], r.get("first_seed", 0))):
        first_seed, seeds = report.get("first_seed", 0), report["seeds"]
        seeds_text = (f"seeds {first_seed}–{first_seed + seeds - 1}" if first_seed
                      else f"{seeds} seed{'s' if seeds > 1 else ''}")
        for zoo, result in report["zoos"].items():
            pop = result["population"]
            first = True
            for name, m in result["methods"].items():
                chosen = (" (chosen on val)" if name == result["best_on_val"]
                          and len(result["methods"]) > 1 else "")
                nov = m["novelty"]
                ious = " / ".join(f"{nov[k]['median_max_iou']:.2f}" if k in nov else "–"
                                  for k in ("generated", "noise_equal_acc", "midpoints", "knn-2",
                                            "knn-4"))
                beaten = [k.removeprefix("more_novel_than_") for k, v in m["verdicts"].items()
                          if v]
                calib = m.get("calibration")
                calib_text = (f"{calib['calibration']['max_abs_error'] * 100:.1f} / "
                              f"{calib['calibration_raw']['max_abs_error'] * 100:.1f} pt"
                              if calib else "")
                label = (f"{zoo} ({result['num_train']} models, val {pop['val']:.3f}, test "
                         f"{pop['test']:.3f}; {report['steps']:,} steps, {seeds_text})"
                         if first else "")
                first = False
                lines.append(
                    f"| {label} | {name}{chosen} | {m['val']['mean']:.3f} "
                    f"[{m['val']['ci95'][0]:.3f}, {m['val']['ci95'][1]:.3f}] | "
                    f"{m['test']['mean']:.3f} [{m['test']['ci95'][0]:.3f}, "
                    f"{m['test']['ci95'][1]:.3f}] | {m['test']['gap'] * 100:+.1f} pt | {ious} | "
                    f"{', '.join(beaten) or 'none'} | {calib_text} | "
                    f"{timed(m)} |")
    return "\n".join(lines)


def interpolation_markdown(paths: list[str]) -> str:
    """Unconditional generators beside the weight averages of the novelty audit, from
    `benchmarks/generate.py` result files: per zoo and unconditional method, the samples' mean
    test accuracy and those of midpoints of random aligned training pairs and of averages of the
    2 / 4 nearest aligned training models, each as a gap to the population (the audit scores all
    on the same test split). Files of other shapes (ablations) are skipped."""
    lines = ["| zoo | steps | method | seeds | generated (test) | midpoints | knn-2 averages | "
             "knn-4 averages | generated − midpoints |",
             "|---|---|---|---|---|---|---|---|---|"]
    gap = lambda acc, pop: f"{acc:.3f} ({(acc - pop) * 100:+.1f})"
    reports = [r for r in _load(paths) if "zoos" in r and not r.get("extra_words")]
    for report in sorted(reports, key=lambda r: (r["mode"] != "quick", r["steps"])):
        size = "quick, " if report["mode"] == "quick" else ""
        for zoo, result in report["zoos"].items():
            pop = result["population"]["test"]
            for name, m in result["methods"].items():
                nov = m["novelty"]
                if name.endswith("+acc") or "midpoints" not in nov:
                    continue  # conditioned methods are asked for q90: not a draw of the zoo
                lines.append(
                    f"| {zoo} ({size}{result['num_train']} models, test {pop:.3f}) | "
                    f"{report['steps']:,} | {name} | {len(m['seeds'])} | "
                    f"{gap(m['test']['mean'], pop)} | "
                    + " | ".join(gap(nov[k]["acc_mean"], pop)
                                 for k in ("midpoints", "knn-2", "knn-4"))
                    + f" | {(m['test']['mean'] - nov['midpoints']['acc_mean']) * 100:+.1f} pt |")
    return "\n".join(lines)


def flow_ablation_markdown(paths: list[str]) -> str:
    """README's flow ablation table, printed from `benchmarks/flow_ablation.py --save` files."""
    lines = ["| zoo | variant | seeds | val acc [95 % CI] | vs population (val) | test acc | "
             "vs population (test) | nearest training model (rel.) |",
             "|---|---|---|---|---|---|---|---|"]
    # The first batch (untagged) first, later batches after it by tag.
    for report in sorted(_load(paths), key=lambda r: r.get("tag") or ""):
        for zoo, result in report["zoos"].items():
            pop = result["population"]
            for i, (name, v) in enumerate(result["variants"].items()):
                chosen = " (best on val)" if name == result["best_on_val"] else ""
                tag = f" [{report['tag']}]" if report.get("tag") else ""
                label = (f"{zoo}{tag} (val {pop['val']:.3f}, test {pop['test']:.3f})" if i == 0
                         else "")
                seeds, first = len(v["val"]["per_seed"]), report.get("first_seed", 0)
                if first:  # a batch that started at another seed says which
                    seeds = (f"1 (seed {first})" if seeds == 1 else
                             f"{seeds} (seeds {first}–{first + seeds - 1})")
                lines.append(f"| {label} | {name}{chosen} | {seeds} | "
                             f"{v['val']['mean']:.3f} [{v['val']['ci95'][0]:.3f}, "
                             f"{v['val']['ci95'][1]:.3f}] | {v['val']['gap'] * 100:+.1f} pt | "
                             f"{v['test']['mean']:.3f} | {v['test']['gap'] * 100:+.1f} pt | "
                             f"{v['nn_relative']:.2f} |")
    return "\n".join(lines)


def pca_ceiling_markdown(paths: list[str]) -> str:
    """The training models projected onto their top principal components, scored: the ceiling of
    a generator in a PCA space, from `benchmarks/pca_ceiling.py --save` files."""
    lines = ["| zoo | components | variance explained | val acc | vs population (val) | "
             "test acc | vs population (test) |", "|---|---|---|---|---|---|---|"]
    for report in _load(paths):
        for zoo, result in report["zoos"].items():
            pop = result["population"]
            for i, r in enumerate(result["rows"]):
                label = (f"{zoo} ({result['num_models']:,} models, {result['num_params']:,} "
                         f"weights; val {pop['val']:.3f}, test {pop['test']:.3f})" if i == 0
                         else "")
                span = " (all)" if r["components"] == result["rank"] else ""
                lines.append(f"| {label} | {r['components']}{span} | {r['explained']:.2f} | "
                             f"{r['val']:.3f} | {(r['val'] - pop['val']) * 100:+.1f} pt | "
                             f"{r['test']:.3f} | {(r['test'] - pop['test']) * 100:+.1f} pt |")
    return "\n".join(lines)


def analyze_markdown(paths: list[str]) -> str:
    """README's `wsl zoo analyze` speed table, printed from `benchmarks/analyze.py --save`."""
    lines = ["| zoo | metric | models | vectorised models/s | one at a time (jitted) models/s | "
             "speedup |", "|---|---|---|---|---|---|"]
    for report in _load(paths):
        metrics = [k.removesuffix("_speedup") for k in report if k.endswith("_speedup")
                   and k != "min_speedup"]
        for i, m in enumerate(metrics):
            label = f"{report['recipe']} ({report['mode']})" if i == 0 else ""
            lines.append(f"| {label} | {m} | {report[m + '_models']} | "
                         f"{report[m + '_vmapped_models_per_s']:.3g} | "
                         f"{report[m + '_loop_models_per_s']:.3g} | "
                         f"{report[m + '_speedup']:.1f}× |")
    return "\n".join(lines)


def analyze_width_markdown(paths: list[str]) -> str:
    """The loss-based metrics' cost width by width, from `benchmarks/analyze.py --save` files;
    for the Hessian, where measured, its FLOPs per model and the speed-up ceiling (loop time
    against those FLOPs at the machine's matmul peak)."""
    lines = ["| zoo | metric | width | models | one at a time ms/model | vectorised ms/model | "
             "speedup | GFLOP/model | ceiling at matmul peak |", "|---" * 9 + "|"]
    for report in _load(paths):
        for metric in ("hessian", "mc"):
            for i, r in enumerate(report.get(f"{metric}_by_width", [])):
                label = f"{report['recipe']} ({report['mode']})" if i == 0 else ""
                roof = (f"{r['gflop']:.3g} | {r['ceiling']:.1f}×" if "ceiling" in r
                        else "– | –")
                lines.append(f"| {label} | {metric if i == 0 else ''} | {r['width']} | "
                             f"{r['models']} | {r['loop_ms']:.1f} | {r['vmapped_ms']:.1f} | "
                             f"{r['speedup']:.2f}× | {roof} |")
            total = report.get("hessian_ceiling") if metric == "hessian" else None
            if total:
                lines.append(f"|  |  | all | {sum(r['models'] for r in report['hessian_by_width'])}"
                             f" | {total['loop_ms_total']:.0f} (sum) | "
                             f"{total['vmapped_ms_total']:.0f} (sum) | "
                             f"{total['loop_ms_total'] / total['vmapped_ms_total']:.2f}× | "
                             f"peak {total['matmul_peak_gflop_per_s']:.0f} GFLOP/s | "
                             f"{total['speedup_ceiling']:.1f}× |")
    return "\n".join(lines)


def phase_markdown(paths: list[str]) -> str:
    """README's phase grid: test accuracy, Hessian trace and alpha per (width, lr) cell, mean
    over seeds, printed from the `phase` entry of `benchmarks/analyze.py --save` files."""
    lines = []
    for report in _load(paths):
        phase = report["phase"]
        columns = [c for c in ("test_acc", "hessian_trace", "spectral_alpha")
                   if c in phase["mean"]]
        lines += [f"| {phase['y']} \\ {phase['x']} | "
                  + " | ".join(f"{x:g}" for x in phase["xs"]) + " |",
                  "|---|" + "---|" * len(phase["xs"])]
        for c in columns:
            lines.append(f"| **{c}** |" + " |" * len(phase["xs"]))
            for y, row in zip(phase["ys"], phase["mean"][c]):
                cells = " | ".join("—" if v is None else f"{v:.3g}" for v in row)
                lines.append(f"| {y:g} | {cells} |")
    return "\n".join(lines)


def transfer_markdown(paths: list[str]) -> str:
    """README's transfer table, printed from `benchmarks/transfer.py --save` files: per experiment
    and init, validation accuracy at epochs 0, 1, 5 and the last, test accuracy after the last
    epoch and epochs to reach random init's final accuracy — means over seeds [95 % CI]; and the
    inits' test accuracy at epoch 0 where a file records it."""
    reports = _load(paths)
    start = any("test_epoch0" in row for report in reports for result in report["experiments"]
                for row in result["summary"].values())
    cols = ("val_epoch0", *("test_epoch0",) * start, "val_epoch1", "val_epoch5", "val_final",
            "test_final", "epochs_to_random_final")
    lines = ["| experiment | init | val acc epoch 0 | " + "test acc epoch 0 | " * start
             + "epoch 1 | epoch 5 | last epoch | test acc (last) | epochs to random's last |",
             "|---|---|---|" + "---|" * start + "---|---|---|---|---|"]
    for report in reports:
        for result in report["experiments"]:
            seeds = result["seeds"]
            label = (f"{report['mode']}: {result['experiment']} ({result['recipe']}, "
                     f"{len(result['tasks'])} held-out tasks, {seeds} seed{'s' * (seeds > 1)}, "
                     f"chance {result['chance']:.2f})")
            for name, row in result["summary"].items():
                cells = []
                for c in cols:
                    if c not in row:
                        cells.append("–")
                        continue
                    lo, hi = row[c]["ci95"]
                    digits = 1 if c == "epochs_to_random_final" else 3
                    interval = f" [{lo:.{digits}f}, {hi:.{digits}f}]" if seeds > 1 else ""
                    cells.append(f"{row[c]['mean']:.{digits}f}{interval}")
                lines.append(f"| {label} | {name} | " + " | ".join(cells) + " |")
                label = ""
    return "\n".join(lines)


def transfer_ablation_markdown(paths: list[str]) -> str:
    """README's transfer ablations, printed from `benchmarks/transfer.py --save-ablation` files: per
    ablation and experiment, the sampled init's validation accuracy at epochs 0, 1, 5 and the last,
    random init's last (the target, fine-tuned alike) and the epochs the samples need to reach it
    (means over the run's seeds)."""
    lines = ["| ablation (options) | experiment | seeds | sampled: val epoch 0 | epoch 1 | "
             "epoch 5 | last epoch | random: last epoch | sampled: epochs to random's last |",
             "|---|---|---|---|---|---|---|---|---|"]
    # The run with the fewest options (the benchmark's own settings on fewer seeds) first.
    for report in sorted(_load(paths), key=lambda r: (len(r["ablation"]["options"]),
                                                      r["ablation"]["tag"])):
        # What the other columns say already (which experiment, how many seeds) is left out.
        shown = without_options(report["ablation"]["options"], "--experiments", "--seeds")
        shown = f"`{' '.join(shown)}`" if shown else "the benchmark's settings"
        for result in report["experiments"]:
            sampled, random = result["summary"]["sampled"], result["summary"]["random"]
            cells = [f"{sampled[c]['mean']:.3f}" for c in ("val_epoch0", "val_epoch1",
                                                          "val_epoch5", "val_final")]
            lines.append(f"| {report['ablation']['tag']} ({shown}) | "
                         f"{result['experiment']} | {result['seeds']} | " + " | ".join(cells)
                         + f" | {random['val_final']['mean']:.3f} | "
                         f"{sampled['epochs_to_random_final']['mean']:.1f} |")
    return "\n".join(lines)


def encoder_speed_markdown(paths: list[str]) -> str:
    """README's encoder speed table, printed from `benchmarks/encoder_speed.py --save`: NFN-HNP
    fwd + bwd networks/s against the `nfn` package (ours also micro-batched, where the file has
    it), and NG-GNN peak bytes per edge per network."""
    lines = ["| weight space | batch | NFN-HNP ours (jax) nets/s | ours micro-batched (size) | "
             "nfn (torch) nets/s | speedup | speedup micro-batched | MFLOP / network | "
             "ours GFLOP/s (best) | NG-GNN bytes / edge / network (batch) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for report in _load(paths):
        memory = {m["space"]: m for m in report["graph_memory"]}  # the largest batch is last
        for row in report["nfn"]:
            torch_rate = row["torch_networks_per_s"]
            micro = row.get("jax_microbatched_networks_per_s")

            def ratio(rate):
                return f"{rate / torch_rate:.2f}×" if rate and torch_rate else "–"

            mem = memory[row["space"]]
            micro_cell = f"{micro:,.0f} ({row['microbatch']})" if micro else "–"
            lines.append(f"| {row['space']} | {row['batch']} | {row['jax_networks_per_s']:,.0f} | "
                         f"{micro_cell} | {f'{torch_rate:,.0f}' if torch_rate else 'skipped'} | "
                         f"{ratio(row['jax_networks_per_s'])} | {ratio(micro)} | "
                         f"{row['mflop_per_network']:,.0f} | {row['jax_gflop_per_s']:.1f} | "
                         f"{mem['bytes_per_edge_per_network']:,.0f} ({mem['batch']}) |")
    return "\n".join(lines)


def align_markdown(paths: list[str]) -> str:
    """README's alignment table, printed from `benchmarks/align.py` result files: CPU-time
    speedup over the per-pair reference per zoo and in all, the share both spend in scipy's
    assignment solver, and whether the permutations agree and planted ones are recovered."""
    lines = ["| run | zoos (CPU-time speedup each) | all, CPU time | all, wall clock | "
             "in scipy's solver: ours / reference (s) | same permutations | planted recovered |",
             "|---|---|---|---|---|---|---|"]
    for report in _load(paths):
        zoos = ", ".join(f"{name} {speedup:.2f}×"
                         for name, speedup in report["speedup_per_zoo"].items())
        recovered = [report[k] for k in report if k.startswith("recovery_")
                     and report[k] is not None]
        lines.append(f"| {report['mode']}, {report['models']} models, {report['backend']} | "
                     f"{zoos} | {report['speedup_vs_reference']:.2f}× | "
                     f"{report['speedup_wall_clock']:.2f}× | "
                     f"{report['assignment_seconds']['ours']:.3f} / "
                     f"{report['assignment_seconds']['reference']:.3f} | "
                     f"{report['same_perms']:.2f} | {min(recovered):.2f} |")
    return "\n".join(lines)


def _on_gpu(report: dict) -> str:
    """", on <the GPU>" for a result measured on one; files before the device was recorded ran on
    this project's 2 CPU cores."""
    device = report.get("device", "")
    return f", on {device.split('(', 1)[-1].rstrip(')')}" if "gpu" in device else ""


def _zoo_draw(report: dict) -> str:
    """", zoo <hash prefix>": tells apart two builds of one recipe (files before the hash was
    recorded have none)."""
    sha = report.get("zoo_sha256")
    return f", zoo {sha[:8]}" if sha else ""


def paired_interval(difference: dict | None) -> str:
    """` [-0.0030, +0.0910]`: the 95 % interval of a paired difference over seeds (the probe
    benchmark's `minus_statnn_paired` entries); empty with fewer than two seeds or none. Four
    decimals, as the difference itself: the verdict against + 0.02 may turn on the fourth."""
    if difference is None or len(difference["per_seed"]) < 2:
        return ""
    low, high = difference["ci95"]
    return f" [{low:+.4f}, {high:+.4f}]"


def probe_markdown(paths: list[str]) -> str:
    """README's encoder comparison, printed from `benchmarks/probe.py --save` files: per zoo and
    encoder, test Kendall τ (mean ± std over seeds), R², training time, and τ against StatNN:
    with the 95 % interval of the per-seed (paired) differences where the file has them."""
    lines = ["| zoo | encoder | val τ | test τ ± std | τ − statnn [paired 95 %] | R² | "
             "train s / seed |",
             "|---|---|---|---|---|---|---|"]
    for report in _load(paths):
        seeds, first = report["seeds"], report.get("first_seed", 0)
        loss = report.get("loss", "auto")
        # A run on later seeds (fresh splits) says which; training settings it changed follow.
        which = (f" {first}–{first + seeds - 1}" if first and seeds > 1
                 else f" {first}" if first else "")
        settings = "".join(f", {word}" for word in report.get("train_settings", []))
        label = (f"{report['zoo'].rstrip('/').rsplit('/', 1)[-1]} ({report['mode']}, "
                 f"{report['num_rows']} networks, {report['steps']:,} steps, {seeds} "
                 f"seed{'s' * (seeds > 1)}{which}{'' if loss == 'auto' else f', {loss} loss'}"
                 f"{settings}{_on_gpu(report)}{_zoo_draw(report)})")
        statnn = report["tau"].get("statnn")
        val = report.get("val_tau", {})
        paired = report.get("minus_statnn_paired", {})
        for name, tau in report["tau"].items():
            versus = ("–" if statnn is None or name == "statnn"
                      else f"{tau - statnn:+.4f}{paired_interval(paired.get(name))}")
            lines.append(f"| {label} | {name} | {_num(val.get(name), '.4f')} | {tau:.4f} ± "
                         f"{report['tau_std'][name]:.4f} | {versus} | {report['r2'][name]:.3f} | "
                         f"{report['seconds_per_seed'][name]:,.0f} |")
            label = ""
        for name, why in report.get("skipped", {}).items():
            # "<encoder> supports …: <the tensor at fault>: <why>" → its first and last clauses
            head, _, rest = why.partition(": ")
            short = f"{head}: {rest.rsplit(': ', 1)[-1]}" if rest else head
            lines.append(f"| {label} | {name} | | skipped: {short} | | | |")
            label = ""
    return "\n".join(lines)


def gpu_markdown(paths: list[str]) -> str:
    """README's at-scale table, printed from `benchmarks/gpu.py --json` files: seconds per job
    against the goals for one H100/H200."""
    jobs = (("zoo_build", "build a small-cnn zoo", "models_size", "models"),
            ("probe", "NFN-HNP probe of test accuracy", "epochs_size", "epochs"),
            ("sample", "sample networks from a flow generator", "samples_size", "networks"))
    lines = ["| device | job | size | seconds | goal | meets goal |", "|---|---|---|---|---|---|"]
    for report in _load(paths):
        label = f"{report['device']} ({report['mode']})"
        for key, what, size_key, unit in jobs:
            lines.append(f"| {label} | {what} | {report[size_key]:,} {unit} | "
                         f"{report['seconds'][key]:,.1f} | ≤ {report['goals'][key]:,.0f} | "
                         f"{'yes' if report['meets_goals'][key] else 'no'} |")
            label = ""
    return "\n".join(lines)


KINDS = {"augmentations": augmentation_markdown, "generate": generate_markdown,
         "interpolation": interpolation_markdown, "flow_ablation": flow_ablation_markdown,
         "analyze": analyze_markdown, "analyze_width": analyze_width_markdown,
         "phase": phase_markdown, "transfer": transfer_markdown,
         "encoder_speed": encoder_speed_markdown, "probe": probe_markdown, "gpu": gpu_markdown,
         "align": align_markdown, "pca_ceiling": pca_ceiling_markdown,
         "transfer_ablation": transfer_ablation_markdown, "goals": goals_markdown}
# README marks each printed table: ``<!-- table: KIND GLOB -->`` … ``<!-- end table -->``.
README_TABLE = r"^<!-- table: (\w+) (\S+) -->\n(.*?)^<!-- end table -->$"


def reprint_tables(text: str, root) -> tuple[str, int]:
    """`text` with every marked table printed again from the result files under `root`."""
    import re
    from pathlib import Path

    def reprint(match) -> str:
        kind, pattern = match.group(1), match.group(2)
        files = sorted(str(p) for p in Path(root).glob(pattern))
        return f"<!-- table: {kind} {pattern} -->\n{KINDS[kind](files)}\n<!-- end table -->"

    return re.subn(README_TABLE, reprint, text, flags=re.S | re.M)


def update_readme(readme: str = "README.md") -> int:
    """Reprint every marked table of `readme` from its result files; returns how many."""
    from pathlib import Path

    path = Path(readme)
    text, count = reprint_tables(path.read_text(encoding="utf-8"), path.resolve().parent)
    path.write_text(text, encoding="utf-8")
    return count


if __name__ == "__main__":
    # python benchmarks/_report.py augmentations benchmarks/results/probe_augmentations_*.json
    # python benchmarks/_report.py readme   (reprints every marked table of README.md)
    if sys.argv[1:] == ["readme"]:
        print(f"reprinted {update_readme()} tables in README.md")
    elif len(sys.argv) < 3 or sys.argv[1] not in KINDS:
        sys.exit(f"usage: python benchmarks/_report.py {{{','.join(KINDS)}}} RESULT.json [...]"
                 f" | readme")
    else:
        print(KINDS[sys.argv[1]](sys.argv[2:]))
