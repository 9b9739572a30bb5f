"""Merging a population of networks into one: uniform average, greedy soup, Fisher-weighted average.

Networks trained from different initialisations only average well once their hidden units are
aligned, so `merge` first aligns the population (weight matching, `wsl.align.align_zoo`) to the best
model on validation data or to the population mean, then merges:

* ``uniform``: the mean of all models;
* ``greedy``: a greedy soup (Wortsman et al. 2022): models in order of validation accuracy, each
  kept only if adding it to the average does not lower the average's validation accuracy;
* ``fisher``: Fisher-weighted averaging (Matena & Raffel 2022): θ = Σ_i F_i θ_i / Σ_i F_i with
  F_i the diagonal Fisher of model i, E_x Σ_c p(c|x) (∂ log p(c|x) / ∂θ)², computed exactly over
  the classes on data.

The functions on params pytrees with a leading model axis work without a zoo store; `wsl merge`
(`wsl merge`) runs them on a zoo directory.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from wsl.align import align_zoo
from wsl.eval.errors import EvaluationError
from wsl.zoos.architectures import Architecture
from wsl.zoos.scoring import population_metrics

METHODS = ("uniform", "greedy", "fisher")


def _num_models(population) -> int:
    sizes = {np.shape(a)[0] if np.ndim(a) else None for a in jax.tree.leaves(population)}
    if len(sizes) != 1 or None in sizes:
        raise EvaluationError(f"a population needs one shared leading model axis; "
                              f"got leading sizes {sorted(map(str, sizes))}")
    return sizes.pop()


def _select(population, index) -> dict:
    index = np.asarray(index)
    return jax.tree.map(lambda a: jnp.asarray(a)[index], population)


def uniform_average(population) -> dict:
    """The elementwise mean over the leading model axis."""
    if _num_models(population) == 0:
        raise EvaluationError("cannot average an empty population")
    return jax.tree.map(lambda a: jnp.mean(jnp.asarray(a, jnp.float32), axis=0), population)


def evaluate(arch: Architecture, population, x, y, *, batch_size: int = 256) -> dict:
    """Mean cross-entropy and accuracy (models,) of every model of a population on (x, y)
    (`wsl.zoos.scoring.population_metrics`)."""
    return population_metrics(arch, population, (x, y), batch=batch_size)


def _one(params):
    return jax.tree.map(lambda a: jnp.asarray(a)[None], params)


@dataclasses.dataclass(frozen=True, eq=False)
class Soup:
    """A greedy soup: its params, the models kept (in the order tried), and the score history."""

    params: dict
    members: list[int]
    tried: list[int]
    scores: list[float]


def greedy_soup(population, score: Callable[[dict], float], *,
                individual_scores: np.ndarray | None = None) -> Soup:
    """Greedy soup: try models best-first; keep one if the average's score does not drop.

    `score(params) -> float` (higher is better, e.g. validation accuracy) scores one model;
    `individual_scores` (models,) saves scoring each model alone when already known.
    """
    num = _num_models(population)
    if num == 0:
        raise EvaluationError("cannot make a soup from an empty population")
    if individual_scores is None:
        individual_scores = np.array([score(_select(population, i)) for i in range(num)])
    individual_scores = np.asarray(individual_scores, np.float64)
    if individual_scores.shape != (num,):
        raise EvaluationError(f"individual_scores has shape {individual_scores.shape}; expected "
                         f"({num},)")
    order = [int(i) for i in np.argsort(-individual_scores, kind="stable")]
    members = [order[0]]
    total = _select(population, order[0])
    best = float(individual_scores[order[0]])
    scores = [best]
    for i in order[1:]:
        candidate = jax.tree.map(lambda t, a: t + a, total, _select(population, i))
        value = float(score(jax.tree.map(lambda t: t / (len(members) + 1), candidate)))
        if value >= best:
            members.append(i)
            total, best = candidate, value
        scores.append(best)
    params = jax.tree.map(lambda t: t / len(members), total)
    return Soup(params, members, order, scores)


@functools.partial(jax.jit, static_argnames=("apply",))
def _fisher_batch(apply, params, x):
    """Σ over the batch of Σ_c p(c|x) (∂ log p(c|x)/∂θ)² for one model."""
    def log_probs(p, xi):
        return jax.nn.log_softmax(apply(p, xi[None])[0])

    def per_example(xi):
        probs = jnp.exp(log_probs(params, xi))
        jac = jax.jacrev(log_probs)(params, xi)  # leading class axis
        return jax.tree.map(lambda j: jnp.tensordot(probs, j * j, axes=1), jac)

    return jax.tree.map(lambda a: a.sum(0), jax.lax.map(per_example, x, batch_size=64))


def fisher_diagonal(apply: Callable, population, x, *, batch_size: int = 256) -> dict:
    """Diagonal Fisher information of every model (same layout as `population`), on inputs x.

    Exact over the classes: E_x Σ_c p(c|x) g_c², g_c the gradient of log p(c|x), using the model's
    own predictive distribution (not the labels).
    """
    x = np.asarray(x)
    if not len(x):
        raise EvaluationError("the Fisher needs at least one input")
    num = _num_models(population)
    total = None
    for start in range(0, len(x), batch_size):
        xb = jnp.asarray(x[start:start + batch_size])
        part = [_fisher_batch(apply, _select(population, i), xb) for i in range(num)]
        part = jax.tree.map(lambda *a: jnp.stack(a), *part)
        total = part if total is None else jax.tree.map(jnp.add, total, part)
    return jax.tree.map(lambda a: a / len(x), total)


def fisher_average(population, fishers, *, eps: float = 1e-8) -> dict:
    """Σ_i F_i θ_i / Σ_i F_i per parameter; where every F_i is ~0 it tends to the plain mean.

    `eps` is relative to each tensor's mean Fisher, so a parameter no model is sensitive to is
    averaged uniformly instead of divided by zero.
    """
    def merge(theta, fisher):
        theta, fisher = jnp.asarray(theta, jnp.float32), jnp.asarray(fisher, jnp.float32)
        if theta.shape != fisher.shape:
            raise EvaluationError(f"Fisher of shape {fisher.shape} "
                                  f"for params of shape {theta.shape}")
        fisher = fisher + eps * jnp.maximum(jnp.mean(fisher), 1e-30)
        return jnp.sum(fisher * theta, axis=0) / jnp.sum(fisher, axis=0)
    return jax.tree.map(merge, population, fishers)


@dataclasses.dataclass(frozen=True, eq=False)
class MergeResult:
    """A merged network and how it compares with the models it came from."""

    params: dict
    method: str
    members: list[int]
    report: dict


def merge(arch: Architecture, population, method: str, *, x_val, y_val, x_test=None,
          y_test=None, align: str | int = "best", key: jax.Array | None = None,
          fisher_samples: int = 256, model_ids: Sequence[int] | None = None,
          **matching) -> MergeResult:
    """Align `population` (leading model axis), then merge it with `method`.

    `align` is ``"best"`` (to the model with the best validation accuracy), ``"mean"`` (to the
    population mean, iterated), a model index, or ``"none"``. Validation data scores the greedy
    soup and supplies the Fisher's inputs (its first `fisher_samples`); the report gives loss and
    accuracy of the merged model, of the unaligned merge, and of the individual models, on the
    validation and (if given) test data. `matching` goes to `wsl.align.weight_matching`.

    `model_ids` (default 0..n-1) name the models in the report and its messages: ``best_model``,
    ``member_models`` (the models the merge kept) and, for the greedy soup, ``why`` it kept them.
    `align` as an int and `MergeResult.members` stay positions in `population`.
    """
    if method not in METHODS:
        raise EvaluationError(f"unknown merge method {method!r}; choose from {METHODS}")
    space = arch.weight_space
    population = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), population)
    num = _num_models(population)
    if num < 1:
        raise EvaluationError("cannot merge an empty population")
    ids = list(range(num)) if model_ids is None else [int(i) for i in model_ids]
    if len(ids) != num:
        raise EvaluationError(f"{len(ids)} model_ids for a population of {num} models")
    finite = np.asarray(jnp.all(jnp.isfinite(space.flatten(population)), axis=-1))
    if not finite.all():
        bad = [ids[i] for i in np.flatnonzero(~finite)[:10]]
        raise EvaluationError(f"models {bad} have NaN or inf weights; leave diverged models out "
                              f"of a merge")
    val = evaluate(arch, population, x_val, y_val)
    best = int(np.argmax(val["acc"]))
    if align == "none" or num == 1:
        aligned = population
    else:
        reference = best if align == "best" else align
        aligned = align_zoo(space, population, reference=reference, key=key, **matching).params

    def merged_from(pop):
        if method == "uniform":
            return uniform_average(pop), list(range(num))
        if method == "greedy":
            score = lambda p: float(evaluate(arch, _one(p), x_val, y_val)["acc"][0])
            soup = greedy_soup(pop, score, individual_scores=val["acc"])
            return soup.params, soup.members
        fishers = fisher_diagonal(arch.apply, pop, np.asarray(x_val)[:fisher_samples])
        return fisher_average(pop, fishers), list(range(num))

    params, members = merged_from(aligned)
    naive, _ = merged_from(population) if align != "none" and num > 1 else (params, members)
    report = {"method": method, "align": ids[align] if isinstance(align, int) else align,
              "models": num, "members": len(members), "best_model": ids[best],
              "member_models": [ids[i] for i in members]}
    if method == "greedy":
        left = num - len(members)
        report["why"] = (f"greedy soup kept {len(members)} of {num} (tried best first): "
                         + (f"adding any of the other {left} lowered validation accuracy"
                            if left else "none lowered validation accuracy"))
    splits = [("val", x_val, y_val)] + ([("test", x_test, y_test)] if x_test is not None else [])
    for split, x, y in splits:
        both = evaluate(arch, jax.tree.map(lambda a, b: jnp.stack([a, b]), params, naive), x, y)
        ind = val if split == "val" else evaluate(arch, population, x, y)
        report[split] = {"merged_acc": float(both["acc"][0]), "merged_loss": float(both["loss"][0]),
                         "unaligned_merge_acc": float(both["acc"][1]),
                         "best_model_acc": float(ind["acc"][best]),
                         "mean_model_acc": float(np.mean(ind["acc"]))}
    return MergeResult(params, method, members, report)
