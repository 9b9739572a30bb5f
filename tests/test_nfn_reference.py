"""Numerical agreement of our NFN layers with the reference implementation of Zhou et al. (2023).

The reference is the `nfn` PyTorch package (github.com/AllanYangZhou/nfn, PyPI ``nfn==0.1.2``,
installed by the ``torch`` extra). Its ``NPLinear`` / ``HNPLinear`` and our
`wsl.models.nfn.NFNLayer` compute the same family of equivariant linear maps with different
parameterisations. Each test builds both layers on one weight space, copies the parameters of one
onto the other, feeds both the same random weight-space features (a batch of 3, 2 channels in,
3 out) and asserts the same outputs to 1e-5, in both directions:

* reference → ours: every reference parameter (randomly initialised by the package) lands in
  exactly one place of ours, so a term missing from our layer would change the outputs;
* ours → reference: every block of our packed weights lands in the reference, so a term missing
  from the reference layer would change the outputs. (One block has no home there: see the
  finding below; its contribution is added to the reference output by a separate explicit formula.)

and, for each direction, that zeroing any single block of the side that received the copy (one
term, or one bias) breaks the agreement by far more than the tolerance, so that no term can be
lost without a test failing.

How the two layers are organised
--------------------------------
Entities: our layer sees each tensor as an array over its permutable neuron sets with every other
axis folded into channels, in the order (fixed neuron axis, conv taps, channel), channel fastest.
Neuron sets are numbered 0 … L (0: the network's inputs, L: its outputs); kernel ``W_i`` reads set
``i`` and writes set ``i + 1``, bias ``b_i`` lies over set ``i + 1``. NP treats every set as
permutable, HNP only 1 … L - 1, so under HNP ``W_0`` carries the ``n_in`` inputs, ``W_{L-1}``
and ``b_{L-1}`` the ``n_out`` outputs in their channels.

Our layer has one term per subset K of neuron sets: each entity containing K is mean-pooled over
its other permutable sets, all of them are concatenated along channels and multiplied by one
matrix, and the result is broadcast back over each target's other sets. The matrix of term K has
one block per (source entity, target entity); the layer has one bias per entity.

The reference writes each output as a sum of 1×1 convolutions / linear maps, each reading a
concatenation of pooled inputs ("pieces"), with channels in the order (channel, conv taps, fixed
neuron axis), channel slowest. Each reference module is one target and one K:

(each line: module — K — pieces read, in order; "row mean" averages over a kernel's output
neurons, "col mean" over its input neurons)

* NP ``layer_i`` — {i, i+1} — W_i pointwise
* NP ``layer_i_r`` — {i} — row mean of W_i; col mean of W_{i-1}, b_{i-1} (if i > 0)
* NP ``layer_i_c``, ``bias_i`` — {i+1} — col mean of W_i; b_i; row mean of W_{i+1} (if i < L-1)
* NP ``layer_i_rc``, ``bias_i_rc`` — {} — global means of every W, then of every b
* HNP ``w0_rpt``, ``bias_0`` — {1} — W_0 (inputs in channels); row mean of W_1; b_0; [L = 2: W_1]
* HNP ``wfin_cpt`` — {L-1} — W_{L-1} (outputs in channels); col mean of W_{L-2}; [L = 2: W_0]
* HNP middle ``layer_i`` — {i, i+1} — W_i pointwise
* HNP middle ``layer_i_r`` — {i} — row mean of W_i; col mean of W_{i-1}; b_{i-1}; [i = 1: W_0]
* HNP middle ``layer_i_c``, ``bias_i`` — {i+1} — col mean of W_i; b_i; row mean of W_{i+1};
  [i = L-2: W_{L-1}]
* HNP ``layer_i_rc``, ``bias_i_rc``, ``w0_rbdcst``, ``bias_0_rc``, ``wfin_cbdcst``, ``bias_fin_rc``
  — {} — global means of every W, then of every b; then W_0's row mean (per input), W_{L-1}'s
  col mean (per output), b_{L-1} (whole)

The mapping (`reference_modules`, `ref_to_ours`, `ours_to_ref`), term by term:

* a reference piece that pools entity S down to K is the block (K, S → target) of our term K,
  after the channel reorder (channel, taps, fixed) ↔ (fixed, taps, channel) on both its input and
  output side (`channel_map`); a 1×1 conv / linear weight ``(out, in)`` is our block transposed;
* pooling is a mean on both sides (no scale factor), except for the *redundant* pieces of HNP:
  the reference also feeds a mean over a fixed (input / output) axis that our layer keeps in
  channels — the global means of W_0, W_{L-1}, b_{L-1}, W_0's column mean (``layer_1_r``, and
  ``wfin_cpt`` when L = 2) and W_{L-1}'s row mean (``layer_{L-2}_c``, and ``w0_rpt`` when L = 2).
  Such a piece equals our block's input averaged over that axis, so reference → ours adds its
  weights divided by the axis size to every entry of the axis (they add to the non-redundant
  piece's weights of the same block); ours → reference sets them to zero. Same function space,
  different (over-complete) parameterisation;
* biases: every reference module has its own bias, and all of a target's modules add up; our
  single per-entity bias is their sum (reference → ours), or is put in the target's first module
  with the others zero (ours → reference).

Finding: the reference HNP layer lacks one term that ours has — b_{L-2} → W_{L-1} through
K = {L-1} (the previous bias, indexed by W_{L-1}'s columns, broadcast along its n_out rows).
``wfin_cpt`` reads W_{L-1} and W_{L-2}'s column mean but not ``biases[L-2]``, although every
middle layer's ``layer_i_r`` reads ``biases[i-1]`` and the reverse map W_{L-1} → b_{L-2} is
present (``bias_{L-2}`` reads W_{L-1}). The map is equivariant under HNP's symmetry, so ours is
the fuller layer; the tests check that this is the only block without a reference counterpart.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wsl.models.neural_graph import layer_chain
from wsl.models.nfn import NFNLayer, nfn_structure
from wsl.models.unf import _plan
from wsl.zoos.architectures import build

torch = pytest.importorskip("torch", reason="torch extra not installed")
pytest.importorskip("nfn", reason="the reference NFN package is not installed (it comes with the "
                                  "torch extra: pip install -e '.[torch]', i.e. nfn==0.1.2)")
from nfn.common import WeightSpaceFeatures, network_spec_from_wsfeat  # noqa: E402
from nfn.layers import HNPLinear, NPLinear  # noqa: E402

BATCH, C_IN, C_OUT = 3, 2, 3
ATOL = RTOL = 1e-5
BROKEN = 1e-3  # a zeroed block must move some output by at least this much
SPACES = {
    "mlp": ("mlp", {"input_shape": (5,), "num_classes": 2, "widths": (4, 3)}),  # 5→4→3→2
    "mlp2": ("mlp", {"input_shape": (5,), "num_classes": 2, "widths": (4,)}),  # L = 2 branches
    # conv 3×3 (2→3), conv 3×3 (3→3), global mean, dense 3→2: conv taps and a dense layer in one
    # chain, and two inputs, so that HNP folds both taps and inputs into channels.
    "cnn": ("small_cnn", {"input_shape": (8, 8, 2), "num_classes": 2, "channels": 3,
                          "num_layers": 2}),
}


# ------------------------------------------------------------------------------------ layout
def W(i):  # noqa: N802 - the paper's name
    """Entity index of kernel i (our structure lists kernel, bias per layer)."""
    return 2 * i


def B(i):  # noqa: N802
    """Entity index of bias i."""
    return 2 * i + 1


def reference_modules(mode: str, num_layers: int):
    """The reference layer's modules as (attribute, K, target entity, pieces), each piece being
    (source entity, redundant): see the module docstring's table. ``redundant``: the reference also
    averages that piece over the source's fixed (input / output) neuron axis."""
    L = num_layers
    full = lambda j: (j, False)
    if mode == "np":
        means = [full(W(i)) for i in range(L)] + [full(B(i)) for i in range(L)]
        out = []
        for i in range(L):
            row = [full(W(i))] + ([full(W(i - 1)), full(B(i - 1))] if i > 0 else [])
            col = [full(W(i)), full(B(i))] + ([full(W(i + 1))] if i < L - 1 else [])
            out += [(f"layer_{i}", (i, i + 1), W(i), [full(W(i))]),
                    (f"layer_{i}_rc", (), W(i), means),
                    (f"layer_{i}_r", (i,), W(i), row),
                    (f"layer_{i}_c", (i + 1,), W(i), col),
                    (f"bias_{i}", (i + 1,), B(i), col),
                    (f"bias_{i}_rc", (), B(i), means)]
        return out
    assert L >= 2, "the reference HNPLinear needs at least two layers"
    rc = ([(W(i), i in (0, L - 1)) for i in range(L)] + [(B(i), i == L - 1) for i in range(L)]
          + [full(W(0)), full(W(L - 1)), full(B(L - 1))])
    rpt = [full(W(0)), (W(1), L == 2), full(B(0))] + ([full(W(1))] if L == 2 else [])
    cpt = [full(W(L - 1)), (W(L - 2), L == 2)] + ([full(W(0))] if L == 2 else [])
    out = [("w0_rpt", (1,), W(0), rpt), ("w0_rbdcst", (), W(0), rc),
           ("bias_0", (1,), B(0), rpt), ("bias_0_rc", (), B(0), rc),
           ("wfin_cpt", (L - 1,), W(L - 1), cpt), ("wfin_cbdcst", (), W(L - 1), rc),
           ("bias_fin_rc", (), B(L - 1), rc)]
    for i in range(1, L - 1):
        row = ([full(W(i)), (W(i - 1), i == 1), full(B(i - 1))]
               + ([full(W(0))] if i == 1 else []))
        col = ([full(W(i)), full(B(i)), (W(i + 1), i == L - 2)]
               + ([full(W(L - 1))] if i == L - 2 else []))
        out += [(f"layer_{i}", (i, i + 1), W(i), [full(W(i))]),
                (f"layer_{i}_rc", (), W(i), rc),
                (f"layer_{i}_r", (i,), W(i), row),
                (f"layer_{i}_c", (i + 1,), W(i), col),
                (f"bias_{i}", (i + 1,), B(i), col),
                (f"bias_{i}_rc", (), B(i), rc)]
    return out


def missing_in_reference(mode: str, num_layers: int) -> set:
    """Blocks (K, source, target) of our layer that the reference has no parameter for."""
    L = num_layers
    return set() if mode == "np" else {((L - 1,), B(L - 2), W(L - 1))}


def taps_and_fixed(entity) -> tuple[int, int]:
    """(conv taps T, fixed neurons F) folded into an entity's channels: fold = F · T."""
    taps = int(np.prod([n for a, n in enumerate(entity.shape) if a not in entity.neuron_axes]))
    return taps, entity.fold // taps


def channel_map(entity, channels: int, redundant: bool = False) -> np.ndarray:
    """For each of our folded channel indices (fixed f, tap t, channel c), c fastest, the reference
    index (c, t, f), f fastest; for a redundant piece (averaged over f), the index (c, t)."""
    taps, fixed = taps_and_fixed(entity)
    f, t, c = np.meshgrid(np.arange(fixed), np.arange(taps), np.arange(channels), indexing="ij")
    ref = c * taps + t if redundant else (c * taps + t) * fixed + f
    return ref.reshape(-1)


class Ours:
    """Our NFNLayer on a structure, with its packed weights as numpy views per block / bias."""

    def __init__(self, structure):
        self.structure = structure
        self.terms, bounds = _plan(structure, C_IN, C_OUT)
        self.packed = np.zeros(bounds.shape, np.float32)
        self.blocks, self.biases = {}, []
        for term in self.terms:
            kernel = self.packed[term.offset:term.offset + term.size]
            kernel = kernel.reshape(term.rows, sum(term.cols))
            rows = np.cumsum([0] + [structure[j].fold * C_IN for j in term.members])
            cols = np.cumsum((0,) + term.cols)
            for a, src in enumerate(term.members):
                for b, tgt in enumerate(term.members):
                    self.blocks[term.keep, src, tgt] = kernel[rows[a]:rows[a + 1],
                                                              cols[b]:cols[b + 1]]
        start = self.terms[-1].offset + self.terms[-1].size
        for e in structure:
            self.biases.append(self.packed[start:start + e.fold * C_OUT])
            start += e.fold * C_OUT
        assert start == self.packed.size
        for view in list(self.blocks.values()) + self.biases:
            assert np.shares_memory(view, self.packed)

    @functools.cached_property
    def _apply(self):
        layer = NFNLayer(self.structure, C_IN, C_OUT)
        shapes = jax.eval_shape(layer.init, jax.random.key(0),
                                [jnp.zeros((1,) + e.perm_sizes + (e.fold * C_IN,))
                                 for e in self.structure])
        assert shapes["params"]["weights"].shape == self.packed.shape
        return jax.jit(lambda w, x: layer.apply({"params": {"weights": w}}, x))

    def __call__(self, features) -> list[np.ndarray]:
        """Folded inputs → folded outputs, one (B, *perm_sizes, fold · C) array per entity."""
        return [np.asarray(o) for o in self._apply(jnp.asarray(self.packed), features)]


# --------------------------------------------------------------------- the two sides' formats
def ref_kernel(x: np.ndarray) -> np.ndarray:
    """Our (B, *taps, in, out, C) → the reference's (B, C, out, in, *taps)."""
    taps = x.ndim - 4
    return x.transpose((0, x.ndim - 1, taps + 2, taps + 1) + tuple(range(1, taps + 1)))


def our_kernel(x: np.ndarray) -> np.ndarray:
    """Inverse of `ref_kernel`."""
    taps = x.ndim - 4
    return x.transpose((0,) + tuple(range(4, 4 + taps)) + (3, 2, 1))


class Case:
    """One weight space and mode: the random features in both formats, both layers."""

    def __init__(self, space: str, mode: str, seed: int = 0):
        name, config = SPACES[space]
        self.chain = layer_chain(build(name, **config).weight_space)
        self.mode, self.L = mode, self.chain.num_layers
        self.structure = nfn_structure(self.chain, mode)
        for i, layer in enumerate(self.chain.layers):
            assert self.structure[W(i)].path == layer.kernel
            assert self.structure[B(i)].path == layer.bias
        self.modules = reference_modules(mode, self.L)
        rng = np.random.default_rng(seed)
        self.x = {e.path: rng.standard_normal((BATCH,) + e.shape + (C_IN,)).astype(np.float32)
                  for e in self.structure}
        self.ours_in = [e.fold_in(jnp.asarray(self.x[e.path])) for e in self.structure]
        self.ref_in = self.to_ref(self.x)
        torch.manual_seed(seed)
        layer = NPLinear if mode == "np" else HNPLinear
        self.ref = layer(network_spec_from_wsfeat(self.ref_in), C_IN, C_OUT)
        self.ours = Ours(self.structure)

    def to_ref(self, x: dict):
        weights = [torch.from_numpy(np.ascontiguousarray(ref_kernel(x[layer.kernel])))
                   for layer in self.chain.layers]
        biases = [torch.from_numpy(np.ascontiguousarray(x[layer.bias].transpose(0, 2, 1)))
                  for layer in self.chain.layers]
        return WeightSpaceFeatures(weights, biases)

    def ref_out(self) -> list[np.ndarray]:
        """The reference layer's output on the features, in our folded layout per entity."""
        with torch.no_grad():
            out = self.ref(self.ref_in)
        arrays = {}
        for layer, w, b in zip(self.chain.layers, out.weights, out.biases):
            arrays[layer.kernel] = our_kernel(w.numpy())
            arrays[layer.bias] = b.numpy().transpose(0, 2, 1)
        return [np.asarray(e.fold_in(jnp.asarray(arrays[e.path]))) for e in self.structure]

    def module(self, name):
        m = getattr(self.ref, name)
        return m.weight.detach().numpy().reshape(m.weight.shape[0], -1), m.bias.detach().numpy()

    def piece_columns(self, pieces):
        """Column ranges of each piece in a module's input."""
        start, spans = 0, []
        for src, redundant in pieces:
            taps, fixed = taps_and_fixed(self.structure[src])
            width = C_IN * taps * (1 if redundant else fixed)
            spans.append((start, start + width))
            start += width
        return spans, start

    def ref_to_ours(self):
        """Copy the reference's parameters into ours (see the module docstring)."""
        self.ours.packed[:] = 0
        for name, keep, tgt, pieces in self.modules:
            weight, bias = self.module(name)
            out_map = channel_map(self.structure[tgt], C_OUT)
            spans, width = self.piece_columns(pieces)
            assert weight.shape == (len(out_map), width), name
            for (src, redundant), (lo, hi) in zip(pieces, spans):
                in_map = channel_map(self.structure[src], C_IN, redundant)
                scale = taps_and_fixed(self.structure[src])[1] if redundant else 1
                self.ours.blocks[keep, src, tgt] += weight[:, lo:hi][np.ix_(out_map, in_map)].T \
                    / scale
            self.ours.biases[tgt] += bias[out_map]

    def ours_to_ref(self, seed: int = 1):
        """Random parameters for ours, copied into the reference (see the module docstring)."""
        rng = np.random.default_rng(seed)
        self.ours.packed[:] = rng.uniform(-0.5, 0.5, self.ours.packed.shape)
        biased = set()
        with torch.no_grad():
            for name, keep, tgt, pieces in self.modules:
                m = getattr(self.ref, name)
                weight = np.zeros(m.weight.shape, np.float32).reshape(m.weight.shape[0], -1)
                out_map = channel_map(self.structure[tgt], C_OUT)
                spans, _ = self.piece_columns(pieces)
                for (src, redundant), (lo, hi) in zip(pieces, spans):
                    if not redundant:
                        in_map = channel_map(self.structure[src], C_IN)
                        weight[np.ix_(out_map, lo + in_map)] = self.ours.blocks[keep, src, tgt].T
                m.weight.copy_(torch.from_numpy(weight).reshape(m.weight.shape))
                bias = np.zeros(m.bias.shape, np.float32)
                if tgt not in biased:
                    bias[out_map] = self.ours.biases[tgt]
                    biased.add(tgt)
                m.bias.copy_(torch.from_numpy(bias))

    def missing_terms(self) -> list[np.ndarray]:
        """The contribution of our blocks that the reference has no parameter for, each written
        out by hand: b_{L-2}[k] → W_{L-1}[:, k] is a per-neuron matmul, as K = {L-1} is all of
        both entities' permutable sets (no pooling, no broadcast)."""
        extra = [np.zeros_like(o) for o in self.ref_out()]
        for keep, src, tgt in missing_in_reference(self.mode, self.L):
            assert self.structure[src].perm_sets == keep == self.structure[tgt].perm_sets
            extra[tgt] += np.asarray(self.ours_in[src]) @ self.ours.blocks[keep, src, tgt]
        return extra


def assert_agree(ours, expected, what=""):
    for j, (a, b) in enumerate(zip(ours, expected)):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL, err_msg=f"{what} entity {j}")


def disagreement(ours, expected) -> float:
    return max(float(np.abs(a - b).max()) for a, b in zip(ours, expected))


CASES = [(space, mode) for space in SPACES for mode in ("np", "hnp")]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny convolutions: torch's thread pool only adds waits (50x slower on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("space,mode", CASES)
def test_every_block_has_one_reference_counterpart(space, mode):
    """Each block of our layer is read by exactly one non-redundant reference piece, except the
    ones listed in `missing_in_reference`; every reference module has a matching term and size."""
    case = Case(space, mode)
    found = {}
    for name, keep, tgt, pieces in case.modules:
        _, width = case.piece_columns(pieces)
        assert case.module(name)[0].shape[1] == width, name
        for src, redundant in pieces:
            assert (keep, src, tgt) in case.ours.blocks, (name, keep, src, tgt)
            if not redundant:
                found.setdefault((keep, src, tgt), []).append(name)
    assert all(len(v) == 1 for v in found.values()), found
    assert set(case.ours.blocks) - set(found) == missing_in_reference(mode, case.L)
    assert {t for _, _, t, _ in case.modules} == set(range(len(case.structure)))
    # and every reference parameter is one of the modules above
    names = {name for name, *_ in case.modules}
    assert {n.split(".")[0] for n, _ in case.ref.named_parameters()} == names


@pytest.mark.parametrize("space,mode", CASES)
def test_reference_parameters_in_ours(space, mode):
    """The package's randomly initialised layer, copied into ours: the same outputs; and zeroing
    any one piece of any reference module (or its bias) afterwards breaks the agreement."""
    case = Case(space, mode)
    case.ref_to_ours()
    ours = case.ours(case.ours_in)
    assert_agree(ours, case.ref_out(), f"{space} {mode} reference → ours")
    with torch.no_grad():
        for name, _, _, pieces in case.modules:
            m = getattr(case.ref, name)
            weight = m.weight.view(m.weight.shape[0], -1)
            spans, _ = case.piece_columns(pieces)
            for (src, redundant), (lo, hi) in zip(pieces, spans):
                kept = weight[:, lo:hi].clone()
                weight[:, lo:hi] = 0
                gap = disagreement(ours, case.ref_out())
                weight[:, lo:hi] = kept
                assert gap > BROKEN, f"{name} piece {src} (redundant={redundant}) did not matter"
            kept = m.bias.clone()
            m.bias.zero_()
            gap = disagreement(ours, case.ref_out())
            m.bias.copy_(kept)
            assert gap > BROKEN, f"{name} bias did not matter"
    assert_agree(ours, case.ref_out(), "after restoring")


@pytest.mark.parametrize("space,mode", CASES)
def test_our_parameters_in_reference(space, mode):
    """Our layer with random parameters, copied into the package's: the same outputs (plus the
    terms the reference lacks, written out by hand); and zeroing any one block or bias of ours
    afterwards breaks the agreement."""
    case = Case(space, mode)
    case.ours_to_ref()
    expected = [r + e for r, e in zip(case.ref_out(), case.missing_terms())]
    assert_agree(case.ours(case.ours_in), expected, f"{space} {mode} ours → reference")
    for key, view in list(case.ours.blocks.items()) + list(enumerate(case.ours.biases)):
        kept = view.copy()
        view[...] = 0
        gap = disagreement(case.ours(case.ours_in), expected)
        view[...] = kept
        assert gap > BROKEN, f"our block {key} did not matter"
    assert_agree(case.ours(case.ours_in), expected, "after restoring")
