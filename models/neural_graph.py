"""The neuron-level views of a WeightSpace: its layer chain (if it is one) and its neural graph.

A *chain* is a network whose tensors are linear maps applied one after another: every kernel has
its input-neuron axis second to last and its output-neuron axis last (flax layout), any axes
before those are non-permuted "taps" (conv kernel positions, or the spatial positions of a
flatten between a conv and a dense layer), and every kernel may have one bias over its output
neurons. MLP, SmallCNN and CNN-s weight spaces are chains; residual or attention weight spaces
are not, and `layer_chain` says why. Neuron sets of a chain are numbered 0 (the network's inputs)
to L (its outputs); hidden set l is the permutation group of layer l's output axis. The NFN
layers derive their structure from the chain.

The *neural graph* (`neural_graph`) reads any weight space — chains, residual streams, multi-head
attention — from its tensors' axis groups alone: permutation groups are node sets, kernels are
edges, 1-D tensors are node features (see `neural_graph` for the rules). On a chain it has the
chain's nodes, in the chain's order, and the chain's edges. The neural-graph encoders are built
on it, so that nothing is written per architecture.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np

from wsl.weight_space import WeightSpace, WeightSpaceError


def tensor_at(params, path: str):
    """The tensor at a ``"layer/kernel"`` path of a nested params dict, with a clear error."""
    node = params
    for key in path.split("/"):
        if not isinstance(node, Mapping) or key not in node:
            raise WeightSpaceError(f"params has no tensor {path!r}")
        node = node[key]
    return jnp.asarray(node)


class ChainError(WeightSpaceError):
    """A weight space is not a chain of linear layers, so chain-based encoders cannot read it."""


@dataclasses.dataclass(frozen=True)
class ChainLayer:
    """One linear map of a chain: neuron set `index` → neuron set `index + 1`.

    Attributes:
        index: position in the chain, 0 for the layer that reads the network's inputs.
        kernel: path of the kernel, shape ``(*taps, in_size, out_size)``.
        bias: path of the bias over the output neurons, or None.
        in_group, out_group: permutation groups of the input / output neurons; None for the
            network's own inputs and outputs.
        taps: sizes of the kernel's leading non-permuted axes (conv taps, flatten positions);
            they travel together as the features of one (input neuron, output neuron) pair.
    """

    index: int
    kernel: str
    bias: str | None
    in_group: str | None
    out_group: str | None
    in_size: int
    out_size: int
    taps: tuple[int, ...]

    @property
    def fan(self) -> int:
        """Number of kernel entries per (input neuron, output neuron) pair."""
        return int(np.prod(self.taps, dtype=np.int64))


@dataclasses.dataclass(frozen=True)
class LayerChain:
    """The ordered linear layers of a chain-shaped weight space (see the module docstring)."""

    layers: tuple[ChainLayer, ...]

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def sizes(self) -> tuple[int, ...]:
        """Neurons in every neuron set: inputs, each hidden layer, outputs (length L + 1)."""
        return (self.layers[0].in_size,) + tuple(layer.out_size for layer in self.layers)

    def kernels(self, params) -> list:
        """Each layer's kernel moved to ``(*lead, in, out, fan)``: taps flattened last."""
        out = []
        for layer in self.layers:
            kernel = tensor_at(params, layer.kernel)
            lead = kernel.shape[: kernel.ndim - len(layer.taps) - 2]
            taps_axes = tuple(range(len(lead), len(lead) + len(layer.taps)))
            kernel = jnp.moveaxis(kernel, taps_axes, tuple(range(-len(taps_axes), 0)))
            out.append(kernel.reshape(lead + (layer.in_size, layer.out_size, layer.fan)))
        return out

    def biases(self, params, lead: tuple[int, ...]) -> list:
        """Each layer's bias ``(*lead, out)``; zeros for a layer without one."""
        return [tensor_at(params, layer.bias) if layer.bias is not None
                else jnp.zeros(lead + (layer.out_size,), jnp.float32) for layer in self.layers]


def layer_chain(weight_space: WeightSpace) -> LayerChain:
    """Read the chain of linear layers out of `weight_space`, or raise `ChainError` saying why
    not."""
    kernels = [t for t in weight_space.tensors if len(t.shape) >= 2]
    vectors = [t for t in weight_space.tensors if len(t.shape) == 1]
    scalars = [t.path for t in weight_space.tensors if len(t.shape) == 0]
    if scalars:
        raise ChainError(f"scalar tensors {scalars} have no place in a chain of linear layers")
    if not kernels:
        raise ChainError("weight space has no kernel (a tensor with at least 2 axes)")
    for t in kernels:
        if any(g is not None for g in t.axes[:-2]):
            raise ChainError(
                f"kernel {t.path!r} has permuted axes {t.axes}, not only its last two (input, "
                f"output neurons): multi-head attention weights are not a chain")

    last = len(kernels) - 1
    layers: list[dict] = []
    for i, t in enumerate(kernels):
        in_group, out_group = t.axes[-2], t.axes[-1]
        if i == 0 and in_group is not None:
            raise ChainError(f"first kernel {t.path!r} reads permutable neurons {in_group!r}; "
                             f"a chain's first layer must read the (non-permuted) inputs")
        if i > 0 and in_group != layers[-1]["out_group"]:
            raise ChainError(
                f"kernel {t.path!r} reads neuron group {in_group!r} but the previous kernel "
                f"{layers[-1]['kernel']!r} writes {layers[-1]['out_group']!r}; kernels must be "
                f"listed input to output, each reading what the one before writes")
        if i < last and out_group is None:
            raise ChainError(f"kernel {t.path!r} writes non-permuted neurons but is not the "
                             f"last layer; hidden neurons need a permutation group")
        if i == last and out_group is not None:
            raise ChainError(f"last kernel {t.path!r} writes permutable group {out_group!r}; "
                             f"the network's outputs must be non-permuted (None)")
        layers.append(dict(index=i, kernel=t.path, bias=None, in_group=in_group,
                           out_group=out_group, in_size=t.shape[-2], out_size=t.shape[-1],
                           taps=tuple(t.shape[:-2])))

    writers: dict[str, list[str]] = {}
    for layer in layers[:-1]:
        writers.setdefault(layer["out_group"], []).append(layer["kernel"])
    for group, kernels_ in writers.items():
        if len(kernels_) > 1:
            raise ChainError(f"hidden group {group!r} is written by {len(kernels_)} kernels "
                             f"({', '.join(map(repr, kernels_))}): a residual stream shared "
                             f"across layers is not a chain")
    for layer in layers[:-1]:
        group = layer["out_group"]
        owners = [p for p, _ in weight_space.members(group)]
        allowed = {layer["kernel"], layers[layer["index"] + 1]["kernel"]}
        strangers = [p for p in owners
                     if p not in allowed and len(weight_space.tensor(p).shape) != 1]
        if strangers:
            raise ChainError(f"group {group!r} also permutes {strangers}; not a chain")

    by_group = {layer["out_group"]: layer for layer in layers}
    for t in vectors:
        layer = by_group.get(t.axes[0])
        if layer is None:
            raise ChainError(f"1-D tensor {t.path!r} over group {t.axes[0]!r} is not the bias "
                             f"of any layer")
        if t.shape[0] != layer["out_size"]:
            raise ChainError(f"bias {t.path!r} has size {t.shape[0]} but kernel "
                             f"{layer['kernel']!r} has {layer['out_size']} outputs")
        if layer["bias"] is not None:
            raise ChainError(f"kernel {layer['kernel']!r} has two 1-D tensors, "
                             f"{layer['bias']!r} and {t.path!r}; normalisation layers "
                             f"(scale / bias) are not part of a chain")
        layer["bias"] = t.path
    return LayerChain(tuple(ChainLayer(**layer) for layer in layers))


def with_io_groups(weight_space: WeightSpace, input_group: str = "input",
                   output_group: str = "output") -> WeightSpace:
    """The same weight space with the input and output neuron axes labelled as permutation groups.

    Permuting the network's inputs or classes is not a symmetry of the network, but it is one of
    the NP neural functional; this lets `WeightSpace.permute` apply such permutations.
    """
    chain = layer_chain(weight_space)
    taken = set(weight_space.groups) & {input_group, output_group}
    if taken:
        raise ChainError(f"group names {sorted(taken)} are already used by the weight space")
    first, final = chain.layers[0], chain.layers[-1]
    relabel = {first.kernel: {-2: input_group}, final.kernel: {-1: output_group}}
    if final.bias is not None:
        relabel[final.bias] = {-1: output_group}
    if first.kernel == final.kernel:
        relabel[first.kernel] = {-2: input_group, -1: output_group}
    data = weight_space.to_dict()
    for tensor in data["tensors"]:
        for axis, group in relabel.get(tensor["path"], {}).items():
            tensor["axes"][axis] = group
    return WeightSpace.from_dict(data)


class NeuralGraphError(WeightSpaceError):
    """A weight space has a tensor that the neural graph cannot express as nodes and edges."""


@dataclasses.dataclass(frozen=True)
class NodeSet:
    """One set of neurons of a `NeuralGraph`.

    Attributes:
        name: the permutation group (``"stream_0"``); the groups of a head product joined by
            ``×`` (``"block0_heads×block0_qk"``); for a non-permuted set, ``"<tensor>:in"`` (a
            kernel's own inputs), ``"<layer>:out"`` (a layer's outputs, shared by its tensors) or
            the path of a scalar tensor.
        groups: the groups whose joint index (row-major, as in the tensors) numbers the nodes;
            ``()`` for a non-permuted set.
        shape: the size of each of those groups' axes, or ``(size,)`` for a non-permuted set.
    """

    name: str
    groups: tuple[str, ...]
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def permuted(self) -> bool:
        return bool(self.groups)


@dataclasses.dataclass(frozen=True)
class EdgeType:
    """The edges of one kernel (every input node → every output node), or the membership edges
    of a head group (head h → every node of the product set that belongs to head h).

    Attributes:
        name: the kernel's path, or ``"<head group>→<product set>"``.
        tensor: the kernel's path; None for membership edges (which carry no weights).
        sender, receiver: node-set ids of the edges' two ends.
        taps: sizes of the kernel's leading non-permuted axes (conv taps, token positions …):
            they travel together as the features of one (input, output) pair.
        head_axis: for membership edges, the position of the head group in the receiver's
            groups.
    """

    name: str
    tensor: str | None
    sender: int
    receiver: int
    taps: tuple[int, ...] = ()
    head_axis: int | None = None

    @property
    def fan(self) -> int:
        """Kernel entries per edge (0 for membership edges)."""
        return 0 if self.tensor is None else int(np.prod(self.taps, dtype=np.int64))


@dataclasses.dataclass(frozen=True, eq=False)
class NeuralGraph:
    """Neurons as nodes, weights as edges (Kofinas et al. 2024), as static numpy index arrays.

    Nodes are numbered node set by node set (`node_sets`, in order of first appearance in the
    weight space; for a chain: the inputs, each hidden layer, the outputs). Edges are numbered
    edge type by edge type (`edge_types`: every kernel in weight-space order, then the head
    membership edges), each kernel's edges in receiver-major order, so that a chain's edges are
    sorted by receiving node. The memory of everything built on it grows with the number of
    edges and nodes, never with nodes².

    Attributes:
        weight_space: the weight space the graph was built from.
        node_sets, edge_types: see `NodeSet` and `EdgeType`.
        feature_tensors: (tensor path, node set id) of every tensor read as node features — biases,
            normalisation scales and shifts, head-product biases, scalars — one feature channel
            each, in this order.
        node_set: (N,) node set of every node.
        senders, receivers: (E,) node ids of every edge.
        edge_type: (E,) edge type of every edge.
        edge_dim: features per edge: the largest kernel fan; smaller ones are zero-padded.
    """

    weight_space: WeightSpace
    node_sets: tuple[NodeSet, ...]
    edge_types: tuple[EdgeType, ...]
    feature_tensors: tuple[tuple[str, int], ...]
    node_set: np.ndarray
    senders: np.ndarray
    receivers: np.ndarray
    edge_type: np.ndarray
    edge_dim: int

    @property
    def num_nodes(self) -> int:
        return int(self.node_set.shape[0])

    @property
    def num_edges(self) -> int:
        return int(self.senders.shape[0])

    @property
    def num_node_sets(self) -> int:
        return len(self.node_sets)

    @property
    def num_edge_types(self) -> int:
        return len(self.edge_types)

    @property
    def num_node_features(self) -> int:
        """Feature channels per node: one per feature tensor (at least one, zero if none)."""
        return max(len(self.feature_tensors), 1)

    @property
    def sizes(self) -> tuple[int, ...]:
        """Nodes in every node set."""
        return tuple(s.size for s in self.node_sets)

    @property
    def node_offsets(self) -> np.ndarray:
        """First node id of every node set, and the node count at the end (length S + 1)."""
        return np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)

    def position_ids(self) -> np.ndarray:
        """(N,) positional-embedding row of every node.

        Every node of a non-permuted set (inputs, classes, token positions) gets its own row,
        which breaks their (non-)symmetry; all nodes of a permuted set share one row — a learned
        node-set embedding — so that they stay interchangeable.
        """
        ids, nxt = [], 0
        for s in self.node_sets:
            if s.permuted:
                ids.append(np.full(s.size, nxt))
                nxt += 1
            else:
                ids.append(nxt + np.arange(s.size))
                nxt += s.size
        return np.concatenate(ids).astype(np.int32)

    @property
    def num_positions(self) -> int:
        return sum(1 if s.permuted else s.size for s in self.node_sets)

    def degrees(self) -> tuple[np.ndarray, np.ndarray]:
        """(in-degree, out-degree) of every node."""
        return (np.bincount(self.receivers, minlength=self.num_nodes),
                np.bincount(self.senders, minlength=self.num_nodes))

    def features(self, params) -> tuple:
        """Node features (*lead, N, C) — channel c holds feature tensor c on its node set, zero
        elsewhere — and edge features (*lead, E, F): the kernel entries of every edge, zero for
        membership edges and for padding."""
        space = self.weight_space
        first = space.tensors[0]
        probe = tensor_at(params, first.path)
        lead = probe.shape[:probe.ndim - len(first.shape)]
        dtype = jnp.result_type(probe.dtype, jnp.float32)
        sizes = self.sizes
        edges = []
        for et in self.edge_types:
            n_in, n_out = sizes[et.sender], sizes[et.receiver]
            if et.tensor is None:
                edges.append(jnp.zeros(lead + (n_out, self.edge_dim), dtype))  # one per node
                continue
            kernel = tensor_at(params, et.tensor).astype(dtype)
            kernel = kernel.reshape(lead + (et.fan, n_in, n_out))
            # Receiver-major order (out, in) matches the edge list.
            kernel = jnp.moveaxis(kernel, -3, -1)
            kernel = jnp.swapaxes(kernel, -3, -2).reshape(lead + (n_out * n_in, et.fan))
            pad = [(0, 0)] * (kernel.ndim - 1) + [(0, self.edge_dim - et.fan)]
            edges.append(jnp.pad(kernel, pad))
        offsets = self.node_offsets
        nodes = jnp.zeros(lead + (self.num_nodes, self.num_node_features), dtype)
        for channel, (path, s) in enumerate(self.feature_tensors):
            values = tensor_at(params, path).astype(dtype).reshape(lead + (sizes[s],))
            nodes = nodes.at[..., offsets[s]:offsets[s + 1], channel].set(values)
        if not edges:  # a weight space without kernels: nodes only
            edges.append(jnp.zeros(lead + (0, self.edge_dim), dtype))
        return nodes, jnp.concatenate(edges, axis=-2)


def head_groups(weight_space: WeightSpace) -> frozenset[str]:
    """Groups that index a product node set together with the group that follows them.

    A tensor with three or more permuted axes (attention's ``(stream, heads, qk)`` query kernel,
    ``(heads, vo, stream)`` out projection) is no input → output map between two neuron sets
    unless some of its axes index one node set jointly. A *head group* is a group that appears
    in such a tensor and, in every tensor it appears in, is immediately followed by another
    permuted axis (so it is never a layer's output): it forms a product node set with what
    follows it — ``heads × qk``, ``heads × vo`` — and a node set of its own that is linked to its
    products by membership edges.
    """
    heads = set()
    for group in weight_space.groups:
        always_followed, wide = True, False
        for t in weight_space.tensors:
            if group not in t.axes:
                continue
            wide |= sum(g is not None for g in t.axes) >= 3
            for axis, g in enumerate(t.axes):
                if g == group and (axis == len(t.axes) - 1 or t.axes[axis + 1] is None):
                    always_followed = False
        if always_followed and wide:
            heads.add(group)
    return frozenset(heads)


def _units(t, heads: frozenset[str]) -> list[tuple[tuple[str | None, ...], tuple[int, ...]]]:
    """A tensor's axes grouped into node-set units: each head group joins the axis after it."""
    units, groups, shape = [], [], []
    for group, size in zip(t.axes, t.shape):
        groups.append(group)
        shape.append(size)
        if group not in heads:
            units.append((tuple(groups), tuple(shape)))
            groups, shape = [], []
    return units


@functools.lru_cache(maxsize=64)
def neural_graph(weight_space: WeightSpace) -> NeuralGraph:
    """Build the neural graph of any weight space, from its tensors' axis groups alone.

    * Node sets: every permutation group (a residual stream is one set, read and written by
      every block, which makes the skip connections implicit); every product of head groups with
      the group after them (see `head_groups`) and every head group itself; for each kernel
      whose input axis is not permuted, its own input set (pixels, token positions, a stem's
      input channels); for each layer whose outputs are not permuted, one output set shared by
      its tensors (the classes of ``head/kernel`` and ``head/bias``); one node per scalar.
    * Edges: a tensor with two or more units (axes after head products are joined) is a kernel
      from its second-to-last unit to its last one; its leading axes must not be permuted and
      are the edge features (conv taps, zero-padded to the largest fan). A head group's nodes
      have membership edges to the product nodes of their head.
    * Node features: every other tensor — 1-D over one set (bias, norm scale and shift),
      a head-product bias, a scalar — is one feature channel of its set's nodes.

    Raises `NeuralGraphError` for a tensor with permuted axes the graph cannot express (more
    than an input and an output set, after head products are joined).
    """
    heads = head_groups(weight_space)
    sets: list[NodeSet] = []
    index: dict[tuple, int] = {}
    memberships: list[EdgeType] = []

    def node_set(key: tuple, name: str, groups: tuple[str, ...], shape: tuple[int, ...]) -> int:
        if key not in index:
            head_sets = [node_set(("group", group), group, (group,), (shape[axis],))
                         for axis, group in enumerate(groups[:-1])]  # a product's head groups
            index[key] = len(sets)
            sets.append(NodeSet(name, groups, shape))
            memberships.extend(EdgeType(f"{group}→{name}", None, head, index[key], head_axis=axis)
                               for axis, (group, head) in enumerate(zip(groups, head_sets)))
        return index[key]

    def permuted_set(groups, shape) -> int:
        return node_set(("group",) + groups, "×".join(groups), groups, shape)

    def layer_output(path: str, size: int) -> int:
        layer = path.rsplit("/", 1)[0]
        return node_set(("out", layer, size), f"{layer}:out", (), (size,))

    kernels: list[EdgeType] = []
    features: list[tuple[str, int]] = []
    for t in weight_space.tensors:
        units = _units(t, heads)
        if not units:  # a scalar: one node of its own
            features.append((t.path, node_set(("scalar", t.path), t.path, (), (1,))))
            continue
        if len(units) > 1:
            taps = units[:-2]
            permuted_taps = [g for groups, _ in taps for g in groups if g is not None]
            if permuted_taps:
                raise NeuralGraphError(
                    f"tensor {t.path!r} with axes {t.axes} has permuted axes {permuted_taps} "
                    f"before its input and output axes: a neural graph's edges join two neurons, "
                    f"not three")
            in_groups, in_shape = units[-2]
            if in_groups[-1] is None:
                in_set = node_set(("in", t.path), f"{t.path}:in", (), in_shape)
            else:
                in_set = permuted_set(in_groups, in_shape)
        out_groups, out_shape = units[-1]
        if out_groups[-1] is None:
            out_set = layer_output(t.path, out_shape[0])
        else:
            out_set = permuted_set(out_groups, out_shape)
        if len(units) == 1:
            features.append((t.path, out_set))
            continue
        kernels.append(EdgeType(t.path, t.path, in_set, out_set,
                                tuple(size for _, (size,) in taps)))

    edge_types = tuple(kernels + memberships)
    sizes = [s.size for s in sets]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    senders, receivers, edge_type = [], [], []
    for k, et in enumerate(edge_types):
        n_out = sizes[et.receiver]
        if et.tensor is None:  # head h → every product node (…, h, …)
            product = sets[et.receiver].shape
            heads_of = np.unravel_index(np.arange(n_out), product)[et.head_axis]
            senders.append(offsets[et.sender] + heads_of)
            receivers.append(offsets[et.receiver] + np.arange(n_out))
            edge_type.append(np.full(n_out, k, np.int32))
            continue
        n_in = sizes[et.sender]
        out_ids, in_ids = np.meshgrid(np.arange(n_out), np.arange(n_in), indexing="ij")
        senders.append(offsets[et.sender] + in_ids.ravel())
        receivers.append(offsets[et.receiver] + out_ids.ravel())
        edge_type.append(np.full(n_out * n_in, k, np.int32))
    node_set_ids = np.concatenate([np.full(n, s, np.int32) for s, n in enumerate(sizes)])

    def cat(parts):
        return np.concatenate(parts).astype(np.int32) if parts else np.zeros(0, np.int32)

    return NeuralGraph(weight_space, tuple(sets), edge_types, tuple(features), node_set_ids,
                       cat(senders), cat(receivers), cat(edge_type),
                       max([et.fan for et in kernels], default=1))
