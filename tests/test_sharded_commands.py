"""`wsl probe`, `wsl gen train` and `wsl transfer` end to end on 8 devices, as a user would
run them with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``: each command names its
mesh, finishes (no collective left waiting for a device), and matches the same command on one
device.

Marked `eight_devices`: tests/test_eight_devices.py runs them in its 8-device subprocess.
"""

import json

import jax
import numpy as np
import pytest

from wsl.commands import main

pytestmark = pytest.mark.eight_devices


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    out = tmp_path_factory.mktemp("sharded") / "zoo"
    assert main(["zoo", "build", "quick", "--out", str(out), "--no-progress",
                 "num_models=16", "epochs=1"]) == 0
    return out


def _run(capsys, argv) -> str:
    assert main(argv) == 0
    return capsys.readouterr().out


def test_probe_runs_on_eight_devices_like_on_one(zoo, tmp_path, capsys):
    assert jax.device_count() == 8
    common = ["probe", "--zoo", str(zoo), "--encoder", "statnn", "--no-progress",
              "train.steps=30", "train.batch_size=8"]
    eight = _run(capsys, [*common, "--out", str(tmp_path / "eight")])
    one = _run(capsys, [*common, "--out", str(tmp_path / "one"), "train.mesh.data=1"])
    assert "mesh: data=8 × fsdp=1 over 8 cpu devices" in eight
    assert "mesh: 1 device (cpu)" in one
    runs = [json.loads((tmp_path / name / "results.json").read_text())["runs"][0]
            for name in ("eight", "one")]
    np.testing.assert_allclose(runs[0]["prediction"], runs[1]["prediction"], rtol=1e-3,
                               atol=1e-4)


def test_generator_trains_on_eight_devices_like_on_one(zoo, tmp_path, capsys):
    common = ["gen", "train", "--zoo", str(zoo), "--no-progress", "hidden=32", "depth=1",
              "train.steps=20", "train.batch_size=8", "train.log.every=10"]
    eight = _run(capsys, [*common, "--out", str(tmp_path / "eight")])
    one = _run(capsys, [*common, "--out", str(tmp_path / "one"), "train.mesh.data=1"])
    assert "mesh: data=8 × fsdp=1 over 8 cpu devices" in eight
    assert "mesh: 1 device (cpu)" in one
    logs = [(tmp_path / name / "generator" / "metrics.jsonl").read_text().splitlines()
            for name in ("eight", "one")]
    losses = [[json.loads(line)["train/loss"] for line in log if "train/loss" in line]
              for log in logs]
    assert len(losses[0]) == 2
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-4)


def test_transfer_fine_tunes_on_eight_devices_like_on_one(tmp_path, capsys):
    """The fine-tuned networks are sharded over the 8 devices (padded to a multiple of 8); every
    network's learning curve is the one it gets on one device."""
    from wsl.mesh import make_mesh
    from wsl.train.transfer import TransferConfig, transfer

    zoo, gen = tmp_path / "zoo", tmp_path / "gen"
    assert main(["zoo", "build", "digits-tasks", "--out", str(zoo), "--no-progress",
                 "num_models=8", "epochs=1", "checkpoints=[0,1]", "models_per_shard=8"]) == 0
    assert main(["gen", "train", "--zoo", str(zoo), "--out", str(gen), "--no-progress",
                 "condition_task=true", "hidden=16", "depth=1", "train.steps=10"]) == 0
    manifest = json.loads((zoo / "manifest.json").read_text())
    task = next(t["spec"] for t in manifest["tasks"]["table"] if t["split"] == "heldout")
    capsys.readouterr()
    printed = _run(capsys, ["transfer", "--generator", str(gen), "--task", task, "--samples", "3",
                            "--epochs", "2", "--out", str(tmp_path / "eight"), "--no-progress"])
    assert "mesh: models=8 over 8 cpu devices (fine-tuning" in printed
    eight = json.loads((tmp_path / "eight" / "transfer.json").read_text())["curves"]
    config = TransferConfig(samples=3, epochs=2)
    one = transfer(str(gen), task, config, progress=False,
                   mesh=make_mesh(("models",), devices=jax.devices()[:1]))["curves"]
    assert set(one) == set(eight)
    for name in one:
        np.testing.assert_allclose(eight[name]["val_acc"], one[name]["val_acc"], atol=1e-6,
                                   err_msg=name)
        np.testing.assert_allclose(eight[name]["test_acc_final"], one[name]["test_acc_final"],
                                   atol=1e-6, err_msg=name)
