"""Population trainer: many networks of one architecture trained at once in one compiled program.

The model axis is `vmap`ped and sharded over a `jax.sharding.Mesh` (axis ``"models"``). Values
that only change numbers stay per-model inside one program: learning rate, weight decay, init
scheme and scale, bias init, dropout rate, train fraction (a per-model mask on the loss) and seed.
Values that change code (activation, optimizer, widths) are separate calls, one compiled program
each. One epoch is one compiled call (`lax.scan` over its steps, state donated).

Width is per model too (phase zoos): with a ``width`` hyperparameter every hidden group keeps its
first `width` units and the rest stay exactly zero (`WeightSpace.width_mask`), so networks of many
widths train in one padded program and each computes what its narrow network computes.

Reproducibility: every model's keys derive from (seed, the model's own seed) only, and with the
default ``data_order="shared"`` the batch order from (seed, epoch) only, so a model trains the same
whichever population, shard, padding or device count it is trained in.

A member whose loss or weights become non-finite stops updating (its last finite weights are
kept) and is flagged ``diverged``; it never stops the others.

CPU speed: convolutions run as batched matmuls (`population_apply`), and dropout masks come
from a cheap counter-based hash PRNG (`DROPOUT_PRNG`) instead of threefry.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from wsl.errors import WslError
from wsl.mesh import axis_size, make_mesh, round_up
from wsl.weight_space import nest_paths
from wsl.zoos.architectures import Architecture
from wsl.zoos.datasets import Dataset
from wsl.zoos.dropout_prng import DROPOUT_PRNG
from wsl.zoos.errors import PopulationError
from wsl.zoos.fast_conv import population_apply
from wsl.zoos.init_schemes import INITS, initial_population, model_key_data
from wsl.zoos.tasks import TaskArrays

OPTIMIZERS: dict[str, Callable[[], optax.GradientTransformation]] = {
    # Learning rates are per-model values, so every optimizer is written with unit step size
    # and the update is scaled by the model's own rate afterwards.
    "sgd": optax.identity,
    "momentum": lambda: optax.trace(decay=0.9),
    "adam": optax.scale_by_adam,
    "rmsprop": lambda: optax.scale_by_rms(decay=0.9, eps=1e-7),
}
LR_SCHEDULES = ("constant", "cosine")
FLOAT_HPARAMS = ("lr", "weight_decay", "init_scale", "bias_init", "dropout", "train_fraction")
METRIC_COLUMNS = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """What one compiled group shares: schedule, batch size, optimizer, seed, evaluation size."""

    epochs: int
    checkpoints: tuple[int, ...]
    batch_size: int = 32
    optimizer: str = "adam"
    seed: int = 0
    data_order: str = "shared"  # "shared": one batch order for all models; "per_model": own order
    # 0: every model draws its own initial weights. k >= 1: initial weights come from k shared
    # draws (model seed mod k), the "fixed seed" zoos of Schürholt et al.: members of one draw
    # start in the same basin and differ only by hyperparameters and data.
    init_seeds: int = 0
    eval_examples: int = 0  # examples of each split evaluated per checkpoint; 0 = all
    eval_batch: int = 500
    # Weight-space paths of the tensors that train; the others keep their values exactly (e.g.
    # the head alone, a linear probe of given networks' features). () = every tensor.
    trainable: tuple[str, ...] = ()
    # The learning rate rises linearly to lr over the first `warmup_epochs` epochs (step k of
    # the warmup's W steps takes (k + 1) / W of it; fractions of an epoch allowed), every model
    # alike: a common guard for networks that start near a solution (pretrained or generated),
    # which Adam's first steps — about lr on every weight, whatever its gradient — may throw
    # off. 0 = none.
    warmup_epochs: float = 0.0
    # "constant", or "cosine": the rate falls from lr to 0 along half a cosine over the run's
    # `epochs` (after the warmup's factor, if any), every model alike. Annealing settles a network
    # in its basin at the end of a fixed budget; with a short budget (a few epochs of fine-tuning
    # a network that starts near a solution) it is the usual recipe.
    lr_schedule: str = "constant"

    def __post_init__(self):
        if self.lr_schedule not in LR_SCHEDULES:
            raise PopulationError(f"unknown lr_schedule {self.lr_schedule!r}; "
                                  f"choose from {list(LR_SCHEDULES)}")
        if self.optimizer not in OPTIMIZERS:
            raise PopulationError(f"unknown optimizer {self.optimizer!r}; "
                                  f"choose from {sorted(OPTIMIZERS)}")
        if self.data_order not in ("shared", "per_model"):
            raise PopulationError(f"data_order must be 'shared' or 'per_model', "
                                  f"got {self.data_order!r}")
        if self.init_seeds < 0:
            raise PopulationError(f"init_seeds must be 0 (own init per model) or the number of "
                                  f"shared initialisations, got {self.init_seeds}")
        if not self.warmup_epochs >= 0:
            raise PopulationError(f"warmup_epochs must be ≥ 0, got {self.warmup_epochs}")
        if self.epochs < 0 or self.batch_size < 1:
            raise PopulationError(f"need epochs >= 0 and batch_size >= 1, "
                                  f"got {self.epochs}, {self.batch_size}")
        bad = [c for c in self.checkpoints if not 0 <= c <= self.epochs]
        if bad or not self.checkpoints or list(self.checkpoints) != sorted(set(self.checkpoints)):
            raise PopulationError(f"checkpoints must be increasing epochs in [0, {self.epochs}], "
                                  f"got {list(self.checkpoints)}")

    @classmethod
    def from_recipe(cls, recipe, optimizer: str) -> TrainSettings:
        """The settings of one compiled group of a `wsl.zoos.recipes.Recipe`: the one place a
        recipe's fields become trainer settings."""
        return cls(epochs=recipe.epochs, checkpoints=tuple(recipe.checkpoint_epochs),
                   batch_size=recipe.batch_size, optimizer=optimizer, seed=recipe.seed,
                   data_order=recipe.data_order, init_seeds=recipe.init_seeds,
                   eval_examples=recipe.eval_examples)


@dataclasses.dataclass
class PopulationResult:
    """Weights and metrics at every checkpoint: leading axes (models, checkpoints)."""

    params: dict
    metrics: dict[str, np.ndarray]
    epochs: tuple[int, ...]


def _subset_masks(seeds, fractions, n: int, base_seed: int) -> np.ndarray:
    """(models, n) bool: which training examples each model may learn from."""
    masks = np.zeros((len(seeds), n), bool)
    for m, (seed, fraction) in enumerate(zip(seeds, fractions)):
        count = max(int(round(float(fraction) * n)), 1)
        if count >= n:
            masks[m] = True
        else:
            rng = np.random.default_rng([base_seed % 2**63, int(seed) % 2**63, 3])
            masks[m, rng.permutation(n)[:count]] = True
    return masks


# ------------------------------------------------------------------------------- programs
def _per_model_loss(arch, params, x, y, weight, rate, key):
    logits = population_apply(arch, params, x, rate, key)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return jnp.sum(ce * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def _task_inputs(task, x, y):
    """One model's view of raw source examples under its task: transformed inputs and its own
    labels (examples of other classes get label 0 and weight 0 elsewhere)."""
    flat = x.reshape(x.shape[0], -1)[:, task["index"]] * task["scale"] + task["shift"]
    return flat.reshape(x.shape), jnp.maximum(task["label_map"][y], 0)


@functools.lru_cache(maxsize=64)
def _programs(arch: Architecture, optimizer: str, batch_size: int, dropout: bool, data_order: str,
              eval_batch: int, masked: bool = False, tasked: bool = False,
              trainable: tuple[str, ...] = (), warmup_epochs: float = 0.0,
              cosine_epochs: int = 0):
    """The compiled epoch and evaluation of one group; cached on the (hashable) architecture.

    `tasked`: every model has its own task (`wsl.zoos.tasks.TaskArrays`): an epoch walks
    positions of each model's own example pool (``hp["pool"]``) in one shared order, and inputs
    and labels pass through the model's transform and label map. `cosine_epochs` > 0: the rate
    anneals to 0 over that many epochs (TrainSettings.lr_schedule)."""
    opt = OPTIMIZERS[optimizer]()
    space = arch.weight_space
    # 1 on the entries that train, 0 on the frozen: updates are multiplied by it, so frozen
    # tensors move by neither the gradient nor weight decay.
    trains = None if not trainable else space.unflatten(np.concatenate(
        [np.full(t.size, t.path in trainable, np.float32) for t in space.tensors]))

    def model_step(params, opt_state, diverged, hp, x, y, weight, step, lr_scale):
        if tasked:
            x, y = _task_inputs(hp["task"], x, y)
        key = jax.random.fold_in(hp["dropout_key"], step) if dropout else None
        loss, grads = jax.value_and_grad(_per_model_loss, argnums=1)(
            arch, params, x, y, weight, hp["dropout"], key)
        grads = jax.tree.map(lambda g, p: g + hp["weight_decay"] * p, grads, params)
        updates, new_state = opt.update(grads, opt_state, params)
        if trains is not None:
            updates = jax.tree.map(jnp.multiply, updates, trains)
        new_params = jax.tree.map(lambda p, u: p - lr_scale * hp["lr"] * u, params, updates)
        if masked:  # units beyond the model's width stay zero whatever the optimizer does
            new_params = jax.tree.map(jnp.multiply, new_params, hp["mask"])
        ok = jnp.isfinite(loss) & _all_finite(new_params)
        keep = ok & ~diverged
        pick = lambda new, old: jax.tree.map(lambda a, b: jnp.where(keep, a, b), new, old)
        return pick(new_params, params), pick(new_state, opt_state), diverged | ~ok

    def train_epoch(state, x_train, y_train, subset, epoch, order_key):
        # Tasked: positions in each model's pool; the subset mask is over those positions.
        n = state["hp"]["pool"].shape[1] if tasked else x_train.shape[0]
        steps = max(n // batch_size, 1)
        take = min(steps * batch_size, n)
        if data_order == "shared":
            order = jax.random.permutation(jax.random.fold_in(order_key, epoch), n)[:take]
            order = order.reshape(steps, -1)
        else:
            keys = jax.vmap(jax.random.fold_in, (0, None))(state["hp"]["order_key"], epoch)
            order = jax.vmap(lambda k: jax.random.permutation(k, n)[:take])(keys)
            order = order.reshape(order.shape[0], steps, -1).swapaxes(0, 1)

        def body(carry, inputs):
            params, opt_state, diverged = carry
            idx, i = inputs
            step = epoch * steps + i
            lr_scale = (jnp.minimum(1.0, (step + 1) / (warmup_epochs * steps))
                        if warmup_epochs else 1.0)
            if cosine_epochs:
                total = cosine_epochs * steps
                lr_scale = lr_scale * 0.5 * (1 + jnp.cos(jnp.pi * jnp.minimum(step, total) / total))
            # shared: (batch, ...); per model: (models, batch, ...)
            if tasked:
                pool = state["hp"]["pool"]
                examples = (jnp.take(pool, idx, axis=1) if data_order == "shared"
                            else jnp.take_along_axis(pool, idx, axis=1))
                x, y = x_train[examples], y_train[examples]
            else:
                x, y = x_train[idx], y_train[idx]
            if tasked:
                weight = (jnp.take(subset, idx, axis=1) if data_order == "shared"
                          else jnp.take_along_axis(subset, idx, axis=1)).astype(jnp.float32)
                axes = (0, 0, 0, 0, 0, 0, 0, None, None)
            elif data_order == "shared":
                weight = jnp.take(subset, idx, axis=1).astype(jnp.float32)
                axes = (0, 0, 0, 0, None, None, 0, None, None)
            else:
                weight = jnp.take_along_axis(subset, idx, axis=1).astype(jnp.float32)
                axes = (0, 0, 0, 0, 0, 0, 0, None, None)
            return jax.vmap(model_step, axes)(params, opt_state, diverged, state["hp"], x, y,
                                              weight, step, lr_scale), None

        carry = (state["params"], state["opt_state"], state["diverged"])
        (params, opt_state, diverged), _ = jax.lax.scan(body, carry, (order, jnp.arange(steps)))
        return {**state, "params": params, "opt_state": opt_state, "diverged": diverged}

    def evaluate(params, x, y, weight, task=None):
        """Per-model (loss sum, correct count, example count) under S example weightings.

        `weight` is (models, S, n): one row per split (train subset, val, test) of the
        concatenated examples `x`, so every split is scored in one compiled call.

        Separate from `wsl.zoos.scoring.population_metrics` on purpose: it scores each model on its
        own training subset (per-model weights), takes the sharded params pytree in place, and
        runs all splits in one call, so a checkpoint costs no flattening, no host round trip
        and no extra compiled program per split.
        """
        n = x.shape[0]
        size = min(eval_batch, n)
        pad = round_up(n, size) - n
        x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
        y = jnp.pad(y, (0, pad))
        weight = jnp.pad(weight, [(0, 0), (0, 0), (0, pad)])
        xs = x.reshape((-1, size) + x.shape[1:])
        ys = y.reshape(-1, size)
        ws = jnp.moveaxis(weight.reshape(weight.shape[:2] + (-1, size)), 2, 0)

        def per_model(p, xb, yb, wb, task):
            if tasked:
                xb, yb = _task_inputs(task, xb, yb)
            logits = population_apply(arch, p, xb)
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, yb)
            correct = (jnp.argmax(logits, -1) == yb).astype(jnp.float32)
            return wb @ jnp.stack([ce, correct, jnp.ones_like(ce)], axis=1)  # (S, 3)

        models = weight.shape[0]
        # Convolutional nets give each model its own copy of the batch: from a shared input the
        # first conv is one matmul for all models whose (examples, models) output XLA then
        # transposes to (models, examples), which costs more than the copy. A first dense layer
        # is cheaper shared.
        own_copy = any(leaf.ndim == 5 for leaf in jax.tree.leaves(params))  # HWIO + models

        def body(total, batch):
            xb, yb, wb = batch
            if own_copy:
                xb = jnp.broadcast_to(xb, (models,) + xb.shape)
            axes = (0, 0 if own_copy else None, None, 0, 0 if tasked else None)
            return total + jax.vmap(per_model, axes)(params, xb, yb, wb, task), None

        total, _ = jax.lax.scan(body, jnp.zeros(weight.shape[:2] + (3,)), (xs, ys, ws))
        return total

    return {"train_epoch": jax.jit(train_epoch, donate_argnums=0), "evaluate": jax.jit(evaluate)}


# ------------------------------------------------------------------------------- training
def shared_hparams(seeds: Sequence[int], *, lr: float, weight_decay: float = 0.0,
                   init_scale: float = 1.0, bias_init: float = 0.0, dropout: float = 0.0,
                   train_fraction: float = 1.0, init: str = "default") -> dict[str, list]:
    """Hyperparameters for `train_population` of one model per seed, all other values shared
    (fine-tuning runs, a recipe's parents)."""
    n = len(seeds)
    return {"lr": [lr] * n, "weight_decay": [weight_decay] * n, "init_scale": [init_scale] * n,
            "bias_init": [bias_init] * n, "dropout": [dropout] * n,
            "train_fraction": [train_fraction] * n, "seed": list(seeds), "init": [init] * n}


def check_hparams(hparams: Mapping[str, Any]) -> int:
    """Validate per-model hyperparameter arrays; returns the number of models. ``width``
    (active units per hidden group, 0 = all) is optional."""
    need = FLOAT_HPARAMS + ("seed", "init")
    missing = [k for k in need if k not in hparams]
    if missing:
        raise PopulationError(f"hyperparameters missing {missing}; need {list(need)}")
    sizes = {k: len(np.atleast_1d(hparams[k])) for k in need + (("width",) if "width" in hparams
                                                                 else ())}
    if len(set(sizes.values())) != 1:
        raise PopulationError(f"hyperparameter arrays differ in length: {sizes}")
    n = sizes["lr"]
    arrays = {k: np.asarray(hparams[k], np.float64) for k in FLOAT_HPARAMS}
    checks = [("lr", arrays["lr"] > 0, "> 0"),
              ("weight_decay", arrays["weight_decay"] >= 0, ">= 0"),
              ("init_scale", arrays["init_scale"] >= 0, ">= 0"),
              ("dropout", (arrays["dropout"] >= 0) & (arrays["dropout"] < 1), "in [0, 1)"),
              ("train_fraction", (arrays["train_fraction"] > 0) & (arrays["train_fraction"] <= 1),
               "in (0, 1]")]
    for name, ok, rule in checks:
        if not ok.all():
            raise PopulationError(f"{name} must be {rule}; model {int(np.argmin(ok))} has "
                                  f"{arrays[name][np.argmin(ok)]}")
    if "width" in hparams:
        widths = np.asarray(hparams["width"])
        if widths.dtype.kind not in "iu" and not np.all(widths == np.round(widths)) \
                or (widths < 0).any():
            raise PopulationError(f"width must be whole unit counts >= 0 (0 = full width), got "
                                  f"{widths.tolist()[:8]}")
    unknown = sorted(set(map(str, np.atleast_1d(hparams["init"]))) - set(INITS))
    if unknown:
        raise PopulationError(f"unknown init schemes {unknown}; choose from {list(INITS)}")
    return n


def width_masks(arch: Architecture, widths) -> dict:
    """Stacked `WeightSpace.width_mask` of every model (width 0 = all units)."""
    space = arch.weight_space
    full = max(space.group_sizes.values(), default=1)
    try:
        each = {w: space.width_mask(int(w) or full) for w in set(np.asarray(widths).tolist())}
    except WslError as err:
        raise PopulationError(f"architecture {arch.name!r}: {err}") from err
    return nest_paths({t.path: np.stack([each[w][t.path] for w in np.asarray(widths).tolist()])
                       for t in space.tensors})


def _given_population(arch: Architecture, params: Any, n_models: int, padded: int) -> dict:
    """Given starting weights, checked against the architecture and padded like the rest."""
    space = arch.weight_space
    leaves = {t.path: t.shape for t in space.tensors}
    try:
        flat = np.asarray(space.flatten(params), np.float32)
    except Exception as err:  # a missing tensor or wrong shape: name it, not a tree-map trace
        raise PopulationError(f"initial_params do not fit architecture {arch.name!r} "
                              f"(tensors {sorted(leaves)}): {err}") from err
    if flat.shape != (n_models, space.num_params):
        raise PopulationError(f"initial_params hold {flat.shape[0]} networks of "
                              f"{flat.shape[-1]} weights; need {n_models} of {space.num_params}")
    return space.unflatten(_pad(flat, padded))


def _pad(values: np.ndarray, size: int) -> np.ndarray:
    return np.concatenate([values, np.repeat(values[:1], size - len(values), axis=0)])


def population_mesh() -> Mesh:
    """The mesh a population trains on by default: its model axis over this process's devices
    (a population is one process's work; a multi-process zoo build splits it by shard)."""
    return make_mesh(("models",), devices=jax.local_devices())


def train_population(arch: Architecture, data: Dataset, hparams: Mapping[str, Any],
                     settings: TrainSettings, mesh: Mesh | None = None,
                     on_epoch: Callable[[int], None] | None = None, *,
                     tasks: TaskArrays | None = None,
                     initial_params: Any = None) -> PopulationResult:
    """Train one population of `arch` on `data`; `hparams` holds one value per model for
    lr, weight_decay, init_scale, bias_init, dropout, train_fraction, seed and init (a name), and
    optionally width (active units of every hidden group; 0 = all).

    `tasks` gives every model its own task on the source `data` (classes, labels and input
    transform; `wsl.zoos.tasks.TaskArrays`): each model learns from, and is scored on, its own
    task's examples only. `initial_params` (a population pytree, leading axis = models) replaces
    the init scheme: fine-tuning from given networks (`init`, `init_scale` and `bias_init` are
    then unused).

    `on_epoch(epochs_done)` runs after each epoch has finished computing; an exception it raises
    stops training cleanly."""
    n_models = check_hparams(hparams)
    if tuple(data.input_shape) != tuple(arch.input_shape):
        raise PopulationError(f"dataset {data.name!r} has inputs {data.input_shape}, architecture "
                              f"{arch.name!r} expects {arch.input_shape}")
    if tasks is not None:
        if len(tasks.label_map) != n_models or tasks.label_map.shape[1] != data.num_classes:
            raise PopulationError(f"tasks cover {tasks.label_map.shape[0]} models of "
                                  f"{tasks.label_map.shape[1]} source classes; the population has "
                                  f"{n_models} models on {data.num_classes} classes")
        if int(tasks.label_map.max(initial=0)) >= arch.num_classes:
            raise PopulationError(f"tasks have up to {int(tasks.label_map.max()) + 1} classes, "
                                  f"architecture {arch.name!r} has {arch.num_classes}")
    elif int(data.y_train.max(initial=0)) >= arch.num_classes:
        raise PopulationError(f"dataset {data.name!r} has labels up to {int(data.y_train.max())}, "
                              f"architecture {arch.name!r} has {arch.num_classes} classes")
    unknown = sorted(set(settings.trainable) - set(arch.weight_space.paths))
    if unknown:
        raise PopulationError(f"trainable: no tensor {unknown} in architecture {arch.name!r}; "
                              f"its tensors are {list(arch.weight_space.paths)}")
    mesh = mesh or population_mesh()
    padded = round_up(n_models, axis_size(mesh))
    models_sharding = NamedSharding(mesh, P(mesh.axis_names[0]))
    replicated = NamedSharding(mesh, P())
    # Padding models repeat model 0; they train alongside and are dropped at the end.
    floats = {k: _pad(np.asarray(hparams[k], np.float32).reshape(-1), padded)
              for k in FLOAT_HPARAMS}
    seeds = _pad(np.asarray(hparams["seed"], np.int64).reshape(-1), padded)
    schemes = _pad(np.array([str(s) for s in np.atleast_1d(hparams["init"])]), padded)

    masked = "width" in hparams
    programs = _programs(arch, settings.optimizer, settings.batch_size,
                         bool((floats["dropout"] > 0).any()), settings.data_order,
                         settings.eval_batch, masked, tasks is not None, settings.trainable,
                         settings.warmup_epochs,
                         settings.epochs if settings.lr_schedule == "cosine" else 0)
    if initial_params is not None:
        params = _given_population(arch, initial_params, n_models, padded)
    else:
        init_ids = seeds % settings.init_seeds if settings.init_seeds else seeds
        params = initial_population(arch, init_ids, schemes, floats["init_scale"],
                                    floats["bias_init"], settings.seed)
    if masked:
        mask = width_masks(arch, _pad(np.asarray(hparams["width"]).reshape(-1), padded))
        params = jax.tree.map(np.multiply, params, mask)
    opt_state = jax.vmap(OPTIMIZERS[settings.optimizer]().init)(params)
    keys = lambda stream, impl=None: jax.random.wrap_key_data(
        np.stack([model_key_data(settings.seed, s, stream) for s in seeds]), impl=impl)
    put = lambda tree: jax.device_put(tree, models_sharding)
    state = put({"params": params, "opt_state": opt_state,
                 "diverged": np.zeros(padded, bool),
                 "hp": {"lr": floats["lr"], "weight_decay": floats["weight_decay"],
                        "dropout": floats["dropout"], "dropout_key": keys(1, DROPOUT_PRNG),
                        "order_key": keys(2), **({"mask": mask} if masked else {})}})
    n_train = len(data.y_train)
    task_hp = {}
    if tasks is None:
        subset = _subset_masks(seeds, floats["train_fraction"], n_train, settings.seed)
    else:
        # Each model walks its own pool of task examples; its train fraction is a subset of the
        # pool, and pool padding (models whose task has fewer examples) is never learned from.
        pool, counts = tasks.pools(data.y_train)
        pool, counts = _pad(pool, padded), _pad(counts, padded)
        subset = np.zeros(pool.shape, bool)
        for m in range(padded):
            subset[m, :counts[m]] = _subset_masks(seeds[m:m + 1], floats["train_fraction"][m:m + 1],
                                                  int(counts[m]), settings.seed)[0]
        task_hp = {"pool": pool, "task": {
            "label_map": _pad(tasks.label_map, padded), "index": _pad(tasks.index, padded),
            "scale": _pad(tasks.scale, padded), "shift": _pad(tasks.shift, padded)}}
        state["hp"] = {**state["hp"], **put(task_hp)}

    # Every checkpoint scores all splits in one call: the train subset (each model's own
    # examples among the first `limit`), val and test, concatenated with one weight row each.
    limit = settings.eval_examples or None
    parts = [(data.x_train[:limit], data.y_train[:limit]), (data.x_val[:limit], data.y_val[:limit]),
             (data.x_test[:limit], data.y_test[:limit])]
    sizes = [len(y) for _, y in parts]
    weight = np.zeros((padded, 3, sum(sizes)), np.float32)
    if tasks is None:
        weight[:, 0, :sizes[0]] = subset[:, :sizes[0]]
        weight[:, 1, sizes[0]:sizes[0] + sizes[1]] = 1.0
        weight[:, 2, sizes[0] + sizes[1]:] = 1.0
    else:  # each model's own training subset and the val / test examples of its classes
        label_map = task_hp["task"]["label_map"]
        for m in range(padded):
            own = pool[m][subset[m]]
            own = own[own < sizes[0]]
            weight[m, 0, own] = 1.0
            weight[m, 1, sizes[0]:sizes[0] + sizes[1]] = label_map[m][parts[1][1]] >= 0
            weight[m, 2, sizes[0] + sizes[1]:] = label_map[m][parts[2][1]] >= 0
    rep = lambda a: jax.device_put(a, replicated)
    x_eval, y_eval = (rep(np.concatenate([x for x, _ in parts])),
                      rep(np.concatenate([y for _, y in parts])))
    weight = put(weight)
    x_train, y_train, subset = rep(data.x_train), rep(data.y_train), put(subset)
    order_key = rep(jax.random.wrap_key_data(model_key_data(settings.seed, -1, 3)))

    snapshots, scores, diverged = [], [], []
    for epoch in range(settings.epochs + 1):
        if epoch in settings.checkpoints:
            scores.append(programs["evaluate"](state["params"], x_eval, y_eval, weight,
                                               state["hp"].get("task")))
            diverged.append(np.asarray(state["diverged"]))  # the state is donated next
            snapshots.append(jax.device_get(state["params"]))
        if epoch < settings.epochs:
            state = programs["train_epoch"](state, x_train, y_train, subset,
                                            np.int32(epoch), order_key)
            if on_epoch is not None:
                # Only once the epoch has run: a callback may then stop the run by raising
                # (`wsl zoo build` does on Ctrl-C) with nothing in flight on the devices.
                jax.block_until_ready(state["params"])
                on_epoch(epoch + 1)
    stacked = jax.tree.map(lambda *c: np.stack(c, axis=1)[:n_models], *snapshots)
    totals = np.stack(jax.device_get(scores), axis=1)[:n_models]  # (models, ckpts, split, 3)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = totals[..., :2] / totals[..., 2:]  # an empty split gives nan, not a crash
    metrics = {}
    for s, split in enumerate(("train", "val", "test")):
        metrics[f"{split}_loss"], metrics[f"{split}_acc"] = means[:, :, s, 0], means[:, :, s, 1]
    metrics["gap"] = metrics["train_acc"] - metrics["test_acc"]
    metrics["diverged"] = np.stack(diverged, axis=1)[:n_models]
    return PopulationResult(stacked, metrics, tuple(settings.checkpoints))
