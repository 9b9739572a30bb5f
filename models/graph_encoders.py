"""Neural-graph encoders: PNA message passing and a relational transformer (Kofinas et al. 2024).

Both read the `NeuralGraph` of any weight space (chains, residual streams, multi-head attention;
see `wsl.models.neural_graph`): nodes are neurons — feature channels: the biases, normalisation
scales and shifts over them, one channel per tensor — and edges are weights — features: the
kernel entries of one input→output pair, conv taps flattened. Learned embeddings tell the
encoder where it is: one per edge type (the kernel an edge comes from, or a head's membership
edges), and positional ones per node of a non-permuted set (inputs, classes, token positions)
but one per permuted node set, so that the neurons of a permutation group stay interchangeable:
permuting them permutes nodes and edges alike and leaves the pooled output unchanged.

Everything runs on edge lists with segment operations over receiving nodes, in graph-major
layout — nodes (N, B, D), edges (E, B, D) — so memory grows with edges × batch, never with
nodes², unlike the dense N × N edge tensor of the reference implementation. Messages flow both
ways along every edge (input → output and back), so input neurons also learn from the network.

Memory: edge-sized arrays (E, B, D) are what the backward pass holds, so the layers keep few of
them. The layers run as a scan over their stacked parameters, each layer rematerialised in the
backward pass (only the (h, e) entering each layer is stored); the PNA statistics have a
hand-written gradient that keeps only the pre-activation messages; and the two layer norms of
the edge state share one normalised copy, their scales and shifts folded into the dense maps
that read them. None of this changes the function or its parameters (names, shapes, initial
values) beyond float rounding.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from wsl.models.encoders import ACTIVATIONS, MLP, check_encoder_config, prepare
from wsl.models.errors import ModelError
from wsl.models.neural_graph import NeuralGraph, neural_graph
from wsl.models.normalize import TensorNormalizer
from wsl.models.statnn import check_statistics, scaled_stat_features
from wsl.weight_space import WeightSpace

LAYER_NORM_EPSILON = 1e-6  # flax's nn.LayerNorm default, which these layers reproduce


def segment_softmax(scores: jax.Array, segments: jax.Array, num_segments: int) -> jax.Array:
    """Softmax of `scores` (E, ...) over the entries that share a segment id (softmax per node)."""
    top = jax.ops.segment_max(scores, segments, num_segments)
    top = jnp.where(jnp.isfinite(top), top, 0.0)  # empty segments
    exp = jnp.exp(scores - jax.lax.stop_gradient(top)[segments])
    total = jax.ops.segment_sum(exp, segments, num_segments)
    return exp / (total[segments] + 1e-16)


def _identity(x: jax.Array) -> jax.Array:
    return x


def segment_moments(pre: jax.Array, receivers: np.ndarray, num_nodes: int,
                    activation: Callable[[jax.Array], jax.Array] = _identity):
    """Sum, sum of squares, max and min per receiving node of the messages activation(pre),
    pre (E, ...) → four (N, ...).

    The same numbers and gradient as `jax.ops.segment_sum` / `segment_max` on the messages (tied
    maxima or minima share their node's gradient equally, as there), but the gradient keeps only
    `pre` and node-level numbers: the messages, which of them are the extremes, and the
    activation's derivative are recomputed in one pass over the edges in the backward pass, where
    automatic differentiation would store several edge-sized arrays per statistic.
    """
    return _moments(pre, jnp.asarray(receivers), num_nodes, activation)


def _segment_stats(messages, ids, num_nodes):
    return (jax.ops.segment_sum(messages, ids, num_nodes),
            jax.ops.segment_sum(messages * messages, ids, num_nodes),
            jax.ops.segment_max(messages, ids, num_nodes),
            jax.ops.segment_min(messages, ids, num_nodes))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _moments(pre, ids, num_nodes, activation):
    return _segment_stats(activation(pre), ids, num_nodes)


def _moments_forward(pre, ids, num_nodes, activation):
    messages = activation(pre)
    out = _segment_stats(messages, ids, num_nodes)
    ties = [jnp.maximum(jax.ops.segment_sum((messages == extreme[ids]).astype(messages.dtype),
                                            ids, num_nodes), 1.0) for extreme in out[2:]]
    return out, (pre, ids, *out[2:], *ties)


def _moments_backward(num_nodes, activation, saved, cotangents):
    pre, ids, high, low, ties_high, ties_low = saved
    d_total, d_squares, d_high, d_low = cotangents
    messages, activation_vjp = jax.vjp(activation, pre)
    d_messages = (d_total[ids] + 2.0 * messages * d_squares[ids]
                  + jnp.where(messages == high[ids], (d_high / ties_high)[ids], 0.0)
                  + jnp.where(messages == low[ids], (d_low / ties_low)[ids], 0.0))
    return activation_vjp(d_messages)[0], None  # no gradient for the integer ids


_moments.defvjp(_moments_forward, _moments_backward)


def pna_aggregate(pre: jax.Array, receivers: np.ndarray, num_nodes: int, degree: np.ndarray,
                  activation: Callable[[jax.Array], jax.Array] = _identity) -> jax.Array:
    """PNA aggregation of the messages activation(pre): mean, max, min and std of incoming
    messages, each scaled by identity, amplification log(d+1)/δ and attenuation δ/log(d+1); zero
    at nodes with no incoming edge.

    pre (E, B, D) → (N, B, 12 D).
    """
    degree = np.asarray(degree, np.float32)
    has = degree > 0
    log_degree = np.log(degree + 1.0)
    delta = float(log_degree[has].mean()) if has.any() else 1.0
    shape = (num_nodes,) + (1,) * (pre.ndim - 1)
    count = jnp.asarray(np.maximum(degree, 1.0)).reshape(shape)
    mask = jnp.asarray(has).reshape(shape)
    total, squares, high, low = segment_moments(pre, receivers, num_nodes, activation)
    mean = total / count
    square = squares / count
    std = jnp.sqrt(jax.nn.relu(square - mean * mean) + 1e-5)
    stats = jnp.concatenate([mean, high, low, std], axis=-1)
    stats = jnp.where(mask, stats, 0.0)
    amplify = jnp.asarray(np.where(has, log_degree / delta, 0.0), jnp.float32).reshape(shape)
    attenuate = jnp.asarray(np.where(has, delta / np.maximum(log_degree, 1e-6), 0.0),
                            jnp.float32).reshape(shape)
    return jnp.concatenate([stats, stats * amplify, stats * attenuate], axis=-1)


@jax.custom_vjp
def normalize(x: jax.Array) -> jax.Array:
    """(x − mean) / sqrt(var + ε) over the last axis: a layer norm without its scale and shift,
    whose gradient keeps only the output and 1/σ (not x, x − mean and the squares)."""
    return _normalize_forward(x)[0]


def _normalize_forward(x):
    centred = x - x.mean(-1, keepdims=True)
    inverse = jax.lax.rsqrt((centred * centred).mean(-1, keepdims=True) + LAYER_NORM_EPSILON)
    out = centred * inverse
    return out, (out, inverse)


def _normalize_backward(saved, d_out):
    out, inverse = saved
    return (inverse * (d_out - d_out.mean(-1, keepdims=True)
                       - out * (d_out * out).mean(-1, keepdims=True)),)


normalize.defvjp(_normalize_forward, _normalize_backward)


class _LayerNormParams(nn.Module):
    """The scale and shift of an `nn.LayerNorm` over `features` (same names and initialisers),
    for code that applies them itself."""

    features: int

    @nn.compact
    def __call__(self):
        return (self.param("scale", nn.initializers.ones, (self.features,)),
                self.param("bias", nn.initializers.zeros, (self.features,)))


class _DenseParams(nn.Module):
    """The kernel and bias of an `nn.Dense` from `in_features` to `features` (same names, shapes,
    initialisers and random draws), for code that applies them itself."""

    in_features: int
    features: int

    @nn.compact
    def __call__(self):
        return (self.param("kernel", nn.initializers.lecun_normal(),
                           (self.in_features, self.features)),
                self.param("bias", nn.initializers.zeros_init(), (self.features,)))


def _norm_dense(normalized: jax.Array, features: int, norm: str, dense: str) -> jax.Array:
    """`nn.Dense(features, name=dense)(nn.LayerNorm(name=norm)(x))` from x's `normalize`d copy:
    the same parameters and function, with the norm's scale and shift folded into the kernel and
    bias, so that every map reading x shares that one normalised copy. Call it inside a compact
    method: the parameters belong to the calling module."""
    scale, shift = _LayerNormParams(normalized.shape[-1], name=norm)()
    kernel, bias = _DenseParams(normalized.shape[-1], features, name=dense)()
    return normalized @ (scale[:, None] * kernel) + (shift @ kernel + bias)


def _gather(x: jax.Array, ids: np.ndarray) -> jax.Array:
    return jnp.take(x, jnp.asarray(ids), axis=0)


class GraphEmbedding(nn.Module):
    """Initial node and edge states, graph-major: nodes (N, B, D), edges (E, B, D)."""

    graph: NeuralGraph
    dim: int

    @nn.compact
    def __call__(self, nodes: jax.Array, edges: jax.Array):
        g = self.graph
        pos = self.param("positions", nn.initializers.normal(1.0), (g.num_positions, self.dim))
        types = self.param("edge_types", nn.initializers.normal(1.0),
                           (g.num_edge_types, self.dim))
        h = (nn.Dense(self.dim, name="node_in")(jnp.moveaxis(nodes, -2, 0))
             + _gather(pos, g.position_ids())[:, None])
        e = (nn.Dense(self.dim, name="edge_in")(jnp.swapaxes(edges, 0, 1))
             + _gather(types, g.edge_type)[:, None])
        return h, e


def _split(x: jax.Array, parts: int) -> list[jax.Array]:
    return jnp.split(x, parts, axis=-1)


class EdgeUpdate(nn.Module):
    """e ← e + MLP(e, h_sender, h_receiver), with layer-normed inputs. The first linear map is
    applied to nodes before the gather, so the (E, B, 3D) concatenation is never materialised;
    `normalized` is `normalize(e)`, shared with the layer that calls this one."""

    graph: NeuralGraph
    dim: int
    activation: str

    @nn.compact
    def __call__(self, h: jax.Array, e: jax.Array, normalized: jax.Array) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        nodes = nn.Dense(2 * self.dim, use_bias=False, name="nodes")(
            nn.LayerNorm(name="LayerNorm_0")(h))
        sender, receiver = _split(nodes, 2)
        z = (_gather(sender, self.graph.senders) + _gather(receiver, self.graph.receivers)
             + _norm_dense(normalized, self.dim, "LayerNorm_1", "edges"))
        return e + nn.Dense(self.dim, name="out")(act(z))


class PNALayer(nn.Module):
    """Message passing with PNA aggregators in both directions along every edge."""

    graph: NeuralGraph
    dim: int
    activation: str

    @nn.compact
    def __call__(self, h: jax.Array, e: jax.Array):
        g, act = self.graph, ACTIVATIONS[self.activation]
        hn, en = nn.LayerNorm(name="LayerNorm_0")(h), normalize(e)
        in_degree, out_degree = g.degrees()
        # Messages are linear in (sender, receiver, edge) before the activation: project the
        # nodes once, for both directions, and gather the projections.
        f_send, f_recv, b_send, b_recv = _split(
            nn.Dense(4 * self.dim, use_bias=False, name="message_nodes")(hn), 4)
        f_edge, b_edge = _split(_norm_dense(en, 2 * self.dim, "LayerNorm_1", "message_edges"), 2)
        forward = _gather(f_send, g.senders) + _gather(f_recv, g.receivers) + f_edge
        backward = _gather(b_send, g.receivers) + _gather(b_recv, g.senders) + b_edge
        aggregated = [pna_aggregate(forward, g.receivers, g.num_nodes, in_degree, act),
                      pna_aggregate(backward, g.senders, g.num_nodes, out_degree, act)]
        z = nn.Dense(self.dim, name="update_in")(jnp.concatenate([hn] + aggregated, axis=-1))
        h = h + nn.Dense(self.dim, name="update_out")(act(z))
        return h, EdgeUpdate(g, self.dim, self.activation, name="EdgeUpdate_0")(h, e, en)


class RelationalAttentionLayer(nn.Module):
    """Pre-norm transformer block whose attention runs along edges only, keys and values carrying
    edge features; each node attends over its neighbours in both directions."""

    graph: NeuralGraph
    dim: int
    heads: int
    activation: str

    @nn.compact
    def __call__(self, h: jax.Array, e: jax.Array):
        g, act = self.graph, ACTIVATIONS[self.activation]
        if self.dim % self.heads:
            raise ModelError(f"transformer dim {self.dim} is not divisible by heads {self.heads}")
        head_dim = self.dim // self.heads
        hn, en = nn.LayerNorm(name="LayerNorm_0")(h), normalize(e)
        # Both directions as one edge list: forward edges, then the same edges reversed.
        senders = np.concatenate([g.senders, g.receivers])
        receivers = np.concatenate([g.receivers, g.senders])
        query, key, value = _split(nn.Dense(3 * self.dim, name="qkv")(hn), 3)
        f_key, f_value, b_key, b_value = _split(
            _norm_dense(en, 4 * self.dim, "LayerNorm_1", "edge_kv"), 4)
        lead = (2 * g.num_edges,) + h.shape[1:-1] + (self.heads, head_dim)
        k = (_gather(key, senders) + jnp.concatenate([f_key, b_key])).reshape(lead)
        v = (_gather(value, senders) + jnp.concatenate([f_value, b_value])).reshape(lead)
        q = _gather(query, receivers).reshape(lead)
        scores = (q * k).sum(-1) / np.sqrt(head_dim)  # (2E, B, heads)
        weights = segment_softmax(scores, jnp.asarray(receivers), g.num_nodes)
        attended = jax.ops.segment_sum(weights[..., None] * v, jnp.asarray(receivers), g.num_nodes)
        h = h + nn.Dense(self.dim, name="attention_out")(attended.reshape(h.shape))
        hidden = act(nn.Dense(2 * self.dim, name="ffn_in")(nn.LayerNorm(name="LayerNorm_2")(h)))
        h = h + nn.Dense(self.dim, name="ffn_out")(hidden)
        return h, EdgeUpdate(g, self.dim, self.activation, name="EdgeUpdate_0")(h, e, en)


def _readout(graph: NeuralGraph, h: jax.Array, e: jax.Array) -> jax.Array:
    """Invariant summary (B, (S + K) · D): mean node state of every node set, mean edge state of
    every edge type."""
    node_means = jax.ops.segment_sum(h, jnp.asarray(graph.node_set), graph.num_node_sets)
    node_means = node_means / jnp.asarray(graph.sizes, jnp.float32)[:, None, None]
    counts = np.bincount(graph.edge_type, minlength=graph.num_edge_types).astype(np.float32)
    edge_means = jax.ops.segment_sum(e, jnp.asarray(graph.edge_type), graph.num_edge_types)
    edge_means = edge_means / jnp.asarray(np.maximum(counts, 1.0))[:, None, None]
    pooled = jnp.concatenate([node_means, edge_means], axis=0)  # (S + K, B, D)
    return jnp.swapaxes(pooled, 0, 1).reshape(pooled.shape[1], -1)


class _NeuralGraphEncoder(nn.Module):
    weight_space: WeightSpace
    dim: int = 64
    num_layers: int = 4
    out_dim: int = 1
    head_widths: Sequence[int] = (64, 64)
    activation: str = "silu"
    dropout: float = 0.0
    normalizer: TensorNormalizer | None = None
    # StatNN's statistics of the (normalised) tensors beside the graph readout in the head,
    # standardised by feature_mean / feature_std where given (the probe fits them on its
    # training split), as UNF's and NFN's `statistics` option does.
    statistics: bool = False
    feature_mean: Sequence[float] | None = None
    feature_std: Sequence[float] | None = None

    def graph(self) -> NeuralGraph:
        return neural_graph(self.weight_space)

    def check(self):
        check_encoder_config(self)
        check_statistics(self)
        self.graph()

    def make_layer(self, graph: NeuralGraph, **module_args) -> nn.Module:
        """One message-passing layer; `module_args` are flax's (name, parent)."""
        raise NotImplementedError

    def run_layers(self, graph: NeuralGraph, h: jax.Array, e: jax.Array):
        """The `num_layers` layers, named and initialised as if called one after another
        (``PNALayer_0``, …), applied as a scan over their stacked parameters, each step
        rematerialised: the backward pass stores only the (h, e) entering each layer and
        recomputes one layer at a time. (A Python loop of `jax.checkpoint`ed layers would not
        do: XLA may schedule every layer's recomputation before the first backward step, as
        the CPU compiler does, and hold them all.)"""
        template = self.make_layer(graph, parent=None)  # unbound: applied as a pure function
        names = [f"{type(template).__name__}_{i}" for i in range(self.num_layers)]
        if self.is_initializing():
            for name in names:
                h, e = self.make_layer(graph, name=name)(h, e)
            return h, e
        stacked = jax.tree.map(lambda *layers: jnp.stack(layers),
                               *(self.variables["params"][name] for name in names))

        def step(carry, params):
            return template.apply({"params": params}, *carry), None

        (h, e), _ = jax.lax.scan(jax.checkpoint(step, prevent_cse=False), (h, e), stacked)
        return h, e

    @nn.compact
    def __call__(self, params, train: bool = False) -> jax.Array:
        self.check()
        graph = self.graph()
        params = prepare(self.weight_space, params, self.normalizer)
        nodes, edges = graph.features(params)
        h, e = GraphEmbedding(graph, self.dim)(nodes, edges)
        h, e = self.run_layers(graph, h, e)
        x = _readout(graph, nn.LayerNorm()(h), nn.LayerNorm()(e))
        if self.statistics:
            x = jnp.concatenate([x, scaled_stat_features(self, params)], axis=-1)
        return MLP(self.head_widths, self.out_dim, self.activation, self.dropout)(x, train)


class NeuralGraphGNN(_NeuralGraphEncoder):
    """PNA GNN on the neural graph, with edge updates: (B, out_dim), invariant to the weight
    space's permutations (any weight space)."""

    def make_layer(self, graph: NeuralGraph, **module_args) -> nn.Module:
        return PNALayer(graph, self.dim, self.activation, **module_args)


class NeuralGraphTransformer(_NeuralGraphEncoder):
    """Relational transformer on the neural graph, attention along edges: (B, out_dim), invariant
    to the weight space's permutations (any weight space)."""

    heads: int = 4

    def check(self):
        super().check()
        if self.dim % self.heads:
            raise ModelError(f"transformer dim {self.dim} is not divisible by heads {self.heads}")

    def make_layer(self, graph: NeuralGraph, **module_args) -> nn.Module:
        return RelationalAttentionLayer(graph, self.dim, self.heads, self.activation,
                                        **module_args)
