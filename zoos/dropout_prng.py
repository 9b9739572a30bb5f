"""A cheap counter-based PRNG for the population trainer's dropout masks (`DROPOUT_PRNG`)."""

from __future__ import annotations

import jax
import jax.extend.random as jax_random_ext
import jax.numpy as jnp
import numpy as np

# Dropout masks are most of a small network's random numbers, and threefry costs ~100 integer
# ops per value on CPU. Dropout needs independent-looking bits, not threefry's strength, so
# dropout keys use a counter-based hash (two murmur3 finalisers over (counter, key)): ~12 ops.
_GOLDEN = np.uint32(0x9E3779B9)


def _fmix32(x):
    x = x ^ (x >> 16)
    x = x * np.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * np.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def _hash_seed(seed):
    s = jnp.asarray(seed).astype(jnp.uint32)
    return jnp.stack([_fmix32(s ^ np.uint32(0x243F6A88)), _fmix32(s + _GOLDEN)])


def _hash_fold_in(key, data):
    d = jnp.asarray(data).astype(jnp.uint32)
    return jnp.stack([_fmix32(key[0] ^ _fmix32(d + np.uint32(0x13198A2E))),
                      _fmix32(key[1] + d * _GOLDEN)])


def _hash_split(key, shape):
    i = jax.lax.iota(jnp.uint32, int(np.prod(shape)))
    out = jnp.stack([_fmix32(key[0] ^ _fmix32(i + np.uint32(0x03707344))),
                     _fmix32((key[1] ^ np.uint32(0xA4093822)) + i * _GOLDEN)], -1)
    return out.reshape(tuple(shape) + (2,))


def _hash_bits(key, bit_width, shape):
    i = jax.lax.iota(jnp.uint32, int(np.prod(shape)))
    low = _fmix32(_fmix32(i * _GOLDEN + key[0]) ^ key[1])
    if bit_width == 64:
        high = _fmix32(_fmix32(i * _GOLDEN + key[1]) ^ key[0])
        return ((high.astype(jnp.uint64) << 32) | low.astype(jnp.uint64)).reshape(shape)
    return low.astype({8: jnp.uint8, 16: jnp.uint16, 32: jnp.uint32}[bit_width]).reshape(shape)


DROPOUT_PRNG = jax_random_ext.define_prng_impl(
    key_shape=(2,), seed=_hash_seed, split=_hash_split, random_bits=_hash_bits,
    fold_in=_hash_fold_in, name="wsl_hash_dropout", tag="whd")
