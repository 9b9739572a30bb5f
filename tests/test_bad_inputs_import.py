"""Bad inputs to `wsl zoo import` and to single-model files (issue 23): each case exits with the
right code, prints one line naming the fault and no traceback, and writes nothing it should not."""

import csv
import io
import json
import os
import pickle
import re
import stat
import warnings
import zipfile
from pathlib import Path

import jax
import numpy as np
import pytest

from tests.cli import run_wsl
from wsl.errors import WslError
from wsl.outputs import OutputError
from wsl.zoos.architectures import build
from wsl.zoos.errors import MissingPathError, ModelFileError, ZooError
from wsl.zoos.importers import import_checkpoints, import_model_zoos, import_small_cnn_zoo
from wsl.zoos.model_files import load_model, save_model
from wsl.zoos.torch_pickle import UnsafeCheckpointError, load_torch_checkpoint

MLP = build("mlp", widths=(8,))
MLP_ARGS = ["--arch", "mlp", "--arch-config", '{"widths": [8]}']


def _import(fmt, src, out, *extra):
    return ["zoo", "import", "--format", fmt, src, "--out", out, "--no-progress", *extra]


def _mlp_state(dtype=np.float32):
    rng = np.random.default_rng(0)
    return {t.path: rng.normal(size=t.shape).astype(dtype) for t in MLP.weight_space.tensors}


class _Payload:
    """Unpickling this would run `touch PWNED` in the current folder."""

    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def _evil_checkpoint(path):
    buffer = io.BytesIO()
    pickle.dump({"module_list.0.weight": _Payload()}, buffer, protocol=2)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("ck/data.pkl", buffer.getvalue())
        archive.writestr("ck/byteorder", "little")


def _edit_csv(path, edit):
    rows = list(csv.reader(open(path, newline="")))
    edit(rows)
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)


@pytest.fixture
def writers(write_small_cnn_zoo, write_model_zoos_trial):
    """The conftest writers, small: a 2-model Small CNN Zoo (plain metrics.csv), a 1-epoch trial."""

    class Writers:
        def small_cnn(self, directory):
            write_small_cnn_zoo(directory, num_models=2, gz=False)
            return directory

        def trial(self, root, name="t0"):
            write_model_zoos_trial(root / name, build("cnn_s"), jax.random.key(0), epochs=(1,))
            return root

    return Writers()


# ---------------------------------------------------------------- one bad input per case
def overlapping_layout(tmp, w):  # conv2d/bias moved inside conv2d/kernel's range
    src = w.small_cnn(tmp / "src")

    def edit(rows):
        bias, kernel = rows[1], rows[2]
        bias[1], bias[2] = kernel[1], str(int(kernel[1]) + int(bias[3]))
    _edit_csv(src / "layout.csv", edit)
    return _import("small-cnn-zoo", src, tmp / "out")


def gap_in_layout(tmp, w):  # the dense kernel shifted right by one: a gap
    src = w.small_cnn(tmp / "src")

    def edit(rows):
        rows[-1][1], rows[-1][2] = str(int(rows[-1][1]) + 1), str(int(rows[-1][2]) + 1)
    _edit_csv(src / "layout.csv", edit)
    return _import("small-cnn-zoo", src, tmp / "out")


def layout_size_column(tmp, w):
    src = w.small_cnn(tmp / "src")
    _edit_csv(src / "layout.csv", lambda rows: rows[1].__setitem__(3, "15"))
    return _import("small-cnn-zoo", src, tmp / "out")


def layout_index_not_a_number(tmp, w):
    src = w.small_cnn(tmp / "src")
    _edit_csv(src / "layout.csv", lambda rows: rows[2].__setitem__(1, "x16"))
    return _import("small-cnn-zoo", src, tmp / "out")


def metrics_not_a_number(tmp, w):
    src = w.small_cnn(tmp / "src")

    def edit(rows):
        rows[3][rows[0].index("test_accuracy")] = "oops"
    _edit_csv(src / "metrics.csv", edit)
    return _import("small-cnn-zoo", src, tmp / "out")


def weights_not_float(tmp, w):
    src = w.small_cnn(tmp / "src")
    np.save(src / "weights.npy", np.load(src / "weights.npy").astype(np.int64))
    return _import("small-cnn-zoo", src, tmp / "out")


def checkpoint_int64(tmp, w):
    np.savez(tmp / "src" / "m.npz", **_mlp_state(np.int64))
    return _import("checkpoints", tmp / "src", tmp / "out", *MLP_ARGS)


def checkpoint_strings(tmp, w):
    state = {k: np.full(v.shape, "a") for k, v in _mlp_state().items()}
    np.savez(tmp / "src" / "m.npz", **state)
    return _import("checkpoints", tmp / "src", tmp / "out", *MLP_ARGS)


def checkpoint_objects(tmp, w):
    state = {k: np.full(v.shape, None, dtype=object) for k, v in _mlp_state().items()}
    np.savez(tmp / "src" / "m.npz", **state)
    return _import("checkpoints", tmp / "src", tmp / "out", *MLP_ARGS)


def checkpoint_extra_tensor(tmp, w):
    np.savez(tmp / "src" / "m.npz", optimizer_step=np.zeros(1, np.float32), **_mlp_state())
    return _import("checkpoints", tmp / "src", tmp / "out", *MLP_ARGS)


def checkpoint_wrong_names(tmp, w):
    np.savez(tmp / "src" / "m.npz", foo=np.zeros(3, np.float32))
    return _import("checkpoints", tmp / "src", tmp / "out", *MLP_ARGS)


def checkpoint_malicious_pickle(tmp, w):
    _evil_checkpoint(tmp / "src" / "m.pt")
    return _import("checkpoints", tmp / "src", tmp / "out", *MLP_ARGS)


def trial_malicious_pickle(tmp, w):
    src = w.trial(tmp / "src")
    _evil_checkpoint(src / "t0" / "checkpoint_000001" / "checkpoints")
    return _import("model-zoos", src, tmp / "out")


def trial_result_value(tmp, w):
    src = w.trial(tmp / "src")
    (src / "t0" / "result.json").write_text('{"training_iteration": 1, "train_acc": "abc"}\n')
    return _import("model-zoos", src, tmp / "out")


def trial_int_tensor(tmp, w):
    from wsl.zoos.torch_pickle import write_torch_checkpoint

    src = w.trial(tmp / "src")
    file = src / "t0" / "checkpoint_000001" / "checkpoints"
    state = load_torch_checkpoint(file)
    state["module_list.0.bias"] = state["module_list.0.bias"].astype(np.int64)
    write_torch_checkpoint(file, state)
    return _import("model-zoos", src, tmp / "out")


def missing_small_cnn_source(tmp, w):
    return _import("small-cnn-zoo", tmp / "nope", tmp / "out")


def missing_model_zoos_source(tmp, w):
    return _import("model-zoos", tmp / "nope", tmp / "out")


def missing_checkpoint_source(tmp, w):
    return _import("checkpoints", tmp / "nope", tmp / "out", *MLP_ARGS)


def out_is_a_file(tmp, w):
    (tmp / "out").write_text("precious")
    return _import("small-cnn-zoo", w.small_cnn(tmp / "src"), tmp / "out")


def out_inside_a_zoo(tmp, w):
    np.savez(tmp / "src" / "m.npz", **_mlp_state())
    assert run_wsl(_import("checkpoints", tmp / "src", tmp / "zoo", *MLP_ARGS))[0] == 0
    return _import("checkpoints", tmp / "src", tmp / "zoo" / "shards" / "new", *MLP_ARGS)


CASES = [  # (make the bad input and return argv, exit code, what the one line must say)
    pytest.param(overlapping_layout, 1, r"layout\.csv: .*kernel.* overlaps .*conv2d/bias",
                 id="layout-overlap"),
    pytest.param(gap_in_layout, 1, r"layout\.csv: entries \[4810, 4811\) .* belong to no variable",
                 id="layout-gap"),
    pytest.param(layout_size_column, 1, r"layout\.csv: line 2: .* has size 15", id="layout-size"),
    pytest.param(layout_index_not_a_number, 1, r"layout\.csv: line 3: start_idx 'x16'",
                 id="layout-index-text"),
    pytest.param(metrics_not_a_number, 1,
                 r"metrics\.csv: column 'test_accuracy', row 3 \(line 4\) holds 'oops'",
                 id="metrics-oops"),
    pytest.param(weights_not_float, 1, r"weights\.npy: holds int64", id="weights-int"),
    pytest.param(checkpoint_int64, 1, r"m\.npz: tensor 'dense_0/kernel' has dtype int64",
                 id="checkpoint-int64"),
    pytest.param(checkpoint_strings, 1, r"m\.npz: tensor 'dense_0/kernel' has dtype <U1",
                 id="checkpoint-strings"),
    pytest.param(checkpoint_objects, 1, r"m\.npz: cannot read as npz", id="checkpoint-objects"),
    pytest.param(checkpoint_extra_tensor, 1,
                 r"m\.npz: 1 tensors are not in mlp's weight space: \[optimizer_step\]",
                 id="checkpoint-extra"),
    pytest.param(checkpoint_wrong_names, 1,
                 r"m\.npz: .*JAX names \[dense_0/kernel.*PyTorch names \[dense_0\.weight.*"
                 r"found \[foo\]", id="checkpoint-names"),
    pytest.param(checkpoint_malicious_pickle, 1, r"m\.pt: refusing to load global .*system",
                 id="checkpoint-pickle"),
    pytest.param(trial_malicious_pickle, 1, r"checkpoints: refusing to load global .*system",
                 id="trial-pickle"),
    pytest.param(trial_result_value, 1, r"t0/result\.json: line 1: train_acc is 'abc'",
                 id="trial-result-value"),
    pytest.param(trial_int_tensor, 1, r"checkpoints: tensor module_list\.0\.bias holds int64",
                 id="trial-int-tensor"),
    pytest.param(missing_small_cnn_source, 1, r"nope: the Small CNN Zoo source directory does "
                 r"not exist", id="missing-source-small-cnn"),
    pytest.param(missing_model_zoos_source, 1, r"nope: the Model Zoos source directory does not "
                 r"exist", id="missing-source-model-zoos"),
    pytest.param(missing_checkpoint_source, 1, r"nope: the checkpoint source directory does not "
                 r"exist", id="missing-source-checkpoints"),
    pytest.param(out_is_a_file, 1, r"--out .*out is a file, not a directory", id="out-file"),
    pytest.param(out_inside_a_zoo, 1, r"--out .*new is inside the zoo", id="out-in-zoo"),
]


@pytest.mark.parametrize("make,code,message", CASES)
def test_bad_import_is_one_line(tmp_path, monkeypatch, writers, make, code, message):
    monkeypatch.chdir(tmp_path)  # where a pickle payload would write PWNED
    (tmp_path / "src").mkdir()
    argv = make(tmp_path, writers)
    out_dir = Path(argv[argv.index("--out") + 1])
    existed = out_dir.exists()
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    got, out, err = run_wsl(argv)
    assert got == code, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wsl zoo: error: "), err
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "PWNED").exists()  # a pickle's payload never runs
    # Nothing left behind: no output folder (the failed import removed what it created) and
    # every file that was there is byte-identical.
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before and out_dir.exists() == existed


# ------------------------------------------------------------------ cases that are not errors
def test_nan_weights_are_flagged_diverged_and_counted(tmp_path, writers):
    src = writers.small_cnn(tmp_path / "src")
    weights = np.load(src / "weights.npy")
    weights[1, 5] = np.nan  # row 1: finite losses, a NaN weight
    np.save(src / "weights.npy", weights)
    with pytest.warns(UserWarning, match=r"1 of 4 rows have non-finite weights or losses"):
        zoo = import_small_cnn_zoo(src, tmp_path / "zoo", progress=False)
    assert zoo.metrics["diverged"].astype(bool).tolist() == [False, True, False, False]


def test_nan_weights_in_checkpoints_and_trials(tmp_path, writers):
    state = _mlp_state()
    state["dense_1/bias"][0] = np.inf
    (tmp_path / "src").mkdir()
    np.savez(tmp_path / "src" / "a.npz", **_mlp_state())
    np.savez(tmp_path / "src" / "b.npz", **state)
    with pytest.warns(UserWarning, match=r"1 of 2 rows"):
        zoo = import_checkpoints(tmp_path / "src", tmp_path / "zoo", architecture="mlp",
                                 config={"widths": (8,)}, progress=False)
    assert zoo.metrics["diverged"].astype(bool).tolist() == [False, True]
    src = writers.trial(tmp_path / "trials")
    (src / "t0" / "result.json").write_text(
        '{"training_iteration": 1, "train_loss": NaN, "test_loss": 1.0}\n')
    with pytest.warns(UserWarning, match=r"1 of 1 rows"):
        zoo = import_model_zoos(src, tmp_path / "trials_zoo", progress=False)
    assert zoo.metrics["diverged"].astype(bool).tolist() == [True]


def test_extra_tensors_are_refused_or_named(tmp_path):
    (tmp_path / "src").mkdir()
    np.savez(tmp_path / "src" / "m.npz", optimizer_step=np.zeros(1, np.float32),
             **_mlp_state(np.float64))
    with pytest.raises(ModelFileError, match=r"optimizer_step"):
        import_checkpoints(tmp_path / "src", tmp_path / "refused", architecture="mlp",
                           config={"widths": (8,)}, progress=False)
    assert not (tmp_path / "refused").exists()
    with pytest.warns(UserWarning, match=r"ignored tensors .*optimizer_step \(1 files\)"):
        zoo = import_checkpoints(tmp_path / "src", tmp_path / "zoo", architecture="mlp",
                                 config={"widths": (8,)}, ignore_extra=True, progress=False)
    assert zoo.flat().dtype == np.float32  # float64 files are stored as float32
    with pytest.warns(UserWarning, match=r"m\.npz: 1 tensors are not in the weight space"):
        load_model(tmp_path / "src" / "m.npz", MLP.weight_space)
    with pytest.raises(ModelFileError, match="optimizer_step"):
        load_model(tmp_path / "src" / "m.npz", MLP.weight_space, extra="error")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_model(tmp_path / "src" / "m.npz", MLP.weight_space, extra="ignore")


def test_failed_import_leaves_nothing_and_retry_works(tmp_path):
    (tmp_path / "src").mkdir()
    np.savez(tmp_path / "src" / "a.npz", **_mlp_state())
    np.savez(tmp_path / "src" / "b.npz", **_mlp_state(np.int64))  # fails after the writer starts
    kwargs = dict(architecture="mlp", config={"widths": (8,)}, models_per_shard=1, progress=False)
    with pytest.raises(ModelFileError, match=r"b\.npz"):
        import_checkpoints(tmp_path / "src", tmp_path / "new", **kwargs)
    assert not (tmp_path / "new").exists()  # created by the import: removed
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFileError):
        import_checkpoints(tmp_path / "src", tmp_path / "empty", **kwargs)
    assert (tmp_path / "empty").is_dir() and not any((tmp_path / "empty").iterdir())
    (tmp_path / "src" / "b.npz").unlink()  # fixed: a retry with other options now works
    zoo = import_checkpoints(tmp_path / "src", tmp_path / "new", **{**kwargs,
                                                                    "models_per_shard": 4})
    assert len(zoo) == 1
    # A folder that already held something is never removed.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(ZooError, match="not empty"):
        import_checkpoints(tmp_path / "src", tmp_path / "mine", **kwargs)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_output_checked_before_anything_is_written(tmp_path, writers):
    src = writers.small_cnn(tmp_path / "src")
    (tmp_path / "file").write_text("precious")
    for importer, source, kwargs in [
            (import_small_cnn_zoo, src, {}), (import_model_zoos, tmp_path / "none", {}),
            (import_checkpoints, tmp_path / "none", {"architecture": "mlp"})]:
        with pytest.raises(OutputError, match="is a file"):
            importer(source, tmp_path / "file", progress=False, **kwargs)
    assert (tmp_path / "file").read_text() == "precious"
    with pytest.raises(MissingPathError, match="does not exist"):
        import_small_cnn_zoo(tmp_path / "none", tmp_path / "zoo", progress=False)
    assert issubclass(MissingPathError, FileNotFoundError) and issubclass(MissingPathError,
                                                                          WslError)


def test_unsafe_checkpoint_error_is_a_model_file_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _evil_checkpoint(tmp_path / "evil.pt")
    with pytest.raises(UnsafeCheckpointError) as info:
        load_torch_checkpoint(tmp_path / "evil.pt")
    assert isinstance(info.value, ModelFileError) and isinstance(info.value, pickle.PickleError)
    with pytest.raises(UnsafeCheckpointError):
        load_model(tmp_path / "evil.pt", MLP.weight_space)
    assert not (tmp_path / "PWNED").exists()


def test_tensor_outside_its_storage_is_refused(tmp_path):
    """A hostile size or stride would read memory past the storage: refused before viewing."""
    from wsl.zoos import torch_pickle as tp

    for shape, stride in [((1_000_000,), (1,)), ((2, 2), (0, 5)), ((-1,), (1,))]:
        buffer = io.BytesIO()
        tensor = tp._Tensor(tp._Storage("FloatStorage", "0", 4), shape, stride)
        tp._TorchLikePickler(buffer, protocol=2).dump({"w": tensor})
        with zipfile.ZipFile(tmp_path / "big.pt", "w") as archive:
            archive.writestr("ck/data.pkl", buffer.getvalue())
            archive.writestr("ck/data/0", np.zeros(4, "<f4").tobytes())
        with pytest.raises(ModelFileError, match=r"big\.pt: damaged checkpoint"):
            load_torch_checkpoint(tmp_path / "big.pt")


def test_saved_model_files_respect_the_umask(tmp_path):
    params = {t.path: v for t, v in zip(MLP.weight_space.tensors, _mlp_state().values())}
    from wsl.weight_space import nest_paths

    old = os.umask(0o022)
    try:
        for suffix in (".safetensors", ".npz", ".msgpack", ".pt"):
            path = save_model(tmp_path / f"m{suffix}", MLP.weight_space, nest_paths(params))
            assert stat.S_IMODE(path.stat().st_mode) == 0o644, suffix
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.msgpack", "m.npz", "m.pt",
                                                          "m.safetensors"]  # no temp files
    with pytest.raises(ModelFileError, match=r"suffix \.safetensors means safetensors"):
        save_model(tmp_path / "x.safetensors", MLP.weight_space, nest_paths(params), format="npz")
    assert not (tmp_path / "x.safetensors").exists()


def test_json_files_of_a_trial_name_the_file(tmp_path, writers):
    src = writers.trial(tmp_path / "src")
    (src / "t0" / "params.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(ZooError, match=r"params\.json: not UTF-8"):
        import_model_zoos(src, tmp_path / "zoo", progress=False)
    (src / "t0" / "params.json").write_text(json.dumps({"optim::lr": [1, 2]}))
    with pytest.raises(ZooError, match=r"params\.json: optim::lr is \[1, 2\]"):
        import_model_zoos(src, tmp_path / "zoo", progress=False)
    assert not (tmp_path / "zoo").exists()
