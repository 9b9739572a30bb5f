"""Linear mode connectivity and merging on populations of independently trained MLPs."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from wsl.eval.lmc import (
    accuracy_barrier,
    interpolate,
    linear_mode_connectivity,
    loss_barrier,
    path_metrics,
    plot_lmc,
)
from wsl.eval.merging import (
    evaluate,
    fisher_average,
    fisher_diagonal,
    greedy_soup,
    merge,
    uniform_average,
)
from wsl.zoos.architectures import build
from wsl.zoos.datasets import load_dataset

NUM_MODELS = 40  # 20 disjoint pairs


def _train(arch, data, key, num, steps=150, batch_size=64, lr=5e-3):
    """`num` MLPs, each with its own init and data order, trained together (vmapped Adam).
    Returns NumPy arrays: slicing them compiles nothing."""
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    init_key, data_key = jax.random.split(key)
    # Not under the jit below: the architecture caches its compiled init on the first call.
    params = arch.init_population(init_key, num)
    opt = optax.adam(lr)

    def loss(p, xb, yb):
        return optax.softmax_cross_entropy_with_integer_labels(arch.apply(p, xb), yb).mean()

    def step(carry, k):
        params, state = carry
        idx = jax.random.randint(k, (num, batch_size), 0, len(y))
        grads = jax.vmap(jax.grad(loss))(params, x[idx], y[idx])
        updates, state = jax.vmap(opt.update)(grads, state, params)
        return (optax.apply_updates(params, updates), state), None

    @jax.jit
    def run(params, data_key):
        carry = (params, jax.vmap(opt.init)(params))
        return jax.lax.scan(step, carry, jax.random.split(data_key, steps))[0][0]

    return jax.tree.map(np.asarray, run(params, data_key))


@pytest.fixture(scope="module")
def trained():
    data = load_dataset("digits", seed=0)
    arch = build("mlp", input_shape=(8, 8, 1), widths=(32, 32))
    params = _train(arch, data, jax.random.key(0), NUM_MODELS)
    # Scored as the two halves the tests pair up: their compiled program is the one LMC uses.
    acc = np.concatenate([evaluate(arch, _half(params, part), data.x_test, data.y_test)["acc"]
                          for part in (0, 1)])
    assert acc.min() > 0.85, f"the zoo did not train: test accuracies {np.sort(acc)[:5]}"
    return arch, data, params


def _half(params, part):
    n = NUM_MODELS // 2
    return jax.tree.map(lambda a: a[part * n:(part + 1) * n], params)


# ------------------------------------------------------------------------------ barriers
def test_barrier_definitions():
    lam = np.linspace(0, 1, 5)
    assert loss_barrier(np.array([1.0, 1.25, 1.5, 1.75, 2.0]), lam) == pytest.approx(0.0)
    assert loss_barrier(np.array([1.0, 2.0, 3.0, 2.0, 1.0]), lam) == pytest.approx(2.0)
    assert loss_barrier(np.array([1.0, 0.5, 0.5, 0.5, 1.0]), lam) == pytest.approx(0.0)
    assert accuracy_barrier(np.array([0.9, 0.5, 0.3, 0.5, 0.7]), lam) == pytest.approx(0.5)
    np.testing.assert_allclose(loss_barrier(np.array([[0, 1, 0, 0, 0.0], [0, 0, 0, 0, 0.0]]), lam),
                               [1.0, 0.0])
    with pytest.raises(ValueError, match="λ grid"):
        loss_barrier(np.zeros(4), lam)


def test_interpolation_endpoints_are_the_two_networks(trained):
    arch, data, params = trained
    a, b = _half(params, 0), _half(params, 1)
    loss, acc = path_metrics(arch, a, b, data.x_val, data.y_val, lambdas=[0.0, 0.5, 1.0])
    ends = [evaluate(arch, p, data.x_val, data.y_val) for p in (a, b)]
    np.testing.assert_allclose(loss[:, 0], ends[0]["loss"], rtol=1e-5)
    np.testing.assert_allclose(loss[:, -1], ends[1]["loss"], rtol=1e-5)
    np.testing.assert_allclose(acc[:, -1], ends[1]["acc"])
    mid = interpolate(a, b, 0.5)
    np.testing.assert_allclose(mid["dense_0"]["kernel"],
                               (a["dense_0"]["kernel"] + b["dense_0"]["kernel"]) / 2, rtol=1e-6)


def test_alignment_lowers_the_barrier_between_independent_mlps(trained, tmp_path):
    arch, data, params = trained
    result = linear_mode_connectivity(arch, _half(params, 0), _half(params, 1), data.x_test,
                                      data.y_test, key=jax.random.key(1))
    s = result.summary()
    print(f"\nLMC over {s['pairs']} pairs: loss barrier {s['barrier_before']:.4f} before, "
          f"{s['barrier_after']:.4f} after weight matching; accuracy barrier "
          f"{s['acc_barrier_before']:.4f} -> {s['acc_barrier_after']:.4f}")
    assert s["pairs"] >= 20
    assert s["barrier_before"] > 0.2, "independently trained MLPs should have a barrier"
    assert s["barrier_after"] < 0.5 * s["barrier_before"]
    assert (result.barrier_after < result.barrier_before).mean() >= 0.9
    # Alignment permutes B without changing its function: its endpoint loss is unchanged.
    np.testing.assert_allclose(result.loss_after[:, -1], result.loss_before[:, -1], rtol=1e-4)
    path = tmp_path / "lmc.png"
    plot_lmc(result, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000

    by_activations = linear_mode_connectivity(arch, _half(params, 0), _half(params, 1),
                                              data.x_test, data.y_test, method="activations",
                                              features_x=data.x_train[:512]).summary()
    print(f"activation matching: barrier {by_activations['barrier_after']:.4f}")
    assert by_activations["barrier_after"] < 0.5 * s["barrier_before"]


# ------------------------------------------------------------------------------ merging
def test_averages_of_known_populations():
    a = {"w": jnp.array([[1.0, 2.0], [3.0, 6.0]])}
    np.testing.assert_allclose(uniform_average(a)["w"], [2.0, 4.0])
    fishers = {"w": jnp.array([[1.0, 0.0], [3.0, 0.0]])}
    # Weighted 1:3 where the Fisher speaks; uniform where every model's Fisher is zero.
    np.testing.assert_allclose(fisher_average(a, fishers)["w"], [2.5, 4.0], rtol=1e-5)
    with pytest.raises(ValueError, match="shape"):
        fisher_average(a, {"w": np.ones((2, 3), np.float32)})


def test_fisher_diagonal_matches_the_closed_form_of_softmax_regression():
    # For logits x W + b, d log p_c'/dW[k, c] = x_k (δ_cc' − p_c), so the Fisher averaged over the
    # model's own predictions is E_x[x_k² p_c (1 − p_c)] (and E_x[p_c (1 − p_c)] for b).
    apply = lambda p, x: x @ p["w"] + p["b"]
    rng = np.random.default_rng(3)
    pop = {"w": jnp.asarray(rng.normal(size=(2, 4, 3)), jnp.float32),
           "b": jnp.asarray(rng.normal(size=(2, 3)), jnp.float32)}
    x = rng.normal(size=(6, 4)).astype(np.float32)
    got = fisher_diagonal(apply, pop, x, batch_size=3)  # two batches, accumulated
    for m in range(2):
        logits = x.astype(np.float64) @ np.asarray(pop["w"][m]) + np.asarray(pop["b"][m])
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        var = p * (1 - p)
        np.testing.assert_allclose(got["w"][m], (x ** 2).T @ var / len(x), rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(got["b"][m], var.mean(0), rtol=1e-4, atol=1e-7)


def test_greedy_soup_keeps_only_what_helps():
    pop = {"w": jnp.array([[0.0], [1.0], [-5.0], [0.5]])}
    score = lambda p: -abs(float(np.asarray(p["w"])[0]) - 0.4)  # best near 0.4
    soup = greedy_soup(pop, score)
    assert soup.tried[0] == 3 and soup.members[0] == 3  # 0.5 scores best alone
    assert 2 not in soup.members  # -5 would ruin the average
    assert soup.scores == sorted(soup.scores)  # the soup's score never drops
    np.testing.assert_allclose(soup.params["w"],
                               np.mean(np.asarray(pop["w"])[np.array(soup.members)], 0))


@pytest.mark.parametrize("method", ["uniform", "greedy", "fisher"])
def test_merging_after_alignment_beats_merging_without(trained, method):
    arch, data, params = trained
    pop = jax.tree.map(lambda a: a[:6], params)
    result = merge(arch, pop, method, x_val=data.x_val, y_val=data.y_val, x_test=data.x_test,
                   y_test=data.y_test, key=jax.random.key(4), fisher_samples=64)
    r = result.report["test"]
    print(f"\n{method}: merged {r['merged_acc']:.3f}, unaligned {r['unaligned_merge_acc']:.3f}, "
          f"best {r['best_model_acc']:.3f}, mean {r['mean_model_acc']:.3f}")
    assert arch.weight_space.batch_shape(result.params) == ()
    if method == "greedy":
        assert result.members[0] == result.report["best_model"]
        # The soup is validated on val: it is at least as good as its best ingredient there.
        assert result.report["val"]["merged_acc"] >= result.report["val"]["best_model_acc"]
    else:
        assert r["merged_acc"] > r["unaligned_merge_acc"] + 0.05
    with pytest.raises(ValueError, match="unknown merge method"):
        merge(arch, pop, "median", x_val=data.x_val, y_val=data.y_val)


def test_merge_refuses_diverged_models(trained):
    arch, data, params = trained
    pop = jax.tree.map(lambda a: np.array(a[:6]), params)  # the size merged above: no compile
    pop["dense_1"]["bias"][1, 0] = np.inf
    with pytest.raises(ValueError, match=r"models \[1\]"):
        merge(arch, pop, "uniform", x_val=data.x_val, y_val=data.y_val)


# ------------------------------------------------------------------------------ wsl merge
def _write_zoo(path, arch, params, data):
    from wsl.zoos.store import write_zoo

    n = 7
    # Scored with the first half of the zoo: the population size path_metrics compiled for.
    acc = evaluate(arch, _half(params, 0), data.x_val, data.y_val)["acc"][:n]
    rows = [{"model": i, "epoch": 3, "val_acc": float(acc[i]), "diverged": i == 4}
            for i in range(n)]
    manifest = {"architecture": {"name": arch.name,
                                 "config": json.loads(json.dumps(dict(arch.config)))},
                "weight_space": arch.weight_space.to_dict(),
                "dataset": {"name": "digits", "options": {"seed": 0}}}
    weights = jax.tree.map(lambda a: np.array(a[:n]), params)
    weights["dense_0"]["kernel"][4] = np.nan  # a diverged member: kept in the zoo, left out
    return write_zoo(path, manifest, weights, rows, rows_per_shard=2)


def test_wsl_merge_command(trained, tmp_path, capsys):
    from wsl.commands import main as wsl_main
    from wsl.zoos.model_files import load_model

    arch, data, params = trained
    zoo = tmp_path / "zoo"
    _write_zoo(zoo, arch, params, data)
    out = tmp_path / "merged.npz"
    # Six healthy models (the same population size as the tests above: nothing to recompile).
    with pytest.warns(UserWarning, match="leaving out 1 model of .* that diverged"):
        assert wsl_main(["merge", "--zoo", str(zoo), "--method", "greedy", "--models", "0-3",
                         "4-6", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "merged" in printed and "greedy soup kept" in printed
    report = json.loads(out.with_suffix(".json").read_text())
    # Models are named by their zoo ids throughout (4 is the diverged one, left out).
    assert set(report["member_models"]) <= {0, 1, 2, 3, 5, 6} and report["models"] == 6
    assert report["best_model"] in {0, 1, 2, 3, 5, 6}
    assert report["why"].startswith(f"greedy soup kept {report['members']} of 6")
    merged = load_model(out, arch.weight_space)
    # Scored twice over, as merge's report scores its (merged, unaligned) pair: one program.
    acc = evaluate(arch, jax.tree.map(lambda a: np.stack([a, a]), merged),
                   data.x_test, data.y_test)["acc"][0]
    assert acc == pytest.approx(report["test"]["merged_acc"], abs=1e-6)

    # A zoo that lacks what was asked is a runtime error (1), a wrong option a usage error (2).
    assert wsl_main(["merge", "--zoo", str(zoo), "--models", "9", "--out", str(out),
                     "--force"]) == 1
    assert "models [9] are not in" in capsys.readouterr().err
    assert wsl_main(["merge", "--zoo", str(tmp_path / "nowhere"), "--out", str(out),
                     "--force"]) == 1
    assert "no such zoo" in capsys.readouterr().err
    assert wsl_main(["merge", "--zoo", str(zoo), "--out", str(tmp_path / "merged.xyz")]) == 2
    assert "suffix" in capsys.readouterr().err
