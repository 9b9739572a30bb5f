"""Linear mode connectivity: loss and accuracy along the straight path between two networks.

For networks θ_A and θ_B of one architecture, the path is θ(λ) = (1 − λ) θ_A + λ θ_B on a λ grid.
The loss barrier is max over λ of loss(λ) − [(1 − λ) loss(0) + λ loss(1)], the accuracy barrier
max over λ of [(1 − λ) acc(0) + λ acc(1)] − acc(λ). Both are measured before and after aligning
θ_B to θ_A (weight matching or activation matching, `wsl.align`), for many pairs at once: the
networks of every pair at one λ are scored as one population
(`wsl.zoos.scoring.population_metrics`).
`plot_lmc` draws the curves.

`unit_features(arch)` gives activation matching its per-group unit features for any zoo
architecture, read from the outputs of the layers whose kernels end in a permuted axis.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from wsl.align import activation_matching, weight_matching
from wsl.eval.errors import EvaluationError
from wsl.zoos.architectures import Architecture, activation_fn
from wsl.zoos.scoring import as_vectors, population_metrics

DEFAULT_LAMBDAS = np.linspace(0.0, 1.0, 11)


def interpolate(params_a, params_b, lam):
    """(1 − λ) θ_A + λ θ_B, leaf by leaf (λ a scalar, or one per leading model)."""
    def mix(a, b):
        t = jnp.asarray(lam, jnp.float32)
        t = jnp.reshape(t, t.shape + (1,) * (a.ndim - t.ndim))
        return (1.0 - t) * a + t * b
    return jax.tree.map(mix, params_a, params_b)


def loss_barrier(loss: np.ndarray, lambdas: Sequence[float]) -> np.ndarray:
    """max_λ loss(λ) − [(1 − λ) loss(0) + λ loss(1)] over the last axis (λ first to last)."""
    loss, lam = np.asarray(loss, np.float64), np.asarray(lambdas, np.float64)
    _check_grid(lam, loss.shape[-1])
    chord = (1 - lam) * loss[..., :1] + lam * loss[..., -1:]
    return (loss - chord).max(-1)


def accuracy_barrier(acc: np.ndarray, lambdas: Sequence[float]) -> np.ndarray:
    """max_λ [(1 − λ) acc(0) + λ acc(1)] − acc(λ) over the last axis."""
    return loss_barrier(-np.asarray(acc, np.float64), lambdas)


def _check_grid(lam: np.ndarray, size: int) -> None:
    if lam.ndim != 1 or len(lam) != size or len(lam) < 2 or lam[0] != 0.0 or lam[-1] != 1.0:
        raise EvaluationError(f"λ grid must be 1-D from 0 to 1 with one value per loss; got "
                         f"{len(lam)} λ values {lam[:3]}… for {size} losses")


def path_metrics(arch: Architecture, params_a, params_b, x, y, *,
                 lambdas: Sequence[float] = DEFAULT_LAMBDAS, batch_size: int = 256):
    """Mean cross-entropy and accuracy (pairs, λ) along the paths between paired populations.

    `params_a` and `params_b` have a leading pair axis; the networks at each λ are scored as one
    population (`wsl.zoos.scoring.population_metrics`, one compiled program for every λ).
    """
    flat_a, flat_b = as_vectors(arch, params_a), as_vectors(arch, params_b)
    loss, acc = [], []
    for lam in np.asarray(lambdas, np.float32):
        scores = population_metrics(arch, (1 - lam) * flat_a + lam * flat_b, (x, y),
                                    batch=batch_size)
        loss.append(scores["loss"])
        acc.append(scores["acc"])
    return np.stack(loss, axis=1), np.stack(acc, axis=1)


@dataclasses.dataclass(frozen=True, eq=False)
class LMCResult:
    """Loss / accuracy curves (pairs, λ) and barriers (pairs,) before and after alignment."""

    lambdas: np.ndarray
    loss_before: np.ndarray
    acc_before: np.ndarray
    loss_after: np.ndarray
    acc_after: np.ndarray

    @property
    def barrier_before(self) -> np.ndarray:
        return loss_barrier(self.loss_before, self.lambdas)

    @property
    def barrier_after(self) -> np.ndarray:
        return loss_barrier(self.loss_after, self.lambdas)

    @property
    def acc_barrier_before(self) -> np.ndarray:
        return accuracy_barrier(self.acc_before, self.lambdas)

    @property
    def acc_barrier_after(self) -> np.ndarray:
        return accuracy_barrier(self.acc_after, self.lambdas)

    def summary(self) -> dict:
        return {"pairs": int(self.loss_before.shape[0]),
                "barrier_before": float(np.mean(self.barrier_before)),
                "barrier_after": float(np.mean(self.barrier_after)),
                "acc_barrier_before": float(np.mean(self.acc_barrier_before)),
                "acc_barrier_after": float(np.mean(self.acc_barrier_after))}


def linear_mode_connectivity(arch: Architecture, params_a, params_b, x, y, *,
                             method: str = "weights", key: jax.Array | None = None,
                             lambdas: Sequence[float] = DEFAULT_LAMBDAS, features_x=None,
                             batch_size: int = 256, **matching) -> LMCResult:
    """LMC of pairs (leading pair axis) on (x, y), before and after aligning B to A.

    Two single networks (no leading axis) are one pair: the result then has one row.
    `method` is ``"weights"`` (weight matching, `matching` passed on) or ``"activations"``
    (activation matching on `features_x`, default `x`).
    """
    space = arch.weight_space
    lead_a, lead_b = space.batch_shape(params_a), space.batch_shape(params_b)
    if lead_a == () and lead_b == ():
        params_a, params_b = (jax.tree.map(lambda t: jnp.asarray(t)[None], p)
                              for p in (params_a, params_b))
        lead_a = lead_b = (1,)
    if len(lead_a) != 1 or lead_a != lead_b:
        raise EvaluationError(f"params_a and params_b must be two single networks or two stacks "
                              f"with the same leading pair axis; got {lead_a} and {lead_b}")
    if method == "weights":
        al = weight_matching(space, params_a, params_b, key=key, **matching)
    elif method == "activations":
        al = activation_matching(space, unit_features(arch), params_a, params_b,
                                 x if features_x is None else features_x, key=key, **matching)
    else:
        raise EvaluationError(f"method must be 'weights' or 'activations'; got {method!r}")
    aligned = space.permute(params_b, al.perms)
    before = path_metrics(arch, params_a, params_b, x, y, lambdas=lambdas, batch_size=batch_size)
    after = path_metrics(arch, params_a, aligned, x, y, lambdas=lambdas, batch_size=batch_size)
    return LMCResult(np.asarray(lambdas, np.float64), *before, *after)


def plot_lmc(result: LMCResult, path, *, title: str = "linear mode connectivity") -> None:
    """Write a PNG: loss and accuracy along the path, each pair faint, the mean bold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    lam = result.lambdas
    for ax, (name, before, after) in zip(axes, (("loss", result.loss_before, result.loss_after),
                                                ("accuracy", result.acc_before, result.acc_after))):
        for curves, colour, label in ((before, "tab:red", "naive"),
                                      (after, "tab:blue", "aligned")):
            ax.plot(lam, curves.T, color=colour, alpha=0.15, linewidth=0.8)
            ax.plot(lam, curves.mean(0), color=colour, linewidth=2.2, label=label)
        ax.set_xlabel("λ  (0 = A, 1 = B)")
        ax.set_ylabel(f"test {name}")
        ax.grid(alpha=0.3)
    s = result.summary()
    axes[0].set_title(f"barrier {s['barrier_before']:.3f} → {s['barrier_after']:.3f}")
    axes[1].set_title(f"accuracy barrier {s['acc_barrier_before']:.3f} → "
                      f"{s['acc_barrier_after']:.3f}")
    axes[0].legend()
    fig.suptitle(f"{title} ({s['pairs']} pairs)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def unit_features(arch: Architecture) -> Callable:
    """`features(params, x) -> {group: (samples, n)}` for activation matching on `arch`.

    Every layer whose output has a single axis, labelled with a permutation group, contributes
    its output, passed through the group's nonlinearity when it has one: the
    post-activation features of hidden layers, and the per-layer contributions to a residual
    stream. Groups with no such layer (attention heads, per-head dims) get no features.
    """
    space = arch.weight_space
    sources: dict[str, list[tuple[str, ...]]] = {}
    paths = set(space.paths)
    for t in space.tensors:
        keys = t.keys
        if keys[-1] != "kernel":
            continue
        # A layer's bias has exactly its output axes; without one, take the kernel's last axis.
        bias = "/".join(keys[:-1] + ("bias",))
        outputs = space.tensor(bias).axes if bias in paths else t.axes[-1:]
        if len(outputs) == 1 and outputs[0] is not None:  # not heads × head dims
            sources.setdefault(outputs[0], []).append(keys[:-1])
    if not sources:
        raise EvaluationError(f"architecture {arch.name!r} has no layer whose output units are a "
                         f"permutation group")
    acts = {g: activation_fn(arch.weight_space.nonlinearity[g])
            for g in sources if g in arch.weight_space.nonlinearity}

    def features(params, x):
        _, state = arch.module.apply({"params": params}, x, 0.0, None, capture_intermediates=True,
                                     mutable=["intermediates"])
        out = {}
        for g, modules in sources.items():
            parts = []
            for keys in modules:
                node = state["intermediates"]
                for k in keys:
                    node = node[k]
                y = node["__call__"][0]
                parts.append(y.reshape(-1, y.shape[-1]))
            f = jnp.concatenate(parts, axis=0)
            out[g] = acts[g](f) if g in acts else f
        return out

    return features
