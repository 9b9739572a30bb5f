"""Generated-population evaluation: IoU novelty, affine span distance, noise, midpoint and k-NN
average baselines, bootstrap intervals and verdicts, report."""

from types import SimpleNamespace

import jax
import numpy as np
import pytest

from wsl.eval.errors import EvaluationError
from wsl.eval.generated import (
    affine_span_distance,
    compare_with_training,
    equal_accuracy_baseline,
    evaluate_generated,
    knn_average_population,
    max_wrong_iou,
    midpoint_population,
    nearest_neighbours,
    plot_report,
)
from wsl.eval.intervals import bootstrap_interval, side, t_interval
from wsl.zoos.architectures import build


def test_max_wrong_iou_matches_sets():
    wrong = np.array([[1, 1, 0, 0], [0, 0, 0, 0]], bool)
    ref = np.array([[1, 0, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]], bool)
    # row 0: IoU 1/2 with ref0, 2/3 with ref1, 0 with ref2; row 1 (no mistakes) matches ref2
    # exactly.
    np.testing.assert_allclose(max_wrong_iou(wrong, ref), [2 / 3, 1.0])


def test_affine_span_distance():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(5, 20))
    inside = train[0] + 0.3 * (train[1] - train[0]) - 0.7 * (train[2] - train[4])
    outside = rng.normal(size=20) * 3
    d = affine_span_distance(np.stack([inside, outside]), train)
    assert d[0] < 1e-8 and d[1] > 0.5


def test_report_on_a_tiny_population(tmp_path):
    arch = build("mlp", input_shape=(6,), widths=(8,), num_classes=3)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6)).astype(np.float32)
    teacher = np.asarray(arch.weight_space.flatten(arch.init(jax.random.key(0))))
    y = np.asarray(arch.apply(arch.weight_space.unflatten(teacher), x)).argmax(1)
    train = teacher + 0.05 * rng.normal(size=(12, teacher.size))
    generated = teacher + 0.5 * rng.normal(size=(7, teacher.size))
    report = evaluate_generated(arch, generated, train, x, y)
    d = report.to_dict()
    assert d["num_generated"] == 7 and d["train_acc"]["mean"] > 0.8
    assert d["generated_acc"]["mean"] < d["train_acc"]["mean"]
    tiny_noise = report.noise[0]
    assert tiny_noise["sigma"] == 0.01 and tiny_noise["median_max_iou"] > 0.9
    assert "novelty" in report.table()
    plot_report(report, tmp_path / "gen.png")
    assert (tmp_path / "gen.png").stat().st_size > 1000


# --- memorisation audit: baselines, intervals, chunking, the whole training set -----------------


def _teacher_setup(num_train=12, hidden=8, noise=0.05, seed=0):
    """Training models = one teacher + small noise (they share its mistakes); labels = teacher."""
    arch = build("mlp", input_shape=(6,), widths=(hidden,), num_classes=3)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(300, 6)).astype(np.float32)
    teacher = np.asarray(arch.weight_space.flatten(arch.init(jax.random.key(seed))))
    y = np.asarray(arch.apply(arch.weight_space.unflatten(teacher), x)).argmax(1)
    train = (teacher + noise * rng.normal(size=(num_train, teacher.size))).astype(np.float32)
    return arch, x, y, train


def test_t_interval_over_few_seeds_is_wider_than_a_bootstrap_over_them():
    """Three per-seed means: the t interval (4.30 standard errors at 2 degrees of freedom) covers
    the true mean about 95 % of the time, a percentile bootstrap over the three far less (~77 %)."""
    rng = np.random.default_rng(0)
    draws = rng.normal(0.0, 1.0, (2000, 3))
    t_cover = np.mean([lo <= 0 <= hi for lo, hi in map(t_interval, draws)])
    boot_cover = np.mean([lo <= 0 <= hi for lo, hi in (bootstrap_interval(d, np.mean, n=200)
                                                       for d in draws[:300])])
    assert 0.93 < t_cover < 0.97 and boot_cover < 0.85
    assert t_interval([0.5]) == [0.5, 0.5] and all(np.isnan(t_interval([])))
    assert t_interval([1.0, np.nan, 3.0, None]) == t_interval([1.0, 3.0])
    assert side([0.021, 0.03], 0.02) == "above" and side([0.0, 0.03], 0.02) == "straddles"
    assert side([-0.1, 0.019], 0.02) == "below"


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    # Coverage over many data sets of a known distribution (true mean 3): close to 95 %.
    covered = [lo <= 3.0 <= hi for lo, hi in
               (bootstrap_interval(rng.normal(3.0, 1.0, 60), np.mean, n=1000, seed=s)
                for s in range(200))]
    assert 0.88 <= np.mean(covered) <= 0.99, np.mean(covered)
    small = bootstrap_interval(rng.normal(3.0, 1.0, 100), np.mean, seed=1)
    large = bootstrap_interval(rng.normal(3.0, 1.0, 10_000), np.mean, seed=1)
    assert small[0] < 3.0 < small[1] and large[0] < 3.0 < large[1]
    # Width ≈ 2 · 1.96 · σ/√n: ten times narrower for a hundred times the data.
    assert 0.05 < (large[1] - large[0]) / (small[1] - small[0]) < 0.2
    np.testing.assert_allclose(large[1] - large[0], 2 * 1.96 / 100, rtol=0.15)
    lo, hi = bootstrap_interval(rng.normal(0.0, 1.0, 301), np.median, seed=2)
    assert lo < 0.0 < hi
    assert bootstrap_interval([7.0, np.nan], np.mean) == (7.0, 7.0)
    assert all(np.isnan(bootstrap_interval([np.nan])))
    with pytest.raises(EvaluationError, match="level"):
        bootstrap_interval([1.0, 2.0], level=1.5)


def test_chunked_max_wrong_iou_equals_the_unchunked_one():
    rng = np.random.default_rng(0)
    wrong = rng.random((37, 50)) < 0.3
    wrong[3] = False  # no mistakes at all
    ref = rng.random((23, 50)) < 0.3
    full, full_index = max_wrong_iou(wrong, ref, return_index=True, chunk=1000)
    part, part_index = max_wrong_iou(wrong, ref, return_index=True, chunk=5)
    np.testing.assert_array_equal(part, full)
    np.testing.assert_array_equal(part_index, full_index)
    own = max_wrong_iou(wrong, wrong, exclude_self=True, chunk=1000)
    np.testing.assert_array_equal(max_wrong_iou(wrong, wrong, exclude_self=True, chunk=4), own)
    assert (own < 1).all()  # no row matched itself; random rows are not duplicates
    # Brute force on sets for a few rows, excluding self.
    for i in (0, 5, 36):
        ious = [(wrong[i] & wrong[j]).sum() / max((wrong[i] | wrong[j]).sum(), 1)
                for j in range(len(wrong)) if j != i]
        assert own[i] == pytest.approx(max(ious))


def test_nearest_neighbours_is_exact_and_chunked():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(40, 15)).astype(np.float32) + 100  # far from 0: cancellation-prone
    query = np.concatenate([ref[[3, 17]], rng.normal(size=(9, 15)).astype(np.float32) + 100])
    index, dist = nearest_neighbours(query, ref, k=3, chunk=4)
    brute = np.linalg.norm(query[:, None].astype(np.float64) - ref[None], axis=2)
    np.testing.assert_array_equal(index, np.argsort(brute, axis=1)[:, :3])
    np.testing.assert_allclose(dist, np.sort(brute, axis=1)[:, :3], rtol=1e-5)
    assert dist[0, 0] == 0 and dist[1, 0] == 0  # exact copies
    own, own_dist = nearest_neighbours(ref, ref, exclude=np.arange(40))
    np.fill_diagonal(brute_ref := np.linalg.norm(ref[:, None] - ref[None], axis=2), np.inf)
    np.testing.assert_array_equal(own[:, 0], brute_ref.argmin(1))
    assert (own_dist > 0).all()


def test_midpoints_and_knn_averages_are_what_they_claim():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(2, 10)).astype(np.float32)
    mids, pairs = midpoint_population(np.stack([a, b]), 5, np.random.default_rng(0))
    np.testing.assert_allclose(mids, np.broadcast_to((a + b) / 2, (5, 10)), rtol=1e-6)
    assert (pairs[:, 0] != pairs[:, 1]).all()
    train = rng.normal(size=(30, 8)).astype(np.float32)
    mids, pairs = midpoint_population(train, 200, np.random.default_rng(1))
    assert (pairs[:, 0] != pairs[:, 1]).all() and len(np.unique(pairs)) > 20
    np.testing.assert_allclose(mids, (train[pairs[:, 0]] + train[pairs[:, 1]]) / 2, rtol=1e-6)
    dist = np.linalg.norm(train[:, None] - train[None], axis=2)
    for k in (2, 4):
        avg, members = knn_average_population(train, 12, k, np.random.default_rng(k))
        assert members.shape == (12, k) and len(np.unique(members[:, 0])) == 12
        for vector, row in zip(avg, members):
            anchor = row[0]
            others = [j for j in np.argsort(dist[anchor]) if j != anchor][:k - 1]
            assert list(row[1:]) == others  # the k − 1 nearest others, nearest first
            np.testing.assert_allclose(vector, train[row].mean(0), rtol=1e-5, atol=1e-6)
    with pytest.raises(EvaluationError, match="2 training models"):
        midpoint_population(train[:1], 3, np.random.default_rng(0))


def test_equal_accuracy_baseline_interpolates_its_interval_like_the_value():
    base = equal_accuracy_baseline([0.1, 0.2, 0.4], [0.9, 0.8, 0.6], [0.9, 0.7, 0.5], 0.855,
                                   tolerance=0.005, ious_ci=[(0.8, 1.0), (0.6, 0.8), (0.4, 0.6)])
    # Target 0.85: halfway between the first two levels.
    assert base["median_max_iou"] == pytest.approx(0.8)
    assert base["median_max_iou_ci"] == pytest.approx([0.7, 0.9])


def test_exact_copies_of_training_models_are_not_novel():
    arch, x, y, train = _teacher_setup()
    report = evaluate_generated(arch, train[[0, 3, 5, 7, 11]], train, x, y,
                                bootstrap_samples=500)
    d = report.to_dict()
    assert (report.generated_max_iou == 1).all()
    assert d["populations"]["generated"]["median_max_iou_ci"] == [1.0, 1.0]
    assert d["populations"]["generated"]["nn_distance_median"] == 0
    assert d["novel_fraction"] == 0 and d["populations"]["generated"]["novel_fraction"] == 0
    assert set(d["verdicts"]) == {"more_novel_than_noise", "more_novel_than_midpoints",
                                  "more_novel_than_knn2", "more_novel_than_knn4"}
    assert not any(d["verdicts"].values()) and d["more_novel_than_noise"] is False
    assert {"midpoints", "knn-2", "knn-4", "noise_0.01"} <= set(d["populations"])
    assert d["populations"]["midpoints"]["n"] == 5  # as many as generated
    assert "NOT more novel than noise" in report.table()


def _swap_classes(arch, flat, a, b):
    """The same network with output classes `a` and `b` exchanged (rows of the last layer)."""
    out = np.array(flat, np.float32)
    k0, k1 = arch.weight_space.offsets["dense_1/kernel"]
    b0 = arch.weight_space.offsets["dense_1/bias"][0]
    kernel = out[..., k0:k1].reshape(*out.shape[:-1], -1, 3)
    kernel[..., [a, b]] = kernel[..., [b, a]]
    out[..., k0:k1] = kernel.reshape(*out.shape[:-1], -1)
    out[..., [b0 + a, b0 + b]] = out[..., [b0 + b, b0 + a]]
    return out


def test_a_population_with_its_own_mistakes_is_more_novel_than_every_baseline():
    """Training models (a teacher + tiny noise) err on a set S of test points; the "generated"
    networks (the teacher with two classes swapped, + tiny noise) are exactly as accurate but err
    on a disjoint set T: the most novel a population of equal accuracy can be."""
    arch = build("mlp", input_shape=(6,), widths=(16,), num_classes=3)
    rng = np.random.default_rng(0)
    teacher = np.asarray(arch.weight_space.flatten(arch.init(jax.random.key(1))), np.float32)
    pool = rng.normal(size=(20_000, 6)).astype(np.float32)
    logits = np.asarray(arch.apply(arch.weight_space.unflatten(teacher), pool))
    pred = logits.argmax(1)
    top2 = np.sort(logits, axis=1)[:, -2:]
    confident = top2[:, 1] - top2[:, 0] > np.quantile(top2[:, 1] - top2[:, 0], 0.5)
    keep = np.bincount(pred[confident], minlength=3).argmax()  # the class both agree on
    a, b = [c for c in range(3) if c != keep]
    agreed = np.nonzero(confident & (pred == keep))[0][:300]
    swapped = np.nonzero(confident & (pred != keep))[0][:40]
    assert len(agreed) == 300 and len(swapped) == 40
    x = pool[np.concatenate([agreed, swapped])]
    y = pred[np.concatenate([agreed, swapped])].copy()
    s = np.arange(300, 320)  # labelled like the swapped network: training models err here
    y[s] = np.where(y[s] == a, b, a)
    train = teacher + 0.002 * rng.normal(size=(20, teacher.size)).astype(np.float32)
    generated = (_swap_classes(arch, teacher, a, b)
                 + 0.002 * rng.normal(size=(15, teacher.size)).astype(np.float32))
    report = evaluate_generated(arch, generated, train, x, y, bootstrap_samples=500)
    d = report.to_dict()
    assert d["generated_acc"]["mean"] == pytest.approx(d["train_acc"]["mean"], abs=0.01)
    assert d["train_max_iou"]["median"] > 0.9 and d["generated_max_iou"]["max"] < 0.1
    assert d["noise_baseline_equal_acc"]["as_accurate"]
    assert d["noise_baseline_equal_acc"]["median_max_iou_ci"][0] > 0.5
    assert d["verdicts"] == {"more_novel_than_noise": True, "more_novel_than_midpoints": True,
                             "more_novel_than_knn2": True, "more_novel_than_knn4": True}
    assert d["more_novel_than_noise"] is True and d["novel_fraction"] == 1.0
    # Far from every training model in weight space, unlike the averaging baselines.
    pops = d["populations"]
    assert pops["generated"]["nn_distance_relative"] > 10
    assert pops["knn-2"]["nn_distance_relative"] < 1
    table = report.table()
    assert "more novel than noise" in table and "more novel than knn-4" in table


def test_compare_with_training_uses_every_training_model(tmp_path, monkeypatch):
    """More training models than the former 1,000-model subset and than one IoU chunk: copies of
    the last ones must still be found (IoU 1, weight distance 0)."""
    import wsl.eval.generated as generated_module

    arch, x, y, train = _teacher_setup(num_train=1100, hidden=4, noise=0.3)
    np.save(tmp_path / "aligned_train.npy", train)
    generator = SimpleNamespace(directory=tmp_path, meta={"dataset": {"name": "stand-in"}},
                                architecture=arch)
    monkeypatch.setattr(generated_module, "dataset_from_spec",
                        lambda spec: SimpleNamespace(x_test=x[:200], y_test=y[:200]))
    copies = train[[1050, 1075, 1099]]
    report = compare_with_training(SimpleNamespace(flat=lambda: copies), generator)
    d = report.to_dict()
    assert d["num_train"] == 1100 and d["populations"]["training"]["n"] == 1100
    assert d["noise_baselines"][0]["n"] == 1100
    np.testing.assert_array_equal(report.generated_max_iou, 1.0)
    np.testing.assert_array_equal(report.generated_nn_distance, 0.0)
    assert d["accuracy_source"]["training_zoo_metrics"]["unavailable"]


def test_training_reference_is_computed_once_and_gives_the_same_report(tmp_path, monkeypatch):
    """The cached training side of the audit reproduces the uncached report exactly, is read back
    instead of rescoring every training model and noised copy, and is never used for another
    training set; a damaged cache file is a clear error."""
    import wsl.eval.generated as generated_module

    arch, x, y, train = _teacher_setup(num_train=30, hidden=4, noise=0.3)
    np.save(tmp_path / "aligned_train.npy", train)
    generator = SimpleNamespace(directory=tmp_path, meta={"dataset": {"name": "stand-in"}},
                                architecture=arch)
    monkeypatch.setattr(generated_module, "dataset_from_spec",
                        lambda spec: SimpleNamespace(x_test=x, y_test=y))
    generated = SimpleNamespace(flat=lambda: train[:5] + 0.2)
    plain = compare_with_training(generated, generator, seed=3).to_dict()
    cache = tmp_path / "cache"
    first = compare_with_training(generated, generator, seed=3, reference_cache=cache).to_dict()
    assert first == plain and len(list(cache.glob("reference-*.npz"))) == 1

    scored = []
    real = generated_module.population_predictions
    monkeypatch.setattr(generated_module, "population_predictions",
                        lambda arch, flat, x: scored.append(len(flat)) or real(arch, flat, x))
    again = compare_with_training(generated, generator, seed=3, reference_cache=cache).to_dict()
    assert again == plain
    # Only the generated networks and the midpoint / k-NN baselines were scored, no training
    # model or noised copy (30 each).
    assert scored == [5, 5, 5, 5]

    reference = generated_module.TrainingReference.load(next(cache.glob("reference-*.npz")))
    with pytest.raises(EvaluationError, match="another training set"):
        evaluate_generated(arch, train[:5], train[1:], x, y, seed=3, reference=reference)
    with pytest.raises(EvaluationError, match="another training set"):
        evaluate_generated(arch, train[:5], train, x, y, seed=4, reference=reference)
    path = next(cache.glob("reference-*.npz"))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(EvaluationError, match="not a readable training reference"):
        compare_with_training(generated, generator, seed=3, reference_cache=cache)
