"""Scale and sign symmetries as augmentations: rescaled ReLU units and sign-flipped tanh units keep
every network's function on each architecture where the weight space says they hold; they change
the weights there and nothing where they do not hold (gelu units, normalised groups, residual
streams, attention); a deliberately wrong transform changes the function; and the names ``scale``
and ``sign`` run through `make_augmentations`."""

import warnings

import jax
import numpy as np
import pytest

from wsl.models.augment import (
    random_scaling,
    random_sign_flip,
    scalable_groups,
    transform_units,
    unit_symmetry_groups,
)
from wsl.models.errors import ModelError
from wsl.train.augment import augmentation_names, make_augmentations
from wsl.weight_space import WeightSpaceError, nest_paths
from wsl.zoos.architectures import build

# XLA:CPU compile time dominates these tiny programs; the classic emitters compute the same.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True,
                "xla_cpu_use_fusion_emitters": False, "xla_cpu_parallel_codegen_split_count": 1}
NETWORKS = 4

ARCHS = {
    "mlp_relu": ("mlp", dict(input_shape=(6,), widths=(5, 4), num_classes=3, activation="relu")),
    "mlp_tanh": ("mlp", dict(input_shape=(6,), widths=(5, 4), num_classes=3, activation="tanh")),
    "small_cnn_relu": ("small_cnn", dict(input_shape=(8, 8, 1), channels=4, num_layers=2,
                                         num_classes=3, activation="relu")),
    "small_cnn_tanh": ("small_cnn", dict(input_shape=(8, 8, 1), channels=4, num_layers=2,
                                         num_classes=3, activation="tanh")),
    "cnn_s_tanh": ("cnn_s", dict(input_shape=(20, 20, 1), num_classes=3, activation="tanh")),
    "cnn_s_relu": ("cnn_s", dict(input_shape=(20, 20, 1), num_classes=3, activation="relu")),
    "resnet": ("resnet", dict(input_shape=(8, 8, 1), width=4, stages=2, num_classes=3)),
    "resnet_group_tanh": ("resnet", dict(input_shape=(8, 8, 1), width=4, stages=2, num_classes=3,
                                         norm="group", activation="tanh")),
    "transformer_gelu": ("transformer", dict(input_shape=(16,), dim=8, heads=2, head_dim=4,
                                             mlp_dim=6, patch=4, num_classes=3)),
    "transformer_relu": ("transformer", dict(input_shape=(16,), dim=8, heads=2, head_dim=4,
                                             mlp_dim=6, patch=4, num_classes=3,
                                             activation="relu")),
    "transformer_tanh": ("transformer", dict(input_shape=(16,), dim=8, heads=2, head_dim=4,
                                             mlp_dim=6, patch=4, num_classes=3,
                                             activation="tanh")),
}

# (architecture, symmetry, groups it must act on, groups left out on purpose)
CASES = [
    ("mlp_relu", "scale", ("dense_0", "dense_1"), ()),
    ("mlp_tanh", "sign", ("dense_0", "dense_1"), ()),
    ("small_cnn_relu", "scale", ("conv_0", "conv_1"), ()),
    ("small_cnn_tanh", "sign", ("conv_0", "conv_1"), ()),
    # Max-pooling sits between conv_0 / conv_1 and their tanh: no sign symmetry there, and the
    # weight space cannot tell (see test_cnn_s_max_pooling_breaks_the_sign_flip).
    ("cnn_s_tanh", "sign", ("conv_2", "dense_0"), ("conv_0", "conv_1")),
    ("cnn_s_relu", "scale", ("conv_0", "conv_1", "conv_2", "dense_0"), ()),
    ("transformer_relu", "scale", ("block0_mlp",), ()),
    ("transformer_tanh", "sign", ("block0_mlp",), ()),
    # Where nothing holds, the augmentation is the identity.
    ("mlp_relu", "sign", (), ()),
    ("mlp_tanh", "scale", (), ()),
    ("resnet", "scale", (), ()),
    ("resnet_group_tanh", "sign", (), ()),
    ("transformer_gelu", "scale", (), ()),
    ("transformer_gelu", "sign", (), ()),
]


@pytest.fixture(scope="module")
def setups():
    """Per architecture: (arch, random networks, inputs, compiled batched apply), built once."""
    cache = {}

    def get(name):
        if name not in cache:
            arch = build(ARCHS[name][0], **ARCHS[name][1])
            params = networks(arch, NETWORKS, seed=len(cache))
            x = np.random.default_rng(100 + len(cache)).standard_normal(
                (8,) + arch.input_shape).astype(np.float32)
            apply = compiled(jax.vmap(arch.apply, in_axes=(0, None)), params, x)
            cache[name] = (arch, params, x, lambda p: np.asarray(apply(p, x)))
        return cache[name]

    return get


def compiled(fn, *args):
    return jax.jit(fn).lower(*args).compile(compiler_options=FAST_COMPILE)


def networks(arch, n, seed=0, bias_scale=0.5):
    """n random networks: kernels N(0, 1/fan-in), everything 1-D (biases, norm scales)
    N(0, bias_scale²), so that biases matter and a forgotten bias shows."""
    rng = np.random.default_rng(seed)
    out = {}
    for t in arch.weight_space.tensors:
        std = 1 / np.sqrt(np.prod(t.shape[:-1])) if len(t.shape) > 1 else bias_scale
        out[t.path] = (std * rng.standard_normal((n,) + t.shape)).astype(np.float32)
    return nest_paths(out)


def as_numpy(space, params):
    return {p: np.asarray(x) for p, x in space.as_flat_dict(params).items()}


def by_hand(space, params, group, factors, writer_power=1, reader_power=-1):
    """Writers of `group` ×f**writer_power, readers ×f**reader_power, in numpy along each
    (path, axis) of `WeightSpace.unit_roles` — no checks, so it also builds wrong transforms."""
    flat = as_numpy(space, params)
    writers, readers = space.unit_roles(group)
    for roles, power in ((writers, writer_power), (readers, reader_power)):
        for path, axis in roles:
            x = flat[path]
            f = factors.reshape((len(factors),) + (1,) * axis + (factors.shape[-1],)
                                + (1,) * (x.ndim - 2 - axis))
            flat[path] = (x * f ** power).astype(x.dtype)
    return nest_paths(flat)


def draw(symmetry, size, seed):
    rng = np.random.default_rng(seed)
    if symmetry == "scale":
        return np.exp(rng.uniform(-1.5, 1.5, (NETWORKS, size))).astype(np.float32)
    return rng.choice(np.array([-1.0, 1.0], np.float32), (NETWORKS, size))


def assert_same_function(got, want):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def relative_change(got, want):
    return np.abs(got - want).max() / np.abs(want).max()


@pytest.mark.parametrize("name, symmetry, groups, exclude", CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_augmentation_keeps_the_function_and_moves_the_weights_it_may(setups, name, symmetry,
                                                                      groups, exclude):
    arch, params, x, outputs = setups(name)
    space = arch.weight_space
    augment = (random_scaling(space, log_scale=1.5, exclude=exclude) if symmetry == "scale"
               else random_sign_flip(space, exclude=exclude))
    assert augment.groups == groups
    assert set(scalable_groups(space, symmetry)) == set(groups) | set(exclude)

    out = compiled(augment, jax.random.key(7), {"params": params, "y": np.arange(NETWORKS)})(
        jax.random.key(7), {"params": params, "y": np.arange(NETWORKS)})
    np.testing.assert_array_equal(out["y"], np.arange(NETWORKS))
    before, after = as_numpy(space, params), as_numpy(space, out["params"])
    assert_same_function(outputs(out["params"]), outputs(params))

    touched = {p for g in groups for roles in space.unit_roles(g) for p, _ in roles}
    for path in space.paths:
        if path in touched:  # every network's tensor moves (or flips) somewhere
            change = np.abs(after[path] - before[path]).reshape(NETWORKS, -1).max(axis=1)
            assert (change > 1e-3 * np.abs(before[path]).max()).all(), path
        else:
            np.testing.assert_array_equal(after[path], before[path], err_msg=path)
    if symmetry == "scale" and groups:
        # Log-uniform on [e^-1.5, e^1.5]: recover s from each writing bias.
        bias = f"{space.unit_roles(groups[0])[0][0][0].rsplit('/', 1)[0]}/bias"
        s = after[bias] / before[bias]
        assert (s > np.exp(-1.5) * 0.999).all() and (s < np.exp(1.5) * 1.001).all()
        assert s.max() / s.min() > 2


@pytest.mark.parametrize("name, symmetry", [(c[0], c[1]) for c in CASES if c[2]],
                         ids=[f"{c[0]}-{c[1]}" for c in CASES if c[2]])
def test_a_wrong_transform_changes_the_function(setups, name, symmetry):
    """The exact transform, written independently, agrees with `transform_units` and keeps the
    function; scaling the readers by s instead of 1/s, or flipping only the writers, does not."""
    arch, params, x, outputs = setups(name)
    space = arch.weight_space
    want = outputs(params)
    for i, group in enumerate(augment_groups(space, symmetry, name)):
        f = draw(symmetry, space.group_sizes[group], seed=i)
        right = by_hand(space, params, group, f)
        library = transform_units(space, params, {group: f}, symmetry)
        for path, value in as_numpy(space, library).items():
            np.testing.assert_allclose(value, as_numpy(space, right)[path], rtol=1e-6,
                                       atol=1e-7, err_msg=path)
        assert_same_function(outputs(library), want)
        wrong = (by_hand(space, params, group, f, reader_power=1) if symmetry == "scale"
                 else by_hand(space, params, group, f, reader_power=0))
        assert relative_change(outputs(wrong), want) > 1e-2, group


def augment_groups(space, symmetry, name):
    return next(c[2] for c in CASES if c[0] == name and c[1] == symmetry)


@pytest.mark.parametrize("name, group, symmetry, reason", [
    ("resnet", "stage0_block0", "scale", "normalised"),
    ("resnet", "stream_0", "scale", "residual stream"),
    ("transformer_gelu", "block0_mlp", "scale", "'gelu' has no scale"),
    ("transformer_relu", "stream", "scale", "no nonlinearity"),
    ("mlp_relu", "dense_0", "sign", "'relu' has no sign"),
])
def test_refused_groups_are_not_symmetries(setups, name, group, symmetry, reason):
    """Each group the rule refuses really breaks the function under the transform (so refusing
    it is right, not timid), and `transform_units` names the reason."""
    arch, params, x, outputs = setups(name)
    space = arch.weight_space
    assert reason in unit_symmetry_groups(space, symmetry)[group]
    assert group not in scalable_groups(space, symmetry)
    f = draw(symmetry, space.group_sizes[group], seed=3)
    # 1e-2 to 0.4 here; an exact symmetry stays below 1e-6.
    assert relative_change(outputs(by_hand(space, params, group, f)), outputs(params)) > 1e-3
    with pytest.raises(WeightSpaceError, match=reason):
        transform_units(space, params, {group: f}, symmetry)
    with pytest.raises(WeightSpaceError, match=reason):
        (random_scaling if symmetry == "scale" else random_sign_flip)(space, groups=[group])


def test_cnn_s_max_pooling_breaks_the_sign_flip(setups):
    """CNN-s max-pools before tanh on conv_0 and conv_1: max(−z) = −min(z), so flipping those
    units changes the function; the weight space does not record pooling, so the rule accepts
    them and the caller must exclude them. Positive rescaling commutes with max-pooling."""
    arch, params, x, outputs = setups("cnn_s_tanh")
    space = arch.weight_space
    want = outputs(params)
    for group in ("conv_0", "conv_1"):
        assert unit_symmetry_groups(space, "sign")[group] is None  # what the rule cannot see
        flip = by_hand(space, params, group, draw("sign", space.group_sizes[group], seed=1))
        assert relative_change(outputs(flip), want) > 1e-2, group
    relu_arch, relu_params, _, relu_outputs = setups("cnn_s_relu")
    s = draw("scale", 8, seed=2)
    assert_same_function(relu_outputs(by_hand(relu_arch.weight_space, relu_params, "conv_0", s)),
                         relu_outputs(relu_params))


def test_probes_leave_pooled_groups_unflipped(setups):
    """What `wsl probe --augment sign` builds for a CNN-s zoo: the architecture names the groups
    it max-pools before the activation, and the sign flip leaves them alone."""
    from wsl.zoos.architectures import pooled_before_activation

    arch, params, x, outputs = setups("cnn_s_tanh")
    space = arch.weight_space
    assert pooled_before_activation(arch) == ("conv_0", "conv_1")
    (sign,) = make_augmentations(space, "sign", no_sign=pooled_before_activation(arch))
    out = sign(jax.random.key(3), {"params": params})["params"]
    assert_same_function(outputs(out), outputs(params))
    moved = {p for p, v in as_numpy(space, out).items()
             if np.abs(v - as_numpy(space, params)[p]).max() > 0}
    assert "conv_2/kernel" in moved and "conv_0/kernel" not in moved


def test_registered_names_run_on_a_batch(setups):
    assert augmentation_names("sign,prune,scale,permute") == ("permute", "scale", "sign", "prune")
    for name, names in (("mlp_relu", "permute,scale"), ("mlp_tanh", "sign,permute"),
                        ("small_cnn_relu", "scale"), ("transformer_relu", "scale,permute")):
        arch, params, x, outputs = setups(name)
        space = arch.weight_space
        augmentations = make_augmentations(space, names, log_scale=1.0)
        vectors = np.asarray(space.flatten(params))

        def run(key, batch, augmentations=augmentations):
            for k, fn in zip(jax.random.split(key, len(augmentations)), augmentations):
                batch = fn(k, batch)
            return batch

        batch = {"flat": vectors, "y": np.zeros(NETWORKS, np.float32)}
        out = compiled(run, jax.random.key(1), batch)(jax.random.key(1), batch)
        assert out["flat"].shape == vectors.shape
        assert np.abs(np.asarray(out["flat"]) - vectors).max() > 1e-2
        assert_same_function(outputs(space.unflatten(out["flat"])), outputs(params))
    # A name whose symmetry holds nowhere is a (warned) identity, not an error: "all
    # augmentations" stays usable on every weight space.
    arch, params, _, _ = setups("mlp_relu")
    with pytest.warns(UserWarning, match="'sign' changes nothing.*'relu' has no sign"):
        (sign,) = make_augmentations(arch.weight_space, "sign")
    out = sign(jax.random.key(0), {"params": params})
    for path, value in as_numpy(arch.weight_space, out["params"]).items():
        np.testing.assert_array_equal(value, as_numpy(arch.weight_space, params)[path])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_augmentations(arch.weight_space, "scale")


def test_bad_arguments_are_named(setups):
    arch, _, _, _ = setups("mlp_relu")
    space = arch.weight_space
    with pytest.raises(ModelError, match="log_scale must be a finite number"):
        random_scaling(space, log_scale=-1)
    with pytest.raises(ModelError, match="distribution must be one of"):
        random_scaling(space, distribution="cauchy")
    with pytest.raises(WeightSpaceError, match=r"unknown groups \['dense_9'\]"):
        random_scaling(space, exclude=["dense_9"])
    with pytest.raises(ModelError, match="unknown unit symmetry"):
        unit_symmetry_groups(space, "rotate")
    with pytest.raises(WeightSpaceError, match="factors for group 'dense_0' have shape"):
        transform_units(space, space.zeros(2), {"dense_0": np.ones(3)})
    assert random_scaling(space, groups=["dense_1"], distribution="normal").groups == ("dense_1",)


def test_probe_refuses_unit_symmetries_on_mixed_activations(tmp_path):
    """A zoo of relu and tanh networks has one weight space: rescaling would be a symmetry for
    one half only (and tell the probe the activation), so the probe refuses it."""
    from wsl.mesh import make_mesh
    from wsl.train.probe import ProbeConfig, ProbeError, run_probe
    from wsl.zoos.build import build_zoo
    from wsl.zoos.recipes import Recipe

    zoo = build_zoo(Recipe(name="mixed", architecture="mlp", arch={"widths": (8,)},
                           dataset="digits", num_models=12, epochs=0, checkpoints=(0,),
                           activation=("relu", "tanh")),
                    tmp_path / "zoo", progress=False,
                    mesh=make_mesh(("models",), devices=jax.devices()[:1]))
    with pytest.raises(ProbeError, match="needs one activation"):
        run_probe(zoo, ProbeConfig(encoder="statnn", augment="scale", seeds=1))
