"""Registry of weight-space encoders, and what they all share: MLP head, normaliser, input check.

`build_encoder(name, weight_space, **config)` returns a Flax module. Every encoder is called the
same way, on a params pytree with a leading batch axis (a population slice)::

    encoder = build_encoder("nfn_hnp", arch.weight_space, out_dim=1)
    variables = encoder.init(key, params)                 # params: (B, ...) per tensor
    y = encoder.apply(variables, params)                  # (B, out_dim)
    y = encoder.apply(variables, params, train=True, rngs={"dropout": key})

Encoder modules are imported only when built, so that importing this registry is cheap and the
encoder modules can import the shared pieces below.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from wsl.config import builder_config, builder_defaults
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
        if self.activation not in ACTIVATIONS:
            raise ModelError(f"unknown activation {self.activation!r}; "
                             f"choose from {sorted(ACTIVATIONS)}")
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
    normalizer = config.get("normalizer")
    if isinstance(normalizer, Mapping):
        config["normalizer"] = TensorNormalizer.from_dict(normalizer)
    # Sequences become tuples so that the module stays hashable and its config comparable.
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
    encoder = cls(weight_space=weight_space, **_ENCODERS[name][2], **config)
    check = getattr(encoder, "check", None)
    if check is not None:
        check()  # structural errors now, not as a traceback from inside init
    return encoder


def list_encoders() -> list[dict[str, Any]]:
    """Every registered encoder with its description and default config."""
    return [{"name": name, "description": _ENCODERS[name][3], "config": default_config(name)}
            for name in _ENCODERS]
