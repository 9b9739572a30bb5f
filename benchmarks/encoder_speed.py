"""Benchmark: NFN-HNP training throughput against the `nfn` PyTorch package; neural-graph memory.

1. NFN-HNP forward + backward (one gradient of a scalar loss, no optimiser step) in networks per
   second, ours (`models.nfn.NFN`, jit-compiled, compile time excluded) against the reference
   implementation of Zhou et al. (the `nfn` package on PyPI, torch) built the same way on the same
   weight space: HNP layers of channels 16-16-5 with ReLU, HNP pooling, an MLP head 1000-1000-1.
   Both run on this machine's CPU cores on the same random networks; timings interleave the two
   and take the median of ``--repeats`` rounds. The torch side needs the optional extra
   (``pip install -e ".[torch]"``: torch 2.13.0 and nfn 0.1.2) and is skipped with a
   message when it is absent. Ours is also timed as the trainer runs it with
   ``train.microbatch=M`` (``--microbatch``, default 16): the same gradient accumulated over
   micro-batches of M networks in one compiled loop, whose activations stay in the CPU's caches
   (at batch 128 on small-cnn each layer's largest feature map is 19 MB, at 16 2.4 MB; 8, 16, 32
   and 64 were timed, 16 was fastest on both spaces). The torch row at batch 32 shows that
   smaller batches do not speed the reference up.
2. Peak memory of the neural-graph GNN's compiled forward + backward (4 layers, width 64)
   against the batch size, from XLA's memory analysis (arguments + outputs + temporaries). It
   should grow linearly in the batch with a constant number of bytes per edge: everything is held
   per edge (E), where an encoder on a dense N × N adjacency holds the same state for N² pairs;
   the table gives N²/E, the factor such a layout multiplies it by. Compiling is all it takes
   (nothing runs), so it is cheap at any batch size.

    python benchmarks/encoder_speed.py            # small-cnn and a 40-32-32-10 MLP
    python benchmarks/encoder_speed.py --quick    # fewer rounds and batch sizes
    python benchmarks/encoder_speed.py --smoke    # seconds: the MLP space, tiny batches
    python benchmarks/encoder_speed.py --save     # also benchmarks/results/encoder_speed-full.json

Prints two tables, then one JSON object as the last line with ``nfn_speedup_vs_torch`` (our
networks/s over torch's at the largest batch, per weight space; null without torch),
``nfn_speedup_vs_torch_microbatched`` (the same with ``train.microbatch``) and
``bytes_per_edge_per_network`` (the NG-GNN's compiled peak bytes / (batch · edges) at the largest
memory batch, per weight space; ``marginal_bytes_per_edge_per_network`` is the slope over batch
sizes, per edge).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

# Appended, not prepended: an installed (non-editable) wsl must win over the repo's wsl/ folder,
# which alone is not the whole package.
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks._report import table  # noqa: E402
from wsl.mesh import host_summary  # noqa: E402
from wsl.models.encoders import build_encoder  # noqa: E402
from wsl.models.neural_graph import layer_chain, neural_graph  # noqa: E402
from wsl.train.step import micro_batched  # noqa: E402
from wsl.zoos.architectures import build as build_architecture  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CHANNELS = (16, 16, 5)
HEAD = (1000, 1000)
SMOKE_NFN = {"channels": (4,), "head": (16,)}  # one narrow layer: same code, less to compile
MEMORY_BATCHES = (8, 32, 128, 512)  # the memory table's batch sizes (--quick: the first two)
# Weight spaces the reference package can express: dense / conv chains without flatten positions.
SPACES = {
    "small-cnn": ("small_cnn", {"input_shape": (8, 8, 1)}),
    # HNP mixes the 784 inputs of an MNIST MLP densely (a 12,000² matrix per layer at 16 channels,
    # in both implementations), so the MLP here is the mnist1d one.
    "mlp-mnist1d": ("mlp", {"input_shape": (40,), "widths": (32, 32)}),
}


def random_population(space, batch: int, seed: int = 0) -> dict:
    """`batch` random networks with unit-scale entries (throughput does not depend on values)."""
    rng = np.random.default_rng(seed)
    return space.unflatten(rng.standard_normal((batch, space.num_params)).astype(np.float32))


# ------------------------------------------------------------------------------------ ours (JAX)
def jax_step(space, batch, channels=CHANNELS, head=HEAD, microbatch=0):
    """A compiled fwd + bwd of NFN-HNP on `batch`: the call that runs it once to completion, the
    compile seconds and XLA's count of its floating-point operations (None if not reported).
    ``microbatch > 0``: the gradient as the trainer computes it with ``train.microbatch``, over
    micro-batches of that many networks (`wsl.train.step.micro_batched`)."""
    encoder = build_encoder("nfn_hnp", space, channels=channels, head_widths=head, out_dim=1)
    params = jax.jit(encoder.init)(jax.random.key(0), batch)["params"]  # one compile, not per op
    loss = lambda q, b, key: (encoder.apply({"params": q}, b).mean(), {})  # noqa: E731
    grad_fn = micro_batched(loss, microbatch) if microbatch else \
        jax.value_and_grad(loss, has_aux=True)
    grad = jax.jit(grad_fn)

    batch, key = jax.device_put(batch), jax.random.key(0)
    start = time.perf_counter()
    compiled = grad.lower(params, batch, key).compile()
    jax.block_until_ready(compiled(params, batch, key))
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = (cost[0] if isinstance(cost, list) else cost) or {}
    return (lambda: jax.block_until_ready(compiled(params, batch, key))), compile_s, cost.get(
        "flops")


# ---------------------------------------------------------------------------- reference (torch)
def torch_available() -> str | None:
    """None when torch and nfn import, else the reason they do not."""
    try:
        import nfn  # noqa: F401
        import torch  # noqa: F401
    except ImportError as err:
        return f"{err.name or err} is not installed"
    return None


def torch_layout(space, batch: dict):
    """Our (B, …, in, out) kernels as nfn's WeightSpaceFeatures: (B, 1, out, in[, kh, kw])."""
    import torch
    from nfn.common import WeightSpaceFeatures

    from wsl.models.neural_graph import tensor_at

    chain = layer_chain(space)
    weights, biases = [], []
    for layer in chain.layers:
        kernel = np.asarray(tensor_at(batch, layer.kernel))  # (B, *taps, in, out)
        taps = kernel.ndim - 3
        order = (0, taps + 2, taps + 1) + tuple(range(1, taps + 1))
        weights.append(torch.from_numpy(np.ascontiguousarray(kernel.transpose(order))[:, None]))
        biases.append(torch.from_numpy(np.array(tensor_at(batch, layer.bias))[:, None]))
    return WeightSpaceFeatures(weights, biases)


def torch_step(features, channels=CHANNELS, head=HEAD):
    """The reference invariant NFN-HNP predictor, and one fwd + bwd with gradients zeroed."""
    import torch
    from nfn.common import network_spec_from_wsfeat
    from nfn.layers import HNPLinear, HNPPool, TupleOp

    spec = network_spec_from_wsfeat(features)
    layers, previous = [], 1
    for c in channels:
        layers += [HNPLinear(spec, previous, c), TupleOp(torch.nn.ReLU())]
        previous = c
    mlp, width = [], HNPPool.get_num_outs(spec) * previous
    for h in head:
        mlp += [torch.nn.Linear(width, h), torch.nn.ReLU()]
        width = h
    model = torch.nn.Sequential(*layers, HNPPool(spec), torch.nn.Flatten(start_dim=-2),
                                *mlp, torch.nn.Linear(width, 1))

    def step():
        model.zero_grad(set_to_none=True)
        model(features).mean().backward()

    return step


# ------------------------------------------------------------------------------------- helpers
# A pause before each timed block, so that the other implementation's worker threads (torch's
# may spin after their last task) have gone idle — a precaution: 0, 0.2 and 1 s made no difference
# beyond noise here; and blocks of at least BLOCK_S seconds, so that the first call after the
# pause (cold caches, clock ramp) weighs as little for the faster implementation.
SETTLE_S = 0.2
BLOCK_S = 0.5


def interleaved(fns: dict, repeats: int, inner: int) -> dict:
    """Median seconds per call of each function, alternating them round by round; each round
    times ``inner`` calls or as many as fill `BLOCK_S`, whichever is more."""
    times = {name: [] for name in fns}
    calls = {}
    for name, fn in fns.items():
        fn()  # warm-up
        start = time.perf_counter()
        fn()
        calls[name] = max(inner, math.ceil(BLOCK_S / (time.perf_counter() - start)))
    for _ in range(repeats):
        for name, fn in fns.items():
            time.sleep(SETTLE_S)
            start = time.perf_counter()
            for _ in range(calls[name]):
                fn()
            times[name].append((time.perf_counter() - start) / calls[name])
    return {name: statistics.median(t) for name, t in times.items()}


# Buffer assignment, all that the memory analysis reads, comes before code generation: compiling
# without the backend's optimisations gives the same numbers several times faster.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def graph_memory(space, batch_size: int, dim: int = 64, num_layers: int = 4,
                 encoder: str = "ng_gnn") -> dict:
    """Compiled fwd + bwd of the NG-GNN (or another neural-graph `encoder`) at `batch_size`: peak
    bytes from XLA's memory analysis (arguments + outputs + temporaries − aliased)."""
    model = build_encoder(encoder, space, dim=dim, num_layers=num_layers)
    # Shapes are all that compiling needs: no arrays, no initialisation to run.
    batch = jax.eval_shape(lambda: random_population(space, batch_size))
    one = jax.tree.map(lambda a: jax.ShapeDtypeStruct((1,) + a.shape[1:], a.dtype), batch)
    params = jax.eval_shape(model.init, jax.random.key(0), one)["params"]

    def loss(p, b):
        return model.apply({"params": p}, b).mean()

    lowered = jax.jit(jax.grad(loss)).lower(params, batch)
    analysis = lowered.compile(FAST_COMPILE).memory_analysis()
    if analysis is None:  # some backends do not report; say so rather than guess
        return {"peak_bytes": None}
    peak = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
            + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)
    return {"peak_bytes": int(peak), "temp_bytes": int(analysis.temp_size_in_bytes)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    speed = parser.add_mutually_exclusive_group()
    speed.add_argument("--quick", action="store_true", help="fewer rounds and batch sizes")
    speed.add_argument("--smoke", action="store_true",
                       help="seconds: the MLP space, one narrow layer, batch 4, one round")
    parser.add_argument("--spaces", default=None,
                        help=f"from {list(SPACES)} (default all; smoke: mlp-mnist1d)")
    parser.add_argument("--batches", default=None, help="NFN batch sizes (default 32,128)")
    parser.add_argument("--microbatch", type=int, default=None,
                        help="also time ours with train.microbatch=M, gradient accumulation over "
                             "micro-batches of M networks, at batches larger than M (default 16; "
                             "smoke 2; 0: off)")
    parser.add_argument("--repeats", type=int, default=None, help="timing rounds (default 5)")
    parser.add_argument("--save", action="store_true",
                        help="also write the JSON to benchmarks/results/encoder_speed-<mode>.json")
    args = parser.parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    names = (args.spaces or ("mlp-mnist1d" if args.smoke else ",".join(SPACES))).split(",")
    unknown = [n for n in names if n not in SPACES]
    if unknown:
        parser.error(f"unknown weight spaces {unknown}; choose from {list(SPACES)}")
    default_batches = {"full": "32,128", "quick": "32", "smoke": "4"}[mode]
    batches = [int(b) for b in (args.batches or default_batches).split(",")]
    repeats = args.repeats or {"full": 5, "quick": 3, "smoke": 1}[mode]
    microbatch = args.microbatch if args.microbatch is not None else 2 if args.smoke else 16
    if microbatch < 0:
        parser.error(f"--microbatch must be ≥ 0; got {microbatch}")
    missing = torch_available()
    if missing:
        print(f"torch baseline skipped: {missing} (pip install -e \".[torch]\": torch "
              f"2.13.0 and nfn 0.1.2)")
    else:
        import torch

        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
              f"jax {jax.__version__} on {jax.devices()[0].platform}")

    spaces = {name: build_architecture(SPACES[name][0], **SPACES[name][1]).weight_space
              for name in names}
    speed_rows, speedups, micro_speedups, result_rows = [], {}, {}, []
    nfn = SMOKE_NFN if args.smoke else {"channels": CHANNELS, "head": HEAD}
    for name, space in spaces.items():
        for b in batches:
            batch = random_population(space, b)
            ours, compile_s, flops = jax_step(space, batch, **nfn)
            fns = {"jax": ours}
            micro = microbatch if 0 < microbatch < b and b % microbatch == 0 else 0
            if micro:
                fns["jax_micro"] = jax_step(space, batch, **nfn, microbatch=micro)[0]
            if not missing:
                fns["torch"] = torch_step(torch_layout(space, batch), **nfn)
            inner = 1 if args.smoke else max(1, 256 // b)
            seconds = interleaved(fns, repeats, inner)
            rate = {k: b / v for k, v in seconds.items()}
            torch_rate = rate.get("torch")
            ratio = rate["jax"] / torch_rate if torch_rate else None
            micro_ratio = rate["jax_micro"] / torch_rate if torch_rate and micro else None
            # Both implementations do the same products (the first and last layers' full mixing
            # of the fixed input / output units dominates), so the arithmetic rate says how much
            # room is left: near the cores' peak, only fewer operations can go faster.
            mflop = flops / b / 1e6 if flops else None
            best = max(rate["jax"], rate.get("jax_micro", 0.0))
            gflops = mflop * best / 1e3 if flops else None
            speed_rows.append((name, space.num_params, b, f"{rate['jax']:,.0f}",
                               f"{rate['jax_micro']:,.0f} ({micro})" if micro else "-",
                               f"{torch_rate:,.0f}" if torch_rate else "skipped",
                               f"{ratio:.2f}x" if ratio else "-",
                               f"{micro_ratio:.2f}x" if micro_ratio else "-",
                               f"{mflop:,.0f}" if mflop else "n/a",
                               f"{gflops:,.1f}" if gflops else "n/a", f"{compile_s:.1f}"))
            result_rows.append({"space": name, "batch": b, "jax_networks_per_s": rate["jax"],
                                "microbatch": micro or None,
                                "jax_microbatched_networks_per_s": rate.get("jax_micro"),
                                "torch_networks_per_s": torch_rate, "compile_s": compile_s,
                                "mflop_per_network": mflop, "jax_gflop_per_s": gflops})
            speedups[name] = ratio  # the largest batch is the last one written
            micro_speedups[name] = micro_ratio
            print(f"  {name} batch {b}: jax {rate['jax']:,.0f}/s"
                  + (f", micro-batched {rate['jax_micro']:,.0f}/s" if micro else "")
                  + (f", torch {torch_rate:,.0f}/s" if torch_rate else ""), flush=True)
    print("\nNFN-HNP forward + backward, networks per second (median of "
          f"{repeats} rounds; compile excluded). Micro-batched: the same gradient accumulated "
          "over micro-batches of the size in brackets (train.microbatch)")
    print(table(("weight space", "params", "batch", "ours (jax)", "ours micro-batched",
                 "nfn (torch)", "speedup", "speedup micro-batched", "MFLOP / network",
                 "ours GFLOP/s (best)", "compile s"), speed_rows))

    memory_rows, memory = [], []
    # Smoke: one narrow layer, the same code path at a fraction of the compile time.
    gnn = {"dim": 16, "num_layers": 1} if args.smoke else {"dim": 64, "num_layers": 4}
    for name, space in spaces.items():
        graph = neural_graph(space)
        n, e = graph.num_nodes, graph.num_edges
        batches = {"full": MEMORY_BATCHES, "quick": MEMORY_BATCHES[:2], "smoke": (4,)}[mode]
        for b in batches:
            peak = graph_memory(space, b, **gnn)["peak_bytes"]
            per_edge = peak / b / e if peak else None
            memory_rows.append((name, n, e, f"{n * n / e:.1f}", b,
                                f"{peak / 2**20:,.1f}" if peak else "n/a",
                                f"{per_edge:,.0f}" if peak else "n/a"))
            memory.append({"space": name, "nodes": n, "edges": e, "batch": b, "peak_bytes": peak,
                           "bytes_per_edge_per_network": per_edge})
    print(f"\nNG-GNN ({gnn['num_layers']} layers, width {gnn['dim']}) compiled forward + "
          f"backward: peak memory vs batch size")
    print(table(("weight space", "nodes N", "edges E", "N²/E", "batch", "peak MiB",
                 "bytes / edge / network"), memory_rows))
    per_edge, marginal = {}, {}
    for name in names:
        rows = [m for m in memory if m["space"] == name and m["peak_bytes"]]
        per_edge[name] = rows[-1]["bytes_per_edge_per_network"] if rows else None
        marginal[name] = None
        if len(rows) >= 2:
            slope = (rows[-1]["peak_bytes"] - rows[0]["peak_bytes"]) / (rows[-1]["batch"]
                                                                        - rows[0]["batch"])
            marginal[name] = slope / rows[0]["edges"]
            print(f"{name}: {slope / 2**20:,.2f} MiB per extra network in the batch "
                  f"({slope / rows[0]['edges']:,.0f} bytes per edge)")
    payload = {"benchmark": "encoder_speed", "mode": mode, "cpu_count": os.cpu_count(),
               "host": host_summary(),
               "nfn_speedup_vs_torch": speedups if not missing else None,
               "nfn_speedup_vs_torch_microbatched": micro_speedups if not missing else None,
               "microbatch": microbatch,
               "torch_skipped": missing, "nfn": result_rows, "graph_memory": memory,
               "bytes_per_edge_per_network": per_edge,
               "marginal_bytes_per_edge_per_network": marginal, "graph_encoder": gnn}
    if args.save and mode != "smoke":
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"encoder_speed-{mode}.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
