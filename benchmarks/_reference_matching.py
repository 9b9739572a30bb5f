"""Weight matching as published (Git Re-Basin, Ainsworth et al. 2023): one pair, NumPy + scipy.

The baseline `benchmarks/align.py` times `wsl.align` against, and the oracle `tests/test_align.py`
checks it with: one copy, so the two cannot drift apart. It follows the same group orders and the
same stopping rule as `wsl.align.weight_matching`, so both reach the same permutations.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment


def published_weight_matching(space, reference: Mapping[str, np.ndarray],
                              other: Mapping[str, np.ndarray], orders: Sequence[Sequence[str]],
                              tol: float, solver: Callable = linear_sum_assignment) -> dict:
    """Permutations per group that align `other` to `reference` (flat dicts of one model each).

    `orders` is one group order per sweep (`wsl.align.group_orders`); a sweep that improves no
    group by more than `tol` × the score scale stops the search. The score matrices take the
    inputs' dtype, so float32 inputs reproduce a float32 implementation, float64 an exact one.
    `solver` is scipy's `linear_sum_assignment` or a drop-in wrapper (the benchmark times it).
    """
    sizes = space.group_sizes
    axes = {t.path: t.axes for t in space.tensors}
    dtype = np.result_type(*reference.values())
    perm = {g: np.arange(n) for g, n in sizes.items()}

    def permuted(path, except_axis):
        w = other[path]
        for ax, g in enumerate(axes[path]):
            if g is not None and ax != except_axis:
                w = np.take(w, perm[g], axis=ax)
        return w

    for order in orders:
        progress = False
        for g in order:
            n = sizes[g]
            a = np.zeros((n, n), dtype)
            for path, axis in space.members(g):
                wa = np.moveaxis(reference[path], axis, 0).reshape(n, -1)
                wb = np.moveaxis(permuted(path, axis), axis, 0).reshape(n, -1)
                a += wa @ wb.T
            _, ci = solver(a, maximize=True)
            rows = np.arange(n)
            old, new = a[rows, perm[g]].sum(), a[rows, ci].sum()
            if new > old + tol * np.abs(a).max(1).sum():
                progress = True
                perm[g] = ci
        if not progress:
            break
    return perm
