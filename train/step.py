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


def make_train_step(task, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    ema_decay: float):
    """`step(state, batch) -> (state, metrics)`: one optimizer update, metrics as device scalars."""

    def train_step(state: TrainState, batch):
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        (loss, aux), grads = jax.value_and_grad(task.loss, has_aux=True)(state.params, batch, key)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        step = state.step + 1
        ema = None if state.ema is None else ema_update(state.ema, params, ema_decay, step)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
                   "lr": schedule(state.step), **dict(aux)}
        return state.replace(step=step, params=params, opt_state=opt_state, ema=ema), metrics

    return train_step
