"""Flow matching, diffusion and the weight autoencoder learn a known distribution; sampling is
deterministic; a generator config is checked when it is made."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from wsl.config import ConfigError, override
from wsl.models.autoencoder import Autoencoding, WeightAutoencoder
from wsl.models.backbones import MLPBackbone, TokenTransformer, token_layout
from wsl.models.diffusion import Diffusion
from wsl.models.flow import FlowMatching
from wsl.models.normalize import TensorNormalizer
from wsl.models.weight_generator import GeneratorConfig
from wsl.zoos.architectures import build

DIM = 8
MEANS = jnp.stack([jnp.full(DIM, 2.0), jnp.full(DIM, -2.0)])


def two_clusters(key, n=128):
    k1, k2 = jax.random.split(key)
    c = jax.random.randint(k1, (n,), 0, 2)
    return MEANS[c] + 0.3 * jax.random.normal(k2, (n, DIM)), c


def fit(gen, steps=400):
    params = gen.init(jax.random.key(0))
    opt = optax.adam(2e-3)
    state = opt.init(params)

    @jax.jit
    def step(p, s, k):
        x, c = two_clusters(k)
        loss, g = jax.value_and_grad(gen.loss)(p, x, jax.random.fold_in(k, 1), c)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    for i in range(steps):
        params, state, _ = step(params, state, jax.random.fold_in(jax.random.key(1), i))
    return params


@pytest.mark.parametrize("kind", ["flow", "ddpm"])
def test_conditional_generation_hits_each_cluster(kind):
    backbone = MLPBackbone(DIM, hidden=64, depth=2, num_classes=2)
    gen = (FlowMatching(backbone, DIM) if kind == "flow"
           else Diffusion(backbone, DIM, num_steps=200))
    params = fit(gen)
    kwargs = {"steps": 20, "method": "euler"} if kind == "flow" else {"method": "ddpm"}
    for cls in (0, 1):
        x = gen.sample(params, jax.random.key(5), 200, cond_class=jnp.full((200,), cls), **kwargs)
        assert abs(float(x.mean()) - float(MEANS[cls, 0])) < 0.3, (kind, cls, float(x.mean()))
    a = gen.sample(params, jax.random.key(7), 4, **kwargs)
    b = gen.sample(params, jax.random.key(7), 4, **kwargs)
    c = gen.sample(params, jax.random.key(8), 4, **kwargs)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_unknown_sampler_is_named():
    gen = FlowMatching(MLPBackbone(DIM, hidden=8, depth=1), DIM)
    with pytest.raises(ValueError, match="midpoint"):
        gen.sample(gen.init(jax.random.key(0)), jax.random.key(0), 2, method="midpoint")


def test_token_transformer_covers_every_weight_once():
    space = build("small_cnn", input_shape=(8, 8, 1), channels=4).weight_space
    index, tensor_ids, n = token_layout(space, token_dim=16)
    real = index[index < space.num_params]
    assert sorted(real.tolist()) == list(range(space.num_params))
    net = TokenTransformer(space, token_dim=16, dim=16, depth=1, heads=2)
    x = jnp.ones((3, space.num_params))
    params = net.init(jax.random.key(0), x, jnp.zeros(3))
    assert net.apply(params, x, jnp.zeros(3)).shape == (3, space.num_params)


def test_autoencoder_reconstructs_and_normalizer_round_trips():
    space = build("mlp", widths=(4,), input_shape=(3,), num_classes=2).weight_space
    flat = np.random.default_rng(0).normal(size=(64, space.num_params)) * 3 + 1
    norm = TensorNormalizer.fit(space, flat)
    z = norm.normalize(flat)
    np.testing.assert_allclose(norm.denormalize(z), flat, rtol=1e-5, atol=1e-5)
    assert abs(z.mean()) < 0.1 and abs(z.std() - 1) < 0.1
    ae = Autoencoding(WeightAutoencoder(space.num_params, latent_dim=8, hidden=(32,)))
    params = ae.init(jax.random.key(0))
    opt = optax.adam(3e-3)
    state = opt.init(params)
    data = jnp.asarray(z, jnp.float32)

    @jax.jit
    def step(p, s, k):
        loss, g = jax.value_and_grad(ae.loss)(p, data, k)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    first = None
    for i in range(300):
        params, state, loss = step(params, state, jax.random.key(i))
        first = first if first is not None else float(loss)
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
