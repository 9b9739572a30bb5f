"""Spectral metrics (`wsl.eval.spectral`): α against known power laws and a plain reference loop,
stable rank, invariances, FARMS, the vmapped population, and WeightWatcher itself."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wsl import WeightSpace
from wsl.eval import spectral as sp
from wsl.eval.errors import EvaluationError
from wsl.weight_space import nest_paths


def pareto_matrix(rng, rows, cols, alpha):
    """W = U diag(√λ) Vᵀ with λ drawn from the continuous power law p(λ) ∝ λ^−α on [1, ∞)."""
    lam = (1.0 - rng.random(cols)) ** (-1.0 / (alpha - 1.0))
    u, _ = np.linalg.qr(rng.standard_normal((rows, cols)))
    v, _ = np.linalg.qr(rng.standard_normal((cols, cols)))
    return ((u * np.sqrt(lam)) @ v.T).astype(np.float32)


def reference_fit(eigenvalues):
    """WeightWatcher's fit written as a plain loop over candidate xmins, in float64."""
    x = np.sort(np.asarray(eigenvalues, np.float64))
    logs, size = np.log(x), len(x)
    best = None
    for i in range(size - 1):
        n = size - i
        alpha = 1 + n / (logs[i:].sum() - n * logs[i])
        ks = np.max(np.abs(1 - (x[i:] / x[i]) ** (1 - alpha) - np.arange(n) / n))
        if best is None or ks < best["ks"]:
            best = {"alpha": alpha, "xmin": x[i], "ks": ks, "tail": n}
    return best


def scalars(out):
    return {k: float(v) for k, v in out.items()}


# ------------------------------------------------------------------------------ the fit itself
def test_alpha_of_a_known_power_law_spectrum():
    layer = jax.jit(jax.vmap(lambda w: sp.layer_spectra(w)))
    for alpha in (2.5, 4.0):
        mats = np.stack([pareto_matrix(np.random.default_rng(s), 200, 200, alpha)
                         for s in range(4)])
        out = layer(jnp.asarray(mats))
        # The MLE's standard error is (α − 1)/√n for n tail eigenvalues; pooled over 4 matrices
        # the mean must lie within 3 of them.
        tail = float(np.sum(out["tail"]))
        assert tail >= 4 * 50
        error = 3 * (alpha - 1) / np.sqrt(tail)
        assert abs(float(np.mean(out["alpha"])) - alpha) < error, (out["alpha"], error)


def test_vectorised_xmin_search_matches_a_plain_loop():
    rng = np.random.default_rng(1)
    spectra = [
        (1 - rng.random(150)) ** (-1 / 1.7),  # Pareto, α = 2.7
        np.linalg.svd(rng.standard_normal((90, 60)), compute_uv=False) ** 2,  # Marchenko–Pastur
        np.linalg.svd(rng.standard_t(2.5, (80, 80)), compute_uv=False) ** 2,  # heavy entries
        rng.lognormal(0, 2, 40),
    ]
    # One length for all (one compiled program): the padding, huge, tiny and in between, is
    # masked out with `valid` and must not move the fit.
    size = 160
    padded = np.stack([np.concatenate([lam, np.resize([1e9, 1e-3, 5.0], size - len(lam))])
                       for lam in spectra])
    valid = np.arange(size)[None, :] < np.array([len(lam) for lam in spectra])[:, None]
    refs = [reference_fit(lam) for lam in spectra]
    with jax.enable_x64(True):
        fits = jax.vmap(sp.power_law_fit)(jnp.asarray(padded, jnp.float64), jnp.asarray(valid))
        fits = jax.tree.map(np.asarray, fits)
    for m, ref in enumerate(refs):
        assert fits["tail"][m] == ref["tail"]
        np.testing.assert_allclose(fits["xmin"][m], ref["xmin"], rtol=1e-12)
        np.testing.assert_allclose(fits["alpha"][m], ref["alpha"], rtol=1e-10)
        np.testing.assert_allclose(fits["ks"][m], ref["ks"], rtol=1e-9)
    # float32 (the default) picks the same xmin on these continuous spectra.
    fits = jax.vmap(sp.power_law_fit)(jnp.asarray(padded, jnp.float32), jnp.asarray(valid))
    for m, ref in enumerate(refs):
        assert int(fits["tail"][m]) == ref["tail"]
        np.testing.assert_allclose(float(fits["alpha"][m]), ref["alpha"], rtol=1e-4)


def test_too_few_eigenvalues_give_nan_not_a_number_that_looks_real():
    out = scalars(sp.power_law_fit(jnp.array([0.0, 0.0, 3.0, 0.0])))
    assert np.isnan(out["alpha"]) and np.isnan(out["xmin"]) and out["tail"] == 0


# -------------------------------------------------------------------------- stable rank, norms
def test_stable_rank_of_rank_one_and_orthogonal_matrices():
    rng = np.random.default_rng(2)
    rank_one = np.outer(rng.standard_normal(50), rng.standard_normal(20)).astype(np.float32)
    assert float(sp.layer_spectra(rank_one)["stable_rank"]) == pytest.approx(1.0, rel=1e-5)
    orthonormal_columns, _ = np.linalg.qr(rng.standard_normal((50, 20)))
    orthogonal, _ = np.linalg.qr(rng.standard_normal((20, 20)))
    for q in (orthonormal_columns, orthogonal):
        out = scalars(sp.layer_spectra(q.astype(np.float32)))
        assert out["stable_rank"] == pytest.approx(20, rel=1e-4)
        assert out["spectral_norm"] == pytest.approx(1.0, rel=1e-4)
        assert out["log_spectral_norm"] == pytest.approx(0.0, abs=1e-4)
    w = 3 * orthogonal.astype(np.float32)
    assert float(sp.layer_spectra(w)["spectral_norm"]) == pytest.approx(9.0, rel=1e-4)


# ------------------------------------------------------------------- zeros and invariances
def test_zero_rows_and_columns_do_not_change_the_fit():
    rng = np.random.default_rng(3)
    w = pareto_matrix(rng, 70, 40, 3.0)
    padded = np.zeros((90, 55), np.float32)
    rows, cols = np.sort(rng.choice(90, 70, replace=False)), np.sort(rng.choice(55, 40, False))
    padded[np.ix_(rows, cols)] = w
    base, pad = scalars(sp.layer_spectra(w)), scalars(sp.layer_spectra(padded))
    assert pad["tail"] == base["tail"]
    for key in ("alpha", "xmin", "ks", "stable_rank", "spectral_norm"):
        assert pad[key] == pytest.approx(base[key], rel=1e-4), key


def test_alpha_is_invariant_to_permutations_and_scale():
    rng = np.random.default_rng(4)
    w = pareto_matrix(rng, 80, 50, 2.5)
    base = scalars(sp.layer_spectra(w))
    permuted = w[rng.permutation(80)][:, rng.permutation(50)]
    for other, scale in ((permuted, 1.0), (1e-3 * w, 1e-3), (1e3 * w, 1e3)):
        out = scalars(sp.layer_spectra(other))
        assert out["tail"] == base["tail"]
        assert out["alpha"] == pytest.approx(base["alpha"], rel=1e-4)
        assert out["stable_rank"] == pytest.approx(base["stable_rank"], rel=1e-4)
        assert out["spectral_norm"] == pytest.approx(scale ** 2 * base["spectral_norm"], rel=1e-4)
    # FARMS blocks are cut from the rows and columns in their order, so only scale is invisible.
    farms = float(sp.farms_fit(w, 16)["alpha"])
    assert float(sp.farms_fit(1e-3 * w, 16)["alpha"]) == pytest.approx(farms, rel=1e-4)


# -------------------------------------------------------------------------------------- FARMS
def test_farms_windows_are_square_and_cover_the_matrix():
    rows, cols, block = sp.farms_blocks(256, 64, 32)
    assert block == 32 and len(cols) == 3 and len(rows) == 15
    covered = np.zeros((256, 64), bool)
    for r in rows:
        for c in cols:
            covered[r:r + block, c:c + block] = True
    assert covered.all() and rows.max() == 256 - 32 and cols.max() == 64 - 32
    assert [len(s) for s in sp.farms_blocks(40, 40)[:2]] == [1, 1]  # a square matrix: itself
    w = np.random.default_rng(5).standard_normal((40, 40)).astype(np.float32)
    assert scalars(sp.farms_fit(w)) == pytest.approx(scalars(sp.power_law_fit(sp.esd(w))))


def test_farms_alpha_does_not_depend_on_transpose_or_aspect_ratio():
    # Matrices with i.i.d. heavy-tailed entries (Student t, 2.5 degrees of freedom) of one size and
    # three aspect ratios, 10 of each: FARMS with one block size gives one α for all three shapes
    # (medians within 0.3; over seeds 0–5 they stayed within 0.19, while the plain ESD's medians
    # spread 0.16–0.49).
    @jax.jit
    @jax.vmap
    def alphas(m):
        return sp.farms_fit(m, 16)["alpha"], sp.farms_fit(m.T, 16)["alpha"]

    medians = []
    for shape in ((128, 32), (32, 128), (64, 64)):
        mats = jnp.asarray(np.random.default_rng(0).standard_t(2.5, (10,) + shape), jnp.float32)
        farms, farms_t = map(np.asarray, alphas(mats))
        np.testing.assert_allclose(farms_t, farms, rtol=1e-4)  # a block of Wᵀ is a block of W, ᵀ
        medians.append(float(np.median(farms)))
    assert max(medians) - min(medians) < 0.3, medians


def test_farms_rejects_a_block_that_does_not_fit():
    with pytest.raises(EvaluationError, match="does not fit"):
        sp.farms_fit(np.ones((10, 6), np.float32), 7)


# --------------------------------------------------------------------------------- population
def _space_and_population(models=3, hidden=12, seed=7):
    shapes = {"conv_0/kernel": (3, 3, 4, 8), "conv_0/bias": (8,), "dense_0/kernel": (8, hidden),
              "attn/query/kernel": (hidden, 2, 6), "norm/scale": (hidden,),
              "head/kernel": (hidden, 3)}
    axes = {"conv_0/kernel": (None, None, None, "conv_0"), "conv_0/bias": ("conv_0",),
            "dense_0/kernel": ("conv_0", "h"), "attn/query/kernel": ("h", None, None),
            "norm/scale": ("h",), "head/kernel": ("h", None)}
    rng = np.random.default_rng(seed)
    flat = {p: rng.standard_t(3, (models,) + s).astype(np.float32) for p, s in shapes.items()}
    one = {p: v[0] for p, v in flat.items()}
    return WeightSpace.from_params(nest_paths(one), axes), nest_paths(flat), flat


def test_population_equals_per_model_calls():
    space, params, flat = _space_and_population()
    out = sp.population_spectral(space, params)
    # head/kernel (12 × 3: 3 eigenvalues) is below MIN_EVALS; biases and scales are not matrices.
    layers = ["conv_0", "dense_0", "attn/query"]
    assert sorted(k for k in out if k.startswith("spectral_alpha/")) == sorted(
        f"spectral_alpha/{layer}" for layer in layers)
    assert all(v.shape == (3,) and v.dtype == np.float64 for v in out.values())
    for m in range(3):
        alphas, farms, ranks, norms = [], [], [], []
        for layer in layers:
            path = f"{layer}/kernel"
            mats = sp.kernel_matrices(path, flat[path][m])
            one = scalars(sp.layer_spectra(mats))
            alphas.append(one["alpha"])
            ranks.append(one["stable_rank"])
            norms.append(one["log_spectral_norm"])
            farms.append(float(sp.farms_fit(mats)["alpha"]))
            assert out[f"spectral_alpha/{layer}"][m] == pytest.approx(one["alpha"], rel=1e-5)
        assert out["spectral_alpha"][m] == pytest.approx(np.mean(alphas), rel=1e-5)
        assert out["stable_rank"][m] == pytest.approx(np.mean(ranks), rel=1e-5)
        assert out["log_spectral_norm"][m] == pytest.approx(np.mean(norms), rel=1e-5)
        # conv_0's taps are 4 × 8 matrices: FARMS blocks of 4; dense_0 8 × 12: blocks of 8.
        assert out["farms_alpha"][m] == pytest.approx(np.nanmean(farms), rel=1e-5)
    assert sp.kernel_matrices("conv_0/kernel", flat["conv_0/kernel"][0]).shape == (9, 4, 8)
    query = flat["attn/query/kernel"][0]  # (12, 2, 6): d × heads·head_dim, the squarest split
    assert sp.kernel_matrices("attn/query/kernel", query).shape == (1, 12, 12)
    assert sp.kernel_matrices("dense_0/kernel", np.zeros((3, 3, 4, 20))).shape == (1, 36, 20)


def test_active_measures_padded_models_on_their_real_units():
    space, params, flat = _space_and_population(models=2, hidden=12)
    big_space, _, big_flat = _space_and_population(models=2, hidden=16)
    padded = {p: np.zeros_like(v) for p, v in big_flat.items()}
    for p, v in flat.items():
        padded[p][tuple(slice(0, d) for d in v.shape)] = v
    real = sp.population_spectral(space, params)
    cut = sp.population_spectral(big_space, nest_paths(padded), active={"h": 12})
    for key, value in real.items():
        np.testing.assert_allclose(cut[key], value, rtol=1e-5, err_msg=key)
    # Without `active` the ESD fit already ignores the zero units; only FARMS blocks see them.
    whole = sp.population_spectral(big_space, nest_paths(padded))
    np.testing.assert_allclose(whole["spectral_alpha"], real["spectral_alpha"], rtol=1e-4)
    with pytest.raises(EvaluationError, match="not in the weight space"):
        sp.population_spectral(big_space, nest_paths(padded), active={"hidden": 12})


def test_population_needs_a_model_axis():
    space, params, flat = _space_and_population(models=1)
    one = jax.tree.map(lambda x: x[0], params)
    with pytest.raises(EvaluationError, match="one leading model axis"):
        sp.population_spectral(space, one)
    with pytest.raises(EvaluationError, match="1-D spectrum"):
        sp.power_law_fit(np.ones((3, 4)))


# ----------------------------------------------------------------------------- WeightWatcher
def test_alpha_matches_weightwatcher():
    torch = pytest.importorskip("torch", reason="WeightWatcher reads torch models")
    ww = pytest.importorskip("weightwatcher", reason="the reference implementation is optional "
                                                     "(pip install weightwatcher)")
    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    rng = np.random.default_rng(8)
    mats = [pareto_matrix(rng, 120, 60, 2.5), pareto_matrix(rng, 120, 60, 4.0),
            (rng.standard_normal((120, 60)) / 10).astype(np.float32)]
    conv = rng.standard_normal((3, 3, 16, 32)).astype(np.float32)  # flax (kh, kw, in, out)
    layers = []
    for w in mats:
        linear = torch.nn.Linear(*w.shape, bias=False)
        linear.weight.data = torch.tensor(w.T)  # torch stores (out, in)
        layers.append(linear)
    layers.append(torch.nn.Conv2d(16, 32, 3, bias=False))
    layers[-1].weight.data = torch.tensor(conv.transpose(3, 2, 0, 1))
    details = ww.WeightWatcher(model=torch.nn.Sequential(*layers)).analyze()
    ours = [sp.layer_spectra(w) for w in mats]
    ours.append(sp.layer_spectra(sp.kernel_matrices("conv/kernel", conv)))
    assert len(details) == 4
    for (_, row), mine in zip(details.iterrows(), map(scalars, ours)):
        assert abs(row["alpha"] - mine["alpha"]) < 0.05, (row["alpha"], mine["alpha"])
        assert row["num_pl_spikes"] == mine["tail"]
        assert row["D"] == pytest.approx(mine["ks"], abs=1e-4)
        assert row["stable_rank"] == pytest.approx(mine["stable_rank"], rel=1e-4)
