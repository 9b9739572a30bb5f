"""Zoo architectures: each a `WeightSpace` with a Flax `init` and a pure `apply(params, x)`.

Every architecture is registered by name with a config of keyword arguments; `build(name, **config)`
returns an `Architecture`. Its weight space labels every axis with its permutation group, so that
permuting hidden units (and residual streams, attention heads, head dimensions) leaves the function
unchanged — tests/test_architectures.py checks this for every entry in the registry.

Every config is checked before anything is built (`check_config`): a width, channel count, kernel
or patch size, input shape, class count or activation that cannot work raises `ArchitectureError`
naming the key and the value, never an error from deep inside JAX.

Dropout takes its rate as a call argument rather than a module attribute so that a population can
carry one dropout rate per model inside one compiled program.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from wsl.config import FrozenMap, builder_config, builder_defaults
from wsl.errors import WslError
from wsl.weight_space import WeightSpace
from wsl.zoos.errors import ArchitectureError

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "tanh": jnp.tanh,
    "sigmoid": nn.sigmoid,
    "gelu": nn.gelu,
    "silu": nn.silu,
    "leaky_relu": nn.leaky_relu,
    "identity": lambda x: x,
}


def activation_fn(name: str) -> Callable[[jax.Array], jax.Array]:
    if name not in ACTIVATIONS:
        raise ArchitectureError(f"unknown activation {name!r}; choose from {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def dropout(x: jax.Array, rate, key: jax.Array | None, site: int) -> jax.Array:
    """Inverted dropout whose rate may be a traced (per-model) value; off when key is None."""
    if key is None:
        return x
    keep = 1.0 - rate
    mask = jax.random.bernoulli(jax.random.fold_in(key, site), keep, x.shape)
    return jnp.where(mask, x / jnp.maximum(keep, 1e-6), 0.0)


@dataclasses.dataclass(frozen=True)
class Architecture:
    """A network family: its weight space, `init(key) -> params` and `apply(params, x) -> logits`.

    `apply(params, x, dropout_rate=0.0, key=None)` takes a batch `x` of shape (batch, *input_shape);
    dropout is active only when a key is given.

    Hashable: two architectures are equal, and hash equal, when their name and config are (the
    rest is built from those), so one can be a static argument of `jax.jit` or a cache key.
    `config` is a read-only mapping (`dict(arch.config)`, ``**arch.config``).
    """

    name: str
    config: Mapping[str, Any]
    weight_space: WeightSpace = dataclasses.field(compare=False)
    module: nn.Module = dataclasses.field(compare=False)
    input_shape: tuple[int, ...] = dataclasses.field(compare=False)
    num_classes: int = dataclasses.field(compare=False)

    def __post_init__(self):
        object.__setattr__(self, "config", FrozenMap(self.config))
        object.__setattr__(self, "input_shape", tuple(self.input_shape))

    def init(self, key: jax.Array) -> dict:
        # One compiled program per architecture: Flax's init run eagerly dispatches (and
        # compiles) every layer's ops one by one, which takes seconds for a ResNet.
        return _compiled_init(self)(key)

    def init_population(self, key: jax.Array, num: int) -> dict:
        """`num` independently initialised models stacked on a leading model axis."""
        return jax.vmap(self.init)(jax.random.split(key, num))

    def apply(self, params, x, dropout_rate=0.0, key=None) -> jax.Array:
        return self.module.apply({"params": params}, x, dropout_rate, key)

    @property
    def num_params(self) -> int:
        return self.weight_space.num_params


@functools.lru_cache(maxsize=128)
def _compiled_init(arch: Architecture) -> Callable[[jax.Array], dict]:
    # A numpy input, not jnp: a first call inside a jit trace must not cache a tracer here.
    dummy = np.zeros((1,) + arch.input_shape, np.float32)
    return jax.jit(lambda key: arch.module.init(key, dummy)["params"])


_REGISTRY: dict[str, Callable[..., tuple[nn.Module, dict, dict, dict]]] = {}
_DESCRIPTIONS: dict[str, str] = {}
_CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {}


def register(name: str, description: str, check: Callable[[dict[str, Any]], None] | None = None):
    """Register a builder
    `f(input_shape, num_classes, **config) -> (module, axes, nonlin, blocks)`.

    `check(config)` validates (and may normalise, in place) the builder's full config after the
    checks every architecture shares (`input_shape`, `num_classes`, `activation`).
    """
    def wrap(builder):
        _REGISTRY[name] = builder
        _DESCRIPTIONS[name] = description
        if check is not None:
            _CHECKS[name] = check
        return builder
    return wrap


# ------------------------------------------------------------------------------ config checks
def _show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 5]}...{text[-2:]}"


def _bad(key: str, value: Any, expected: str) -> ArchitectureError:
    return ArchitectureError(f"{key}={_show(value)}: expected {expected}")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _int(config: dict, key: str, low: int = 1) -> int:
    """config[key] as an int ≥ low (stored back as a plain int)."""
    value = config[key]
    if not _is_int(value) or value < low:
        raise _bad(key, value, f"an integer ≥ {low}")
    config[key] = int(value)
    return config[key]


def _ints(config: dict, key: str, what: str, low: int = 1, ranks: Sequence[int] = ()) -> tuple:
    """config[key] as a tuple of ints ≥ low, of one of the lengths `ranks` (any when empty)."""
    value = config[key]
    expected = f"a sequence of integers ≥ {low} ({what})"
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (Sequence, np.ndarray)):
        raise _bad(key, value, expected)
    items = tuple(value)
    if not all(_is_int(v) and v >= low for v in items):
        raise _bad(key, value, expected)
    if ranks and len(items) not in ranks:
        raise _bad(key, value, f"{' or '.join(map(str, ranks))} numbers ({what})")
    config[key] = tuple(int(v) for v in items)
    return config[key]


def _choice(config: dict, key: str, choices: Sequence[str]) -> str:
    value = config[key]
    if not isinstance(value, str) or value not in choices:
        raise _bad(key, value, f"one of {sorted(choices)}")
    return value


_IMAGE = "(height, width, channels)"


def _check_common(config: dict) -> None:
    """The keys every architecture shares (when its builder takes them)."""
    if "input_shape" in config:
        _ints(config, "input_shape", "the shape of one input")
        if not config["input_shape"]:
            raise _bad("input_shape", config["input_shape"], "at least one dimension")
    if "num_classes" in config:
        _int(config, "num_classes", 2)
    if "activation" in config:
        _choice(config, "activation", list(ACTIVATIONS))


def check_config(name: str, **config) -> dict[str, Any]:
    """The full config (defaults filled in, values normalised) architecture `name` would be built
    with; an unknown key or a value that cannot work raises `ArchitectureError` naming both,
    before anything is built."""
    builder = _get_builder(name)
    try:
        full = dict(FrozenMap(builder_config(builder, config, what=f"architecture {name!r}")))
    except ArchitectureError:
        raise
    except WslError as err:  # unknown or missing keys
        raise ArchitectureError(str(err)) from err
    try:
        _check_common(full)
        if name in _CHECKS:
            _CHECKS[name](full)
    except ArchitectureError as err:
        raise ArchitectureError(f"architecture {name!r}: {err}") from err
    return full


def default_config(name: str) -> dict[str, Any]:
    """Every config key of architecture `name` with its default."""
    return builder_defaults(_get_builder(name))


def _get_builder(name: str):
    if name not in _REGISTRY:
        raise ArchitectureError(f"unknown architecture {name!r}; registered: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def build(name: str, **config) -> Architecture:
    """Build a registered architecture; unknown config keys raise an error listing the valid
    ones."""
    builder = _get_builder(name)
    # Frozen values (lists as tuples) keep the flax module hashable like the architecture.
    full = check_config(name, **config)
    full["input_shape"] = tuple(int(d) for d in full["input_shape"])
    module, axes, nonlinearity, blocks = builder(**full)
    dummy = jnp.zeros((1,) + full["input_shape"], jnp.float32)
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), dummy))["params"]
    space = WeightSpace.from_params(shapes, axes, nonlinearity, blocks)
    return Architecture(name, full, space, module, full["input_shape"], int(full["num_classes"]))


# Groups whose units are max-pooled before their activation: a sign flip of such a unit does not
# commute with the max (max(-z) = -min(z)), so it is not a symmetry there; positive rescaling is.
_POOLED_BEFORE_ACTIVATION = {"cnn_s": ("conv_0", "conv_1")}


def pooled_before_activation(arch: Architecture) -> tuple[str, ...]:
    """The groups of `arch` max-pooled before their nonlinearity (the weight space does not
    record pooling)."""
    return _POOLED_BEFORE_ACTIVATION.get(arch.name, ())


# Config keys that set hidden widths, and how a width cap narrows them.
_WIDTH_KEYS = {"widths": lambda v, w: tuple(min(int(x), w) for x in v),
               "channels": lambda v, w: min(int(v), w)}


def narrowed(arch: Architecture, width: int) -> Architecture | None:
    """The architecture whose every hidden group has its first `width` units: what a model of a
    phase zoo (`WeightSpace.width_mask`) really is, so it can be run without its zero padding.

    Built from the config's width keys and accepted only if its tensors are exactly the stored
    ones cut to `width` units on every permuted axis; None where no such config exists (then
    the padded architecture with a mask is the way)."""
    keys = [k for k in _WIDTH_KEYS if k in arch.config]
    if not keys:
        return None
    config = {**arch.config, **{k: _WIDTH_KEYS[k](arch.config[k], int(width)) for k in keys}}
    try:
        narrow = build(arch.name, **config)
    except ArchitectureError:
        return None
    expect = [tuple(min(n, int(width)) if g is not None else n for g, n in zip(t.axes, t.shape))
              for t in arch.weight_space.tensors]
    same = ([t.path for t in narrow.weight_space.tensors] == list(arch.weight_space.paths)
            and [t.shape for t in narrow.weight_space.tensors] == expect)
    return narrow if same else None


def list_architectures() -> list[dict[str, Any]]:
    """Every registered architecture with its description, default config and parameter count."""
    return [{"name": name, "description": _DESCRIPTIONS[name], "config": default_config(name),
             "num_params": build(name).num_params} for name in _REGISTRY]


# ---------------------------------------------------------------------------------------- MLP
class _MLP(nn.Module):
    widths: Sequence[int]
    num_classes: int
    activation: str

    @nn.compact
    def __call__(self, x, dropout_rate=0.0, key=None):
        act = activation_fn(self.activation)
        x = x.reshape(x.shape[0], -1)
        for i, width in enumerate(self.widths):
            x = dropout(act(nn.Dense(width, name=f"dense_{i}")(x)), dropout_rate, key, i)
        return nn.Dense(self.num_classes, name=f"dense_{len(self.widths)}")(x)


def _check_mlp(config: dict) -> None:
    _ints(config, "widths", "hidden layer widths; () for a linear model")


@register("mlp", "multilayer perceptron on flattened inputs", _check_mlp)
def _build_mlp(input_shape=(40,), num_classes=10, widths=(32, 32), activation="relu"):
    widths = tuple(int(w) for w in widths)
    groups = [f"dense_{i}" for i in range(len(widths))] + [None]
    axes, previous = {}, None
    for i, group in enumerate(groups):
        axes[f"dense_{i}/kernel"] = (previous, group)
        axes[f"dense_{i}/bias"] = (group,)
        previous = group
    module = _MLP(widths, num_classes, activation)
    return module, axes, {g: activation for g in groups if g}, {}


# ----------------------------------------------------------------------------------- SmallCNN
class _SmallCNN(nn.Module):
    channels: int
    num_layers: int
    num_classes: int
    activation: str

    @nn.compact
    def __call__(self, x, dropout_rate=0.0, key=None):
        act = activation_fn(self.activation)
        for i in range(self.num_layers):
            x = nn.Conv(self.channels, (3, 3), strides=(2, 2), padding="SAME", name=f"conv_{i}")(x)
            x = dropout(act(x), dropout_rate, key, i)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="dense_0")(x)


def _check_small_cnn(config: dict) -> None:
    _ints(config, "input_shape", f"an image {_IMAGE}", ranks=(3,))
    _int(config, "channels")
    _int(config, "num_layers")


@register("small_cnn", "Small CNN Zoo network: 3 × conv 3×3 stride 2, global average pool, dense",
          _check_small_cnn)
def _build_small_cnn(input_shape=(28, 28, 1), num_classes=10, channels=16, num_layers=3,
                     activation="relu"):
    axes, previous = {}, None
    for i in range(num_layers):
        axes[f"conv_{i}/kernel"] = (None, None, previous, f"conv_{i}")
        axes[f"conv_{i}/bias"] = (f"conv_{i}",)
        previous = f"conv_{i}"
    axes["dense_0/kernel"] = (previous, None)
    axes["dense_0/bias"] = (None,)
    module = _SmallCNN(channels, num_layers, num_classes, activation)
    return module, axes, {f"conv_{i}": activation for i in range(num_layers)}, {}


# -------------------------------------------------------------------------------------- CNN-s
class _CNNs(nn.Module):
    num_classes: int
    activation: str

    @nn.compact
    def __call__(self, x, dropout_rate=0.0, key=None):
        act = activation_fn(self.activation)
        pool = lambda y: nn.max_pool(y, (2, 2), strides=(2, 2))
        x = dropout(act(pool(nn.Conv(8, (5, 5), padding="VALID", name="conv_0")(x))),
                    dropout_rate, key, 0)
        x = dropout(act(pool(nn.Conv(6, (5, 5), padding="VALID", name="conv_1")(x))),
                    dropout_rate, key, 1)
        x = dropout(act(nn.Conv(4, (2, 2), padding="VALID", name="conv_2")(x)),
                    dropout_rate, key, 2)
        # The first dense kernel keeps the (H, W, C) layout of its input so that the conv_2
        # channel permutation acts on one of its axes; PyTorch's (20, 36) view is an export detail.
        x = nn.DenseGeneral(20, axis=(-3, -2, -1), name="dense_0")(x)
        x = dropout(act(x), dropout_rate, key, 3)
        return nn.Dense(self.num_classes, name="dense_1")(x)


def _check_cnn_s(config: dict) -> None:
    height, width, _ = _ints(config, "input_shape", f"an image {_IMAGE}", ranks=(3,))
    # conv 5 → pool 2 → conv 5 → pool 2 → conv 2, all unpadded: 20 pixels shrink to 1.
    if min(height, width) < 20:
        raise _bad("input_shape", config["input_shape"],
                   "images of at least 20×20 (CNN-s's unpadded convolutions and poolings shrink "
                   "20 pixels to 1)")


@register("cnn_s", "Model Zoos CNN-s: conv 8-6-4 with max-pooling, dense 20, dense 10",
          _check_cnn_s)
def _build_cnn_s(input_shape=(28, 28, 1), num_classes=10, activation="tanh"):
    axes = {
        "conv_0/kernel": (None, None, None, "conv_0"), "conv_0/bias": ("conv_0",),
        "conv_1/kernel": (None, None, "conv_0", "conv_1"), "conv_1/bias": ("conv_1",),
        "conv_2/kernel": (None, None, "conv_1", "conv_2"), "conv_2/bias": ("conv_2",),
        "dense_0/kernel": (None, None, "conv_2", "dense_0"), "dense_0/bias": ("dense_0",),
        "dense_1/kernel": ("dense_0", None), "dense_1/bias": (None,),
    }
    nonlinearity = {g: activation for g in ("conv_0", "conv_1", "conv_2", "dense_0")}
    return _CNNs(num_classes, activation), axes, nonlinearity, {}


# ---------------------------------------------------------------------------------- tiny ResNet
def _norm(kind: str, groups: int, name: str) -> nn.Module:
    if kind == "layer":
        return nn.LayerNorm(name=name)  # over channels at each position: permutation invariant
    if kind == "group":
        return nn.GroupNorm(num_groups=groups, name=name)
    raise ArchitectureError(f"unknown norm {kind!r}; choose 'layer' or 'group'")


class _ResNet(nn.Module):
    widths: Sequence[int]
    blocks_per_stage: int
    num_classes: int
    activation: str
    norm: str
    norm_groups: int

    @nn.compact
    def __call__(self, x, dropout_rate=0.0, key=None):
        act = activation_fn(self.activation)
        norm = lambda name: _norm(self.norm, self.norm_groups, name)
        x = nn.Conv(self.widths[0], (3, 3), padding="SAME", name="stem")(x)
        site = 0
        for s, width in enumerate(self.widths):
            if s > 0:  # a strided 1×1 projection starts the next residual stream
                x = nn.Conv(width, (1, 1), strides=(2, 2), name=f"stage{s}_proj")(act(x))
            for b in range(self.blocks_per_stage):
                prefix = f"stage{s}_block{b}"
                h = nn.Conv(width, (3, 3), padding="SAME", name=f"{prefix}_conv_0")(
                    act(norm(f"{prefix}_norm_0")(x)))
                h = dropout(act(norm(f"{prefix}_norm_1")(h)), dropout_rate, key, site)
                site += 1
                x = x + nn.Conv(width, (3, 3), padding="SAME", name=f"{prefix}_conv_1")(h)
        x = act(norm("final_norm")(x))
        return nn.Dense(self.num_classes, name="head")(jnp.mean(x, axis=(1, 2)))


def _check_resnet(config: dict) -> None:
    _ints(config, "input_shape", f"an image {_IMAGE}", ranks=(3,))
    width = _int(config, "width")
    _int(config, "stages")
    _int(config, "blocks_per_stage")
    norm = _choice(config, "norm", ("layer", "group"))
    groups = _int(config, "norm_groups")
    if norm == "group" and width % groups:
        raise _bad("norm_groups", groups, f"a divisor of width={width} (GroupNorm splits every "
                                          f"stage's channels into norm_groups blocks)")


@register("resnet",
          "tiny pre-activation ResNet, LayerNorm or GroupNorm, one permutation per stream",
          _check_resnet)
def _build_resnet(input_shape=(28, 28, 1), num_classes=10, width=8, stages=2, blocks_per_stage=1,
                  activation="relu", norm="layer", norm_groups=2):
    widths = tuple(int(width) * 2 ** s for s in range(stages))
    axes: dict[str, tuple] = {}
    conv = lambda name, cin, cout: axes.update(
        {f"{name}/kernel": (None, None, cin, cout), f"{name}/bias": (cout,)})
    affine = lambda name, group: axes.update({f"{name}/scale": (group,), f"{name}/bias": (group,)})
    conv("stem", None, "stream_0")
    hidden = []
    for s in range(stages):
        stream = f"stream_{s}"
        if s > 0:
            conv(f"stage{s}_proj", f"stream_{s - 1}", stream)
        for b in range(blocks_per_stage):
            prefix = f"stage{s}_block{b}"
            affine(f"{prefix}_norm_0", stream)
            conv(f"{prefix}_conv_0", stream, prefix)
            affine(f"{prefix}_norm_1", prefix)
            conv(f"{prefix}_conv_1", prefix, stream)
            hidden.append(prefix)
    affine("final_norm", f"stream_{stages - 1}")
    axes["head/kernel"] = (f"stream_{stages - 1}", None)
    axes["head/bias"] = (None,)
    groups = [f"stream_{s}" for s in range(stages)] + hidden
    blocks = {g: norm_groups for g in groups} if norm == "group" else {}
    module = _ResNet(widths, blocks_per_stage, num_classes, activation, norm, norm_groups)
    return module, axes, {g: activation for g in groups}, blocks


# ----------------------------------------------------------------------------- tiny transformer
def patchify(x: jax.Array, patch: int) -> jax.Array:
    """Images (B, H, W, C) → (B, tokens, patch²·C); signals (B, L[, C]) → (B, L/patch, patch·C)."""
    if x.ndim == 4:
        b, h, w, c = x.shape
        if h % patch or w % patch:
            raise ArchitectureError(f"image {h}×{w} is not divisible into {patch}×{patch} patches")
        x = x.reshape(b, h // patch, patch, w // patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
        return x.reshape(b, (h // patch) * (w // patch), patch * patch * c)
    if x.ndim == 2:
        x = x[..., None]
    b, length, c = x.shape
    if length % patch:
        raise ArchitectureError(f"signal of length {length} is not divisible into patches "
                                f"of {patch}")
    return x.reshape(b, length // patch, patch * c)


class _Transformer(nn.Module):
    dim: int
    depth: int
    heads: int
    head_dim: int
    mlp_dim: int
    patch: int
    num_classes: int
    activation: str

    @nn.compact
    def __call__(self, x, dropout_rate=0.0, key=None):
        act = activation_fn(self.activation)
        tokens = nn.Dense(self.dim, name="embed")(patchify(x, self.patch))
        pos = self.param("pos_embedding", nn.initializers.normal(0.02), tokens.shape[1:])
        x = tokens + pos
        for i in range(self.depth):
            h = nn.LayerNorm(name=f"block{i}_norm_0")(x)
            x = x + nn.MultiHeadDotProductAttention(
                num_heads=self.heads, qkv_features=self.heads * self.head_dim,
                out_features=self.dim, name=f"block{i}_attention")(h, h)
            h = nn.LayerNorm(name=f"block{i}_norm_1")(x)
            h = dropout(act(nn.Dense(self.mlp_dim, name=f"block{i}_mlp_in")(h)),
                        dropout_rate, key, i)
            x = x + nn.Dense(self.dim, name=f"block{i}_mlp_out")(h)
        x = nn.LayerNorm(name="final_norm")(x).mean(axis=1)
        return nn.Dense(self.num_classes, name="head")(x)


def _check_transformer(config: dict) -> None:
    shape = _ints(config, "input_shape", "a signal (length,) or (length, channels), or an image "
                                         f"{_IMAGE}", ranks=(1, 2, 3))
    for key in ("dim", "depth", "heads", "head_dim", "mlp_dim"):
        _int(config, key)
    patch = _int(config, "patch")
    sides = shape[:2] if len(shape) == 3 else shape[:1]
    if any(side % patch for side in sides):
        what = "height and width" if len(shape) == 3 else "length"
        raise _bad("patch", patch, f"a divisor of the input's {what} {'×'.join(map(str, sides))} "
                                   f"(the input is cut into patches)")


@register("transformer", "tiny transformer classifier on patches; heads and head dims permute",
          _check_transformer)
def _build_transformer(input_shape=(40,), num_classes=10, dim=16, depth=1, heads=2, head_dim=8,
                       mlp_dim=32, patch=4, activation="gelu"):
    axes: dict[str, tuple] = {
        "embed/kernel": (None, "stream"), "embed/bias": ("stream",),
        "pos_embedding": (None, "stream"),
    }
    nonlinearity = {}
    for i in range(depth):
        heads_g, qk, vo, mlp = f"block{i}_heads", f"block{i}_qk", f"block{i}_vo", f"block{i}_mlp"
        attn = f"block{i}_attention"
        for norm in (f"block{i}_norm_0", f"block{i}_norm_1"):
            axes.update({f"{norm}/scale": ("stream",), f"{norm}/bias": ("stream",)})
        for proj, within in (("query", qk), ("key", qk), ("value", vo)):
            axes[f"{attn}/{proj}/kernel"] = ("stream", heads_g, within)
            axes[f"{attn}/{proj}/bias"] = (heads_g, within)
        axes[f"{attn}/out/kernel"] = (heads_g, vo, "stream")
        axes[f"{attn}/out/bias"] = ("stream",)
        axes[f"block{i}_mlp_in/kernel"] = ("stream", mlp)
        axes[f"block{i}_mlp_in/bias"] = (mlp,)
        axes[f"block{i}_mlp_out/kernel"] = (mlp, "stream")
        axes[f"block{i}_mlp_out/bias"] = ("stream",)
        nonlinearity[mlp] = activation
    axes.update({"final_norm/scale": ("stream",), "final_norm/bias": ("stream",),
                 "head/kernel": ("stream", None), "head/bias": (None,)})
    module = _Transformer(dim, depth, heads, head_dim, mlp_dim, patch, num_classes, activation)
    return module, axes, nonlinearity, {}

