"""Shared fixtures: writers of published zoo formats, used by the readers' and importers' tests.

Each fixture returns the writer function, so a test calls it with its own paths and sizes; test
modules never import one another.
"""

import csv
import gzip
import json
import os

# Most tests are dominated by XLA:CPU compile time, not by run time. Tests check results, not
# speed, so they compile cheaply (subprocesses inherit it): no LLVM optimisation passes, the
# classic emitters instead of the fusion emitters (about 4x less compile time on encoder programs,
# same numbers to 1e-7) and one codegen unit per program. The few tests that run long programs
# (the demo) run in a subprocess with `optimised_env`. Must be set before jax starts its backend.
UNOPTIMISED = ("--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false "
               "--xla_cpu_parallel_codegen_split_count=1")
_TEST_FLAGS = tuple(flag.split("=")[0] for flag in UNOPTIMISED.split())
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {UNOPTIMISED}".strip()

import jax
import numpy as np
import pytest

from wsl.zoos.architectures import build
from wsl.zoos.torch_layout import to_torch_state
from wsl.zoos.torch_pickle import write_torch_checkpoint


# ------------------------------------------------------------------------- subprocess environments
def _env(flags: str) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                                if not f.startswith(_TEST_FLAGS
                                                    + ("--xla_force_host_platform_device_count",)))
    env["XLA_FLAGS"] = f"{env['XLA_FLAGS']} {flags}".strip()
    return env


@pytest.fixture
def optimised_env():
    """The environment for a subprocess that runs long compiled programs: optimised as a user's."""
    return _env("")


@pytest.fixture
def unset_devices_env():
    """The environment for a subprocess that chooses its own CPU device count (compiled
    unoptimised), as a user's shell without XLA_FLAGS leaves it."""
    env = _env(UNOPTIMISED)
    env.pop("JAX_NUM_CPU_DEVICES", None)
    return env


@pytest.fixture
def eight_device_env():
    """The environment for a subprocess with 8 fake CPU devices (compiled unoptimised)."""
    # A collective still waiting after two minutes is a deadlock: fail then, not at the timeout.
    return _env(f"--xla_force_host_platform_device_count=8 {UNOPTIMISED} "
                f"--xla_cpu_collective_call_terminate_timeout_seconds=120")


# ------------------------------------------------------------------------------ random networks
def _random_networks(space, n, seed=0):
    """`n` random networks of `space` as a flat dict: kernels N(0, 1/fan-in), 1-D tensors
    (biases, norm scales and shifts) N(0, 0.1²)."""
    rng = np.random.default_rng(seed)
    flat = {}
    for t in space.tensors:
        scale = 1 / np.sqrt(np.prod(t.shape[:-1])) if len(t.shape) > 1 else 0.1
        flat[t.path] = (rng.standard_normal((n,) + t.shape) * scale).astype(np.float32)
    return flat


@pytest.fixture
def random_networks():
    """`random_networks(space, n, seed=0)` -> flat dict of `n` random networks of `space`."""
    return _random_networks


# ------------------------------------------------------------------------------ Small CNN Zoo
TF_NAMES = {"conv_0": "conv2d", "conv_1": "conv2d_1", "conv_2": "conv2d_2", "dense_0": "dense"}


def _write_small_cnn_zoo(directory, num_models=6, steps=(0, 86), gz=True, bias_first=True,
                         seed=0):
    """A Small CNN Zoo in the published layout, from known SmallCNN params; returns our flat
    weights, one row per (model, step)."""
    directory.mkdir(parents=True, exist_ok=True)
    arch = build("small_cnn")
    pop = arch.init_population(jax.random.key(seed), num_models * len(steps))
    flat_ours = np.asarray(arch.weight_space.flatten(pop))
    layout, start = [], 0
    for layer in ("conv_0", "conv_1", "conv_2", "dense_0"):
        kinds = ("bias", "kernel") if bias_first else ("kernel", "bias")
        for kind in kinds:
            shape = arch.weight_space.tensor(f"{layer}/{kind}").shape
            size = int(np.prod(shape))
            layout.append((f"sequential/{TF_NAMES[layer]}/{kind}:0", start, start + size, size,
                           str(shape), f"{layer}/{kind}"))
            start += size
    offsets = arch.weight_space.offsets
    tf_rows = np.zeros_like(flat_ours)
    for name, a, b, size, shape, ours in layout:
        lo, hi = offsets[ours]
        tf_rows[:, a:b] = flat_ours[:, lo:hi]
    np.save(directory / "weights.npy", tf_rows)
    with open(directory / "layout.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["varname", "start_idx", "end_idx", "size", "shape"])
        w.writerows(row[:5] for row in layout)
    header = ["config.activation", "config.dataset", "config.learning_rate", "config.l2reg",
              "config.optimizer", "config.train_fraction", "modeldir", "step", "test_accuracy",
              "test_loss", "train_accuracy", "train_loss"]
    rng = np.random.default_rng(seed)
    rows = []
    for m in range(num_models):
        lr, act = 10 ** rng.uniform(-4, -1), ("relu", "tanh")[m % 2]
        for step in steps:
            acc = rng.uniform(0.1, 0.9)
            rows.append([act, "mnist", lr, 0.001, "adam", 0.5, f"/zoo/model_{m}", step, acc,
                         rng.uniform(0.3, 2), acc + 0.02, rng.uniform(0.3, 2)])
    opener = gzip.open if gz else open
    with opener(directory / ("metrics.csv.gz" if gz else "metrics.csv"), "wt", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return flat_ours


@pytest.fixture
def write_small_cnn_zoo():
    """``write_small_cnn_zoo(directory, num_models=6, steps=(0, 86), gz=True, bias_first=True,
    seed=0)`` writes a Small CNN Zoo and returns its weights as our flat rows."""
    return _write_small_cnn_zoo


# ------------------------------------------------------------------------------ IDX files
def _write_idx(path, array: np.ndarray, code: int, compress: bool = False) -> None:
    dtype = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    blob = (bytes([0, 0, code, array.ndim]) + np.array(array.shape, ">u4").tobytes()
            + array.astype(dtype).tobytes())
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(blob)


@pytest.fixture
def write_idx():
    """``write_idx(path, array, code, compress=False)`` writes one IDX file (MNIST's format) of
    dtype `code` (0x08 uint8 … 0x0E float64), gzipped if asked."""
    return _write_idx


# ------------------------------------------------------------------------------ Model Zoos
MODULE_INDEX = [0, 3, 6, 9, 11]  # conv, pool, act, conv, pool, act, conv, act, flatten, fc, act, fc


def _model_zoos_state(arch, params):
    """CNN-s params as a Model Zoos state dict (``module_list.<i>.weight`` / ``.bias``)."""
    torch_like = list(to_torch_state(arch.weight_space, params).items())
    state = {}
    for (name, value), i in zip(torch_like, [i for i in MODULE_INDEX for _ in (0, 1)]):
        state[f"module_list.{i}.{name.split('.')[-1]}"] = np.asarray(value)
    return state


def _write_model_zoos_trial(folder, arch, key, epochs=(0, 1, 2), saver=write_torch_checkpoint):
    """A Ray Tune trial folder as Model Zoos publish it; returns our params per epoch."""
    folder.mkdir(parents=True)
    (folder / "params.json").write_text(json.dumps(
        {"model::nlin": "tanh", "optim::lr": 3e-4, "optim::wd": 1e-3, "seed": 7,
         "model::init_type": "kaiming_uniform", "optim::optimizer": "adam"}))
    lines = [json.dumps({"training_iteration": e, "train_acc": 0.5 + 0.1 * e,
                         "test_acc": 0.4 + 0.1 * e, "train_loss": 1.0 / (e + 1),
                         "test_loss": 1.2 / (e + 1)})
             for e in epochs if e > 0]
    (folder / "result.json").write_text("\n".join(lines) + "\n")
    saved = {}
    for epoch, k in zip(epochs, jax.random.split(key, len(epochs))):
        params = arch.init(k)
        (folder / f"checkpoint_{epoch:06d}").mkdir()
        saver(folder / f"checkpoint_{epoch:06d}" / "checkpoints", _model_zoos_state(arch, params))
        saved[epoch] = params
    return saved


@pytest.fixture
def model_zoos_state():
    """``model_zoos_state(arch, params)``: CNN-s params as a Model Zoos state dict."""
    return _model_zoos_state


@pytest.fixture
def write_model_zoos_trial():
    """``write_model_zoos_trial(folder, arch, key, epochs=(0, 1, 2), saver=...)`` writes a Model
    Zoos trial folder and returns our params per epoch."""
    return _write_model_zoos_trial


# ------------------------------------------------------------------------------------ 8 devices
# The longest files (each mostly one subprocess) start first: the suite runs file by file on
# pytest-xdist workers (`-n auto --dist loadfile`), and a long file started last leaves the other
# workers idle while it finishes.
RUN_FIRST = ("test_demo.py", "test_readme.py", "test_eight_devices.py", "test_benchmarks.py",
             "test_multiprocess.py")


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one worker per core, at most four (XLA already uses every core while it runs;
    more workers only multiply the memory of their compiled programs)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(4, cores or 1))


def _run_order(item) -> int:
    name = item.path.name
    return RUN_FIRST.index(name) if name in RUN_FIRST else len(RUN_FIRST)


def pytest_collection_modifyitems(config, items):
    """Tests marked `eight_devices` run where 8 devices exist; elsewhere they are deselected here
    and tests/test_eight_devices.py runs them all in one subprocess with 8 fake CPU devices.
    The files of `RUN_FIRST` are moved to the front (a stable sort keeps every other order)."""
    items.sort(key=_run_order)
    if jax.device_count() >= 8:
        return
    skip = [item for item in items if item.get_closest_marker("eight_devices")]
    if skip:
        config.hook.pytest_deselected(items=skip)
        items[:] = [item for item in items if not item.get_closest_marker("eight_devices")]
