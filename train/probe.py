"""Probing: train an encoder to predict a zoo column from weights; Kendall τ / R² or accuracy.

`run_probe(zoo, ProbeConfig(...), out)` selects rows (each model's last checkpoint by default, not
diverged), splits them by model into train / val / test, fits a per-tensor normaliser on the
training split, trains the encoder with the shared loop (`wsl.train.train`: early stopping on the
validation metric, the augmentations `ProbeConfig.augment` names — random hidden-unit permutations
by default; see `wsl.train.augment`) and scores the best checkpoint on the test split, once per
seed.
Numeric targets in [0, 1] (accuracies) are fitted with binary cross-entropy through a sigmoid, as
in the NFN recipe, and other numeric targets with MSE on standardised values (``loss="auto"``);
``loss="mse"`` fits accuracies standardised too, which suits zoos whose accuracies span a narrow
range (the cross-entropy of a 0.85-vs-0.88 difference is nearly flat). Text columns (activation,
optimizer, init) are classified.

``statnn_gbt`` (gradient-boosted trees on the StatNN features) runs through scikit-learn.

A probe's folder records what it holds (``probe.json``: the zoo, its fingerprint and the config)
before anything else is written; a rerun with the same record resumes, any other is refused
(`wsl.train.checkpoint.claim_run_dir`), so one probe never overwrites another's results.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import stats

from wsl.config import ConfigError, coerce_fields, to_dict
from wsl.distributed import barrier, is_primary
from wsl.errors import WslError
from wsl.models.encoders import build_encoder, check_encoder_options, encoder_names
from wsl.models.normalize import TensorNormalizer
from wsl.train import TrainConfig, train
from wsl.train.augment import align_for_mixup, augmentation_names, make_augmentations
from wsl.train.checkpoint import claim_run_dir
from wsl.train.layout import fit_batch_size
from wsl.train.trainer import note_dropped
from wsl.zoos.architectures import pooled_before_activation
from wsl.zoos.scoring import pad_rows
from wsl.zoos.store import MANIFEST, manifest_fingerprint, sha256_file

ENCODERS = tuple(encoder_names()) + ("statnn_gbt",)
DEFAULT_TRAIN = TrainConfig(
    steps=3000, batch_size=32,
    optimizer=dataclasses.replace(TrainConfig().optimizer, lr=1e-3, weight_decay=1e-5),
    eval=dataclasses.replace(TrainConfig().eval, every=150, metric="score", mode="max",
                             patience=8),
    checkpoint=dataclasses.replace(TrainConfig().checkpoint, every=0, keep=1))
PROBE_FILE = "probe.json"  # what a probe folder holds, written first
# Record keys a rerun into the same folder may change: more or fewer seeds, where it runs, logging.
PROBE_MUTABLE = ("seeds", "train.log", "train.mesh", "train.checkpoint.async_save",
                 "train.data.prefetch")


LOSSES = ("auto", "bce", "mse")


class ProbeError(WslError, ValueError):
    """A probe that cannot run as asked (unknown target or encoder, too few models)."""


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    target: str = "test_acc"
    encoder: str = "nfn_hnp"
    seeds: int = 1
    # The seeds run are first_seed, …, first_seed + seeds − 1 (each splits the zoo its own way):
    # a later comparison can run on splits no earlier result has looked at.
    first_seed: int = 0
    epoch: str = "last"  # "last" (each model's last checkpoint) or "all"
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    # Augmentations of every training batch, by name (train.augment.AUGMENTATIONS; "a,b" or a
    # tuple; None or "none": no augmentation), and their strengths.
    augment: tuple[str, ...] | None = ("permute",)
    noise_scale: float = 0.05  # noise std, as a fraction of each tensor's std
    dropout_rate: float = 0.05  # probability of zeroing each weight
    prune_fraction: float = 0.1  # smallest-magnitude fraction of each kernel zeroed
    mixup_alpha: float = 1.0  # mixup λ ~ Beta(α, α)
    log_scale: float = 0.5  # scale: per-unit log s uniform in ±log_scale
    # Numeric targets: "auto" (bce for values in [0, 1], else mse), "bce" or "mse" (standardised).
    loss: str = "auto"
    encoder_config: dict = dataclasses.field(default_factory=dict)
    train: TrainConfig = DEFAULT_TRAIN

    def __post_init__(self):
        coerce_fields(self)
        if self.seeds < 1:
            raise ConfigError(f"seeds must be ≥ 1; got {self.seeds}")
        if self.first_seed < 0:
            raise ConfigError(f"first_seed must be ≥ 0; got {self.first_seed}")
        if self.epoch not in ("last", "all"):
            raise ConfigError(f"epoch must be 'last' or 'all'; got {self.epoch!r}")
        if self.encoder in ENCODERS:  # an unknown name is refused when the probe runs
            given = dict(self.encoder_config)
            reserved = sorted({"out_dim", "normalizer"} & set(given))
            if reserved:
                raise ConfigError(f"encoder.{reserved[0]} is set by the probe (from the target "
                                  f"and the training split); leave it out")
            if self.encoder == "statnn_gbt":
                if given:
                    raise ConfigError(f"encoder statnn_gbt takes no encoder.* options; got "
                                      f"{sorted(given)}")
            else:
                check_encoder_options(self.encoder, given)
        if self.loss not in LOSSES:
            raise ConfigError(f"loss must be one of {', '.join(LOSSES)}; got {self.loss!r}")
        split = tuple(self.split)
        if len(split) != 3 or min(split) < 0 or abs(sum(split) - 1) > 1e-6:
            raise ConfigError(f"split must be three non-negative fractions (train, val, test) "
                              f"summing to 1; got {self.split}")
        # Normalised here, so that configs naming the same augmentations compare (and reuse runs)
        # alike.
        object.__setattr__(self, "augment", augmentation_names(self.augment))
        for name, ok, bound in (("noise_scale", self.noise_scale >= 0, "≥ 0"),
                                ("dropout_rate", 0 <= self.dropout_rate < 1, "in [0, 1)"),
                                ("prune_fraction", 0 <= self.prune_fraction < 1, "in [0, 1)"),
                                ("mixup_alpha", self.mixup_alpha > 0, "> 0"),
                                ("log_scale", self.log_scale >= 0, "≥ 0")):
            if not ok:
                raise ConfigError(f"{name} must be {bound}; got {getattr(self, name)}")


def kendall_tau(prediction, target) -> float:
    return float(stats.kendalltau(np.asarray(prediction), np.asarray(target)).statistic)


def r_squared(prediction, target) -> float:
    target, prediction = np.asarray(target, np.float64), np.asarray(prediction, np.float64)
    total = ((target - target.mean()) ** 2).sum()
    return float(1 - ((target - prediction) ** 2).sum() / total) if total > 0 else float("nan")


@dataclasses.dataclass
class _Split:
    params: dict
    y: np.ndarray


def _target(values: np.ndarray, name: str, loss: str = "auto"
            ) -> tuple[str, np.ndarray, list[str]]:
    """(kind, encoded values, class names): 'bce' or 'mse' for numbers (`loss`, "auto": bce for
    values in [0, 1]), or 'classes'."""
    if values.dtype.kind in "biuf":
        values = values.astype(np.float64)
        if not np.isfinite(values).all():
            raise ProbeError(f"target {name!r} has missing values in the selected rows")
        unit = values.min() >= 0 and values.max() <= 1
        if loss == "bce" and not unit:
            raise ProbeError(f"loss bce needs a target in [0, 1]; {name!r} spans "
                             f"[{values.min():.4g}, {values.max():.4g}] (use loss mse)")
        kind = loss if loss != "auto" else "bce" if unit else "mse"
        return kind, values.astype(np.float32), []
    if loss != "auto":
        raise ProbeError(f"target {name!r} is a text column (classified with cross-entropy); "
                         f"loss {loss} applies to numeric targets only")
    names = sorted({str(v) for v in values})
    if len(names) < 2:
        raise ProbeError(f"target {name!r} has a single value {names}; nothing to predict")
    return "classes", np.asarray([names.index(str(v)) for v in values], np.int32), names


@dataclasses.dataclass(frozen=True)
class ProbeTask:
    """Trainer task: an encoder's output fitted to one target column."""

    encoder: Any
    kind: str
    mean: float = 0.0
    std: float = 1.0

    def init(self, key, batch):
        k1, k2 = jax.random.split(key)
        return self.encoder.init({"params": k1, "dropout": k2}, batch["params"])["params"]

    def predict_raw(self, params, weights, train=False, key=None):
        rngs = {"dropout": key} if key is not None else {}
        return self.encoder.apply({"params": params}, weights, train=train, rngs=rngs)

    def loss(self, params, batch, key):
        out = self.predict_raw(params, batch["params"], train=True, key=key)
        y = batch["y"]
        if self.kind == "bce":
            loss = optax.sigmoid_binary_cross_entropy(out[:, 0], y).mean()
        elif self.kind == "mse":
            loss = jnp.mean((out[:, 0] - (y - self.mean) / self.std) ** 2)
        else:
            loss = optax.softmax_cross_entropy_with_integer_labels(out, y).mean()
        return loss, {}

    @functools.cached_property
    def _predict_compiled(self):
        # Compiled once per task (evaluation calls `predict` every few hundred steps); a cached
        # property rather than a static `self`, since the encoder's normaliser holds arrays.
        return jax.jit(lambda p, w: self.predict_raw(p, w))

    def predict(self, params, weights, chunk: int = 512) -> np.ndarray:
        """Predictions in the target's units (probabilities → accuracies; class ids)."""
        n = len(next(iter(jax.tree.leaves(weights))))
        outs = []
        for i in range(0, n, chunk):
            rows = min(chunk, n - i)
            # A short chunk is padded to a power of two, so that splits of similar sizes (val,
            # test) share one compiled program; the padded rows' outputs are dropped.
            padded = min(chunk, 1 << (rows - 1).bit_length())
            part = jax.tree.map(lambda a: pad_rows(np.asarray(a[i:i + rows]), padded), weights)
            outs.append(np.asarray(self._predict_compiled(params, part))[:rows])
        out = np.concatenate(outs)
        if self.kind == "bce":
            return 1 / (1 + np.exp(-out[:, 0]))
        if self.kind == "mse":
            return out[:, 0] * self.std + self.mean
        return out.argmax(-1)

    def score(self, prediction, y) -> dict[str, float]:
        if self.kind == "classes":
            return {"accuracy": float((prediction == y).mean())}
        return {"kendall_tau": kendall_tau(prediction, y), "r2": r_squared(prediction, y)}

    def evaluate(self, params, data: _Split) -> dict[str, float]:
        scores = self.score(self.predict(params, data.params), data.y)
        scores["score"] = scores.get("kendall_tau", scores.get("accuracy"))
        return scores


def select_rows(zoo, target: str, epoch: str = "last"):
    """The probed rows: last (or all) checkpoints, not diverged, with the target present."""
    if target not in zoo.columns:
        raise ProbeError(f"unknown target {target!r}; zoo columns: {zoo.columns}")
    if epoch not in ("last", "all"):
        raise ProbeError(f"epoch must be 'last' or 'all', got {epoch!r}")
    return zoo.select(epoch="last" if epoch == "last" else None, finite=True, require=(target,))


def run_probe(zoo, config: ProbeConfig, out: str | Path | None = None) -> dict:
    """Train and score the encoder on `zoo` for `config.seeds` seeds; returns the results.

    With `out`, the training runs (checkpoints: an interrupted probe resumes) and `results.json`
    are kept there; without it the runs go to a temporary directory that is removed afterwards.
    Everything is checked before anything is written: the request, the rows, and that `out` is a
    new or empty folder or holds this very probe (`probe.json`). Rows left out for diverging are
    counted in a warning.
    """
    if config.encoder not in ENCODERS:
        raise ProbeError(f"unknown encoder {config.encoder!r}; choose from {list(ENCODERS)}")
    if config.target not in zoo.columns:
        raise ProbeError(f"unknown target {config.target!r}; zoo columns: {zoo.columns}")
    if out is not None:  # before the rows are read: selecting reads every weight once
        out = Path(out)
        record = {"zoo": str(Path(zoo.path).resolve()),
                  "zoo_sha256": sha256_file(Path(zoo.path) / MANIFEST),
                  "zoo_fingerprint": manifest_fingerprint(zoo.manifest), **to_dict(config)}
        # A probe run before a config field existed ran with its default: it still resumes.
        claim_run_dir(out, record, file=PROBE_FILE, what="a probe run", mutable=PROBE_MUTABLE,
                      defaults=to_dict(ProbeConfig()))
        barrier("wsl-probe-claimed")  # every process has checked `out` before one writes there
    view = select_rows(zoo, config.target, config.epoch)
    note_dropped(view, "models" if config.epoch == "last" else "checkpoints")
    plan = _plan(view, config)
    if out is None:
        with tempfile.TemporaryDirectory(prefix="wsl-probe-") as scratch:
            report = _run_probe(zoo, view, config, Path(scratch), plan)
        return report
    out.mkdir(parents=True, exist_ok=True)
    if is_primary():
        (out / PROBE_FILE).write_text(json.dumps(record, indent=2, default=list) + "\n")
    report = _run_probe(zoo, view, config, out, plan)
    if is_primary():
        (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _nonfinite_models(view, weights) -> list[int]:
    """Model ids of rows whose loaded weights hold NaN or inf (rows `select` should have left
    out)."""
    finite = np.ones(len(view), bool)
    for leaf in jax.tree.leaves(weights):
        leaf = np.asarray(leaf)
        finite &= np.isfinite(leaf.reshape(len(leaf), -1)).all(1)
    return sorted({int(m) for m in view.metrics["model"][~finite]})


def _plan(view, config: ProbeConfig) -> tuple[str, list[str], list[tuple]]:
    """The target's kind and class names, and each seed's (train, val, test) views: checked
    before anything is written."""
    kind, _, names = _target(view.metrics[config.target], config.target, config.loss)
    parts_per_seed = []
    for seed in range(config.first_seed, config.first_seed + config.seeds):
        parts = view.split_by_model(config.split, seed=seed)
        if min(len(p) for p in parts) < 2:
            raise ProbeError(f"{len(view)} rows are too few to split {config.split} into "
                             f"train / val / test with at least 2 each")
        parts_per_seed.append(parts)
    return kind, names, parts_per_seed


def _run_probe(zoo, view, config: ProbeConfig, out: Path, plan) -> dict:
    space = view.weight_space
    unit_symmetries = sorted({"scale", "sign"} & set(config.augment))
    if unit_symmetries and "activation" in view.metrics \
            and len(np.unique(view.metrics["activation"])) > 1:
        # The weight space records one activation per group; rescaling a relu network's units
        # is a symmetry, a tanh network's is not (and would leak the activation to the probe).
        raise ProbeError(f"augmentation {', '.join(unit_symmetries)} needs one activation, and "
                         f"the probed rows mix {sorted(set(view.metrics['activation']))}; probe a "
                         f"zoo of one activation, or leave {' and '.join(unit_symmetries)} out")
    results = []
    kind, names, parts_per_seed = plan
    for seed, parts in enumerate(parts_per_seed, start=config.first_seed):
        splits = []
        for part in parts:
            values = part.metrics[config.target]
            if kind == "classes":  # ids over the whole selection, not per split
                y = np.asarray([names.index(str(v)) for v in values], np.int32)
            else:
                y = np.asarray(values, np.float32)
            weights = part.weights(np.arange(len(part)))
            bad = _nonfinite_models(part, weights)
            if bad:
                raise ProbeError(f"{zoo.path}: models {bad[:10]} have NaN or inf weights but are "
                                 f"not flagged diverged; the zoo is damaged or was not checked")
            splits.append(_Split(weights, y))
        train_split, val_split, test_split = splits
        # Seconds spent training by earlier calls this one resumed: a resumed run counts whole.
        start, earlier = time.perf_counter(), 0.0
        if config.encoder == "statnn_gbt":
            from wsl.models.statnn import GradientBoostedStats

            # scikit-learn's default leaf size (20) leaves a small zoo one constant leaf.
            gbt = GradientBoostedStats(space,
                                       "classification" if kind == "classes" else "regression",
                                       seed=seed,
                                       min_samples_leaf=max(2, min(20, len(train_split.y) // 10)))
            gbt.fit(train_split.params, train_split.y)
            prediction = np.asarray(gbt.predict(test_split.params))
            val_prediction = np.asarray(gbt.predict(val_split.params))
            task = ProbeTask(None, kind)
            best_step = None
        else:
            normalizer = TensorNormalizer.fit(space, train_split.params)
            out_dim = len(names) if kind == "classes" else 1
            extra = {}
            reads_statistics = (config.encoder == "statnn"
                                or config.encoder_config.get("statistics", False))
            if reads_statistics and "feature_mean" not in config.encoder_config:
                # A fair baseline: its statistics standardised, fitted on the training split
                # (also for an NFN / UNF that reads them beside its pooled features).
                from wsl.models.statnn import statistics_scaling

                extra = statistics_scaling(space, train_split.params, normalizer)
            encoder = build_encoder(config.encoder, space, out_dim=out_dim, normalizer=normalizer,
                                    **extra, **config.encoder_config)
            task = ProbeTask(encoder, kind, float(train_split.y.mean()),
                             float(train_split.y.std() or 1.0))
            train_cfg = dataclasses.replace(config.train, seed=seed, batch_size=fit_batch_size(
                config.train, len(train_split.y), "training models"))
            run_dir = out / f"{config.encoder}-seed{seed}"
            train_params = train_split.params
            if "mixup" in config.augment:
                # Mixup pairs must share an alignment, and weight matching cannot run inside the
                # compiled input pipeline: align the training networks once, here.
                train_params = align_for_mixup(space, train_params, seed=seed)
            augment = make_augmentations(space, config.augment, field="params",
                                         noise_scale=config.noise_scale,
                                         dropout_rate=config.dropout_rate,
                                         prune_fraction=config.prune_fraction,
                                         mixup_alpha=config.mixup_alpha,
                                         log_scale=config.log_scale,
                                         no_sign=pooled_before_activation(zoo.architecture))
            label = config.encoder + (f" seed {seed}" if config.seeds > 1 else "")
            result = train(task, train_cfg, {"params": train_params, "y": train_split.y},
                           run_dir, eval_data=val_split, augment=augment, label=label)
            best_step = result.best_step
            earlier = result.earlier_seconds
            params = result.best_params() if result.best_step is not None else result.params
            prediction = task.predict(params, test_split.params)
            val_prediction = task.predict(params, val_split.params)
        seconds = time.perf_counter() - start + earlier
        scores = task.score(prediction, test_split.y)
        # Validation scores are what a choice between probe settings may look at; test is not.
        # `model` and `epoch` name the zoo row behind each test prediction.
        test_rows = parts[2].metrics
        results.append({"seed": seed, "seconds": seconds, "best_step": best_step, **scores,
                        "val": task.score(val_prediction, val_split.y),
                        "model": [int(m) for m in test_rows["model"]],
                        "epoch": [int(e) for e in test_rows["epoch"]],
                        "prediction": np.asarray(prediction).tolist(),
                        "true": np.asarray(test_split.y).tolist()})
    keys = [k for k in ("kendall_tau", "r2", "accuracy") if k in results[0]]
    summary = {k: {"mean": float(np.mean([r[k] for r in results])),
                   "std": float(np.std([r[k] for r in results]))} for k in keys}
    validation = {k: {"mean": float(np.mean([r["val"][k] for r in results])),
                      "std": float(np.std([r["val"][k] for r in results]))} for k in keys}
    report = {"zoo": str(zoo.path), "target": config.target, "encoder": config.encoder,
              "num_rows": len(view), "seeds": config.seeds, "summary": summary,
              "validation": validation,
              "seconds": float(np.mean([r["seconds"] for r in results])),
              "config": to_dict(config), "runs": results}
    return report
