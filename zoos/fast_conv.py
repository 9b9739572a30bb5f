"""Convolutions as patches @ kernel, for populations: the same numbers, several times faster on CPU.

Vmapped over a population, XLA:CPU lowers a convolution with per-model kernels to a grouped
convolution; `population_apply` runs an architecture with its plain 2-D convolutions rewritten as
one batched matmul instead.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from wsl.zoos.architectures import Architecture


def _same_or_valid(size: int, k: int, stride: int, padding) -> tuple[tuple[int, int], int]:
    if padding == "VALID":
        return (0, 0), (size - k) // stride + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    return (total // 2, total - total // 2), out


def _conv_as_matmul(module: nn.Conv, x: jax.Array) -> jax.Array:
    kh, kw = module.kernel_size
    strides = module.strides or 1
    sh, sw = (strides, strides) if isinstance(strides, int) else tuple(strides)
    kernel = module.get_variable("params", "kernel")
    (ph, oh), (pw, ow) = (_same_or_valid(x.shape[-3], kh, sh, module.padding),
                          _same_or_valid(x.shape[-2], kw, sw, module.padding))
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 3) + [ph, pw, (0, 0)])
    taps = [x[..., i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, :]
            for i in range(kh) for j in range(kw)]
    patches = jnp.stack(taps, axis=-2).reshape(x.shape[:-3] + (oh, ow, kh * kw * x.shape[-1]))
    y = patches @ kernel.reshape(-1, kernel.shape[-1])  # HWIO flattens in (tap, channel) order
    return y + module.get_variable("params", "bias") if module.use_bias else y


def _matmul_conv_interceptor(next_fun, args, kwargs, context):
    """Run plain 2-D convs as patches @ kernel.

    Vmapped over a population, XLA:CPU lowers a convolution with per-model kernels to a grouped
    convolution that is several times slower than the batched matmul this becomes instead.
    """
    m = context.module
    if (isinstance(m, nn.Conv) and context.method_name == "__call__" and len(m.kernel_size) == 2
            and m.feature_group_count == 1 and m.padding in ("SAME", "VALID") and m.mask is None
            and m.input_dilation in (None, 1, (1, 1)) and m.kernel_dilation in (None, 1, (1, 1))
            and not kwargs and len(args) == 1 and args[0].ndim >= 4):
        return _conv_as_matmul(m, args[0])
    return next_fun(*args, **kwargs)


def population_apply(arch: Architecture, params, x, dropout_rate=0.0, key=None):
    """`arch.apply` with convs as matmuls (same numbers, faster under vmap on CPU)."""
    with nn.intercept_methods(_matmul_conv_interceptor):
        return arch.apply(params, x, dropout_rate=dropout_rate, key=key)
