"""Benchmark: models trained per second by the population trainer against one-at-a-time loops.

For the `mlp-mnist1d` and `small-cnn` recipes it builds a zoo with `wsl.zoos.build.build_zoo`
(vmapped, one compiled program per group) and compares with (a) a PyTorch loop that trains the same
models one at a time — same architecture, init weights, data, batch size, steps, subset masks,
optimizer, dropout and checkpoint evaluations — and (b) the same JAX trainer run on one model at a
time (a per-model jitted loop). Baselines time a sample of the models after one untimed warm-up
model; the population is timed end to end twice: the first build includes compilation, the second
(fresh directory, programs cached) is the steady state used for the speedups.

The population runs as `wsl zoo build` runs it: on CPU, split into one JAX device per core
(`wsl.mesh.split_cpu`; `--cpu-devices 1` for one device), and is timed once more on one of those
devices for comparison. The baselines train one model at a time on one device.

    python benchmarks/zoo_build.py --smoke     # seconds: 8 digits MLPs, one epoch (checks it runs)
    python benchmarks/zoo_build.py --quick     # under 2 minutes on 2 cores
    python benchmarks/zoo_build.py             # full: recipe sizes (longer)

Prints a table, then one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import jax
import numpy as np

# Appended, not prepended: an installed (non-editable) wsl must win over the repo's wsl/ folder,
# which alone is not the whole package.
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from wsl.mesh import device_summary, host_summary, make_mesh, split_cpu  # noqa: E402
from wsl.zoos.architectures import build  # noqa: E402
from wsl.zoos.build import build_zoo, load_recipe_dataset  # noqa: E402
from wsl.zoos.init_schemes import initial_population  # noqa: E402

# The trainer's own subset masks (private): the torch baseline must learn from exactly the
# examples each population member learns from.
from wsl.zoos.population import (  # noqa: E402
    FLOAT_HPARAMS,
    TrainSettings,
    _subset_masks,
    train_population,
)
from wsl.zoos.recipes import get_recipe, plan  # noqa: E402
from wsl.zoos.torch_layout import to_torch_state  # noqa: E402

SETUPS = {
    # name: (recipe, {mode: overrides}, {mode: baseline sample size}); a setup runs in the
    # modes it lists
    "mlp": ("mlp-mnist1d",
            {"quick": ["num_models=256", "epochs=2", "checkpoints=[0,2]", "models_per_shard=256",
                       "optimizer=adam", "activation=relu"],
             "full": []},
            {"quick": 6, "full": 16}),
    "cnn": ("small-cnn",
            {"quick": ["num_models=64", "epochs=1", "checkpoints=[0,1]", "models_per_shard=64",
                       "optimizer=adam", "activation=relu"],
             "full": ["num_models=256"]},
            {"quick": 3, "full": 6}),
    # Smoke: the digits MLP, whose data load in a moment (MNIST-1D is generated for seconds).
    "digits": ("quick",
               {"smoke": ["num_models=8", "epochs=1", "checkpoints=[0,1]", "models_per_shard=8"]},
               {"smoke": 1}),
}


def group_architecture(recipe, data, activation: str):
    """The architecture a build of `recipe` trains for one activation group."""
    return build(recipe.architecture, **recipe.arch, activation=activation,
                 input_shape=tuple(data.input_shape), num_classes=data.num_classes)


# ------------------------------------------------------------------------------ torch baseline
def _torch_model(arch, torch):
    """The architecture in PyTorch with parameter names matching `to_torch_state`."""
    nn, F = torch.nn, torch.nn.functional
    act = {"relu": F.relu, "tanh": torch.tanh}[arch.config["activation"]]

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            sizes = ([int(np.prod(arch.input_shape))] + list(arch.config["widths"])
                     + [arch.num_classes])
            for i in range(len(sizes) - 1):
                setattr(self, f"dense_{i}", nn.Linear(sizes[i], sizes[i + 1]))
            self.depth = len(sizes) - 1

        def forward(self, x, p):
            x = x.flatten(1)
            for i in range(self.depth - 1):
                x = F.dropout(act(getattr(self, f"dense_{i}")(x)), p, self.training)
            return getattr(self, f"dense_{self.depth - 1}")(x)

    class SmallCNN(nn.Module):
        def __init__(self):
            super().__init__()
            c, layers = arch.config["channels"], arch.config["num_layers"]
            cin = arch.input_shape[-1]
            for i in range(layers):
                setattr(self, f"conv_{i}", nn.Conv2d(cin if i == 0 else c, c, 3, stride=2))
            self.dense_0 = nn.Linear(c, arch.num_classes)
            self.layers = layers

        def forward(self, x, p):
            for i in range(self.layers):
                # flax "SAME" with stride 2 pads (0, 1) on even sizes; torch's padding=1 would not
                # match
                h = x.shape[-1]
                total = max((-(-h // 2) - 1) * 2 + 3 - h, 0)
                x = F.pad(x, (total // 2, total - total // 2, total // 2, total - total // 2))
                x = F.dropout(act(getattr(self, f"conv_{i}")(x)), p, self.training)
            return self.dense_0(x.mean(dim=(2, 3)))

    return MLP() if arch.name == "mlp" else SmallCNN()


def _torch_optimizer(torch, name, params, lr, wd):
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd)
    if name == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    return torch.optim.RMSprop(params, lr=lr, alpha=0.9, eps=1e-7, weight_decay=wd)


def torch_train(torch, arch, data, model, optimizer, recipe, x_t, subset, max_steps=None):
    """Train one model like the population trainer does; returns its final test accuracy.

    `max_steps` stops early without evaluating (used to calibrate the thread count)."""
    net = _torch_model(arch, torch)
    # The population trainer's initial weights (shared draws in a fixed-seed recipe).
    init_id = model["seed"] % recipe.init_seeds if recipe.init_seeds else model["seed"]
    init = initial_population(arch, [init_id], [model["init"]], [model["init_scale"]],
                              [model["bias_init"]], recipe.seed)
    weights = to_torch_state(arch.weight_space, jax.tree.map(lambda v: v[0], init))
    net.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in weights.items()})
    opt = _torch_optimizer(torch, optimizer, net.parameters(), model["lr"], model["weight_decay"])
    x_train, y_train, evals = x_t
    w = torch.from_numpy(subset.astype(np.float32))
    n, b = len(y_train), recipe.batch_size
    steps = max(n // b, 1)
    rng = np.random.default_rng(recipe.seed)
    acc = float("nan")
    done = 0
    for epoch in range(recipe.epochs + 1):
        if epoch in recipe.checkpoint_epochs and max_steps is None:
            net.eval()
            with torch.no_grad():
                for x, y, weight in evals(w):
                    correct = total = 0.0
                    for s in range(0, len(y), 500):
                        out = net(x[s:s + 500], 0.0)
                        ce = torch.nn.functional.cross_entropy(out, y[s:s + 500], reduction="none")
                        ww = weight[s:s + 500]
                        total += float((ce * ww).sum())
                        correct += float(((out.argmax(1) == y[s:s + 500]).float() * ww).sum())
                    acc = correct / max(float(weight.sum()), 1.0)
            net.train()
        if epoch == recipe.epochs:
            break
        order = torch.from_numpy(rng.permutation(n)[:steps * b].reshape(steps, b))
        for idx in order:
            out = net(x_train[idx], model["dropout"])
            ce = torch.nn.functional.cross_entropy(out, y_train[idx], reduction="none")
            wb = w[idx]
            loss = (ce * wb).sum() / wb.sum().clamp(min=1.0)
            opt.zero_grad()
            loss.backward()
            if not torch.isfinite(loss):  # the population trainer freezes such a model
                break
            opt.step()
            done += 1
            if max_steps is not None and done >= max_steps:
                return acc
    return acc


def _torch_data(torch, data, recipe):
    to_nchw = (lambda x: torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))) \
        if data.x_train.ndim == 4 else torch.from_numpy
    limit = recipe.eval_examples or None
    x_train, y_train = to_nchw(data.x_train), torch.from_numpy(data.y_train.astype(np.int64))
    val = (to_nchw(data.x_val[:limit]), torch.from_numpy(data.y_val[:limit].astype(np.int64)))
    test = (to_nchw(data.x_test[:limit]), torch.from_numpy(data.y_test[:limit].astype(np.int64)))
    n_train_eval = len(data.y_train[:limit])

    def evals(w):
        yield x_train[:n_train_eval], y_train[:n_train_eval], w[:n_train_eval]
        yield val[0], val[1], torch.ones(len(val[1]))
        yield test[0], test[1], torch.ones(len(test[1]))

    return x_train, y_train, evals


# ------------------------------------------------------------------------------ measurements
def _sample(models, k):
    picks = np.linspace(0, len(models) - 1, k + 1).round().astype(int)
    return [models[i] for i in picks]  # first is the untimed warm-up


def measure(name, mode, torch):
    recipe_name, overrides, sample_sizes = SETUPS[name]
    recipe = get_recipe(recipe_name, overrides[mode])
    data = load_recipe_dataset(recipe)
    models, shards = plan(recipe)
    row = {"setup": name, "recipe": recipe.name, "models": len(models), "epochs": recipe.epochs,
           "steps_per_model": recipe.epochs * max(len(data.y_train) // recipe.batch_size, 1),
           "groups": len({(s.group["activation"], s.group["optimizer"]) for s in shards})}
    mesh = make_mesh(("models",))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        build_zoo(recipe, os.path.join(tmp, "first"), progress=False, mesh=mesh)
        row["wsl_first_s"] = time.perf_counter() - start
        start = time.perf_counter()
        zoo = build_zoo(recipe, os.path.join(tmp, "again"), progress=False, mesh=mesh)
        row["wsl_s"] = time.perf_counter() - start
        row["wsl_mean_test_acc"] = float(np.nanmean(zoo.filter(epoch="last").metrics["test_acc"]))
    row["wsl_models_per_s"] = len(models) / row["wsl_s"]
    row["wsl_models_per_s_with_compile"] = len(models) / row["wsl_first_s"]
    one = make_mesh(("models",), devices=mesh.devices.flat[:1])
    if len(mesh.devices.flat) > 1:  # the same population on one of the devices, for comparison
        with tempfile.TemporaryDirectory() as tmp:
            build_zoo(recipe, os.path.join(tmp, "first"), progress=False, mesh=one)
            start = time.perf_counter()
            build_zoo(recipe, os.path.join(tmp, "again"), progress=False, mesh=one)
            row["wsl_one_device_models_per_s"] = len(models) / (time.perf_counter() - start)

    sample = _sample(models, sample_sizes[mode])

    def jax_one(model):
        arch = group_architecture(recipe, data, model["activation"])
        hp = {k: [model[k]] for k in FLOAT_HPARAMS + ("seed", "init")}
        settings = TrainSettings.from_recipe(recipe, model["optimizer"])
        result = train_population(arch, data, hp, settings, mesh=one)
        return float(result.metrics["test_acc"][0, -1])

    for group in {(m["activation"], m["optimizer"]) for m in sample}:  # compile every group once
        jax_one(next(m for m in models if (m["activation"], m["optimizer"]) == group))
    start = time.perf_counter()
    for model in sample[1:]:
        jax_one(model)
    row["jax_loop_models_per_s"] = (len(sample) - 1) / (time.perf_counter() - start)

    if torch is not None:
        x_t = _torch_data(torch, data, recipe)
        def torch_one(model, max_steps=None):
            arch = group_architecture(recipe, data, model["activation"])
            subset = _subset_masks([model["seed"]], [model["train_fraction"]], len(data.y_train),
                                   recipe.seed)[0]
            return torch_train(torch, arch, data, model, model["optimizer"], recipe, x_t, subset,
                               max_steps)
        # Under CPU contention (other jobs on the machine) torch's default intra-op threads can
        # be many times slower than one thread for these tiny networks: time a few steps with
        # each and keep the faster, so the baseline is the strongest available.
        default_threads = torch.get_num_threads()
        calibration = 10 if mode == "smoke" else 40  # timed steps per thread count
        per_step = {}
        for threads in dict.fromkeys((default_threads, 1)):
            torch.set_num_threads(threads)
            torch_one(sample[0], max_steps=5)
            start = time.perf_counter()
            torch_one(sample[0], max_steps=calibration)
            per_step[threads] = (time.perf_counter() - start) / calibration
        best = min(per_step, key=per_step.get)
        torch.set_num_threads(best)
        row["torch_threads"] = best
        row["torch_step_ms_by_threads"] = {t: round(v * 1e3, 3) for t, v in per_step.items()}
        torch_one(sample[0])
        start = time.perf_counter()
        accs = [torch_one(model) for model in sample[1:]]
        row["torch_models_per_s"] = (len(sample) - 1) / (time.perf_counter() - start)
        row["torch_mean_test_acc_sample"] = float(np.nanmean(accs))
        torch.set_num_threads(default_threads)
    row["baseline_sample"] = len(sample) - 1
    return row


def _fmt(v):
    return "—" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    speed = parser.add_mutually_exclusive_group()
    speed.add_argument("--quick", action="store_true", help="small populations (< 2 minutes)")
    speed.add_argument("--smoke", action="store_true",
                       help="seconds: 8 digits MLPs, one epoch, one baseline model")
    parser.add_argument("--only", choices=sorted(SETUPS), help="run one setup")
    parser.add_argument("--cpu-devices", type=int, default=None, metavar="K",
                        help="JAX devices the CPU is split into, as `wsl zoo build --cpu-devices` "
                             "(default: its default, one per core; the baselines use one)")
    args = parser.parse_args(argv)
    split_cpu(args.cpu_devices)  # before JAX starts, as `wsl zoo build` does
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    try:
        import torch
        torch.manual_seed(0)
    except ImportError:
        torch = None
        print("PyTorch is not installed: skipping the torch column "
              "(pip install torch==2.13.0, or the wsl[torch] extra)")
    rows = [measure(name, mode, torch) for name in SETUPS
            if args.only in (None, name) and mode in SETUPS[name][1]]
    if not rows:
        parser.error(f"--only {args.only} has no {mode} setup")
    for row in rows:
        row["speedup_vs_torch"] = (row["wsl_models_per_s"] / row["torch_models_per_s"]
                                   if "torch_models_per_s" in row else None)
        row["speedup_vs_jax_loop"] = row["wsl_models_per_s"] / row["jax_loop_models_per_s"]

    cols = ["setup", "models", "groups", "steps_per_model", "wsl_models_per_s",
            "wsl_models_per_s_with_compile", "wsl_one_device_models_per_s",
            "jax_loop_models_per_s", "torch_models_per_s", "speedup_vs_torch",
            "speedup_vs_jax_loop", "wsl_mean_test_acc"]
    table = [[_fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in table)) for i, c in enumerate(cols)]
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths)))
    for t in table:
        print("  ".join(v.rjust(w) for v, w in zip(t, widths)))
    print(f"(baselines timed on {', '.join(str(r['baseline_sample']) for r in rows)} models after "
          f"a warm-up, on one device; wsl timed on the whole population, steady state = second "
          f"build, on {device_summary()})")
    for r in rows:
        if "torch_threads" in r:
            print(f"torch {r['setup']}: ms per step by thread count "
                  f"{r['torch_step_ms_by_threads']}, timed with {r['torch_threads']} thread(s)")
    result = {"benchmark": "zoo_build", "mode": mode, "quick": args.quick,
              "torch": torch is not None, "cpu_count": os.cpu_count(), "devices": device_summary(),
              "host": host_summary()}
    for r in rows:
        p = r["setup"]
        result.update({f"{p}_models_per_s": r["wsl_models_per_s"],
                       f"{p}_models_per_s_with_compile": r["wsl_models_per_s_with_compile"],
                       f"{p}_one_device_models_per_s": r.get("wsl_one_device_models_per_s"),
                       f"{p}_jax_loop_models_per_s": r["jax_loop_models_per_s"],
                       f"{p}_torch_models_per_s": r.get("torch_models_per_s"),
                       f"{p}_speedup_vs_torch": r["speedup_vs_torch"],
                       f"{p}_speedup_vs_jax_loop": r["speedup_vs_jax_loop"],
                       f"{p}_models": r["models"], f"{p}_torch_threads": r.get("torch_threads")})
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
