"""The pure functions the trainer compiles: the training state, its initialisation, one update."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from wsl.train.optim import ema_update


@struct.dataclass
class TrainState:
    """Everything a checkpoint must hold to continue a run exactly.

    `rng` is raw key data (uint32) so that orbax can store it; the key of update `step` is
    ``fold_in(rng, step)``, so resuming needs no other random state.
    """

    step: jax.Array  # updates done so far (int32 scalar)
    params: Any
    opt_state: Any
    ema: Any  # EMA of params, or None when ema_decay == 0
    rng: jax.Array


def make_init(task, tx: optax.GradientTransformation, use_ema: bool):
    """`init(seed, batch) -> TrainState`, every key derived from the integer `seed`."""

    def init(seed: jax.Array, batch) -> TrainState:
        init_key, step_key = jax.random.split(jax.random.key(seed))
        params = task.init(init_key, batch)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                          ema=jax.tree.map(jnp.copy, params) if use_ema else None,
                          rng=jax.random.key_data(step_key))

    return init


def micro_batched(grad_fn, size: int):
    """`grad_fn(params, batch, key) -> ((loss, aux), grads)` run on micro-batches of `size` rows
    one after another (`jax.lax.scan`) and averaged: for a loss that is a mean over rows (every
    wsl task's), the same loss and gradient as one call on the whole batch, each micro-batch with
    its own key. Metrics are averaged too: exact for means over rows, not for e.g. an RMSE. Only
    one micro-batch's activations are live at a time, which saves memory everywhere and, on CPU,
    keeps an encoder's working set in cache.

    Micro-batch i holds rows i, i + n, i + 2n, … (n micro-batches): a batch split over devices
    by rows is split the same way in every micro-batch, so each one still uses every device.
    """

    def run(params, batch, key):
        rows = jax.tree.leaves(batch)[0].shape[0]
        if rows % size:
            raise ValueError(f"a batch of {rows} rows does not split into micro-batches of {size}")
        n = rows // size
        batches = jax.tree.map(
            lambda x: jnp.swapaxes(x.reshape((size, n) + x.shape[1:]), 0, 1), batch)
        first = jax.tree.map(lambda x: x[0], batches)
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                             jax.eval_shape(grad_fn, params, first, key))

        def add(total, inputs):
            index, micro = inputs
            out = grad_fn(params, micro, jax.random.fold_in(key, index))
            return jax.tree.map(jnp.add, total, out), None

        total, _ = jax.lax.scan(add, zeros, (jnp.arange(n), batches))
        return jax.tree.map(lambda t: t / n, total)

    return run


def make_train_step(task, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    ema_decay: float, microbatch: int = 0):
    """`step(state, batch) -> (state, metrics)`: one optimizer update, metrics as device scalars.
    ``microbatch > 0`` computes the gradient over micro-batches of that many rows
    (`micro_batched`)."""
    grad_fn = jax.value_and_grad(task.loss, has_aux=True)
    if microbatch:
        grad_fn = micro_batched(grad_fn, microbatch)

    def train_step(state: TrainState, batch):
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        (loss, aux), grads = grad_fn(state.params, batch, key)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        step = state.step + 1
        ema = None if state.ema is None else ema_update(state.ema, params, ema_decay, step)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
                   "lr": schedule(state.step), **dict(aux)}
        return state.replace(step=step, params=params, opt_state=opt_state, ema=ema), metrics

    return train_step
