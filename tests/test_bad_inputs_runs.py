"""Bad inputs to the run commands (probe, gen, merge, demo) give one line, the right exit code,
and destroy nothing: every refusal comes before the first write (issue 23).

One tiny zoo is built per module; a copy of it with one NaN weight stands for a damaged zoo.
Every case is one line of a table: the command, the exit code, a fragment of the message that
names the fault and, for the cases that could lose data, the folder whose files must stay
byte-identical.
"""

import hashlib
import json
import os
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from wsl import outputs
from wsl.commands import main as wsl
from wsl.config import override
from wsl.train import TrainConfig, TrainError, train

QUICK = ["--encoder", "statnn_gbt"]  # a probe without a training loop: seconds
# No alignment (seconds of weight matching) and a tiny generator trained for 3 steps.
GEN_FAST = ["--align", "none", "hidden=16", "depth=1", "train.steps=3", "train.batch_size=8",
            "train.log.progress=false"]


def _tree_hashes(folder: Path) -> dict:
    """Every file under `folder` by relative path → sha256, and every folder (→ None)."""
    out = {}
    for path in sorted(Path(folder).rglob("*")):
        rel = str(path.relative_to(folder))
        out[rel] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
    return out


def _run(argv, capsys) -> tuple[int, str]:
    code = wsl([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _inject_nan(src: Path, dst: Path, row: int) -> None:
    """Copy zoo `src` to `dst` with one NaN weight in `row`, checksums updated (a damaged zoo
    that every check of the files still passes)."""
    shutil.copytree(src, dst)
    shard = dst / "shards" / "00000"
    file = shard / "dense_0.kernel.npy"
    array = np.load(file)
    array[row, 0, 0] = np.nan
    np.save(file, array)
    sha = hashlib.sha256(file.read_bytes()).hexdigest()
    info = json.loads((shard / "shard.json").read_text())
    info["files"][file.name]["sha256"] = sha
    (shard / "shard.json").write_text(json.dumps(info, indent=1) + "\n")
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["shards"][0]["files"][file.name]["sha256"] = sha
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A 16-model quick zoo, its NaN copy, a finished probe and a trained flow generator."""
    root = tmp_path_factory.mktemp("runs")
    zoo = root / "zoo"
    assert wsl(["zoo", "build", "quick", "--out", str(zoo), "--num-models", "16", "epochs=1",
                "--no-progress"]) == 0
    # Rows go model by model, epoch 0 then 1: row 11 is model 5's last checkpoint.
    _inject_nan(zoo, root / "nanzoo", row=11)
    assert wsl(["probe", "--zoo", str(zoo), *QUICK, "--out", str(root / "probe")]) == 0
    assert wsl(["gen", "train", "--zoo", str(zoo), "--out", str(root / "gen"), *GEN_FAST]) == 0
    (root / "file").write_text("not a folder\n")
    (root / "full").mkdir()
    (root / "full" / "notes.txt").write_text("mine\n")
    (root / "ro").mkdir()
    return root


# (id, command, exit code, message fragment, folder that must stay byte-identical or None)
CASES = [
    # data loss: a rerun into a folder that holds another run is refused before any write
    ("probe-other-target", "probe --zoo {zoo} --target gap {quick} --out {probe}", 1,
     "holds a probe run with target='test_acc', not 'gap'", "probe"),
    ("probe-other-zoo", "probe --zoo {nanzoo} {quick} --out {probe}", 1,
     "holds a probe run of the zoo", "probe"),
    ("probe-other-encoder", "probe --zoo {zoo} --encoder statnn --out {probe}", 1,
     "encoder='statnn_gbt', not 'statnn'", "probe"),
    ("probe-into-full-folder", "probe --zoo {zoo} {quick} --out {full}", 1,
     "is not empty and has no probe.json", "full"),
    ("gen-other-zoo", "gen train --zoo {nanzoo} --out {gen} {gen_fast}", 1,
     "holds a generator of the zoo", "gen"),
    ("gen-other-method", "gen train --zoo {zoo} --out {gen} --method ddpm {gen_fast}", 1,
     "generator.method='flow', not 'ddpm'", "gen"),
    ("gen-other-config", "gen train --zoo {zoo} --out {gen} {gen_fast} hidden=32", 1,
     "generator.hidden=16, not 32", "gen"),
    ("gen-into-full-folder", "gen train --zoo {zoo} --out {full} {gen_fast}", 1,
     "is not empty and has no generator.json", "full"),
    ("merge-existing-out", "merge --zoo {zoo} --out {existing}", 1,
     "already exists; pass --force", "existing_dir"),
    # never into a zoo
    ("probe-out-zoo", "probe --zoo {zoo} {quick} --out {zoo}", 1, "is the zoo", "zoo"),
    ("probe-out-in-zoo", "probe --zoo {zoo} {quick} --out {zoo}/shards", 1,
     "is inside the zoo", "zoo"),
    ("gen-train-out-zoo", "gen train --zoo {zoo} --out {zoo} {gen_fast}", 1, "is the zoo", "zoo"),
    ("gen-sample-out-zoo", "gen sample {gen} -n 2 --out {zoo}", 1, "is the zoo", "zoo"),
    ("gen-sample-out-in-zoo", "gen sample {gen} -n 2 --out {zoo}/shards/new", 1,
     "is inside the zoo", "zoo"),
    ("gen-sample-out-full", "gen sample {gen} -n 2 --out {full}", 1, "already holds files",
     "full"),
    ("merge-out-in-zoo", "merge --zoo {zoo} --out {zoo}/merged.npz", 1, "is inside the zoo",
     "zoo"),
    ("demo-out-zoo", "demo --out {zoo}", 1, "is the zoo", "zoo"),
    # --out that is a file, or in a folder that cannot be written
    ("probe-out-file", "probe --zoo {zoo} {quick} --out {file}", 1, "is a file", None),
    ("gen-train-out-file", "gen train --zoo {zoo} --out {file} {gen_fast}", 1, "is a file", None),
    ("gen-sample-out-file", "gen sample {gen} -n 2 --out {file}", 1, "is a file", None),
    # the --out check comes before the generator is loaded
    ("gen-sample-out-first", "gen sample {tmp}/nowhere -n 2 --out {file}", 1, "is a file", None),
    ("merge-out-is-dir", "merge --zoo {zoo} --out {full}", 2, "suffix", None),
    ("merge-out-under-file", "merge --zoo {zoo} --out {file}/m.npz", 1,
     "is a file, not a folder", None),
    ("gen-eval-trained-zoo", "gen eval {zoo} --generator {gen}", 2, "is not a generated zoo",
     "zoo"),
    ("gen-eval-out-in-zoo", "gen eval {zoo} --generator {gen} --out {zoo}/ev", 1,
     "is inside the zoo", "zoo"),
    ("demo-out-file", "demo --out {file}", 1, "is a file", None),
    ("probe-out-readonly", "probe --zoo {zoo} {quick} --out {ro}/run", 1, "not writable", "ro"),
    ("gen-train-out-readonly", "gen train --zoo {zoo} --out {ro}/g {gen_fast}", 1, "not writable",
     "ro"),
    ("gen-sample-out-readonly", "gen sample {gen} -n 2 --out {ro}/s", 1, "not writable", "ro"),
    ("merge-out-readonly", "merge --zoo {zoo} --out {ro}/m.npz", 1, "not writable", "ro"),
    ("demo-out-readonly", "demo --out {ro}/demo", 1, "not writable", "ro"),
    # options checked before any work, naming the option
    ("probe-seeds-0", "probe --zoo {zoo} {quick} --seeds 0 --out {tmp}/p", 2,
     "seeds must be ≥ 1", None),
    ("probe-encoder-out-dim", "probe --zoo {zoo} --out {tmp}/p encoder.out_dim=3", 2,
     "encoder.out_dim is set by the probe", None),
    ("probe-gbt-options", "probe --zoo {zoo} {quick} --out {tmp}/p encoder.hidden=3", 2,
     "statnn_gbt takes no encoder.* options", None),
    ("demo-generator-steps-0", "demo --generator-steps 0 --out {tmp}/d", 2,
     "--generator-steps must be ≥ 1", None),
    ("demo-samples-0", "demo --samples 0 --out {tmp}/d", 2, "--samples must be ≥ 1", None),
    ("gen-max-models-0", "gen train --zoo {zoo} --out {tmp}/g --max-models 0", 2,
     "--max-models must be ≥ 2", None),
    ("gen-sample-n-0", "gen sample {gen} -n 0 --out {tmp}/s", 2, "-n/--num must be ≥ 1", None),
    ("gen-sample-not-generator", "gen sample {zoo} -n 2 --out {tmp}/s", 1,
     "not a generator directory", None),
    ("merge-epoch-99", "merge --zoo {zoo} --epoch 99 --out {tmp}/m.npz", 1,
     "no checkpoint at epoch 99; its epochs are 0-1", None),
    ("merge-models-reversed", "merge --zoo {zoo} --models 5-2 --out {tmp}/m.npz", 2,
     "--models 5-2 is an empty range (reversed)", None),
    ("merge-align-unknown-model", "merge --zoo {zoo} --models 0-3 --align 9 --out {tmp}/m.npz",
     2, "model 9 is not among the models merged (0-3)", None),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_run_commands_refuse_bad_inputs(case, world, tmp_path, capsys, monkeypatch):
    _, command, code, message, keep = case
    existing = tmp_path / "old" / "merged.npz"
    existing.parent.mkdir()
    existing.write_bytes(b"an earlier merge\n")
    existing.with_suffix(".json").write_text("{}\n")
    ro = world / "ro"
    os.chmod(ro, 0o555)
    if os.geteuid() == 0:  # root writes anywhere: the folder reads as not writable all the same
        real_access = os.access
        monkeypatch.setattr(outputs.os, "access", lambda p, mode, **kw: False if Path(
            p).absolute().is_relative_to(ro) else real_access(p, mode, **kw))
    folders = {"existing_dir": existing.parent, **{k: world / k for k in
                                                   ("probe", "gen", "zoo", "full", "ro")}}
    before = _tree_hashes(folders[keep]) if keep else None
    words = command.format(zoo=world / "zoo", nanzoo=world / "nanzoo", probe=world / "probe",
                           gen=world / "gen", file=world / "file", full=world / "full", ro=ro,
                           tmp=tmp_path, existing=existing, quick=" ".join(QUICK),
                           gen_fast=" ".join(GEN_FAST)).split()
    try:
        got, output = _run(words, capsys)
    finally:
        os.chmod(ro, 0o755)
    assert "Traceback" not in output, output
    assert got == code, output
    assert message in output, output
    assert len([line for line in output.splitlines() if "error:" in line]) == 1, output
    if keep:
        assert _tree_hashes(folders[keep]) == before, f"{keep} changed"


def test_probe_rerun_of_the_same_probe_resumes(world, capsys):
    before = json.loads((world / "probe" / "results.json").read_text())
    code, output = _run(["probe", "--zoo", world / "zoo", *QUICK, "--out", world / "probe"],
                        capsys)
    assert code == 0, output
    after = json.loads((world / "probe" / "results.json").read_text())
    assert [r["prediction"] for r in after["runs"]] == [r["prediction"] for r in before["runs"]]


# NaN weights in a zoo whose files all pass their checksums: the row is left out with a warning
# naming how many, and the command goes on (never NaN results, never the wrong cause).
NAN_CASES = [
    ("probe", "probe --zoo {nanzoo} {quick} --out {tmp}/p", "statnn_gbt → test_acc on 15"),
    ("gen-train", "gen train --zoo {nanzoo} --out {tmp}/g {gen_fast}", "generator written"),
    ("merge", "merge --zoo {nanzoo} --models 4-7 --out {tmp}/m.npz", "merged 3 of 3 models"),
]


@pytest.mark.parametrize("case", NAN_CASES, ids=[c[0] for c in NAN_CASES])
def test_non_finite_models_are_left_out_with_a_warning(case, world, tmp_path, capsys):
    _, command, message = case
    words = command.format(nanzoo=world / "nanzoo", tmp=tmp_path, quick=" ".join(QUICK),
                           gen_fast=" ".join(GEN_FAST)).split()
    with pytest.warns(UserWarning, match=r"\b1 .*NaN"):
        code, output = _run(words, capsys)
    assert "Traceback" not in output, output
    assert code == 0, output
    assert message in output, output


def test_merge_report_names_models_by_id_and_says_why(world, tmp_path, capsys):
    out = tmp_path / "m.npz"
    code, output = _run(["merge", "--zoo", world / "zoo", "--models", "3-6", "--method", "greedy",
                         "--align", "5", "--out", out], capsys)
    assert code == 0, output
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["align"] == 5 and report["best_model"] in range(3, 7)
    assert set(report["member_models"]) <= set(range(3, 7))
    assert report["why"].startswith(f"greedy soup kept {report['members']} of 4 (tried best first)")
    assert report["why"] in output
    # Overwriting needs --force; with it both files are rewritten.
    assert _run(["merge", "--zoo", world / "zoo", "--models", "3-6", "--out", out], capsys)[0] == 1
    code, output = _run(["merge", "--zoo", world / "zoo", "--models", "3-6", "--out", out,
                         "--force"], capsys)
    assert code == 0, output
    assert json.loads(out.with_suffix(".json").read_text())["method"] == "uniform"


def test_gen_sample_loads_the_generator_once(world, tmp_path, capsys, monkeypatch):
    from wsl.train.generator import TrainedGenerator

    loads = []
    real_load = TrainedGenerator.load.__func__

    def counting_load(cls, directory):
        loads.append(directory)
        return real_load(cls, directory)

    monkeypatch.setattr(TrainedGenerator, "load", classmethod(counting_load))
    code, output = _run(["gen", "sample", world / "gen", "-n", "2", "--out", tmp_path / "s"],
                        capsys)
    assert code == 0, output
    assert len(loads) == 1 and "wrote" in output and "evaluation.json" in output


class _Regression:
    def init(self, key, batch):
        return {"w": jnp.zeros(batch["x"].shape[-1])}

    def loss(self, params, batch, key):
        return jnp.mean((batch["x"] @ params["w"] - batch["y"]) ** 2), {}


def test_a_nan_loss_names_non_finite_training_data(tmp_path):
    x = np.ones((8, 3), np.float32)
    x[2, 1] = np.nan
    y = np.ones(8, np.float32)
    config = override(TrainConfig(), ["steps=2", "batch_size=4", "log.progress=false"])
    with pytest.raises(TrainError, match=r"training data holds NaN or inf values \(x: 1 of 8 "
                                         r"rows\)"):
        train(_Regression(), config, {"x": x, "y": y}, tmp_path / "a")
    # Finite data: both possible causes are named.
    with pytest.raises(TrainError, match=r"lower optimizer.lr\) or the data may hold NaN"):
        train(_Regression(), override(config, ["optimizer.lr=1e30"]),
              {"x": np.ones((8, 3), np.float32), "y": y}, tmp_path / "b")


def test_a_run_recorded_before_a_config_field_existed_resumes_only_at_its_default(tmp_path):
    from wsl.train.checkpoint import RunDirError, claim_run_dir

    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"generator": {"hidden": 64}}))
    defaults = {"generator": {"hidden": 512, "temperature": 1.0}}
    request = {"generator": {"hidden": 64, "temperature": 1.0}}
    assert claim_run_dir(run, request, file="run.json", what="a run", defaults=defaults)
    with pytest.raises(RunDirError, match=r"generator.temperature=unset, not 0.5"):
        claim_run_dir(run, {"generator": {"hidden": 64, "temperature": 0.5}}, file="run.json",
                      what="a run", defaults=defaults)
    with pytest.raises(RunDirError, match="generator.temperature=unset, not 1.0"):
        claim_run_dir(run, request, file="run.json", what="a run")  # no defaults given


def test_a_run_claimed_on_one_zoo_follows_its_content_not_its_path_or_manifest_file(tmp_path):
    from wsl.train.checkpoint import RunDirError, claim_run_dir

    run = tmp_path / "run"
    run.mkdir()
    record = {"zoo": "/zoos/a", "zoo_sha256": "1" * 64, "zoo_fingerprint": "f" * 64, "steps": 10}
    (run / "probe.json").write_text(json.dumps(record))
    claim = lambda **change: claim_run_dir(run, {**record, **change}, file="probe.json",
                                           what="a probe run")
    # The same zoo rebuilt (a new manifest timestamp) or moved: the same run.
    assert claim(zoo_sha256="2" * 64)
    assert claim(zoo="/zoos/b", zoo_sha256="2" * 64)
    with pytest.raises(RunDirError, match=r"earlier version of the zoo /zoos/a \(its content "
                                          r"changed\)"):
        claim(zoo_fingerprint="e" * 64)
    with pytest.raises(RunDirError, match="of the zoo /zoos/a, not /zoos/b"):
        claim(zoo="/zoos/b", zoo_fingerprint="e" * 64)
    # A record from before the fingerprint: its manifest hash still decides, the path may change.
    old = {k: v for k, v in record.items() if k != "zoo_fingerprint"}
    (run / "probe.json").write_text(json.dumps(old))
    assert claim(zoo="/zoos/b")
    with pytest.raises(RunDirError, match=r"earlier version of the zoo /zoos/a \(its manifest "
                                          r"changed\)"):
        claim(zoo_sha256="2" * 64)
