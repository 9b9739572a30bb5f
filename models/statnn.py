"""Statistics-based and flat baselines: StatNN, gradient-boosted trees on its features, flat MLP.

StatNN (Unterthiner et al. 2020) summarises every tensor by 7 numbers — mean, variance and the
0/25/50/75/100 % quantiles — in WeightSpace order, and feeds them to an MLP. The same features feed
scikit-learn's histogram gradient-boosted trees, the classical baseline. Per-tensor statistics
are invariant to every permutation of hidden units; the flat MLP, reading the raw vector, is not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from wsl.models.encoders import MLP, check_encoder_config, prepare
from wsl.models.errors import ModelError
from wsl.models.normalize import TensorNormalizer
from wsl.weight_space import WeightSpace

STATISTICS = ("mean", "var", "q0", "q25", "q50", "q75", "q100")
_QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)


def stat_features(weight_space: WeightSpace, params) -> jax.Array:
    """(*models, 7 · tensors): mean, variance and 5 quantiles of every tensor, in WeightSpace order.

    Quantiles interpolate linearly between order statistics, as numpy's default does; tensor
    sizes are static, so after one sort per tensor they are fixed-index gathers.
    """
    lead = weight_space.batch_shape(params)
    flat = weight_space.as_flat_dict(params)
    out = []
    for t in weight_space.tensors:
        x = jnp.reshape(jnp.asarray(flat[t.path], jnp.float32), lead + (t.size,))
        ordered = jnp.sort(x, axis=-1)
        position = np.asarray(_QUANTILES) * (t.size - 1)
        low = np.floor(position).astype(np.int32)
        high = np.minimum(low + 1, t.size - 1)
        frac = jnp.asarray(position - low, jnp.float32)
        quantiles = ordered[..., low] * (1 - frac) + ordered[..., high] * frac
        out.append(jnp.concatenate([x.mean(-1, keepdims=True), x.var(-1, keepdims=True),
                                    quantiles], axis=-1))
    return jnp.concatenate(out, axis=-1)


def check_feature_scaling(encoder) -> None:
    """An encoder's ``feature_mean`` / ``feature_std`` have one entry per statistics feature."""
    width = len(STATISTICS) * len(encoder.weight_space.tensors)
    for name in ("feature_mean", "feature_std"):
        value = getattr(encoder, name)
        if value is not None and len(value) != width:
            raise ModelError(f"{type(encoder).__name__} {name} has {len(value)} entries; the "
                             f"weight space has {width} features ({len(STATISTICS)} per tensor)")


def check_statistics(encoder) -> None:
    """The `statistics` option of an equivariant encoder (NFN, UNF, neural graphs), which feeds
    these statistics to its invariant head beside its own pooled features: scaling only with
    statistics, of their width, and only for an invariant output."""
    given = [n for n in ("feature_mean", "feature_std") if getattr(encoder, n) is not None]
    if given and not encoder.statistics:
        raise ModelError(f"{given[0]} scales the statistics features; set statistics=true to "
                         f"read them")
    output = getattr(encoder, "output", "invariant")
    if encoder.statistics and output != "invariant":
        raise ModelError(f"statistics=true feeds the invariant head; output={output!r} has none")
    check_feature_scaling(encoder)


def scaled_stat_features(encoder, params) -> jax.Array:
    """`stat_features` of (prepared) params, minus the encoder's ``feature_mean`` and divided by
    its ``feature_std`` where given."""
    x = stat_features(encoder.weight_space, params)
    if encoder.feature_mean is not None:
        x = x - jnp.asarray(encoder.feature_mean, jnp.float32)
    if encoder.feature_std is not None:
        x = x / jnp.asarray(encoder.feature_std, jnp.float32)
    return x


def stat_feature_names(weight_space: WeightSpace) -> list[str]:
    """Names of the `stat_features` columns, ``"dense_0/kernel:q25"`` and so on."""
    return [f"{path}:{stat}" for path in weight_space.paths for stat in STATISTICS]


def fit_feature_scaling(features) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-column mean and std of training features, for `StatNN(feature_mean=, feature_std=)`."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2:
        raise ModelError(f"features must be (models, columns); got shape {features.shape}")
    std = features.std(0)
    std = np.where(std > 1e-12, std, 1.0)  # constant columns (e.g. all-zero biases) pass through
    return tuple(features.mean(0).tolist()), tuple(std.tolist())


def statistics_scaling(weight_space: WeightSpace, params,
                       normalizer: TensorNormalizer | None) -> dict[str, tuple[float, ...]]:
    """``feature_mean`` / ``feature_std`` fitted on `params` (a training split) as the encoder
    will see them (normalised by `normalizer`): the config that standardises StatNN's statistics,
    or those an NFN / UNF / neural graph reads with ``statistics=True``."""
    features = stat_features(weight_space, prepare(weight_space, params, normalizer))
    return dict(zip(("feature_mean", "feature_std"), fit_feature_scaling(np.asarray(features))))


class StatNN(nn.Module):
    """MLP on per-tensor statistics, optionally standardised (see `fit_feature_scaling`)."""

    weight_space: WeightSpace
    out_dim: int = 1
    head_widths: Sequence[int] = (1000, 1000)
    dropout: float = 0.0
    feature_mean: Sequence[float] | None = None
    feature_std: Sequence[float] | None = None
    normalizer: TensorNormalizer | None = None

    def check(self):
        check_encoder_config(self)
        check_feature_scaling(self)

    @nn.compact
    def __call__(self, params, train: bool = False) -> jax.Array:
        self.check()
        x = scaled_stat_features(self, prepare(self.weight_space, params, self.normalizer))
        return MLP(self.head_widths, self.out_dim, dropout=self.dropout)(x, train)


class FlatMLP(nn.Module):
    """MLP on `weight_space.flatten(params)`: the baseline that ignores every symmetry."""

    weight_space: WeightSpace
    out_dim: int = 1
    head_widths: Sequence[int] = (256, 256)
    dropout: float = 0.0
    normalizer: TensorNormalizer | None = None

    def check(self):
        check_encoder_config(self)

    @nn.compact
    def __call__(self, params, train: bool = False) -> jax.Array:
        self.check()
        x = self.weight_space.flatten(prepare(self.weight_space, params, self.normalizer))
        return MLP(self.head_widths, self.out_dim, dropout=self.dropout)(x, train)


class GradientBoostedStats:
    """Histogram gradient-boosted trees (scikit-learn) on StatNN features: the classical baseline.

    `fit(x, y)` and `predict(x)` take either a params population (features are computed here) or a
    ready (models, 7 · tensors) feature array. ``task`` is ``"regression"`` or ``"classification"``;
    other keyword arguments go to scikit-learn's HistGradientBoostingRegressor / Classifier.
    """

    def __init__(self, weight_space: WeightSpace, task: str = "regression", seed: int = 0,
                 chunk: int = 4096, **sklearn_kwargs):
        from sklearn.ensemble import (
            HistGradientBoostingClassifier,
            HistGradientBoostingRegressor,
        )

        models = {"regression": HistGradientBoostingRegressor,
                  "classification": HistGradientBoostingClassifier}
        if task not in models:
            raise ModelError(f"task must be one of {sorted(models)}; got {task!r}")
        self.weight_space, self.task, self.chunk = weight_space, task, int(chunk)
        self.model = models[task](random_state=seed, **sklearn_kwargs)
        self._features = jax.jit(lambda p: stat_features(weight_space, p))

    def features(self, x) -> np.ndarray:
        """StatNN features of a params population (computed in chunks), or `x` itself if an
        array."""
        if not isinstance(x, Mapping):
            x = np.asarray(x, np.float32)
            width = 7 * len(self.weight_space.tensors)
            if x.ndim != 2 or x.shape[1] != width:
                raise ModelError(f"feature array has shape {x.shape}; expected (models, {width})")
            return x
        n = self.weight_space.batch_shape(x)
        if len(n) != 1:
            raise ModelError(f"params must have one leading model axis; got {n}")
        # Chunks are padded to a power of two (at most `chunk`) so that few shapes are compiled.
        size = min(self.chunk, 1 << max(n[0] - 1, 0).bit_length())
        x, parts = jax.tree.map(np.asarray, x), []
        for start in range(0, n[0], size):
            rows = min(size, n[0] - start)
            part = jax.tree.map(lambda a: np.pad(a[start:start + rows], [(0, size - rows)]
                                                 + [(0, 0)] * (a.ndim - 1)), x)
            parts.append(np.asarray(self._features(part))[:rows])
        return np.concatenate(parts, axis=0)

    def fit(self, x, y) -> GradientBoostedStats:
        features, y = self.features(x), np.asarray(y)
        if y.shape[0] != features.shape[0]:
            raise ModelError(f"{features.shape[0]} models but {y.shape[0]} targets")
        self.model.fit(features, y)
        return self

    def predict(self, x) -> np.ndarray:
        return self.model.predict(self.features(x))

    def predict_proba(self, x) -> np.ndarray:
        if self.task != "classification":
            raise ModelError("predict_proba needs task='classification'")
        return self.model.predict_proba(self.features(x))
