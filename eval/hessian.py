"""Loss-landscape curvature of one network: Hessian-vector products, top eigenvalue, trace.

Everything here is a pure jax function of *one* model's params pytree and a scalar
`loss_fn(params)` (the caller closes it over its batch), with no Python control flow that depends
on data, so a population is measured in one compiled program::

    def curvature(params, key):
        return top_eigenvalue(loss_fn, params, key), trace(loss_fn, params, key)
    jax.jit(jax.vmap(curvature))(population_params, jax.random.split(key, num_models))

`iterations`, `samples` and `method` are Python values (static under `jax.jit`).

Costs, in Hessian-vector products (HVPs; forward-over-reverse, one HVP costs about two to three
gradient evaluations of `loss_fn`):

- `top_eigenvalue`: `iterations` HVPs, one after another (default 32). It also keeps the Lanczos
  basis, `iterations × num_params` floats per model (32 × 1e5 float32 = 12.8 MB), which is what
  bounds the population size under `vmap` for the larger networks.
- `trace`: exactly `samples` HVPs (default 48), in two batched rounds for Hutch++ (the sketch,
  then everything else), one round for Hutchinson; a round of b HVPs holds b sets of activations.

Masks. Some zoos train narrower networks inside padded tensors: hidden units beyond a model's width
are zero and frozen, so the coordinates that belong to them are not parameters of that network.
With `mask` (a pytree like `params` of 0/1 floats) every HVP becomes M H M (the vector is
multiplied by the mask before and after), so the curvature reported is that of the narrow network:
its eigenvalues and trace are those of the Hessian's sub-block on the kept coordinates. The zero
eigenvalues that M H M has on the dropped coordinates are not reported, because Lanczos starts
inside the kept subspace and never leaves it.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from wsl.eval.errors import EvaluationError

DEFAULT_ITERATIONS = 32
DEFAULT_SAMPLES = 48
METHODS = ("hutch++", "hutchinson")


# ------------------------------------------------------------------------------------ operators
def hvp(loss_fn: Callable, params, vector, mask=None):
    """H v for the Hessian H of `loss_fn` at `params`; `vector` and the result are pytrees like
    `params`. With `mask`, returns M H M v (see the module docstring)."""
    _check_like(vector, params, "vector")
    if mask is not None:
        _check_like(mask, params, "mask")
        vector = jax.tree.map(jnp.multiply, vector, mask)
    # A tangent must have its primal's dtype.
    vector = jax.tree.map(lambda v, p: jnp.asarray(v, p.dtype), vector, params)
    product = jax.jvp(jax.grad(loss_fn), (params,), (vector,))[1]
    if mask is not None:
        product = jax.tree.map(lambda h, m: h * jnp.asarray(m, h.dtype), product, mask)
    return product


def _flat_operator(loss_fn: Callable, params, mask, reverse: bool = False):
    """(flat params, flat mask or None, v ↦ M H M v on flat vectors). `reverse`: H v as the
    gradient of ⟨∇L, v⟩ (reverse over reverse) — for losses with custom gradients that have no
    forward mode, such as the population trainer's matmul convolutions (faster under vmap on CPU
    than flax's convolutions, whose forward over reverse costs 2.6× as much there)."""
    flat, unravel = ravel_pytree(params)
    if not jnp.issubdtype(flat.dtype, jnp.floating):
        raise EvaluationError(f"params must be floating point to have a Hessian, got {flat.dtype}")
    flat_mask = None
    if mask is not None:
        _check_like(mask, params, "mask")
        flat_mask = ravel_pytree(mask)[0].astype(flat.dtype)

    grad = jax.grad(lambda w: loss_fn(unravel(w)))

    def matvec(v):
        if flat_mask is not None:
            v = v * flat_mask
        if reverse:
            hv = jax.grad(lambda w: jnp.vdot(grad(w), v))(flat)
        else:
            hv = jax.jvp(grad, (flat,), (v,))[1]
        return hv if flat_mask is None else hv * flat_mask

    return flat, flat_mask, matvec


# -------------------------------------------------------------------------------- top eigenvalue
def top_eigenvalue(loss_fn: Callable, params, key: jax.Array,
                   iterations: int = DEFAULT_ITERATIONS, mask=None,
                   reverse: bool = False) -> jax.Array:
    """The largest (algebraic, not absolute) eigenvalue of the Hessian of `loss_fn` at `params`
    (`reverse`: Hessian-vector products reverse over reverse, see `_flat_operator`).

    Lanczos with full reorthogonalisation for a fixed number of `iterations` (= HVPs), the answer
    the largest Ritz value (`eigvalsh` of the tridiagonal matrix). Every new vector is
    orthogonalised against the whole basis twice (classical Gram–Schmidt twice is as accurate as
    modified Gram–Schmidt and is two matrix products), since in float32 plain three-term Lanczos
    loses orthogonality within a few iterations and returns ghost copies of converged values.

    Breakdown (β ≈ 0: the Krylov space is invariant, e.g. when `iterations` exceeds the number of
    kept coordinates, or the number of distinct eigenvalues — a cross-entropy Hessian has a null
    space from the softmax's shift invariance) never divides by zero: the iteration stops there
    (the Ritz values are then exact) and the remaining steps are padded with the first Rayleigh
    quotient α₀ on the diagonal and zero couplings. α₀ lies below the largest Ritz value, so the
    padding cannot change the answer (a zero padding would turn a negative definite sub-block's
    answer into 0). A random start has a component along every eigenvector, so the invariant
    Krylov space it stops in contains the top one; no restart is needed. A mask that keeps
    nothing gives 0.
    """
    iterations = _check_count("iterations", iterations)
    flat, flat_mask, matvec = _flat_operator(loss_fn, params, mask, reverse)
    n, dtype = flat.size, flat.dtype
    eps = jnp.finfo(dtype).eps
    # A breakdown is β below 100 eps of the largest |H v| so far (an estimate of ‖H‖, the scale
    # of the HVP's own rounding). On the tests' MLP the residual of an exhausted space measured
    # 0.04–2.5 eps on that scale and the smallest genuine β ~1000 eps; cutting a genuine β this
    # small moves the Ritz values by less than the HVP's rounding.
    breakdown_tol = 100 * eps

    def unit(v, norm, ok):
        return jnp.where(ok, v / jnp.where(ok, norm, 1.0), 0.0)

    v0 = jax.random.normal(key, (n,), dtype)
    if flat_mask is not None:
        v0 = v0 * flat_mask
    norm0 = jnp.linalg.norm(v0)
    live0 = norm0 > 0
    v0 = unit(v0, norm0, live0)

    def step(j, carry):
        basis, alphas, betas, live_steps, v, live, scale = carry
        basis = basis.at[j].set(v)
        hv = matvec(v)
        scale = jnp.maximum(scale, jnp.linalg.norm(hv))
        alpha = jnp.vdot(v, hv)
        w = hv - basis.T @ (basis @ hv)
        w = w - basis.T @ (basis @ w)
        beta = jnp.linalg.norm(w)
        broke = beta <= breakdown_tol * scale
        alphas = alphas.at[j].set(alpha)
        betas = betas.at[j].set(jnp.where(broke, 0.0, beta))
        live_steps = live_steps.at[j].set(live)
        live_next = live & ~broke
        v_next = unit(w, beta, live_next)
        return basis, alphas, betas, live_steps, v_next, live_next, scale

    init = (jnp.zeros((iterations, n), dtype), jnp.zeros(iterations, dtype),
            jnp.zeros(iterations, dtype), jnp.zeros(iterations, bool), v0, live0,
            jnp.zeros((), dtype))
    _, alphas, betas, live_steps, *_ = jax.lax.fori_loop(0, iterations, step, init)

    diagonal = jnp.where(live_steps, alphas, alphas[0])
    off = betas[:-1]
    tridiagonal = jnp.diag(diagonal) + jnp.diag(off, 1) + jnp.diag(off, -1)
    return jnp.linalg.eigvalsh(tridiagonal)[-1]


# ------------------------------------------------------------------------------------------ trace
def trace(loss_fn: Callable, params, key: jax.Array, samples: int = DEFAULT_SAMPLES,
          mask=None, method: str = "hutch++", reverse: bool = False) -> jax.Array:
    """A stochastic estimate of the Hessian's trace from exactly `samples` HVPs (`reverse`: as
    in `top_eigenvalue`).

    `method="hutch++"` (Meyer, Musco, Musco & Woodruff 2021) splits the budget in three as the
    paper does: k = samples // 3 Rademacher sketch vectors S, Q = orth(H S) (k HVPs); the exact
    trace tr(Qᵀ H Q) of the captured top subspace (k HVPs); and Hutchinson with the remaining
    samples − 2k Rademacher vectors on the deflated (I − QQᵀ) H (I − QQᵀ). The deflated part
    carries less of ‖H‖_F, so its error shrinks like 1/samples rather than 1/√samples when the
    spectrum decays — as a network Hessian's does, dominated by a few outliers. With k ≥ the
    number of parameters the answer is exact. Fewer than 3 samples leave no sketch: Hutchinson.

    `method="hutchinson"`: the mean of zᵀ H z over `samples` Rademacher vectors z, unbiased with
    variance 2(‖H‖_F² − Σ H_ii²) / samples; kept for comparison.

    With `mask` the trace is that of the kept sub-block (M H M has zeros elsewhere). The random
    vectors are not masked: the masked HVP ignores the dropped coordinates, and unmasked vectors
    keep the estimate unbiased whatever directions the QR completes Q with when H S is rank
    deficient.
    """
    samples = _check_count("samples", samples)
    if method not in METHODS:
        raise EvaluationError(f"method={method!r}: choose from {list(METHODS)}")
    flat, _, matvec = _flat_operator(loss_fn, params, mask, reverse)
    n, dtype = flat.size, flat.dtype
    batched = jax.vmap(matvec)
    sketch_key, probe_key = jax.random.split(key)

    def quadratic_forms(vectors):          # rows v ↦ vᵀ H v
        return jnp.sum(vectors * batched(vectors), axis=1)

    k = samples // 3 if method == "hutch++" else 0
    probes = jax.random.rademacher(probe_key, (samples - 2 * k, n), dtype)
    if k == 0:
        return jnp.mean(quadratic_forms(probes))

    sketch = jax.random.rademacher(sketch_key, (k, n), dtype)
    q = jnp.linalg.qr(batched(sketch).T)[0].T         # (min(k, n), n), orthonormal rows
    deflated = probes - (probes @ q.T) @ q
    # One batched round for tr(Qᵀ H Q) and the deflated Hutchinson probes.
    forms = quadratic_forms(jnp.concatenate([q, deflated]))
    rank = q.shape[0]
    return jnp.sum(forms[:rank]) + jnp.mean(forms[rank:])


# ----------------------------------------------------------------------------------------- checks
def _check_count(name: str, value) -> int:
    # Static: the loop length and the number of random vectors fix the compiled program.
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise EvaluationError(f"{name}={value!r}: expected a Python int ≥ 1 (it is static under "
                              "jax.jit)")
    return value


def _check_like(tree, params, name: str) -> None:
    tree_def, params_def = jax.tree.structure(tree), jax.tree.structure(params)
    if tree_def != params_def:
        raise EvaluationError(f"{name} must have the structure of params: got {tree_def}, "
                              f"params have {params_def}")
    for path_leaf, leaf in zip(jax.tree_util.tree_leaves_with_path(params),
                               jax.tree.leaves(tree)):
        path, param = path_leaf
        if jnp.shape(leaf) != jnp.shape(param):
            raise EvaluationError(f"{name} at {jax.tree_util.keystr(path)} has shape "
                                  f"{jnp.shape(leaf)}, params have {jnp.shape(param)}")
