"""Exact maximum-score linear assignment for batches of square score matrices.

`solve(scores)` returns, for every (n, n) matrix S in a batch, a permutation p maximising
Σ_i S[i, p[i]] — the optimum scipy's `linear_sum_assignment(S, maximize=True)` reaches — while
calling scipy only when it has to: when the row-wise argmax of S is already a permutation it is
optimal (Σ_i max_j S[i, j] bounds every assignment from above and it attains the bound), which is
the common case once weight matching is close to converged, and it is checked for the whole batch
with a few NumPy operations.

Groups normalised in blocks (GroupNorm) admit only block-respecting permutations: whole blocks move
and units shuffle inside each block. `solve(scores, blocks=k)` finds the best such permutation
exactly: the best within-block assignment for every (target block, source block) pair, then the
best assignment of blocks on those values.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy.optimize import linear_sum_assignment

from wsl.weight_space import WeightSpaceError


def assignment_value(scores, perm) -> np.ndarray:
    """Σ_i S[i, p[i]] for each matrix in a batch (..., n, n) and permutation (..., n)."""
    scores, perm = np.asarray(scores), np.asarray(perm)
    n = scores.shape[-1]
    # One flat gather: far cheaper than take_along_axis for the many small batches weight
    # matching evaluates, and the same values summed in the same order.
    flat = scores.reshape(-1, n * n)
    rows = np.arange(len(flat))[:, None] * (n * n) + np.arange(n) * n
    picked = flat.ravel()[rows + perm.reshape(-1, n)]
    return picked.astype(np.float64).sum(-1).reshape(scores.shape[:-2])


def _check(scores: np.ndarray, blocks: int) -> None:
    if scores.ndim < 2 or scores.shape[-1] != scores.shape[-2]:
        raise WeightSpaceError(f"assignment scores must be square matrices (..., n, n); got shape "
                         f"{scores.shape}")
    n = scores.shape[-1]
    if blocks < 1 or n % blocks:
        raise WeightSpaceError(f"cannot split {n} units into {blocks} equal blocks")
    if scores.size == 0 or np.isfinite(scores.min()) and np.isfinite(scores.max()):
        return  # NaN propagates through min and max, and an inf is one of them
    bad = ~np.isfinite(scores).reshape(-1, n * n).all(-1)
    if bad.any():
        raise WeightSpaceError(f"assignment scores of shape {scores.shape} contain NaN or inf "
                         f"(batch entries {np.flatnonzero(bad)[:10].tolist()}); align only "
                         f"finite networks")


def _row_argmax_certified(flat: np.ndarray, blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """(argmax per row, whether it is an optimal admissible permutation) for each matrix."""
    n = flat.shape[-1]
    arg = flat.argmax(-1)
    ok = (np.sort(arg, axis=-1) == np.arange(n)).all(-1)
    if blocks > 1:
        # The argmax is then optimal among all permutations; it is admissible only if every target
        # block draws all its units from one source block.
        size = n // blocks
        src = (arg // size).reshape(len(flat), blocks, size)
        ok &= (src == src[..., :1]).all(-1).all(-1)
    return arg, ok


def _solve_blocks(scores: np.ndarray, blocks: int) -> np.ndarray:
    """Best permutation of one (n, n) matrix that moves whole blocks and permutes within them."""
    n = scores.shape[0]
    size = n // blocks
    tiles = scores.reshape(blocks, size, blocks, size).transpose(0, 2, 1, 3)
    inner = np.empty((blocks, blocks, size), dtype=np.int64)
    value = np.empty((blocks, blocks))
    for b in range(blocks):
        for c in range(blocks):
            _, cols = linear_sum_assignment(tiles[b, c], maximize=True)
            inner[b, c] = cols
            value[b, c] = tiles[b, c][np.arange(size), cols].sum()
    _, order = linear_sum_assignment(value, maximize=True)
    return (order[:, None] * size + inner[np.arange(blocks), order]).reshape(n)


def solve(scores, *, blocks: int = 1, workers: int | None = None) -> np.ndarray:
    """Permutations p (..., n) maximising Σ_i S[i, p[i]] for scores (..., n, n), exactly.

    With `blocks=k`, only permutations that keep the k contiguous blocks of units together are
    admissible (the GroupNorm symmetry), and the best of those is returned. Problems are solved
    on up to `workers` threads (default: the CPU count, at most 8) when there are enough of them.
    """
    scores = np.asarray(scores)
    _check(scores, blocks)
    n = scores.shape[-1]
    flat = scores.reshape(-1, n, n)
    arg, certified = _row_argmax_certified(flat, blocks)
    out = arg.astype(np.int64)
    todo = np.flatnonzero(~certified)
    if not len(todo):
        return out.reshape(scores.shape[:-1])
    if blocks == 1:
        # One negated float64 copy for the batch instead of one inside every maximize=True call
        # (negation is exact, so scipy sees the same problem).
        problems = np.negative(flat if len(todo) == len(flat) else flat[todo], dtype=np.float64)
        solve_all = lambda ps: [linear_sum_assignment(c)[1] for c in ps]
    else:
        problems = flat[todo]
        solve_all = lambda ps: [_solve_blocks(s, blocks) for s in ps]
    threads = _threads(workers, len(todo), n)
    if threads > 1:
        # scipy releases the GIL inside the solver, so independent problems run in parallel.
        parts = _pool(threads).map(solve_all, np.array_split(problems, threads))
        out[todo] = [p for part in parts for p in part]
    else:
        out[todo] = solve_all(problems)
    return out.reshape(scores.shape[:-1])


_POOLS: dict[int, ThreadPoolExecutor] = {}
_DEFAULT_WORKERS = min(os.cpu_count() or 1, 8)


def _pool(threads: int) -> ThreadPoolExecutor:
    if threads not in _POOLS:
        _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="wsl-assignment")
    return _POOLS[threads]


def _threads(workers: int | None, problems: int, n: int) -> int:
    """Threads worth starting: each must get enough problems to amortise handing them out."""
    if workers is None:
        workers = _DEFAULT_WORKERS
    if workers < 1:
        raise WeightSpaceError(f"workers must be at least 1; got {workers}")
    # The solver is cubic in n. A thread pays for itself only with tens of milliseconds of
    # solving: below that, handing out work and contending for the GIL between scipy calls cost
    # more CPU time than they save wall time (a 32 x 32 problem takes ~30 µs).
    work = problems * n ** 3
    return int(max(1, min(workers, problems, work // (512 * 32 ** 3))))


def solve_reference(scores, *, blocks: int = 1) -> np.ndarray:
    """The same optimum, calling scipy for every matrix (no shortcut): for tests and benchmarks."""
    scores = np.asarray(scores)
    _check(scores, blocks)
    n = scores.shape[-1]
    flat = scores.reshape(-1, n, n)
    out = np.stack([linear_sum_assignment(s, maximize=True)[1] if blocks == 1
                    else _solve_blocks(s, blocks) for s in flat]) if len(flat) else \
        np.zeros((0, n), np.int64)
    return out.reshape(scores.shape[:-1])
