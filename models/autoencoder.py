"""An autoencoder over flat weight vectors, whose latents a diffusion model learns (latent DDPM).

Encoder and decoder are MLPs; training adds small Gaussian noise to the input and to the latent
(as p-diff does) so that decoded samples from a slightly-off latent still give working weights.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp


class _MLP(nn.Module):
    widths: tuple[int, ...]
    out_dim: int

    @nn.compact
    def __call__(self, x):
        for width in self.widths:
            x = nn.silu(nn.LayerNorm()(nn.Dense(width)(x)))
        return nn.Dense(self.out_dim)(x)


class WeightAutoencoder(nn.Module):
    dim: int
    latent_dim: int = 64
    hidden: tuple[int, ...] = (512, 256)

    def setup(self):
        self.encoder = _MLP(self.hidden, self.latent_dim)
        self.decoder = _MLP(tuple(reversed(self.hidden)), self.dim)

    def encode(self, x):
        return self.encoder(x)

    def decode(self, z):
        return self.decoder(z)

    def __call__(self, x):
        return self.decode(self.encode(x))


@dataclasses.dataclass(frozen=True)
class Autoencoding:
    """Training objective and helpers for `WeightAutoencoder`."""

    module: WeightAutoencoder
    input_noise: float = 0.001
    latent_noise: float = 0.1

    def init(self, key):
        return self.module.init(key, jnp.zeros((1, self.module.dim)))["params"]

    def loss(self, params, x, key):
        k1, k2 = jax.random.split(key)
        noisy = x + self.input_noise * jax.random.normal(k1, x.shape)
        z = self.module.apply({"params": params}, noisy, method=WeightAutoencoder.encode)
        z = z + self.latent_noise * jax.random.normal(k2, z.shape)
        recon = self.module.apply({"params": params}, z, method=WeightAutoencoder.decode)
        return jnp.mean((recon - x) ** 2)

    def encode(self, params, x):
        return self.module.apply({"params": params}, x, method=WeightAutoencoder.encode)

    def decode(self, params, z):
        return self.module.apply({"params": params}, z, method=WeightAutoencoder.decode)
