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
