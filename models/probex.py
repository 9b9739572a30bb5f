"""ProbeX (Horwitz et al. 2025): learned probes passed through one chosen layer's weight matrix.

The layer's kernel becomes a matrix X of shape (d_H, d_W) — rows are the layer's output units and
columns its inputs, conv taps folded into the inputs (PyTorch's ``weight.view(out, -1)``), or the
transpose with ``transpose=True``. With r learned probes U (d_W × r): responses X·U, a shared
projection of every response (d_H → d_V), ReLU, flatten (r · d_V), a linear encoder to the
representation and an MLP head (linear by default, as in the paper). ProbeX reads one layer and
is not permutation invariant; it is meant for large models where a single layer is informative.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from wsl.models.encoders import MLP, check_encoder_config, prepare
from wsl.models.neural_graph import tensor_at
from wsl.models.normalize import TensorNormalizer
from wsl.weight_space import WeightSpace, WeightSpaceError


def layer_matrix(weight_space: WeightSpace, layer: str, params,
                 transpose: bool = False) -> jax.Array:
    """The (B, d_H, d_W) matrix ProbeX reads: `layer` is a kernel path or its layer name."""
    path = resolve_layer(weight_space, layer)
    kernel = tensor_at(params, path)
    spec = weight_space.tensor(path)
    lead = kernel.shape[: kernel.ndim - len(spec.shape)]
    # Flax kernels are (*taps, in, out); rows become the output units, columns everything else.
    matrix = jnp.moveaxis(kernel, -1, len(lead)).reshape(lead + (spec.shape[-1], -1))
    return jnp.swapaxes(matrix, -1, -2) if transpose else matrix


def resolve_layer(weight_space: WeightSpace, layer: str) -> str:
    """Accept ``"dense_1"`` or ``"dense_1/kernel"``; the tensor must have at least 2 axes."""
    path = layer if layer in weight_space.paths else f"{layer}/kernel"
    if path not in weight_space.paths:
        kernels = [t.path for t in weight_space.tensors if len(t.shape) >= 2]
        raise WeightSpaceError(f"ProbeX layer {layer!r} is not in the weight space; "
                               f"choose one of {kernels}")
    if len(weight_space.tensor(path).shape) < 2:
        raise WeightSpaceError(f"ProbeX layer {path!r} has shape "
                               f"{weight_space.tensor(path).shape}; it needs a matrix (at least 2 "
                               f"axes)")
    return path


class ProbeX(nn.Module):
    """ProbeX encoder on one layer; ``layer`` defaults to the last kernel of the weight space."""

    weight_space: WeightSpace
    layer: str | None = None
    num_probes: int = 128
    projection_dim: int = 128
    representation_dim: int = 512
    transpose: bool = False
    out_dim: int = 1
    head_widths: Sequence[int] = ()
    dropout: float = 0.0
    normalizer: TensorNormalizer | None = None

    def layer_path(self) -> str:
        if self.layer is not None:
            return resolve_layer(self.weight_space, self.layer)
        kernels = [t.path for t in self.weight_space.tensors if len(t.shape) >= 2]
        if not kernels:
            raise WeightSpaceError("ProbeX needs a weight space with at least one matrix")
        return kernels[-1]

    def check(self):
        check_encoder_config(self)
        self.layer_path()

    @nn.compact
    def __call__(self, params, train: bool = False) -> jax.Array:
        self.check()
        params = prepare(self.weight_space, params, self.normalizer)
        # (B, dH, dW)
        x = layer_matrix(self.weight_space, self.layer_path(), params, self.transpose)
        probes = self.param("probes", nn.initializers.lecun_normal(),
                            (x.shape[-1], self.num_probes))
        responses = jnp.einsum("bhw,wr->brh", x, probes)
        shared = nn.Dense(self.projection_dim, use_bias=False, name="shared_projection")
        projected = nn.relu(shared(responses))  # (B, r, d_V)
        z = nn.Dense(self.representation_dim, name="encoder")(projected.reshape(x.shape[0], -1))
        return MLP(self.head_widths, self.out_dim, dropout=self.dropout)(z, train)
