"""Universal neural functional (UNF) encoder: permutation-equivariant layers for any weight space.

After Zhou et al. 2023, "Universal Neural Functionals". Unlike NFN (`wsl.models.nfn`), which reads
chains of layers, UNF reads nothing but the `WeightSpace`: which group permutes which axis of which
tensor. It therefore serves residual streams (one group in many tensors), attention (heads × head
dim, plus the stream) and chains alike.

Feature maps
    Every tensor t is a feature map over its permuted axes, with groups G(t) taken in the weight
    space's group order (so two tensors that share groups lay them out alike). Its non-permuted
    axes — kernel taps, input pixels, classes — are never permuted, so they are folded into the
    channel axis, where mixing them is allowed: ``(B, *sizes of G(t), fold(t) · C)``. A tensor
    with the same group on two axes (e.g. a recurrent hidden-to-hidden matrix) is refused with a
    `ModelError` naming it; no wsl architecture has one.

Equivariant linear layer
    out_o = bias_o + Σ_i Σ_{S ⊆ G(i) ∩ G(o)} Dense_{i,o,S}(mean of T_i over G(i) \\ S),
    broadcast over G(o) \\ S (axes of S aligned by group name). Permuting any group permutes the
    kept axes of the pooled summary and of the output alike and leaves the pooled-out and
    broadcast axes invariant, so every term commutes with every permutation. S runs over all
    subsets, ∅ (full pooling) and G(i) ∩ G(o) included: with each group on at most one axis per
    tensor the equivariant maps between two tensors factor into one two-dimensional space
    (identity, mean-and-broadcast) per shared group and one map per unshared group, so these
    2^|G(i) ∩ G(o)| terms with full channel mixing span *all* equivariant linear maps for the
    declared product of symmetric groups (groups of size ≥ 2), and the bias (constant per output
    channel) spans the invariant offsets. On a chain this is NFN-HNP's layer (on an MLP the two
    agree to float rounding given the same variables). Terms are grouped by S: every tensor with
    S ⊆ G(t) is both a source and a target of S, so a layer is one matmul per distinct S (rows:
    all sources' channels, columns: all targets' channels). Each pooled summary is computed once
    per (tensor, S), from the smallest already-pooled parent, and shared by all targets.

Invariant head
    Mean over each tensor's group axes, concatenate over tensors, MLP to out_dim. With
    ``output="equivariant"`` a last layer maps to out_dim channels per entry instead and the
    result is a params dict that permutes with its input.

GroupNorm blocks (`WeightSpace.blocks`)
    Such a group's symmetries are only block-respecting permutations (`random_permutation` moves
    whole blocks and shuffles inside each); they form a subgroup of the full symmetric group, so a
    layer equivariant to every permutation is equivariant to them too. Invariance is therefore
    exact, at the cost of expressivity: UNF cannot tell units of different blocks apart (no
    block-wise pooling terms).

Not covered versus full UNF: repeated groups in one tensor (the diagonal / transpose terms UNF
adds for them), block-structured (wreath-product) and per-head symmetries beyond what the weight
space declares, and UNF's recurrent / sequence specialisations.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from wsl.models.encoders import MLP, POOLS, check_encoder_config, prepare
from wsl.models.errors import ModelError
from wsl.models.neural_graph import tensor_at
from wsl.models.normalize import TensorNormalizer
from wsl.models.statnn import check_statistics, scaled_stat_features
from wsl.weight_space import WeightSpace
from wsl.zoos.architectures import ACTIVATIONS

OUTPUTS = ("invariant", "equivariant")


@dataclasses.dataclass(frozen=True)
class UNFTensor:
    """One tensor as a UNF layer sees it.

    Attributes:
        path: the tensor's path in the params dict.
        shape: its shape (one model).
        groups: its permutation groups, in the weight space's group order: the feature map's
            spatial axes.
        axes: the tensor axis each of `groups` permutes.
        sizes: the groups' sizes.
        fold: entries of the non-permuted axes, folded into each feature channel.
    """

    path: str
    shape: tuple[int, ...]
    groups: tuple[str, ...]
    axes: tuple[int, ...]
    sizes: tuple[int, ...]
    fold: int

    def _order(self) -> list[int]:
        return list(self.axes) + [a for a in range(len(self.shape)) if a not in self.axes]

    def fold_in(self, x: jax.Array) -> jax.Array:
        """(B, *shape, C) → (B, *sizes, fold · C)."""
        order = self._order()
        x = jnp.transpose(x, [0] + [1 + a for a in order] + [x.ndim - 1])
        return x.reshape(x.shape[:1] + self.sizes + (-1,))

    def fold_out(self, x: jax.Array) -> jax.Array:
        """Inverse of `fold_in`: (B, *sizes, fold · C) → (B, *shape, C)."""
        order = self._order()
        x = x.reshape(x.shape[:1] + tuple(self.shape[a] for a in order) + (-1,))
        inverse = np.argsort(order)
        return jnp.transpose(x, [0] + [1 + int(a) for a in inverse] + [x.ndim - 1])


@functools.lru_cache(maxsize=64)
def unf_structure(weight_space: WeightSpace) -> tuple[UNFTensor, ...]:
    """The feature maps of every tensor, in weight-space order; refuses a tensor that carries one
    group on two axes."""
    rank = {g: i for i, g in enumerate(weight_space.groups)}
    out = []
    for t in weight_space.tensors:
        named = [g for g in t.axes if g is not None]
        repeated = [g for g in dict.fromkeys(named) if named.count(g) > 1]
        if repeated:
            raise ModelError(f"tensor {t.path!r} carries group {repeated[0]!r} on "
                             f"{named.count(repeated[0])} axes; unf supports each group at most "
                             f"once per tensor")
        pairs = sorted((rank[g], a) for a, g in enumerate(t.axes) if g is not None)
        axes = tuple(a for _, a in pairs)
        fold = int(np.prod([n for a, n in enumerate(t.shape) if a not in axes], dtype=np.int64))
        out.append(UNFTensor(t.path, t.shape, tuple(t.axes[a] for a in axes), axes,
                             tuple(t.shape[a] for a in axes), fold))
    return tuple(out)


def _subsets(groups: tuple[str, ...]):
    return [c for r in range(len(groups) + 1) for c in itertools.combinations(groups, r)]


@dataclasses.dataclass(frozen=True)
class _Term:
    """Everything that passes through one kept set S: every tensor whose groups contain S,
    pooled down to S (rows) and broadcast back up (columns); one matrix, one matmul."""

    keep: tuple[str, ...]
    members: tuple[int, ...]
    rows: int
    cols: tuple[int, ...]
    offset: int

    @property
    def size(self) -> int:
        return self.rows * sum(self.cols)


def _plan(structure: tuple[UNFTensor, ...], in_channels: int, out_channels: int):
    """The terms of a layer and the packed init bounds: uniform ±1/√fan-in per target, one fan-in
    over all of a target's terms so that their sum has unit scale."""
    order = {}
    for e in structure:
        for g in e.groups:
            order.setdefault(g, len(order))
    keeps = sorted({k for e in structure for k in _subsets(e.groups)},
                   key=lambda k: (len(k), [order[g] for g in k]))
    terms, offset = [], 0
    for keep in keeps:
        members = tuple(j for j, e in enumerate(structure) if set(keep) <= set(e.groups))
        term = _Term(keep, members, in_channels * sum(structure[j].fold for j in members),
                     tuple(structure[j].fold * out_channels for j in members), offset)
        terms.append(term)
        offset += term.size
    fan = [sum(t.rows for t in terms if j in t.members) for j in range(len(structure))]
    bound = [1.0 / math.sqrt(f) for f in fan]
    parts = [np.tile(np.repeat([bound[j] for j in t.members], t.cols), t.rows) for t in terms]
    parts += [np.full(e.fold * out_channels, bound[j]) for j, e in enumerate(structure)]
    return terms, np.concatenate(parts).astype(np.float32)


def layer_counts(weight_space: WeightSpace, in_channels: int, out_channels: int) -> dict:
    """Size of one layer: distinct kept sets (matmuls), (input, output, S) terms, parameters."""
    structure = unf_structure(weight_space)
    terms, bounds = _plan(structure, in_channels, out_channels)
    return {"matmuls": len(terms), "terms": sum(len(t.members) ** 2 for t in terms),
            "params": int(bounds.size)}


class UNFLayer(nn.Module):
    """One permutation-equivariant linear layer over all tensors (see the module docstring).

    Input and output are lists with one array per tensor, ``(B, *sizes, fold · channels)``. All
    weights live in one packed vector so that initialisation is one random draw (separate draws
    each cost an XLA compile on CPU).
    """

    structure: tuple[UNFTensor, ...]
    in_channels: int
    out_channels: int

    @nn.compact
    def __call__(self, features: Sequence[jax.Array]) -> list[jax.Array]:
        structure = self.structure
        if len(features) != len(structure):
            raise ModelError(f"UNFLayer got {len(features)} feature arrays for "
                             f"{len(structure)} tensors")
        terms, bounds = _plan(structure, self.in_channels, self.out_channels)

        def init(key, shape, dtype=jnp.float32):
            return jax.random.uniform(key, shape, dtype, -1.0, 1.0) * jnp.asarray(bounds, dtype)

        packed = self.param("weights", init, bounds.shape)
        # One split, not a slice per piece: the gradient of a split is one concatenation, where
        # that of many slices is a sum of as many padded copies of the whole vector.
        sizes = [t.size for t in terms] + [e.fold * self.out_channels for e in structure]
        pieces = jax.lax.split(packed, sizes)
        kernels = pieces[:len(terms)]
        # Biases start each output: one per output channel, constant over the group axes.
        outputs = list(pieces[len(terms):])

        cache: dict[tuple[int, tuple[str, ...]], jax.Array] = {}

        def pooled(j: int, keep: tuple[str, ...]) -> jax.Array:
            """Mean of tensor j's features over its groups not in `keep`, computed once, from the
            smallest parent (keep plus the smallest missing group)."""
            e = structure[j]
            if len(keep) == len(e.groups):
                return features[j]
            if (j, keep) not in cache:
                missing = [g for g in e.groups if g not in keep]
                drop = min(missing, key=lambda g: e.sizes[e.groups.index(g)])
                parent = tuple(g for g in e.groups if g in keep or g == drop)
                cache[j, keep] = pooled(j, parent).mean(axis=1 + parent.index(drop))
            return cache[j, keep]

        for term, kernel in zip(terms, kernels):
            kernel = kernel.reshape(term.rows, sum(term.cols))
            x = jnp.concatenate([pooled(j, term.keep) for j in term.members], axis=-1)
            # As one 2-D product: on XLA:CPU the kernel gradient of an N-D `x @ kernel`
            # (contracting batch and group axes at once) runs several times slower than the
            # same product on the flattened rows.
            mixed = (x.reshape(-1, x.shape[-1]) @ kernel).reshape(x.shape[:-1] + (-1,))
            pieces = jnp.split(mixed, np.cumsum(term.cols)[:-1], axis=-1)
            for j, piece in zip(term.members, pieces):
                for a, g in enumerate(structure[j].groups):
                    if g not in term.keep:
                        piece = jnp.expand_dims(piece, 1 + a)
                outputs[j] = outputs[j] + piece
        return outputs


def features_of(structure: tuple[UNFTensor, ...], params) -> list[jax.Array]:
    """A batch of params → one single-channel feature map per tensor."""
    return [e.fold_in(tensor_at(params, e.path)[..., None]) for e in structure]


class UNF(nn.Module):
    """UNF encoder: equivariant layers with a pointwise activation, then per-tensor pooling
    (``pool``: "mean", or "moments" = mean and standard deviation) and an MLP
    (``output="invariant"``: (B, out_dim)), or a last equivariant layer to out_dim channels
    (``output="equivariant"``: a params dict of the weight space's shapes, with a trailing axis
    of size out_dim when out_dim > 1).

    Works on any `WeightSpace` whose tensors carry each group at most once.
    """

    weight_space: WeightSpace
    channels: Sequence[int] = (16, 16, 5)
    output: str = "invariant"
    out_dim: int = 1
    head_widths: Sequence[int] = (1000, 1000)
    activation: str = "relu"
    dropout: float = 0.0
    normalizer: TensorNormalizer | None = None
    pool: str = "mean"
    statistics: bool = False
    feature_mean: Sequence[float] | None = None
    feature_std: Sequence[float] | None = None

    def structure(self) -> tuple[UNFTensor, ...]:
        return unf_structure(self.weight_space)

    def check(self):
        check_encode_config(self, "UNF")
        self.structure()

    @nn.compact
    def __call__(self, params, train: bool = False):
        self.check()
        head = lambda x: MLP(self.head_widths, self.out_dim, self.activation, self.dropout)(
            x, train)
        return encode(self, UNFLayer, ACTIVATIONS[self.activation], head, params)


def check_encode_config(encoder, name: str) -> None:
    """What `encode` needs of an NFN or UNF `encoder` (called `name` in the messages): a valid
    config, a known output, at least one layer before an invariant readout's pooling, and the
    statistics' scaling where ``statistics=true``."""
    check_encoder_config(encoder)
    if encoder.output not in OUTPUTS:
        raise ModelError(f"{name} output must be one of {OUTPUTS}; got output={encoder.output!r}")
    if not encoder.channels and encoder.output == "invariant":
        raise ModelError(f"an invariant {name} needs at least one equivariant layer before "
                         f"pooling (channels is empty)")
    check_statistics(encoder)


def encode(encoder, layer: type[UNFLayer], act, head, params):
    """The body NFN and UNF share, called inside the encoder's compact `__call__` (the layers it
    creates are the encoder's submodules): equivariant `layer`s of `encoder.channels` with
    activation `act`, then per-tensor pooling (beside the input's StatNN statistics when
    ``encoder.statistics``) and `head`, or, for
    ``encoder.output == "equivariant"``, a last layer to `encoder.out_dim` channels returned in the
    weight space's shapes."""
    structure = encoder.structure()
    params = prepare(encoder.weight_space, params, encoder.normalizer)
    features = features_of(structure, params)
    previous = 1
    for c in encoder.channels:
        features = [act(f) for f in layer(structure, previous, int(c))(features)]
        previous = int(c)
    if encoder.output == "equivariant":
        features = layer(structure, previous, int(encoder.out_dim))(features)
        out = {e.path: e.fold_out(f) for e, f in zip(structure, features)}
        squeeze = encoder.out_dim == 1
        return encoder.weight_space.map_tensors(
            lambda t, _: out[t.path][..., 0] if squeeze else out[t.path], params)
    pooled = [pool(f, encoder.pool) for f in features]
    if encoder.statistics:
        pooled.append(scaled_stat_features(encoder, params))
    return head(jnp.concatenate(pooled, axis=-1))


def pool(feature: jax.Array, how: str = "mean") -> jax.Array:
    """Invariant summary of one feature map (B, *permuted axes, channels) → (B, channels) for
    ``"mean"``, (B, 2 · channels) for ``"moments"`` (mean, then standard deviation, over the
    permuted axes). A map without permuted axes is already invariant: returned as it is (and
    with zero spread for "moments", so that every readout has the same width per tensor)."""
    axes = tuple(range(1, feature.ndim - 1))
    if how == "mean":
        return feature.mean(axis=axes) if axes else feature
    if how == "moments":
        if not axes:
            return jnp.concatenate([feature, jnp.zeros_like(feature)], axis=-1)
        mean = feature.mean(axis=axes)
        # sqrt(var + eps): the gradient of std is infinite where every unit is equal.
        spread = jnp.sqrt(jnp.square(feature - feature.mean(axis=axes, keepdims=True))
                          .mean(axis=axes) + 1e-8)
        return jnp.concatenate([mean, spread], axis=-1)
    raise ModelError(f"pool must be one of {POOLS}; got {how!r}")
