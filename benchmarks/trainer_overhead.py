"""Trainer overhead: step time of `train.train` vs a bare jitted step of the same model and batch.

The model is an MLP encoder regressing a target from flat weight vectors (the shape of a Small CNN
Zoo, 4,970 parameters a row). Three loops, all timed in windows of `--checkpoint-every` steps after
compilation and `--warmup` steps, each window closed by a device sync:

* ``bare, fixed batch``: one batch placed on the device once, the jitted update (same optax
  optimizer, donated state) called in a loop — the floor;
* ``bare + pipeline``: the same update fed by the zoo input pipeline (shuffling, prefetching,
  placement on the mesh) — the baseline the trainer is compared with;
* ``trainer``: `train.train` with checkpoints every `--checkpoint-every` steps (orbax, saved by
  the trainer's checkpoint thread while training goes on) and metrics logged every `--log-every`
  steps. A window ends just after its checkpoint has been handed to that thread, so every window
  pays for exactly one save: the one handed on as the window starts.

After the loops, the same training state is saved `--repeats` × 3 times through
`wsl.train.checkpoint.Checkpoints` alone, each save waited for: the wall and CPU time of one save
(``save_ms``, ``save_cpu_ms``), the cost the trainer hides behind training.

The loops alternate `--repeats` times so that load from other processes hits them alike; the
table gives the median and the minimum wall time over all windows, and the median CPU time of the
whole process (all threads), which other processes' load disturbs less. The last line printed is
a JSON object with ``overhead_ratio`` = median trainer / median bare + pipeline (wall time).

    python benchmarks/trainer_overhead.py           # Small CNN Zoo sized rows, 3 repeats
    python benchmarks/trainer_overhead.py --smoke   # seconds: tiny rows and model, few steps
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from wsl.config import override
from wsl.mesh import host_summary
from wsl.train import ArraySource, Pipeline, TrainConfig, train
from wsl.train.checkpoint import Checkpoints
from wsl.train.layout import batch_sharding, mesh_from_config
from wsl.train.optim import make_optimizer, make_schedule
from wsl.train.step import make_init


class FlatEncoder:
    """MLP on flat weight vectors predicting one number per network (e.g. test accuracy)."""

    def __init__(self, hidden: int):
        self.hidden = hidden

    def init(self, key, batch):
        dim = batch["flat"].shape[-1]
        k1, k2, k3 = jax.random.split(key, 3)
        dense = lambda k, n_in, n_out: jax.random.normal(k, (n_in, n_out)) / np.sqrt(n_in)
        return {"w1": dense(k1, dim, self.hidden), "b1": jnp.zeros(self.hidden),
                "w2": dense(k2, self.hidden, self.hidden), "b2": jnp.zeros(self.hidden),
                "w3": dense(k3, self.hidden, 1), "b3": jnp.zeros(1)}

    def loss(self, params, batch, key):
        del key
        h = jax.nn.gelu(batch["flat"] @ params["w1"] + params["b1"])
        h = jax.nn.gelu(h @ params["w2"] + params["b2"])
        prediction = (h @ params["w3"] + params["b3"])[:, 0]
        return jnp.mean((prediction - batch["test_acc"]) ** 2), {}


def zoo_like_rows(rows: int, dim: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    flat = (0.1 * rng.normal(size=(rows, dim))).astype(np.float32)
    target = 1 / (1 + np.exp(-flat[:, :64].sum(axis=1)))
    return {"flat": flat, "test_acc": target.astype(np.float32)}


def bare_update(task, tx):
    def update(params, opt_state, batch):
        (loss, _), grads = jax.value_and_grad(task.loss, has_aux=True)(params, batch, None)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(update, donate_argnums=(0, 1))


@functools.lru_cache
def bare_programs(task, config: TrainConfig):
    """The optimizer and the jitted init and update, built once: every bare loop and repeat
    reuses the compiled programs instead of compiling its own."""
    tx = make_optimizer(config.optimizer, make_schedule(config.optimizer, config.steps))
    return tx, jax.jit(task.init), bare_update(task, tx)


def _now() -> tuple[float, float]:
    # Wall time, and CPU time of the whole process (every thread: XLA's, the prefetcher's,
    # orbax's writers). On a shared machine the CPU time moves less with other people's load.
    return time.perf_counter(), time.process_time()


def _per_step(marks: list, window: int) -> list[tuple[float, float]]:
    return [((b[0] - a[0]) / window, (b[1] - a[1]) / window) for a, b in zip(marks, marks[1:])]


def time_bare(task, config: TrainConfig, data: dict, warmup: int, window: int,
              fixed_batch: bool) -> list[float]:
    """(wall, CPU) seconds per step of the bare update in each window of `window` steps."""
    sharding = batch_sharding(mesh_from_config(config.mesh))
    pipeline = Pipeline(ArraySource(data), config.batch_size, seed=config.seed,
                        prefetch=config.data.prefetch)
    tx, init, update = bare_programs(task, config)
    with pipeline.iterate(sharding=sharding) as batches:
        first = next(batches)
        params = init(jax.random.key(config.seed), first)
        opt_state = tx.init(params)
        feed = (lambda: first) if fixed_batch else (lambda: next(batches))
        marks = []
        for step in range(1, config.steps + 1):
            params, opt_state, loss = update(params, opt_state, feed())
            if step >= warmup and (step - warmup) % window == 0:
                jax.block_until_ready((params, opt_state, loss))
                marks.append(_now())
    return _per_step(marks, window)


def time_trainer(task, config: TrainConfig, data: dict, warmup: int, window: int) -> list[float]:
    """(wall, CPU) seconds per step of `train.train` in windows ending once their save started."""
    marks = []

    def clock(step, state):
        if step >= warmup and (step - warmup) % window == 0:
            jax.block_until_ready(state.params)
            marks.append(_now())

    with tempfile.TemporaryDirectory() as run_dir:
        train(task, config, data, run_dir, hooks=[clock])
    return _per_step(marks, window)


def time_saves(task, config: TrainConfig, data: dict, saves: int) -> list[tuple[float, float]]:
    """(wall, CPU) seconds of each of `saves` checkpoints of the trainer's state, written the way
    the trainer writes them (by a checkpoint thread) and waited for one by one."""
    tx, _, _ = bare_programs(task, config)
    batch = jax.device_put({k: v[:config.batch_size] for k, v in data.items()})
    state = jax.jit(make_init(task, tx, config.ema_decay > 0))(np.uint32(config.seed), batch)
    times = []
    with tempfile.TemporaryDirectory() as run_dir:
        checkpoints = Checkpoints(run_dir, keep=config.checkpoint.keep, background=True)
        try:
            for step in range(saves + 1):  # the first one also creates the folders: not timed
                start = _now()
                checkpoints.save(step, state, {"step": step})
                checkpoints.wait()
                end = _now()
                if step:
                    times.append((end[0] - start[0], end[1] - start[1]))
        finally:
            checkpoints.close()
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--dim", type=int, default=4970, help="flat weights per row")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--steps", type=int, default=300, help="timed steps")
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true",
                        help="seconds: tiny rows and model, a few windows (checks it runs)")
    args = parser.parse_args(argv)
    if args.smoke:  # every loop and every save still runs, on sizes that compile in a moment
        args.rows, args.dim, args.hidden, args.batch_size = 256, 64, 32, 32
        args.warmup, args.steps, args.checkpoint_every, args.log_every = 10, 20, 10, 5
        args.repeats = 1

    config = override(TrainConfig(), {
        "steps": args.warmup + args.steps, "batch_size": args.batch_size,
        "checkpoint.every": args.checkpoint_every, "checkpoint.keep": 2,
        "log.every": args.log_every, "log.progress": False})
    task, data = FlatEncoder(args.hidden), zoo_like_rows(args.rows, args.dim)
    window = args.checkpoint_every
    if args.steps % window or args.warmup % window:
        parser.error("--steps and --warmup must be multiples of --checkpoint-every (the window)")
    loops = {"bare, fixed batch": lambda: time_bare(task, config, data, args.warmup, window, True),
             "bare + pipeline": lambda: time_bare(task, config, data, args.warmup, window, False),
             "trainer": lambda: time_trainer(task, config, data, args.warmup, window)}
    timings = {name: [] for name in loops}
    for _ in range(args.repeats):  # interleaved, so that load from elsewhere hits every loop alike
        for name, loop in loops.items():
            timings[name] += loop()

    saves = time_saves(task, config, data, 3 * args.repeats)
    save_ms = 1e3 * statistics.median(w for w, _ in saves)
    save_cpu_ms = 1e3 * statistics.median(c for _, c in saves)

    wall = {name: [w for w, _ in values] for name, values in timings.items()}
    cpu = {name: [c for _, c in values] for name, values in timings.items()}
    median = {name: statistics.median(values) for name, values in wall.items()}
    best = {name: min(values) for name, values in wall.items()}
    cpu_median = {name: statistics.median(values) for name, values in cpu.items()}
    base = "bare + pipeline"
    params = args.dim * args.hidden + args.hidden ** 2 + 3 * args.hidden + 1
    print(f"device: {jax.devices()[0].device_kind} × {jax.device_count()}; model: MLP "
          f"{args.dim}→{args.hidden}→{args.hidden}→1 ({params:,} params), batch {args.batch_size}; "
          f"{args.steps} timed steps after {args.warmup}; checkpoint every "
          f"{args.checkpoint_every}, log every {args.log_every}; {args.repeats} repeats; ratios "
          f"against {base}; median and min over windows of {window} steps")
    print(f"{'loop':<18} {'wall ms':>8} {'ratio':>6} {'min ms':>7} {'ratio':>6} {'CPU ms':>7} "
          f"{'ratio':>6}   wall ms/step per window")
    for name in loops:
        runs = " ".join(f"{1e3 * v:.1f}" for v in wall[name])
        print(f"{name:<18} {1e3 * median[name]:>8.2f} {median[name] / median[base]:>6.3f} "
              f"{1e3 * best[name]:>7.2f} {best[name] / best[base]:>6.3f} "
              f"{1e3 * cpu_median[name]:>7.2f} {cpu_median[name] / cpu_median[base]:>6.3f}   "
              f"{runs}")
    print(f"one checkpoint on its own: {save_ms:.1f} ms wall, {save_cpu_ms:.1f} ms CPU "
          f"({save_cpu_ms / (window * 1e3 * cpu_median[base]):.1%} of a {base} window's CPU time)")
    print(json.dumps({
        "benchmark": "trainer_overhead", "mode": "smoke" if args.smoke else "full",
        "overhead_ratio": round(median["trainer"] / median[base], 4),
        "overhead_ratio_min": round(best["trainer"] / best[base], 4),
        "overhead_ratio_cpu": round(cpu_median["trainer"] / cpu_median[base], 4),
        "trainer_ms": round(1e3 * median["trainer"], 3),
        "bare_pipeline_ms": round(1e3 * median[base], 3),
        "bare_fixed_batch_ms": round(1e3 * median["bare, fixed batch"], 3),
        "pipeline_ratio": round(median[base] / median["bare, fixed batch"], 4),
        "save_ms": round(save_ms, 3), "save_cpu_ms": round(save_cpu_ms, 3),
        "checkpoint_every": args.checkpoint_every, "log_every": args.log_every,
        "steps": args.steps, "repeats": args.repeats, "windows": len(wall["trainer"]),
        "params": params, "device": jax.devices()[0].device_kind,
        "devices": jax.device_count(), "host": host_summary()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
