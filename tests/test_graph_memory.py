"""Neural-graph encoder memory: the rematerialised, hand-differentiated layers compute what plain
JAX computes (same parameters, outputs and gradients), and compiled peak memory grows linearly in
the batch, by about one stored edge state per extra layer."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.encoder_speed import FAST_COMPILE, SPACES, graph_memory, random_population
from wsl.models.encoders import ACTIVATIONS, MLP, build_encoder, prepare
from wsl.models.graph_encoders import (
    GraphEmbedding,
    _readout,
    normalize,
    segment_moments,
    segment_softmax,
)
from wsl.models.neural_graph import NeuralGraph, neural_graph
from wsl.zoos.architectures import build

TOLERANCE = 1e-5  # relative to the largest entry of each array


def run(f, *args):
    """f(*args), compiled without the backend's optimisations (these inputs are tiny; compiling
    is the slow part)."""
    return jax.jit(f).lower(*args).compile(FAST_COMPILE)(*args)


def assert_close(actual, expected):
    for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        assert a.shape == b.shape
        assert np.abs(a - b).max(initial=0.0) <= TOLERANCE * max(np.abs(b).max(initial=0.0), 1.0)


# --------------------------------------------- plain reference: the layers written the obvious way
# flax layer norms and dense maps, a Python loop over layers, autodiff through jax.ops segment ops.
def plain_pna(messages, receivers, num_nodes, degree):
    degree = np.asarray(degree, np.float32)
    has = degree > 0
    log_degree = np.log(degree + 1.0)
    delta = float(log_degree[has].mean()) if has.any() else 1.0
    ids = jnp.asarray(receivers)
    shape = (num_nodes,) + (1,) * (messages.ndim - 1)
    count = jnp.asarray(np.maximum(degree, 1.0)).reshape(shape)
    mean = jax.ops.segment_sum(messages, ids, num_nodes) / count
    square = jax.ops.segment_sum(messages * messages, ids, num_nodes) / count
    std = jnp.sqrt(jax.nn.relu(square - mean * mean) + 1e-5)
    high = jax.ops.segment_max(messages, ids, num_nodes)
    low = -jax.ops.segment_max(-messages, ids, num_nodes)
    stats = jnp.where(jnp.asarray(has).reshape(shape),
                      jnp.concatenate([mean, high, low, std], axis=-1), 0.0)
    amplify = jnp.asarray(np.where(has, log_degree / delta, 0.0), jnp.float32).reshape(shape)
    attenuate = jnp.asarray(np.where(has, delta / np.maximum(log_degree, 1e-6), 0.0),
                            jnp.float32).reshape(shape)
    return jnp.concatenate([stats, stats * amplify, stats * attenuate], axis=-1)


def take(x, ids):
    return jnp.take(x, jnp.asarray(ids), axis=0)


class PlainEdgeUpdate(nn.Module):
    graph: NeuralGraph
    dim: int
    activation: str

    @nn.compact
    def __call__(self, h, e):
        sender, receiver = jnp.split(
            nn.Dense(2 * self.dim, use_bias=False, name="nodes")(nn.LayerNorm()(h)), 2, axis=-1)
        z = (take(sender, self.graph.senders) + take(receiver, self.graph.receivers)
             + nn.Dense(self.dim, name="edges")(nn.LayerNorm()(e)))
        return e + nn.Dense(self.dim, name="out")(ACTIVATIONS[self.activation](z))


class PlainPNALayer(nn.Module):
    graph: NeuralGraph
    dim: int
    activation: str

    @nn.compact
    def __call__(self, h, e):
        g, act = self.graph, ACTIVATIONS[self.activation]
        hn, en = nn.LayerNorm()(h), nn.LayerNorm()(e)
        in_degree, out_degree = g.degrees()
        f_send, f_recv, b_send, b_recv = jnp.split(
            nn.Dense(4 * self.dim, use_bias=False, name="message_nodes")(hn), 4, axis=-1)
        f_edge, b_edge = jnp.split(nn.Dense(2 * self.dim, name="message_edges")(en), 2, axis=-1)
        forward = take(f_send, g.senders) + take(f_recv, g.receivers) + f_edge
        backward = take(b_send, g.receivers) + take(b_recv, g.senders) + b_edge
        aggregated = [plain_pna(act(forward), g.receivers, g.num_nodes, in_degree),
                      plain_pna(act(backward), g.senders, g.num_nodes, out_degree)]
        z = nn.Dense(self.dim, name="update_in")(jnp.concatenate([hn] + aggregated, axis=-1))
        h = h + nn.Dense(self.dim, name="update_out")(act(z))
        return h, PlainEdgeUpdate(g, self.dim, self.activation, name="EdgeUpdate_0")(h, e)


class PlainAttentionLayer(nn.Module):
    graph: NeuralGraph
    dim: int
    heads: int
    activation: str

    @nn.compact
    def __call__(self, h, e):
        g, act, head_dim = self.graph, ACTIVATIONS[self.activation], self.dim // self.heads
        hn, en = nn.LayerNorm()(h), nn.LayerNorm()(e)
        senders = np.concatenate([g.senders, g.receivers])
        receivers = np.concatenate([g.receivers, g.senders])
        query, key, value = jnp.split(nn.Dense(3 * self.dim, name="qkv")(hn), 3, axis=-1)
        f_key, f_value, b_key, b_value = jnp.split(
            nn.Dense(4 * self.dim, name="edge_kv")(en), 4, axis=-1)
        lead = (2 * g.num_edges,) + h.shape[1:-1] + (self.heads, head_dim)
        k = (take(key, senders) + jnp.concatenate([f_key, b_key])).reshape(lead)
        v = (take(value, senders) + jnp.concatenate([f_value, b_value])).reshape(lead)
        q = take(query, receivers).reshape(lead)
        weights = segment_softmax((q * k).sum(-1) / np.sqrt(head_dim), jnp.asarray(receivers),
                                  g.num_nodes)
        attended = jax.ops.segment_sum(weights[..., None] * v, jnp.asarray(receivers), g.num_nodes)
        h = h + nn.Dense(self.dim, name="attention_out")(attended.reshape(h.shape))
        h = h + nn.Dense(self.dim, name="ffn_out")(
            act(nn.Dense(2 * self.dim, name="ffn_in")(nn.LayerNorm()(h))))
        return h, PlainEdgeUpdate(g, self.dim, self.activation, name="EdgeUpdate_0")(h, e)


class PlainEncoder(nn.Module):
    weight_space: object
    transformer: bool
    dim: int
    num_layers: int
    head_widths: tuple
    heads: int = 2
    activation: str = "silu"

    @nn.compact
    def __call__(self, params):
        g = neural_graph(self.weight_space)
        h, e = GraphEmbedding(g, self.dim)(*g.features(prepare(self.weight_space, params, None)))
        for i in range(self.num_layers):
            if self.transformer:
                layer = PlainAttentionLayer(g, self.dim, self.heads, self.activation,
                                            name=f"RelationalAttentionLayer_{i}")
            else:
                layer = PlainPNALayer(g, self.dim, self.activation, name=f"PNALayer_{i}")
            h, e = layer(h, e)
        x = _readout(g, nn.LayerNorm()(h), nn.LayerNorm()(e))
        return MLP(self.head_widths, 1, self.activation)(x)


# ------------------------------------------------------------------------------------ the tests
@pytest.mark.parametrize("activation", ["identity", "silu"])
def test_segment_moments_match_autodiff_of_jax_segment_ops(activation):
    """Sums, squares, maxima and minima and their gradient, ties included (integer messages:
    tied extremes share the gradient as jax.ops.segment_max's own gradient shares it)."""
    rng = np.random.default_rng(0)
    receivers = np.array([0, 0, 0, 2, 2, 3, 3, 3, 3, 0], np.int32)  # node 1 receives nothing
    act = ACTIVATIONS[activation]
    for pre in (rng.standard_normal((10, 3, 4)), rng.integers(-2, 3, (10, 3, 4))):
        pre = jnp.asarray(pre, jnp.float32)

        def plain(x, act=act):
            m, ids = act(x), jnp.asarray(receivers)
            return (jax.ops.segment_sum(m, ids, 4), jax.ops.segment_sum(m * m, ids, 4),
                    jax.ops.segment_max(m, ids, 4), -jax.ops.segment_max(-m, ids, 4))

        ours, ours_vjp = jax.vjp(lambda x: segment_moments(x, receivers, 4, act), pre)
        theirs, theirs_vjp = jax.vjp(plain, pre)
        finite = [jnp.where(jnp.isfinite(t), t, 0.0) for t in theirs]  # node 1's ±inf
        assert_close([jnp.where(jnp.isfinite(o), o, 0.0) for o in ours], finite)
        cotangents = tuple(jnp.asarray(rng.standard_normal(t.shape), jnp.float32) for t in theirs)
        assert_close(ours_vjp(cotangents), theirs_vjp(cotangents))


def test_normalize_matches_a_layer_norm_without_scale_and_shift():
    x = jnp.asarray(np.random.default_rng(1).standard_normal((7, 3, 16)) * 3 + 1, jnp.float32)
    plain = nn.LayerNorm(use_scale=False, use_bias=False)
    ours, ours_vjp = jax.vjp(normalize, x)
    theirs, theirs_vjp = jax.vjp(lambda v: plain.apply({}, v), x)
    assert_close(ours, theirs)
    d_out = jnp.asarray(np.random.default_rng(2).standard_normal(x.shape), jnp.float32)
    assert_close(ours_vjp(d_out), theirs_vjp(d_out))


@pytest.mark.parametrize("encoder", ["ng_gnn", "ng_transformer"])
def test_encoder_matches_the_plain_reference(encoder):
    """Same parameter tree and initial values, same outputs, same gradients for parameters and
    input weights (a conv space: edges carry 9 kernel taps; 2 layers, so a real scan)."""
    space = build("small_cnn", input_shape=(8, 8, 1), channels=4, num_layers=2).weight_space
    config = {"dim": 16, "num_layers": 2, "head_widths": (16,)}
    ours = build_encoder(encoder, space, **config, **({"heads": 2} if encoder != "ng_gnn" else {}))
    plain = PlainEncoder(space, encoder != "ng_gnn", **config)
    batch = random_population(space, 3, seed=3)
    # Both models in one compiled function, twice: compiling is the slow part.
    variables, plain_variables = run(lambda key, x: (ours.init(key, x), plain.init(key, x)),
                                     jax.random.key(0), batch)
    assert jax.tree.structure(variables) == jax.tree.structure(plain_variables)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(variables),
                                                    jax.tree.leaves(plain_variables)))

    def value_and_grads(v, x):
        return [jax.value_and_grad(lambda v, x: model.apply(v, x).sum(), (0, 1))(v, x)
                for model in (ours, plain)]

    assert_close(*run(value_and_grads, variables, batch))


def test_peak_memory_is_linear_in_batch_and_about_one_edge_state_per_layer():
    """Compiled forward + backward (nothing runs): bytes per edge per network agree at batch 8
    and 64 (linear growth), and two more layers add about one stored (E, B, D) edge state each
    (their inputs; the layers themselves are recomputed in the backward pass, one at a time)."""
    name, config = SPACES["mlp-mnist1d"]
    space = build(name, **config).weight_space
    edges, dim = neural_graph(space).num_edges, 16
    per_edge = {}
    for batch, layers in ((8, 2), (64, 2), (8, 4)):
        peak = graph_memory(space, batch, dim=dim, num_layers=layers)["peak_bytes"]
        per_edge[batch, layers] = peak / batch / edges
    assert per_edge[8, 2] == pytest.approx(per_edge[64, 2], rel=0.1)
    edge_state = dim * 4  # float32 bytes per edge per network
    assert (per_edge[8, 4] - per_edge[8, 2]) / 2 < 2 * edge_state, per_edge
