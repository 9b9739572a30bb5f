"""Flow matching over weight vectors: a straight path from Gaussian noise to trained weights.

Training regresses the backbone's velocity v(x_t, t, c) onto x1 − x0 along x_t = (1 − t)·x0 + t·x1,
x0 ~ N(0, source_scale²). Sampling integrates dx/dt = v from t = 0 to 1 with Euler, Heun or RK4.
Conditions (class, scalar) are dropped at rate `cond_dropout` during training so that one network
learns both the conditional and the unconditional field — classifier-free guidance mixes them.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

SAMPLERS = ("euler", "heun", "rk4")


def drop_conditions(key, cond_class, cond_scalar, rate: float):
    """Replace each example's conditions by "none" (class −1, scalar NaN) with probability `rate`."""
    if rate <= 0:
        return cond_class, cond_scalar
    k1, k2 = jax.random.split(key)
    if cond_class is not None:
        cond_class = jnp.where(jax.random.bernoulli(k1, rate, cond_class.shape), -1, cond_class)
    if cond_scalar is not None:
        cond_scalar = jnp.where(jax.random.bernoulli(k2, rate, cond_scalar.shape), jnp.nan,
                                cond_scalar)
    return cond_class, cond_scalar


def guided(apply, params, x, t, cond_class, cond_scalar, guidance: float):
    """Classifier-free guidance: v_uncond + w·(v_cond − v_uncond); w = 1 is plain conditional."""
    if guidance == 1.0 or (cond_class is None and cond_scalar is None):
        return apply(params, x, t, cond_class, cond_scalar)
    none_class = None if cond_class is None else jnp.full_like(cond_class, -1)
    none_scalar = None if cond_scalar is None else jnp.full_like(cond_scalar, jnp.nan)
    v_cond = apply(params, x, t, cond_class, cond_scalar)
    v_none = apply(params, x, t, none_class, none_scalar)
    return v_none + guidance * (v_cond - v_none)


@dataclasses.dataclass(frozen=True)
class FlowMatching:
    """A flow-matching generator around a backbone `f(x, t, cond_class, cond_scalar) -> velocity`."""

    backbone: nn.Module
    dim: int
    source_scale: float = 1.0
    cond_dropout: float = 0.1

    def init(self, key):
        x = jnp.zeros((1, self.dim))
        t = jnp.zeros((1,))
        return self.backbone.init(key, x, t, jnp.zeros((1,), jnp.int32), jnp.zeros((1,)))["params"]

    def velocity(self, params, x, t, cond_class=None, cond_scalar=None):
        return self.backbone.apply({"params": params}, x, t, cond_class, cond_scalar)

    def loss(self, params, x1, key, cond_class=None, cond_scalar=None):
        k_noise, k_time, k_drop = jax.random.split(key, 3)
        x0 = self.source_scale * jax.random.normal(k_noise, x1.shape, x1.dtype)
        t = jax.random.uniform(k_time, (x1.shape[0],))
        xt = (1 - t[:, None]) * x0 + t[:, None] * x1
        cond_class, cond_scalar = drop_conditions(k_drop, cond_class, cond_scalar, self.cond_dropout)
        v = self.velocity(params, xt, t, cond_class, cond_scalar)
        return jnp.mean(jnp.sum((v - (x1 - x0)) ** 2, axis=-1)) / self.dim

    def sample(self, params, key, num: int, *, steps: int = 100, method: str = "rk4",
               cond_class=None, cond_scalar=None, guidance: float = 1.0):
        """`num` samples, integrating the learned field from noise (deterministic given `key`)."""
        if method not in SAMPLERS:
            raise ValueError(f"unknown sampler {method!r}; choose from {SAMPLERS}")
        field = lambda x, t: guided(self.velocity, params, x, jnp.full((x.shape[0],), t),
                                    cond_class, cond_scalar, guidance)
        h = 1.0 / steps

        def step(x, i):
            t = i * h
            if method == "euler":
                return x + h * field(x, t), None
            if method == "heun":
                k1 = field(x, t)
                k2 = field(x + h * k1, t + h)
                return x + 0.5 * h * (k1 + k2), None
            k1 = field(x, t)
            k2 = field(x + 0.5 * h * k1, t + 0.5 * h)
            k3 = field(x + 0.5 * h * k2, t + 0.5 * h)
            k4 = field(x + h * k3, t + h)
            return x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), None

        x0 = self.source_scale * jax.random.normal(key, (num, self.dim))
        x1, _ = jax.lax.scan(step, x0, jnp.arange(steps, dtype=jnp.float32))
        return x1
