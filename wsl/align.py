"""Permutation alignment for any WeightSpace: weight matching, activation matching, whole zoos.

Aligning `other` to `reference` finds, for every permutation group, the permutation p such that
``space.permute(other, perms)`` is as close as possible to `reference` — the same function as
`other`, re-expressed in the reference's basis of hidden units.

Weight matching (Git Re-Basin, Ainsworth et al. 2023) maximises Σ_t ⟨W_ref[t], π(W_other)[t]⟩ by
coordinate descent over groups; restarts from random permutations keep each model's best result.
Everything is derived from the weight space's axis labels: for group g, A = Σ over the
(tensor, axis) pairs g permutes of W_ref (axis first, flattened) · (W_other with every other axis
permuted by its current permutation)ᵀ — residual streams that share a group and attention heads
need no special code. A tensor that carries g on two axes (a square
stream-to-stream kernel) makes the objective quadratic in g; its step is linearised at the current
permutation and kept only if the true objective does not fall, so the objective never decreases.
GroupNorm groups (`WeightSpace.blocks`) only get block-respecting permutations.

A population (leading model axis) is aligned in one pass: each group step computes the similarity
matrices of the models it solves in one jit-compiled call — one matrix product against a single
reference — shardable over the model axis with a mesh, and the assignments are solved exactly
(`wsl.assignment`). Models that converged, and models none of whose neighbouring groups moved since
their last solve, are neither computed nor solved; models with NaN or inf weights are data, not
errors: they keep the identity and are flagged in `valid`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from wsl import assignment
from wsl.mesh import round_up, shard_leading
from wsl.weight_space import Params, WeightSpace, WeightSpaceError

_HIGHEST = jax.lax.Precision.HIGHEST
# (tensor path, the axis a group permutes, the tensor's other permuted axes as (axis, group)).
_Term = tuple[str, int, tuple[tuple[int, str], ...]]


@dataclasses.dataclass(frozen=True, eq=False)
class Alignment:
    """The result of aligning `other` to `reference`.

    Attributes:
        perms: group -> int array (*models, n); ``space.permute(other, perms)`` is aligned.
        objective: (*models, sweeps + 1) the objective Σ_t ⟨W_ref, π(W_other)⟩ before the first
            sweep and after each sweep (the final value repeats once a model has converged).
        sweeps: (*models,) sweeps each model ran, the last one finding no improvement.
        valid: (*models,) False for models with NaN/inf weights (left unpermuted).
        restart: (*models,) which restart gave the kept (best) result.
    """

    perms: dict[str, np.ndarray]
    objective: np.ndarray
    sweeps: np.ndarray
    valid: np.ndarray
    restart: np.ndarray

    @property
    def final_objective(self) -> np.ndarray:
        return self.objective[..., -1]

    def apply(self, space: WeightSpace, params: Params) -> dict:
        """`params` (the `other` that was aligned) permuted into the reference's basis."""
        return space.permute(params, self.perms)


# ------------------------------------------------------------------------------ static plans
def _permuted_axes(space: WeightSpace, path: str) -> tuple[tuple[int, str], ...]:
    return tuple((a, g) for a, g in enumerate(space.tensor(path).axes) if g is not None)


def _group_terms(space: WeightSpace, group: str) -> tuple[_Term, ...]:
    return tuple((path, axis, tuple((a, g) for a, g in _permuted_axes(space, path) if a != axis))
                 for path, axis in space.members(group))


def _tensor_plan(space: WeightSpace) -> tuple[tuple[str, tuple[tuple[int, str], ...]], ...]:
    return tuple((t.path, _permuted_axes(space, t.path)) for t in space.tensors)


def _is_quadratic(space: WeightSpace, group: str) -> bool:
    return any(sum(g == group for g in t.axes) > 1 for t in space.tensors)


def _rng(key: jax.Array, *stream: int) -> np.random.Generator:
    """A NumPy generator seeded by the key's bits: deterministic in the key, nothing to compile."""
    return np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist()
                                 + [int(s) for s in stream])


def _random_perms(space: WeightSpace, groups: Sequence[str], num: int,
                  rng: np.random.Generator) -> dict[str, np.ndarray]:
    """`num` random permutations of each group, moving GroupNorm blocks whole."""
    out = {}
    for g in groups:
        n, blocks = space.group_sizes[g], space.blocks.get(g, 1)
        size = n // blocks
        order = rng.permuted(np.tile(np.arange(blocks), (num, 1)), axis=1)
        inner = rng.permuted(np.tile(np.arange(size), (num, blocks, 1)), axis=2)
        out[g] = (order[:, :, None] * size + inner).reshape(num, n).astype(np.int32)
    return out


def group_orders(key: jax.Array | None, groups: Sequence[str], sweeps: int,
                 restart: int = 0) -> list[list[str]]:
    """The order groups are visited in each sweep: a fresh random order per sweep drawn from `key`
    (and the restart number), or the weight space's order (input to output) when `key` is None."""
    return list(_orders(key, list(groups), sweeps, restart))


def _orders(key, groups: list[str], sweeps: int, restart: int):
    """`group_orders`, drawn lazily: a run that converges early draws only what it uses."""
    rng = None if key is None or len(groups) < 2 else _rng(key, restart)
    for _ in range(sweeps):
        yield groups if rng is None else [groups[i] for i in rng.permutation(len(groups))]


# ------------------------------------------------------------------------------ compiled parts
def _take(x, perm, axis):
    return jnp.take(x, perm, axis=axis, mode="clip")


def _rows(tree, index):
    return tree if index is None else {p: jnp.take(a, index, axis=0) for p, a in tree.items()}


@functools.partial(jax.jit, static_argnames=("terms", "n", "ref_batched"))
def _similarity(ref, other, perms, index=None, constant=None, *, terms, n, ref_batched):
    """A for the models `index` of the population (all when None), `perms` theirs, plus their
    rows of `constant` (the part no permutation changes); and each A's scale Σ_i max_j |A_ij|.

    The scale comes from here because NumPy reduces a short last axis slowly: on the host it cost
    more than the products (~0.13 ms a step on the small-CNN zoo)."""
    def flat(x, axis):  # g's axis first, the rest flattened: (n, K)
        return jnp.moveaxis(x, axis, 0).reshape(n, -1)

    def side_by_side(r):  # one reference model's terms: (n, ΣK)
        return jnp.concatenate([flat(r[path], axis) for path, axis, _ in terms], axis=1)

    def permuted(o, p):  # one model's terms, their other axes permuted by `p`: (n, ΣK)
        def term(path, axis, others):
            b = o[path]
            for ax, g in others:
                b = _take(b, p[g], ax)
            return flat(b, axis)
        return jnp.concatenate([term(*t) for t in terms], axis=1)

    other = jax.vmap(permuted)(_rows(other, index), perms)
    if ref_batched:
        ref = jax.vmap(side_by_side)(_rows(ref, index))
        scores = jnp.einsum("mik,mjk->mij", ref, other, precision=_HIGHEST)
    else:
        # One reference: every model's product is a slice of one matrix product, which XLA:CPU
        # runs faster than a batch of small ones.
        models = other.shape[0]
        scores = jnp.matmul(other.reshape(models * n, -1), side_by_side(ref).T,
                            precision=_HIGHEST).reshape(models, n, n).transpose(0, 2, 1)
    if constant is not None:
        scores = scores + (constant if index is None else jnp.take(constant, index, axis=0))
    return scores, jnp.abs(scores).max(-1).sum(-1)


@functools.partial(jax.jit, static_argnames=("plan", "ref_batched"))
def _objective(ref, other, perms, index=None, *, plan, ref_batched):
    """The objective of the models `index` (all when None); `perms` None is the identity."""
    def one(r, o, p):
        total = jnp.zeros((), jnp.float32)
        for path, permuted in plan:
            b = o[path]
            for ax, g in permuted if p is not None else ():
                b = _take(b, p[g], ax)
            total = total + jnp.sum(r[path] * b)
        return total

    ref = _rows(ref, index) if ref_batched else ref
    return jax.vmap(one, in_axes=(0 if ref_batched else None, 0, 0))(ref, _rows(other, index),
                                                                      perms)


def _unless_identity(perms: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray] | None:
    """`perms`, or None when they are all the identity: the objective then needs no gathers,
    which cost more than the products themselves (and both callers agree on the rounding)."""
    identity = all((p == np.arange(p.shape[-1])).all() for p in perms.values())
    return None if identity else perms


# ------------------------------------------------------------------------------ inputs
def _flat_f32(space: WeightSpace, params: Params) -> dict[str, jax.Array]:
    # Arrays already on device in float32 are kept as they are: converting them again costs a
    # device_put per tensor on every call.
    return {p: a if isinstance(a, jax.Array) and a.dtype == jnp.float32
            else jnp.asarray(a, jnp.float32) for p, a in space.as_flat_dict(params).items()}


def _finite(space: WeightSpace, flat: Mapping[str, Any], lead: int) -> np.ndarray:
    ok = None
    for t in space.tensors:
        x = np.asarray(flat[t.path])
        this = np.isfinite(x.reshape(x.shape[:lead] + (-1,))).all(-1)
        ok = this if ok is None else ok & this
    return np.asarray(ok)


def _model_axes(space: WeightSpace, reference: Params, other: Params) -> tuple[bool, bool]:
    """(other has a model axis, reference has one too); checks both against the weight space."""
    lead_o = space.batch_shape(other)
    lead_r = space.batch_shape(reference)
    if len(lead_o) > 1 or len(lead_r) > 1:
        raise WeightSpaceError(f"alignment takes at most one leading model axis; got reference "
                               f"{lead_r} and other {lead_o}")
    if lead_r and lead_r != lead_o:
        raise WeightSpaceError(f"reference has model axis {lead_r} but other has {lead_o}: give "
                               f"one reference, or one per model")
    return bool(lead_o), bool(lead_r)


def _initial_perms(space: WeightSpace, init: Mapping[str, Any] | None, num: int) -> dict:
    perms = {g: np.tile(np.arange(n, dtype=np.int32), (num, 1))
             for g, n in space.group_sizes.items()}
    if init is None:
        return perms
    sizes = space.group_sizes
    for g, p in init.items():
        if g not in sizes:
            raise WeightSpaceError(f"init has a permutation for unknown group {g!r}; groups are "
                                   f"{list(sizes)}")
        p = np.asarray(p)
        if p.shape[-1:] != (sizes[g],) or p.ndim > 2 or (p.ndim == 2 and len(p) != num):
            raise WeightSpaceError(f"init permutation for {g!r} has shape {p.shape}; expected "
                                   f"({sizes[g]},) or ({num}, {sizes[g]})")
        if not (np.sort(p, axis=-1) == np.arange(sizes[g])).all():
            raise WeightSpaceError(f"init for group {g!r} is not a permutation")
        perms[g] = np.array(np.broadcast_to(p, (num, sizes[g])), dtype=np.int32)
    return perms


# ------------------------------------------------------------------------------ weight matching
def _bucket(count: int, total: int, multiple: int) -> int:
    """Batch size for `count` models: 8·4^k (few distinct compiled shapes), a multiple of the
    mesh size, at most the whole (already padded) population."""
    size = 8
    while size < count:
        size *= 4
    return min(round_up(size, multiple), total)


def _descend(space, ref, other, perms, valid, *, groups, orders, tol, ref_batched, solve, mesh):
    """Coordinate descent from `perms` (updated in place); returns (objective history, sweeps).

    The objective after each sweep accumulates the exact gain of every accepted group step (the
    assignment value it adds) on top of the objective computed at the start. Each step computes
    scores only for the models it solves (padded to one of a few batch sizes, so that few shapes
    are compiled): converged models and models whose scores cannot have changed cost nothing.
    """
    num = len(valid)
    plan = _tensor_plan(space)
    sizes, blocks = space.group_sizes, space.blocks
    devices = 1 if mesh is None else int(mesh.devices.shape[0])

    def evaluate(p, index=None):
        return np.asarray(_objective(ref, other, p, index, plan=plan, ref_batched=ref_batched),
                          np.float64)

    objective = evaluate(_unless_identity(perms))
    history = [objective.copy()]
    sweeps = np.zeros(num, np.int64)
    active = valid.copy()
    terms = {g: _group_terms(space, g) for g in groups}
    # Terms no other permutation acts on give a constant part of A: computed once per group.
    constant: dict[str, np.ndarray | None] = {}
    varying = {g: tuple(t for t in terms[g] if t[2]) for g in groups}
    # Each compiled call gets only the tensors and permutations its terms read: every argument
    # costs a transfer and a pytree entry on every call.
    reads = {g: sorted({path for path, _, _ in varying[g]}) for g in groups}
    inputs = {g: ({p: ref[p] for p in reads[g]}, {p: other[p] for p in reads[g]}) for g in groups}
    uses = {g: sorted({h for _, _, others in varying[g] for _, h in others}) for g in groups}
    quadratic = {g: _is_quadratic(space, g) for g in groups}
    # A group's scores change only when a group they read changes: a model none of whose read
    # groups moved since its last solve would get the same optimum again, so it is skipped — the
    # trajectory is the same as re-solving every step. (A quadratic group's own accepted step
    # leaves it clean: it is re-linearised once a neighbour moves.)
    readers = {h: [g for g in groups if h in uses[g] and g != h] for h in sizes}
    stale = {g: np.ones(num, bool) for g in groups}
    for order in orders:
        live = np.flatnonzero(active)
        if not len(live):
            break
        progress = np.zeros(num, bool)
        for g in order:
            models = live[stale[g][live]]
            if not len(models):
                continue
            n = sizes[g]
            size = _bucket(len(models), num, devices)
            index = None if size == num and len(models) == num else \
                np.concatenate([models, np.repeat(models[:1], size - len(models))])
            if g not in constant:
                fixed_terms = tuple(t for t in terms[g] if not t[2])
                fixed = (_similarity(ref, other, perms, terms=fixed_terms, n=n,
                                     ref_batched=ref_batched)[0] if fixed_terms else None)
                # Kept on the device where each step adds its models' rows inside
                # `_similarity`; fetched once where it is the whole score.
                constant[g] = fixed if varying[g] or fixed is None else np.asarray(fixed)
            if varying[g]:
                used = {h: perms[h] if index is None else perms[h][index] for h in uses[g]}
                scores, scale = (np.asarray(a)[:len(models)] for a in _similarity(
                    *inputs[g], used, index, constant[g], terms=varying[g], n=n,
                    ref_batched=ref_batched))
            else:
                scores = constant[g][models] if constant[g] is not None else \
                    np.zeros((len(models), n, n), np.float32)
                scale = np.abs(scores).max(-1).sum(-1)  # Σ_i max_j |S_ij|
            current = perms[g][models]
            new = solve(scores, blocks=blocks.get(g, 1))
            gain = (assignment.assignment_value(scores, new)
                    - assignment.assignment_value(scores, current))
            better = gain > tol * scale
            if quadratic[g] and better.any():
                # The linearised step may overshoot a quadratic objective: keep it only if the
                # true objective does not fall, and count its true gain.
                before = {h: p[models if index is None else index] for h, p in perms.items()}
                trial = {h: p.copy() for h, p in before.items()}
                trial[g][:len(models)][better] = new[better]
                gain = (evaluate(trial, index) - evaluate(before, index))[:len(models)]
                better &= gain >= 0
            stale[g][models] = False
            if better.any():
                moved = models[better]
                perms[g][moved] = new[better]
                objective[moved] += gain[better]
                progress[moved] = True
                for h in readers[g]:
                    stale[h][moved] = True
        sweeps[live] += 1
        history.append(objective.copy())
        active &= progress
    return np.stack(history, axis=-1), sweeps


def weight_matching(space: WeightSpace, reference: Params, other: Params, *,
                    key: jax.Array | None = None, max_sweeps: int = 100, tol: float = 1e-6,
                    restarts: int = 1, init: Mapping[str, Any] | None = None,
                    fixed: Sequence[str] = (), mesh=None,
                    solver: Callable[..., np.ndarray] = assignment.solve) -> Alignment:
    """Align `other` to `reference` by weight matching.

    Args:
        space: the weight space both params trees live in.
        reference: one model, or one per model of `other` (a leading model axis).
        other: one model or a population with a leading model axis; each model is aligned to the
            reference (or to its own reference).
        key: draws a random group order for every sweep and restart r,
            `group_orders(key, groups, max_sweeps, r)`; None visits groups in the weight space's
            order every sweep.
        max_sweeps: at most this many sweeps over all groups.
        tol: a group's new permutation is kept only if it raises that group's term of the
            objective by more than tol × Σ_i max_j |A_ij| (a scale-free margin above round-off);
            a model stops after a sweep that changes nothing.
        restarts: run this many times with different group orders (needs a key) — the first
            from `init` (default identity), the others from random permutations — and keep each
            model's best final objective.
        init: starting permutations, group -> (n,) or (models, n).
        fixed: groups left at their `init` permutation (e.g. already matched from activations).
        mesh: a `jax.sharding.Mesh`; the population is sharded over its first axis.
        solver: the exact assignment solver; `wsl.assignment.solve_reference` calls scipy always.
    """
    if max_sweeps < 1 or restarts < 1:
        raise WeightSpaceError(f"max_sweeps ({max_sweeps}) and restarts ({restarts}) must be ≥ 1")
    if restarts > 1 and key is None:
        raise WeightSpaceError("restarts > 1 need a key to draw different group orders")
    unknown = set(fixed) - set(space.group_sizes)
    if unknown:
        raise WeightSpaceError(f"fixed names unknown groups {sorted(unknown)}; groups are "
                               f"{list(space.group_sizes)}")
    batched, ref_batched = _model_axes(space, reference, other)
    ref, oth = _flat_f32(space, reference), _flat_f32(space, other)
    if not batched:
        oth = {p: a[None] for p, a in oth.items()}
    num = next(iter(oth.values())).shape[0] if oth else 1
    if ref_batched:
        valid = _finite(space, ref, 1) & _finite(space, oth, 1)
    else:
        if not _finite(space, ref, 0):
            raise WeightSpaceError("the reference has NaN or inf weights; it cannot be aligned to")
        valid = _finite(space, oth, 1)
    padded = num
    if mesh is not None:
        devices = int(mesh.devices.shape[0])
        padded = round_up(num, devices)
        pad = lambda tree: {p: jnp.concatenate([a, jnp.repeat(a[-1:], padded - num, 0)])
                            for p, a in tree.items()}
        oth = shard_leading(pad(oth), mesh)
        if ref_batched:
            ref = shard_leading(pad(ref), mesh)
        valid = np.concatenate([valid, np.zeros(padded - num, bool)])
    start = _initial_perms(space, init, padded)
    groups = [g for g in space.group_sizes if g not in set(fixed)]

    best = None
    for r in range(restarts):
        orders = _orders(key, groups, max_sweeps, r)
        perms = {g: p.copy() for g, p in start.items()}
        if r > 0:
            # Coupled groups (attention heads and their head dims) can lock each other into a
            # wrong basin from the identity; the other restarts start from random permutations.
            perms.update(_random_perms(space, groups, padded, _rng(key, r, 1)))
        history, sweeps = _descend(space, ref, oth, perms, valid, groups=groups, orders=orders,
                                   tol=tol, ref_batched=ref_batched, solve=solver, mesh=mesh)
        final = history[:, -1]
        if best is None:
            best = dict(perms=perms, history=history, sweeps=sweeps,
                        restart=np.zeros(padded, np.int64))
            continue
        take = final > best["history"][:, -1]
        width = max(history.shape[1], best["history"].shape[1])
        widen = lambda h: np.concatenate([h, np.repeat(h[:, -1:], width - h.shape[1], 1)], 1)
        best["history"] = np.where(take[:, None], widen(history), widen(best["history"]))
        best["sweeps"] = np.where(take, sweeps, best["sweeps"])
        best["restart"] = np.where(take, r, best["restart"])
        for g in perms:
            best["perms"][g] = np.where(take[:, None], perms[g], best["perms"][g])

    history = best["history"][:num]
    history[~valid[:num]] = np.nan
    out = dict(perms={g: p[:num] for g, p in best["perms"].items()}, objective=history,
               sweeps=best["sweeps"][:num], valid=valid[:num], restart=best["restart"][:num])
    if not batched:
        out = {k: ({g: p[0] for g, p in v.items()} if k == "perms" else v[0])
               for k, v in out.items()}
    return Alignment(**out)


def matching_objective(space: WeightSpace, reference: Params, other: Params,
                       perms: Mapping[str, Any] | None = None) -> np.ndarray:
    """Σ_t ⟨W_ref[t], π(W_other)[t]⟩ per model (π = `perms`, default identity)."""
    batched, ref_batched = _model_axes(space, reference, other)
    ref, oth = _flat_f32(space, reference), _flat_f32(space, other)
    if not batched:
        oth = {p: a[None] for p, a in oth.items()}
    num = next(iter(oth.values())).shape[0]
    perms = _initial_perms(space, perms, num)
    value = np.asarray(_objective(ref, oth, _unless_identity(perms), plan=_tensor_plan(space),
                                  ref_batched=ref_batched))
    return value if batched else value[0]


# ------------------------------------------------------------------------------ whole zoos
@dataclasses.dataclass(frozen=True, eq=False)
class ZooAlignment:
    """A population aligned to a common reference.

    Attributes:
        params: the aligned population (same layout as the input, leading model axis).
        perms: group -> (models, n): ``space.permute(population, perms) == params``.
        reference: the reference the population was aligned to (one model): the chosen model, or
            the mean of the aligned population.
        rounds: alignment rounds run (1 for a fixed reference).
        objective: (rounds,) mean over valid models of the final objective of each round.
        alignment: the last round's `Alignment` (per-model sweeps, validity, objective history).
    """

    params: dict
    perms: dict[str, np.ndarray]
    reference: dict
    rounds: int
    objective: np.ndarray
    alignment: Alignment


def _mean(tree, valid: np.ndarray):
    w = jnp.asarray(valid, jnp.float32)
    denom = jnp.maximum(w.sum(), 1.0)
    return jax.tree.map(
        lambda a: jnp.tensordot(w, jnp.where(_bcast(valid, a), a, 0.0), axes=1) / denom, tree)


def _bcast(mask: np.ndarray, a):
    return jnp.asarray(mask).reshape(mask.shape + (1,) * (a.ndim - 1))


def align_zoo(space: WeightSpace, population: Params, *, reference: int | str | Params = 0,
              key: jax.Array | None = None, rounds: int = 10, **matching) -> ZooAlignment:
    """Align every model of a population to one reference — the preprocessing of generators.

    `reference` is a model index, one model's params, or ``"mean"``: then the population is first
    aligned to its first finite model, and then, round after round, each model is re-aligned
    (starting from its current permutation) to the mean of all the *other* aligned models, until
    no permutation changes or `rounds` is reached. `matching` is passed to `weight_matching`
    (max_sweeps, tol, restarts, mesh, ...).
    """
    lead = space.batch_shape(population)
    if len(lead) != 1:
        raise WeightSpaceError(f"align_zoo needs a population with one leading model axis; got "
                               f"leading axes {lead}")
    num = lead[0]
    if isinstance(reference, str):
        if reference != "mean":
            raise WeightSpaceError(f"reference must be a model index, params or 'mean'; got "
                             f"{reference!r}")
        if num < 2:
            raise WeightSpaceError("aligning to the population mean needs at least 2 models")
        reference_params, iterate = None, True
    elif isinstance(reference, (int, np.integer)):
        if not -num <= reference < num:
            raise IndexError(f"reference model {reference} is out of range for {num} models")
        reference_params, iterate = jax.tree.map(lambda a: a[reference], population), False
    else:
        reference_params, iterate = reference, False
    key_for = lambda r: key if key is None or r == 0 else jax.random.fold_in(key, r)
    if not iterate:
        al = weight_matching(space, reference_params, population, key=key_for(0), **matching)
        aligned = space.permute(population, al.perms)
        return ZooAlignment(aligned, al.perms, dict(reference_params), 1,
                            np.array([np.nanmean(al.final_objective)]), al)

    finite = np.asarray(jnp.isfinite(space.flatten(population)).all(-1))
    if finite.sum() < 2:
        raise WeightSpaceError(f"aligning to the mean needs at least 2 finite models; "
                         f"{int(finite.sum())} of {num} are")
    first = jax.tree.map(lambda a: a[int(np.argmax(finite))], population)
    al = weight_matching(space, first, population, key=key_for(0), **matching)
    valid = al.valid
    objective = []
    used = 1
    for r in range(1, rounds):
        aligned = space.permute(population, al.perms)
        total = _mean(aligned, valid)
        count = max(int(valid.sum()), 1)
        # Leave-one-out mean: a model in the mean would pull the reference towards itself.
        loo = jax.tree.map(lambda t, a: (t * count - jnp.where(_bcast(valid, a), a, 0.0))
                           / max(count - 1, 1), total, aligned)
        new = weight_matching(space, loo, population, key=key_for(r), init=al.perms, **matching)
        objective.append(np.nanmean(new.final_objective))
        changed = any((new.perms[g] != al.perms[g]).any() for g in al.perms)
        al, used = new, r + 1
        if not changed:
            break
    aligned = space.permute(population, al.perms)
    return ZooAlignment(aligned, al.perms, _mean(aligned, valid), used,
                        np.asarray(objective or [np.nanmean(al.final_objective)]), al)


# ------------------------------------------------------------------------------ activations
@functools.partial(jax.jit, static_argnames=("features_fn", "ref_batched"))
def _feature_moments(ref, other, x, *, features_fn, ref_batched):
    """Per group: Σa, Σb, Σa², Σb², Σ a bᵀ over the samples of one batch, for every model."""
    def feats(params):
        out = features_fn(params, x)
        return {g: f.reshape(-1, f.shape[-1]).astype(jnp.float32) for g, f in out.items()}

    fa = jax.vmap(feats)(ref) if ref_batched else feats(ref)
    fb = jax.vmap(feats)(other)
    moments = {}
    for g, b in fb.items():
        if g not in fa:
            continue
        a = fa[g] if ref_batched else jnp.broadcast_to(fa[g], b.shape)
        moments[g] = dict(a=a.sum(1), b=b.sum(1), aa=(a * a).sum(1), bb=(b * b).sum(1),
                          ab=jnp.einsum("msi,msj->mij", a, b, precision=_HIGHEST),
                          count=jnp.full((b.shape[0],), b.shape[1], jnp.float32))
    return moments


def activation_correlations(space: WeightSpace, features_fn: Callable, reference: Params,
                            other: Params, inputs, *,
                            batch_size: int = 512) -> dict[str, np.ndarray]:
    """Pearson correlations (models, n, n) between the reference's units (rows) and the other
    models' units (columns), for every group `features_fn` returns features for.

    `features_fn(params, x) -> {group: array (..., n)}` gives each unit's post-activation feature
    (units on the last axis) for one model and a batch of inputs; the leading axes are samples.
    """
    batched, ref_batched = _model_axes(space, reference, other)
    if not batched:
        other = jax.tree.map(lambda a: jnp.asarray(a)[None], other)
    inputs = np.asarray(inputs)
    if len(inputs) == 0:
        raise WeightSpaceError("activation matching needs at least one input sample")
    total = None
    for start in range(0, len(inputs), batch_size):
        m = _feature_moments(reference, other, jnp.asarray(inputs[start:start + batch_size]),
                             features_fn=features_fn, ref_batched=ref_batched)
        m = jax.tree.map(lambda v: np.asarray(v, np.float64), m)
        total = m if total is None else jax.tree.map(np.add, total, m)
    sizes = space.group_sizes
    out = {}
    for g, m in total.items():
        if g not in sizes:
            raise WeightSpaceError(f"features_fn returned features for unknown group {g!r}")
        if m["ab"].shape[-1] != sizes[g]:
            raise WeightSpaceError(f"features for group {g!r} have {m['ab'].shape[-1]} units; "
                                   f"the group has {sizes[g]}")
        c = m["count"][:, None]
        mean_a, mean_b = m["a"] / c, m["b"] / c
        var_a = np.maximum(m["aa"] / c - mean_a ** 2, 0.0)
        var_b = np.maximum(m["bb"] / c - mean_b ** 2, 0.0)
        cov = m["ab"] / c[..., None] - mean_a[:, :, None] * mean_b[:, None, :]
        corr = cov / (np.sqrt(var_a)[:, :, None] * np.sqrt(var_b)[:, None, :] + 1e-12)
        out[g] = corr if batched else corr[0]
    return out


def activation_matching(space: WeightSpace, features_fn: Callable, reference: Params,
                        other: Params, inputs, *, batch_size: int = 512,
                        remaining: str = "weights", **matching) -> Alignment:
    """Align `other` to `reference` by correlating post-activation features on `inputs`.

    One assignment per group maximises the summed correlation of matched units. Groups that
    `features_fn` gives no features for (e.g. attention heads) are then solved by weight matching
    with the activation-matched groups held fixed (``remaining="weights"``), or left unpermuted
    (``remaining="identity"``). The returned objective is the weight-matching objective.
    """
    if remaining not in ("weights", "identity"):
        raise WeightSpaceError(f"remaining must be 'weights' or 'identity'; got {remaining!r}")
    corr = activation_correlations(space, features_fn, reference, other, inputs,
                                   batch_size=batch_size)
    perms = {g: assignment.solve(np.nan_to_num(c), blocks=space.blocks.get(g, 1))
             for g, c in corr.items()}
    fixed = list(perms) if remaining == "weights" else list(space.group_sizes)
    return weight_matching(space, reference, other, init=perms, fixed=fixed, **matching)
