"""Backbones for weight generators: networks of (noisy weights, time, condition) → a vector field.

Both backbones read and write a flat weight vector (WeightSpace flatten order, normalised per
tensor). `MLPBackbone` sees the whole vector at once; `TokenTransformer` cuts every tensor into
fixed-size tokens so that attention, not one huge dense layer, mixes the weights of larger networks.
Conditioning: an optional class id (task or dataset), an optional scalar (e.g. target accuracy) and
an optional task given by data (per-class support features, `wsl.models.task_encoder`), each with
a learned "null" used for classifier-free guidance.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from wsl.models.errors import ModelError
from wsl.models.task_encoder import TaskEncoder
from wsl.weight_space import WeightSpace


def time_embedding(t: jax.Array, dim: int) -> jax.Array:
    """Sinusoidal features of t ∈ [0, 1] (or a diffusion step scaled to it):
    (batch,) → (batch, dim)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(10_000.0) * jnp.arange(half) / max(half - 1, 1))
    angles = 1000.0 * t[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def smooth_scalar_features(s: jax.Array, dim: int) -> jax.Array:
    """Low-frequency Fourier features of a standardised scalar condition: (batch,) → (batch, dim).

    Angular frequencies run geometrically from 1/16 to 2 per standard deviation, so nearby
    values get nearby features. The time embedding's frequencies (up to 1,000 per unit) on an
    accuracy condition gave every training model's value its own, unrelated code: the network
    keyed on them, its samples' accuracy jumped by several points between neighbouring condition
    values, high requests drew copies of single training models, and no monotone map could
    calibrate it (`wsl.eval.calibration`).
    """
    freqs = jnp.geomspace(1 / 16, 2.0, dim // 2)
    angles = s[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


# GeneratorConfig.scalar_embedding -> features of the standardised scalar.
SCALAR_EMBEDDINGS = {"smooth": smooth_scalar_features, "sinusoidal": time_embedding}


class Conditioning(nn.Module):
    """Embeds time plus optional class, scalar and task conditions into one vector per example.

    `cond_class` is an int array with -1 meaning "no class"; `cond_scalar` is a float array with
    NaN meaning "no scalar" (embedded by `scalar_embedding`: "smooth", or "sinusoidal" — the time
    embedding, which generators trained before the choice existed used); `cond_task` is a float
    array (batch, *task_shape) of per-class support features with NaN (tested at entry
    [:, 0, 0]) meaning "no task". Every "no" value maps to a learned null embedding (used for
    guidance). An empty `task_shape` adds no task parameters at all, so generators trained before
    the task condition existed load unchanged.
    """

    dim: int
    num_classes: int = 0
    use_scalar: bool = False
    task_shape: tuple[int, ...] = ()
    task_embed: int = 64
    scalar_embedding: str = "smooth"

    @nn.compact
    def __call__(self, t, cond_class=None, cond_scalar=None, cond_task=None):
        h = nn.Dense(self.dim)(nn.silu(nn.Dense(self.dim)(time_embedding(t, self.dim))))
        if self.num_classes:
            table = nn.Embed(self.num_classes + 1, self.dim, name="class_embed")
            ids = jnp.zeros(t.shape, jnp.int32) - 1 if cond_class is None else cond_class
            h = h + table(jnp.where(ids < 0, self.num_classes, ids))
        if self.use_scalar:
            s = jnp.full(t.shape, jnp.nan) if cond_scalar is None else cond_scalar
            null = self.param("scalar_null", nn.initializers.normal(0.02), (self.dim,))
            if self.scalar_embedding not in SCALAR_EMBEDDINGS:
                raise ModelError(f"scalar_embedding={self.scalar_embedding!r}: choose from "
                                 f"{list(SCALAR_EMBEDDINGS)}")
            embed = SCALAR_EMBEDDINGS[self.scalar_embedding]
            emb = nn.Dense(self.dim, name="scalar_embed")(embed(jnp.nan_to_num(s), self.dim))
            h = h + jnp.where(jnp.isnan(s)[:, None], null[None, :], emb)
        if not self.task_shape:
            if cond_task is not None:
                raise ModelError("this generator has no task condition; cond_task must be None")
            return h
        shape = tuple(self.task_shape)
        if len(shape) != 2:
            raise ModelError(f"task_shape must be (classes, features), got {shape}")
        if cond_task is None:
            cond_task = jnp.full((*t.shape, *shape), jnp.nan)
        if tuple(cond_task.shape[1:]) != shape:
            raise ModelError(f"cond_task has shape {tuple(cond_task.shape)}; expected "
                             f"(batch, {', '.join(map(str, shape))}) (classes, features)")
        null = self.param("task_null", nn.initializers.normal(0.02), (self.dim,))
        emb = TaskEncoder(self.dim, self.task_embed, name="task_encoder")(
            jnp.nan_to_num(cond_task))
        h = h + jnp.where(jnp.isnan(cond_task[:, 0, 0])[:, None], null[None, :], emb)
        return h


class MLPBackbone(nn.Module):
    """Residual MLP over the full weight vector, conditioned by adding the embedding per block."""

    out_dim: int
    hidden: int = 512
    depth: int = 3
    num_classes: int = 0
    use_scalar: bool = False
    task_shape: tuple[int, ...] = ()  # (classes, features) of a task condition; () for none
    task_embed: int = 64
    scalar_embedding: str = "smooth"  # see Conditioning
    # Width of the layer the output projection reads; 0: `hidden`. Every output is a linear map
    # of that layer, so outputs lie in an affine subspace of this dimension: to reproduce the
    # training weights it must reach their rank (about the number of models, when that is below
    # the number of weights), not only the width the blocks need.
    head_width: int = 0

    @nn.compact
    def __call__(self, x, t, cond_class=None, cond_scalar=None, cond_task=None):
        c = Conditioning(self.hidden, self.num_classes, self.use_scalar, self.task_shape,
                         self.task_embed, self.scalar_embedding)(t, cond_class, cond_scalar,
                                                                 cond_task)
        h = nn.Dense(self.hidden)(x)
        for i in range(self.depth):
            y = nn.LayerNorm()(h) + nn.Dense(self.hidden, name=f"cond_{i}")(nn.silu(c))
            h = h + nn.Dense(self.hidden)(nn.silu(nn.Dense(2 * self.hidden)(y)))
        h = nn.silu(nn.LayerNorm()(h))
        if self.head_width:
            h = nn.silu(nn.Dense(self.head_width, name="head")(h))
        # Zero-initialised output: the untrained field is 0, a stable start for flows and DDPM.
        return nn.Dense(self.out_dim, kernel_init=nn.initializers.zeros)(h)


def token_layout(space: WeightSpace, token_dim: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Cut every tensor of the flat vector into tokens of `token_dim` entries (the last padded).

    Returns (gather index into the flat vector padded with one trailing zero slot, per-token tensor
    id, number of tokens). Tokens never straddle two tensors, so each token has one meaning.
    """
    index, tensor_ids = [], []
    pad = space.num_params  # index of the zero slot appended to the vector
    for tid, (start, end) in enumerate(space.offsets.values()):
        for lo in range(start, end, token_dim):
            chunk = list(range(lo, min(lo + token_dim, end)))
            index.append(chunk + [pad] * (token_dim - len(chunk)))
            tensor_ids.append(tid)
    return np.asarray(index, np.int32), np.asarray(tensor_ids, np.int32), len(index)


class TokenTransformer(nn.Module):
    """Transformer over per-tensor weight tokens; adaptive layer-norm conditioning on (t, c)."""

    space: WeightSpace
    token_dim: int = 64
    dim: int = 128
    depth: int = 4
    heads: int = 4
    num_classes: int = 0
    use_scalar: bool = False
    task_shape: tuple[int, ...] = ()  # (classes, features) of a task condition; () for none
    task_embed: int = 64
    scalar_embedding: str = "smooth"  # see Conditioning

    @nn.compact
    def __call__(self, x, t, cond_class=None, cond_scalar=None, cond_task=None):
        index, tensor_ids, n = token_layout(self.space, self.token_dim)
        batch = x.shape[0]
        padded = jnp.concatenate([x, jnp.zeros((batch, 1), x.dtype)], axis=-1)
        tokens = padded[:, index]                                    # (batch, n, token_dim)
        c = Conditioning(self.dim, self.num_classes, self.use_scalar, self.task_shape,
                         self.task_embed, self.scalar_embedding)(t, cond_class, cond_scalar,
                                                                 cond_task)
        h = nn.Dense(self.dim)(tokens)
        h = h + self.param("pos", nn.initializers.normal(0.02), (n, self.dim))
        h = h + nn.Embed(len(self.space.tensors), self.dim, name="tensor_embed")(tensor_ids)
        for i in range(self.depth):
            shift, scale, gate = jnp.split(nn.Dense(3 * self.dim, kernel_init=nn.initializers.zeros,
                                                    name=f"ada_{i}")(nn.silu(c)), 3, axis=-1)
            y = (nn.LayerNorm(use_scale=False, use_bias=False)(h) * (1 + scale[:, None])
                 + shift[:, None])
            attention = nn.MultiHeadDotProductAttention(self.heads, name=f"attn_{i}")
            h = h + gate[:, None] * attention(y, y)
            y = nn.LayerNorm()(h)
            h = h + nn.Dense(self.dim)(nn.gelu(nn.Dense(4 * self.dim)(y)))
        out = nn.Dense(self.token_dim, kernel_init=nn.initializers.zeros)(nn.LayerNorm()(h))
        # Scatter tokens back; padded slots land on the dropped trailing entry.
        flat = jnp.zeros((batch, self.space.num_params + 1), out.dtype)
        flat = flat.at[:, index.reshape(-1)].set(out.reshape(batch, -1))
        return flat[:, :-1]


def init_backbone(backbone: nn.Module, key: jax.Array, dim: int) -> dict:
    """A backbone's parameters, traced with one example of every input it can take (a class, a
    scalar and, if it has a task shape, a task condition too, so that their embeddings exist
    even if the first batch has none)."""
    inputs = [jnp.zeros((1, dim)), jnp.zeros((1,)), jnp.zeros((1,), jnp.int32), jnp.zeros((1,))]
    task_shape = tuple(getattr(backbone, "task_shape", ()))
    if task_shape:
        inputs.append(jnp.zeros((1, *task_shape)))
    return backbone.init(key, *inputs)["params"]


def condition_args(cond_class=None, cond_scalar=None, cond_task=None) -> tuple:
    """The condition arguments a backbone is applied with after (x, t). The task is passed only
    when given, so that backbones written before the task condition (four inputs) still run."""
    if cond_task is None:
        return cond_class, cond_scalar
    return cond_class, cond_scalar, cond_task
