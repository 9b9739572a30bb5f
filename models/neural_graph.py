"""The neuron-level view of a chain-shaped WeightSpace: its layer chain and its neural graph.

A *chain* is a network whose tensors are linear maps applied one after another: every kernel has
its input-neuron axis second to last and its output-neuron axis last (flax layout), any axes
before those are non-permuted "taps" (conv kernel positions, or the spatial positions of a
flatten between a conv and a dense layer), and every kernel may have one bias over its output
neurons. MLP, SmallCNN and CNN-s weight spaces are chains; residual or attention weight spaces
are not, and `layer_chain` says why.

Neuron sets are numbered 0 (the network's inputs) to L (its outputs); hidden set l is the
permutation group of layer l's output axis. The NFN layers and the neural-graph encoders both
derive their structure from here, so that nothing is written per architecture.
"""

from __future__ import annotations

import dataclasses
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


@dataclasses.dataclass(frozen=True, eq=False)
class NeuralGraph:
    """Neurons as nodes, weights as edges (Kofinas et al. 2024), as static numpy index arrays.

    Nodes are numbered set by set: the inputs, each hidden layer, the outputs. Edges run from an
    input neuron of a layer to one of its output neurons and are sorted by receiving node. The
    memory of everything built on it grows with the number of edges, never with nodes².

    Attributes:
        chain: the layer chain the graph was built from.
        node_set: (N,) neuron set (0 … L) of every node.
        senders, receivers: (E,) node ids of every edge.
        edge_layer: (E,) chain layer of every edge.
        edge_dim: features per edge: the largest kernel fan; smaller ones are zero-padded.
    """

    chain: LayerChain
    node_set: np.ndarray
    senders: np.ndarray
    receivers: np.ndarray
    edge_layer: np.ndarray
    edge_dim: int

    @property
    def num_nodes(self) -> int:
        return int(self.node_set.shape[0])

    @property
    def num_edges(self) -> int:
        return int(self.senders.shape[0])

    @property
    def node_offsets(self) -> np.ndarray:
        """First node id of every neuron set, and the node count at the end (length L + 2)."""
        return np.concatenate([[0], np.cumsum(self.chain.sizes)])

    def position_ids(self) -> np.ndarray:
        """(N,) positional-embedding row of every node.

        Input and output neurons each get their own row, which breaks their (non-)symmetry; all
        hidden neurons of one layer share a row, so they stay interchangeable.
        """
        sizes = self.chain.sizes
        n_in, n_out, n_hidden_sets = sizes[0], sizes[-1], len(sizes) - 2
        ids = [np.arange(n_in)]
        ids += [np.full(n, n_in + l, np.int32) for l, n in enumerate(sizes[1:-1])]
        ids.append(n_in + n_hidden_sets + np.arange(n_out))
        return np.concatenate(ids).astype(np.int32)

    @property
    def num_positions(self) -> int:
        sizes = self.chain.sizes
        return sizes[0] + (len(sizes) - 2) + sizes[-1]

    def degrees(self) -> tuple[np.ndarray, np.ndarray]:
        """(in-degree, out-degree) of every node."""
        return (np.bincount(self.receivers, minlength=self.num_nodes),
                np.bincount(self.senders, minlength=self.num_nodes))

    def features(self, params) -> tuple:
        """Node features (*lead, N) — the bias, 0 for inputs — and edge features (*lead, E, F)."""
        kernels = self.chain.kernels(params)
        lead = kernels[0].shape[:-3]
        edges = []
        for layer, kernel in zip(self.chain.layers, kernels):
            # Receiver-major order (out, in) matches the edge list, sorted by receiver.
            kernel = jnp.swapaxes(kernel, -3, -2).reshape(
                lead + (layer.out_size * layer.in_size, layer.fan))
            pad = [(0, 0)] * (kernel.ndim - 1) + [(0, self.edge_dim - layer.fan)]
            edges.append(jnp.pad(kernel, pad))
        biases = self.chain.biases(params, lead)
        inputs = jnp.zeros(lead + (self.chain.sizes[0],), biases[0].dtype)
        nodes = jnp.concatenate([inputs] + [b.astype(inputs.dtype) for b in biases], axis=-1)
        return nodes, jnp.concatenate(edges, axis=-2)


def neural_graph(weight_space_or_chain: WeightSpace | LayerChain) -> NeuralGraph:
    """Build the neural graph of a chain-shaped weight space."""
    chain = (weight_space_or_chain if isinstance(weight_space_or_chain, LayerChain)
             else layer_chain(weight_space_or_chain))
    sizes = chain.sizes
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    node_set = np.concatenate([np.full(n, s, np.int32) for s, n in enumerate(sizes)])
    senders, receivers, edge_layer = [], [], []
    for layer in chain.layers:
        out_ids, in_ids = np.meshgrid(np.arange(layer.out_size), np.arange(layer.in_size),
                                      indexing="ij")
        senders.append(offsets[layer.index] + in_ids.ravel())
        receivers.append(offsets[layer.index + 1] + out_ids.ravel())
        edge_layer.append(np.full(layer.out_size * layer.in_size, layer.index, np.int32))
    return NeuralGraph(chain, node_set, np.concatenate(senders).astype(np.int32),
                       np.concatenate(receivers).astype(np.int32),
                       np.concatenate(edge_layer), max(layer.fan for layer in chain.layers))

