"""Denoising diffusion (DDPM training, DDPM and DDIM sampling) over weight vectors or their latents.

The backbone predicts, at step k of a variance schedule (linear or cosine), either the clean
sample x0 (``prediction="data"``, the default) or the noise ε that was added (``"noise"``, Ho et
al.); the other follows from x_k = √ᾱ·x0 + √(1 − ᾱ)·ε. Data prediction is the default for the
reason given in `wsl.models.flow`: a backbone narrower than the weight vector cannot output the
noise in every direction, and an ε it cannot express is amplified by 1/√ᾱ when x0 is recovered
from it. Its loss is the ε loss written in x0, with the weight ᾱ/(1 − ᾱ) (the signal-to-noise ratio)
capped at `snr_cap` ("min-SNR", Hang et al. 2023) so the nearly clean steps do not dominate.
Time enters the backbone as k / num_steps ∈ [0, 1). The linear schedule is the default: the
cosine one drives ᾱ to ~1e-9 at the last step, which needs `clip_x0` to sample stably with noise
prediction. DDIM with η = 0 samples deterministically in far fewer steps than the schedule has.
Conditions (class, scalar, task) and guidance work as in `wsl.models.flow`.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from wsl.models.backbones import condition_args, init_backbone
from wsl.models.errors import ModelError
from wsl.models.flow import drop_conditions, guided

SAMPLERS = ("ddpm", "ddim")
PREDICTIONS = ("data", "noise")


def beta_schedule(kind: str, num_steps: int) -> np.ndarray:
    if kind == "linear":
        # Ho et al.'s range for 1000 steps, rescaled so that short schedules end in noise.
        scale = 1000 / num_steps
        return np.linspace(scale * 1e-4, min(scale * 0.02, 0.999), num_steps)
    if kind == "cosine":  # Nichol & Dhariwal: ᾱ(t) = cos²((t/T + s)/(1 + s) · π/2)
        s = 0.008
        steps = np.arange(num_steps + 1) / num_steps
        alpha_bar = np.cos((steps + s) / (1 + s) * np.pi / 2) ** 2
        return np.clip(1 - alpha_bar[1:] / alpha_bar[:-1], 1e-8, 0.999)
    raise ModelError(f"unknown beta schedule {kind!r}; choose 'linear' or 'cosine'")


@dataclasses.dataclass(frozen=True)
class Diffusion:
    """A DDPM around a backbone `f(x, t, cond_class, cond_scalar[, cond_task]) -> predicted x0
    or noise` (the task only when given)."""

    backbone: nn.Module
    dim: int
    num_steps: int = 1000
    schedule: str = "linear"
    cond_dropout: float = 0.1
    clip_x0: float | None = None  # bound the predicted clean sample (in normalised units)
    prediction: Literal["data", "noise"] = "data"
    snr_cap: float = 5.0  # data prediction: loss weight min(SNR, snr_cap)

    def __post_init__(self):
        if self.prediction not in PREDICTIONS:
            raise ModelError(f"unknown diffusion prediction {self.prediction!r}; choose from "
                             f"{PREDICTIONS}")
        for name, ok, expected in (
                ("dim", self.dim >= 1, "≥ 1"), ("num_steps", self.num_steps >= 1, "≥ 1"),
                ("cond_dropout", 0 <= self.cond_dropout < 1, "in [0, 1)"),
                ("clip_x0", self.clip_x0 is None or self.clip_x0 > 0, "positive or none"),
                ("snr_cap", self.snr_cap > 0, "positive")):
            if not ok:
                raise ModelError(f"diffusion {name}={getattr(self, name)!r}: must be {expected}")
        beta_schedule(self.schedule, self.num_steps)  # names a bad schedule now, not at sampling

    @property
    def alpha_bar(self) -> jnp.ndarray:
        betas = beta_schedule(self.schedule, self.num_steps)
        return jnp.asarray(np.cumprod(1 - betas), jnp.float32)

    def init(self, key):
        return init_backbone(self.backbone, key, self.dim)

    def _output(self, params, x, k, cond_class, cond_scalar, cond_task=None):
        return self.backbone.apply({"params": params}, x, k / self.num_steps,
                                   *condition_args(cond_class, cond_scalar, cond_task))

    def predict_data(self, params, x, k, cond_class=None, cond_scalar=None, cond_task=None):
        """x̂0 at steps `k` (float array, one per example), whatever the backbone predicts."""
        out = self._output(params, x, k, cond_class, cond_scalar, cond_task)
        if self.prediction == "data":
            return out
        ab = self.alpha_bar[k.astype(jnp.int32)][:, None]
        return (x - jnp.sqrt(1 - ab) * out) / jnp.sqrt(ab)

    def loss(self, params, x0, key, cond_class=None, cond_scalar=None, cond_task=None):
        k_noise, k_step, k_drop = jax.random.split(key, 3)
        k = jax.random.randint(k_step, (x0.shape[0],), 0, self.num_steps)
        noise = jax.random.normal(k_noise, x0.shape, x0.dtype)
        ab = self.alpha_bar[k][:, None]
        xk = jnp.sqrt(ab) * x0 + jnp.sqrt(1 - ab) * noise
        conditions = drop_conditions(k_drop, cond_class, cond_scalar, self.cond_dropout,
                                     cond_task)
        out = self._output(params, xk, k.astype(jnp.float32), *conditions)
        if self.prediction == "noise":
            return jnp.mean((out - noise) ** 2)
        weight = jnp.minimum(ab / (1 - ab), self.snr_cap)
        return jnp.mean(weight * (out - x0) ** 2)

    def sample(self, params, key, num: int, *, steps: int | None = None, method: str = "ddim",
               eta: float = 0.0, cond_class=None, cond_scalar=None, guidance: float = 1.0,
               temperature: float = 1.0, cond_task=None):
        """DDPM (every step of the schedule) or DDIM on `steps` evenly spaced steps.

        `temperature` scales the starting noise and the noise DDPM injects (below 1: samples
        nearer the modes, less diverse). `cond_task` is (num, k, F) support features (a NaN task:
        no task) or None."""
        if method not in SAMPLERS:
            raise ModelError(f"unknown sampler {method!r}; choose from {SAMPLERS}")
        if method == "ddpm":
            steps, eta = self.num_steps, 1.0
        steps = steps or 50
        alpha_bar = self.alpha_bar
        ks = jnp.asarray(np.linspace(self.num_steps - 1, 0, steps).round().astype(np.int32))
        prev = jnp.concatenate([ks[1:], jnp.asarray([-1], jnp.int32)])
        # Guidance mixes x̂0 or ε̂ alike: at a fixed x_k one is an affine function of the other.
        x0_fn = lambda x, k: guided(self.predict_data, params, x,
                                    jnp.full((x.shape[0],), k, jnp.float32),
                                    cond_class, cond_scalar, guidance, cond_task)
        k_init, k_loop = jax.random.split(key)

        def step(x, inputs):
            k, k_prev, sub = inputs
            ab = alpha_bar[k]
            ab_prev = jnp.where(k_prev >= 0, alpha_bar[jnp.maximum(k_prev, 0)], 1.0)
            x0 = x0_fn(x, k)
            if self.clip_x0 is not None:
                # Near the end of a cosine schedule ᾱ ≈ 0 and 1/√ᾱ amplifies any error in ε.
                x0 = jnp.clip(x0, -self.clip_x0, self.clip_x0)
            eps = (x - jnp.sqrt(ab) * x0) / jnp.sqrt(1 - ab)
            sigma = eta * jnp.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))
            direction = jnp.sqrt(jnp.maximum(1 - ab_prev - sigma ** 2, 0.0)) * eps
            noise = jax.random.normal(sub, x.shape, x.dtype)
            return jnp.sqrt(ab_prev) * x0 + direction + temperature * sigma * noise, None

        x = temperature * jax.random.normal(k_init, (num, self.dim))
        x, _ = jax.lax.scan(step, x, (ks, prev, jax.random.split(k_loop, steps)))
        return x
