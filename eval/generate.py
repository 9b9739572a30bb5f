"""Train a weight generator on a zoo, sample networks into a new zoo, and evaluate them honestly.

The pipeline (`wsl gen train` / `wsl gen sample`):

1. select rows of a zoo (each model's last checkpoint, not diverged, optionally a minimum accuracy;
   one activation unless the generator is conditioned on it);
2. align every selected network to a common reference by weight matching (`wsl.align.align_zoo`),
   flatten through the weight space and normalise per tensor (`models.normalize`);
3. train the generator with the shared training loop (`train.train`, with EMA parameters);
4. sample, undo the normalisation, evaluate every sample on the zoo's dataset, write a zoo whose
   manifest marks it generated and names its generator, and compare it with the training
   population (`eval.generated`).

A generator directory holds ``generator.json`` (configs, architecture, dataset, selection),
``normalizer.npz``, ``aligned_train.npy`` (the aligned training weights) and the training runs (``generator/``, and ``autoencoder/`` for latent-ddpm).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from models.normalize import TensorNormalizer
from models.weight_generator import (AutoencoderTask, GeneratorConfig, GeneratorTask,
                                     make_autoencoder, make_generator)
from train import TrainConfig, load_params, train
from wsl.align import align_zoo
from wsl.config import from_dict, to_dict
from zoos.architectures import build
from zoos.store import Zoo, write_zoo

GENERATOR_FILE = "generator.json"


class GenerateError(ValueError):
    """A zoo or generator directory that cannot be used as asked."""


def zoo_dataset(manifest: Mapping[str, Any]):
    """The dataset a zoo was trained on, rebuilt from its manifest (same splits, same transforms)."""
    from zoos.datasets import load_dataset

    spec = manifest.get("dataset")
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise GenerateError("the zoo's manifest names no dataset to evaluate generated networks on")
    options = {k: tuple(v) if isinstance(v, list) else v
               for k, v in dict(spec.get("options", {})).items()}
    return load_dataset(spec["name"], **options)


@dataclasses.dataclass
class Selection:
    """The aligned, normalised training population a generator learns."""

    zoo: Zoo
    flat: np.ndarray  # aligned, raw weights (models, num_params)
    x: np.ndarray  # normalised
    normalizer: TensorNormalizer
    activation: str | None
    class_names: list[str]
    cond_class: np.ndarray | None
    cond_scalar: np.ndarray | None
    align_seconds: float


def select_and_align(zoo: Zoo, config: GeneratorConfig, *, min_acc: float | None = None,
                     align: str = "mean", seed: int = 0, max_models: int | None = None) -> Selection:
    """Rows a generator trains on: last epochs, finite, accurate enough, aligned, normalised."""
    view = zoo.filter(epoch="last")
    m = view.metrics
    keep = ~m["diverged"].astype(bool) if "diverged" in m else np.ones(len(view), bool)
    if min_acc is not None:
        keep &= m["test_acc"] >= min_acc
    activation = None
    if "activation" in m and config.condition_class != "activation":
        # One function family per generator: sampled weights are evaluated with one activation.
        values, counts = np.unique(m["activation"][keep], return_counts=True)
        if len(values):
            activation = str(values[np.argmax(counts)])
            keep &= m["activation"] == activation
    view = view.filter(where=lambda _: keep)
    if max_models is not None and len(view) > max_models:
        pick = np.zeros(len(view), bool)
        pick[np.random.default_rng(seed).choice(len(view), max_models, replace=False)] = True
        view = view.filter(where=lambda _: pick)
    if len(view) < 2:
        raise GenerateError(f"{zoo.path}: only {len(view)} models pass the selection "
                            f"(last epoch, not diverged, min_acc={min_acc}); need at least 2")
    space = view.weight_space
    population = view.weights(np.arange(len(view)))
    start = time.perf_counter()
    if align == "none":
        flat = np.asarray(space.flatten(population))
    elif align in ("mean", "first"):
        aligned = align_zoo(space, population, reference="mean" if align == "mean" else 0,
                            key=jax.random.key(seed))
        flat = np.asarray(space.flatten(aligned.params))
    else:
        raise GenerateError(f"align must be 'mean', 'first' or 'none', got {align!r}")
    align_seconds = time.perf_counter() - start
    normalizer = TensorNormalizer.fit(space, flat)
    x = np.asarray(normalizer.normalize(flat), np.float32)
    class_names, cond_class, cond_scalar = [], None, None
    metrics = view.metrics
    if config.condition_class:
        if config.condition_class not in metrics:
            raise GenerateError(f"condition_class {config.condition_class!r} is not a zoo column; "
                                f"columns: {view.columns}")
        class_names = sorted({str(v) for v in metrics[config.condition_class]})
        cond_class = np.asarray([class_names.index(str(v)) for v in metrics[config.condition_class]],
                                np.int32)
    if config.condition_scalar:
        if config.condition_scalar not in metrics:
            raise GenerateError(f"condition_scalar {config.condition_scalar!r} is not a zoo "
                                f"column; columns: {view.columns}")
        cond_scalar = np.asarray(metrics[config.condition_scalar], np.float32)
    return Selection(view, flat, x, normalizer, activation, class_names, cond_class, cond_scalar,
                     align_seconds)


def _batch_data(x, cond_class, cond_scalar) -> dict:
    data = {"x": x}
    if cond_class is not None:
        data["cond_class"] = cond_class
    if cond_scalar is not None:
        data["cond_scalar"] = cond_scalar
    return data


def train_generator(zoo_path: str | Path, out: str | Path, config: GeneratorConfig,
                    train_config: TrainConfig, *, min_acc: float | None = None,
                    align: str = "mean", max_models: int | None = None) -> Path:
    """Train a generator on a zoo into directory `out` (resumes an interrupted run there)."""
    out = Path(out)
    zoo = Zoo.open(zoo_path)
    selection = select_and_align(zoo, config, min_acc=min_acc, align=align,
                                 seed=train_config.seed, max_models=max_models)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "normalizer.npz", mean=selection.normalizer.mean, std=selection.normalizer.std)
    # The aligned training weights: novelty, diversity and span distance compare in this basis.
    np.save(out / "aligned_train.npy", selection.flat)
    arch = selection.zoo.architecture
    arch_config = dict(arch.config)
    if selection.activation is not None:
        arch_config["activation"] = selection.activation
    data = selection.x
    latent = None
    if config.method == "latent-ddpm":
        ae = make_autoencoder(config, data.shape[1])
        ae_cfg = dataclasses.replace(train_config, steps=config.ae_steps, ema_decay=0.0,
                                     batch_size=min(train_config.batch_size, len(data)))
        ae_run = train(AutoencoderTask(ae), ae_cfg, {"x": data}, out / "autoencoder")
        ae_params = jax.device_get(ae_run.params)
        z = np.asarray(ae.encode(ae_params, jnp.asarray(data)))
        latent = {"mean": z.mean(0).tolist(), "std": np.maximum(z.std(0), 1e-6).tolist()}
        data = ((z - z.mean(0)) / np.maximum(z.std(0), 1e-6)).astype(np.float32)
    meta = {
        "generator": to_dict(config), "train": to_dict(train_config),
        "zoo": str(Path(zoo_path).resolve()), "architecture": {"name": arch.name, "config":
                                                               json.loads(json.dumps(arch_config, default=list))},
        "weight_space": selection.zoo.weight_space.to_dict(),
        "dataset": zoo.manifest.get("dataset"),
        "selection": {"rows": selection.zoo.global_rows.tolist(), "min_acc": min_acc,
                      "align": align, "activation": selection.activation,
                      "num_models": len(selection.zoo), "align_seconds": selection.align_seconds},
        "class_names": selection.class_names, "latent": latent,
    }
    (out / GENERATOR_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    space = selection.zoo.weight_space
    if train_config.batch_size > len(data):  # a small zoo: every model in every batch
        train_config = dataclasses.replace(train_config, batch_size=len(data))
    generator = make_generator(config, data.shape[1], space if latent is None else None,
                               len(selection.class_names))
    train(GeneratorTask(generator), train_config,
          _batch_data(data, selection.cond_class, selection.cond_scalar), out / "generator")
    return out


@dataclasses.dataclass
class TrainedGenerator:
    """A generator directory loaded for sampling."""

    directory: Path
    meta: dict
    config: GeneratorConfig
    normalizer: TensorNormalizer
    generator: Any
    params: Any
    autoencoder: Any = None
    ae_params: Any = None

    @classmethod
    def load(cls, directory: str | Path) -> TrainedGenerator:
        directory = Path(directory)
        path = directory / GENERATOR_FILE
        if not path.exists():
            raise GenerateError(f"{directory}: not a generator directory (no {GENERATOR_FILE}); "
                                f"train one with `wsl gen train`")
        meta = json.loads(path.read_text())
        config = from_dict(GeneratorConfig, meta["generator"])
        train_cfg = from_dict(TrainConfig, meta["train"])
        with np.load(directory / "normalizer.npz") as stats:
            normalizer = TensorNormalizer(stats["mean"], stats["std"])
        from wsl.weight_space import WeightSpace

        space = WeightSpace.from_dict(meta["weight_space"])
        latent = meta.get("latent")
        dim = config.latent_dim if latent else space.num_params
        generator = make_generator(config, dim, None if latent else space,
                                   len(meta.get("class_names", [])))
        params = load_params(directory / "generator", "latest", ema=train_cfg.ema_decay > 0)
        ae = ae_params = None
        if latent:
            ae = make_autoencoder(config, space.num_params)
            ae_params = load_params(directory / "autoencoder", "latest")
        return cls(directory, meta, config, normalizer, generator, params, ae, ae_params)

    @property
    def architecture(self):
        a = self.meta["architecture"]
        return build(a["name"], **a["config"])

    def class_id(self, name: str) -> int:
        names = self.meta.get("class_names", [])
        if name not in names:
            raise GenerateError(f"class {name!r} is not one this generator was conditioned on: {names}")
        return names.index(name)

    def sample(self, num: int, *, seed: int = 0, sampler: str | None = None,
               steps: int | None = None, guidance: float | None = None,
               cond_class: str | None = None, cond_scalar: float | None = None,
               chunk: int = 1000) -> np.ndarray:
        """`num` raw weight vectors (denormalised), deterministic for a seed."""
        cfg = self.config
        method = sampler or cfg.default_sampler
        steps = steps or cfg.sample_steps
        guidance = cfg.guidance if guidance is None else guidance
        out = []
        for start in range(0, num, chunk):
            n = min(chunk, num - start)
            key = jax.random.fold_in(jax.random.key(seed), start)
            cls = None if cond_class is None else jnp.full((n,), self.class_id(cond_class), jnp.int32)
            sca = None if cond_scalar is None else jnp.full((n,), cond_scalar, jnp.float32)
            z = _sample_jit(self.generator, self.params, key, n, method, steps, guidance, cls, sca)
            if self.autoencoder is not None:
                lat = self.meta["latent"]
                z = z * jnp.asarray(lat["std"]) + jnp.asarray(lat["mean"])
                z = self.autoencoder.decode(self.ae_params, z)
            out.append(np.asarray(self.normalizer.denormalize(np.asarray(z))))
        return np.concatenate(out).astype(np.float32)


def _sample_jit(generator, params, key, n, method, steps, guidance, cls, sca):
    fn = jax.jit(lambda p, k, c, s: generator.sample(p, k, n, steps=steps, method=method,
                                                     cond_class=c, cond_scalar=s,
                                                     guidance=guidance))
    return fn(params, key, cls, sca)


def evaluate_population(arch, flat: np.ndarray, dataset, batch: int = 4096) -> dict[str, np.ndarray]:
    """Loss and accuracy of every network on every split (rows of a zoo metrics table)."""
    space = arch.weight_space

    @jax.jit
    def stats(vectors, x, y):
        logits = jax.vmap(lambda v: arch.apply(space.unflatten(v), x))(vectors)
        logp = jax.nn.log_softmax(logits, axis=-1)
        nll = -jnp.take_along_axis(logp, y[None, :, None], axis=-1)[..., 0]
        return nll.sum(1), (jnp.argmax(logits, -1) == y[None]).sum(1)

    out = {}
    vectors = jnp.asarray(flat, jnp.float32)
    for split in ("train", "val", "test"):
        x, y = dataset.split(split)
        loss, correct = np.zeros(len(flat)), np.zeros(len(flat))
        for i in range(0, len(x), batch):
            l, c = stats(vectors, jnp.asarray(x[i:i + batch]), jnp.asarray(y[i:i + batch]))
            loss += np.asarray(l)
            correct += np.asarray(c)
        out[f"{split}_loss"] = loss / max(len(x), 1)
        out[f"{split}_acc"] = correct / max(len(x), 1)
    out["gap"] = out["train_acc"] - out["test_acc"]
    return out


def sample_to_zoo(generator_dir: str | Path, out: str | Path, num: int, *, seed: int = 0,
                  **sample_options) -> tuple[Zoo, dict]:
    """Sample `num` networks into a zoo at `out`, evaluated on the training zoo's dataset."""
    gen = TrainedGenerator.load(generator_dir)
    arch = gen.architecture
    start = time.perf_counter()
    flat = gen.sample(num, seed=seed, **sample_options)
    jax.block_until_ready(flat)
    sample_seconds = time.perf_counter() - start
    dataset = zoo_dataset(gen.meta)
    metrics = evaluate_population(arch, flat, dataset)
    rows = []
    for i in range(num):
        row = {"model": i, "epoch": 0}
        row.update({k: float(v[i]) for k, v in metrics.items()})
        row["diverged"] = bool(not np.isfinite(flat[i]).all())
        if arch.config.get("activation") is not None:
            row["activation"] = arch.config["activation"]
        rows.append(row)
    manifest = {
        "architecture": {"name": arch.name, "config": gen.meta["architecture"]["config"]},
        "weight_space": gen.meta["weight_space"], "dataset": gen.meta["dataset"],
        "generated": True,
        "recipe": {"name": "generated", "generator": str(Path(generator_dir).resolve()),
                   "method": gen.config.method, "sampler": sample_options.get("sampler")
                   or gen.config.default_sampler, "seed": seed, "num": num,
                   "training_zoo": gen.meta["zoo"]},
    }
    zoo = write_zoo(out, manifest, arch.weight_space.unflatten(flat), rows)
    return zoo, {"sample_seconds": sample_seconds, "num": num}


def compare_with_training(generated: Zoo, generator_dir: str | Path, *, seed: int = 0,
                          max_train: int = 1000):
    """`eval.generated` report of a generated zoo against its generator's training population."""
    from eval.generated import evaluate_generated

    gen = TrainedGenerator.load(generator_dir)
    train_flat = np.load(Path(generator_dir) / "aligned_train.npy")
    if len(train_flat) > max_train:
        train_flat = train_flat[np.sort(np.random.default_rng(seed).choice(
            len(train_flat), max_train, replace=False))]
    dataset = zoo_dataset(gen.meta)
    return evaluate_generated(gen.architecture, generated.flat(), train_flat,
                              dataset.x_test, dataset.y_test, seed=seed)
