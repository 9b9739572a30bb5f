"""Plain-text tables for the benchmarks' reports: a label column on the left, figures right."""

from __future__ import annotations


def table(head: tuple, rows: list[tuple]) -> str:
    """`head` and `rows` as aligned columns under a dashed rule; cells may be any printable
    value."""
    lines = [tuple(str(c) for c in line) for line in [head, *rows]]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                      enumerate(zip(line, widths))) for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)


def augmentation_markdown(paths: list[str]) -> str:
    """The README's augmentation table, printed from `benchmarks/probe.py --augmentations --save`
    result files (README numbers come from committed JSON, never typed)."""
    import json

    lines = ["| encoder | augment | val τ | test τ ± 95 % CI | Δ test τ vs none (paired) |",
             "|---|---|---|---|---|"]
    for path in paths:
        with open(path) as f:
            report = json.load(f)
        for encoder, result in report["encoders"].items():
            for setting, row in result["settings"].items():
                chosen = " (chosen on val)" if setting == result["chosen_by_val"] else ""
                delta = (f"{row['test_tau_minus_none']:+.4f} ± "
                         f"{row['test_tau_minus_none_ci95']:.4f}"
                         if "test_tau_minus_none" in row else "")
                lines.append(f"| {encoder} | {setting}{chosen} | {row['val_tau']:.4f} | "
                             f"{row['test_tau']:.4f} ± {row['test_tau_ci95']:.4f} | {delta} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    # python benchmarks/_report.py augmentations benchmarks/results/probe_augmentations_*.json
    if len(sys.argv) < 3 or sys.argv[1] != "augmentations":
        sys.exit("usage: python benchmarks/_report.py augmentations RESULT.json [...]")
    print(augmentation_markdown(sys.argv[2:]))
