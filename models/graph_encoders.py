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
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from wsl.models.encoders import ACTIVATIONS, MLP, check_encoder_config, prepare
from wsl.models.errors import ModelError
from wsl.models.neural_graph import NeuralGraph, neural_graph
from wsl.models.normalize import TensorNormalizer
from wsl.weight_space import WeightSpace


def segment_softmax(scores: jax.Array, segments: jax.Array, num_segments: int) -> jax.Array:
    """Softmax of `scores` (E, ...) over the entries that share a segment id (softmax per node)."""
    top = jax.ops.segment_max(scores, segments, num_segments)
    top = jnp.where(jnp.isfinite(top), top, 0.0)  # empty segments
    exp = jnp.exp(scores - jax.lax.stop_gradient(top)[segments])
    total = jax.ops.segment_sum(exp, segments, num_segments)
    return exp / (total[segments] + 1e-16)


def pna_aggregate(messages: jax.Array, receivers: np.ndarray, num_nodes: int,
                  degree: np.ndarray) -> jax.Array:
    """PNA aggregation: mean, max, min and std of incoming messages, each scaled by identity,
    amplification log(d+1)/δ and attenuation δ/log(d+1); zero at nodes with no incoming edge.

    messages (E, B, D) → (N, B, 12 D).
    """
    degree = np.asarray(degree, np.float32)
    has = degree > 0
    log_degree = np.log(degree + 1.0)
    delta = float(log_degree[has].mean()) if has.any() else 1.0
    ids = jnp.asarray(receivers)
    shape = (num_nodes,) + (1,) * (messages.ndim - 1)
    count = jnp.asarray(np.maximum(degree, 1.0)).reshape(shape)
    mask = jnp.asarray(has).reshape(shape)
    mean = jax.ops.segment_sum(messages, ids, num_nodes) / count
    square = jax.ops.segment_sum(messages * messages, ids, num_nodes) / count
    std = jnp.sqrt(jax.nn.relu(square - mean * mean) + 1e-5)
    high = jax.ops.segment_max(messages, ids, num_nodes)
    low = -jax.ops.segment_max(-messages, ids, num_nodes)
    stats = jnp.concatenate([mean, high, low, std], axis=-1)
    stats = jnp.where(mask, stats, 0.0)
    amplify = jnp.asarray(np.where(has, log_degree / delta, 0.0), jnp.float32).reshape(shape)
    attenuate = jnp.asarray(np.where(has, delta / np.maximum(log_degree, 1e-6), 0.0),
                            jnp.float32).reshape(shape)
    return jnp.concatenate([stats, stats * amplify, stats * attenuate], axis=-1)


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
    """e ← e + MLP(e, h_sender, h_receiver). The first linear map is applied to nodes before the
    gather, so the (E, B, 3D) concatenation is never materialised."""

    graph: NeuralGraph
    dim: int
    activation: str

    @nn.compact
    def __call__(self, h: jax.Array, e: jax.Array) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        nodes = nn.Dense(2 * self.dim, use_bias=False, name="nodes")(nn.LayerNorm()(h))
        sender, receiver = _split(nodes, 2)
        z = (_gather(sender, self.graph.senders) + _gather(receiver, self.graph.receivers)
             + nn.Dense(self.dim, name="edges")(nn.LayerNorm()(e)))
        return e + nn.Dense(self.dim, name="out")(act(z))


class PNALayer(nn.Module):
    """Message passing with PNA aggregators in both directions along every edge."""

    graph: NeuralGraph
    dim: int
    activation: str

    @nn.compact
    def __call__(self, h: jax.Array, e: jax.Array):
        g, act = self.graph, ACTIVATIONS[self.activation]
        hn, en = nn.LayerNorm()(h), nn.LayerNorm()(e)
        in_degree, out_degree = g.degrees()
        # Messages are linear in (sender, receiver, edge) before the activation: project the
        # nodes once, for both directions, and gather the projections.
        f_send, f_recv, b_send, b_recv = _split(
            nn.Dense(4 * self.dim, use_bias=False, name="message_nodes")(hn), 4)
        f_edge, b_edge = _split(nn.Dense(2 * self.dim, name="message_edges")(en), 2)
        forward = _gather(f_send, g.senders) + _gather(f_recv, g.receivers) + f_edge
        backward = _gather(b_send, g.receivers) + _gather(b_recv, g.senders) + b_edge
        aggregated = [pna_aggregate(act(forward), g.receivers, g.num_nodes, in_degree),
                      pna_aggregate(act(backward), g.senders, g.num_nodes, out_degree)]
        z = nn.Dense(self.dim, name="update_in")(jnp.concatenate([hn] + aggregated, axis=-1))
        h = h + nn.Dense(self.dim, name="update_out")(act(z))
        return h, EdgeUpdate(g, self.dim, self.activation)(h, e)


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
        hn, en = nn.LayerNorm()(h), nn.LayerNorm()(e)
        # Both directions as one edge list: forward edges, then the same edges reversed.
        senders = np.concatenate([g.senders, g.receivers])
        receivers = np.concatenate([g.receivers, g.senders])
        query, key, value = _split(nn.Dense(3 * self.dim, name="qkv")(hn), 3)
        f_key, f_value, b_key, b_value = _split(nn.Dense(4 * self.dim, name="edge_kv")(en), 4)
        lead = (2 * g.num_edges,) + h.shape[1:-1] + (self.heads, head_dim)
        k = (_gather(key, senders) + jnp.concatenate([f_key, b_key])).reshape(lead)
        v = (_gather(value, senders) + jnp.concatenate([f_value, b_value])).reshape(lead)
        q = _gather(query, receivers).reshape(lead)
        scores = (q * k).sum(-1) / np.sqrt(head_dim)  # (2E, B, heads)
        weights = segment_softmax(scores, jnp.asarray(receivers), g.num_nodes)
        attended = jax.ops.segment_sum(weights[..., None] * v, jnp.asarray(receivers), g.num_nodes)
        h = h + nn.Dense(self.dim, name="attention_out")(attended.reshape(h.shape))
        hidden = act(nn.Dense(2 * self.dim, name="ffn_in")(nn.LayerNorm()(h)))
        h = h + nn.Dense(self.dim, name="ffn_out")(hidden)
        return h, EdgeUpdate(g, self.dim, self.activation)(h, e)


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

    def graph(self) -> NeuralGraph:
        return neural_graph(self.weight_space)

    def check(self):
        check_encoder_config(self)
        self.graph()

    def make_layer(self, graph: NeuralGraph) -> nn.Module:
        raise NotImplementedError

    @nn.compact
    def __call__(self, params, train: bool = False) -> jax.Array:
        self.check()
        graph = self.graph()
        nodes, edges = graph.features(prepare(self.weight_space, params, self.normalizer))
        h, e = GraphEmbedding(graph, self.dim)(nodes, edges)
        for _ in range(self.num_layers):
            h, e = self.make_layer(graph)(h, e)
        x = _readout(graph, nn.LayerNorm()(h), nn.LayerNorm()(e))
        return MLP(self.head_widths, self.out_dim, self.activation, self.dropout)(x, train)


class NeuralGraphGNN(_NeuralGraphEncoder):
    """PNA GNN on the neural graph, with edge updates: (B, out_dim), invariant to the weight
    space's permutations (any weight space)."""

    def make_layer(self, graph: NeuralGraph) -> nn.Module:
        return PNALayer(graph, self.dim, self.activation)


class NeuralGraphTransformer(_NeuralGraphEncoder):
    """Relational transformer on the neural graph, attention along edges: (B, out_dim), invariant
    to the weight space's permutations (any weight space)."""

    heads: int = 4

    def check(self):
        super().check()
        if self.dim % self.heads:
            raise ModelError(f"transformer dim {self.dim} is not divisible by heads {self.heads}")

    def make_layer(self, graph: NeuralGraph) -> nn.Module:
        return RelationalAttentionLayer(graph, self.dim, self.heads, self.activation)
