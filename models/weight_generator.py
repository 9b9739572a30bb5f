"""Weight generators as trainable tasks: flow matching, DDPM and latent DDPM over weight vectors.

`GeneratorConfig` names the method and backbone; `make_generator` builds the model on a vector
of a given size; `GeneratorTask` and `AutoencoderTask` plug into `train.train` (they follow its
task protocol: ``init(key, batch)``, ``loss(params, batch, key)``). A batch holds ``x`` (normalised,
aligned weight vectors, or latents) and optionally ``cond_class`` / ``cond_scalar``.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax.numpy as jnp

from wsl.models.autoencoder import Autoencoding, WeightAutoencoder
from wsl.models.backbones import MLPBackbone, TokenTransformer
from wsl.models.diffusion import Diffusion
from wsl.models.errors import ModelError
from wsl.models.flow import FlowMatching
from wsl.weight_space import WeightSpace

METHODS = ("flow", "ddpm", "latent-ddpm")


@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
    """What generator to train over a zoo's weights, and how to sample it."""

    method: Literal["flow", "ddpm", "latent-ddpm"] = "flow"
    backbone: Literal["mlp", "transformer"] = "mlp"
    hidden: int = 512  # MLP width / transformer model dimension
    depth: int = 3
    token_dim: int = 64  # transformer: weights per token (tokens never straddle tensors)
    heads: int = 4
    prediction: Literal["data", "velocity", "noise"] = "data"  # backbone output; see models.flow
    source_scale: float = 1.0  # flow: std of the Gaussian source, in normalised weight units
    diffusion_steps: int = 1000
    schedule: Literal["linear", "cosine"] = "linear"
    clip_x0: float | None = None
    latent_dim: int = 64  # latent-ddpm: autoencoder bottleneck
    ae_hidden: tuple[int, ...] = (512, 256)
    ae_steps: int = 3000
    cond_dropout: float = 0.1  # conditions dropped in training, for classifier-free guidance
    condition_class: str | None = None  # a zoo column to condition on (e.g. "activation")
    condition_scalar: str | None = None  # a numeric zoo column (e.g. "test_acc")
    sampler: Literal["euler", "heun", "rk4", "ddpm", "ddim"] | None = None  # None: rk4 / ddim
    sample_steps: int | None = None  # None: 10 for the flow's RK4 (40 evaluations), 50 for DDIM
    guidance: float = 1.0

    @property
    def default_sampler(self) -> str:
        return self.sampler or ("rk4" if self.method == "flow" else "ddim")

    @property
    def default_steps(self) -> int:
        # RK4 at 10 steps sampled networks as accurate as at 50 (benchmarks/generate.py zoos),
        # at a fifth of the time; flows from straight paths need few steps.
        return self.sample_steps or (10 if self.method == "flow" else 50)


def make_generator(config: GeneratorConfig, dim: int, space: WeightSpace | None = None,
                   num_classes: int = 0):
    """The flow or diffusion model over vectors of size `dim` (weights, or latents)."""
    use_scalar = config.condition_scalar is not None
    if config.backbone == "transformer":
        if space is None or space.num_params != dim:
            raise ModelError("the transformer backbone tokenises weights and needs their weight "
                             "space (latent-ddpm uses the mlp backbone on latents)")
        backbone = TokenTransformer(space, config.token_dim, config.hidden, config.depth,
                                    config.heads, num_classes, use_scalar)
    else:
        backbone = MLPBackbone(dim, config.hidden, config.depth, num_classes, use_scalar)
    if config.method not in METHODS:
        raise ModelError(f"unknown generator method {config.method!r}; choose from {METHODS}")
    allowed = ("data", "velocity") if config.method == "flow" else ("data", "noise")
    if config.prediction not in allowed:
        raise ModelError(f"prediction={config.prediction!r} does not fit method "
                         f"{config.method!r}; choose from {allowed}")
    if config.method == "flow":
        return FlowMatching(backbone, dim, config.source_scale, config.cond_dropout,
                            config.prediction)
    return Diffusion(backbone, dim, config.diffusion_steps, config.schedule, config.cond_dropout,
                     config.clip_x0, config.prediction)


def make_autoencoder(config: GeneratorConfig, dim: int) -> Autoencoding:
    return Autoencoding(WeightAutoencoder(dim, config.latent_dim, tuple(config.ae_hidden)))


@dataclasses.dataclass(frozen=True)
class GeneratorTask:
    """Trainer task: minimise the generator's loss on batches of vectors ``x``."""

    generator: FlowMatching | Diffusion

    def init(self, key, batch):
        return self.generator.init(key)

    def loss(self, params, batch, key):
        loss = self.generator.loss(params, batch["x"], key, batch.get("cond_class"),
                                   batch.get("cond_scalar"))
        return loss, {}


@dataclasses.dataclass(frozen=True)
class AutoencoderTask:
    """Trainer task: reconstruct weight vectors ``x`` through the autoencoder's bottleneck."""

    autoencoder: Autoencoding

    def init(self, key, batch):
        return self.autoencoder.init(key)

    def loss(self, params, batch, key):
        loss = self.autoencoder.loss(params, batch["x"], key)
        return loss, {"rmse": jnp.sqrt(loss)}
