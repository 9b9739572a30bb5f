"""The zoo input pipeline: epoch orders, exact restarts, prefetching, placement, augmentation."""

import threading

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from wsl.mesh import make_mesh
from wsl.models.augment import random_permutation
from wsl.train import (
    ArraySource,
    Pipeline,
    PipelineError,
    Position,
    ZooSource,
)
from wsl.weight_space import WeightSpaceError
from wsl.zoos.architectures import build

# Programs the tests compile themselves (not the pipeline's): without backend optimisation and
# with XLA:CPU's classic emitters, which compile several times faster and compute the same numbers.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True,
                "xla_cpu_use_fusion_emitters": False, "xla_cpu_parallel_codegen_split_count": 1}


def rows_source(n=50):
    return ArraySource({"i": np.arange(n), "x": np.arange(n * 3, dtype=np.float64).reshape(n, 3)})


def take(iterator, n):
    with iterator:
        return [jax.device_get(next(iterator)) for _ in range(n)]


def jitter(key, batch):
    return {**batch, "x": batch["x"] + jax.random.normal(key, batch["x"].shape)}


def test_each_epoch_visits_every_row_once_in_a_fresh_order():
    pipeline = Pipeline(rows_source(50), 8, seed=3, prefetch=0)
    assert pipeline.steps_per_epoch == 6  # the last 2 rows of each epoch's order are left out
    batches = take(pipeline.iterate(), 18)
    epochs = [np.concatenate([b["i"] for b in batches[e * 6:(e + 1) * 6]]) for e in range(3)]
    for order in epochs:
        assert len(set(order.tolist())) == 48
    assert not np.array_equal(epochs[0], epochs[1])
    assert set().union(*map(set, epochs)) == set(range(50))  # left-out rows change every epoch
    assert batches[0]["x"].dtype == np.float32  # float64 rows become float32 on the device
    np.testing.assert_array_equal(batches[0]["x"][:, 0], batches[0]["i"] * 3)

    same = take(Pipeline(rows_source(50), 8, seed=3, prefetch=0).iterate(), 6)
    other = take(Pipeline(rows_source(50), 8, seed=4, prefetch=0).iterate(), 6)
    assert all(np.array_equal(a["i"], b["i"]) for a, b in zip(batches, same))
    assert not all(np.array_equal(a["i"], b["i"]) for a, b in zip(batches, other))
    unshuffled = take(Pipeline(rows_source(50), 8, shuffle=False, prefetch=0).iterate(), 7)
    np.testing.assert_array_equal(np.concatenate([b["i"] for b in unshuffled[:6]]), np.arange(48))
    np.testing.assert_array_equal(unshuffled[6]["i"], np.arange(8))


def test_restart_at_a_position_continues_exactly_with_prefetch_and_augmentation():
    pipeline = Pipeline(rows_source(50), 8, seed=1, augment=[jitter], prefetch=2)
    whole = take(pipeline.iterate(), 15)
    assert pipeline.position_at(9) == Position(1, 3)
    restarted = Pipeline(rows_source(50), 8, seed=1, augment=[jitter], prefetch=0)
    iterator = restarted.iterate(Position(1, 3))
    tail = take(iterator, 6)
    assert iterator.position == Position(2, 3)
    for a, b in zip(whole[9:], tail):
        np.testing.assert_array_equal(a["i"], b["i"])
        np.testing.assert_array_equal(a["x"], b["x"])
    # The augmentation really ran, with a different draw for every batch.
    assert not np.allclose(whole[0]["x"][:, 0], whole[0]["i"] * 3)
    noise = [b["x"] - 3 * b["i"][:, None] - np.arange(3) for b in whole[:2]]
    assert not np.allclose(noise[0], noise[1])
    assert not [t for t in threading.enumerate() if t.name == "wsl-prefetch"]


def test_batches_are_placed_with_the_sharding():
    sharding = NamedSharding(make_mesh(("data",)), P("data"))
    pipeline = Pipeline(rows_source(50), 8, augment=[jitter])
    with pipeline.iterate(sharding=sharding) as batches:
        batch = next(batches)
    assert batch["x"].sharding == sharding and batch["i"].sharding == sharding


def test_errors_name_the_field_or_size_at_fault():
    with pytest.raises(PipelineError, match=r"same leading row axis.*'x': 5.*'y': 4"):
        ArraySource({"x": np.zeros(5), "y": np.zeros(4)})
    with pytest.raises(PipelineError, match="batch_size=64 is larger than the 50 rows"):
        Pipeline(rows_source(50), 64)
    with pytest.raises(PipelineError, match="not a row source"):
        Pipeline([1, 2, 3], 1)
    with pytest.raises(PipelineError, match=r"position \(0, 6\) is outside .* 6 batches"):
        Pipeline(rows_source(50), 8).iterate(Position(0, 6))
    text = ArraySource({"x": np.zeros((10, 2)), "name": np.array(["relu"] * 10)})
    with pytest.raises(PipelineError, match="field 'name' holds <U4 values"):
        take(Pipeline(text, 5, prefetch=0).iterate(), 1)

    class Short(ArraySource):
        def get(self, rows):
            return {"w": {"kernel": np.zeros((len(rows) - 1, 2))}}

    with pytest.raises(PipelineError, match=r"field 'w/kernel' with shape \(4, 2\) for 5 rows"):
        take(Pipeline(Short({"x": np.zeros(10)}), 5, prefetch=2).iterate(), 1)


def test_a_failing_source_raises_in_the_consumer_and_stops_the_thread():
    class Broken(ArraySource):
        def get(self, rows):
            if 7 in rows:
                raise OSError("shard 3 is unreadable")
            return super().get(rows)

    iterator = Pipeline(Broken({"i": np.arange(16)}), 2, shuffle=False, prefetch=2).iterate()
    assert [int(np.asarray(next(iterator)["i"])[0]) for _ in range(3)] == [0, 2, 4]
    with pytest.raises(OSError, match="shard 3"):
        next(iterator)
    assert iterator._thread is None


# ---------------------------------------------------------------------------------------- zoos
@pytest.fixture(scope="module")
def population():
    """16 networks with generic weights (numpy draws and slices compile nothing, unlike a vmapped
    init)."""
    arch = build("mlp", input_shape=(8,), widths=(6, 5), num_classes=3)
    flat = np.random.default_rng(0).normal(size=(16, arch.num_params)).astype(np.float32)
    return arch, jax.tree.map(np.asarray, arch.weight_space.unflatten(flat)), flat


@pytest.mark.parametrize("field", ["params", "flat"])
def test_permutation_augmentation_keeps_each_network_function(population, field):
    arch, params, flat = population
    space = arch.weight_space
    pipeline = Pipeline(ArraySource({field: params if field == "params" else flat}), 8,
                        augment=[random_permutation(space)], prefetch=0)
    position = Position(0, 1)
    original = pipeline.host_batch(position)[field]
    augmented = jax.device_get(pipeline.device_batch(position)[field])
    as_tree = space.unflatten if field == "flat" else (lambda weights: weights)
    x = np.random.default_rng(1).normal(size=(5, 8)).astype(np.float32)
    outputs = jax.jit(lambda weights, x: jax.vmap(arch.apply, (0, None))(as_tree(weights), x)
                      ).lower(original, x).compile(compiler_options=FAST_COMPILE)
    np.testing.assert_allclose(outputs(augmented, x), outputs(original, x), atol=1e-5)
    moved = np.max([np.abs(a - b).reshape(8, -1).max(axis=1) for a, b in
                    zip(jax.tree.leaves(augmented), jax.tree.leaves(original))], axis=0)
    assert (moved > 1e-3).sum() >= 6  # hidden units really moved, by a fresh draw per network
    again = jax.device_get(pipeline.device_batch(position)[field])
    jax.tree.map(np.testing.assert_array_equal, again, augmented)


def test_permutation_augmentation_names_a_missing_field(population):
    arch = population[0]
    augment = random_permutation(arch.weight_space)
    with pytest.raises(WeightSpaceError, match=r"no field 'params or flat'.*\['x'\]"):
        augment(jax.random.key(0), {"x": np.zeros((2, 3))})


class FakeZoo:
    """The slice of the zoo store's API that ZooSource uses; records the rows it is asked for."""

    def __init__(self, params, flat):
        self.params, self.flat_rows, self.requests = params, flat, []
        n = jax.tree.leaves(params)[0].shape[0]
        self.metrics = {"test_acc": np.linspace(0, 1, n), "activation": np.array(["relu"] * n)}

    def __len__(self):
        return len(self.metrics["test_acc"])

    def weights(self, rows):
        self.requests.append(np.asarray(rows))
        return jax.tree.map(lambda a: a[rows], self.params)

    def flat(self, rows):
        self.requests.append(np.asarray(rows))
        return self.flat_rows[rows]


def test_zoo_source_reads_rows_in_order_and_returns_the_batch_order(population):
    arch, params, flat = population
    zoo = FakeZoo(params, flat)
    rows = np.array([9, 2, 14, 5])
    batch = ZooSource(zoo, columns=("test_acc",)).get(rows)
    np.testing.assert_array_equal(zoo.requests[-1], np.sort(rows))
    np.testing.assert_allclose(batch["flat"], flat[rows])
    np.testing.assert_allclose(batch["test_acc"], zoo.metrics["test_acc"][rows])
    tree = ZooSource(zoo, flat=False).get(rows)["params"]
    np.testing.assert_array_equal(tree["dense_1"]["kernel"], params["dense_1"]["kernel"][rows])
    with pytest.raises(PipelineError, match="no metric column 'val_tau'"):
        ZooSource(zoo, columns=("val_tau",))
    with pytest.raises(PipelineError, match="'activation' holds text"):
        ZooSource(zoo, columns=("activation",))


@pytest.mark.eight_devices
def test_eight_devices_batches_are_split_over_the_mesh(population):
    arch, params, _ = population
    mesh = make_mesh(("data", "fsdp"), (4, 2))
    sharding = NamedSharding(mesh, P(("data", "fsdp")))
    pipeline = Pipeline(ArraySource({"params": params}), 16,
                        augment=[random_permutation(arch.weight_space)])
    with pipeline.iterate(sharding=sharding) as batches:
        batch = next(batches)
    for leaf in jax.tree.leaves(batch):
        assert leaf.sharding == sharding
        assert {shard.data.shape[0] for shard in leaf.addressable_shards} == {2}
