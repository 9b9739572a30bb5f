"""`wsl zoo import`: each published format becomes a wsl zoo with the same weights and metrics."""

import jax
import numpy as np

from wsl.zoos.architectures import build
from wsl.zoos.importers import import_zoo
from wsl.zoos.model_files import save_model


def test_small_cnn_zoo_import(tmp_path, write_small_cnn_zoo):
    flat = write_small_cnn_zoo(tmp_path / "src", num_models=5)
    zoo = import_zoo("small-cnn-zoo", tmp_path / "src", tmp_path / "zoo", rows_per_shard=4,
                     progress=False)
    assert len(zoo) == 10 and zoo.architecture.name == "small_cnn"
    np.testing.assert_array_equal(zoo.flat(), flat)
    assert zoo.metrics["model"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    last = import_zoo("small-cnn-zoo", tmp_path / "src", tmp_path / "last", step=86, progress=False)
    assert len(last) == 5 and (last.metrics["epoch"] == 86).all()


def test_model_zoos_import(tmp_path, write_model_zoos_trial):
    arch = build("cnn_s")
    saved = [write_model_zoos_trial(tmp_path / "src" / f"trial_{i}", arch, jax.random.key(i))
             for i in range(3)]
    zoo = import_zoo("model-zoos", tmp_path / "src", tmp_path / "zoo", models_per_shard=2,
                     progress=False)
    assert len(zoo) == 9 and zoo.architecture.num_params == 2464
    row = int(np.flatnonzero((zoo.metrics["model"] == 2) & (zoo.metrics["epoch"] == 1))[0])
    np.testing.assert_array_equal(zoo.flat([row])[0], arch.weight_space.flatten(saved[2][1]))
    assert zoo.metrics["test_acc"][row] == 0.5 and zoo.metrics["activation"][row] == "tanh"


def test_checkpoint_folder_import(tmp_path):
    arch = build("mlp", widths=(8,))
    pop = [arch.init(jax.random.key(i)) for i in range(3)]
    for i, (p, suffix) in enumerate(zip(pop, (".safetensors", ".npz", ".pt"))):
        save_model(tmp_path / "src" / f"m{i}{suffix}", arch.weight_space, p)
    zoo = import_zoo("checkpoints", tmp_path / "src", tmp_path / "zoo", architecture="mlp",
                     config={"widths": (8,)}, progress=False)
    assert zoo.metrics["file"].tolist() == ["m0.safetensors", "m1.npz", "m2.pt"]
    for i, p in enumerate(pop):
        np.testing.assert_array_equal(zoo.flat([i])[0], arch.weight_space.flatten(p))


def test_import_command_and_info(tmp_path, capsys, write_small_cnn_zoo):
    from wsl.commands import main

    write_small_cnn_zoo(tmp_path / "src", num_models=3)
    assert main(["zoo", "import", "--format", "small-cnn-zoo", str(tmp_path / "src"),
                 "--out", str(tmp_path / "zoo"), "--no-progress"]) == 0
    assert main(["zoo", "info", str(tmp_path / "zoo")]) == 0
    assert "small_cnn" in capsys.readouterr().out
    assert main(["zoo", "import", "--format", "model-zoos", str(tmp_path / "missing"),
                 "--out", str(tmp_path / "z2")]) == 1
    assert "source directory does not exist" in capsys.readouterr().err
