"""Optimizer, learning-rate schedule and parameter EMA from the config, built on optax."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from wsl.train.config import OptimizerConfig


def make_schedule(config: OptimizerConfig, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to `lr`, then constant or a cosine decay to `lr * final_lr_fraction`."""
    warmup = min(config.warmup_steps, total_steps)
    if config.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=config.lr, warmup_steps=warmup,
            decay_steps=max(total_steps, warmup + 1),
            end_value=config.lr * config.final_lr_fraction)
    if warmup == 0:
        return optax.constant_schedule(config.lr)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, config.lr, warmup), optax.constant_schedule(config.lr)],
        [warmup])


def make_optimizer(config: OptimizerConfig,
                   schedule: optax.Schedule) -> optax.GradientTransformation:
    """The configured optimizer following `schedule`, behind global-norm clipping if set."""
    if config.name == "adamw":
        core = optax.adamw(schedule, config.b1, config.b2, config.eps,
                           weight_decay=config.weight_decay)
    elif config.name == "adam":
        core = optax.adam(schedule, config.b1, config.b2, config.eps)
    else:
        core = optax.sgd(schedule, momentum=config.momentum or None)
    if config.clip_norm is None:
        return core
    return optax.chain(optax.clip_by_global_norm(config.clip_norm), core)


def ema_update(ema, params, decay: float, step: jax.Array):
    """One EMA step after update `step` (1-based).

    The effective decay ramps up as min(decay, (1 + step) / (10 + step)) so that the average
    forgets the random initialisation within the first steps instead of after ~1 / (1 - decay).
    """
    rate = jnp.minimum(decay, (1.0 + step) / (10.0 + step)).astype(jnp.float32)
    return jax.tree.map(lambda e, p: (rate * e + (1.0 - rate) * p).astype(e.dtype), ema, params)
