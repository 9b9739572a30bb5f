"""Benchmark: aligning a 100-model zoo to one reference, against the published algorithm.

The baseline is a straightforward implementation of Git Re-Basin weight matching (Ainsworth et al.
2023) written here: one pair at a time, one group at a time, NumPy products and scipy's
`linear_sum_assignment`, with the same group orders and the same stopping rule as `wsl.align`, so
both reach the same permutations and the objective values can be compared model by model.

Speed is best-of-N process CPU time, each implementation run in turn: on a shared machine, wall
time also counts whoever else holds the cores (longer runs get preempted more), so the CPU-time
ratio is `speedup_vs_reference`; the wall-clock ratio is printed beside it. Our CPU time counts all
of our threads, so it cannot flatter a parallel run.

It also measures planted-permutation recovery (100 trials per architecture: permute each model
randomly, match it back, count exact inverses) and the loss barrier between pairs of independently
trained MLPs before and after alignment.

    python benchmarks/align.py --smoke     # seconds: 8 models, a few steps (checks it runs)
    python benchmarks/align.py --quick     # a few minutes on 2 CPU cores, mostly training
    python benchmarks/align.py             # longer training, more timing repeats

Prints a table; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy.optimize import linear_sum_assignment

# Appended, not prepended: an installed (non-editable) wsl must win over the repo's wsl/ folder,
# which alone is not the whole package.
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._reference_matching import published_weight_matching  # noqa: E402
from wsl import assignment  # noqa: E402
from wsl.align import group_orders, matching_objective, weight_matching  # noqa: E402
from wsl.eval.lmc import linear_mode_connectivity  # noqa: E402
from wsl.mesh import host_summary  # noqa: E402
from wsl.zoos.architectures import build  # noqa: E402
from wsl.zoos.datasets import load_dataset  # noqa: E402
from wsl.zoos.init_schemes import initial_population  # noqa: E402


# ------------------------------------------------------------------------------ a small zoo
def _apply(arch):
    try:  # convolutions as matmuls: several times faster vmapped over models on CPU
        from wsl.zoos.fast_conv import population_apply
        return lambda p, x: population_apply(arch, p, x)
    except ImportError:
        return arch.apply


def train_population(arch, data, seed, num, *, steps, batch_size=64, lr=3e-3):
    """`num` models trained independently (own init, own data order) with Adam, vmapped."""
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    # The population trainer's initialisation (flax's default, LeCun normal kernels and zero
    # biases), drawn with numpy: compiling flax's vmapped init costs seconds per architecture.
    params = initial_population(arch, np.arange(num), ["default"] * num, np.ones(num),
                                np.zeros(num), seed)
    data_key = jax.random.key(seed)
    opt = optax.adam(lr)
    state = jax.vmap(opt.init)(params)

    apply = _apply(arch)

    def loss(p, xb, yb):
        return optax.softmax_cross_entropy_with_integer_labels(apply(p, xb), yb).mean()

    def step(carry, k):
        params, state = carry
        idx = jax.vmap(lambda kk: jax.random.choice(kk, len(y), (batch_size,)))(
            jax.random.split(k, num))
        grads = jax.vmap(jax.grad(loss))(params, x[idx], y[idx])
        updates, state = jax.vmap(opt.update)(grads, state, params)
        return (optax.apply_updates(params, updates), state), None

    run = jax.jit(lambda c, ks: jax.lax.scan(step, c, ks)[0])
    params, _ = run((params, state), jax.random.split(data_key, steps))
    return params


def accuracy(arch, params, x, y):
    logits = jax.jit(jax.vmap(_apply(arch), in_axes=(0, None)))(params, jnp.asarray(x))
    return np.asarray((logits.argmax(-1) == jnp.asarray(y)).mean(-1))


# ------------------------------------------------------------------------------ the baseline
class SolverClock:
    """Wraps an assignment solver and adds up the seconds spent in it."""

    def __init__(self, solve):
        self.solve, self.seconds = solve, 0.0

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.solve(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


def reference_zoo(space, reference, population, orders, tol, solver=linear_sum_assignment):
    ref = {p: np.asarray(a) for p, a in space.as_flat_dict(reference).items()}
    pop = {p: np.asarray(a) for p, a in space.as_flat_dict(population).items()}
    num = len(next(iter(pop.values())))
    perms = [published_weight_matching(space, ref, {k: v[i] for k, v in pop.items()}, orders, tol,
                                       solver) for i in range(num)]
    return {g: np.stack([p[g] for p in perms]) for g in perms[0]}


# ------------------------------------------------------------------------------ measurements
def interleaved(fns, repeats):
    """Best-of-`repeats` wall and CPU seconds of each function, run in turn so that all of them
    see the same machine load (this machine is shared)."""
    wall = [float("inf")] * len(fns)
    cpu = [float("inf")] * len(fns)
    outs = [None] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            w, c = time.perf_counter(), time.process_time()
            outs[i] = fn()
            wall[i] = min(wall[i], time.perf_counter() - w)
            cpu[i] = min(cpu[i], time.process_time() - c)
    return wall, cpu, outs


def compare_zoo(name, arch, population, key, tol, repeats):
    space = arch.weight_space
    reference = jax.tree.map(lambda a: a[0], population)
    groups = list(space.group_sizes)
    orders = group_orders(key, groups, 100)
    ours = lambda: weight_matching(space, reference, population, key=key, tol=tol)
    start = time.perf_counter()
    ours()
    cold = time.perf_counter() - start  # includes compiling
    baseline = lambda: reference_zoo(space, reference, population, orders, tol)
    (t_ours, t_ref), (c_ours, c_ref), (al, ref_perms) = interleaved([ours, baseline], repeats)
    # One more run of each with the assignment solver timed: the share both implementations spend
    # in scipy (a floor batching cannot lower).
    ours_clock = SolverClock(assignment.solve)
    weight_matching(space, reference, population, key=key, tol=tol, solver=ours_clock)
    ref_clock = SolverClock(linear_sum_assignment)
    reference_zoo(space, reference, population, orders, tol, solver=ref_clock)
    ref_obj = matching_objective(space, reference, population, ref_perms)
    same = np.all([np.all(al.perms[g] == ref_perms[g], axis=-1) for g in groups], axis=0)
    rel = np.abs(al.final_objective - ref_obj) / np.abs(ref_obj)
    return {"zoo": name, "models": int(len(ref_obj)), "params": space.num_params,
            "groups": len(groups), "ours_s": t_ours, "ours_cpu_s": c_ours, "ours_cold_s": cold,
            "reference_s": t_ref, "reference_cpu_s": c_ref, "speedup": t_ref / t_ours,
            "speedup_cpu": c_ref / c_ours, "ours_lsa_s": ours_clock.seconds,
            "reference_lsa_s": ref_clock.seconds, "same_perms": float(same.mean()),
            "max_rel_objective_diff": float(rel.max()), "mean_sweeps": float(al.sweeps.mean())}


def recovery(arch, population, key, restarts):
    """Planted permutations: exact recoveries (every group) out of the population's models."""
    space = arch.weight_space
    num = space.batch_shape(population)[0]
    planted = space.random_permutation(jax.random.fold_in(key, 1), num)
    shuffled = space.permute(population, planted)
    al = weight_matching(space, population, shuffled, key=jax.random.fold_in(key, 2),
                         restarts=restarts)
    inverse = space.invert_permutation(planted)
    exact = np.all([np.all(al.perms[g] == np.asarray(inverse[g]), axis=-1) for g in inverse],
                   axis=0)
    return int(exact.sum()), num


ZOOS = {
    # name: (architecture, config, training steps full / quick / smoke)
    "mlp 64-32-32-10": ("mlp", {"input_shape": (8, 8, 1), "widths": (32, 32)}, (1500, 300, 5)),
    "small_cnn 3x16": ("small_cnn", {"input_shape": (8, 8, 1)}, (600, 150, 5)),
    "resnet w8": ("resnet", {"input_shape": (8, 8, 1)}, (400, 100, 5)),
}
MODES = ("full", "quick", "smoke")
MLP = "mlp 64-32-32-10"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    speed = parser.add_mutually_exclusive_group()
    speed.add_argument("--quick", action="store_true", help="shorter training, fewer repeats")
    speed.add_argument("--smoke", action="store_true",
                       help="seconds: 8 models, 5 training steps, one repeat (checks it runs)")
    parser.add_argument("--models", type=int, default=None, help="default 100 (smoke: 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tol", type=float, default=1e-6)
    args = parser.parse_args(argv)
    key = jax.random.key(args.seed)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    repeats = {"full": 7, "quick": 3, "smoke": 1}[mode]
    data = load_dataset("digits", seed=args.seed)
    n = args.models or (8 if args.smoke else 100)

    # Smoke: the MLP zoo alone runs every stage (training, timing against the reference,
    # recovery, LMC); the convolutional zoos would only add compile time.
    zoos = {k: v for k, v in ZOOS.items() if k == MLP or mode != "smoke"}
    archs, trained, rows = {}, {}, []
    for i, (name, (arch_name, config, steps)) in enumerate(zoos.items()):
        archs[name] = arch = build(arch_name, **config)
        start = time.perf_counter()
        trained[name] = train_population(arch, data, 1000 * args.seed + i, n,
                                         steps=steps[MODES.index(mode)])
        acc = accuracy(arch, trained[name], data.x_test, data.y_test)
        print(f"# trained {n} x {name} in {time.perf_counter() - start:.1f}s: test accuracy "
              f"{acc.mean():.3f} +- {acc.std():.3f}", flush=True)
        rows.append(compare_zoo(name, arch, trained[name], jax.random.fold_in(key, 100 + i),
                                args.tol, repeats))
        print(f"# aligned {name}: {rows[-1]['speedup']:.1f}x", flush=True)

    print(f"\naligning each zoo to its model 0 (best of {repeats}, wall / CPU seconds; the "
          f"reference is per pair, per group, NumPy + scipy; speedups wall / cpu)")
    header = (f"{'zoo':<16} {'models':>6} {'params':>6} {'ours':>7} {'ours cpu':>8} {'cold':>6} "
              f"{'reference':>9} {'ref cpu':>7} {'speedup':>7} {'(cpu)':>6} {'lsa ours/ref':>12} "
              f"{'same perms':>10} {'max rel dobj':>12} {'sweeps':>6}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['zoo']:<16} {r['models']:>6} {r['params']:>6} {r['ours_s']:>7.3f} "
              f"{r['ours_cpu_s']:>8.3f} {r['ours_cold_s']:>6.1f} {r['reference_s']:>9.3f} "
              f"{r['reference_cpu_s']:>7.3f} {r['speedup']:>6.1f}x {r['speedup_cpu']:>5.1f}x "
              f"{r['ours_lsa_s']:>5.3f}/{r['reference_lsa_s']:<6.3f} {r['same_perms']:>10.2f} "
              f"{r['max_rel_objective_diff']:>12.1e} "
              f"{r['mean_sweeps']:>6.1f}")
    total = {k: sum(r[k] for r in rows) for k in ("ours_s", "ours_cpu_s", "reference_s",
                                                   "reference_cpu_s")}
    speedup = total["reference_s"] / total["ours_s"]
    speedup_cpu = total["reference_cpu_s"] / total["ours_cpu_s"]
    print(f"{'all':<16} {'':>6} {'':>6} {total['ours_s']:>7.3f} {total['ours_cpu_s']:>8.3f} "
          f"{'':>6} {total['reference_s']:>9.3f} {total['reference_cpu_s']:>7.3f} "
          f"{speedup:>6.1f}x {speedup_cpu:>5.1f}x")
    lsa_ours = sum(r["ours_lsa_s"] for r in rows)
    lsa_ref = sum(r["reference_lsa_s"] for r in rows)
    print(f"time in scipy's assignment solver: ours {lsa_ours:.3f}s, reference {lsa_ref:.3f}s; "
          f"everything else: ours {total['ours_s'] - lsa_ours:.3f}s, reference "
          f"{total['reference_s'] - lsa_ref:.3f}s")

    # Planted permutations on the trained zoos, plus narrow residual nets at initialisation.
    rec = {}
    for label, name in (("mlp", MLP), ("cnn", "small_cnn 3x16"), ("resnet", "resnet w8")):
        if name in trained:
            rec[label] = recovery(archs[name], trained[name], jax.random.fold_in(key, 7),
                                  restarts=3)
    for label, width in (("resnet_w4_init", 4), ("resnet_w2_init", 2))[:0 if args.smoke else 2]:
        narrow = build("resnet", input_shape=(8, 8, 1), width=width)
        rec[label] = recovery(narrow, narrow.init_population(jax.random.fold_in(key, width), n),
                              jax.random.fold_in(key, 9), restarts=3)
    print("\nplanted permutations undone exactly (3 restarts):")
    for label, (hits, total_trials) in rec.items():
        print(f"  {label:<16} {hits}/{total_trials}")

    # Linear mode connectivity: disjoint pairs of independently trained MLPs.
    name = MLP
    half = n // 2
    a = jax.tree.map(lambda v: v[:half], trained[name])
    b = jax.tree.map(lambda v: v[half:2 * half], trained[name])
    lmc = linear_mode_connectivity(archs[name], a, b, data.x_test, data.y_test,
                                   key=jax.random.fold_in(key, 11)).summary()
    print(f"\nLMC over {lmc['pairs']} MLP pairs (test loss barrier, mean): "
          f"{lmc['barrier_before']:.4f} before, {lmc['barrier_after']:.4f} after alignment; "
          f"accuracy barrier {lmc['acc_barrier_before']:.4f} -> {lmc['acc_barrier_after']:.4f}")

    fraction = lambda label: rec[label][0] / rec[label][1] if label in rec else None
    result = {
        "benchmark": "align", "mode": mode, "quick": args.quick, "models": n,
        "backend": jax.default_backend(), "host": host_summary(),
        "speedup_vs_reference": round(speedup_cpu, 2), "speedup_wall_clock": round(speedup, 2),
        "speedup_per_zoo": {r["zoo"]: round(r["speedup_cpu"], 2) for r in rows},
        "assignment_seconds": {"ours": round(lsa_ours, 4), "reference": round(lsa_ref, 4)},
        "same_perms": min(r["same_perms"] for r in rows),
        "max_rel_objective_diff": max(r["max_rel_objective_diff"] for r in rows),
        "recovery_mlp": fraction("mlp"), "recovery_cnn": fraction("cnn"),
        "recovery_resnet": fraction("resnet"),
        "recovery_resnet_narrow": None if args.smoke else min(fraction("resnet_w4_init"),
                                                              fraction("resnet_w2_init")),
        "barrier_before": round(lmc["barrier_before"], 5),
        "barrier_after": round(lmc["barrier_after"], 5),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
