"""Honest evaluation of a generated population against the population it was trained on.

Reported side by side for generated and training networks, never best-of-N alone:
- test accuracy: mean / median / min / max over every sample;
- novelty: for each network the maximum IoU of its set of wrongly classified test points with that
  of any training network (1 = makes exactly the mistakes of some training model), beside the same
  number for noised copies of training models at several noise levels — a generator that memorises
  looks like a noise baseline of equal accuracy;
- diversity: mean pairwise distance of weight vectors and mean pairwise prediction disagreement;
- each sample's relative distance to the affine span of the training set (0 = inside the span,
  the failure mode of PCA-based generators).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from zoos.architectures import Architecture

NOISE_LEVELS = (0.01, 0.03, 0.1, 0.3, 1.0)  # × each tensor's std over the training population


def predict(arch: Architecture, flat: np.ndarray, x: np.ndarray, model_chunk: int = 256,
            data_chunk: int = 4096) -> np.ndarray:
    """Class predictions (models, examples) for a population given as flat weight vectors."""
    space = arch.weight_space

    @jax.jit
    def run(vectors, inputs):
        logits = jax.vmap(lambda v: arch.apply(space.unflatten(v), inputs))(vectors)
        return jnp.argmax(logits, axis=-1)

    out = np.empty((len(flat), len(x)), np.int32)
    for i in range(0, len(flat), model_chunk):
        for j in range(0, len(x), data_chunk):
            out[i:i + model_chunk, j:j + data_chunk] = np.asarray(
                run(jnp.asarray(flat[i:i + model_chunk], jnp.float32),
                    jnp.asarray(x[j:j + data_chunk], jnp.float32)))
    return out


def max_wrong_iou(wrong: np.ndarray, reference_wrong: np.ndarray,
                  exclude_self: bool = False) -> np.ndarray:
    """For each row of `wrong` (models × examples, bool), the max IoU with any reference row."""
    a, b = wrong.astype(np.float32), reference_wrong.astype(np.float32)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    if exclude_self:
        np.fill_diagonal(iou, -np.inf)
    return iou.max(axis=1)


def affine_span_distance(flat: np.ndarray, train_flat: np.ndarray) -> np.ndarray:
    """‖x − proj(x)‖ / ‖x − mean‖ for the affine span of the training vectors (0 = in the span)."""
    mean = train_flat.mean(axis=0)
    basis, s, _ = np.linalg.svd((train_flat - mean).T.astype(np.float64), full_matrices=False)
    basis = basis[:, s > s.max() * 1e-8]
    centred = (flat - mean).astype(np.float64)
    residual = centred - (centred @ basis) @ basis.T
    return np.linalg.norm(residual, axis=1) / np.maximum(np.linalg.norm(centred, axis=1), 1e-12)


def pairwise_stats(flat: np.ndarray, predictions: np.ndarray, limit: int = 200) -> dict[str, float]:
    """Mean pairwise L2 distance of weights and mean pairwise prediction disagreement."""
    flat, predictions = flat[:limit], predictions[:limit]
    n = len(flat)
    if n < 2:
        return {"pairwise_distance": float("nan"), "disagreement": float("nan")}
    sq = (flat ** 2).sum(1)
    dist = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * flat @ flat.T, 0))
    upper = np.triu_indices(n, 1)
    disagree = np.array([(predictions[i] != predictions[j]).mean() for i, j in zip(*upper)])
    return {"pairwise_distance": float(dist[upper].mean()), "disagreement": float(disagree.mean())}


def summary(values: np.ndarray) -> dict[str, float]:
    values = np.asarray(values, np.float64)
    finite = values[np.isfinite(values)]
    if not finite.size:
        return {k: float("nan") for k in ("mean", "median", "min", "max", "std")}
    return {"mean": float(finite.mean()), "median": float(np.median(finite)),
            "min": float(finite.min()), "max": float(finite.max()), "std": float(finite.std())}


@dataclasses.dataclass
class GeneratedReport:
    """Everything `evaluate_generated` measured; `table()` prints it, `to_dict()` saves it."""

    generated_acc: np.ndarray
    train_acc: np.ndarray
    generated_max_iou: np.ndarray
    train_max_iou: np.ndarray
    noise: list[dict[str, float]]
    generated_diversity: dict[str, float]
    train_diversity: dict[str, float]
    span_distance: np.ndarray

    def noise_baseline_at(self, accuracy: float) -> dict[str, float]:
        """The noise level whose noised copies' mean accuracy is closest to `accuracy`."""
        return min(self.noise, key=lambda row: abs(row["mean_acc"] - accuracy))

    def to_dict(self) -> dict:
        gen = summary(self.generated_acc)
        baseline = self.noise_baseline_at(gen["mean"])
        return {
            "num_generated": int(len(self.generated_acc)), "num_train": int(len(self.train_acc)),
            "generated_acc": gen, "train_acc": summary(self.train_acc),
            "generated_max_iou": summary(self.generated_max_iou),
            "train_max_iou": summary(self.train_max_iou),
            "noise_baselines": self.noise, "noise_baseline_equal_acc": baseline,
            "generated_diversity": self.generated_diversity, "train_diversity": self.train_diversity,
            "span_distance": summary(self.span_distance),
        }

    def table(self) -> str:
        d = self.to_dict()
        rows = [("population", "n", "acc mean", "median", "min", "max", "max IoU (median)")]
        for name, acc, iou, n in (("training", d["train_acc"], d["train_max_iou"], d["num_train"]),
                                  ("generated", d["generated_acc"], d["generated_max_iou"],
                                   d["num_generated"])):
            rows.append((name, str(n), f"{acc['mean']:.4f}", f"{acc['median']:.4f}",
                         f"{acc['min']:.4f}", f"{acc['max']:.4f}", f"{iou['median']:.3f}"))
        for row in self.noise:
            rows.append((f"train + noise σ={row['sigma']:g}", str(row["n"]), f"{row['mean_acc']:.4f}",
                         f"{row['median_acc']:.4f}", f"{row['min_acc']:.4f}", f"{row['max_acc']:.4f}",
                         f"{row['median_max_iou']:.3f}"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
                 for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        base = d["noise_baseline_equal_acc"]
        lines += [
            "",
            f"novelty: generated median max IoU {d['generated_max_iou']['median']:.3f} vs "
            f"{base['median_max_iou']:.3f} for noised training models of similar accuracy "
            f"(σ={base['sigma']:g}, acc {base['mean_acc']:.4f}); training models among themselves "
            f"{d['train_max_iou']['median']:.3f}",
            f"diversity: pairwise weight distance {d['generated_diversity']['pairwise_distance']:.3f} "
            f"(training {d['train_diversity']['pairwise_distance']:.3f}), prediction disagreement "
            f"{d['generated_diversity']['disagreement']:.3f} "
            f"(training {d['train_diversity']['disagreement']:.3f})",
            f"distance to the training set's affine span (relative): median "
            f"{d['span_distance']['median']:.3f}, min {d['span_distance']['min']:.3f}",
        ]
        return "\n".join(lines)


def evaluate_generated(arch: Architecture, generated_flat: np.ndarray, train_flat: np.ndarray,
                       x_test: np.ndarray, y_test: np.ndarray, *, seed: int = 0,
                       noise_levels: Sequence[float] = NOISE_LEVELS) -> GeneratedReport:
    """Compare generated networks with their training population on held-out test data."""
    generated_flat = np.asarray(generated_flat, np.float32)
    train_flat = np.asarray(train_flat, np.float32)
    gen_pred = predict(arch, generated_flat, x_test)
    train_pred = predict(arch, train_flat, x_test)
    gen_wrong, train_wrong = gen_pred != y_test, train_pred != y_test
    rng = np.random.default_rng(seed)
    tensor_std = np.empty(arch.num_params, np.float32)
    for start, end in arch.weight_space.offsets.values():
        tensor_std[start:end] = train_flat[:, start:end].std()
    noise = []
    for sigma in noise_levels:
        noised = train_flat + sigma * tensor_std * rng.standard_normal(train_flat.shape).astype(np.float32)
        pred = predict(arch, noised, x_test)
        acc = (pred == y_test).mean(axis=1)
        iou = max_wrong_iou(pred != y_test, train_wrong)
        noise.append({"sigma": float(sigma), "n": int(len(noised)), "mean_acc": float(acc.mean()),
                      "median_acc": float(np.median(acc)), "min_acc": float(acc.min()),
                      "max_acc": float(acc.max()), "median_max_iou": float(np.median(iou))})
    return GeneratedReport(
        generated_acc=(gen_pred == y_test).mean(axis=1),
        train_acc=(train_pred == y_test).mean(axis=1),
        generated_max_iou=max_wrong_iou(gen_wrong, train_wrong),
        train_max_iou=max_wrong_iou(train_wrong, train_wrong, exclude_self=True),
        noise=noise,
        generated_diversity=pairwise_stats(generated_flat, gen_pred),
        train_diversity=pairwise_stats(train_flat, train_pred),
        span_distance=affine_span_distance(generated_flat, train_flat),
    )


def plot_report(report: GeneratedReport, path) -> None:
    """Overlaid accuracy histograms and novelty vs accuracy, side by side, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    bins = np.linspace(min(report.train_acc.min(), np.nanmin(report.generated_acc)), 1.0, 30)
    left.hist(report.train_acc, bins=bins, alpha=0.6, label=f"training (n={len(report.train_acc)})")
    left.hist(report.generated_acc, bins=bins, alpha=0.6,
              label=f"generated (n={len(report.generated_acc)})")
    left.set_xlabel("test accuracy")
    left.set_ylabel("networks")
    left.legend()
    right.scatter(report.train_acc, report.train_max_iou, s=8, alpha=0.5, label="training vs others")
    right.scatter(report.generated_acc, report.generated_max_iou, s=8, alpha=0.6, label="generated")
    right.scatter([r["mean_acc"] for r in report.noise], [r["median_max_iou"] for r in report.noise],
                  marker="x", color="k", label="noised training (median)")
    right.set_xlabel("test accuracy")
    right.set_ylabel("max IoU of wrong predictions vs training set")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
