"""Neural graphs of every weight space: residual streams, norms, multi-head attention; the
neural-graph encoders' exact invariance and sensitivity on every architecture."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wsl.models.encoders import build_encoder
from wsl.models.neural_graph import NeuralGraphError, head_groups, neural_graph, with_io_groups
from wsl.weight_space import TensorSpec, WeightSpace, nest_paths
from wsl.zoos.architectures import build, list_architectures

CONFIGS = {
    "mlp": ("mlp", {"input_shape": (12,), "widths": (8, 8)}),
    "small_cnn": ("small_cnn", {"input_shape": (8, 8, 1), "channels": 4}),
    "cnn_s": ("cnn_s", {}),
    "resnet": ("resnet", {"width": 8, "stages": 2, "blocks_per_stage": 1,
                          "input_shape": (8, 8, 1), "num_classes": 10}),
    "resnet_group": ("resnet", {"input_shape": (8, 8, 1), "width": 4, "stages": 2,
                                "norm": "group", "norm_groups": 2}),
    "transformer": ("transformer", {"patch": 7, "dim": 16, "depth": 1, "heads": 2, "head_dim": 8,
                                    "mlp_dim": 32, "input_shape": (14, 14, 1),
                                    "num_classes": 10}),
}
SMALL = {"ng_gnn": {"dim": 16, "num_layers": 1, "head_widths": (16,)},
         "ng_transformer": {"dim": 16, "num_layers": 1, "heads": 2, "head_widths": (16,)}}
TOLERANCE = 1e-4
MODELS = 3


@functools.lru_cache(maxsize=None)
def space_of(name):
    arch, config = CONFIGS[name]
    return build(arch, **config).weight_space


def one_entry_changed(space, flat, seed=1):
    """One copy of network 0 per tensor, with one random entry of that tensor moved by 5."""
    rng = np.random.default_rng(seed)
    copies = {p: np.repeat(x[:1], len(space.tensors), axis=0) for p, x in flat.items()}
    for i, t in enumerate(space.tensors):
        view = copies[t.path][i].reshape(-1)
        view[rng.integers(t.size)] += 5.0
    return copies


def rel_diff(a, b):
    return float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-12))


@functools.lru_cache(maxsize=None)
def encoder_outputs(encoder, name, random_networks):
    """Outputs on [networks, the same networks randomly permuted (one symmetry each), network 0
    with one entry of tensor i changed for every i], in one compiled program."""
    space = space_of(name)
    flat = random_networks(space, MODELS)
    params = nest_paths(flat)
    changed = nest_paths(one_entry_changed(space, flat))
    model = build_encoder(encoder, space, out_dim=3, **SMALL[encoder])

    @jax.jit
    def run(key):
        permuted = space.permute(params, space.random_permutation(key, num=MODELS), check=False)
        moved = jnp.abs(space.flatten(permuted) - space.flatten(params)).max()
        batch = jax.tree.map(lambda *xs: jnp.concatenate(xs), params, permuted, changed)
        return model.apply(model.init(jax.random.key(0), params), batch), moved

    out, moved = run(jax.random.key(5))
    assert float(moved) > 1e-2, "the permutation must really move parameters"
    out = np.asarray(out)
    assert out.shape == (2 * MODELS + len(space.tensors), 3) and np.isfinite(out).all()
    return out[:MODELS], out[MODELS:2 * MODELS], out[2 * MODELS:]


def test_every_architecture_is_covered():
    assert {a["name"] for a in list_architectures()} <= {a for a, _ in CONFIGS.values()}


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("encoder", ["ng_gnn", "ng_transformer"])
def test_random_permutations_leave_the_output_unchanged(encoder, name, random_networks):
    original, permuted, _ = encoder_outputs(encoder, name, random_networks)
    assert rel_diff(permuted, original) < TOLERANCE
    # different networks, different outputs (an invariant constant would pass the line above)
    assert np.abs(original[1:] - original[0]).sum(-1).min() > 1e-3 * np.abs(original).max()


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("encoder", ["ng_gnn", "ng_transformer"])
def test_every_tensor_is_read(encoder, name, random_networks):
    original, _, changed = encoder_outputs(encoder, name, random_networks)
    change = np.abs(changed - original[:1]).max(-1) / np.abs(original[0]).max()
    # One weight among hundreds moves the output by ~1e-4 relative (measured ≥ 2.5e-4); float32
    # rounding moves it by ≤ 1e-6 (the permutation residual), so 1e-5 separates the two.
    silent = [p for p, c in zip(space_of(name).paths, change) if not c > 1e-5]
    assert not silent, f"changing one entry of {silent} does not change the output"


# ------------------------------------------------------------------------------- structure
def test_transformer_graph():
    space = space_of("transformer")
    graph = neural_graph(space)
    assert head_groups(space) == {"block0_heads"}
    sets = {s.name: s.size for s in graph.node_sets}
    assert sets == {"embed/kernel:in": 49, "stream": 16, "pos_embedding:in": 4,
                    "block0_heads": 2, "block0_heads×block0_qk": 16,
                    "block0_heads×block0_vo": 16, "block0_mlp": 32, "head:out": 10}
    assert graph.num_nodes == sum(sets.values()) == 145
    kernels = {"embed/kernel": 49 * 16, "pos_embedding": 4 * 16,
               "block0_attention/query/kernel": 16 * 16, "block0_attention/key/kernel": 16 * 16,
               "block0_attention/value/kernel": 16 * 16, "block0_attention/out/kernel": 16 * 16,
               "block0_mlp_in/kernel": 16 * 32, "block0_mlp_out/kernel": 32 * 16,
               "head/kernel": 16 * 10}
    counts = np.bincount(graph.edge_type, minlength=graph.num_edge_types)
    assert {et.name: int(c) for et, c in zip(graph.edge_types, counts) if et.tensor} == kernels
    memberships = [et for et in graph.edge_types if et.tensor is None]
    assert len(memberships) == 2 and graph.num_edges == sum(kernels.values()) + 2 * 16
    # query and key write the same (head, qk) nodes: their dot product pairs them
    by_name = {et.name: et for et in graph.edge_types}
    assert (by_name["block0_attention/query/kernel"].receiver
            == by_name["block0_attention/key/kernel"].receiver)
    # a membership edge joins head h to the 8 qk nodes of head h, and nothing else
    offsets, names = graph.node_offsets, [s.name for s in graph.node_sets]
    heads, qk = names.index("block0_heads"), names.index("block0_heads×block0_qk")
    k = graph.edge_types.index(by_name["block0_heads→block0_heads×block0_qk"])
    pick = graph.edge_type == k
    np.testing.assert_array_equal(graph.senders[pick] - offsets[heads], np.repeat([0, 1], 8))
    np.testing.assert_array_equal(graph.receivers[pick] - offsets[qk], np.arange(16))
    # one positional row per permuted set, one per node of a non-permuted set
    assert graph.num_positions == 49 + 4 + 10 + 5
    assert len(set(graph.position_ids()[offsets[qk]:offsets[qk + 1]])) == 1


def test_resnet_graph_shares_the_stream():
    space = space_of("resnet")
    graph = neural_graph(space)
    sets = {s.name: s.size for s in graph.node_sets}
    assert sets == {"stem/kernel:in": 1, "stream_0": 8, "stage0_block0": 8, "stream_1": 16,
                    "stage1_block0": 16, "head:out": 10}
    assert graph.num_nodes == sum(sets.values()) == 59
    pairs = 1 * 8 + 8 * 8 + 8 * 8 + 8 * 16 + 16 * 16 + 16 * 16 + 16 * 10
    assert graph.num_edges == pairs and graph.edge_dim == 9
    # stream_0 is written by the stem and by the block's second conv, read by conv_0 and proj
    by_name = {et.name: et for et in graph.edge_types}
    stream = [s.name for s in graph.node_sets].index("stream_0")
    assert by_name["stem/kernel"].receiver == by_name["stage0_block0_conv_1/kernel"].receiver \
        == by_name["stage0_block0_conv_0/kernel"].sender == by_name["stage1_proj/kernel"].sender \
        == stream
    # the classifier's kernel and bias share one output set
    assert dict(graph.feature_tensors)["head/bias"] == by_name["head/kernel"].receiver


@pytest.mark.parametrize("name", ["resnet", "transformer"])
def test_features_carry_every_weight_once(name, random_networks):
    space = space_of(name)
    graph = neural_graph(space)
    flat = random_networks(space, 2)
    nodes, edges = map(np.asarray, jax.jit(graph.features)(nest_paths(flat)))
    assert nodes.shape == (2, graph.num_nodes, len(graph.feature_tensors))
    assert edges.shape == (2, graph.num_edges, graph.edge_dim)
    features = {p for p, _ in graph.feature_tensors}
    kernels = {et.tensor for et in graph.edge_types if et.tensor}
    assert features | kernels == set(space.paths) and not features & kernels
    for values, paths in [(edges, kernels), (nodes, features)]:
        expect = np.concatenate([flat[p][1].ravel() for p in sorted(paths)])
        np.testing.assert_array_equal(np.sort(values[1][values[1] != 0]), np.sort(expect))


def test_a_norm_scale_is_one_node_feature(random_networks):
    space = space_of("transformer")
    graph = neural_graph(space)
    flat = random_networks(space, 1)
    moved = {p: x.copy() for p, x in flat.items()}
    moved["block0_norm_1/scale"][0, 3] += 1.0
    features = jax.jit(graph.features)
    before, after = (np.asarray(features(nest_paths(f))[0])[0] for f in (flat, moved))
    rows, channels = np.nonzero(after != before)
    stream = [s.name for s in graph.node_sets].index("stream")
    channel = [p for p, _ in graph.feature_tensors].index("block0_norm_1/scale")
    assert rows.tolist() == [graph.node_offsets[stream] + 3] and channels.tolist() == [channel]
    # the same norm's shift is a channel of its own on the same node
    shift = [p for p, _ in graph.feature_tensors].index("block0_norm_1/bias")
    assert shift != channel and after[rows[0], shift] == flat["block0_norm_1/bias"][0, 3]


def test_chain_graph_is_the_chain():
    """On a chain: inputs, hidden layers, outputs in order, edges sorted by receiver, one node
    feature channel per bias."""
    space = space_of("cnn_s")
    graph = neural_graph(space)
    assert graph.sizes == (1, 8, 6, 4, 20, 10) and graph.num_edges == 360
    assert np.all(np.diff(graph.receivers) >= 0)
    assert [et.tensor for et in graph.edge_types] == [p for p in space.paths if "kernel" in p]
    # with the inputs and classes labelled as groups (NFN-NP's view), nothing becomes a head
    assert head_groups(with_io_groups(space_of("mlp"))) == frozenset()


def test_a_structure_the_graph_cannot_express_is_named():
    # a bilinear map of two layers' outputs x and y: three neurons per weight, not two
    space = WeightSpace((TensorSpec("a/kernel", (3, 4), (None, "x")),
                         TensorSpec("b/kernel", (3, 5), (None, "y")),
                         TensorSpec("mix/kernel", (4, 5, 2), ("x", "y", None))))
    with pytest.raises(NeuralGraphError) as err:
        build_encoder("ng_gnn", space)
    message = str(err.value)
    assert message.startswith("encoder 'ng_gnn': tensor 'mix/kernel'") and "\n" not in message
