"""Weight-space augmentations: permutations keep every network's function, noise and dropout have
the advertised statistics per tensor and per network, pruning removes exactly the smallest weights,
and every augmentation named in a config runs in the trainer's compiled input pipeline."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wsl.config import ConfigError
from wsl.models.augment import (
    gaussian_noise,
    magnitude_pruning,
    random_permutation,
    weight_dropout,
)
from wsl.train import ArraySource, Pipeline, Position
from wsl.train.augment import (
    AUGMENTATIONS,
    align_for_mixup,
    augmentation_names,
    make_augmentations,
)
from wsl.weight_space import WeightSpaceError
from wsl.zoos.architectures import build

# XLA:CPU's (MLIR) fusion emitters and its parallel split of LLVM code generation cost 3-4x in
# compile time on these small programs; the classic emitters compute the same numbers.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True,
                "xla_cpu_use_fusion_emitters": False, "xla_cpu_parallel_codegen_split_count": 1}


def compiled(fn, *args):
    """`fn` compiled for `args` without backend optimisation: compile time dominates these tests."""
    return jax.jit(fn).lower(*args).compile(compiler_options=FAST_COMPILE)


def run_compiled(fn, *args):
    return compiled(fn, *args)(*args)


def flat(space, params):
    """`space.flatten` in numpy, for checks on results: eager jnp ops would compile one program
    per tensor shape."""
    parts = [np.asarray(x) for x in space.as_flat_dict(params).values()]
    return np.concatenate([x.reshape(len(x), -1) for x in parts], axis=1)


def networks(arch, n, seed=0, bias_scale=0.1):
    """n random networks, kernels N(0, 1/fan-in), biases N(0, bias_scale²), as numpy arrays."""
    rng = np.random.default_rng(seed)
    parts = []
    for t in arch.weight_space.tensors:
        scale = 1 / np.sqrt(np.prod(t.shape[:-1])) if len(t.shape) > 1 else bias_scale
        parts.append(scale * rng.standard_normal((n, t.size)))
    vector = np.concatenate(parts, axis=1).astype(np.float32)
    return jax.tree.map(np.asarray, arch.weight_space.unflatten(vector))


@pytest.fixture(scope="module")
def cnn():
    return build("small_cnn", input_shape=(8, 8, 1), channels=8)


def test_random_permutation_keeps_each_networks_function(cnn):
    space = cnn.weight_space
    params = networks(cnn, 6)
    x = np.random.default_rng(1).standard_normal((5,) + cnn.input_shape).astype(np.float32)
    hook = random_permutation(space)
    # The same network stacked twice must get two different permutations.
    twins = jax.tree.map(lambda a: np.repeat(a[:1], 2, axis=0), params)

    def check(key, params, twins):
        out = hook(key, {"params": params, "y": jnp.arange(6)})
        logits = jax.vmap(lambda p: cnn.apply(p, x))
        return out, logits(params), logits(out["params"]), hook(key, {"params": twins})["params"]

    out, before, after, permuted = run_compiled(check, jax.random.key(0), params, twins)
    np.testing.assert_array_equal(out["y"], np.arange(6))
    np.testing.assert_allclose(after, before, atol=1e-5)
    moved = np.abs(flat(space, out["params"]) - flat(space, params)).max(axis=1)
    assert np.all(moved > 1e-2), "every network is permuted"
    kernel = np.asarray(permuted["conv_0"]["kernel"])
    assert np.abs(kernel[0] - kernel[1]).max() > 1e-2


def test_gaussian_noise_is_scaled_by_each_tensors_std(cnn):
    space = cnn.weight_space
    params = networks(cnn, 64)
    # Network m is scaled by 2**(m % 4): noise must follow each network's own spread.
    factor = 2.0 ** (np.arange(64) % 4)
    params = jax.tree.map(lambda a: a * factor.reshape((-1,) + (1,) * (a.ndim - 1)).astype(
        np.float32),
                          params)
    params["conv_1"]["bias"] = np.zeros_like(params["conv_1"]["bias"])  # constant: untouched
    noise = compiled(gaussian_noise(space, scale=0.1), jax.random.key(0), {"params": params})
    out = noise(jax.random.key(0), {"params": params})
    for t in space.tensors:
        x = np.asarray(space.as_flat_dict(params)[t.path]).reshape(64, -1)
        delta = np.asarray(space.as_flat_dict(out["params"])[t.path]).reshape(64, -1) - x
        if t.path == "conv_1/bias":
            assert np.abs(delta).max() == 0.0
            continue
        ratio = delta.std(axis=1) / (0.1 * x.std(axis=1))
        # The pooled ratio is 1 within sampling error; per-network ratios too, for big tensors.
        assert abs(np.sqrt(np.mean(ratio ** 2)) - 1) < 0.1, t.path
        if t.size >= 500:
            assert np.all(np.abs(ratio - 1) < 0.3), t.path
    again = noise(jax.random.key(0), {"params": params})
    other = noise(jax.random.key(1), {"params": params})
    np.testing.assert_array_equal(flat(space, again["params"]), flat(space, out["params"]))
    assert np.abs(flat(space, other["params"]) - flat(space, out["params"])).max() > 0


@pytest.mark.parametrize("rescale", [False, True])
def test_weight_dropout_zeroes_the_given_fraction(cnn, rescale):
    space = cnn.weight_space
    params = networks(cnn, 16)
    rate = 0.2
    out = run_compiled(weight_dropout(space, rate, rescale=rescale), jax.random.key(0),
                       {"params": params})
    before, after = flat(space, params), flat(space, out["params"])
    dropped = after == 0
    n = dropped.size
    assert abs(dropped.mean() - rate) < 4 * np.sqrt(rate * (1 - rate) / n)
    kept = after[~dropped] / before[~dropped]
    np.testing.assert_allclose(kept, 1 / (1 - rate) if rescale else 1.0, rtol=1e-6)


def test_magnitude_pruning_removes_exactly_the_smallest(cnn):
    space = cnn.weight_space
    params = networks(cnn, 4)
    out = run_compiled(magnitude_pruning(space, 0.3), jax.random.key(0), {"params": params})
    for t in space.tensors:
        x = np.asarray(space.as_flat_dict(params)[t.path]).reshape(4, -1)
        y = np.asarray(space.as_flat_dict(out["params"])[t.path]).reshape(4, -1)
        if len(t.shape) == 1:  # biases are left alone by default
            np.testing.assert_array_equal(y, x)
            continue
        k = int(0.3 * t.size)
        for m in range(4):
            pruned = y[m] == 0
            assert pruned.sum() == k, t.path
            assert np.abs(x[m][pruned]).max() <= np.abs(x[m][~pruned]).min()
            np.testing.assert_array_equal(y[m][~pruned], x[m][~pruned])
    only_bias = run_compiled(magnitude_pruning(space, 0.5, tensors=["dense_0/bias"]),
                             jax.random.key(0), {"params": params})
    assert int((np.asarray(only_bias["params"]["dense_0"]["bias"]) == 0).sum()) == 4 * 5
    np.testing.assert_array_equal(only_bias["params"]["conv_0"]["kernel"],
                                  params["conv_0"]["kernel"])


def test_named_augmentations_apply_in_a_fixed_order_with_independent_keys(cnn):
    space = cnn.weight_space
    params = networks(cnn, 4)
    accuracy = np.linspace(0, 1, 4, dtype=np.float32)
    # Named in reverse: still permuted, then noised, then dropped.
    augment = make_augmentations(space, "dropout,noise,permute", noise_scale=0.05,
                                 dropout_rate=0.1)
    pipeline = Pipeline(ArraySource({"params": params, "accuracy": accuracy}), 4, prefetch=0,
                        augment=augment)
    first, second = (jax.device_get(pipeline.device_batch(Position(0, 0))) for _ in range(2))
    np.testing.assert_array_equal(flat(space, first["params"]), flat(space, second["params"]))
    np.testing.assert_array_equal(first["accuracy"], accuracy[pipeline.rows(Position(0, 0))])
    zeros = flat(space, first["params"]) == 0
    assert 0.05 < zeros.mean() < 0.15, "dropout ran last, on noisy weights"
    # The next epoch draws afresh: no network comes out as it did before.
    other = jax.device_get(pipeline.device_batch(Position(1, 0)))["params"]
    assert np.abs(flat(space, other)[:, None]
                  - flat(space, first["params"])[None]).max(axis=-1).min() > 1e-3


def test_bad_arguments_and_batches_are_named(cnn):
    space = cnn.weight_space
    with pytest.raises(ValueError, match="dropout rate must be in \\[0, 1\\)"):
        weight_dropout(space, 1.0)
    with pytest.raises(ValueError, match="pruning fraction"):
        magnitude_pruning(space, -0.1)
    with pytest.raises(ValueError, match="noise scale"):
        gaussian_noise(space, -1.0)
    with pytest.raises(WeightSpaceError, match="conv_9/kernel"):
        magnitude_pruning(space, 0.1, tensors=["conv_9/kernel"])
    hook = gaussian_noise(space)
    with pytest.raises(WeightSpaceError,
                       match=r"no field 'params or flat'; fields are \['weights'\]"):
        hook(jax.random.key(0), {"weights": networks(cnn, 2)})
    one = jax.tree.map(lambda a: a[0], networks(cnn, 1))
    with pytest.raises(WeightSpaceError, match="one leading batch axis"):
        hook(jax.random.key(0), {"params": one})
    wrong = build("small_cnn", input_shape=(8, 8, 1), channels=4)
    with pytest.raises(WeightSpaceError, match="conv_0/kernel"):
        hook(jax.random.key(0), {"params": networks(wrong, 2)})


def test_every_augmentation_reads_and_writes_flat_vectors_alike(cnn):
    space = cnn.weight_space
    params = networks(cnn, 4)
    vectors = flat(space, params)
    augmentations = [random_permutation(space), gaussian_noise(space, 0.1),
                     weight_dropout(space, 0.2), magnitude_pruning(space, 0.3)]

    def both(key, params, vectors):
        return [(space.flatten(fn(key, {"params": params})["params"]),
                 fn(key, {"flat": vectors})["flat"]) for fn in augmentations]

    for from_tree, from_flat in run_compiled(both, jax.random.key(0), params, vectors):
        assert from_flat.shape == vectors.shape
        np.testing.assert_array_equal(from_flat, from_tree)
        assert np.abs(np.asarray(from_flat) - vectors).max() > 1e-3


def test_augmentation_names_are_ordered_and_checked():
    assert augmentation_names("noise,mixup") == ("mixup", "noise")  # mixup first, before permute
    assert augmentation_names(["prune", "permute", "dropout"]) == ("permute", "dropout", "prune")
    assert augmentation_names(("permute,noise", " mixup ")) == ("mixup", "permute", "noise")
    assert augmentation_names(None) == augmentation_names("none") == augmentation_names([]) == ()
    assert set(augmentation_names(",".join(AUGMENTATIONS))) == set(AUGMENTATIONS)
    with pytest.raises(ConfigError, match=r"unknown augmentation\(s\) \['rotate'\]; valid: "
                                          r"dropout, mixup, noise, permute, prune"):
        augmentation_names("permute,rotate")
    with pytest.raises(ConfigError, match="'none' cannot be combined"):
        augmentation_names("none,noise")


def test_named_augmentations_run_in_the_compiled_pipeline():
    """Mixup of networks aligned beforehand runs under the pipeline's jit, after which permuting
    and the other augmentations still run; permuted copies of one network mix into that network."""
    arch = build("mlp", input_shape=(5,), widths=(7, 6), num_classes=3)
    space = arch.weight_space
    base = networks(arch, 1, seed=3, bias_scale=0.5)
    tile = lambda tree, n: jax.tree.map(lambda a: np.repeat(a, n, 0), tree)
    # 16 randomly permuted copies of the network, drawn and applied in one compiled program.
    copies = jax.device_get(run_compiled(
        lambda key, params: space.permute(params, space.random_permutation(key, num=16)),
        jax.random.key(4), tile(base, 16)))
    aligned = jax.device_get(align_for_mixup(space, copies, seed=0))
    y = np.linspace(0.0, 1.0, 16, dtype=np.float32)
    x = np.random.default_rng(5).standard_normal((4, 5)).astype(np.float32)
    apply = compiled(jax.vmap(arch.apply, in_axes=(0, None)), tile(base, 8), x)
    want = np.asarray(apply(tile(base, 8), x))  # the base network's outputs, 8 times

    # One compiled pipeline for the aligned copies (rows 0-15: batch 0) and, in the same order,
    # the unaligned ones (rows 16-31: batch 2); unshuffled, so that no batch mixes the two.
    both = {"params": jax.tree.map(lambda *a: np.concatenate(a), aligned, copies),
            "y": np.concatenate([y, y])}
    pipeline = Pipeline(ArraySource(both), 8, shuffle=False, prefetch=0,
                        augment=make_augmentations(space, "permute,mixup", field="params"))
    rows = pipeline.rows(Position(0, 0))
    assert (rows < 16).all() and (pipeline.rows(Position(0, 2)) >= 16).all()
    out = jax.device_get(pipeline.device_batch(Position(0, 0)))
    np.testing.assert_allclose(apply(out["params"], x), want, atol=1e-5)
    lam = out["mixup_lambda"]
    assert ((lam >= 0) & (lam <= 1)).all() and lam.std() > 0
    # Targets mix with the weights: λ·y_i + (1 − λ)·y_partner, the partner in the same batch.
    partner_y = (out["y"] - lam * y[rows]) / np.maximum(1 - lam, 1e-6)
    near = np.abs(partner_y[:, None] - y[rows][None, :]).min(axis=1)
    assert (near[lam < 0.95] < 1e-3).all()
    # Without the alignment, mixing the same copies changes their function (a permutation after
    # mixup changes none).
    out = jax.device_get(pipeline.device_batch(Position(0, 2)))
    assert np.abs(np.asarray(apply(out["params"], x)) - want).max() > 1e-2
    pipeline = Pipeline(ArraySource({"params": aligned, "y": y}), 8, seed=1, prefetch=0,
                        augment=make_augmentations(space, AUGMENTATIONS, field="params"))
    out = jax.device_get(pipeline.device_batch(Position(0, 0)))
    assert np.isfinite(flat(space, out["params"])).all() and "mixup_lambda" in out
