"""Bad inputs to the zoo store and `wsl zoo` (issue 23): every case exits with the right code,
prints one line naming the fault and no traceback, and leaves every file it found as it was."""

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest

from tests.cli import run_wsl
from wsl.commands import main as wsl
from wsl.errors import WslError
from wsl.zoos.recipes import RECIPES, get_recipe
from wsl.zoos.store import Zoo, ZooError, open_zoo


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """4 untrained quick MLPs (epochs=0: one row per model), built through the CLI."""
    out = tmp_path_factory.mktemp("bad") / "zoo"
    argv = ["zoo", "build", "quick", "--out", str(out), "--num-models", "4", "epochs=0",
            "--no-progress"]
    handler = signal.getsignal(signal.SIGINT)
    code, _, err = run_wsl(argv)
    assert code == 0, err
    assert "note: epochs=0: no training" in err  # allowed, but said
    assert signal.getsignal(signal.SIGINT) is handler  # the build's Ctrl-C handler is gone
    return out


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file()
                                       else "dir")
            for p in sorted(root.rglob("*"))}


def _shard_file(zoo: Path, name="dense_0.kernel.npy") -> Path:
    return zoo / "shards" / "00000" / name


def _rerecord(zoo: Path, file: Path) -> None:
    """Record `file`'s new checksum and size in shard.json and the manifest (a forged edit)."""
    from wsl.zoos.store import sha256_file

    meta = {"sha256": sha256_file(file), "size": file.stat().st_size}
    info = json.loads((file.parent / "shard.json").read_text())
    info["files"][file.name].update(meta)
    (file.parent / "shard.json").write_text(json.dumps(info))
    manifest = json.loads((zoo / "manifest.json").read_text())
    manifest["shards"][0]["files"][file.name].update(meta)
    (zoo / "manifest.json").write_text(json.dumps(manifest))


def inject_nan(zoo: Path) -> None:
    file = _shard_file(zoo)
    array = np.load(file)
    array[0, 0, 0] = np.nan  # row 0 = model 0, not flagged diverged
    np.save(file, array)
    _rerecord(zoo, file)


def truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[:-100])


def flip_bit(file: Path) -> None:
    blob = bytearray(file.read_bytes())
    blob[-5] ^= 0x10
    file.write_bytes(bytes(blob))


def read_only(tmp: Path, monkeypatch) -> None:
    import wsl.outputs

    real = os.access
    monkeypatch.setattr(wsl.outputs.os, "access",
                        lambda p, mode: False if Path(p) == tmp / "ro" else real(p, mode))
    (tmp / "ro").mkdir()


# Placeholders: {zoo} the module's zoo, {copy} a copy of it to damage, {other} a second zoo,
# {tmp} a scratch folder holding a file `afile`, a folder `adir` and `existing.npz`.
SETUP = {
    "nan": lambda t, mp: inject_nan(t / "copy"),
    "rmshard": lambda t, mp: shutil.rmtree(t / "copy" / "shards" / "00000"),
    "truncate": lambda t, mp: truncate(_shard_file(t / "copy")),
    "flip": lambda t, mp: flip_bit(_shard_file(t / "copy")),
    "utf8": lambda t, mp: (t / "copy" / "manifest.json").write_bytes(
        b'{"schema_version": 1, "name": "\xff\xfe"}'),
    "metrics": lambda t, mp: (t / "copy" / "metrics.csv").write_bytes(
        (t / "copy" / "metrics.csv").read_bytes().replace(b"0.", b"9.", 1)),
    "metrics_dir": lambda t, mp: ((t / "copy" / "metrics.csv").unlink(),
                                  (t / "copy" / "metrics.csv").mkdir()),
    "ro": read_only,
}

CASES = [
    # id, setup, argv, exit code, message (regex)
    # data loss: refused before anything is written
    ("export-over-other-zoo-manifest", None, "zoo export {zoo} --model 0 --format npz --out "
     "{other}/manifest.json", 1, "already exists; pass --force"),
    ("export-force-into-other-zoo", None, "zoo export {zoo} --model 0 --format npz --out "
     "{other}/manifest.json --force", 1, "inside the zoo"),
    ("export-new-file-into-zoo", None, "zoo export {zoo} --model 0 --out {other}/m.npz", 1,
     "inside the zoo"),
    ("export-suffix-contradicts-format", None, "zoo export {zoo} --model 0 --format npz --out "
     "{tmp}/x.safetensors", 2, r"suffix \.safetensors says safetensors.*npz"),
    ("export-existing-file", None, "zoo export {zoo} --model 0 --out {tmp}/existing.npz", 1,
     "existing.npz already exists; pass --force"),
    ("export-out-is-directory", None, "zoo export {zoo} --model 0 --out {tmp}/adir", 1,
     "is a directory; give a file name"),
    ("export-missing-folder", None, "zoo export {zoo} --model 0 --out /nonexistent/dir/x."
     "safetensors", 1, "folder /nonexistent/dir does not exist"),
    ("export-non-finite-model", "nan", "zoo export {copy} --model 0 --out {tmp}/m.npz", 1,
     r"non-finite weights: 1 NaN/inf in dense_0/kernel.*--allow-non-finite"),
    ("build-inside-a-zoo", None, "zoo build quick --out {other}/shards/00002 --num-models 2", 1,
     "is inside the zoo"),
    ("build-out-is-a-file", None, "zoo build quick --out {tmp}/afile", 1, "is a file, not a "
     "directory"),
    ("build-read-only-folder", "ro", "zoo build quick --out {tmp}/ro/z", 1, "is not writable"),
    ("build-checkpoints-beyond-epochs", None, "zoo build small-cnn --out {tmp}/z epochs=3 "
     "checkpoints=[0,6]", 2, r"checkpoints: must be increasing epochs in \[0, epochs=3\]"),
    ("build-negative-width", None, "zoo build quick --out {tmp}/z arch={{'widths':[-3]}} "
     "--no-progress", 2, "widths"),
    ("build-unknown-dataset", None, "zoo build quick --out {tmp}/z dataset=nope", 1,
     "unknown dataset 'nope'"),
    ("import-arch-config-list", None, "zoo import --format checkpoints {tmp}/adir --out {tmp}/z "
     "--arch mlp --arch-config [1,2]", 2, "--arch-config must be a JSON object"),
    ("import-arch-config-negative-width", None, "zoo import --format checkpoints {tmp}/adir "
     "--out {tmp}/z --arch mlp --arch-config {{\"widths\":[-3]}}", 2, "--arch-config.*widths"),
    ("import-arch-config-not-json", None, "zoo import --format checkpoints {tmp}/adir --out "
     "{tmp}/z --arch mlp --arch-config {{bad", 2, "--arch-config .* is not valid JSON"),
    # damaged zoos: named, never read silently
    ("info-deleted-shard-folder", "rmshard", "zoo info {copy}", 1,
     r"shards/00000: missing \(shard folder"),
    ("info-truncated-shard", "truncate", "zoo info {copy}", 1,
     r"dense_0\.kernel\.npy: [\d,]+ bytes, the manifest records [\d,]+ \(truncated"),
    ("verify-bit-flipped-shard", "flip", "zoo verify {copy}", 1,
     r"dense_0\.kernel\.npy: checksum mismatch"),
    ("verify-nan-weights", "nan", "zoo verify {copy}", 1,
     r"1 rows hold NaN/inf weights but are not flagged diverged \(models \[0\]\)"),
    ("verify-deleted-shard-folder", "rmshard", "zoo verify {copy}", 1, r"00000/\S+: missing"),
    ("info-manifest-not-utf8", "utf8", "zoo info {copy}", 1, r"manifest\.json: not UTF-8"),
    ("info-damaged-metrics", "metrics", "zoo info {copy}", 1,
     r"metrics\.csv: checksum mismatch.*metrics table is damaged — rerun"),
    ("info-metrics-not-a-file", "metrics_dir", "zoo info {copy}", 1,
     r"metrics\.csv: not a regular file \(metrics table\)"),
    ("info-of-a-file", None, "zoo info {tmp}/afile", 1, "afile is a file, not a zoo directory"),
    # a missing command or subcommand is a usage error everywhere
    ("no-command", None, "", 2, "missing command"),
    ("no-zoo-subcommand", None, "zoo", 2, "required: SUBCOMMAND"),
]


@pytest.mark.parametrize("name,setup,argv,code,message", CASES, ids=[c[0] for c in CASES])
def test_bad_input(zoo, tmp_path, monkeypatch, name, setup, argv, code, message):
    shutil.copytree(zoo, tmp_path / "copy")
    shutil.copytree(zoo, tmp_path / "other")
    (tmp_path / "afile").write_text("not a zoo\n")
    (tmp_path / "adir").mkdir()
    (tmp_path / "existing.npz").write_bytes(b"precious")
    if setup:
        SETUP[setup](tmp_path, monkeypatch)
    before, zoo_before = _snapshot(tmp_path), _snapshot(zoo)
    args = argv.format(zoo=zoo, copy=tmp_path / "copy", other=tmp_path / "other",
                       tmp=tmp_path).split()
    got, out, err = run_wsl(args)
    assert got == code, (out, err)
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("wsl"), err
    assert ": error: " in lines[-1] and re.search(message, lines[-1]), err
    assert _snapshot(tmp_path) == before  # nothing written, nothing changed
    assert _snapshot(zoo) == zoo_before


def test_help_still_exits_zero(capsys):
    assert wsl(["--help"]) == 0 and wsl(["zoo", "--help"]) == 0
    assert "verify" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_overriding_epochs_trims_the_recipe_checkpoints(name):
    base = RECIPES[name]
    for epochs in (0, 1, 3, 12):
        notes = []
        recipe = get_recipe(name, [f"epochs={epochs}"], notes)
        expected = (tuple(c for c in base.checkpoints if c < epochs) + (epochs,)
                    if base.checkpoints else tuple(range(epochs + 1)))
        assert recipe.checkpoint_epochs == expected
        assert bool(notes) == (bool(base.checkpoints) and expected != base.checkpoints), notes
        if notes:
            assert f"epochs={epochs}" in notes[0] and str(list(expected)) in notes[0]
    with pytest.warns(UserWarning, match=r"checkpoints .* become \[0, 1\]"):
        assert get_recipe("mlp-mnist1d", ["epochs=1"]).checkpoint_epochs == (0, 1)


def test_trimmed_checkpoints_are_noted_on_the_command_line(tmp_path):
    (tmp_path / "afile").write_text("x")  # the build stops at --out, after the note
    code, _, err = run_wsl(["zoo", "build", "small-cnn", "--out", str(tmp_path / "afile"),
                         "epochs=3"])
    assert code == 1 and "note: recipe 'small-cnn': epochs=3, so checkpoints [0, 1, 2, 3, 6] " \
                         "become [0, 1, 2, 3]" in err


def test_export_infers_the_format_overwrites_only_with_force_and_uses_the_umask(zoo, tmp_path):
    zoo_ = open_zoo(zoo)
    target = tmp_path / "m.npz"
    assert run_wsl(["zoo", "export", str(zoo), "--model", "1", "--out", str(target)])[0] == 0
    with np.load(target) as f:  # a zip, as the suffix says
        np.testing.assert_array_equal(f["dense_1/kernel"], zoo_.params(1)["dense_1"]["kernel"])
    assert run_wsl(["zoo", "export", str(zoo), "--model", "2", "--out", str(target),
                 "--force"])[0] == 0
    with np.load(target) as f:
        np.testing.assert_array_equal(f["dense_1/kernel"], zoo_.params(2)["dense_1"]["kernel"])
    st = tmp_path / "m.safetensors"
    assert run_wsl(["zoo", "export", str(zoo), "--model", "1", "--out", str(st)])[0] == 0
    assert st.read_bytes()[8:9] == b"{"  # a safetensors header, not a zip
    assert (st.stat().st_mode & 0o777) == (target.stat().st_mode & 0o777)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz", "m.safetensors"]  # no temps


def test_verify_and_info_pass_a_sound_zoo(zoo):
    code, out, err = run_wsl(["zoo", "verify", str(zoo)])
    assert code == 0 and "result       ok" in out and "4 rows" in out, err
    code, out, _ = run_wsl(["zoo", "info", str(zoo)])
    assert code == 0 and "wsl zoo verify" in out
    info = json.loads((zoo / "shards" / "00000" / "shard.json").read_text())
    assert all(isinstance(meta["size"], int) for meta in info["files"].values())


def test_zoo_without_recorded_sizes_checks_existence_only(zoo, tmp_path):
    copy = tmp_path / "old"
    shutil.copytree(zoo, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    for meta in manifest["shards"][0]["files"].values():
        meta.pop("size")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert len(open_zoo(copy)) == 4
    (copy / "shards" / "00000" / "rows.csv").unlink()
    with pytest.raises(ZooError, match=r"rows\.csv: missing"):
        open_zoo(copy)


def test_select_drops_non_finite_weights_and_says_so(zoo, tmp_path):
    shutil.copytree(zoo, tmp_path / "copy")
    inject_nan(tmp_path / "copy")
    nan_zoo = open_zoo(tmp_path / "copy")
    assert nan_zoo.finite_rows().tolist() == [False, True, True, True]
    with pytest.warns(UserWarning, match="1 selected rows have NaN/inf weights"):
        view = nan_zoo.select()
    assert view.dropped["non_finite"] == 1 and sorted(view.metrics["model"]) == [1, 2, 3]
    assert np.isfinite(view.flat()).all()
    assert len(nan_zoo.select(finite=False)) == 4  # asked for everything: everything
    code, _, err = run_wsl(["zoo", "export", str(tmp_path / "copy"), "--model", "0", "--out",
                         str(tmp_path / "m.npz"), "--allow-non-finite"])
    assert code == 0 and np.isnan(np.load(tmp_path / "m.npz")["dense_0/kernel"]).sum() == 1


@pytest.mark.parametrize("row", [1.5, np.float64(1.0), True, "1"])
def test_params_refuses_non_integer_rows(zoo, row):
    with pytest.raises(ZooError, match="integer"):
        open_zoo(zoo).params(row)


def test_rows_refuse_non_integer_indices(zoo):
    with pytest.raises(ZooError, match="must be integers"):
        open_zoo(zoo).flat([0.5, 2])
    assert open_zoo(zoo).flat(np.array([1, 2])).shape[0] == 2


def test_writer_refuses_a_zoo_inside_a_zoo_and_removes_stale_temporaries(zoo, tmp_path):
    from wsl.zoos.store import ZooWriter

    manifest = {k: open_zoo(zoo).manifest[k] for k in ("architecture", "weight_space")}
    with pytest.raises(WslError, match="inside the zoo"):
        ZooWriter(zoo / "shards" / "new", manifest)
    ZooWriter(tmp_path / "z", manifest)
    stale = tmp_path / "z" / "shards" / ".tmp-00000-999999999"  # no such process
    mine = tmp_path / "z" / "shards" / f".tmp-00001-{os.getppid()}"  # a live process's
    stale.mkdir()
    mine.mkdir()
    ZooWriter(tmp_path / "z", manifest)
    assert not stale.exists() and mine.exists()


def test_warnings_and_interrupts_are_one_line():
    from wsl.commands import run

    def warns(argv):
        sys.stderr.write(warnings.formatwarning("3 rows left out", UserWarning, "x.py", 1))

    def interrupted(argv):
        raise KeyboardInterrupt("stopped during shard 3, which was abandoned")

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert run("wsl zoo", warns, []) == 0
        assert run("wsl zoo", interrupted, []) == 130
    assert err.getvalue().strip().splitlines() == [
        "wsl zoo: warning: 3 rows left out", "",
        "wsl zoo: interrupted (stopped during shard 3, which was abandoned); run the same "
        "command again to resume"]


# Every build of the test on this process's devices (the subprocess would otherwise split the CPU
# into one device per core): a zoo resumed on another device count agrees only up to float rounding.
_BUILD = ("import sys; from wsl.commands import main; sys.exit(main(sys.argv[1:]))",
          "zoo", "build", "quick", "--num-models", "8", "models_per_shard=2", "epochs=2",
          "--no-progress", "--cpu-devices", str(len(jax.devices("cpu"))))


def test_ctrl_c_stops_cleanly_and_a_rerun_resumes_to_the_same_zoo(tmp_path):
    out = tmp_path / "zoo"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-c", *_BUILD, "--out", str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "shards" / "00000" / "shard.json").exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err  # not a crash (-11), not a finished build (0)
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert "interrupted (stopped" in err and "run the same command again to resume" in err
    shards = sorted(p.name for p in (out / "shards").iterdir())
    assert shards and all(s.isdigit() for s in shards) and len(shards) < 4  # no temp folders
    assert not (out / "metrics.csv").exists()
    code, _, err = run_wsl([*_BUILD[1:], "--out", str(out)])
    assert code == 0, err
    fresh = tmp_path / "fresh"
    assert run_wsl([*_BUILD[1:], "--out", str(fresh)])[0] == 0
    assert (out / "metrics.csv").read_bytes() == (fresh / "metrics.csv").read_bytes()
    resumed, whole = Zoo.open(out), Zoo.open(fresh)
    assert [s["files"] for s in resumed.manifest["shards"]] == \
        [s["files"] for s in whole.manifest["shards"]]
    np.testing.assert_array_equal(resumed.flat(), whole.flat())
