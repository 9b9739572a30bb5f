"""Hessian curvature (Lanczos top eigenvalue, Hutch++ / Hutchinson trace, masks, vmap) against the
dense Hessian of a small MLP, and linear CKA against its Gram-matrix definition."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from wsl.eval.cka import cka_matrix, linear_cka
from wsl.eval.errors import EvaluationError
from wsl.eval.hessian import hvp, top_eigenvalue, trace
from wsl.zoos.architectures import build

ARCH = build("mlp", input_shape=(6,), num_classes=3, widths=(5,), activation="tanh")
KEY = jax.random.key(0)
# Inputs scaled by 3 and a few hundred steps of training give the Hessian the outlier-dominated
# spectrum of a trained network, the regime Hutch++ is for.
X = 3.0 * jax.random.normal(jax.random.key(1), (32, 6))
Y = jax.random.randint(jax.random.key(2), (32,), 0, 3)


def loss_fn(params):
    logits = ARCH.apply(params, X)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), Y[:, None], axis=1))


def dense_hessian(params):
    flat, unravel = ravel_pytree(params)
    return np.asarray(jax.hessian(lambda w: loss_fn(unravel(w)))(flat), np.float64)


def relative(a, b):
    return abs(float(a) - float(b)) / abs(float(b))


@pytest.fixture(scope="module")
def trained():
    """(params, dense Hessian) after 300 steps of gradient descent."""
    def train(p):
        step = lambda _, p: jax.tree.map(lambda a, g: a - 0.5 * g, p, jax.grad(loss_fn)(p))
        return jax.lax.fori_loop(0, 300, step, p)
    params = jax.jit(train)(ARCH.init(KEY))
    return params, dense_hessian(params)


def narrow_mask(width):
    """The mask of a `width`-unit network padded to 5 hidden units (units ≥ width are dropped)."""
    unit = (np.arange(5) < width).astype(np.float32)
    return {"dense_0": {"kernel": np.tile(unit, (6, 1)), "bias": unit},
            "dense_1": {"kernel": np.tile(unit[:, None], (1, 3)), "bias": np.ones(3, np.float32)}}


def kept(mask):
    return np.flatnonzero(np.asarray(ravel_pytree(mask)[0]))


# ------------------------------------------------------------------------------------------- HVP
def test_hvp_matches_dense_hessian_with_and_without_mask(trained):
    params, h = trained
    unravel = ravel_pytree(params)[1]
    v = np.random.default_rng(0).normal(size=h.shape[0]).astype(np.float32)
    got = ravel_pytree(hvp(loss_fn, params, unravel(jnp.asarray(v))))[0]
    np.testing.assert_allclose(got, h @ v, rtol=1e-4, atol=1e-5)

    mask = narrow_mask(3)
    m = np.asarray(ravel_pytree(mask)[0], np.float64)
    got = ravel_pytree(hvp(loss_fn, params, unravel(jnp.asarray(v)), mask=mask))[0]
    np.testing.assert_allclose(got, m * (h @ (m * v)), rtol=1e-4, atol=1e-5)
    assert np.all(np.asarray(got)[m == 0] == 0)


# -------------------------------------------------------------------------------- top eigenvalue
@pytest.mark.parametrize("iterations", [32, 64])
def test_top_eigenvalue_matches_dense(trained, iterations):
    # 64 > 53 parameters: Lanczos breaks down (at the Krylov dimension, 48, below 53 because of
    # the softmax's null space) and must stay finite and exact.
    params, h = trained
    expected = np.linalg.eigvalsh(h)[-1]
    got = jax.jit(lambda p, k: top_eigenvalue(loss_fn, p, k, iterations=iterations))(params, KEY)
    assert relative(got, expected) < 1e-3


def test_top_eigenvalue_is_algebraic_not_largest_magnitude():
    # A quadratic whose most negative eigenvalue (−5) dominates in magnitude; the answer is 2.
    params = ARCH.init(KEY)
    flat, unravel = ravel_pytree(params)
    spectrum = jnp.linspace(-5.0, 2.0, flat.size)

    def quadratic(p):
        return 0.5 * jnp.sum(spectrum * ravel_pytree(p)[0] ** 2)

    got = top_eigenvalue(quadratic, params, KEY, iterations=flat.size)
    assert relative(got, 2.0) < 1e-4


# ----------------------------------------------------------------------------------------- trace
def test_hutch_plus_plus_with_covering_sketch_is_exact(trained):
    params, h = trained
    got = jax.jit(lambda p, k: trace(loss_fn, p, k, samples=3 * h.shape[0]))(params, KEY)
    assert relative(got, np.trace(h)) < 1e-3


def test_hutchinson_is_unbiased_and_hutch_plus_plus_beats_it(trained):
    params, h = trained
    exact = np.trace(h)
    samples = 4000
    got = jax.jit(lambda p, k: trace(loss_fn, p, k, samples=samples, method="hutchinson"))(
        params, jax.random.key(3))
    # Var of one Rademacher quadratic form: 2 (‖H‖_F² − Σ H_ii²).
    std = np.sqrt(2 * (np.sum(h ** 2) - np.sum(np.diag(h) ** 2)) / samples)
    assert abs(float(got) - exact) < 4 * std
    assert std < 0.02 * abs(exact)  # the check above is tight enough to mean something

    budget, keys = 12, jax.random.split(jax.random.key(4), 64)
    both = jax.jit(jax.vmap(lambda k: jnp.stack([
        trace(loss_fn, params, k, samples=budget),
        trace(loss_fn, params, k, samples=budget, method="hutchinson")])))
    plus, plain = np.asarray(both(keys)).T
    error_plus, error_plain = np.mean(np.abs(plus - exact)), np.mean(np.abs(plain - exact))
    assert error_plus < 0.75 * error_plain


# ------------------------------------------------------------------------------------------ mask
@pytest.mark.parametrize("kind", ["narrow", "random"])
def test_masked_curvature_is_that_of_the_sub_block(trained, kind):
    params, h = trained
    if kind == "narrow":
        mask = narrow_mask(3)
    else:
        keep = np.random.default_rng(1).random(h.shape[0]) < 0.4
        mask = ravel_pytree(params)[1](jnp.asarray(keep, jnp.float32))
    idx = kept(mask)
    block = h[np.ix_(idx, idx)]
    # More iterations than kept coordinates: Lanczos must break down and stay finite.
    iterations = idx.size + 8
    got = jax.jit(lambda p, k, m: jnp.stack([
        top_eigenvalue(loss_fn, p, k, iterations=iterations, mask=m),
        trace(loss_fn, p, k, samples=3 * h.shape[0], mask=m)]))(params, KEY, mask)
    eigenvalue, tr = np.asarray(got)
    assert relative(eigenvalue, np.linalg.eigvalsh(block)[-1]) < 1e-3
    assert relative(tr, np.trace(block)) < 1e-3
    # And it is not the unmasked answer.
    assert relative(eigenvalue, np.linalg.eigvalsh(h)[-1]) > 1e-2 or relative(
        tr, np.trace(h)) > 1e-2


def test_breakdown_keeps_a_negative_definite_block_negative():
    # Kept coordinates all have negative curvature: padding the exhausted Lanczos steps with zeros
    # would report 0 here instead of the true top eigenvalue.
    params = ARCH.init(KEY)
    flat, unravel = ravel_pytree(params)
    curvature = -jnp.arange(1.0, flat.size + 1)
    keep = np.zeros(flat.size, np.float32)
    keep[[3, 10, 20, 30]] = 1

    def quadratic(p):
        return 0.5 * jnp.sum(curvature * ravel_pytree(p)[0] ** 2)

    got = top_eigenvalue(quadratic, params, KEY, iterations=12, mask=unravel(jnp.asarray(keep)))
    assert np.isfinite(float(got))
    assert relative(got, -4.0) < 1e-4
    nothing = jax.tree.map(jnp.zeros_like, params)
    assert float(top_eigenvalue(quadratic, params, KEY, iterations=4, mask=nothing)) == 0.0


# ------------------------------------------------------------------------------------------ vmap
def test_vmap_over_a_population_equals_separate_calls():
    population = ARCH.init_population(jax.random.key(7), 3)
    masks = jax.tree.map(lambda *m: jnp.stack(m), *(narrow_mask(w) for w in (5, 4, 2)))
    keys = jax.random.split(jax.random.key(8), 3)

    def curvature(params, key, mask):
        return jnp.stack([top_eigenvalue(loss_fn, params, key, mask=mask),
                          trace(loss_fn, params, key, samples=24, mask=mask)])

    together = np.asarray(jax.jit(jax.vmap(curvature))(population, keys, masks))
    single = jax.jit(curvature)
    for i in range(3):
        pick = lambda tree: jax.tree.map(lambda a: a[i], tree)
        alone = np.asarray(single(pick(population), keys[i], pick(masks)))
        np.testing.assert_allclose(together[i], alone, rtol=1e-4)
        # Each model got its own params and mask: the eigenvalue is its own sub-block's.
        h = dense_hessian(pick(population))
        idx = kept(pick(masks))
        assert relative(together[i, 0], np.linalg.eigvalsh(h[np.ix_(idx, idx)])[-1]) < 1e-3
    assert len(set(np.round(together[:, 0], 4))) == 3


def test_bad_hessian_options_raise():
    params = ARCH.init(KEY)
    with pytest.raises(EvaluationError, match="iterations"):
        top_eigenvalue(loss_fn, params, KEY, iterations=0)
    with pytest.raises(EvaluationError, match="samples"):
        trace(loss_fn, params, KEY, samples=2.5)
    with pytest.raises(EvaluationError, match="method"):
        trace(loss_fn, params, KEY, method="girard")
    bad = narrow_mask(3)
    bad["dense_0"]["bias"] = np.ones(4, np.float32)
    with pytest.raises(EvaluationError, match="dense_0.*bias"):
        top_eigenvalue(loss_fn, params, KEY, mask=bad)
    with pytest.raises(EvaluationError, match="structure"):
        trace(loss_fn, params, KEY, mask={"dense_0": bad["dense_0"]})


# ------------------------------------------------------------------------------------------- CKA
RNG = np.random.default_rng(0)
REP = RNG.normal(size=(200, 8)) @ RNG.normal(size=(8, 8)) + 1.5     # correlated, offset columns
OTHER = np.tanh(REP @ RNG.normal(size=(8, 6))) + 0.3 * RNG.normal(size=(200, 6))


def gram_cka(x, y):
    """HSIC(K, L) / √(HSIC(K, K) HSIC(L, L)) with centred linear kernels, in float64."""
    n = x.shape[0]
    centre = np.eye(n) - 1.0 / n
    k, l = centre @ x @ x.T @ centre, centre @ y @ y.T @ centre
    return np.sum(k * l) / np.sqrt(np.sum(k * k) * np.sum(l * l))


def test_cka_of_a_representation_with_itself_is_one():
    assert abs(float(linear_cka(REP, REP)) - 1.0) < 1e-5


def test_cka_agrees_with_the_gram_form():
    expected = gram_cka(REP, OTHER)
    assert 0.05 < expected < 0.95  # a pair that is neither identical nor unrelated
    assert abs(float(linear_cka(REP, OTHER)) - expected) < 1e-5


def test_cka_invariances():
    base = float(linear_cka(REP, OTHER))
    rotation = np.linalg.qr(RNG.normal(size=(8, 8)))[0]
    assert abs(float(linear_cka(REP[:, RNG.permutation(8)], OTHER)) - base) < 1e-5
    assert abs(float(linear_cka(REP @ rotation, OTHER)) - base) < 1e-5
    assert abs(float(linear_cka(37.0 * REP, 0.01 * OTHER)) - base) < 1e-5
    # Scaling columns by different factors is a real change, not a symmetry.
    stretched = REP * np.array([10.0, 1, 1, 1, 1, 1, 1, 0.1])
    assert abs(float(linear_cka(stretched, OTHER)) - base) > 1e-2
    assert abs(float(linear_cka(stretched, OTHER)) - gram_cka(stretched, OTHER)) < 1e-5


def test_cka_of_independent_representations_is_small():
    a, b = RNG.normal(size=(2000, 5)), RNG.normal(size=(2000, 4))
    # E[CKA] ≈ √(d1 d2) / n-ish for independent Gaussian features; ~0.003 here.
    assert float(linear_cka(a, b)) < 0.02


def test_constant_representation_gives_zero_not_nan():
    constant = np.full((200, 3), 0.1, np.float32)
    assert float(linear_cka(constant, OTHER)) == 0.0
    assert float(linear_cka(OTHER, constant)) == 0.0
    assert float(linear_cka(np.zeros((200, 3)), np.zeros((200, 2)))) == 0.0
    grad = jax.grad(lambda x: linear_cka(x, OTHER))(jnp.asarray(constant))
    assert np.all(np.isfinite(grad))


def test_cka_matrix_is_symmetric_with_unit_diagonal_and_matches_pairs():
    reps = np.stack([REP[:, :6], OTHER, REP[:, 2:] ** 2, RNG.normal(size=(200, 6))])
    matrix = np.asarray(jax.jit(cka_matrix)(reps))
    np.testing.assert_array_equal(matrix, matrix.T)
    np.testing.assert_allclose(np.diag(matrix), 1.0, atol=1e-5)
    for i in range(4):
        for j in range(4):
            assert abs(matrix[i, j] - gram_cka(reps[i], reps[j])) < 1e-5
    assert matrix[0, 3] < 0.1 < matrix[0, 1]


def test_bad_cka_inputs_raise():
    with pytest.raises(EvaluationError, match="different numbers of examples"):
        linear_cka(np.ones((10, 3)), np.ones((11, 3)))
    with pytest.raises(EvaluationError, match="examples, features"):
        linear_cka(np.ones(10), np.ones((10, 3)))
    with pytest.raises(EvaluationError, match="examples, features"):
        cka_matrix(np.ones((10, 3)))
    with pytest.raises(EvaluationError, match="models ≥ 1"):
        cka_matrix(np.ones((0, 10, 3)))
