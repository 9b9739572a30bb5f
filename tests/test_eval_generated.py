"""Generated-population evaluation: IoU novelty, affine span distance, noise baselines, report."""

import jax
import numpy as np

from wsl.eval.generated import (
    affine_span_distance,
    evaluate_generated,
    max_wrong_iou,
    plot_report,
)
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
