"""`wsl.train.step.micro_batched`: the whole batch's gradient, with large dense kernels' gradients
formed after the micro-batch loop."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wsl.mesh import make_mesh, shard_leading
from wsl.train.step import micro_batched


class Tied(nn.Module):
    """Dense layers as a model may use them: one called twice (its gradient from both calls), one
    whose kernel is also read outside its call, a small one, and one with a bias-free call."""

    @nn.compact
    def __call__(self, x):
        shared = nn.Dense(24, name="shared")
        h = jnp.tanh(shared(jnp.tanh(nn.Dense(24, name="small")(x))))
        h = jnp.tanh(shared(h))
        read = nn.Dense(24, use_bias=False, name="read")
        h = jnp.tanh(read(h)) + 0.1 * jnp.sum(read.variables["params"]["kernel"] ** 2)
        return nn.Dense(1, name="out")(h)[..., 0]


def _problem(rows=32):
    model = Tied()
    x = jax.random.normal(jax.random.key(0), (rows, 8))
    batch = {"x": x, "y": jnp.sin(x.sum(-1))}
    params = model.init(jax.random.key(1), x)["params"]

    def loss(p, b, key):
        del key  # noiseless: micro-batches (one key each) change nothing
        error = model.apply({"params": p}, b["x"]) - b["y"]
        return jnp.mean(error ** 2), {"mae": jnp.mean(jnp.abs(error))}

    return loss, params, batch


@pytest.mark.parametrize("defer_from", [1, 10 ** 9])  # every dense kernel deferred; none
def test_micro_batches_give_the_whole_batch_gradient(defer_from):
    loss, params, batch = _problem()
    key = jax.random.key(2)
    (whole, aux), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params, batch, key)
    (micro, micro_aux), micro_grads = jax.jit(micro_batched(loss, 8, defer_from=defer_from))(
        params, batch, key)
    np.testing.assert_allclose(micro, whole, rtol=1e-6)
    np.testing.assert_allclose(micro_aux["mae"], aux["mae"], rtol=1e-6)
    for (path, g), m in zip(jax.tree_util.tree_leaves_with_path(grads),
                            jax.tree.leaves(micro_grads)):
        np.testing.assert_allclose(m, g, rtol=2e-5, atol=1e-7, err_msg=jax.tree_util.keystr(path))


def test_large_dense_kernels_take_no_gradient_inside_the_loop():
    """The deferral is real: with it, the compiled step multiplies no kernel-shaped gradient
    inside the loop (the loop's body has fewer dot products than without it)."""
    loss, params, batch = _problem()
    key = jax.random.key(2)

    def body_dots(defer_from):
        jaxpr = jax.make_jaxpr(micro_batched(loss, 8, defer_from=defer_from))(params, batch, key)
        (scan,) = [e for e in jaxpr.eqns if e.primitive.name == "scan"]
        return str(scan.params["jaxpr"]).count("dot_general")

    assert body_dots(1) < body_dots(10 ** 9)


def test_micro_batches_must_divide_the_batch():
    loss, params, batch = _problem(rows=30)
    with pytest.raises(ValueError, match="a batch of 30 rows does not split into micro-batches "
                                         "of 8"):
        micro_batched(loss, 8)(params, batch, jax.random.key(0))


@pytest.mark.eight_devices
def test_eight_devices_micro_batches_with_deferred_kernels():
    loss, params, batch = _problem(rows=64)
    batch = shard_leading(batch, make_mesh())  # rows over the 8 devices, as the trainer does
    key = jax.random.key(2)
    _, grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params, batch, key)
    _, micro_grads = jax.jit(micro_batched(loss, 16, defer_from=1))(params, batch, key)
    for a, b in zip(jax.tree.leaves(micro_grads), jax.tree.leaves(grads)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7)
