"""The pure functions the trainer compiles: the training state, its initialisation, one update."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from wsl.train.optim import ema_update


@struct.dataclass
class TrainState:
    """Everything a checkpoint must hold to continue a run exactly.

    `rng` is raw key data (uint32) so that orbax can store it; the key of update `step` is
    ``fold_in(rng, step)``, so resuming needs no other random state.
    """

    step: jax.Array  # updates done so far (int32 scalar)
    params: Any
    opt_state: Any
    ema: Any  # EMA of params, or None when ema_decay == 0
    rng: jax.Array


def make_init(task, tx: optax.GradientTransformation, use_ema: bool):
    """`init(seed, batch) -> TrainState`, every key derived from the integer `seed`."""

    def init(seed: jax.Array, batch) -> TrainState:
        init_key, step_key = jax.random.split(jax.random.key(seed))
        params = task.init(init_key, batch)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                          ema=jax.tree.map(jnp.copy, params) if use_ema else None,
                          rng=jax.random.key_data(step_key))

    return init


# A dense kernel with at least this many entries gets its gradient after the micro-batch loop
# (`micro_batched`). Measured on 2 CPU cores: NFN-HNP's 1000 x 1000 head on small-cnn, micro-batches
# of 16 of 128 networks, 770 -> 850 networks/s; below ~10^5 entries accumulating costs little.
DEFERRED_KERNEL_SIZE = 1 << 18


def micro_batched(loss_fn, size: int, *, defer_from: int = DEFERRED_KERNEL_SIZE):
    """`value_and_grad(loss_fn, has_aux=True)` — `(params, batch, key) -> ((loss, aux), grads)` —
    run on micro-batches of `size` rows one after another (`jax.lax.scan`) and averaged: for a
    loss that is a mean over rows (every wsl task's), the same loss and gradient as one call on the
    whole batch, each micro-batch with its own key. Metrics are averaged too: exact for means over
    rows, not for e.g. an RMSE. Only one micro-batch's activations are live at a time, which saves
    memory everywhere and, on CPU, keeps an encoder's working set in cache.

    Micro-batch i holds rows i, i + n, i + 2n, … (n micro-batches): a batch split over devices
    by rows is split the same way in every micro-batch, so each one still uses every device.

    Large dense kernels (flax `nn.Dense` with at least `defer_from` entries, called on inputs of
    the kernel's dtype with default precision): adding their gradient to the running sum every
    micro-batch moves the kernel-sized sum through the cache each time and evicts the rest of the
    model's working set. Inside the loop such a layer computes no kernel gradient (its kernel
    enters as a constant); its inputs x and output gradients dy are kept per micro-batch (rows ×
    width, small) and Σ xᵀ·dy is one matrix product after the loop. The same gradient up to
    rounding; any other use of the kernel is differentiated as usual.
    """
    grad_fn = jax.value_and_grad(_with_deferred_kernels(loss_fn, defer_from), argnums=(0, 1),
                                 has_aux=True)

    def run(params, batch, key):
        rows = jax.tree.leaves(batch)[0].shape[0]
        if rows % size:
            raise ValueError(f"a batch of {rows} rows does not split into micro-batches of {size}")
        n = rows // size
        batches = jax.tree.map(
            lambda x: jnp.swapaxes(x.reshape((size, n) + x.shape[1:]), 0, 1), batch)
        first = jax.tree.map(lambda x: x[0], batches)
        # One trace finds the deferred calls: which kernel (its index among the params' leaves),
        # and the shape of the input each gets.
        calls: list[int] = []
        inputs = jax.eval_shape(
            lambda p, b, k: _with_deferred_kernels(loss_fn, defer_from, calls)(p, None, b, k)[1][1],
            params, first, key)
        leaves = jax.tree.leaves(params)
        outputs = [x.shape[:-1] + (leaves[i].shape[-1],) for x, i in zip(inputs, calls)]

        def one(index, micro):
            zeros = [jnp.zeros(shape, leaves[i].dtype) for shape, i in zip(outputs, calls)]
            ((loss, (aux, xs)), (grads, dys)) = grad_fn(params, zeros, micro,
                                                        jax.random.fold_in(key, index))
            return ((loss, aux), grads), (xs, dys)

        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                             jax.eval_shape(lambda b: one(0, b)[0], first))

        def add(total, inputs):
            out, kept = one(*inputs)
            # A deferred kernel's gradient here is a constant zero (unless the kernel has other
            # uses): XLA folds the addition away, and the sum stays where it is.
            return jax.tree.map(jnp.add, total, out), kept

        total, (xs, dys) = jax.lax.scan(add, zeros, (jnp.arange(n), batches))
        (loss, aux), grads = total
        grads = jax.tree.leaves(grads)
        for i, x, dy in zip(calls, xs, dys):
            grads[i] = grads[i] + x.reshape(-1, x.shape[-1]).T @ dy.reshape(-1, dy.shape[-1])
        grads = jax.tree.unflatten(jax.tree.structure(params), grads)
        return jax.tree.map(lambda t: t / n, ((loss, aux), grads))

    return run


def _with_deferred_kernels(loss_fn, defer_from: int, found: list[int] | None = None):
    """`(params, perturbations, batch, key) -> (loss, (aux, inputs))`: `loss_fn` with each large
    dense layer's output computed from a constant kernel plus a perturbation (zeros; its gradient
    is the layer's dy), the layer's input returned in `inputs`. With `perturbations=None`
    (tracing only), the kernels' leaf indices are appended to `found`."""

    def run(params, perturbations, batch, key):
        leaves = jax.tree.leaves(params)
        index = {id(leaf): i for i, leaf in enumerate(leaves)}
        inputs = []

        def intercept(next_fun, args, kwargs, context):
            module = context.module
            if (context.method_name != "__call__" or type(module) is not nn.Dense or kwargs
                    or len(args) != 1 or module.precision is not None
                    or getattr(module, "dot_general", None) is not None
                    or getattr(module, "dot_general_cls", None) is not None
                    or (perturbations is not None and len(inputs) == len(perturbations))):
                return next_fun(*args, **kwargs)
            x, kernel = args[0], module.get_variable("params", "kernel")
            i = index.get(id(kernel))
            if i is None or kernel.size < defer_from or x.dtype != kernel.dtype \
                    or (module.dtype is not None and module.dtype != kernel.dtype):
                return next_fun(*args, **kwargs)
            y = jax.lax.dot_general(x, jax.lax.stop_gradient(kernel),
                                    (((x.ndim - 1,), (0,)), ((), ())))
            if module.use_bias:
                y = y + module.get_variable("params", "bias")
            if perturbations is None:
                found.append(i)
            else:
                y = y + perturbations[len(inputs)]
            inputs.append(x)
            return y

        with nn.intercept_methods(intercept):
            loss, aux = loss_fn(params, batch, key)
        if perturbations is not None and len(inputs) != len(perturbations):
            raise RuntimeError(f"micro_batched: {len(inputs)} large dense layers were called, "
                               f"{len(perturbations)} when first traced")
        return loss, (aux, inputs)

    return run


def make_train_step(task, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    ema_decay: float, microbatch: int = 0):
    """`step(state, batch) -> (state, metrics)`: one optimizer update, metrics as device scalars.
    ``microbatch > 0`` computes the gradient over micro-batches of that many rows
    (`micro_batched`)."""
    grad_fn = micro_batched(task.loss, microbatch) if microbatch else \
        jax.value_and_grad(task.loss, has_aux=True)

    def train_step(state: TrainState, batch):
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        (loss, aux), grads = grad_fn(state.params, batch, key)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        step = state.step + 1
        ema = None if state.ema is None else ema_update(state.ema, params, ema_decay, step)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
                   "lr": schedule(state.step), **dict(aux)}
        return state.replace(step=step, params=params, opt_state=opt_state, ema=ema), metrics

    return train_step
