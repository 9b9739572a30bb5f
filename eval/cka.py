"""Linear CKA (Kornblith et al. 2019): how similar two networks' representations of the same
examples are, up to rotations and isotropic scaling.

For representations x (n, d1) and y (n, d2) of the same n examples, with columns centred,

    CKA(x, y) = ‖yᵀx‖_F² / (‖xᵀx‖_F ‖yᵀy‖_F),

which equals HSIC(K, L) / √(HSIC(K, K) HSIC(L, L)) for the linear kernels K = x xᵀ, L = y yᵀ but
never forms the n × n Gram matrices: the cost is O(n·d1·d2) for the cross term plus O(n·d1²) and
O(n·d2²) for the two normalisers, and the memory O(d1·d2 + d1² + d2²), which is what one wants
for n ≫ d (many probe examples, narrow layers). For n ≪ d the Gram form would be cheaper.

It is invariant to orthogonal transforms (so to permuting units) and to isotropic scaling of
either representation, not to scaling its columns by different factors.

A constant representation (every example maps to the same vector) has no centred part and CKA is
0/0; it is defined as 0 here — a network that does not distinguish the examples shares no
structure with any other — so that a population with dead layers gives a matrix without NaN.
Numerically "constant" means a centred part below 100 float eps of the uncentred representation,
the size of the rounding left by subtracting a mean.

Both functions are jnp and vmappable; `cka_matrix` scores every pair of a stacked population.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from wsl.eval.errors import EvaluationError


def linear_cka(x: jax.Array, y: jax.Array) -> jax.Array:
    """Linear CKA in [0, 1] between x (n, d1) and y (n, d2); 0 when either is constant."""
    x, y = jnp.asarray(x), jnp.asarray(y)
    _check_pair(x, y)
    x, x_ok = _centred_unit(x)
    y, y_ok = _centred_unit(y)
    return _cka(x, x_ok, y, y_ok)


def cka_matrix(reps: jax.Array) -> jax.Array:
    """(models, models) linear CKA of every pair in a stack `reps` of shape (models, n, d).

    Symmetric by construction (the two triangles are averaged, so rounding cannot break it);
    the diagonal is 1, or 0 for a constant representation. Rows are computed one at a time
    (`lax.map`), holding models × d² floats at once rather than models² × d².
    """
    reps = jnp.asarray(reps)
    if reps.ndim != 3 or reps.shape[0] == 0:
        raise EvaluationError(f"reps must have shape (models ≥ 1, examples, features), got "
                              f"{reps.shape}")
    _check_pair(reps[0], reps[0])
    units, ok = jax.vmap(_centred_unit)(reps)
    # The normaliser ‖xᵀx‖_F of each model, once rather than once per pair.
    self_norms = jax.vmap(lambda u: jnp.linalg.norm(u.T @ u))(units)

    def row(i):
        cross = jax.vmap(lambda u: jnp.sum((u.T @ units[i]) ** 2))(units)
        return _ratio(cross, self_norms[i] * self_norms, ok[i] & ok)

    matrix = jax.lax.map(row, jnp.arange(reps.shape[0]))
    return 0.5 * (matrix + matrix.T)


def _cka(x, x_ok, y, y_ok):
    cross = jnp.sum((y.T @ x) ** 2)
    norms = jnp.linalg.norm(x.T @ x) * jnp.linalg.norm(y.T @ y)
    return _ratio(cross, norms, x_ok & y_ok)


def _ratio(cross, norms, ok):
    # where on both sides: no NaN in the value, nor in a gradient through the unused branch.
    ok = ok & (norms > 0)
    return jnp.where(ok, cross / jnp.where(ok, norms, 1.0), 0.0)


def _centred_unit(x):
    """Columns centred, then scaled to unit Frobenius norm (CKA does not see the scale; this keeps
    ‖xᵀx‖_F² = ‖x‖⁴ inside float32's range for large activations); and whether x is not
    constant."""
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    centred = x - jnp.mean(x, axis=0, keepdims=True)
    norm = jnp.linalg.norm(centred)
    ok = norm > 100 * jnp.finfo(x.dtype).eps * jnp.linalg.norm(x)
    return jnp.where(ok, centred / jnp.where(ok, norm, 1.0), 0.0), ok


def _check_pair(x, y):
    if x.ndim != 2 or y.ndim != 2:
        raise EvaluationError(f"representations must have shape (examples, features), got "
                              f"{x.shape} and {y.shape}")
    if x.shape[0] != y.shape[0]:
        raise EvaluationError(f"representations of different numbers of examples: {x.shape[0]} "
                              f"and {y.shape[0]}; CKA compares the same examples")
    if x.shape[0] < 2:
        raise EvaluationError(f"CKA needs at least 2 examples, got {x.shape[0]}")
