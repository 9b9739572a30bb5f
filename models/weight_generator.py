"""Weight generators as trainable tasks: flow matching, DDPM and latent DDPM over weight vectors.

`GeneratorConfig` names the method and backbone (and checks them on creation); `make_generator`
builds the model on a vector of a given size; `GeneratorTask` and `AutoencoderTask` plug into
`wsl.train.train` (they follow its task protocol: ``init(key, batch)``,
``loss(params, batch, key)``).
A batch holds ``x`` (normalised, aligned weight vectors, or latents) and optionally
``cond_class`` / ``cond_scalar`` / ``cond_task`` (per-class support features, several draws per
model). Their training config is `wsl.train.generator.DEFAULT_TRAIN`.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from wsl.config import ConfigError, coerce_fields
from wsl.models import diffusion, flow
from wsl.models.autoencoder import Autoencoding, WeightAutoencoder
from wsl.models.backbones import MLPBackbone, TokenTransformer
from wsl.models.diffusion import Diffusion
from wsl.models.errors import ModelError
from wsl.models.flow import FlowMatching
from wsl.weight_space import WeightSpace

METHODS = ("flow", "ddpm", "latent-ddpm")


@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
    """What generator to train over a zoo's weights, and how to sample it."""

    method: Literal["flow", "ddpm", "latent-ddpm"] = "flow"
    backbone: Literal["mlp", "transformer"] = "mlp"
    hidden: int = 512  # MLP width / transformer model dimension
    # MLP backbone: width of the layer its output projection reads (0: hidden). Generated
    # weights lie in an affine subspace of this dimension; see MLPBackbone.head_width.
    head_width: int = 0
    depth: int = 3
    token_dim: int = 64  # transformer: weights per token (tokens never straddle tensors)
    heads: int = 4
    prediction: Literal["data", "velocity", "noise"] = "data"  # backbone output; see models.flow
    source_scale: float = 1.0  # flow: std of the Gaussian source, in normalised weight units
    time_sampling: Literal["uniform", "logit-normal"] = "uniform"  # flow: training times
    ot_pairing: bool = False  # flow: pair noise and weights by minibatch optimal transport
    # Flow with data prediction: the velocity loss (default), or the loss on the weights with
    # every t alike — more accurate samples on weight zoos, but nearer the training models, and
    # within-mode variance collapses (benchmarks/flow_ablation.py, tests/test_generator_models).
    loss_on: Literal["velocity", "data"] = "velocity"
    # How weights are standardised before the generator sees them: one mean and std per tensor,
    # or per weight (`wsl.models.normalize.EntryNormalizer`; the basis is fixed by alignment).
    normalize: Literal["tensor", "entry"] = "tensor"
    diffusion_steps: int = 1000
    schedule: Literal["linear", "cosine"] = "linear"
    clip_x0: float | None = None
    latent_dim: int = 64  # latent-ddpm: autoencoder bottleneck
    ae_hidden: tuple[int, ...] = (512, 256)
    ae_steps: int = 3000
    cond_dropout: float = 0.1  # conditions dropped in training, for classifier-free guidance
    condition_class: str | None = None  # a zoo column to condition on (e.g. "activation")
    condition_scalar: str | None = None  # a numeric zoo column (e.g. "val_acc"; never test_*)
    # How the scalar is embedded: "smooth" (low frequencies: nearby values alike) or
    # "sinusoidal" (the time embedding; generators saved before this field existed).
    scalar_embedding: Literal["smooth", "sinusoidal"] = "smooth"
    # The zoo's task, given by data: per-class support features (k, F) from `wsl.zoos.tasks`,
    # encoded by `wsl.models.task_encoder.TaskEncoder` (per-class width `task_embed`).
    condition_task: bool = False
    task_embed: int = 64
    # Train also on relabelled copies: every step permutes each example's classes — its support
    # rows and its output units alike (`relabel_maps`) — so that a class's output unit is learnt
    # from that class's support row wherever it sits (k! tasks per zoo task, not one). Measured
    # worse on the transfer benchmark (main experiment, seed 0, validation): samples start at
    # 0.518 rather than 0.904 — task zoos list classes in order, a prior this takes away.
    task_relabel: bool = False
    sampler: Literal["euler", "heun", "rk4", "ddpm", "ddim"] | None = None  # None: rk4 / ddim
    sample_steps: int | None = None  # None: 10 for the flow's RK4 (40 evaluations), 50 for DDIM
    guidance: float = 1.0
    temperature: float = 1.0  # sampling: scale of the starting noise (choose it on validation)
    # Sampling: the noise refreshed at each step (flow: stochastic Euler steps; DDIM: its η);
    # 0 is the deterministic sampler. Choose it on validation.
    eta: float = 0.0

    def __post_init__(self):
        coerce_fields(self)  # types and choices (method, backbone, ...), named by field

        def require(ok: bool, field: str, message: str):
            if not ok:
                raise ConfigError(f"{field}: {message}, got {getattr(self, field)!r}")

        for field in ("hidden", "depth", "token_dim", "heads", "diffusion_steps", "latent_dim",
                      "ae_steps", "task_embed"):
            require(getattr(self, field) >= 1, field, "must be ≥ 1")
        require(all(w >= 1 for w in self.ae_hidden), "ae_hidden", "widths must be ≥ 1")
        require(self.head_width >= 0, "head_width", "must be ≥ 0 (0: the hidden width)")
        require(self.source_scale > 0, "source_scale", "must be positive")
        require(0 <= self.cond_dropout < 1, "cond_dropout", "must lie in [0, 1)")
        require(self.clip_x0 is None or self.clip_x0 > 0, "clip_x0", "must be positive or none")
        require(self.sample_steps is None or self.sample_steps >= 1, "sample_steps",
                "must be ≥ 1 or none")
        require(self.guidance >= 0, "guidance", "must be ≥ 0")
        require(self.temperature > 0, "temperature", "must be positive")
        require(0 <= self.eta <= 1, "eta", "must lie in [0, 1]")
        require(self.eta == 0 or self.sampler in ("euler", "ddim"), "eta",
                "needs sampler=euler (flow: stochastic Euler steps) or sampler=ddim (diffusion)")
        for field in ("condition_class", "condition_scalar"):
            # Sampling "at the 90th percentile of test accuracy" would choose networks by the
            # split that must be scored once, at the end.
            require(not str(getattr(self, field) or "").startswith("test_"), field,
                    "a test-split column cannot be a condition (test data is scored once, "
                    "never chosen on); condition on val_acc or another validation column")
        if self.task_relabel:
            require(self.condition_task, "task_relabel", "relabels the task condition: needs "
                    "condition_task=true")
            require(self.method != "latent-ddpm" and self.normalize == "tensor", "task_relabel",
                    "permutes output units of the weights themselves: not with latent-ddpm or "
                    "normalize=entry")
        is_flow = self.method == "flow"
        predictions = flow.PREDICTIONS if is_flow else diffusion.PREDICTIONS
        require(self.prediction in predictions, "prediction",
                f"method {self.method!r} predicts one of {predictions}")
        samplers = flow.SAMPLERS if is_flow else diffusion.SAMPLERS
        require(self.sampler is None or self.sampler in samplers, "sampler",
                f"method {self.method!r} samples with one of {samplers} (or none: default)")
        if self.backbone == "transformer":
            # Latents have no weight space to cut into per-tensor tokens.
            require(self.method != "latent-ddpm", "backbone",
                    "latent-ddpm runs the mlp backbone on its latents")
            require(self.hidden % self.heads == 0, "hidden",
                    f"the transformer's width must be a multiple of heads={self.heads}")

    @property
    def default_sampler(self) -> str:
        return self.sampler or ("rk4" if self.method == "flow" else "ddim")

    @property
    def default_steps(self) -> int:
        # RK4 at 10 steps sampled networks as accurate as at 50 (benchmarks/generate.py zoos),
        # at a fifth of the time; flows from straight paths need few steps.
        return self.sample_steps or (10 if self.method == "flow" else 50)


def scalar_condition(text: str) -> float | str:
    """A scalar condition as written on a command line: a number, or a training-population
    quantile name such as "q90" (checked later against the generator's statistics)."""
    try:
        return float(text)
    except ValueError:
        return text


def make_generator(config: GeneratorConfig, dim: int, space: WeightSpace | None = None,
                   num_classes: int = 0, task_shape: tuple[int, ...] | None = None):
    """The flow or diffusion model over vectors of size `dim` (weights, or latents).

    `task_shape` is (classes, features) of the task condition; used, and needed, only when
    `config.condition_task`."""
    use_scalar = config.condition_scalar is not None
    task = ()
    if config.condition_task:
        if task_shape is None:
            raise ModelError("condition_task=True needs the task features' shape (classes, "
                             "features) as task_shape; none was given")
        task = tuple(int(n) for n in task_shape)
        if len(task) != 2 or min(task) < 1:
            raise ModelError(f"task_shape must be (classes, features), both ≥ 1; got "
                             f"{tuple(task_shape)}")
    if config.backbone == "transformer":
        if space is None or space.num_params != dim:
            raise ModelError("the transformer backbone tokenises weights and needs their weight "
                             "space (latent-ddpm uses the mlp backbone on latents)")
        backbone = TokenTransformer(space, config.token_dim, config.hidden, config.depth,
                                    config.heads, num_classes, use_scalar, task,
                                    config.task_embed, config.scalar_embedding)
    else:
        backbone = MLPBackbone(dim, config.hidden, config.depth, num_classes, use_scalar, task,
                               config.task_embed, config.scalar_embedding, config.head_width)
    if config.method == "flow":
        return FlowMatching(backbone, dim, config.source_scale, config.cond_dropout,
                            config.prediction, time_sampling=config.time_sampling,
                            ot_pairing=config.ot_pairing, loss_on=config.loss_on)
    return Diffusion(backbone, dim, config.diffusion_steps, config.schedule, config.cond_dropout,
                     config.clip_x0, config.prediction)


def make_autoencoder(config: GeneratorConfig, dim: int) -> Autoencoding:
    return Autoencoding(WeightAutoencoder(dim, config.latent_dim, tuple(config.ae_hidden)))


MAX_RELABELINGS = 720  # all k! orders up to 6 classes; beyond, this many drawn at random


def relabel_maps(space: WeightSpace, num_classes: int, seed: int = 0) -> tuple[np.ndarray,
                                                                               np.ndarray]:
    """Class orders and what they do to a flat weight vector: ``orders`` (P, k) and ``index``
    (P, num_params), such that ``flat[index[p]]`` is the network whose output unit j is the
    original's unit ``orders[p, j]`` — the network for the task with its support rows taken in
    that order, ``support[orders[p]]``. The class axes are the unlabelled axes of size k of the
    tensors in the last tensor's module (the head: an MLP's last kernel and bias)."""
    head = [space.tensor(path) for path in space.head_paths]
    axes = {t.path: [i for i, (label, size) in enumerate(zip(t.axes, t.shape))
                     if label is None and size == num_classes] for t in head}
    axes = {path: found for path, found in axes.items() if found}
    if not axes:
        raise ModelError(f"task_relabel: no output axis of size {num_classes} in the head "
                         f"{list(space.head_paths)} of this weight space")
    if num_classes <= 6:
        orders = np.asarray(list(itertools.permutations(range(num_classes))), np.int32)
    else:
        rng = np.random.default_rng(seed)
        orders = np.stack([np.arange(num_classes)] + [
            rng.permutation(num_classes) for _ in range(MAX_RELABELINGS - 1)]).astype(np.int32)
    index = np.tile(np.arange(space.num_params, dtype=np.int32), (len(orders), 1))
    for t in space.tensors:
        if t.path not in axes:
            continue
        start, end = space.offsets[t.path]
        entries = np.arange(start, end, dtype=np.int32).reshape(t.shape)
        for p, order in enumerate(orders):
            block = entries
            for axis in axes[t.path]:
                block = np.take(block, order, axis=axis)
            index[p, start:end] = block.reshape(-1)
    return orders, index


@dataclasses.dataclass(frozen=True)
class GeneratorTask:
    """Trainer task: minimise the generator's loss on batches of vectors ``x``.

    ``cond_task`` in a batch is (batch, draws, k, F), several support draws per model, of which
    each step uses one per example, at random (or (batch, k, F): one task per example). With
    `relabel_maps`' ``(orders, index)`` as ``relabel``, each example is also taken in one of its
    class orders, at random."""

    generator: FlowMatching | Diffusion
    relabel: Any = dataclasses.field(default=None, compare=False)

    def init(self, key, batch):
        return self.generator.init(key)

    def loss(self, params, batch, key):
        cond_task = batch.get("cond_task")
        if cond_task is not None:
            if cond_task.ndim not in (3, 4):
                raise ModelError(f"cond_task has shape {tuple(cond_task.shape)}; expected "
                                 f"(batch, draws, classes, features) or (batch, classes, "
                                 f"features)")
            # Split off only here: without a task the loss draws exactly what it drew before.
            key, k_draw = jax.random.split(key)
            if cond_task.ndim == 4:
                draw = jax.random.randint(k_draw, cond_task.shape[:1], 0, cond_task.shape[1])
                cond_task = cond_task[jnp.arange(cond_task.shape[0]), draw]
        x = batch["x"]
        if cond_task is not None and self.relabel is not None:
            orders, index = (jnp.asarray(a) for a in self.relabel)
            key, k_order = jax.random.split(key)
            pick = jax.random.randint(k_order, x.shape[:1], 0, len(orders))
            x = jnp.take_along_axis(x, index[pick], axis=1)
            cond_task = jnp.take_along_axis(cond_task, orders[pick][:, :, None], axis=1)
        loss = self.generator.loss(params, x, key, batch.get("cond_class"),
                                   batch.get("cond_scalar"), cond_task)
        return loss, {}


@dataclasses.dataclass(frozen=True)
class AutoencoderTask:
    """Trainer task: reconstruct weight vectors ``x`` through the autoencoder's bottleneck."""

    autoencoder: Autoencoding

    def init(self, key, batch):
        return self.autoencoder.init(key)

    def loss(self, params, batch, key):
        loss = self.autoencoder.loss(params, batch["x"], key)
        return loss, {"rmse": jnp.sqrt(loss)}
