"""Score a population of networks on data: logits, predictions, loss and accuracy per split.

One way to evaluate a population outside its trainer: `population_metrics` (loss and accuracy on
every split of a dataset, or on one ``(x, y)``) and `population_predictions` (classes), both built
on `population_logits`. Weights come as flat vectors (models, num_params) or as a params pytree
with a leading model axis. Models and examples go in fixed-size, zero-padded chunks, so a
population compiles once per architecture and chunk shape, whatever its size, and memory stays
bounded. The compiled programs take the (hashable) architecture as a static argument.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from wsl.weight_space import WeightSpaceError
from wsl.zoos.architectures import Architecture
from wsl.zoos.fast_conv import population_apply

SPLITS = ("train", "val", "test")


def population_logits(arch: Architecture, vectors, x):
    """Logits (models, examples, classes) of flat weight vectors on shared inputs, for evaluation.

    On CPU one model at a time (`lax.map`) over a large batch of examples is 5x faster than
    `vmap`'s per-model convolutions for the small CNNs and 2x for MLPs; accelerators get `vmap`.
    """
    space = arch.weight_space
    one = lambda v: population_apply(arch, space.unflatten(v), x)
    if jax.default_backend() == "cpu":
        return jax.lax.map(one, vectors)
    return jax.vmap(one)(vectors)


@functools.partial(jax.jit, static_argnums=0)
def _chunk_scores(arch: Architecture, vectors, x, y, valid):
    """(summed NLL, correct count) per model on one padded chunk of examples."""
    logits = population_logits(arch, vectors, x)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, y[None, :, None], axis=-1)[..., 0]
    correct = jnp.argmax(logits, -1) == y[None]
    return (nll * valid).sum(1), (correct * valid).sum(1)


@functools.partial(jax.jit, static_argnums=0)
def _chunk_predictions(arch: Architecture, vectors, x):
    return jnp.argmax(population_logits(arch, vectors, x), axis=-1)


def as_vectors(arch: Architecture, weights) -> np.ndarray:
    """Flat float32 weight vectors (models, num_params) from vectors or a params pytree."""
    if isinstance(weights, Mapping):
        weights = arch.weight_space.flatten(weights)
    flat = np.asarray(weights, np.float32)
    if flat.ndim != 2 or flat.shape[1] != arch.num_params:
        raise WeightSpaceError(f"expected weight vectors of shape (models, {arch.num_params}) "
                               f"for {arch.name!r}, got {flat.shape}")
    return flat


def pad_rows(a: np.ndarray, size: int) -> np.ndarray:
    """`a` with zero rows appended up to `size` rows: fixed shapes compile once."""
    if len(a) == size:
        return a
    return np.concatenate([a, np.zeros((size - len(a),) + a.shape[1:], a.dtype)])


def _chunks(n: int, size: int) -> Iterator[slice]:
    return (slice(start, min(start + size, n)) for start in range(0, n, size))


def population_predictions(arch: Architecture, weights, x, *, model_chunk: int = 256,
                           data_chunk: int = 4096) -> np.ndarray:
    """Class predictions (models, examples) of a population on inputs `x`."""
    flat = as_vectors(arch, weights)
    x = np.asarray(x, np.float32)
    mc, dc = min(model_chunk, max(len(flat), 1)), min(data_chunk, max(len(x), 1))
    out = np.empty((len(flat), len(x)), np.int32)
    for m in _chunks(len(flat), mc):
        vectors = jnp.asarray(pad_rows(flat[m], mc))
        for d in _chunks(len(x), dc):
            pred = np.asarray(_chunk_predictions(arch, vectors, jnp.asarray(pad_rows(x[d], dc))))
            out[m, d] = pred[:m.stop - m.start, :d.stop - d.start]
    return out


def _split_metrics(arch: Architecture, flat: np.ndarray, x, y, batch: int,
                   model_chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean loss and accuracy (models,) on one split; an empty split scores 0."""
    x, y = np.asarray(x, np.float32), np.asarray(y, np.int32)
    if len(x) != len(y):
        raise WeightSpaceError(f"need as many labels as inputs: x {x.shape}, y {y.shape}")
    mc, bc = min(model_chunk, max(len(flat), 1)), max(min(batch, len(x)), 1)
    loss, correct = np.zeros(len(flat)), np.zeros(len(flat))
    for m in _chunks(len(flat), mc):
        vectors = jnp.asarray(pad_rows(flat[m], mc))
        for d in _chunks(len(x), bc):
            valid = pad_rows(np.ones(d.stop - d.start, np.float32), bc)
            l, c = _chunk_scores(arch, vectors, jnp.asarray(pad_rows(x[d], bc)),
                                 jnp.asarray(pad_rows(y[d], bc)), jnp.asarray(valid))
            loss[m] += np.asarray(l, np.float64)[:m.stop - m.start]
            correct[m] += np.asarray(c, np.float64)[:m.stop - m.start]
    return loss / max(len(x), 1), correct / max(len(x), 1)


def population_metrics(arch: Architecture, weights, data: Any, *,
                       splits: Sequence[str] = SPLITS, batch: int = 2048,
                       model_chunk: int = 256) -> dict[str, np.ndarray]:
    """Mean cross-entropy and accuracy of every network of a population (rows of a metrics table).

    `data` is a dataset (its `splits` are scored: ``{split}_loss``, ``{split}_acc`` and, with
    train and test, ``gap``), a mapping ``{split: (x, y)}`` (the same keys), or one ``(x, y)``
    pair (keys ``loss`` and ``acc``).
    """
    flat = as_vectors(arch, weights)
    if isinstance(data, (tuple, list)):
        loss, acc = _split_metrics(arch, flat, *data, batch, model_chunk)
        return {"loss": loss, "acc": acc}
    parts = data if isinstance(data, Mapping) else {s: data.split(s) for s in splits}
    out = {}
    for split, (x, y) in parts.items():
        out[f"{split}_loss"], out[f"{split}_acc"] = _split_metrics(arch, flat, x, y, batch,
                                                                   model_chunk)
    if "train_acc" in out and "test_acc" in out:
        out["gap"] = out["train_acc"] - out["test_acc"]
    return out


def head_inputs(arch: Architecture, params, x) -> jax.Array:
    """What one network's output layer reads — its penultimate features, flattened per example:
    (examples, features). Captured from a forward pass (traceable: works under jit and vmap), so
    any architecture whose output layer is one module (`WeightSpace.head_paths`) is covered."""
    head = arch.weight_space.head_paths[0].rsplit("/", 1)[0]
    seen = []

    def grab(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and "/".join(context.module.scope.path) == head:
            seen.append(args[0])
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(grab):
        arch.module.apply({"params": params}, x)
    return seen[-1].reshape(x.shape[0], -1)


@functools.partial(jax.jit, static_argnums=(0, 6))
def _chunk_probe(arch: Architecture, vectors, x_fit, y_fit, x_eval, y_eval, ridge: float):
    def one(vector):
        params = arch.weight_space.unflatten(vector)
        with_bias = lambda f: jnp.concatenate([f, jnp.ones((f.shape[0], 1), f.dtype)], axis=1)
        fit, held = with_bias(head_inputs(arch, params, x_fit)), with_bias(
            head_inputs(arch, params, x_eval))
        targets = jax.nn.one_hot(y_fit, arch.num_classes)
        gram = fit.T @ fit + ridge * fit.shape[0] * jnp.eye(fit.shape[1])
        readout = jnp.linalg.solve(gram, fit.T @ targets)
        return jnp.mean(jnp.argmax(held @ readout, -1) == y_eval)

    return jax.lax.map(one, vectors)


def linear_probe_accuracy(arch: Architecture, weights, fit: tuple, evaluate: tuple, *,
                          ridge: float = 1e-4, model_chunk: int = 64) -> np.ndarray:
    """Per network: accuracy on `evaluate` (x, y) of a linear read-out of its penultimate features
    (`head_inputs`) fit by ridge least squares to one-hot labels of `fit` (x, y), its own head
    ignored. A measure of how well a network's features suit a task, whatever its head; `ridge`
    is per fitting example."""
    flat = as_vectors(arch, weights)
    x_fit, y_fit = jnp.asarray(fit[0]), jnp.asarray(fit[1])
    x_eval, y_eval = jnp.asarray(evaluate[0]), jnp.asarray(evaluate[1])
    out = np.zeros(len(flat))
    for rows in _chunks(len(flat), model_chunk):
        chunk = pad_rows(flat[rows], model_chunk)
        out[rows] = np.asarray(_chunk_probe(arch, chunk, x_fit, y_fit, x_eval, y_eval,
                                            float(ridge)))[:rows.stop - rows.start]
    return out


def softmax_head(features: np.ndarray, y: np.ndarray, num_classes: int, *,
                 weight: float = 1e-5, center: tuple[np.ndarray, np.ndarray] | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """An output layer (kernel (features, classes), bias (classes,)) fit to (features, y) by
    softmax regression: mean cross-entropy + `weight`·‖(kernel, bias) − center‖² (center: zeros,
    or a maximum a posteriori fit around a given head), minimised by L-BFGS from the center.
    Convex, so the result does not depend on where it starts; float64 throughout."""
    from scipy.optimize import minimize

    features = np.asarray(features, np.float64)
    y = np.asarray(y, np.int64)
    d, k = features.shape[1], num_classes
    if center is None:
        center = (np.zeros((d, k)), np.zeros(k))
    kernel0, bias0 = (np.asarray(c, np.float64) for c in center)
    onehot = np.eye(k)[y]

    def loss(v):
        w, b = v[:-k].reshape(d, k), v[-k:]
        z = features @ w + b
        z -= z.max(1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(1, keepdims=True))
        g = (np.exp(log_p) - onehot) / len(y)
        value = (-np.mean(log_p[np.arange(len(y)), y])
                 + weight * (np.sum((w - kernel0) ** 2) + np.sum((b - bias0) ** 2)))
        return value, np.concatenate([(features.T @ g + 2 * weight * (w - kernel0)).ravel(),
                                      g.sum(0) + 2 * weight * (b - bias0)])

    v = minimize(loss, np.concatenate([kernel0.ravel(), bias0]), jac=True,
                 method="L-BFGS-B", options={"maxiter": 2000, "ftol": 1e-12, "gtol": 1e-8}).x
    return v[:-k].reshape(d, k), v[-k:]


@functools.partial(jax.jit, static_argnums=0)
def _chunk_features(arch: Architecture, vectors, x):
    return jax.lax.map(lambda v: head_inputs(arch, arch.weight_space.unflatten(v), x), vectors)


def refit_heads(arch: Architecture, weights, x, y, *, weight: float = 1e-5,
                model_chunk: int = 16) -> np.ndarray:
    """Flat weights (models, params) with every network's output layer replaced by the softmax
    regression (`softmax_head`) of (x, y) on its own penultimate features, the rest unchanged:
    linear probing solved exactly rather than by epochs of gradient steps on the head."""
    space = arch.weight_space
    paths = space.head_paths
    shapes = [space.tensor(p).shape for p in paths]
    if len(paths) != 2 or len(shapes[0]) != 2 or shapes[1] != (shapes[0][1],):
        raise WeightSpaceError(f"{arch.name!r}: refitting the head needs an output layer of one "
                               f"kernel (features, classes) and one bias; its head is "
                               f"{dict(zip(paths, shapes))}")
    flat = as_vectors(arch, weights)
    out = flat.copy()
    x = jnp.asarray(x)
    (k_start, k_end), (b_start, b_end) = (space.offsets[p] for p in paths)
    for rows in _chunks(len(flat), model_chunk):
        features = np.asarray(_chunk_features(arch, pad_rows(flat[rows], model_chunk), x))
        for i, f in zip(range(rows.start, rows.stop), features):
            kernel, bias = softmax_head(f, y, arch.num_classes, weight=weight)
            out[i, k_start:k_end] = kernel.reshape(-1)
            out[i, b_start:b_end] = bias
    return out
