"""Permutation-equivariant neural functionals, NFN-NP and NFN-HNP (Zhou et al. 2023), in Flax.

Each tensor of a chain (see `wsl.models.neural_graph`) is seen as an *entity*: an array over its
permutable neuron axes whose remaining axes — conv taps, flatten positions and, for HNP, the
non-permuted input / output neuron axes — are folded into the channel axis. NP treats every
neuron set as permutable, the network's inputs and outputs included; HNP only the hidden ones.

An equivariant linear layer is then one rule per subset K of neuron sets: mean-pool every entity
that contains all of K over its other sets, mix the concatenated channels with one learned
matrix, and broadcast each entity's share of the result back over its sets not in K. Enumerated
over a chain this is exactly the NP / HNP parameter sharing of the paper — pointwise, row, column
and global means of each weight, of its neighbours and of the biases — and with the fixed input /
output sets folded into channels it reproduces HNP's full mixing of the first and last layers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from wsl.models.encoders import MLP
from wsl.models.errors import ModelError
from wsl.models.neural_graph import LayerChain, layer_chain
from wsl.models.normalize import TensorNormalizer
from wsl.models.unf import UNFLayer, check_encode_config, encode
from wsl.weight_space import WeightSpace

MODES = ("np", "hnp")


@dataclasses.dataclass(frozen=True)
class Entity:
    """One tensor as an NFN layer sees it.

    Attributes:
        path: the tensor's path in the params dict.
        shape: its shape (one model).
        neuron_axes: the tensor axes that index neurons, with `neuron_sets` their set ids (0 … L).
        perm_sets: the permutable sets among those, ascending: the entity's array axes.
        perm_sizes: their sizes.
        fold: entries folded into one feature channel (taps × fixed neuron axes).
    """

    path: str
    shape: tuple[int, ...]
    neuron_axes: tuple[int, ...]
    neuron_sets: tuple[int, ...]
    perm_sets: tuple[int, ...]
    perm_sizes: tuple[int, ...]
    fold: int

    # What a `wsl.models.unf.UNFLayer` reads: the feature map's axes and their sizes.
    @property
    def groups(self) -> tuple[int, ...]:
        return self.perm_sets

    @property
    def sizes(self) -> tuple[int, ...]:
        return self.perm_sizes

    def _layout(self) -> tuple[list[int], tuple[int, ...]]:
        """Transpose order (without the batch and channel axes) and the transposed shape."""
        perm = [a for a, s in zip(self.neuron_axes, self.neuron_sets) if s in self.perm_sets]
        fixed = [a for a, s in zip(self.neuron_axes, self.neuron_sets) if s not in self.perm_sets]
        taps = [a for a in range(len(self.shape)) if a not in self.neuron_axes]
        order = perm + fixed + taps
        return order, tuple(self.shape[a] for a in order)

    def fold_in(self, x: jax.Array) -> jax.Array:
        """(B, *shape, C) → (B, *perm_sizes, fold · C)."""
        order, _ = self._layout()
        x = jnp.transpose(x, [0] + [1 + a for a in order] + [x.ndim - 1])
        return x.reshape(x.shape[:1] + self.perm_sizes + (-1,))

    def fold_out(self, x: jax.Array) -> jax.Array:
        """Inverse of `fold_in`: (B, *perm_sizes, fold · C) → (B, *shape, C)."""
        order, shape = self._layout()
        x = x.reshape(x.shape[:1] + shape + (-1,))
        inverse = np.argsort(order)
        return jnp.transpose(x, [0] + [1 + int(a) for a in inverse] + [x.ndim - 1])


def nfn_structure(chain: LayerChain, mode: str) -> tuple[Entity, ...]:
    """The entities of a chain for NP (every neuron set permutable) or HNP (hidden sets only)."""
    if mode not in MODES:
        raise ModelError(f"NFN mode must be one of {MODES}; got {mode!r}")
    num_sets = chain.num_layers + 1
    fixed = set() if mode == "np" else {0, num_sets - 1}
    sizes = chain.sizes
    entities = []

    def entity(path, shape, neuron_axes, neuron_sets):
        perm = tuple(s for s in neuron_sets if s not in fixed)
        fold = int(np.prod([n for a, n in enumerate(shape) if a not in neuron_axes]
                           + [sizes[s] for s in neuron_sets if s in fixed], dtype=np.int64))
        return Entity(path, tuple(shape), tuple(neuron_axes), tuple(neuron_sets), perm,
                      tuple(sizes[s] for s in perm), fold)

    for layer in chain.layers:
        k = len(layer.taps)
        entities.append(entity(layer.kernel, layer.taps + (layer.in_size, layer.out_size),
                               (k, k + 1), (layer.index, layer.index + 1)))
        if layer.bias is not None:
            entities.append(entity(layer.bias, (layer.out_size,), (0,), (layer.index + 1,)))
    return tuple(entities)


class NFNLayer(UNFLayer):
    """One permutation-equivariant linear layer over all entities (see the module docstring):
    UNF's layer (`wsl.models.unf.UNFLayer`) on a chain's entities, whose neuron sets play the
    part of groups — one matmul per subset of neuron sets (2L + 2 for an NP chain of L layers).
    Its own name keeps the parameter names (``NFNLayer_0``, ...) of NFN checkpoints.

    Input and output are lists with one array per entity, ``(B, *perm_sizes, fold · channels)``.
    """

    structure: tuple[Entity, ...]


class NFN(nn.Module):
    """NFN-NP / NFN-HNP encoder: equivariant layers, then invariant pooling + MLP, or weights out.

    ``output="invariant"`` returns (B, out_dim); ``output="equivariant"`` returns a params dict of
    the weight space's shapes (a trailing axis of size out_dim is added when out_dim > 1) that
    permutes with its input. Recipe defaults: channels (16, 16, 5), head (1000, 1000).
    """

    weight_space: WeightSpace
    mode: str = "hnp"
    channels: Sequence[int] = (16, 16, 5)
    output: str = "invariant"
    out_dim: int = 1
    head_widths: Sequence[int] = (1000, 1000)
    dropout: float = 0.0
    normalizer: TensorNormalizer | None = None
    pool: str = "mean"  # invariant readout: "mean" or "moments" (mean and std; `unf.pool`)
    statistics: bool = False  # StatNN's statistics beside the pooled features (`unf.UNF`)
    feature_mean: Sequence[float] | None = None
    feature_std: Sequence[float] | None = None

    def structure(self) -> tuple[Entity, ...]:
        return nfn_structure(layer_chain(self.weight_space), self.mode)

    def check(self):
        if self.mode not in MODES:
            raise ModelError(f"mode={self.mode!r}: expected one of {MODES}")
        check_encode_config(self, "NFN")
        self.structure()

    @nn.compact
    def __call__(self, params, train: bool = False):
        self.check()
        head = lambda x: MLP(self.head_widths, self.out_dim, dropout=self.dropout)(x, train)
        return encode(self, NFNLayer, nn.relu, head, params)
