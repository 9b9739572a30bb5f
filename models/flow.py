"""Flow matching over weight vectors: a straight path from Gaussian noise to trained weights.

Training regresses the velocity v(x_t, t, c) onto x1 − x0 along x_t = (1 − t)·x0 + t·x1,
x0 ~ N(0, source_scale²). Sampling integrates dx/dt = v from t = 0 to 1 with Euler, Heun or RK4,
or takes stochastic Euler steps that refresh part of the source noise (`eta`, below).
Conditions (class, scalar, task) are dropped at rate `cond_dropout` during training so that one
network learns both the conditional and the unconditional field — classifier-free guidance mixes
them.

What the backbone outputs (`prediction`):

* ``"data"`` (default): the clean weights x̂1; the velocity is (x̂1 − x_t) / (1 − t). The loss is
  the velocity loss written in x̂1 (weight 1 / (1 − t)², with 1 − t floored at `min_gap`), or with
  ``loss_on="data"`` the plain loss on x̂1, every t alike. The latter samples more accurate
  networks from weight zoos (mlp-mnist1d: +12 points, `benchmarks/flow_ablation.py`) but does so
  by staying near training models, and it collapses the spread within a mode of a toy mixture
  (the near-identity map at t → 1 gets little weight); the velocity loss is the default. A
  backbone narrower than the weight vector (an MLP of width 512 over 5,000 weights) can only
  output vectors in a subspace of its own width; predicting the weights there is fine, because
  trained weights lie near a low-dimensional set, but predicting a velocity is not: the velocity
  must also cancel the noise in every other direction, which such a backbone cannot express, so
  sampled weights keep most of their source noise (Li & He 2025, "Back to basics: let denoising
  generative models denoise"). EDM-style preconditioning, x̂1 = c_skip(t)·x_t + c_out(t)·F, fails
  for the same reason even with an output head wider than the weight vector: near t = 1 the
  skip passes the noise through and F must cancel it in every direction, through the narrow
  trunk (a pilot on mlp-mnist1d, 4,096-wide head, 4,000 steps: samples at 0.18 validation
  accuracy against the zoo's 0.52). Self-conditioning (the backbone also reads its previous
  estimate x̂1) is not offered either: on mlp-mnist1d's 2,048-head generator it gained 0.4
  validation points by sitting twice as near the training models (0.12 of their nearest-neighbour
  distance against 0.26), and on a two-mode toy it shrank the wide mode to 0.24–0.36 of its
  spread: in sampling the estimate comes from an earlier, more central evaluation than in
  training.
* ``"velocity"``: the backbone outputs v directly (the textbook form); fine when the backbone
  can express the identity on the whole vector, or with a tiny source (DeepWeightFlow's
  N(0, 0.01²)).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from wsl.models.backbones import condition_args, init_backbone
from wsl.models.errors import ModelError

SAMPLERS = ("euler", "heun", "rk4")
PREDICTIONS = ("data", "velocity")
TIME_SAMPLINGS = ("uniform", "logit-normal")


def sample_times(key, num: int, kind: str):
    """Training times t in (0, 1): uniform, or logit-normal (sigmoid of a standard normal, which
    spends more steps in the middle of the path, where the field is hardest to learn)."""
    if kind == "logit-normal":
        return jax.nn.sigmoid(jax.random.normal(key, (num,)))
    return jax.random.uniform(key, (num,))


def _assignment(cost):
    from scipy.optimize import linear_sum_assignment

    return linear_sum_assignment(cost)[1].astype("int32")


def ot_pair(x0, x1):
    """Reorder the noise batch `x0` so that x0[i] is paired with x1[i] by the exact minibatch
    optimal transport plan (squared distance): straighter paths between noise and data, as in
    minibatch OT conditional flow matching (Tong et al. 2023). Solved on the host by scipy."""
    cost = jnp.sum(x1 ** 2, 1)[:, None] - 2 * x1 @ x0.T + jnp.sum(x0 ** 2, 1)[None, :]
    order = jax.pure_callback(_assignment, jax.ShapeDtypeStruct((x0.shape[0],), jnp.int32),
                              jax.lax.stop_gradient(cost))
    return x0[order]


def drop_conditions(key, cond_class, cond_scalar, rate: float, cond_task=None):
    """Replace each example's conditions by "none" (class −1, scalar NaN, task all NaN), each
    independently with probability `rate`. Returns (cond_class, cond_scalar, cond_task)."""
    if rate <= 0:
        return cond_class, cond_scalar, cond_task
    k1, k2 = jax.random.split(key)
    if cond_class is not None:
        cond_class = jnp.where(jax.random.bernoulli(k1, rate, cond_class.shape), -1, cond_class)
    if cond_scalar is not None:
        cond_scalar = jnp.where(jax.random.bernoulli(k2, rate, cond_scalar.shape), jnp.nan,
                                cond_scalar)
    if cond_task is not None:
        # Its own key folded in: class and scalar draws stay those of runs without a task.
        drop = jax.random.bernoulli(jax.random.fold_in(key, 2), rate, cond_task.shape[:1])
        cond_task = jnp.where(drop.reshape(-1, *([1] * (cond_task.ndim - 1))), jnp.nan,
                              cond_task)
    return cond_class, cond_scalar, cond_task


def guided(apply, params, x, t, cond_class, cond_scalar, guidance: float, cond_task=None):
    """Classifier-free guidance: v_uncond + w·(v_cond − v_uncond); w = 1 is plain conditional.
    The unconditional field has every condition none, the task included."""
    conditions = condition_args(cond_class, cond_scalar, cond_task)
    if guidance == 1.0 or all(c is None for c in conditions):
        return apply(params, x, t, *conditions)
    none_class = None if cond_class is None else jnp.full_like(cond_class, -1)
    none_scalar = None if cond_scalar is None else jnp.full_like(cond_scalar, jnp.nan)
    none_task = None if cond_task is None else jnp.full_like(cond_task, jnp.nan)
    v_cond = apply(params, x, t, *conditions)
    v_none = apply(params, x, t, *condition_args(none_class, none_scalar, none_task))
    return v_none + guidance * (v_cond - v_none)


@dataclasses.dataclass(frozen=True)
class FlowMatching:
    """A flow-matching generator around a backbone `f(x, t, cond_class, cond_scalar[, cond_task])`
    (the task only when given)."""

    backbone: nn.Module
    dim: int
    source_scale: float = 1.0
    cond_dropout: float = 0.1
    prediction: Literal["data", "velocity"] = "data"
    min_gap: float = 0.05  # data prediction: 1 − t is floored here in the velocity loss
    time_sampling: Literal["uniform", "logit-normal"] = "uniform"
    ot_pairing: bool = False  # pair noise with data by minibatch optimal transport in training
    # Data prediction: the loss on the velocity (weight 1 / (1 − t)², the flow-matching loss) or
    # on the weights themselves (every t weighted alike, as a denoiser is trained).
    loss_on: Literal["velocity", "data"] = "velocity"

    def __post_init__(self):
        if self.prediction not in PREDICTIONS:
            raise ModelError(f"unknown flow prediction {self.prediction!r}; choose from "
                             f"{PREDICTIONS}")
        if self.loss_on not in ("velocity", "data"):
            raise ModelError(f"flow loss_on must be 'velocity' or 'data', got {self.loss_on!r}")
        if self.time_sampling not in TIME_SAMPLINGS:
            raise ModelError(f"unknown time sampling {self.time_sampling!r}; choose from "
                             f"{TIME_SAMPLINGS}")
        if not 0 < self.min_gap < 1:
            raise ModelError(f"min_gap must lie in (0, 1), got {self.min_gap}")
        for name, ok, expected in (
                ("dim", self.dim >= 1, "≥ 1"), ("source_scale", self.source_scale > 0, "positive"),
                ("cond_dropout", 0 <= self.cond_dropout < 1, "in [0, 1)")):
            if not ok:
                raise ModelError(f"flow {name}={getattr(self, name)!r}: must be {expected}")

    def init(self, key):
        return init_backbone(self.backbone, key, self.dim)

    def _gap(self, t):
        return jnp.maximum(1.0 - t, self.min_gap)[:, None]

    def velocity(self, params, x, t, cond_class=None, cond_scalar=None, cond_task=None):
        """The field at times t < 1. Data prediction divides by the exact 1 − t: a floor here
        would slow the field on (1 − min_gap, 1) and leave samples short of the data when a
        solver takes more than 1 / min_gap steps (`sample` never evaluates at t = 1)."""
        out = self.backbone.apply({"params": params}, x, t,
                                  *condition_args(cond_class, cond_scalar, cond_task))
        if self.prediction == "velocity":
            return out
        return (out - x) / (1.0 - t)[:, None]

    def loss(self, params, x1, key, cond_class=None, cond_scalar=None, cond_task=None):
        k_noise, k_time, k_drop = jax.random.split(key, 3)
        x0 = self.source_scale * jax.random.normal(k_noise, x1.shape, x1.dtype)
        if self.ot_pairing:
            x0 = ot_pair(x0, x1)
        t = sample_times(k_time, x1.shape[0], self.time_sampling)
        xt = (1 - t[:, None]) * x0 + t[:, None] * x1
        conditions = drop_conditions(k_drop, cond_class, cond_scalar, self.cond_dropout,
                                     cond_task)
        out = self.backbone.apply({"params": params}, xt, t, *condition_args(*conditions))
        if self.prediction == "velocity":
            return jnp.mean((out - (x1 - x0)) ** 2)
        if self.loss_on == "data":
            return jnp.mean((out - x1) ** 2)
        # ‖v̂ − v‖² with v̂ = (x̂1 − x_t)/(1 − t) and v = (x1 − x_t)/(1 − t).
        return jnp.mean(((out - x1) / self._gap(t)) ** 2)

    def sample(self, params, key, num: int, *, steps: int = 100, method: str = "rk4",
               cond_class=None, cond_scalar=None, guidance: float = 1.0,
               temperature: float = 1.0, cond_task=None, eta: float = 0.0):
        """`num` samples, integrating the learned field from noise (deterministic given `key`).

        `temperature` scales the source noise the integration starts from (below 1: samples
        nearer the modes, less diverse). `cond_task` is (num, k, F) support features (a NaN task:
        no task) or None. `eta` in (0, 1] (Euler only) makes each step stochastic: from the
        predicted weights x̂1 = x + (1 − t)·v and the implied noise x̂0 = x − t·v, a step to t'
        lands on t'·x̂1 + (1 − t')·(√(1 − η²)·x̂0 + η·z), z fresh source noise; η = 0 is Euler
        exactly. Unlike DDIM's η it refreshes a fraction of all the noise, not of the
        posterior's: x̂1 is a posterior mean, so samples come out narrower than the data as η
        grows (one Gaussian mode, 40 steps: 0.92 of its spread at η = 0.5, 0.66 at η = 1) —
        a knob like `temperature`, to choose on validation (on mlp-mnist1d's 2,048-head
        generator, six seeds: η = 0.5 level with RK4, η = 0.25 below; benchmarks/generate.py).
        """
        if method not in SAMPLERS:
            raise ModelError(f"unknown sampler {method!r}; choose from {SAMPLERS}")
        if steps < 1:
            raise ModelError(f"steps must be ≥ 1, got {steps}")
        if not 0 <= eta <= 1:
            raise ModelError(f"eta must lie in [0, 1], got {eta}")
        if eta > 0 and method != "euler":
            raise ModelError(f"eta > 0 takes stochastic Euler steps; sampler {method!r} solves "
                             f"the ODE (use sampler 'euler', or eta 0)")
        field = lambda x, t: guided(self.velocity, params, x, jnp.full((x.shape[0],), t),
                                    cond_class, cond_scalar, guidance, cond_task)
        if eta > 0:
            return self._stochastic(field, key, num, steps, temperature, eta)
        h = 1.0 / steps

        def step(x, i):
            t = i * h
            if method == "euler":
                return x + h * field(x, t), None
            if method == "heun":
                k1 = field(x, t)
                k2 = field(x + h * k1, t + h)
                return x + 0.5 * h * (k1 + k2), None
            k1 = field(x, t)
            k2 = field(x + 0.5 * h * k1, t + 0.5 * h)
            k3 = field(x + 0.5 * h * k2, t + 0.5 * h)
            k4 = field(x + h * k3, t + h)
            return x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), None

        x0 = temperature * self.source_scale * jax.random.normal(key, (num, self.dim))
        if self.prediction == "velocity":
            x1, _ = jax.lax.scan(step, x0, jnp.arange(steps, dtype=jnp.float32))
            return x1
        # Data prediction: the field is (x̂1 − x)/(1 − t), singular at t = 1, where a solver's
        # last evaluations land. The last step instead returns the (guided) predicted clean
        # weights at t = 1 − h, so that sampling ends exactly at t = 1 and keeps no noise.
        x, _ = jax.lax.scan(step, x0, jnp.arange(steps - 1, dtype=jnp.float32))
        t_last = 1.0 - h
        return x + h * field(x, t_last)

    def _stochastic(self, field, key, num, steps, temperature, eta):
        """Stochastic Euler steps (see `sample`). The last step lands on t = 1, where the
        update is x̂1 itself: no noise is left, and the field is never evaluated at t = 1."""
        scale = temperature * self.source_scale
        keep = jnp.sqrt(1.0 - eta ** 2)
        k_init, k_steps = jax.random.split(key)

        def step(x, inputs):
            i, k = inputs
            t, t_next = i / steps, (i + 1) / steps
            v = field(x, t)
            x1_hat, x0_hat = x + (1.0 - t) * v, x - t * v
            z = scale * jax.random.normal(k, x.shape, x.dtype)
            return t_next * x1_hat + (1.0 - t_next) * (keep * x0_hat + eta * z), None

        x0 = scale * jax.random.normal(k_init, (num, self.dim))
        x, _ = jax.lax.scan(step, x0, (jnp.arange(steps, dtype=jnp.float32),
                                       jax.random.split(k_steps, steps)))
        return x
