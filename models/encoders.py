"""Registry of weight-space encoders, and what they all share: MLP head, normaliser, input check.

`build_encoder(name, weight_space, **config)` returns a Flax module. Every encoder is called the
same way, on a params pytree with a leading batch axis (a population slice)::

    encoder = build_encoder("nfn_hnp", arch.weight_space, out_dim=1)
    variables = encoder.init(key, params)                 # params: (B, ...) per tensor
    y = encoder.apply(variables, params)                  # (B, out_dim)
    y = encoder.apply(variables, params, train=True, rngs={"dropout": key})

Encoder modules are imported only when built, so that importing this registry is cheap and the
encoder modules can import the shared pieces below. Every encoder's config is checked when it is
built (`check_encoder_config`, then the encoder's own structural `check`): a bad value raises a
`ModelError` naming the encoder, the option and the value; a weight space the encoder cannot read
raises a one-line error saying which structure it does not support (a `ChainError` from the
chain-only NFNs, a `NeuralGraphError` from the neural-graph encoders).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from wsl.config import builder_config, builder_defaults
from wsl.errors import WslError
from wsl.models.errors import ModelError
from wsl.models.normalize import TensorNormalizer
from wsl.weight_space import WeightSpace, WeightSpaceError
from wsl.zoos.architectures import ACTIVATIONS


class MLP(nn.Module):
    """Dense layers with an activation (and optional dropout) between them; the last is linear."""

    widths: Sequence[int]
    out_dim: int
    activation: str = "relu"
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_encoder_config(self, {"widths": self.widths, "out_dim": self.out_dim,
                                    "activation": self.activation, "dropout": self.dropout})
        act = ACTIVATIONS[self.activation]
        for width in self.widths:
            x = act(nn.Dense(int(width))(x))
            if self.dropout > 0:
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.out_dim)(x)


def prepare(weight_space: WeightSpace, params, normalizer: TensorNormalizer | None) -> dict:
    """Check a batch of params against the weight space and normalise it (every encoder's first
    step)."""
    lead = weight_space.batch_shape(params)
    if len(lead) != 1:
        raise WeightSpaceError(f"encoders take params with exactly one leading batch axis; got "
                               f"leading axes {lead}")
    params = weight_space.map_tensors(lambda t, x: jnp.asarray(x, jnp.float32), params)
    return normalizer(weight_space, params) if normalizer is not None else params


# ------------------------------------------------------------------------------ config checks
def _show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 5]}...{text[-2:]}"


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float, np.integer, np.floating))
            and not isinstance(value, (bool, np.bool_)) and math.isfinite(value))


def _positive_int(value: Any) -> bool:
    return _is_int(value) and value >= 1


def _positive_ints(value: Any) -> bool:
    return (isinstance(value, (Sequence, np.ndarray)) and not isinstance(value, (str, bytes))
            and all(_positive_int(v) for v in value))


def _numbers(value: Any) -> bool:
    return value is None or (isinstance(value, (Sequence, np.ndarray))
                             and not isinstance(value, (str, bytes))
                             and all(_is_number(v) for v in value))


# Invariant readouts of an equivariant feature map: "mean" over its permuted axes (NFN, UNF), or
# "moments", the mean and the standard deviation (a spread is what StatNN's statistics see, and
# a mean alone cannot: two layers whose units differ only in spread pool alike).
POOLS = ("mean", "moments")

# option name -> (test, what a valid value is); an encoder is checked on the options it has.
_RULES: dict[str, tuple[Any, str]] = {
    "out_dim": (_positive_int, "an integer ≥ 1"),
    "widths": (_positive_ints, "a sequence of integers ≥ 1 (layer widths)"),
    "head_widths": (_positive_ints, "a sequence of integers ≥ 1 (head layer widths; () for "
                                    "a linear head)"),
    "channels": (_positive_ints, "a sequence of integers ≥ 1 (channels of each equivariant "
                                 "layer)"),
    "dropout": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "activation": (lambda v: isinstance(v, str) and v in ACTIVATIONS,
                   f"one of {sorted(ACTIVATIONS)}"),
    "dim": (_positive_int, "an integer ≥ 1"),
    "num_layers": (_positive_int, "an integer ≥ 1"),
    "heads": (_positive_int, "an integer ≥ 1"),
    "num_probes": (_positive_int, "an integer ≥ 1"),
    "projection_dim": (_positive_int, "an integer ≥ 1"),
    "representation_dim": (_positive_int, "an integer ≥ 1"),
    "transpose": (lambda v: isinstance(v, (bool, np.bool_)), "true or false"),
    "statistics": (lambda v: isinstance(v, (bool, np.bool_)), "true or false"),
    "pool": (lambda v: v in POOLS, f"one of {list(POOLS)}"),
    "layer": (lambda v: v is None or isinstance(v, str), "a layer name or none"),
    "feature_mean": (_numbers, "finite numbers (one per feature) or none"),
    "feature_std": (lambda v: _numbers(v) and (v is None or all(s > 0 for s in v)),
                    "positive finite numbers (one per feature) or none"),
    "normalizer": (lambda v: v is None or isinstance(v, TensorNormalizer),
                   "a TensorNormalizer (or its to_dict()) or none"),
}


def check_encoder_config(encoder: nn.Module, options: Mapping[str, Any] | None = None) -> None:
    """Check an encoder's options (by default every field it has that `_RULES` knows): a value
    that cannot work raises a `ModelError` naming the option and the value."""
    if options is None:
        weight_space = getattr(encoder, "weight_space", None)
        if not isinstance(weight_space, WeightSpace):
            raise ModelError(f"weight_space={_show(weight_space)}: expected a WeightSpace")
        options = {k: getattr(encoder, k) for k in _RULES if hasattr(encoder, k)}
    for key, value in options.items():
        test, expected = _RULES[key]
        if not test(value):
            raise ModelError(f"{key}={_show(value)}: expected {expected}")
    normalizer = options.get("normalizer")
    if normalizer is not None:
        normalizer._check(encoder.weight_space)


def _wrap(name: str, err: WslError) -> WslError:
    """`err` as one line naming the encoder (a `ChainError` also says what the encoder reads)."""
    from wsl.models.neural_graph import ChainError

    if isinstance(err, ChainError):
        return ChainError(f"{name} supports chain weight spaces only (mlp, small_cnn, cnn_s): "
                          f"{err}")
    return type(err)(f"encoder {name!r}: {err}")


# ------------------------------------------------------------------------------------ registry
# name -> (module path, class name, fixed config, description)
_ENCODERS: dict[str, tuple[str, str, dict[str, Any], str]] = {
    "flat_mlp": ("wsl.models.statnn", "FlatMLP", {},
                 "MLP on the flattened weight vector (not invariant)"),
    "statnn": ("wsl.models.statnn", "StatNN", {},
               "7 statistics per tensor (mean, var, quantiles 0/25/50/75/100) → MLP"),
    "nfn_np": ("wsl.models.nfn", "NFN", {"mode": "np"},
               "NFN with every neuron permutable, inputs and outputs included (Zhou et al. 2023)"),
    "nfn_hnp": ("wsl.models.nfn", "NFN", {"mode": "hnp"},
                "NFN with only hidden neurons permutable (Zhou et al. 2023)"),
    "ng_gnn": ("wsl.models.graph_encoders", "NeuralGraphGNN", {},
               "PNA message passing on the neural graph (Kofinas et al. 2024)"),
    "ng_transformer": ("wsl.models.graph_encoders", "NeuralGraphTransformer", {},
                       "relational transformer on the neural graph, attention along edges"),
    "probex": ("wsl.models.probex", "ProbeX", {},
               "learned probes through one layer (Horwitz et al. 2025)"),
    "unf": ("wsl.models.unf", "UNF", {},
            "universal neural functional: equivariant layers for any weight space (Zhou et al. "
            "2023)"),
}


def encoder_names() -> list[str]:
    return list(_ENCODERS)


def _encoder_class(name: str) -> type[nn.Module]:
    if name not in _ENCODERS:
        raise ModelError(f"unknown encoder {name!r}; registered: {encoder_names()}")
    module, cls, _, _ = _ENCODERS[name]
    return getattr(importlib.import_module(module), cls)


def _fixed(name: str) -> tuple[str, ...]:
    # Module fields no config sets: the weight space, flax's own, and those the name fixes.
    return ("weight_space", "parent", "name", *_ENCODERS[name][2])


def default_config(name: str) -> dict[str, Any]:
    """The configurable fields of an encoder and their defaults (`weight_space` excluded)."""
    return builder_defaults(_encoder_class(name), exclude=_fixed(name))


def build_encoder(name: str, weight_space: WeightSpace, **config) -> nn.Module:
    """Build a registered encoder for `weight_space`; unknown config keys raise, listing the valid
    ones."""
    cls = _encoder_class(name)
    builder_config(cls, config, what=f"encoder {name!r}", exclude=_fixed(name))  # checks keys
    try:
        normalizer = config.get("normalizer")
        if isinstance(normalizer, Mapping):
            config["normalizer"] = TensorNormalizer.from_dict(normalizer)
        # Sequences become tuples so that the module stays hashable and its config comparable.
        config = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
        encoder = cls(weight_space=weight_space, **_ENCODERS[name][2], **config)
        check_encoder_config(encoder)
        check = getattr(encoder, "check", None)
        if check is not None:
            check()  # structural errors now, not as a traceback from inside init
    except WslError as err:
        raise _wrap(name, err) from err
    return encoder


def check_encoder_options(name: str, config: Mapping[str, Any]) -> None:
    """Check an encoder's name and config without a weight space (e.g. when a probe config is
    created): unknown keys and values `build_encoder` would refuse raise now, naming the encoder,
    the option and the value. Structural checks against a weight space wait for `build_encoder`."""
    cls = _encoder_class(name)
    builder_config(cls, config, what=f"encoder {name!r}", exclude=_fixed(name))
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()
               if k in _RULES and k != "normalizer"}
    try:
        check_encoder_config(cls, options)
    except WslError as err:
        raise _wrap(name, err) from err


def list_encoders() -> list[dict[str, Any]]:
    """Every registered encoder with its description and default config."""
    return [{"name": name, "description": _ENCODERS[name][3], "config": default_config(name)}
            for name in _ENCODERS]
