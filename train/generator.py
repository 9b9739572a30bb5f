"""Train a weight generator on a zoo and sample evaluated networks from it into a new zoo.

The pipeline (`wsl gen train` / `wsl gen sample`):

1. select rows of a zoo (each model's last checkpoint, not diverged, optionally a minimum accuracy;
   one activation unless the generator is conditioned on it);
2. align every selected network to a common reference by weight matching (`wsl.align.align_zoo`),
   flatten through the weight space and normalise per tensor (`wsl.models.normalize`); a
   task-conditioned generator also takes each model's task as per-class support features
   (`wsl.zoos.tasks`);
3. train the generator with the shared training loop (`wsl.train.train`, with EMA parameters);
4. sample, undo the normalisation, score every sample on the zoo's dataset
   (`wsl.zoos.scoring.population_metrics`) and write a zoo whose manifest marks it generated and
   names its generator. `wsl.eval.generated.compare_with_training` then compares it with the
   training population.

A generator directory holds ``generator.json`` (configs, architecture, dataset, selection),
``normalizer.npz``, ``aligned_train.npy`` (the aligned training weights) and the training runs
(``generator/``, and ``autoencoder/`` for latent-ddpm). ``generator.json`` is written first and
records the request (zoo, its fingerprint and manifest hash, configs, selection options): a rerun
into the same folder resumes only the same request, any other is refused before anything is
written.
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from wsl.align import align_zoo
from wsl.config import from_dict, to_dict
from wsl.distributed import barrier, is_primary
from wsl.errors import WslError
from wsl.models.diffusion import SAMPLERS as DIFFUSION_SAMPLERS
from wsl.models.flow import SAMPLERS as FLOW_SAMPLERS
from wsl.models.normalize import NORMALIZERS, EntryNormalizer, TensorNormalizer
from wsl.models.weight_generator import (
    AutoencoderTask,
    GeneratorConfig,
    GeneratorTask,
    make_autoencoder,
    make_generator,
    relabel_maps,
)
from wsl.outputs import check_output_dir
from wsl.train import TrainConfig, load_params, train
from wsl.train.checkpoint import claim_run_dir
from wsl.train.layout import fit_batch_size
from wsl.train.trainer import note_dropped
from wsl.zoos.architectures import build
from wsl.zoos.datasets import dataset_from_spec
from wsl.zoos.scoring import population_metrics, population_predictions
from wsl.zoos.store import MANIFEST, Zoo, manifest_fingerprint, sha256_file, write_zoo

# The settings a sampling call takes, in the order `sampling_settings` returns them.
SAMPLING_SETTINGS = ("sampler", "steps", "guidance", "temperature", "eta")
GENERATOR_FILE = "generator.json"
# Fields whose default changed: a generator.json written before the field existed was trained
# with this value (not today's default).
LEGACY_GENERATOR = {"scalar_embedding": "sinusoidal"}
# Which condition value achieves which score, measured on validation (`wsl gen calibrate`).
CONDITION_MAP_FILE = "condition_map.json"
# How the generator's training run is named on its progress bar and when it resumes.
RUN_LABELS = {"flow": "flow matching", "ddpm": "diffusion", "latent-ddpm": "latent diffusion"}
DEFAULT_TRAIN = TrainConfig(steps=3000, batch_size=64, ema_decay=0.999,
                            checkpoint=dataclasses.replace(TrainConfig().checkpoint, every=1000))
# generator.json keys a rerun may change (where it runs, logging) or that the request does not fix
# (what the selection found, how long alignment took).
GENERATOR_MUTABLE = ("train.log", "train.mesh", "train.checkpoint.async_save",
                     "train.data.prefetch", "selection.rows", "selection.activation",
                     "selection.num_models", "selection.align_seconds", "selection.connectivity")


class GenerateError(WslError, ValueError):
    """A zoo or generator directory that cannot be used as asked."""


@dataclasses.dataclass
class Selection:
    """The aligned, normalised training population a generator learns."""

    zoo: Zoo
    flat: np.ndarray  # aligned, raw weights (models, num_params)
    x: np.ndarray  # normalised
    normalizer: TensorNormalizer | EntryNormalizer
    activation: str | None
    class_names: list[str]
    cond_class: np.ndarray | None
    cond_scalar: np.ndarray | None  # standardised by `scalar_stats`
    align_seconds: float
    scalar_stats: dict | None = None  # mean, std and quantiles of the raw scalar condition
    cond_task: np.ndarray | None = None  # support features (models, draws, k, F)
    task_features: dict | None = None  # what produced them (`wsl.zoos.tasks`)


def select_and_align(zoo: Zoo, config: GeneratorConfig, *, min_acc: float | None = None,
                     align: str = "mean", seed: int = 0,
                     max_models: int | None = None) -> Selection:
    """Rows a generator trains on: last epochs, finite, accurate enough, aligned, normalised.

    `min_acc` selects on validation accuracy (`Zoo.select`). One function family per generator:
    sampled weights are evaluated with one activation, the most common, unless the generator is
    conditioned on the activation.
    """
    if max_models is not None and max_models < 2:
        raise GenerateError(f"max_models must be ≥ 2 (a generator learns from a population); "
                            f"got {max_models}")
    if align not in ("mean", "first", "none"):
        raise GenerateError(f"align must be 'mean', 'first' or 'none', got {align!r}")
    one_activation = config.condition_class != "activation"
    view = zoo.select(epoch="last", finite=True, min_val_acc=min_acc,
                      activation="most_common" if one_activation else None, min_rows=2)
    note_dropped(view)
    activation = None
    if one_activation and "activation" in view.columns:
        activation = str(view.metrics["activation"][0])
    if max_models is not None and len(view) > max_models:
        pick = np.zeros(len(view), bool)
        pick[np.random.default_rng(seed).choice(len(view), max_models, replace=False)] = True
        view = view.filter(where=lambda _: pick)
    space = view.weight_space
    population = view.weights(np.arange(len(view)))
    finite = np.ones(len(view), bool)
    for leaf in jax.tree.leaves(population):
        finite &= np.isfinite(np.asarray(leaf).reshape(len(view), -1)).all(1)
    if not finite.all():
        bad = sorted({int(m) for m in view.metrics["model"][~finite]})
        raise GenerateError(f"{zoo.path}: models {bad[:10]} have NaN or inf weights but are not "
                            f"flagged diverged; the zoo is damaged or was not checked")
    start = time.perf_counter()
    if align == "none":
        flat = np.asarray(space.flatten(population))
    else:
        aligned = align_zoo(space, population, reference="mean" if align == "mean" else 0,
                            key=jax.random.key(seed))
        flat = np.asarray(space.flatten(aligned.params))
    align_seconds = time.perf_counter() - start
    normalizer = NORMALIZERS[config.normalize].fit(space, flat)
    x = np.asarray(normalizer.normalize(flat), np.float32)
    class_names, cond_class, cond_scalar = [], None, None
    metrics = view.metrics
    if config.condition_class:
        if config.condition_class not in metrics:
            raise GenerateError(f"condition_class {config.condition_class!r} is not a zoo column; "
                                f"columns: {view.columns}")
        class_names = sorted({str(v) for v in metrics[config.condition_class]})
        cond_class = np.asarray([class_names.index(str(v))
                                 for v in metrics[config.condition_class]], np.int32)
    if config.condition_scalar:
        if config.condition_scalar not in metrics:
            raise GenerateError(f"condition_scalar {config.condition_scalar!r} is not a zoo "
                                f"column; columns: {view.columns}")
        raw = np.asarray(metrics[config.condition_scalar], np.float64)
        if not np.isfinite(raw).all():
            raise GenerateError(f"condition_scalar {config.condition_scalar!r} has "
                                f"{int((~np.isfinite(raw)).sum())} non-finite values among the "
                                f"selected models")
        # Standardised, so the embedding sees the spread of the zoo, not raw values that all
        # sit within a few points of each other.
        scalar_stats = {"column": config.condition_scalar, "mean": float(raw.mean()),
                        "std": float(max(raw.std(), 1e-8)),
                        **{f"q{q}": float(np.percentile(raw, q))
                           for q in (0, 10, 25, 50, 75, 90, 100)}}
        cond_scalar = ((raw - scalar_stats["mean"]) / scalar_stats["std"]).astype(np.float32)
    else:
        scalar_stats = None
    cond_task = task_features = None
    if config.condition_task:
        # Imported here: only task-conditioned generators need it (a zoo without a task table
        # is refused there, by name).
        from wsl.zoos.tasks import zoo_support_features

        cond_task, task_features = zoo_support_features(view, seed=seed)
        cond_task = np.asarray(cond_task, np.float32)
        check_task_features(cond_task, len(view), f"{zoo.path}: support features")
    return Selection(view, flat, x, normalizer, activation, class_names, cond_class, cond_scalar,
                     align_seconds, scalar_stats, cond_task, task_features)


def check_task_features(cond_task: np.ndarray, models: int, what: str) -> None:
    """Support features are (models, draws, k, F), every (k, F) block finite or all NaN (no task
    for that draw: the null task); a NaN elsewhere would be read as zero, silently."""
    if cond_task.ndim != 4 or cond_task.shape[0] != models or 0 in cond_task.shape:
        raise GenerateError(f"{what} have shape {cond_task.shape}; expected (models={models}, "
                            f"draws, classes, features), none empty")
    bad = _partial_tasks(cond_task)
    if bad:
        raise GenerateError(f"{what}: models (selection rows) {bad[:10]} have non-finite "
                            f"features in an otherwise given task")


def _partial_tasks(cond_task: np.ndarray) -> list[int]:
    """Leading indices of (k, F) blocks neither finite nor all NaN."""
    blocks = cond_task.reshape(*cond_task.shape[:-2], -1)
    ok = np.isfinite(blocks).all(-1) | np.isnan(blocks).all(-1)
    return sorted({int(i) for i in np.nonzero(~ok)[0]})


def _batch_data(x, cond_class, cond_scalar, cond_task=None) -> dict:
    data = {"x": x}
    if cond_class is not None:
        data["cond_class"] = cond_class
    if cond_scalar is not None:
        data["cond_scalar"] = cond_scalar
    if cond_task is not None:
        data["cond_task"] = cond_task
    return data


def _jsonable(value):
    """numpy scalars and arrays in a record (e.g. the task features' info) as JSON values."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def generator_record(zoo: Zoo, config: GeneratorConfig, train_config: TrainConfig, *,
                     min_acc: float | None, align: str, max_models: int | None) -> dict:
    """What a generator folder is, as ``generator.json`` records it: the request, nothing found."""
    return {"zoo": str(Path(zoo.path).resolve()),
            "zoo_sha256": sha256_file(Path(zoo.path) / MANIFEST),
            "zoo_fingerprint": manifest_fingerprint(zoo.manifest),
            "generator": to_dict(config), "train": to_dict(train_config),
            "selection": {"min_acc": min_acc, "align": align, "max_models": max_models}}


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


# The connectivity check of `train_generator`: random aligned training pairs, validation examples
# they are scored on, and the gap below their endpoints at which their midpoints draw a warning.
MIDPOINT_PAIRS = 16
MIDPOINT_EXAMPLES = 2000
MIDPOINT_GAP = 0.10


def midpoint_check(arch, flat: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, *,
                   seed: int = 0) -> dict:
    """Do the aligned training models form one basin? The validation accuracy of random pairs of
    them and of their midpoints (w_i + w_j) / 2.

    A generator's samples land between its training models; when midpoints score far below the
    models themselves, so will the samples. Tiny ResNets trained from one bare shared
    initialisation end in different basins that alignment cannot join (children of a briefly
    trained parent, the recipes' `parent_epochs`, do not); this finds out before hours of
    training rather than in the audit afterwards.
    """
    rng = np.random.default_rng([seed, 2])
    pairs = np.stack([rng.choice(len(flat), 2, replace=False) for _ in range(MIDPOINT_PAIRS)])
    x, y = x_val[:MIDPOINT_EXAMPLES], y_val[:MIDPOINT_EXAMPLES]
    ends = np.unique(pairs)

    def accuracy(vectors):
        return float((population_predictions(arch, vectors, x) == y).mean())

    members = accuracy(flat[ends])
    midpoints = accuracy((flat[pairs[:, 0]] + flat[pairs[:, 1]]) / 2)
    return {"pairs": MIDPOINT_PAIRS, "examples": int(len(y)), "member_val_acc": members,
            "midpoint_val_acc": midpoints, "connected": midpoints >= members - MIDPOINT_GAP}


def train_generator(zoo_path: str | Path, out: str | Path, config: GeneratorConfig,
                    train_config: TrainConfig, *, min_acc: float | None = None,
                    align: str = "mean", max_models: int | None = None) -> Path:
    """Train a generator on a zoo into directory `out` (resumes an interrupted run there).

    Checked before anything is written: `out` is a new or empty folder, or holds a generator of
    this very request (same zoo, configs and selection options); the rows (diverged ones are left
    out with a warning) and their weights.
    """
    out = Path(out)
    zoo = Zoo.open(zoo_path)
    record = generator_record(zoo, config, train_config, min_acc=min_acc, align=align,
                              max_models=max_models)
    # A generator trained before a config field existed ran with its default: it still resumes.
    defaults = {"generator": {**to_dict(GeneratorConfig()), **LEGACY_GENERATOR},
                "train": to_dict(TrainConfig())}
    claim_run_dir(out, record, file=GENERATOR_FILE, what="a generator", mutable=GENERATOR_MUTABLE,
                  defaults=defaults)
    barrier("wsl-generator-claimed")  # every process has checked `out` before one writes there
    selection = select_and_align(zoo, config, min_acc=min_acc, align=align,
                                 seed=train_config.seed, max_models=max_models)
    arch = selection.zoo.architecture
    arch_config = dict(arch.config)
    if selection.activation is not None:
        arch_config["activation"] = selection.activation
    connectivity = None
    # Models of one task only (a task-conditioned zoo's models solve different tasks), aligned.
    try:
        data = (dataset_from_spec(zoo.manifest["dataset"])
                if selection.cond_task is None and align != "none" else None)
    except (WslError, KeyError):  # no dataset on this machine (an imported zoo): nothing to check
        data = None
    if data is not None and len(data.y_val):
        connectivity = midpoint_check(build(arch.name, **arch_config), selection.flat,
                                      data.x_val, data.y_val, seed=train_config.seed)
        if not connectivity["connected"]:
            warnings.warn(
                f"{zoo.path}: the aligned training models are not linearly connected: midpoints "
                f"of {MIDPOINT_PAIRS} random pairs score {connectivity['midpoint_val_acc']:.3f} "
                f"validation accuracy, the models {connectivity['member_val_acc']:.3f}; samples "
                f"land between training models, expect them low (models that branch from a "
                f"briefly trained parent, a recipe's parent_epochs, are connected)", stacklevel=2)
    meta = {
        **record,
        "architecture": {"name": arch.name,
                         "config": json.loads(json.dumps(arch_config, default=list))},
        "weight_space": selection.zoo.weight_space.to_dict(),
        "dataset": zoo.manifest.get("dataset"),
        "selection": {**record["selection"], "rows": selection.zoo.global_rows.tolist(),
                      "activation": selection.activation, "num_models": len(selection.zoo),
                      "align_seconds": selection.align_seconds, "connectivity": connectivity},
        "class_names": selection.class_names, "latent": None,
        "scalar": selection.scalar_stats,
        "task": None if selection.cond_task is None else json.loads(json.dumps(
            {**(selection.task_features or {}), "shape": list(selection.cond_task.shape[2:])},
            default=_jsonable)),
    }
    # The record first: a folder killed after this is still known to hold this request.
    out.mkdir(parents=True, exist_ok=True)
    if is_primary():  # every process computed the same selection; one writes it
        _write_json(out / GENERATOR_FILE, meta)
        np.savez(out / "normalizer.npz", mean=selection.normalizer.mean,
                 std=selection.normalizer.std)
        # The aligned training weights: novelty, diversity and span distance compare in this
        # basis.
        np.save(out / "aligned_train.npy", selection.flat)
    data = selection.x
    if config.method == "latent-ddpm":
        ae = make_autoencoder(config, data.shape[1])
        ae_cfg = dataclasses.replace(train_config, steps=config.ae_steps, ema_decay=0.0,
                                     batch_size=fit_batch_size(train_config, len(data),
                                                               "selected models"))
        ae_run = train(AutoencoderTask(ae), ae_cfg, {"x": data}, out / "autoencoder",
                       label="autoencoder")
        ae_params = jax.device_get(ae_run.params)
        z = np.asarray(ae.encode(ae_params, jnp.asarray(data)))
        meta["latent"] = {"mean": z.mean(0).tolist(), "std": np.maximum(z.std(0), 1e-6).tolist()}
        if is_primary():
            _write_json(out / GENERATOR_FILE, meta)
        data = ((z - z.mean(0)) / np.maximum(z.std(0), 1e-6)).astype(np.float32)
    space = selection.zoo.weight_space
    train_config = dataclasses.replace(
        train_config, batch_size=fit_batch_size(train_config, len(data), "selected models"))
    generator = make_generator(config, data.shape[1], space if meta["latent"] is None else None,
                               len(selection.class_names), _task_shape(meta))
    relabel = (relabel_maps(space, selection.cond_task.shape[2], train_config.seed)
               if config.task_relabel else None)
    train(GeneratorTask(generator, relabel), train_config,
          _batch_data(data, selection.cond_class, selection.cond_scalar, selection.cond_task),
          out / "generator", label=RUN_LABELS.get(config.method, config.method))
    return out


def _task_shape(meta: dict) -> tuple[int, ...] | None:
    task = meta.get("task")
    return None if not task else tuple(int(n) for n in task["shape"])


@dataclasses.dataclass
class TrainedGenerator:
    """A generator directory loaded for sampling."""

    directory: Path
    meta: dict
    config: GeneratorConfig
    normalizer: TensorNormalizer | EntryNormalizer
    generator: Any
    params: Any
    autoencoder: Any = None
    ae_params: Any = None
    compile_seconds: float = 0.0
    condition_map: dict | None = None  # from `wsl gen calibrate` (CONDITION_MAP_FILE)
    _programs: dict = dataclasses.field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, directory: str | Path) -> TrainedGenerator:
        directory = Path(directory)
        path = directory / GENERATOR_FILE
        if not path.exists():
            raise GenerateError(f"{directory}: not a generator directory (no {GENERATOR_FILE}); "
                                f"train one with `wsl gen train`")
        meta = json.loads(path.read_text())
        config = from_dict(GeneratorConfig, {**LEGACY_GENERATOR, **meta["generator"]})
        train_cfg = from_dict(TrainConfig, meta["train"])
        from wsl.weight_space import WeightSpace

        space = WeightSpace.from_dict(meta["weight_space"])
        with np.load(directory / "normalizer.npz") as stats:
            normalizer = NORMALIZERS[config.normalize].from_vectors(space, stats["mean"],
                                                                    stats["std"])
        latent = meta.get("latent")
        dim = config.latent_dim if latent else space.num_params
        generator = make_generator(config, dim, None if latent else space,
                                   len(meta.get("class_names", [])), _task_shape(meta))
        params = load_params(directory / "generator", "latest", ema=train_cfg.ema_decay > 0)
        ae = ae_params = None
        if latent:
            ae = make_autoencoder(config, space.num_params)
            ae_params = load_params(directory / "autoencoder", "latest")
        condition_map = None
        if (directory / CONDITION_MAP_FILE).exists():
            condition_map = json.loads((directory / CONDITION_MAP_FILE).read_text())
        return cls(directory, meta, config, normalizer, generator, params, ae, ae_params,
                   condition_map=condition_map)

    @property
    def architecture(self):
        a = self.meta["architecture"]
        return build(a["name"], **a["config"])

    def class_id(self, name: str) -> int:
        names = self.meta.get("class_names", [])
        if name not in names:
            raise GenerateError(f"class {name!r} is not one this generator was conditioned on: "
                                f"{names}")
        return names.index(name)

    def scalar_target(self, value: float | str, use_map: bool = True) -> float:
        """A raw scalar condition (e.g. 0.93) or a quantile of the training population's values
        (``"q90"``, also q0, q10, q25, q50, q75, q100), as the standardised value the generator
        was trained on.

        With a condition map (`use_map` and ``condition_map.json`` present) the value is a target
        for the samples' mean score, translated into the condition value that achieved it on
        validation (clamped to the map's measured range).
        """
        stats = self.meta.get("scalar")
        if not stats:
            raise GenerateError(f"{self.directory}: this generator has no scalar condition; "
                                f"train one with condition_scalar=COLUMN")
        if isinstance(value, str):
            if value not in stats:
                keys = sorted(k for k in stats if k.startswith("q"))
                raise GenerateError(f"cond_scalar {value!r}: give a number or one of {keys}")
            value = stats[value]
        if use_map and self.condition_map is not None:
            return condition_for(self.condition_map, float(value))
        return (float(value) - stats["mean"]) / stats["std"]

    @property
    def task_shape(self) -> tuple[int, ...] | None:
        """(classes, features) of the task condition; None for a generator without one."""
        return _task_shape(self.meta)

    def check_task_data(self, spec: str, data) -> None:
        """Refuse a task whose data this generator's networks cannot read: other input shape or
        number of classes."""
        arch = self.architecture
        if tuple(arch.input_shape) != tuple(data.input_shape):
            raise GenerateError(f"generator {self.directory} makes networks for inputs "
                                f"{tuple(arch.input_shape)}; task {spec} has inputs "
                                f"{tuple(data.input_shape)}")
        if arch.num_classes != data.num_classes:
            raise GenerateError(f"generator {self.directory} makes {arch.num_classes}-way "
                                f"networks; task {spec} has {data.num_classes} classes")

    def task_condition(self, cond_task, num: int) -> np.ndarray | None:
        """`cond_task` — support features (k, F) for every sample, or (num, k, F) — checked and
        as (num, k, F) float32; None stays None (sampled unconditionally: the null task)."""
        if cond_task is None:
            return None
        shape = self.task_shape
        if shape is None:
            raise GenerateError(f"{self.directory}: this generator has no task condition; train "
                                f"one with condition_task=true to sample for a task")
        task = np.asarray(cond_task, np.float32)
        if task.shape == shape:
            task = np.broadcast_to(task, (num, *shape))
        elif task.shape != (num, *shape):
            raise GenerateError(f"cond_task has shape {task.shape}; expected {shape} (classes, "
                                f"features) or {(num, *shape)} (one task per sample)")
        bad = _partial_tasks(task)
        if bad:
            raise GenerateError(f"cond_task: samples {bad[:10]} have non-finite features in an "
                                f"otherwise given task (all NaN means no task)")
        return task

    def _program(self, n: int, method: str, steps: int, guidance: float, temperature: float,
                 eta: float, with_class: bool, with_scalar: bool, with_task: bool = False):
        """The compiled sampler for one chunk shape and setting, with its compile time."""
        key = (n, method, steps, guidance, temperature, eta, with_class, with_scalar, with_task)
        if key not in self._programs:
            generator, decode = self.generator, self.autoencoder is not None
            latent = self.meta.get("latent")
            mean, std = jnp.asarray(self.normalizer.mean), jnp.asarray(self.normalizer.std)

            def run(params, ae_params, rng, cls, sca, task):
                z = generator.sample(params, rng, n, steps=steps, method=method, cond_class=cls,
                                     cond_scalar=sca, guidance=guidance,
                                     temperature=temperature, cond_task=task, eta=eta)
                if decode:
                    z = z * jnp.asarray(latent["std"]) + jnp.asarray(latent["mean"])
                    z = self.autoencoder.decode(ae_params, z)
                return z * std + mean

            args = (self.params, self.ae_params, jax.random.key(0),
                    jnp.zeros((n,), jnp.int32) if with_class else None,
                    jnp.zeros((n,), jnp.float32) if with_scalar else None,
                    jnp.zeros((n, *self.task_shape), jnp.float32) if with_task else None)
            start = time.perf_counter()
            compiled = jax.jit(run).lower(*args).compile()
            self._programs[key] = compiled
            self.compile_seconds += time.perf_counter() - start
        return self._programs[key]

    def _settings(self, sampler, steps, guidance, temperature, eta, cond_class, cond_scalar,
                  use_map=True):
        cfg = self.config
        allowed = FLOW_SAMPLERS if cfg.method == "flow" else DIFFUSION_SAMPLERS
        if sampler is not None and sampler not in allowed:
            raise GenerateError(f"sampler {sampler!r} does not fit a {cfg.method} generator; "
                                f"choose from {allowed}")
        if steps is not None and steps < 1:
            raise GenerateError(f"sampling steps must be ≥ 1, got {steps}")
        if temperature is not None and not temperature > 0:
            raise GenerateError(f"sampling temperature must be positive, got {temperature}")
        if eta is not None and not 0 <= eta <= 1:
            raise GenerateError(f"sampling eta must lie in [0, 1], got {eta}")
        mapped = self._mapped(cond_scalar, use_map)
        resolved = self.sampling_settings(sampler, steps, guidance, temperature, eta, mapped)
        method, *_, noise = resolved
        if cfg.method == "flow" and noise > 0 and method != "euler":
            raise GenerateError(f"eta {noise} takes stochastic Euler steps, not {method!r} ones: "
                                f"sample with sampler 'euler' (or eta 0)")
        if cfg.method != "flow" and noise > 0 and method != "ddim":
            raise GenerateError(f"eta {noise} is DDIM's noise level; sampler {method!r} has its "
                                f"own (sample with sampler 'ddim')")
        if mapped:
            self._check_map_settings(resolved)
        return (*resolved, None if cond_class is None else self.class_id(cond_class),
                None if cond_scalar is None else self.scalar_target(cond_scalar, use_map))

    def _mapped(self, cond_scalar, use_map: bool) -> bool:
        return cond_scalar is not None and use_map and self.condition_map is not None

    def sampling_settings(self, sampler=None, steps=None, guidance=None, temperature=None,
                          eta=None, mapped: bool = False) -> tuple:
        """(sampler, steps, guidance, temperature, eta) a call samples with: the caller's; else,
        for a target that goes through the condition map (`mapped`), the settings the map was
        fitted with (the guidance `wsl gen calibrate` chose, above all); else the generator's."""
        given = (sampler, steps, guidance, temperature, eta)
        if mapped:
            fitted = self.condition_map.get("sample_options") or {}
            given = tuple(fitted.get(name) if value is None else value
                          for name, value in zip(SAMPLING_SETTINGS, given))
        return self._resolved(*given)

    def _resolved(self, sampler, steps, guidance, temperature, eta) -> tuple:
        """The sampling settings with the generator's defaults filled in."""
        cfg = self.config
        return (sampler or cfg.default_sampler, steps or cfg.default_steps,
                float(cfg.guidance if guidance is None else guidance),
                float(cfg.temperature if temperature is None else temperature),
                float(cfg.eta if eta is None else eta))

    def _check_map_settings(self, resolved: tuple) -> None:
        """Warn when a target goes through a condition map fitted under other sampling settings:
        the achieved accuracy of a condition value depends on them (guidance above all)."""
        fitted = self.condition_map.get("sample_options") or {}
        at_fit = self._resolved(*(fitted.get(name) for name in SAMPLING_SETTINGS))
        differ = [f"{name} {now} (map: {then})"
                  for name, now, then in zip(SAMPLING_SETTINGS, resolved, at_fit) if now != then]
        if differ:
            warnings.warn(f"{self.directory}: the condition map was fitted with other sampling "
                          f"settings than these samples use — {', '.join(differ)}; a target may "
                          f"not be met (refit it: wsl gen calibrate with the same settings)",
                          stacklevel=4)

    def compile(self, num: int, *, sampler: str | None = None, steps: int | None = None,
                guidance: float | None = None, temperature: float | None = None,
                eta: float | None = None, cond_class: str | None = None,
                cond_scalar: float | str | None = None, use_map: bool = True, chunk: int = 1000,
                cond_task=None) -> float:
        """Compile what `sample` with these arguments will run; returns the seconds it took."""
        method, steps, guidance, temperature, eta, cls, sca = self._settings(
            sampler, steps, guidance, temperature, eta, cond_class, cond_scalar, use_map)
        task = self.task_condition(cond_task, num)
        before = self.compile_seconds
        for n in {min(chunk, num - start) for start in range(0, num, chunk)}:
            self._program(n, method, steps, guidance, temperature, eta, cls is not None,
                          sca is not None, task is not None)
        return self.compile_seconds - before

    def sample(self, num: int, *, seed: int = 0, sampler: str | None = None,
               steps: int | None = None, guidance: float | None = None,
               temperature: float | None = None, eta: float | None = None,
               cond_class: str | None = None, cond_scalar: float | str | None = None,
               use_map: bool = True, chunk: int = 1000, cond_task=None) -> np.ndarray:
        """`num` raw weight vectors (denormalised), deterministic for a seed.

        Compiled once per chunk size and setting (`compile_seconds` adds up the compile time).
        `cond_scalar` is a raw value or a training-population quantile such as ``"q90"``; with
        the generator's condition map (unless `use_map` is False) it is the samples' target.
        `cond_task` is a task's support features (k, F) for every sample, or (num, k, F), as
        `wsl.zoos.tasks` computes them; without it a task-conditioned generator samples
        unconditionally (the null task).
        """
        if num < 1:
            raise GenerateError(f"number of samples must be ≥ 1, got {num}")
        method, steps, guidance, temperature, eta, cls_value, sca_value = self._settings(
            sampler, steps, guidance, temperature, eta, cond_class, cond_scalar, use_map)
        task_value = self.task_condition(cond_task, num)
        out = []
        for start in range(0, num, chunk):
            n = min(chunk, num - start)
            program = self._program(n, method, steps, guidance, temperature, eta,
                                    cls_value is not None, sca_value is not None,
                                    task_value is not None)
            key = jax.random.fold_in(jax.random.key(seed), start)
            cls = None if cls_value is None else jnp.full((n,), cls_value, jnp.int32)
            sca = None if sca_value is None else jnp.full((n,), sca_value, jnp.float32)
            task = None if task_value is None else jnp.asarray(task_value[start:start + n])
            out.append(np.asarray(program(self.params, self.ae_params, key, cls, sca, task)))
        return np.concatenate(out).astype(np.float32)


def condition_for(condition_map: dict, target: float) -> float:
    """The standardised condition value whose samples reached `target` on the map's monotone
    curve (linear between grid points; the nearest end outside the measured range)."""
    condition = np.asarray(condition_map["condition"], np.float64)
    achieved = np.asarray(condition_map["monotone"], np.float64)
    if not condition_map.get("increasing", True):
        achieved, condition = -achieved[::-1], condition[::-1]
        target = -target
    # A flat stretch of the curve: every value on it reaches the same score; take its middle.
    levels, first = np.unique(achieved, return_index=True)
    last = len(achieved) - 1 - np.unique(achieved[::-1], return_index=True)[1]
    middle = (condition[first] + condition[last]) / 2
    if len(levels) == 1:
        return float(middle[0])
    return float(np.interp(target, levels, middle))


def _task_sampling(gen: TrainedGenerator, task: str | None, support: int, seed: int,
                   sample_options: dict) -> dict:
    """Condition a task-conditioned generator on `task`'s support set (`support` examples per
    class, drawn by `seed`; set into `sample_options`); the dataset spec the samples are
    scored on: the task's own splits."""
    from wsl.zoos.tasks import Task, task_dataset, task_support_features

    if gen.task_shape is None:
        raise GenerateError(f"{gen.directory} is not task-conditioned; --task needs a generator "
                            f"trained with condition_task=true on a multi-task zoo")
    if task is None:
        raise GenerateError(f"{gen.directory} generates networks for a task described by its "
                            f"data: give --task SPEC (e.g. mnist8:0-3-5-7-9:none)")
    task = Task.parse(task)
    data = task_dataset(task)
    gen.check_task_data(task.spec, data)
    sample_options["cond_task"] = task_support_features(task, per_class=support, seed=seed)
    return {"name": "task", "options": {"spec": task.spec, "support_per_class": support}}


def check_sample_out(out: str | Path, option: str = "--out") -> Path:
    """Refuse, before any work, a sample folder that is a file, unwritable, inside a zoo, or not
    empty (an earlier sample is never overwritten)."""
    out = check_output_dir(out, option=option)
    if out.is_dir() and any(out.iterdir()):
        held = "a zoo" if (out / MANIFEST).exists() else "files"
        raise GenerateError(f"{option} {out} already holds {held}; choose a new or empty folder")
    return out


def sample_to_zoo(generator: str | Path | TrainedGenerator, out: str | Path, num: int, *,
                  seed: int = 0, task: str | None = None, support: int = 10,
                  **sample_options) -> tuple[Zoo, dict]:
    """Sample `num` networks into a zoo at `out`, evaluated on the training zoo's dataset.

    `generator` is a generator folder or one already loaded. `out` must be a new or empty folder.
    The manifest's ``recipe`` is ``{name: "generated", num}``; its ``provenance`` records the
    generator (folder, method, backbone, prediction, ``generator_config``), the sampler settings
    and seed, and the training zoo with its ``selection``.
    Returns the zoo and timings: ``compile_seconds`` (compiling the sampler) and
    ``sample_seconds`` (running it, excluding compilation).
    """
    if num < 1:
        raise GenerateError(f"number of samples must be ≥ 1, got {num}")
    out = check_sample_out(out)
    gen = (generator if isinstance(generator, TrainedGenerator)
           else TrainedGenerator.load(generator))
    arch = gen.architecture
    dataset_spec = gen.meta.get("dataset")
    if task is not None or gen.task_shape is not None:
        dataset_spec = _task_sampling(gen, task, support, seed, sample_options)
    gen.compile(num, **sample_options)
    start = time.perf_counter()
    flat = gen.sample(num, seed=seed, **sample_options)
    sample_seconds = time.perf_counter() - start
    dataset = dataset_from_spec(dataset_spec)
    metrics = population_metrics(arch, flat, dataset)
    rows = []
    for i in range(num):
        row = {"model": i, "epoch": 0}
        row.update({k: float(v[i]) for k, v in metrics.items()})
        row["diverged"] = bool(not np.isfinite(flat[i]).all())
        if arch.config.get("activation") is not None:
            row["activation"] = arch.config["activation"]
        rows.append(row)
    cfg = gen.config
    mapped = gen._mapped(sample_options.get("cond_scalar"), sample_options.get("use_map", True))
    settings = dict(zip(SAMPLING_SETTINGS, gen.sampling_settings(
        *(sample_options.get(k) for k in SAMPLING_SETTINGS), mapped=mapped)))
    settings.update({
        "cond_class": sample_options.get("cond_class"),
        "cond_scalar": sample_options.get("cond_scalar"),
        # The features themselves are an array (they belong with the task, not here).
        "cond_task": None if sample_options.get("cond_task") is None else "given"})
    if settings["cond_scalar"] is not None:
        # What the condition network was given, and whether a target went through the map.
        settings["condition_map"] = mapped
        settings["condition_value"] = gen.scalar_target(settings["cond_scalar"],
                                                        settings["condition_map"])
    manifest = {
        "architecture": {"name": arch.name, "config": gen.meta["architecture"]["config"]},
        "weight_space": gen.meta["weight_space"], "dataset": dataset_spec,
        "generated": True,
        # A generated zoo has no recipe: `recipe` only names it and its size; where it came from
        # (generator, its config, sampler, training zoo and rows) is provenance, beside the
        # writer's own (created, versions, command).
        "recipe": {"name": "generated", "num": num},
        "provenance": {"generator": str(gen.directory.resolve()), "method": cfg.method,
                       "backbone": cfg.backbone, "prediction": cfg.prediction, **settings,
                       "seed": seed, "training_zoo": gen.meta["zoo"],
                       "selection": {k: v for k, v in gen.meta["selection"].items()
                                     if k != "rows"},
                       "generator_config": gen.meta["generator"]},
    }
    zoo = write_zoo(out, manifest, arch.weight_space.unflatten(flat), rows)
    return zoo, {"sample_seconds": sample_seconds, "compile_seconds": gen.compile_seconds,
                 "num": num}
