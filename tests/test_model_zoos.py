"""Model Zoos trial folders: state dicts onto CNN-s, every epoch a row, errors naming files."""

import jax
import numpy as np
import pytest

from wsl.zoos.architectures import build
from wsl.zoos.model_zoos import read_trial, trial_folders
from wsl.zoos.torch_pickle import write_torch_checkpoint


def test_trial_rows_and_weights(tmp_path, write_model_zoos_trial):
    arch = build("cnn_s")
    saved = write_model_zoos_trial(tmp_path / "zoo" / "trial_0", arch, jax.random.key(0))
    (tmp_path / "zoo" / "not_a_trial").mkdir()
    assert [p.name for p in trial_folders(tmp_path / "zoo")] == ["trial_0"]
    found, rows = read_trial(tmp_path / "zoo" / "trial_0")
    assert found.num_params == 2464
    assert [e for e, _, _ in rows] == [0, 1, 2]
    for epoch, params, row in rows:
        np.testing.assert_array_equal(arch.weight_space.flatten(params),
                                      arch.weight_space.flatten(saved[epoch]))
    assert rows[2][2]["test_acc"] == pytest.approx(0.6) and rows[2][2]["gap"] == pytest.approx(0.1)
    assert np.isnan(rows[0][2]["test_acc"])  # epoch 0 has no result line
    assert rows[1][2]["activation"] == "tanh" and rows[1][2]["lr"] == 3e-4


def test_real_torch_checkpoints(tmp_path, write_model_zoos_trial):
    torch = pytest.importorskip("torch", reason="torch extra not installed")
    arch = build("cnn_s")
    save = lambda path, state: torch.save({k: torch.tensor(v) for k, v in state.items()}, path)
    saved = write_model_zoos_trial(tmp_path / "trial", arch, jax.random.key(1), epochs=(1,),
                                   saver=save)
    _, rows = read_trial(tmp_path / "trial")
    np.testing.assert_array_equal(arch.weight_space.flatten(rows[0][1]),
                                  arch.weight_space.flatten(saved[1]))


def test_broken_trials_name_the_file(tmp_path, write_model_zoos_trial, model_zoos_state):
    arch = build("cnn_s")
    write_model_zoos_trial(tmp_path / "t", arch, jax.random.key(0), epochs=(1,))
    (tmp_path / "t" / "result.json").unlink()
    with pytest.raises(FileNotFoundError, match="result.json"):
        read_trial(tmp_path / "t")
    (tmp_path / "t" / "result.json").write_text('{"train_acc": 0.3}\n')
    with pytest.raises(ValueError, match=r"result.json: line 1"):
        read_trial(tmp_path / "t")
    (tmp_path / "t" / "result.json").write_text("")
    state = model_zoos_state(arch, arch.init(jax.random.key(0)))
    state["module_list.9.weight"] = state["module_list.9.weight"][:, :30]
    write_torch_checkpoint(tmp_path / "t" / "checkpoint_000001" / "checkpoints", state)
    with pytest.raises(ValueError, match="checkpoint_000001"):
        read_trial(tmp_path / "t")
