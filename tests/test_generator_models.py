"""Flow matching, diffusion and the weight autoencoder learn a known distribution; sampling is
deterministic; a generator config is checked when it is made."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from wsl.config import ConfigError, override
from wsl.models.autoencoder import Autoencoding, WeightAutoencoder
from wsl.models.backbones import MLPBackbone, TokenTransformer, init_backbone, token_layout
from wsl.models.diffusion import Diffusion
from wsl.models.flow import FlowMatching
from wsl.models.normalize import TensorNormalizer
from wsl.models.weight_generator import GeneratorConfig
from wsl.zoos.architectures import build

DIM = 8
MEANS = np.stack([np.full(DIM, 2.0), np.full(DIM, -2.0)]).astype(np.float32)
# Training steps per generator. Worst sample-mean error over 6 seeds (tolerance 0.3 below): flow
# 0.08 at 200 steps (0.21 at 400), DDPM 0.07 at 400 (0.14 at 300).
STEPS = {"flow": 200, "ddpm": 400}
# What `FlowMatching.init` and `Diffusion.init` run, compiled once for all generators around equal
# backbones (static: the backbone and the dimension).
init_params = jax.jit(init_backbone, static_argnums=(0, 2))


def two_clusters(key, n=128):
    k1, k2 = jax.random.split(key)
    c = jax.random.randint(k1, (n,), 0, 2)
    return jnp.asarray(MEANS)[c] + 0.3 * jax.random.normal(k2, (n, DIM)), c


def fit(gen, steps, init_key=0, data_key=1):
    """Adam on fresh two-cluster batches, every step in one compiled program."""
    opt = optax.adam(2e-3)

    def step(carry, i):
        p, s = carry
        k = jax.random.fold_in(jax.random.key(data_key), i)
        x, c = two_clusters(k)
        loss, g = jax.value_and_grad(gen.loss)(p, x, jax.random.fold_in(k, 1), c)
        u, s = opt.update(g, s, p)
        return (optax.apply_updates(p, u), s), loss

    @jax.jit
    def train(params):
        return jax.lax.scan(step, (params, opt.init(params)), jnp.arange(steps))[0][0]

    return train(init_params(gen.backbone, jax.random.key(init_key), gen.dim))


@pytest.mark.parametrize("kind", ["flow", "ddpm"])
def test_conditional_generation_hits_each_cluster(kind):
    backbone = MLPBackbone(DIM, hidden=64, depth=2, num_classes=2)
    gen = (FlowMatching(backbone, DIM) if kind == "flow"
           else Diffusion(backbone, DIM, num_steps=200))
    params = fit(gen, STEPS[kind])
    kwargs = {"steps": 20, "method": "euler"} if kind == "flow" else {"method": "ddpm"}
    # One compiled sampler per call signature (conditional, unconditional), each run repeatedly.
    sample = jax.jit(gen.sample, static_argnums=2, static_argnames=tuple(kwargs))
    for cls in (0, 1):
        x = np.asarray(sample(params, jax.random.key(5), 200, cond_class=np.full((200,), cls),
                              **kwargs))
        assert abs(float(x.mean()) - float(MEANS[cls, 0])) < 0.3, (kind, cls, float(x.mean()))
    a = sample(params, jax.random.key(7), 4, **kwargs)
    b = sample(params, jax.random.key(7), 4, **kwargs)
    c = sample(params, jax.random.key(8), 4, **kwargs)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


class PointMass(nn.Module):
    """What a data-predicting backbone learns from a one-point population: that point."""

    point: tuple

    @nn.compact
    def __call__(self, x, t, cond_class=None, cond_scalar=None):
        scale = self.param("scale", nn.initializers.ones, ())
        return jnp.broadcast_to(scale * jnp.asarray(self.point), x.shape)


@pytest.mark.parametrize("method, steps", [("euler", 7), ("heun", 30), ("rk4", 10), ("rk4", 1)])
def test_flow_sampler_ends_at_t1_on_the_predicted_point(method, steps):
    point = tuple(float(v) for v in np.linspace(-1, 1, DIM))
    gen = FlowMatching(PointMass(point), DIM, source_scale=3.0)
    params = gen.init(jax.random.key(0))
    x = np.asarray(gen.sample(params, jax.random.key(1), 16, steps=steps, method=method))
    # No source noise left: with 1 − t floored at min_gap the last step kept part of it.
    np.testing.assert_allclose(x, np.broadcast_to(point, x.shape), rtol=0, atol=1e-5)


@pytest.mark.parametrize("field", ["condition_scalar", "condition_class"])
def test_conditioning_on_a_test_column_is_refused(field):
    with pytest.raises(ConfigError, match=f"{field}: a test-split column cannot be a condition"):
        GeneratorConfig(**{field: "test_acc"})
    assert getattr(GeneratorConfig(**{field: "val_acc"}), field) == "val_acc"


def test_unknown_sampler_is_named():
    backbone = MLPBackbone(DIM, hidden=64, depth=2, num_classes=2)  # initialised above already
    gen = FlowMatching(backbone, DIM)
    params = init_params(backbone, jax.random.key(0), DIM)
    with pytest.raises(ValueError, match="midpoint"):
        gen.sample(params, jax.random.key(0), 2, method="midpoint")


def test_token_transformer_covers_every_weight_once():
    space = build("small_cnn", input_shape=(8, 8, 1), channels=4).weight_space
    index, tensor_ids, n = token_layout(space, token_dim=16)
    real = index[index < space.num_params]
    assert sorted(real.tolist()) == list(range(space.num_params))
    net = TokenTransformer(space, token_dim=16, dim=16, depth=1, heads=2)
    x, t = np.ones((3, space.num_params), np.float32), np.zeros(3, np.float32)
    # Init and apply in one compiled program.
    out = jax.jit(lambda key: net.apply(net.init(key, x, t), x, t))(jax.random.key(0))
    assert out.shape == (3, space.num_params)


def test_autoencoder_reconstructs_and_normalizer_round_trips():
    space = build("mlp", widths=(4,), input_shape=(3,), num_classes=2).weight_space
    flat = np.random.default_rng(0).normal(size=(64, space.num_params)) * 3 + 1
    norm = TensorNormalizer.fit(space, flat)
    z = norm.normalize(flat)
    np.testing.assert_allclose(norm.denormalize(z), flat, rtol=1e-5, atol=1e-5)
    assert abs(z.mean()) < 0.1 and abs(z.std() - 1) < 0.1
    ae = Autoencoding(WeightAutoencoder(space.num_params, latent_dim=8, hidden=(32,)))
    opt = optax.adam(3e-3)
    data = np.asarray(z, np.float32)

    def step(carry, i):
        p, s = carry
        loss, g = jax.value_and_grad(ae.loss)(p, data, jax.random.key(i))
        u, s = opt.update(g, s, p)
        return (optax.apply_updates(p, u), s), loss

    @jax.jit
    def train(key):  # init and 300 Adam steps in one compiled program; the loss of every step
        params = ae.init(key)
        return jax.lax.scan(step, (params, opt.init(params)), jnp.arange(300))[1]

    losses = np.asarray(train(jax.random.key(0)))
    first, loss = losses[0], losses[-1]
    assert float(loss) < 0.5 * first


def test_generator_config_is_checked_on_creation():
    with pytest.raises(ConfigError, match=r"method: 'bogus' is not one of \('flow', 'ddpm', "
                                          r"'latent-ddpm'\)"):
        override(GeneratorConfig(), ["method=bogus"])
    with pytest.raises(ConfigError, match="method: 'bogus'"):
        GeneratorConfig(method="bogus")
    with pytest.raises(ConfigError, match=r"prediction: method 'flow' predicts one of"):
        GeneratorConfig(prediction="noise")
    # Assignments are checked together, in any order.
    assert override(GeneratorConfig(), ["prediction=noise", "method=ddpm"]).prediction == "noise"
    with pytest.raises(ConfigError, match="sampler: method 'ddpm' samples with one of"):
        GeneratorConfig(method="ddpm", sampler="rk4")
    with pytest.raises(ConfigError, match="backbone: latent-ddpm runs the mlp backbone"):
        GeneratorConfig(method="latent-ddpm", backbone="transformer")
    with pytest.raises(ConfigError, match="hidden: the transformer's width"):
        GeneratorConfig(backbone="transformer", hidden=30, heads=4)
    for field, bad in (("hidden", 0), ("cond_dropout", 1.0), ("source_scale", 0.0),
                       ("ae_hidden", (64, 0)), ("clip_x0", -1.0), ("sample_steps", 0)):
        with pytest.raises(ConfigError, match=f"^{field}: "):
            override(GeneratorConfig(), {field: bad})
    assert GeneratorConfig(ae_hidden=[64, 32]).ae_hidden == (64, 32)  # lists become tuples
