"""Weight-matrix spectral metrics for a population: heavy-tail power-law α, FARMS α, stable rank.

Heavy-Tailed Self-Regularization (Martin & Mahoney) reads a layer's training quality off the
empirical spectral density (ESD) of its weight matrix: the smaller the power-law exponent α of the
ESD's tail, the more correlation the layer has learnt. This module computes, for every weight
matrix of every network in a population (leading model axis), in one jitted `jax.vmap` call:

* the WeightWatcher power-law fit of the ESD (α, xmin, KS distance, tail size);
* the FARMS α (Hu et al. 2025, "Eigenspectrum Analysis of Neural Networks without Aspect Ratio
  Bias"): the same fit on the pooled ESD of square sub-matrices, which removes the dependence of α
  on the matrix's aspect ratio;
* the stable rank ‖W‖_F² / ‖W‖₂², the spectral norm ‖W‖₂² and its log10.

Conventions
-----------
ESD
    The eigenvalues of WᵀW for W oriented N × M with N ≥ M: the squared singular values of W,
    min(rows, cols) of them, computed with a batched SVD (more accurate than eigvalsh of WᵀW for
    the small ones). No 1/N normalisation (WeightWatcher dropped its ``normalize`` option in
    0.6.5): α, xmin's rank and the stable rank do not depend on the scale, and the spectral norm
    is then ‖W‖₂² itself.
Matrices of a kernel (`kernel_matrices`)
    A 2-D kernel (in, out) is one matrix. A 4-D convolution kernel (kh, kw, in, out) is, as in
    WeightWatcher's ``conv2D_Wmats``, kh·kw matrices in × out, one per kernel tap, whose
    eigenvalues are pooled into one ESD. (WeightWatcher also multiplies pooled conv eigenvalues by
    1/2, ``conv2d_norm``; that changes the spectral norm of conv layers by that factor and nothing
    else, and is not done here.) A 4-D kernel whose layer name contains ``dense`` (a DenseGeneral
    reading an (H, W, C) feature map, as in CNN-s) and any other kernel of 3 or more axes (attention
    projections (d, heads, head_dim), (heads, head_dim, d)) is one matrix, split between its
    leading and trailing axes where the matrix is closest to square.
Zero eigenvalues
    Exactly-zero rows or columns (padded or masked units) add zero eigenvalues, which a power law
    cannot fit. Eigenvalues ≤ ``rtol`` · λ_max (default `ZERO_RTOL` = 1e-10) count as zero and are
    left out of every fit; a zero direction's singular value comes out of a float32 SVD at rounding
    level (~1e-7 σ_max, so λ ~ 1e-14 λ_max), well below. `power_law_fit` also takes an explicit
    boolean ``valid`` mask. (WeightWatcher uses an absolute threshold, λ > 1e-5, which is not scale
    invariant.) Zero rows or columns therefore leave the ESD fit, stable rank and spectral norm
    unchanged; FARMS blocks are cut from the matrix as it is, so for FARMS the padded units must be
    removed with ``active`` (see `population_spectral`).
Power-law fit (`power_law_fit`)
    WeightWatcher's default fit (``WW_powerlaw.WWFit``, continuous power law, the ``powerlaw``
    package's method): with the valid eigenvalues sorted, x_0 ≤ … ≤ x_{N−1}, every x_i but the
    largest is a candidate xmin; its tail is x_i … x_{N−1} (n = N − i values),
    α_i = 1 + n / Σ_{j≥i} ln(x_j / x_i), and its Kolmogorov–Smirnov distance is
    D_i = max_{j≥i} |1 − (x_j / x_i)^{1−α_i} − (j − i)/n| (fitted CDF against the empirical CDF
    0, 1/n, …, (n−1)/n). The fit is the candidate with the smallest D (the first on a tie). A
    candidate whose tail is all one value (Σ ln = 0) is skipped. WeightWatcher 0.7.7 switches to a
    bias-corrected small-sample variant below 20 eigenvalues; this module does not.
FARMS blocks (`farms_fit`)
    Square blocks of ``block`` × ``block`` (default: min(rows, cols), the largest square) cut by
    sliding windows along both axes; the windows of an axis of length L are evenly spaced from 0 to
    L − block, ``ceil((L − block) / stride) + 1`` of them with ``stride`` = block // 2 by default
    (half-overlapping, both edges covered), so a square matrix is one block and a 4:1 matrix with
    the default block is 7 half-overlapping blocks. Every block of every matrix of the kernel is
    used; their eigenvalues are pooled into one ESD (the paper's "average ESD") and fitted as
    above. (The public FARMS code places 10 evenly spaced windows per axis of 100 × 100·Q blocks,
    aspect ratio Q = 2 by default; small zoo layers need a block size that follows the layer.)
    A block smaller than `MIN_FARMS_BLOCK` gives no FARMS α (NaN).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from wsl.eval.errors import EvaluationError

ZERO_RTOL = 1e-10
# WeightWatcher skips a layer with fewer eigenvalues than this (DEFAULT_MIN_EVALS in 0.7.7).
MIN_EVALS = 8
# Blocks of 1 × 1 or 2 × 2 have ESDs made of squared entries, not of a matrix's spectrum.
MIN_FARMS_BLOCK = 4
# Entries of the (candidates × eigenvalues) KS table computed at once per model: the xmin search
# is quadratic in the number of eigenvalues, and a pooled FARMS ESD can hold thousands.
_KS_CHUNK = 1 << 16


# ----------------------------------------------------------------------------- matrices and ESDs
def kernel_matrices(path: str, kernel) -> jax.Array:
    """The matrices of one kernel, shape (matrices, rows, cols), whose eigenvalues form its ESD.

    `path` names the tensor (e.g. ``"conv_0/kernel"``); it decides whether a 4-D kernel is a
    convolution (see the module docstring). Leading model axes are not allowed here: vmap.
    """
    x = jnp.asarray(kernel)
    if x.ndim < 2:
        raise EvaluationError(f"{path!r} has shape {x.shape}; a weight matrix needs ≥ 2 axes")
    if x.ndim == 2:
        return x[None]
    if x.ndim == 4 and not _is_dense(path):
        kh, kw, cin, cout = x.shape
        return x.reshape(kh * kw, cin, cout)
    split = _squarest_split(x.shape)
    rows = math.prod(x.shape[:split])
    return x.reshape(1, rows, -1)


def _is_dense(path: str) -> bool:
    layer = path.rsplit("/", 1)[0] if "/" in path else path
    return "dense" in layer.lower()


def _squarest_split(shape: tuple[int, ...]) -> int:
    # log of the aspect ratio, so 16 × 4 and 4 × 16 are as far from square; ties go to the earlier
    # split (inputs usually lead: (d, heads, head_dim) is d × heads·head_dim).
    costs = [abs(math.log(math.prod(shape[:k]) / math.prod(shape[k:])))
             for k in range(1, len(shape))]
    return 1 + int(np.argmin(costs))


def _as_stack(matrix, what: str) -> jax.Array:
    x = jnp.asarray(matrix)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise EvaluationError(f"{what} takes a matrix (rows, cols) or a stack (matrices, rows, "
                              f"cols); got shape {x.shape} (use kernel_matrices for a kernel, "
                              f"jax.vmap for a model axis)")
    if min(x.shape) == 0:
        raise EvaluationError(f"{what} got an empty matrix of shape {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    return x


@jax.jit
def esd(matrix) -> jax.Array:
    """The ESD of a matrix or of a stack of matrices: squared singular values, pooled, 1-D of
    length matrices · min(rows, cols), unsorted."""
    x = _as_stack(matrix, "esd")
    return jnp.square(jnp.linalg.svd(x, compute_uv=False)).reshape(-1)


# ------------------------------------------------------------------------------- power-law fit
# The public functions are jitted (options static): called eagerly, one compiled program per
# shape instead of one per operation; inside a caller's jit or vmap they trace as usual.
@functools.partial(jax.jit, static_argnames=("rtol",))
def power_law_fit(eigenvalues, valid=None, *, rtol: float = ZERO_RTOL) -> dict[str, jax.Array]:
    """WeightWatcher's power-law fit of one 1-D spectrum; vmappable, no Python loops.

    Eigenvalues ≤ ``rtol`` · max and those where `valid` is False are left out. Returns scalars
    ``alpha``, ``xmin``, ``ks`` (the KS distance of the chosen fit) and ``tail`` (how many
    eigenvalues are ≥ xmin, int32); all NaN (tail 0) when fewer than 2 eigenvalues are left.
    """
    lam = jnp.asarray(eigenvalues)
    if lam.ndim != 1:
        raise EvaluationError(f"power_law_fit takes one 1-D spectrum; got shape {lam.shape} "
                              f"(jax.vmap it over leading axes)")
    if not jnp.issubdtype(lam.dtype, jnp.floating):
        lam = lam.astype(jnp.float32)
    k = lam.shape[0]
    if k < 2:
        raise EvaluationError(f"power_law_fit needs at least 2 eigenvalues; got {k}")
    keep = jnp.isfinite(lam) & (lam > 0)
    if valid is not None:
        valid = jnp.asarray(valid)
        if valid.shape != lam.shape or valid.dtype != jnp.bool_:
            raise EvaluationError(f"valid must be a boolean mask of shape {lam.shape}; got "
                                  f"{valid.dtype} {valid.shape}")
        keep &= valid
    top = jnp.max(jnp.where(keep, lam, 0.0))
    keep &= lam > rtol * top
    # Scaled by the largest eigenvalue (α is scale free): logs ≤ 0 keep the float32 sums small.
    x = jnp.sort(jnp.where(keep, lam / jnp.where(top > 0, top, 1.0), 0.0))
    first = k - jnp.sum(keep)  # the left-out values sort first, as zeros
    idx = jnp.arange(k)
    logx = jnp.log(jnp.where(idx >= first, x, 1.0))
    n = (k - idx).astype(x.dtype)
    spread = jnp.cumsum(logx[::-1])[::-1] - n * logx  # Σ_{j≥i} ln(x_j / x_i)
    candidate = (idx >= first) & (idx < k - 1) & (spread > 0)
    alpha = 1.0 + n / jnp.where(candidate, spread, 1.0)
    ks = _ks_distances(logx, alpha, n)
    ks = jnp.where(candidate, ks, jnp.inf)
    best = jnp.argmin(ks)
    found = jnp.any(candidate)
    nan = jnp.array(jnp.nan, x.dtype)
    return {
        "alpha": jnp.where(found, alpha[best], nan),
        "xmin": jnp.where(found, x[best] * top, nan),
        "ks": jnp.where(found, ks[best], nan),
        "tail": jnp.where(found, k - best, 0).astype(jnp.int32),
    }


def _ks_distances(logx, alpha, n):
    """D_i = max_{j≥i} |1 − (x_j/x_i)^{1−α_i} − (j−i)/n_i| for every i, in chunks of rows."""
    k = logx.shape[0]
    j = jnp.arange(k)

    def row(args):
        i, a, li, ni = args
        fitted = 1.0 - jnp.exp((1.0 - a) * (logx - li))
        gap = jnp.abs(fitted - (j - i) / ni)
        return jnp.max(jnp.where(j >= i, gap, 0.0))

    return jax.lax.map(row, (j, alpha, logx, n), batch_size=max(1, min(k, _KS_CHUNK // k)))


# ------------------------------------------------------------------------------- layer metrics
@functools.partial(jax.jit, static_argnames=("rtol",))
def layer_spectra(matrix, *, rtol: float = ZERO_RTOL) -> dict[str, jax.Array]:
    """Power-law fit of the ESD, stable rank and spectral norm of a matrix (rows, cols) or of a
    stack (matrices, rows, cols) whose eigenvalues are pooled (a conv kernel, `kernel_matrices`).

    Keys: ``alpha``, ``xmin``, ``ks``, ``tail`` (`power_law_fit`), ``stable_rank`` (Σλ / max λ,
    ‖W‖_F² / ‖W‖₂² for one matrix), ``spectral_norm`` (max λ = ‖W‖₂²) and ``log_spectral_norm``
    (its log10, as WeightWatcher reports it). Vmappable.
    """
    lam = esd(matrix)
    top = jnp.max(lam)
    out = power_law_fit(lam, rtol=rtol)
    out["stable_rank"] = jnp.sum(lam) / top
    out["spectral_norm"] = top
    out["log_spectral_norm"] = jnp.log10(top)
    return out


def farms_blocks(rows: int, cols: int, block: int | None = None,
                 stride: int | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """FARMS windows of a rows × cols matrix: (row starts, col starts, block); every pair of a row
    start and a col start is one block × block sub-matrix. See the module docstring."""
    block = min(rows, cols) if block is None else int(block)
    if not 1 <= block <= min(rows, cols):
        raise EvaluationError(f"FARMS block {block} does not fit a {rows} × {cols} matrix; "
                              f"choose 1 … {min(rows, cols)}")
    stride = max(1, block // 2) if stride is None else int(stride)
    if stride < 1:
        raise EvaluationError(f"FARMS stride must be ≥ 1; got {stride}")

    def starts(length):
        count = -(-(length - block) // stride) + 1
        return np.round(np.linspace(0, length - block, count)).astype(np.int32)

    return starts(rows), starts(cols), block


@functools.partial(jax.jit, static_argnames=("block", "stride", "rtol"))
def farms_fit(matrix, block: int | None = None, *, stride: int | None = None,
              rtol: float = ZERO_RTOL) -> dict[str, jax.Array]:
    """FARMS: the power-law fit (`power_law_fit` keys) of the pooled ESD of square block × block
    sub-matrices cut by sliding windows (`farms_blocks`) from a matrix or from every matrix of a
    stack. Vmappable; `block` and `stride` are static."""
    x = _as_stack(matrix, "farms_fit")
    row_starts, col_starts, block = farms_blocks(x.shape[1], x.shape[2], block, stride)
    offsets = np.arange(block)
    r = (row_starts[:, None] + offsets)[:, None, :, None]  # (row windows, 1, block, 1)
    c = (col_starts[:, None] + offsets)[None, :, None, :]  # (1, col windows, 1, block)
    blocks = x[:, r, c]  # (matrices, row windows, col windows, block, block)
    out = power_law_fit(esd(blocks.reshape(-1, block, block)), rtol=rtol)
    if block < MIN_FARMS_BLOCK:
        out = {key: jnp.zeros_like(v) if key == "tail" else jnp.full_like(v, jnp.nan)
               for key, v in out.items()}
    return out


# ---------------------------------------------------------------------------------- population
def population_spectral(weight_space, params, *, active: Mapping[str, int] | None = None,
                        farms_block: int | None = None,
                        rtol: float = ZERO_RTOL) -> dict[str, np.ndarray]:
    """Spectral metrics of every network of a population, one jitted vmap over the model axis.

    Args:
        weight_space: the population's `wsl.WeightSpace`.
        params: its params with one leading model axis.
        active: ``{group: size}``: for a population whose hidden units are zero-padded, the real
            units of a permutation group are its first `size` (every axis of that group is cut
            to them before anything is measured). One size per group for the whole population:
            models of different real widths are measured in separate calls. Without it the ESD
            fit, stable rank and spectral norm already ignore zero rows and columns; FARMS does
            not (its blocks would contain them).
        farms_block: FARMS block size for every layer (capped at each layer's min(rows, cols));
            None: each layer's min(rows, cols).
        rtol: eigenvalues ≤ rtol · λ_max count as zero.

    The weight matrices are the tensors whose path ends in ``kernel`` with ≥ 2 axes
    (`kernel_matrices`); biases, norm scales and embeddings not named ``kernel`` are skipped, and
    so are kernels with fewer than `MIN_EVALS` eigenvalues (as WeightWatcher does).

    Returns numpy arrays of shape (models,): ``spectral_alpha``, ``farms_alpha``,
    ``stable_rank`` and ``log_spectral_norm``, each the mean over layers (NaN fits, e.g. a layer
    with < 2 nonzero eigenvalues, left out), and per layer ``spectral_alpha/<layer>`` and
    ``farms_alpha/<layer>``, <layer> being the kernel's path without ``/kernel``.
    """
    lead = weight_space.batch_shape(params)
    if len(lead) != 1:
        raise EvaluationError(f"population_spectral needs params with one leading model axis; "
                              f"got leading axes {lead} (add one with jax.tree.map(lambda x: "
                              f"x[None], params) for a single model)")
    active = dict(active or {})
    sizes = weight_space.group_sizes
    for group, size in active.items():
        if group not in sizes:
            raise EvaluationError(f"active names group {group!r}, which is not in the weight "
                                  f"space; groups: {sorted(sizes)}")
        if not 1 <= int(size) <= sizes[group]:
            raise EvaluationError(f"active size {size} of group {group!r} must be 1 … "
                                  f"{sizes[group]}")
    if farms_block is not None and int(farms_block) < 1:
        raise EvaluationError(f"farms_block must be ≥ 1; got {farms_block}")
    flat = weight_space.as_flat_dict(params)
    stacks, blocks = {}, {}
    for spec in weight_space.tensors:
        if spec.path.rsplit("/", 1)[-1] != "kernel" or len(spec.shape) < 2:
            continue
        cut = (slice(None),) + tuple(
            slice(0, int(active[g])) if g in active else slice(None) for g in spec.axes)
        x = jnp.asarray(flat[spec.path])[cut]
        mats = jax.eval_shape(functools.partial(kernel_matrices, spec.path), x[0])
        count, rows, cols = mats.shape
        if count * min(rows, cols) < MIN_EVALS:
            continue
        stacks[spec.path] = jax.vmap(functools.partial(kernel_matrices, spec.path))(x)
        blocks[spec.path] = min(rows, cols, int(farms_block or min(rows, cols)))
    if not stacks:
        raise EvaluationError(f"no weight matrix with ≥ {MIN_EVALS} eigenvalues among the "
                              f"kernels of {weight_space.paths}")
    per_layer = _population_layers(stacks, tuple(blocks.items()), float(rtol))
    per_layer = jax.tree.map(np.asarray, per_layer)

    out: dict[str, np.ndarray] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN means stay NaN
        for key, name in (("alpha", "spectral_alpha"), ("farms_alpha", "farms_alpha"),
                          ("stable_rank", "stable_rank"),
                          ("log_spectral_norm", "log_spectral_norm")):
            table = np.stack([per_layer[p][key] for p in stacks], axis=1)
            out[name] = np.nanmean(table, axis=1).astype(np.float64)
    for path in stacks:
        layer = path[: -len("/kernel")] if path.endswith("/kernel") else path
        out[f"spectral_alpha/{layer}"] = per_layer[path]["alpha"].astype(np.float64)
        out[f"farms_alpha/{layer}"] = per_layer[path]["farms_alpha"].astype(np.float64)
    return out


@functools.partial(jax.jit, static_argnames=("blocks", "rtol"))
def _population_layers(stacks, blocks, rtol):
    # `blocks` is ((path, FARMS block), ...): static, and jit hands dicts back with sorted keys.
    def one_model(model_stacks):
        out = {}
        for path, block in blocks:
            mats = model_stacks[path]
            layer = layer_spectra(mats, rtol=rtol)
            layer["farms_alpha"] = farms_fit(mats, block, rtol=rtol)["alpha"]
            out[path] = layer
        return out

    return jax.vmap(one_model)(stacks)
