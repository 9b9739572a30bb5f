"""Every benchmark still runs: its ``--smoke`` mode exits 0 and prints its JSON object last.

The benchmarks are scripts that no other test imports, so an API change breaks them silently; this
runs each one end to end on tiny sizes (seconds each), from a scratch working directory with its
own temporary directory, and checks that it left nothing behind in either.
"""

import concurrent.futures
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS_DIR = Path(__file__).resolve().parent.parent / "benchmarks"
# Longest first, so that two at a time finish together.
BENCHMARKS = ("generate", "transfer", "transfer_heads", "transfer_fidelity", "flow_ablation",
              "gpu", "probe", "zoo_build", "align", "analyze", "encoder_speed", "trainer_overhead",
              "zoo_io", "pca_ceiling", "cross_dataset")
WORKERS = min(2, os.cpu_count() or 1)  # each run is mostly one busy thread (XLA compiles)


def _smoke(name: str, workdir: Path) -> tuple[subprocess.CompletedProcess, Path, Path]:
    cwd, tmp = workdir / "cwd", workdir / "tmp"
    cwd.mkdir(parents=True)
    tmp.mkdir()
    # torch keeps its compile cache in the temporary directory: elsewhere, it is not ours.
    env = {**os.environ, "TMPDIR": str(tmp),
           "TORCHINDUCTOR_CACHE_DIR": str(workdir / "torchinductor")}
    result = subprocess.run([sys.executable, str(BENCHMARKS_DIR / f"{name}.py"), "--smoke"],
                            cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    return result, cwd, tmp


@pytest.fixture(scope="module")
def smoke_runs(request, tmp_path_factory):
    """The selected benchmarks' smoke runs, started together, `WORKERS` at a time."""
    selected = {item.callspec.params["name"] for item in request.session.items
                if item.module is request.module and "name" in getattr(
                    getattr(item, "callspec", None), "params", {})}
    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        yield {name: pool.submit(_smoke, name, tmp_path_factory.mktemp(name))
               for name in BENCHMARKS if name in selected}


# Benchmarks whose results are speed ratios measured on this machine.
SPEED_RATIOS = ("zoo_build", "align", "encoder_speed", "trainer_overhead")


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_smoke_run(name, smoke_runs):
    result, cwd, tmp = smoke_runs[name].result()
    tail = f"\n--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"
    assert result.returncode == 0, f"benchmarks/{name}.py --smoke failed:{tail}"
    lines = result.stdout.strip().splitlines()
    try:
        report = json.loads(lines[-1])
    except (IndexError, ValueError):
        pytest.fail(f"benchmarks/{name}.py --smoke: the last line is not a JSON object:{tail}")
    assert report["benchmark"] == name and report["mode"] == "smoke", report
    if name in SPEED_RATIOS:  # a ratio against a baseline says little without its machine
        assert report["host"].endswith(" cores"), report
    assert len(lines) > 1, "no table before the JSON line"
    assert not list(cwd.iterdir()), f"wrote into its working directory: {list(cwd.iterdir())}"
    assert not list(tmp.iterdir()), f"left temporary files: {list(tmp.iterdir())}"


def test_every_benchmark_has_a_smoke_test():
    scripts = {p.stem for p in BENCHMARKS_DIR.glob("*.py") if not p.name.startswith("_")}
    assert scripts == set(BENCHMARKS), "add new benchmarks (with a --smoke mode) to BENCHMARKS"


def test_flow_ablation_refuses_a_negative_first_seed():
    result = subprocess.run([sys.executable, str(BENCHMARKS_DIR / "flow_ablation.py"), "--smoke",
                             "--first-seed", "-1"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "--first-seed -1" in result.stderr, result.stderr[-2000:]


def test_generate_ablation_words_are_never_saved_as_the_benchmark():
    result = subprocess.run([sys.executable, str(BENCHMARKS_DIR / "generate.py"), "--quick",
                             "--words", "scalar_embedding=sinusoidal"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "add --no-save" in result.stderr, result.stderr[-2000:]
    result = subprocess.run([sys.executable, str(BENCHMARKS_DIR / "generate.py"), "--quick",
                             "--no-save", "--words", "scalar_embeding=smooth"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "--words: unknown config key 'scalar_embeding'" in result.stderr, result.stderr[-2000:]


def test_generate_sampling_variants_share_their_generator_from_the_first_seed(tmp_path):
    """flow-data-head-eta0.5 samples flow-data-head's generator (trained once per seed), and
    --first-seed starts the seeds of a declared test elsewhere than 0."""
    result = subprocess.run([sys.executable, str(BENCHMARKS_DIR / "generate.py"), "--smoke",
                             "--methods", "flow-data-head,flow-data-head-eta0.5",
                             "--first-seed", "3", "--zoo-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["first_seed"] == 3
    methods = report["zoos"]["quick"]["methods"]
    assert [m["seeds"] for m in methods.values()] == [[3], [3]]
    runs = tmp_path / "runs-smoke-20" / "quick"
    assert sorted(p.name for p in runs.glob("*-generator")) == ["flow-data-head-seed3-generator"]
    row = json.loads((runs / "flow-data-head-eta0.5-seed3.row.json").read_text())
    assert row["generator_of"] == "flow-data-head"
    assert "already finished" in result.stdout + result.stderr


def test_transfer_ablations_are_never_saved_and_sample_at_least_what_they_keep(capsys):
    # In this process: every refusal comes from the option parser, before any work (a subprocess
    # each cost a dozen JAX imports, a minute of the suite).
    sys.path.insert(0, str(BENCHMARKS_DIR.parent))
    from benchmarks.transfer import main

    for words, message in ((["--samples", "200", "--save"], "drop --save"),
                           (["--samples", "5"], "--samples must be at least the mode's keep (10)"),
                           (["--zoo-words", "epochs=50", "--save"], "drop --save"),
                           (["--zoo-words", "num_modles=9"], "--zoo-words: "),
                           (["--guidance", "1,x"], "--guidance: guidance: expected float"),
                           (["--guidance", "1,-1"], "--guidance: guidance: weights must be ≥ 0"),
                           (["--head-epochs", "1", "--save"], "drop --save"),
                           (["--head-epochs", "30"], "--head-epochs: head_epochs: 30 of 25"),
                           (["--head-fit", "exact"], "--head-fit: head_fit='exact' fits"),
                           (["--head-epochs", "1", "--head-fit", "exact", "--save"],
                            "drop --save"),
                           (["--support", "50", "--save"], "drop --save"),
                           (["--support", "0"], "--support: support: must be ≥ 1, got 0"),
                           (["--save-ablation", "lr"], "--save-ablation saves an ablation"),
                           (["--seeds", "1", "--save-ablation", "a/b"],
                            "use letters, digits and '-'")):
        with pytest.raises(SystemExit) as exit_:
            main(words)
        stderr = capsys.readouterr().err
        assert exit_.value.code == 2 and message in stderr, (words, stderr[-2000:])


def test_transfer_ablation_files_record_the_options_less_the_tag():
    sys.path.insert(0, str(BENCHMARKS_DIR.parent))
    from benchmarks._report import without_options

    # The tag may look like an option's value: only the one after --save-ablation goes.
    assert without_options(["--lr", "1e-2", "--save-ablation", "1e-2", "--seeds", "1"],
                           "--save-ablation") == ["--lr", "1e-2", "--seeds", "1"]
    assert without_options(["--save-ablation=t", "--keep-by", "probe"], "--save-ablation") == \
        ["--keep-by", "probe"]
    assert without_options(["--experiments", "main", "--seeds=1", "--lr", "1e-2"],
                           "--experiments", "--seeds") == ["--lr", "1e-2"]


def test_transfer_caches_keep_their_names_when_fields_are_added_at_their_defaults():
    sys.path.insert(0, str(BENCHMARKS_DIR.parent))
    from benchmarks.transfer import _described
    from wsl.models.weight_generator import GeneratorConfig
    from wsl.train import TrainConfig
    from wsl.train.transfer import TransferConfig

    for config, field, value in ((TransferConfig(), "head_epochs", 1),
                                 (TransferConfig(head_epochs=1), "head_fit", "exact"),
                                 (GeneratorConfig(condition_task=True), "task_relabel", True),
                                 (TrainConfig(), "microbatch", 8)):
        assert field not in _described(config)
        assert _described(dataclasses.replace(config, **{field: value}))[field] == value


def test_transfer_generator_cache_name_is_the_committed_results_one():
    # A config field added without an _ADDED_LATER entry renames every cached generator, and a
    # rerun of the benchmark (or any ablation) silently retrains them all (hours at full size):
    # the full benchmark's generator keeps the name its committed results were made with.
    sys.path.insert(0, str(BENCHMARKS_DIR.parent))
    from benchmarks.transfer import MODES, generator_settings

    *_, name = generator_settings("mnist-tasks-full-f7106ae3", MODES["full"], 0)
    assert name == "gen-mnist-tasks-full-f7106ae3-seed0-9000-e6ecf5b9"


def test_transfer_zoo_words_replace_the_experiments_own_of_their_key():
    sys.path.insert(0, str(BENCHMARKS_DIR.parent))
    from benchmarks.transfer import MODES, with_zoo_words

    main = MODES["full"].experiments[0]
    assert main.zoo_words == ("epochs=25", "checkpoints=[0,1,5,25]")  # cached zoos' names
    longer = with_zoo_words(main, ["checkpoints=[0,1,5,75]", "epochs=75", "num_models=8000"])
    assert longer.zoo_words == ("epochs=75", "checkpoints=[0,1,5,75]", "num_models=8000")
    assert (longer.recipe, longer.name) == (main.recipe, main.name)


def test_generate_results_accumulate_only_within_one_zoo_build(tmp_path):
    """A later run of some methods adds to the saved file's rows of the same zoo build, replaces
    its own, and drops the rows of a different build (never one table over two zoos)."""
    sys.path.insert(0, str(BENCHMARKS_DIR.parent))
    from benchmarks.generate import merge_earlier

    def method(name, val):
        return {"method": name, "val": {"mean": val}}

    def report(zoos, population=0.5, words=()):
        return {"mode": "full", "steps": 4000, "samples": 100, "seeds": 3,
                "extra_words": list(words), "zoo_overrides": {z: ["num_models=9"] for z in zoos},
                "zoos": {z: {"best_on_val": None, "population": {"val": population},
                             "methods": {m: method(m, v) for m, v in ms.items()}}
                         for z, ms in zoos.items()}}

    path = tmp_path / "generate-full.json"
    assert merge_earlier(report({"a": {"flow": 0.4}}), path)["zoos"]["a"]["methods"].keys() == {
        "flow"}  # no file yet
    path.write_text(json.dumps(report({"a": {"flow": 0.4, "ddpm": 0.45}, "b": {"flow": 0.3}})))
    merged = merge_earlier(report({"a": {"flow": 0.5}}), path)
    assert merged["zoos"]["a"]["methods"]["flow"]["val"]["mean"] == 0.5
    assert set(merged["zoos"]["a"]["methods"]) == {"flow", "ddpm"}
    assert merged["zoos"]["a"]["best_on_val"] == "flow" and set(merged["zoos"]) == {"a", "b"}
    rebuilt = merge_earlier(report({"a": {"flow": 0.4}}, population=0.51), path)
    assert set(rebuilt["zoos"]["a"]["methods"]) == {"flow"}
    other = merge_earlier(report({"a": {"flow": 0.4}}, words=["hidden=64"]), path)
    assert set(other["zoos"]) == {"a"}
    # A file without first_seed ran from seed 0: it merges with seed 0, not with fresh seeds.
    assert set(merge_earlier({**report({"a": {"flow": 0.4}}), "first_seed": 0}, path)["zoos"]) \
        == {"a", "b"}
    fresh = merge_earlier({**report({"a": {"flow": 0.4}}), "first_seed": 10}, path)
    assert set(fresh["zoos"]) == {"a"}


def test_generate_intervals_over_seeds_are_student_t_and_old_files_are_upgraded(tmp_path):
    """Three seeds' mean gets the t interval of the per-seed means (a bootstrap over three seeds
    is far narrower than 95 %); one seed the bootstrap over its samples. A file written with the
    old intervals is upgraded when read back: t intervals, the old ones kept, the verdict redone."""
    sys.path.insert(0, str(BENCHMARKS_DIR.parent))
    from scipy import stats

    from benchmarks.generate import INTERVAL, merge_earlier, seeds_interval, upgrade_intervals

    rng = np.random.default_rng(0)
    groups = [rng.normal(mu, 0.05, 100) for mu in (0.53, 0.54, 0.55)]
    means = np.array([g.mean() for g in groups])
    half = stats.t.ppf(0.975, 2) * means.std(ddof=1) / np.sqrt(3)
    assert seeds_interval(groups) == pytest.approx([means.mean() - half, means.mean() + half])
    low, high = seeds_interval(groups[:1])  # one seed: its 100 samples' spread
    assert low < means[0] < high and 0.005 < high - low < 0.03

    def summary(seeds, per_seed, ci95, target):
        stat = {"mean": float(np.mean(per_seed)), "ci95": ci95, "per_seed": per_seed}
        return {"method": "flow", "seeds": seeds, "val": dict(stat), "test": dict(stat),
                "target": {"value": target, "met": True, "interval": "above"}}

    old = {"mode": "full", "steps": 4000, "samples": 100, "seeds": 3, "extra_words": [],
           "zoo_overrides": {"a": [], "b": []},
           "zoos": {"a": {"population": {"val": 0.5}, "best_on_val": "flow", "methods": {
                        "flow": summary([0, 1, 2], [0.935, 0.910, 0.933], [0.911, 0.935],
                                        0.909)}},
                    "b": {"population": {"val": 0.5}, "best_on_val": "flow", "methods": {
                        "flow": summary([0], [0.90], [0.89, 0.91], 0.88)}}}}
    new = upgrade_intervals(old)
    a = new["zoos"]["a"]["methods"]["flow"]
    assert new["interval"] == INTERVAL
    assert a["test"]["ci95"][0] < 0.90 and a["test"]["ci95"][1] > 0.95  # t, 2 dof: wide
    assert a["test"]["ci95_two_level_bootstrap"] == [0.911, 0.935]
    assert a["target"] == {"value": 0.909, "met": True, "interval": "straddles"}
    assert new["zoos"]["b"]["methods"]["flow"] == old["zoos"]["b"]["methods"]["flow"]
    assert upgrade_intervals(new) == new  # once only
    path = tmp_path / "generate-full.json"
    path.write_text(json.dumps(old))
    fresh = {**old, "interval": INTERVAL, "zoos": {"b": old["zoos"]["b"]}}
    merged = merge_earlier(fresh, path)  # the untouched zoo's rows come back upgraded
    assert merged["zoos"]["a"]["methods"]["flow"]["target"]["interval"] == "straddles"


def test_generate_rows_survive_a_new_config_field_but_not_a_changed_value():
    """A finished row is reused after GeneratorConfig gains a field (it ran at its default), and
    redone when the settings it ran with differ."""
    sys.path.insert(0, str(BENCHMARKS_DIR.parent))
    from benchmarks.generate import _same_settings
    from wsl.config import to_dict
    from wsl.models.weight_generator import GeneratorConfig

    settings = {"words": ["loss_on=data"], "steps": 4000,
                "generator": to_dict(GeneratorConfig(loss_on="data"))}
    older = {**settings, "generator": dict(settings["generator"])}
    del older["generator"]["normalize"]  # saved before the field existed
    assert _same_settings(older, settings) and _same_settings(settings, settings)
    assert not _same_settings({**settings, "steps": 12000}, settings)
    other = {**settings, "generator": {**settings["generator"], "normalize": "entry"}}
    assert not _same_settings(other, settings) and not _same_settings(None, settings)


def test_probe_verdict_chooses_the_best_equivariant_encoder_on_validation():
    from benchmarks.probe import verdict

    tau = {"flat_mlp": 0.20, "statnn": 0.38, "unf": 0.41, "unf:pool=moments": 0.30}
    val_tau = {"flat_mlp": 0.28, "statnn": 0.42, "unf": 0.36, "unf:pool=moments": 0.37}
    out = verdict(tau, val_tau)
    assert out["best_equivariant"] == "unf:pool=moments"  # best on validation, not on test
    assert out["best_equivariant_minus_statnn"] == pytest.approx(0.30 - 0.38)
    assert out["equivariant_minus_flat_mlp"] == pytest.approx({"unf": 0.21,
                                                               "unf:pool=moments": 0.10})
    assert verdict({"statnn": 0.4}, {"statnn": 0.4}) == {}


def test_probe_pairs_seeds_against_statnn_and_judges_the_margin_by_the_interval(tmp_path):
    """Per-seed differences from StatNN with their t-interval; the +0.02 line is met only when the
    whole interval of the encoder chosen on validation clears it; the README table prints it."""
    sys.path.insert(0, str(BENCHMARKS_DIR.parent))
    from scipy import stats

    from benchmarks._report import probe_markdown
    from benchmarks.probe import paired_differences, verdict

    runs = {"statnn": [0.70, 0.75, 0.72], "ng_gnn": [0.765, 0.78, 0.756],
            "unf": [0.75, 0.80, 0.77], "flat_mlp": [0.6, 0.6]}  # a row of 2 seeds is not paired
    paired = paired_differences(runs)
    assert set(paired) == {"ng_gnn", "unf"}
    assert paired["ng_gnn"]["per_seed"] == pytest.approx([0.065, 0.030, 0.036])
    half = stats.t.ppf(0.975, 2) * np.std([0.065, 0.030, 0.036], ddof=1) / np.sqrt(3)
    assert paired["ng_gnn"]["ci95"] == pytest.approx([0.04367 - half, 0.04367 + half], abs=1e-4)
    tau = {k: float(np.mean(v)) for k, v in runs.items()}
    out = verdict(tau, {"statnn": 0.7, "ng_gnn": 0.8, "unf": 0.79, "flat_mlp": 0.5}, paired)
    assert out["best_equivariant"] == "ng_gnn"
    assert out["margin_over_statnn"] == {"margin": 0.02, "interval": "straddles"}
    out = verdict(tau, {"statnn": 0.7, "ng_gnn": 0.78, "unf": 0.79, "flat_mlp": 0.5}, paired)
    assert out["margin_over_statnn"]["interval"] == "above"  # unf: +0.05 every seed
    assert "margin_over_statnn" not in verdict(tau, {"statnn": 0.7, "ng_gnn": 0.8, "unf": 0.79,
                                                     "flat_mlp": 0.5})
    runs["flat_mlp"] = [0.70, 0.79, 0.70]  # ng_gnn's seeds: +0.065, -0.010, +0.056
    out = verdict(tau, {"statnn": 0.7, "ng_gnn": 0.8, "unf": 0.79, "flat_mlp": 0.5}, paired,
                  paired_differences(runs, "flat_mlp"))
    assert out["equivariant_over_flat_mlp"] == {"ng_gnn": "straddles", "unf": "straddles"}
    runs["flat_mlp"] = [0.6, 0.6, 0.6]
    out = verdict(tau, {"statnn": 0.7, "ng_gnn": 0.8, "unf": 0.79, "flat_mlp": 0.5}, paired,
                  paired_differences(runs, "flat_mlp"))
    assert out["equivariant_over_flat_mlp"] == {"ng_gnn": "above", "unf": "above"}
    del runs["flat_mlp"]
    report = {"seeds": 3, "mode": "full", "zoo": "/z/probe-x", "num_rows": 9, "steps": 10,
              "tau": tau, "tau_std": dict.fromkeys(tau, 0.01), "r2": dict.fromkeys(tau, 0.5),
              "seconds_per_seed": dict.fromkeys(tau, 1.0), "minus_statnn_paired": paired}
    (tmp_path / "probe.json").write_text(json.dumps(report))
    text = probe_markdown([str(tmp_path / "probe.json")])
    assert "| +0.0437 [-0.0028, +0.0902] |" in text and "| -0.1233 |" in text


def test_transfer_table_shows_test_accuracy_at_epoch_0_only_where_a_file_records_it(tmp_path):
    sys.path.insert(0, str(BENCHMARKS_DIR.parent))
    from benchmarks._report import transfer_markdown

    def cell(mean):
        return {"mean": mean, "ci95": [mean - 0.01, mean + 0.01]}

    row = {q: cell(0.9) for q in ("val_epoch0", "val_epoch1", "val_epoch5", "val_final",
                                  "test_final")}
    row["epochs_to_random_final"] = cell(7.8)
    result = {"experiment": "main", "recipe": "mnist-tasks", "tasks": ["a"], "seeds": 3,
              "chance": 0.2, "summary": {"sampled": row}}
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"mode": "full", "experiments": [result]}))
    assert "test acc epoch 0" not in transfer_markdown([str(old)])
    new = tmp_path / "new.json"
    result["summary"] = {"sampled": {**row, "test_epoch0": cell(0.85)}}
    new.write_text(json.dumps({"mode": "full", "experiments": [result]}))
    text = transfer_markdown([str(old), str(new)]).splitlines()
    assert "test acc epoch 0" in text[0] and text[1].count("|") == text[0].count("|")
    assert "| 0.900 [0.890, 0.910] | – | 0.900" in text[2]  # the old file: no such column
    assert "| 0.900 [0.890, 0.910] | 0.850 [0.840, 0.860] | 0.900" in text[3]


def test_probe_reuses_a_finished_run_written_before_a_train_field_but_not_another_zoo(tmp_path):
    import types

    sys.path.insert(0, str(BENCHMARKS_DIR.parent))
    from benchmarks.probe import finished_report
    from wsl.config import override, to_dict
    from wsl.train.probe import ProbeConfig
    from wsl.zoos.store import sha256_file, zoo_fingerprint

    zoo = types.SimpleNamespace(path=tmp_path / "zoo")
    config = override(ProbeConfig(), ["encoder=statnn", "train.steps=30"])
    written = json.loads(json.dumps(to_dict(config)))
    del written["train"]["microbatch"]  # a field added later, at its default
    (tmp_path / "results.json").write_text(json.dumps({"zoo": str(zoo.path), "config": written}))
    assert finished_report(tmp_path, zoo, config) is not None
    # A value that differs from the stored run's still means another run.
    other = override(ProbeConfig(), ["encoder=statnn", "train.steps=30", "train.microbatch=8"])
    assert finished_report(tmp_path, zoo, other) is None
    assert finished_report(tmp_path, zoo, override(ProbeConfig(), ["encoder=statnn"])) is None
    # Another zoo at the same path is not the one probed: its content (or, in a claim written
    # before the fingerprint, its manifest file) differs.
    (tmp_path / "zoo").mkdir()
    (tmp_path / "zoo" / "manifest.json").write_text(json.dumps({"provenance": {"created": "now"}}))
    (tmp_path / "probe.json").write_text(json.dumps({"zoo_sha256": "0" * 64}))
    assert finished_report(tmp_path, zoo, config) is None
    (tmp_path / "probe.json").write_text(json.dumps(
        {"zoo_sha256": sha256_file(tmp_path / "zoo" / "manifest.json")}))
    assert finished_report(tmp_path, zoo, config) is not None
    (tmp_path / "probe.json").write_text(json.dumps(
        {"zoo_sha256": "0" * 64, "zoo_fingerprint": "0" * 64}))
    assert finished_report(tmp_path, zoo, config) is None
    # The same zoo rebuilt there (only its build's provenance differs) is the one probed.
    (tmp_path / "probe.json").write_text(json.dumps(
        {"zoo_sha256": "0" * 64, "zoo_fingerprint": zoo_fingerprint(tmp_path / "zoo")}))
    (tmp_path / "zoo" / "manifest.json").write_text(
        json.dumps({"provenance": {"created": "later"}}))
    assert finished_report(tmp_path, zoo, config) is not None


def test_probe_encoder_specs_carry_options_and_keep_the_defaults():
    from benchmarks.probe import encoder_spec, is_equivariant

    assert encoder_spec("unf") == ("unf", {})
    assert encoder_spec("unf:pool=moments:head_widths=[64,64]") == (
        "unf", {"pool": "moments", "head_widths": [64, 64]})
    assert encoder_spec("ng_gnn:dim=32") == ("ng_gnn", {"num_layers": 2, "dim": 32})
    assert is_equivariant("unf:pool=moments") and not is_equivariant("statnn")
    with pytest.raises(ValueError, match="not key=value"):
        encoder_spec("unf:moments")


def test_probe_num_models_sizes_the_zoo_it_builds_and_names_its_folder(tmp_path, monkeypatch,
                                                                       capsys):
    import benchmarks.probe as probe

    built = []
    monkeypatch.setattr(probe, "build_zoo", lambda recipe, path, progress: built.append(
        (recipe.name, recipe.num_models, path.name)))
    for recipe, num_models, quick in (("resnet-mnist-wide", 2000, False), (None, 3000, False),
                                      (None, 3000, True)):
        probe.open_or_build(tmp_path, quick=quick, recipe=recipe, num_models=num_models)
    assert built == [("resnet-mnist-wide", 2000, "probe-resnet-mnist-wide-2000"),
                     ("small-cnn", 3000, "probe-small-cnn-3000"),
                     ("small-cnn", 3000, "probe-small-cnn-3000-quick")]
    for argv, fault in ((["--zoo", str(tmp_path), "--num-models", "100"], "--zoo"),
                        (["--num-models", "5"], "≥ 20")):
        with pytest.raises(SystemExit):
            probe.main(argv)
        assert fault in capsys.readouterr().err


def test_gpu_benchmark_reads_the_same_mnist_from_idx_files(tmp_path, write_idx):
    """`benchmarks/gpu.py --mnist-idx DIR` (a GPU machine without the mnist extra) trains on the
    very images and splits of the packaged MNIST."""
    import numpy as np

    from benchmarks.gpu import recipe
    from wsl.zoos.build import load_recipe_dataset
    from wsl.zoos.datasets import _load_mnist

    packaged = load_recipe_dataset(recipe(16, 16, smoke=False))
    raw = _load_mnist(None)  # all of MNIST, written out as the four IDX files
    for split, x, y in (("train", raw.x, raw.y), ("t10k", raw.x_test, raw.y_test)):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte", np.round(x[..., 0] * 255), 0x08)
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte", y, 0x08)
    from_idx = load_recipe_dataset(recipe(16, 16, smoke=False, mnist_idx=tmp_path))
    for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        assert np.array_equal(getattr(packaged, name), getattr(from_idx, name)), name


def test_pca_ceiling_projects_onto_the_span_of_the_top_components():
    import numpy as np

    from benchmarks.pca_ceiling import principal_axes, project

    rng = np.random.default_rng(0)
    # 12 points in a 3-dimensional affine subspace of R^10, one direction far wider than the rest.
    basis = np.linalg.qr(rng.standard_normal((10, 3)))[0].T
    coords = rng.standard_normal((12, 3)) * np.array([5.0, 1.0, 0.2])
    x = 3.0 + coords @ basis
    mean, axes, share = principal_axes(x)
    assert len(axes) == 3 and share == pytest.approx(np.sort(share)[::-1])
    assert share.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(project(x, mean, axes), x, atol=1e-9)  # the whole span: unchanged
    one = project(x, mean, axes[:1])
    np.testing.assert_allclose(project(one, mean, axes[:1]), one, atol=1e-9)  # idempotent
    np.testing.assert_allclose((x - one) @ axes[0], 0.0, atol=1e-9)  # residual ⟂ the kept axis
    assert np.abs(axes[0] @ basis.T).argmax() == 0  # the widest direction comes first
    assert share[0] > 0.9


def test_probe_microbatch_must_divide_the_batch(capsys):
    sys.path.insert(0, str(BENCHMARKS_DIR.parent))
    from benchmarks.probe import main

    with pytest.raises(SystemExit) as exit_:
        main(["--smoke", "--microbatch", "5"])
    stderr = capsys.readouterr().err
    assert exit_.value.code == 2 and "--microbatch: microbatch: must divide batch_size=32" in \
        stderr, stderr[-2000:]


def test_probe_runs_later_seeds_and_training_settings_in_a_folder_of_their_own(tmp_path,
                                                                                capsys):
    """`--first-seed` and `--train` reach every encoder's config, the runs go to a folder named
    after them (a probe folder refuses another config), and the README table's label says them;
    a training key that does not exist is refused naming it."""
    sys.path.insert(0, str(BENCHMARKS_DIR.parent))
    from benchmarks._report import probe_markdown
    from benchmarks.probe import main

    save = tmp_path / "result.json"
    assert main(["--smoke", "--seeds", "2", "--first-seed", "4", "--train", "ema_decay=0.9",
                 "--save", str(save)]) == 0
    result = json.loads(save.read_text())
    assert (result["first_seed"], result["train_settings"]) == (4, ["ema_decay=0.9"])
    report = json.loads(next(Path(result["zoo"]).parent.glob(
        "runs-*-from-seed4-ema_decay=0.9/statnn/results.json")).read_text())
    assert [run["seed"] for run in report["runs"]] == [4, 5]
    assert report["config"]["train"]["ema_decay"] == 0.9
    assert "2 seeds 4–5, ema_decay=0.9" in probe_markdown([str(save)])
    with pytest.raises(SystemExit):
        main(["--smoke", "--train", "ema=0.9"])
    assert "--train: " in capsys.readouterr().err


def test_transfer_experiment_keeps_mean_curves_and_seconds():
    sys.path.insert(0, str(BENCHMARKS_DIR.parent))
    from benchmarks.transfer import mean_curves, seconds_per_task

    reports = [{"curves": {"sampled": {"val_acc": [[0.5, 0.7], [0.7, 0.9]]}},
                "seconds": 4.0, "timing": {"fine_tuning_s": 1.0, "head_fit_s": 2.0}},
               {"curves": {"sampled": {"val_acc": [[0.2, 0.4], [float("nan"), 0.6]]}},
                "seconds": 6.0, "timing": {"fine_tuning_s": 3.0}}]
    np.testing.assert_allclose(mean_curves(reports)["sampled"], [(0.6 + 0.2) / 2, (0.8 + 0.5) / 2])
    # The head fit is reported only where every report has one.
    assert seconds_per_task(reports) == {"transfer": 5.0, "fine_tuning": 2.0}
    assert seconds_per_task(reports[:1])["head_fit"] == 2.0


def test_goals_table_judges_means_by_their_intervals_and_needs_every_file(tmp_path):
    """README's goals table: met only when the whole interval clears the goal (either way for an
    upper bound), a mean that clears it with an interval reaching past it is "not shown", and a
    result file the table names but cannot find is an error naming the goal."""
    sys.path.insert(0, str(BENCHMARKS_DIR.parent))
    from benchmarks._goals import _clears, _zoo_build, goals_markdown

    assert _clears({"mean": 0.03, "ci95": [0.021, 0.04]}, 0.02) == "met"
    assert _clears({"mean": 0.03, "ci95": [0.019, 0.04]}, 0.02).startswith("not shown")
    assert _clears({"mean": 0.015, "ci95": [0.008, 0.022]}, 0.02).startswith("not met on the mean")
    assert _clears({"mean": 0.01, "ci95": [0.0, 0.019]}, 0.02) == "not met"
    assert _clears({"mean": 4.0, "ci95": [3.0, 4.9]}, 5.0, at_most=True) == "met"
    assert _clears({"mean": 4.0, "ci95": [3.0, 6.0]}, 5.0, at_most=True).startswith("not shown")
    assert _clears({"mean": 7.8, "ci95": [4.7, 10.9]}, 5.0,
                   at_most=True).startswith("not met on the mean")
    report = {"mlp_speedup_vs_torch": 25.0, "cnn_speedup_vs_torch": 19.9,
              "cnn_speedup_vs_jax_loop": 3.0}
    assert _zoo_build("cnn_speedup_vs_torch", 20)(report) == ("19.90×", "not met")
    assert _zoo_build("cnn_speedup_vs_jax_loop", 3)(report) == ("3.00×", "met")
    zoo_files = [tmp_path / "zoo_build-full.json", tmp_path / "zoo_build-full-cnn-host2.json"]
    for path in zoo_files:
        path.write_text(json.dumps(report))
    with pytest.raises(FileNotFoundError, match="align-full.json"):
        goals_markdown([str(path) for path in zoo_files])
