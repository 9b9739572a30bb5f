"""The description of a network family's weight space: tensors, shapes and permutation groups.

A `WeightSpace` is the single source of truth every other part of wsl derives from: flattening
to vectors, permuting hidden units, random symmetries, alignment, encoders and generators.

Conventions
-----------
* A tensor is named by its path in the flax params dict, written ``"conv_0/kernel"``.
* Each axis of each tensor carries either a permutation-group name or ``None`` (not permutable:
  input pixels, classes, kernel taps). Two axes carrying the same name are permuted together,
  which is how layers are linked and how a residual stream shares one permutation.
* A permutation of a group of size n is an int array ``p`` of shape (n,); applying it to an axis
  gathers ``new[i] = old[p[i]]``.
* A population is the same pytree with a leading model axis; every method accepts one model or a
  population and keeps leading axes.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from wsl.config import FrozenMap
from wsl.errors import WslError

Params = Mapping[str, Any]
Permutation = Mapping[str, Any]  # group name -> int array (n,) or (models, n)

SCHEMA_VERSION = 1


class WeightSpaceError(WslError, ValueError):
    """A params tree, permutation or spec does not match the weight space it is used with."""


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One parameter tensor: its path, its shape and the permutation group of every axis."""

    path: str
    shape: tuple[int, ...]
    axes: tuple[str | None, ...]

    def __post_init__(self):
        # Tuples, so that a spec built from lists (JSON) is still hashable.
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        object.__setattr__(self, "axes", tuple(self.axes))

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self.path.split("/"))


def _walk(tree: Params, prefix: tuple[str, ...] = ()):
    """Yield (path, leaf) of a nested dict in insertion order (flax keeps definition order)."""
    for key, value in tree.items():
        if isinstance(value, Mapping):
            yield from _walk(value, prefix + (str(key),))
        else:
            yield "/".join(prefix + (str(key),)), value


def _get(tree: Params, path: str):
    node: Any = tree
    for key in path.split("/"):
        if not isinstance(node, Mapping) or key not in node:
            raise WeightSpaceError(f"params has no tensor {path!r}")
        node = node[key]
    return node


def _shape(leaf) -> tuple[int, ...]:
    # ShapeDtypeStructs (from jax.eval_shape) describe shapes without holding data.
    return tuple(int(d) for d in (leaf.shape if hasattr(leaf, "shape") else np.shape(leaf)))


def nest_paths(flat: Mapping[str, Any]) -> dict:
    """``{"a/b": x}`` -> ``{"a": {"b": x}}``: the params pytree of flat, slash-joined paths."""
    out: dict = {}
    for path, value in flat.items():
        node = out
        *parents, leaf = path.split("/")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return out


def check_permutation(perm, n: int, what: str = "permutation") -> None:
    """Raise `WeightSpaceError` unless every row of `perm` (shape (..., n)) holds 0 … n−1 once.

    Cheap (O(size) on the host); `perm` must be concrete (numpy, a list, or a jax array outside
    `jax.jit`). `what` names the permutation in the message.
    """
    if isinstance(perm, jax.core.Tracer):
        raise WeightSpaceError(f"{what} is traced (inside jax.jit) and cannot be checked; check "
                               f"it before the compiled call")
    p = np.asarray(perm)
    if p.shape[-1:] != (n,):
        raise WeightSpaceError(f"{what} has shape {p.shape}; expected (..., {n})")
    if p.dtype.kind not in "iu":
        raise WeightSpaceError(f"{what} has dtype {p.dtype}; a permutation is an integer array "
                               f"holding 0 … {n - 1} once each")
    if p.size == 0:
        return
    rows = p.reshape(-1, n)
    low, high = rows.min(), rows.max()
    if low < 0 or high >= n:
        bad = int(low) if low < 0 else int(high)
        raise WeightSpaceError(f"{what} holds index {bad}, outside 0 … {n - 1}: not a permutation "
                               f"of {n} units")
    seen = np.zeros(rows.shape, bool)
    np.put_along_axis(seen, rows.astype(np.intp), True, axis=-1)
    missing = ~seen.all(axis=-1)
    if missing.any():
        row = int(np.argmax(missing))
        counts = np.bincount(rows[row], minlength=n)
        where = f" (row {row})" if p.ndim > 1 else ""
        raise WeightSpaceError(
            f"{what}{where} repeats index {int(np.argmax(counts > 1))} and misses "
            f"{int(np.argmax(counts == 0))}: not a permutation of {n} units")


@dataclasses.dataclass(frozen=True)
class WeightSpace:
    """Tensors, shapes and permutation groups of one network family.

    Build it with `WeightSpace.from_params(params, axes)`; see the module docstring for conventions.
    It is immutable and hashable (equal spaces hash equal), so it can be a static argument of
    `jax.jit` or a cache key.

    Attributes:
        tensors: the parameter tensors in a stable order: the order of the axes spec, which the
            architectures write input to output.
        nonlinearity: activation that follows each group's units, possibly after a normalisation
            (e.g. ``{"dense_0": "relu"}``);
            needed for scale / sign symmetries and for neural graphs. Groups absent here are linear
            or unknown.
        blocks: for a group whose units are normalised in contiguous blocks (GroupNorm), the
            number of blocks; its symmetries are then only the permutations that move whole
            blocks and permute units within each block.
    """

    tensors: tuple[TensorSpec, ...]
    nonlinearity: Mapping[str, str] = FrozenMap()
    blocks: Mapping[str, int] = FrozenMap()

    def __post_init__(self):
        object.__setattr__(self, "tensors", tuple(self.tensors))
        object.__setattr__(self, "nonlinearity", FrozenMap(self.nonlinearity))
        object.__setattr__(self, "blocks", FrozenMap(self.blocks))
        self._validate()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_params(
        cls,
        params: Params,
        axes: Mapping[str, Sequence[str | None]] | Params,
        nonlinearity: Mapping[str, str] | None = None,
        blocks: Mapping[str, int] | None = None,
    ) -> WeightSpace:
        """Describe `params` (one model) given a group label for every axis of every tensor.

        `axes` is either a flat dict ``{"conv_0/kernel": (None, None, None, "conv_0"), ...}`` or a
        nested dict mirroring `params` with tuples as leaves.
        """
        flat_axes = {p: a for p, a in _walk(axes)} if any(
            isinstance(v, Mapping) for v in axes.values()) else dict(axes)
        leaves = dict(_walk(params))
        missing = [p for p in leaves if p not in flat_axes]
        extra = [p for p in flat_axes if p not in leaves]
        if missing:
            raise WeightSpaceError(f"no axis groups given for tensors {missing}")
        if extra:
            raise WeightSpaceError(f"axis groups given for tensors not in params: {extra}")
        tensors = []
        for path in flat_axes:  # the architecture's order, not the params dict's (often sorted)
            shape = _shape(leaves[path])
            labels = tuple(flat_axes[path])
            if len(labels) != len(shape):
                raise WeightSpaceError(
                    f"tensor {path!r} has shape {shape} ({len(shape)} axes) but "
                    f"{len(labels)} axis groups {labels}")
            tensors.append(TensorSpec(path, shape, labels))
        return cls(tuple(tensors), nonlinearity or {}, blocks or {})

    def _validate(self):
        seen: dict[str, tuple[str, int, int]] = {}
        paths = set()
        for t in self.tensors:
            if t.path in paths:
                raise WeightSpaceError(f"tensor {t.path!r} listed twice")
            paths.add(t.path)
            if len(t.axes) != len(t.shape):
                raise WeightSpaceError(
                    f"tensor {t.path!r}: shape {t.shape} has {len(t.shape)} axes, "
                    f"axes spec {t.axes} has {len(t.axes)}")
            for axis, (group, size) in enumerate(zip(t.axes, t.shape)):
                if group is None:
                    continue
                if group in seen and seen[group][2] != size:
                    other, other_axis, other_size = seen[group]
                    raise WeightSpaceError(
                        f"group {group!r} has size {other_size} on {other!r} axis {other_axis} "
                        f"but size {size} on {t.path!r} axis {axis}")
                seen.setdefault(group, (t.path, axis, size))
        for group, n in self.blocks.items():
            if group not in seen:
                raise WeightSpaceError(f"blocks given for unknown group {group!r}")
            if n < 1 or seen[group][2] % n:
                raise WeightSpaceError(
                    f"group {group!r} of size {seen[group][2]} cannot split into {n} blocks")
        for group in self.nonlinearity:
            if group not in seen:
                raise WeightSpaceError(f"nonlinearity given for unknown group {group!r}")

    # ------------------------------------------------------------------ description
    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(t.path for t in self.tensors)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {t.path: t.shape for t in self.tensors}

    @property
    def num_params(self) -> int:
        return sum(t.size for t in self.tensors)

    @property
    def group_sizes(self) -> dict[str, int]:
        """Size of every permutation group, in order of first appearance."""
        sizes: dict[str, int] = {}
        for t in self.tensors:
            for group, size in zip(t.axes, t.shape):
                if group is not None:
                    sizes.setdefault(group, size)
        return sizes

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(self.group_sizes)

    @property
    def offsets(self) -> dict[str, tuple[int, int]]:
        """(start, end) of every tensor in the flat vector."""
        out, start = {}, 0
        for t in self.tensors:
            out[t.path] = (start, start + t.size)
            start += t.size
        return out

    @property
    def head_paths(self) -> tuple[str, ...]:
        """The output layer's tensors: those of the last tensor's module (an MLP's last kernel
        and bias), the part of a network that is specific to its task's classes."""
        module = self.tensors[-1].path.rsplit("/", 1)[0]
        return tuple(t.path for t in self.tensors if t.path.rsplit("/", 1)[0] == module)

    def tensor(self, path: str) -> TensorSpec:
        for t in self.tensors:
            if t.path == path:
                return t
        raise WeightSpaceError(f"no tensor {path!r}; tensors are {list(self.paths)}")

    def members(self, group: str) -> list[tuple[str, int]]:
        """Every (tensor path, axis) that `group` permutes."""
        return [(t.path, a) for t in self.tensors for a, g in enumerate(t.axes) if g == group]

    def unit_roles(self, group: str) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
        """(writers, readers) of `group`: the (tensor path, axis) pairs where it is the tensor's
        last axis — flax kernels are (..., in, out), so a kernel producing its units, or their
        bias — and those where an earlier axis carries it — a kernel consuming its units.

        The last axis, not the last permuted one: a classifier kernel (hidden, None) reads its
        hidden group. A chain layer has one writing kernel (+ bias) and one reading kernel; a
        residual stream is written and read by many tensors, a normalised group also by its
        ``scale`` and ``bias``.
        """
        if group not in self.group_sizes:
            raise WeightSpaceError(f"no group {group!r}; groups are {list(self.groups)}")
        writers, readers = [], []
        for t in self.tensors:
            for axis, g in enumerate(t.axes):
                if g == group:
                    (writers if axis == len(t.axes) - 1 else readers).append((t.path, axis))
        return writers, readers

    def summary(self) -> str:
        """A human-readable table of tensors, shapes, groups and counts."""
        rows = [("tensor", "shape", "axis groups", "params")]
        for t in self.tensors:
            rows.append((t.path, "×".join(map(str, t.shape)) or "scalar",
                         ", ".join("·" if g is None else g for g in t.axes), f"{t.size:,}"))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        fmt = lambda r: "  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                                  for i, (c, w) in enumerate(zip(r, widths)))
        lines = [fmt(rows[0]), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows[1:]]
        lines.append(f"total {self.num_params:,} parameters in {len(self.tensors)} tensors")
        groups = ", ".join(
            f"{g}({n}{', ' + self.nonlinearity[g] if g in self.nonlinearity else ''}"
            f"{', %d blocks' % self.blocks[g] if g in self.blocks else ''})"
            for g, n in self.group_sizes.items())
        lines.append(f"permutation groups: {groups or 'none'}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"WeightSpace({len(self.tensors)} tensors, {self.num_params:,} params, "
                f"groups={self.group_sizes})")

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "tensors": [{"path": t.path, "shape": list(t.shape), "axes": list(t.axes)}
                        for t in self.tensors],
            "nonlinearity": dict(self.nonlinearity),
            "blocks": dict(self.blocks),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> WeightSpace:
        try:
            version = data.get("schema_version", SCHEMA_VERSION)
            if version != SCHEMA_VERSION:
                raise WeightSpaceError(f"weight space schema version {version} is not supported "
                                       f"(this wsl reads version {SCHEMA_VERSION})")
            tensors = tuple(TensorSpec(str(t["path"]), tuple(int(d) for d in t["shape"]),
                                       tuple(t["axes"])) for t in data["tensors"])
            return cls(tensors, data.get("nonlinearity", {}), data.get("blocks", {}))
        except (KeyError, TypeError) as err:
            raise WeightSpaceError(f"malformed weight space description: "
                                   f"missing or bad {err}") from err

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str) -> WeightSpace:
        return cls.from_dict(json.loads(text))

    # ------------------------------------------------------------------ params <-> vectors
    def batch_shape(self, params: Params) -> tuple[int, ...]:
        """Leading (model) axes of `params`; () for one model. Raises if shapes disagree."""
        lead = None
        for t in self.tensors:
            shape = _shape(_get(params, t.path))
            if len(shape) < len(t.shape) or shape[len(shape) - len(t.shape):] != t.shape:
                raise WeightSpaceError(
                    f"tensor {t.path!r} has shape {shape}; expected {t.shape} "
                    f"with optional leading model axes")
            this = shape[: len(shape) - len(t.shape)]
            if lead is None:
                lead = this
            elif this != lead:
                raise WeightSpaceError(
                    f"tensor {t.path!r} has leading axes {this} but others have {lead}")
        return lead or ()

    def flatten(self, params: Params) -> jax.Array:
        """Concatenate every tensor into one vector per model: shape (*models, num_params)."""
        lead = self.batch_shape(params)
        parts = [jnp.reshape(_get(params, t.path), lead + (t.size,)) for t in self.tensors]
        return jnp.concatenate(parts, axis=-1)

    def unflatten(self, vector) -> dict:
        """Inverse of `flatten`: a nested params dict with the vector's leading axes."""
        shape = np.shape(vector)
        if not shape or shape[-1] != self.num_params:
            raise WeightSpaceError(
                f"vector has shape {shape}; its last axis must be num_params={self.num_params}")
        lead = shape[:-1]
        flat, start = {}, 0
        for t in self.tensors:
            flat[t.path] = jnp.reshape(vector[..., start:start + t.size], lead + t.shape)
            start += t.size
        return nest_paths(flat)

    def map_tensors(self, fn, params: Params) -> dict:
        """Apply fn(spec, array) to every tensor; returns a nested dict in the same layout."""
        return nest_paths({t.path: fn(t, _get(params, t.path)) for t in self.tensors})

    def as_flat_dict(self, params: Params) -> dict[str, Any]:
        return {t.path: _get(params, t.path) for t in self.tensors}

    def width_mask(self, width: int) -> dict[str, np.ndarray]:
        """{path: 0/1 float32 array}: 1 where an entry touches only the first `width` units of
        every permuted axis (groups smaller than `width` are kept whole).

        A network whose other entries are zero computes what the `width`-unit network computes,
        so one padded weight space holds networks of many widths (phase zoos train them in one
        program). That holds only where a group's units do not interact: a group normalised by
        a LayerNorm/GroupNorm (a ``scale`` tensor on it) would see its padded zeros, so it is
        refused.
        """
        if int(width) < 1:
            raise WeightSpaceError(f"width must be >= 1 unit, got {width}")
        normalised = sorted({g for t in self.tensors if t.path.rsplit("/", 1)[-1] == "scale"
                             for g in t.axes if g is not None})
        if normalised:
            raise WeightSpaceError(f"cannot narrow groups {normalised}: a normalisation layer "
                                   f"acts on them and would see the padded units")
        masks = {}
        for t in self.tensors:
            mask = np.ones(t.shape, np.float32)
            for axis, group in enumerate(t.axes):
                if group is not None:
                    keep = (np.arange(t.shape[axis]) < int(width)).astype(np.float32)
                    shape = [-1 if a == axis else 1 for a in range(len(t.shape))]
                    mask = mask * keep.reshape(shape)
            masks[t.path] = mask
        return masks

    def zeros(self, *lead: int, dtype=jnp.float32) -> dict:
        return nest_paths({t.path: jnp.zeros(tuple(lead) + t.shape, dtype) for t in self.tensors})

    # ------------------------------------------------------------------ permutations
    def identity_permutation(self) -> dict[str, jax.Array]:
        return {g: jnp.arange(n) for g, n in self.group_sizes.items()}

    def random_permutation(self, key: jax.Array, num: int | None = None) -> dict[str, jax.Array]:
        """A uniformly random symmetry (one per model when `num` is given: shape (num, n))."""
        if num is not None:
            return jax.vmap(self.random_permutation)(jax.random.split(key, num))
        out = {}
        for (group, n), k in zip(self.group_sizes.items(),
                                 jax.random.split(key, max(len(self.group_sizes), 1))):
            blocks = self.blocks.get(group, 1)
            if blocks == 1:
                out[group] = jax.random.permutation(k, n)
            else:
                # GroupNorm symmetry: move whole blocks, then shuffle units inside each block.
                size = n // blocks
                k_outer, k_inner = jax.random.split(k)
                order = jax.random.permutation(k_outer, blocks)
                inner = jax.vmap(lambda kk: jax.random.permutation(kk, size))(
                    jax.random.split(k_inner, blocks))
                out[group] = (order[:, None] * size + inner).reshape(n)
        return out

    def _check_permutation(self, perms: Permutation, check: bool = True):
        if not isinstance(perms, Mapping):
            raise WeightSpaceError(f"a permutation is a mapping group -> index array; got "
                                   f"{type(perms).__name__}")
        sizes = self.group_sizes
        unknown = set(perms) - set(sizes)
        if unknown:
            raise WeightSpaceError(f"permutation for unknown groups {sorted(unknown, key=str)}; "
                                   f"groups are {list(sizes)}")
        for g, p in perms.items():
            if np.shape(p)[-1:] != (sizes[g],):
                raise WeightSpaceError(
                    f"permutation for group {g!r} has shape {np.shape(p)}; "
                    f"expected (..., {sizes[g]})")
            if check and not isinstance(p, jax.core.Tracer):
                check_permutation(p, sizes[g], f"permutation for group {g!r}")

    def permute(self, params: Params, perms: Permutation, *, check: bool = True) -> dict:
        """Apply a permutation of hidden units; groups missing from `perms` stay as they are.

        `perms[g]` may be (n,) — the same permutation for every model — or (*models, n) with the
        params' leading model axes, one permutation per model.

        Every concrete permutation is checked with `check_permutation` (each row must hold
        0 … n−1 once); a bad one raises `WeightSpaceError`. Under `jax.jit` (traced
        permutations) nothing can be checked: passing valid permutations is then the caller's
        duty, and an invalid one silently gathers wrong entries. ``check=False`` skips the
        check for permutations known to be valid (`random_permutation`, alignments): the check
        costs one host copy of each permutation.
        """
        self._check_permutation(perms, check)
        lead = self.batch_shape(params)

        def permute_tensor(t: TensorSpec, x):
            x = jnp.asarray(x)
            for axis, group in enumerate(t.axes):
                if group is None or group not in perms:
                    continue
                p = jnp.asarray(perms[group])
                ax = len(lead) + axis
                if p.ndim == 1:
                    x = jnp.take(x, p, axis=ax)
                else:
                    if p.shape[:-1] != lead:
                        raise WeightSpaceError(
                            f"permutation for {group!r} has model axes {p.shape[:-1]} but "
                            f"params have {lead}")
                    index = p.reshape(lead + (1,) * axis + (p.shape[-1],)
                                      + (1,) * (len(t.shape) - axis - 1))
                    x = jnp.take_along_axis(x, index, axis=ax)
            return x

        return self.map_tensors(permute_tensor, params)

    @staticmethod
    def invert_permutation(perms: Permutation) -> dict[str, jax.Array]:
        """The permutation that undoes `perms`: permute(permute(x, p), invert(p)) == x."""
        return {g: jnp.argsort(jnp.asarray(p), axis=-1) for g, p in perms.items()}

    @staticmethod
    def compose_permutations(first: Permutation, then: Permutation) -> dict[str, jax.Array]:
        """One permutation equal to applying `first`, then `then` (groups in either are kept)."""
        out = {g: jnp.asarray(p) for g, p in first.items()}
        for g, q in then.items():
            q = jnp.asarray(q)
            if g in out:
                # Broadcast so that one shared permutation composes with per-model ones.
                p, q = jnp.broadcast_arrays(out[g], q)
                out[g] = jnp.take_along_axis(p, q, axis=-1)
            else:
                out[g] = q
        return out
