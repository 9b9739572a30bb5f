"""Convolutions as batched matmuls, for populations: the same numbers, several times faster on CPU.

Vmapped over a population, XLA:CPU lowers a convolution with per-model kernels to a grouped
convolution (``feature_group_count`` = models), which runs an order of magnitude slower than a
batched matmul. `population_apply` runs an architecture with its plain 2-D convolutions rewritten
as one batched matmul per layer, in one of two formulations chosen per layer shape
(`conv_formulation`):

* ``"patches"``: patches @ kernel (im2col). The patches are built once and kept for the weight
  gradient; the backward pass is written out (`_patches_conv`) so that XLA does not rebuild it.
* ``"dense"``: the convolution as one dense (H·W·C, OH·OW·D) matrix per model, built from the
  kernel by a static gather (`_dense_kernel`), so that the layer is a single matmul on the
  flattened image with no patch extraction and no col2im in its backward pass. It costs
  H·W / (kh·kw) times the multiply-adds of im2col, so it only pays on small images (the small CNN's
  4×4 and 2×2 maps) and large per-model batches (evaluation), where building the matrix is
  amortised.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from wsl.zoos.architectures import Architecture

# The "dense" formulation is chosen when the input image has at most this many pixels per kernel
# tap, and for up to twice as many when each model's batch has at least `_DENSE_ROWS` rows.
# Measured on 2 CPU cores (benchmarks/zoo_build.py, small CNN, 64 models): at batch 32 a 4×4
# input (16 px, 9 taps) trains faster as patches and a 2×2 input faster dense; at batch 500
# (evaluation) both run 2-3× faster dense.
_DENSE_PIXELS_PER_TAP = 1.0
_DENSE_PIXELS_PER_TAP_LARGE_BATCH = 2.0
_DENSE_ROWS = 128


def _same_or_valid(size: int, k: int, stride: int, padding) -> tuple[tuple[int, int], int]:
    if padding == "VALID":
        return (0, 0), (size - k) // stride + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    return (total // 2, total - total // 2), out


def _geometry(module: nn.Conv, x: jax.Array) -> tuple:
    """Hashable (kh, kw, sh, sw, (ph0, ph1), (pw0, pw1), oh, ow) of `module` applied to `x`."""
    kh, kw = module.kernel_size
    strides = module.strides or 1
    sh, sw = (strides, strides) if isinstance(strides, int) else tuple(strides)
    (ph, oh), (pw, ow) = (_same_or_valid(x.shape[-3], kh, sh, module.padding),
                          _same_or_valid(x.shape[-2], kw, sw, module.padding))
    return kh, kw, sh, sw, ph, pw, oh, ow


def conv_formulation(height: int, width: int, kernel_size: tuple[int, int], rows: int) -> str:
    """``"dense"`` or ``"patches"``: the faster formulation for a (height, width) input image,
    a kernel of `kernel_size` and `rows` images per model."""
    taps = kernel_size[0] * kernel_size[1]
    ratio = (_DENSE_PIXELS_PER_TAP_LARGE_BATCH if rows >= _DENSE_ROWS
             else _DENSE_PIXELS_PER_TAP)
    return "dense" if height * width <= ratio * taps else "patches"


# ------------------------------------------------------------------------------ patches (im2col)
def _extract_patches(x: jax.Array, geometry: tuple) -> jax.Array:
    kh, kw, sh, sw, ph, pw, oh, ow = geometry
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 3) + [ph, pw, (0, 0)])
    taps = [x[..., i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, :]
            for i in range(kh) for j in range(kw)]
    # HWIO kernels flatten in (tap, channel) order, so the patches do too.
    return jnp.stack(taps, axis=-2).reshape(x.shape[:-3] + (oh, ow, kh * kw * x.shape[-1]))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _patches_conv(x, kernel, geometry):
    return _extract_patches(x, geometry) @ kernel.reshape(-1, kernel.shape[-1])


def _patches_conv_fwd(x, kernel, geometry):
    patches = _extract_patches(x, geometry)
    return patches @ kernel.reshape(-1, kernel.shape[-1]), (x, patches, kernel)


def _patches_conv_bwd(geometry, residuals, dy):
    # Written out so that the weight gradient reuses the forward's patches (autodiff of the
    # vmapped matmul rebuilt them and lowered the contraction to a slower transposed dot).
    x, patches, kernel = residuals
    flat_kernel = kernel.reshape(-1, kernel.shape[-1])
    rows = patches.reshape(-1, patches.shape[-1])
    d_kernel = (rows.T @ dy.reshape(-1, dy.shape[-1])).reshape(kernel.shape)
    _, extract_vjp = jax.vjp(lambda v: _extract_patches(v, geometry), x)
    (dx,) = extract_vjp(dy @ flat_kernel.T)
    return dx, d_kernel


_patches_conv.defvjp(_patches_conv_fwd, _patches_conv_bwd)


# ------------------------------------------------------------------------------ dense matrix
@functools.lru_cache(maxsize=64)
def _tap_table(height: int, width: int, geometry: tuple) -> np.ndarray:
    """(pixels, outputs) int table: which kernel tap joins input pixel p to output pixel o
    (kh·kw where none does)."""
    kh, kw, sh, sw, ph, pw, oh, ow = geometry
    table = np.full((height * width, oh * ow), kh * kw, np.int32)
    for oy in range(oh):
        for ox in range(ow):
            for i in range(kh):
                for j in range(kw):
                    y, x = oy * sh + i - ph[0], ox * sw + j - pw[0]
                    if 0 <= y < height and 0 <= x < width:
                        table[y * width + x, oy * ow + ox] = i * kw + j
    return table


@functools.lru_cache(maxsize=64)
def _dense_kernel(height: int, width: int, geometry: tuple):
    """`f(kernel (taps, C, D)) -> (pixels, C, outputs, D)`: the convolution as a dense matrix.

    A custom VJP: the gradient of the gather is a sum over each tap's (pixel, output) pairs,
    which XLA:CPU runs far faster than the scatter-add autodiff would give."""
    table = _tap_table(height, width, geometry)
    taps = geometry[0] * geometry[1]
    pairs = [np.argwhere(table == t) for t in range(taps)]

    @jax.custom_vjp
    def dense(kernel):
        padded = jnp.concatenate([kernel, jnp.zeros_like(kernel[:1])], axis=0)
        return jnp.transpose(jnp.take(padded, table, axis=0), (0, 2, 1, 3))

    def dense_fwd(kernel):
        return dense(kernel), kernel.shape

    def dense_bwd(shape, d_dense):
        zero = jnp.zeros(shape[1:], d_dense.dtype)
        return (jnp.stack([sum((d_dense[p, :, o, :] for p, o in pairs[t]), zero)
                           for t in range(taps)]),)

    dense.defvjp(dense_fwd, dense_bwd)
    return dense


def _dense_conv(x, kernel, geometry):
    kh, kw, sh, sw, ph, pw, oh, ow = geometry
    height, width, channels = x.shape[-3:]
    features = kernel.shape[-1]
    matrix = _dense_kernel(height, width, geometry)(
        kernel.reshape(kh * kw, channels, features))
    y = x.reshape(x.shape[:-3] + (-1,)) @ matrix.reshape(height * width * channels, -1)
    return y.reshape(x.shape[:-3] + (oh, ow, features))


def _conv_as_matmul(module: nn.Conv, x: jax.Array) -> jax.Array:
    geometry = _geometry(module, x)
    kernel = module.get_variable("params", "kernel")
    rows = int(np.prod(x.shape[:-3]))
    if conv_formulation(x.shape[-3], x.shape[-2], module.kernel_size, rows) == "dense":
        y = _dense_conv(x, kernel, geometry)
    else:
        y = _patches_conv(x, kernel, geometry)
    return y + module.get_variable("params", "bias") if module.use_bias else y


def _matmul_conv_interceptor(next_fun, args, kwargs, context):
    """Run plain 2-D convs as batched matmuls (`_conv_as_matmul`)."""
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
