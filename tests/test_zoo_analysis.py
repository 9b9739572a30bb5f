"""Phase zoos and `wsl zoo analyze`: width-masked training, analysed columns beside the metrics
table, resumable analysis, phase plots, and their errors."""

import hashlib
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from wsl.commands import main as cli
from wsl.eval.errors import EvaluationError
from wsl.eval.phase import phase_grid
from wsl.eval.zoo_analysis import (
    METRICS,
    AnalyzeSettings,
    analyze_zoo,
    last_layer_input,
    parse_metrics,
)
from wsl.mesh import make_mesh
from wsl.train.probe import select_rows
from wsl.weight_space import WeightSpaceError
from wsl.zoos.architectures import build
from wsl.zoos.build import build_zoo
from wsl.zoos.recipes import Recipe, RecipeError, get_recipe
from wsl.zoos.store import METRICS_FILE, Zoo, ZooError, verify_zoo, write_analysis

ONE_DEVICE = make_mesh(("models",), devices=jax.devices()[:1])
# Cheap settings: the numbers are checked for their properties, not their precision.
FAST = AnalyzeSettings(examples=128, lanczos_iterations=12, trace_samples=12, bezier_steps=30,
                       batch_models=8)


def _phase_recipe(**change) -> Recipe:
    fields = dict(name="phase-test", architecture="mlp", arch={"widths": (8, 8)},
                  dataset="digits", num_models=12, epochs=2, batch_size=32, models_per_shard=6,
                  sampling="grid", width=(2, 4, 8), lr=(0.05, 0.3), optimizer=("sgd",),
                  activation=("tanh",))
    return Recipe(**{**fields, **change})


@pytest.fixture(scope="module")
def phase_zoo(tmp_path_factory):
    return build_zoo(_phase_recipe(), tmp_path_factory.mktemp("phase") / "zoo", progress=False,
                     mesh=ONE_DEVICE)


def _copy(zoo, tmp_path):
    shutil.copytree(zoo.path, tmp_path / "zoo")
    return tmp_path / "zoo"


def _digest(path) -> dict:
    """sha256 of every file of a zoo that a build wrote (metrics table, shards)."""
    files = [path / METRICS_FILE] + sorted((path / "shards").rglob("*"))
    return {str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in files if f.is_file()}


# ------------------------------------------------------------------------------ phase zoos
def test_phase_grid_walks_width_and_lr_with_seeds(phase_zoo):
    m = phase_zoo.filter(epoch="last").metrics
    cells = {(int(w), float(lr)) for w, lr in zip(m["width"], m["lr"])}
    assert cells == {(w, lr) for w in (2, 4, 8) for lr in (0.05, 0.3)}
    for cell in cells:  # two seeds per cell, with their own initialisations
        assert sum((int(w), float(lr)) == cell for w, lr in zip(m["width"], m["lr"])) == 2
    assert "width" in phase_zoo.column_meanings and phase_zoo.column_types["width"] == "int"
    for name in ("phase-mlp-mnist1d", "phase-small-cnn"):
        recipe = get_recipe(name)
        assert len(recipe.width) >= 5 and len(recipe.lr) >= 5 and recipe.sampling == "grid"
        assert recipe.num_models % (len(recipe.width) * len(recipe.lr)) == 0


def test_narrow_models_compute_what_the_narrow_network_computes(phase_zoo):
    """A width-w model keeps its other units at zero through training, so it is exactly the
    w-unit network: its outputs equal those of the narrow architecture given its sub-weights."""
    zoo = phase_zoo.filter(epoch="last")
    wide = zoo.architecture
    x = np.asarray(zoo.dataset().x_test[:64])
    for i in np.flatnonzero(zoo.metrics["width"] < 8)[:2]:
        w = int(zoo.metrics["width"][i])
        params = zoo.params(i)
        k0, k1, k2 = (params[f"dense_{j}"]["kernel"] for j in range(3))
        assert np.all(k0[:, w:] == 0) and np.all(k1[w:] == 0) and np.all(k1[:, w:] == 0)
        assert np.all(k2[w:] == 0) and np.any(k1[:w, :w] != 0)
        narrow = build("mlp", **{**wide.config, "widths": (w, w)})
        sub = {"dense_0": {"kernel": k0[:, :w], "bias": params["dense_0"]["bias"][:w]},
               "dense_1": {"kernel": k1[:w, :w], "bias": params["dense_1"]["bias"][:w]},
               "dense_2": {"kernel": k2[:w], "bias": params["dense_2"]["bias"]}}
        np.testing.assert_allclose(wide.apply(params, x), narrow.apply(sub, x), rtol=1e-5,
                                   atol=1e-5)


def test_width_is_refused_where_padding_would_change_the_function():
    resnet = build("resnet", input_shape=(8, 8, 1), width=4, stages=1)
    with pytest.raises(WeightSpaceError, match="normalisation"):
        resnet.weight_space.width_mask(2)
    with pytest.raises(RecipeError, match="width"):
        _phase_recipe(width=(0, 4))
    with pytest.raises(RecipeError, match="repeat"):
        _phase_recipe(width=(4, 4))


# ------------------------------------------------------------------------- analysed columns
def test_analysed_columns_sit_beside_an_untouched_table(phase_zoo, tmp_path):
    path = _copy(phase_zoo, tmp_path)
    before = _digest(path)
    rows = len(Zoo.open(path))
    first = np.where(np.arange(rows) % 2 == 0, np.arange(rows, dtype=float), np.nan)
    zoo = write_analysis(path, {"probe_me": first}, {"probe_me": "a test column"},
                         {"test": {"how": "by hand"}})
    assert _digest(path) == before  # metrics table and shards byte for byte
    assert zoo.columns[-1] == "probe_me" and zoo.column_meanings["probe_me"] == "a test column"
    np.testing.assert_array_equal(zoo.metrics["probe_me"], first)
    # a second write fills only the missing values and keeps the first ones
    zoo = write_analysis(path, {"probe_me": np.full(rows, -1.0)}, {}, {})
    expect = np.where(np.isnan(first), -1.0, first)
    np.testing.assert_array_equal(Zoo.open(path).metrics["probe_me"], expect)
    # "measured, no value" (NaN) is kept apart from "not measured" (an empty cell)
    zoo = write_analysis(path, {"maybe": np.full(rows, np.nan)}, {}, {},
                         {"maybe": np.arange(rows) < 3})
    assert zoo.analysed("maybe").tolist() == [True] * 3 + [False] * (rows - 3)
    assert np.isnan(zoo.metrics["maybe"]).all() and zoo.analysed("probe_me").all()
    assert zoo.manifest["analysis"]["metrics"] == {"test": {"how": "by hand"}}
    assert len(list(path.glob("analysis-*.csv"))) == 1  # the old version is removed
    assert verify_zoo(path).ok
    with pytest.raises(ZooError, match="shadow"):
        write_analysis(path, {"test_acc": np.zeros(rows)}, {}, {})
    with pytest.raises(ZooError, match="values for a zoo"):
        write_analysis(path, {"other": np.zeros(rows + 1)}, {}, {})


def test_rebuilding_an_analysed_zoo_resumes_and_keeps_its_columns(phase_zoo, tmp_path):
    # The analysis is not part of which zoo this is: the same build over it is a resume.
    path = _copy(phase_zoo, tmp_path)
    before = _digest(path)
    values = np.arange(len(Zoo.open(path)), dtype=float)
    write_analysis(path, {"probe_me": values}, {"probe_me": "a test column"}, {})
    zoo = build_zoo(_phase_recipe(), path, progress=False, mesh=ONE_DEVICE)
    assert _digest(path) == before
    np.testing.assert_array_equal(zoo.metrics["probe_me"], values)
    assert verify_zoo(path).ok
    with pytest.raises(ZooError, match="different zoo"):  # another recipe is still refused
        build_zoo(_phase_recipe(epochs=3), path, progress=False, mesh=ONE_DEVICE)


def test_damaged_analysis_file_is_named(phase_zoo, tmp_path):
    path = _copy(phase_zoo, tmp_path)
    rows = len(Zoo.open(path))
    write_analysis(path, {"col": np.arange(rows, dtype=float)}, {}, {})
    file = next(path.glob("analysis-*.csv"))
    file.write_bytes(file.read_bytes()[:-20])  # truncated
    with pytest.raises(ZooError, match=file.name):
        Zoo.open(path)
    report = verify_zoo(path)
    assert not report.ok and file.name in report.problems[0]
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["analysis"]["file"] = "../elsewhere.csv"
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ZooError, match="analysis.file"):
        Zoo.open(path)


# ---------------------------------------------------------------------------------- analyze
def test_analyze_adds_every_metric_for_the_last_epoch(phase_zoo, tmp_path):
    path = _copy(phase_zoo, tmp_path)
    report = analyze_zoo(path, "hessian,spectral,farms,cka,mc", "last", FAST, progress=False)
    zoo = Zoo.open(path)
    last = zoo.filter(epoch="last").metrics
    other = zoo.filter(where=lambda m: m["epoch"] < 2).metrics
    for name in report.metrics:
        for column in METRICS[name].columns:
            if name not in ("spectral", "farms"):
                assert np.isfinite(last[column]).all(), column
            assert np.isnan(other[column]).all(), column  # other epochs were not asked for
    assert (last["hessian_top_eigenvalue"] > 0).all() and (last["hessian_trace"] > 0).all()
    assert (last["hessian_trace"] >= last["hessian_top_eigenvalue"] * 0.5).all()
    # spectra need >= 8 eigenvalues per layer (WeightWatcher's minimum): only width 8 has them
    wide = last["width"] == 8
    assert (last["stable_rank"][wide] >= 1 - 1e-6).all()
    assert (last["spectral_alpha"][wide] > 1).all()
    for column in ("spectral_alpha", "farms_alpha", "stable_rank", "log_spectral_norm"):
        assert np.isnan(last[column][~wide]).all()
    assert ((last["cka_cell"] > 0) & (last["cka_cell"] <= 1 + 1e-5)).all()
    best = np.argmax(last["val_acc"])
    assert last["cka_reference"][best] == pytest.approx(1.0, abs=1e-5)  # itself
    # partners: the other seed of the same cell
    model = {int(m): i for i, m in enumerate(last["model"])}
    for i, partner in enumerate(last["mc_partner"]):
        j = model[int(partner)]
        assert j != i and last["width"][j] == last["width"][i] and last["lr"][j] == last["lr"][i]
    assert (last["mc_bezier_barrier"] <= last["mc_linear_barrier"] + 1e-6).all()
    assert zoo.manifest["analysis"]["metrics"]["hessian"]["data"]["examples"] == 128
    # probes take an analysed column as a target like any other: rows with a value
    assert len(select_rows(zoo, "hessian_trace")) == 12
    assert len(select_rows(zoo, "spectral_alpha")) == int(wide.sum())
    assert not (path / ".analysis-parts").exists()
    again = analyze_zoo(path, "hessian,spectral", "last", FAST, progress=False)
    assert again.computed_units == 0 and again.skipped == {"hessian": 12, "spectral": 12}


def test_interrupted_analyze_resumes_without_recomputing_finished_shards(phase_zoo, tmp_path):
    path = _copy(phase_zoo, tmp_path)
    calls = []

    def stop_after_first(metric, shard):
        calls.append((metric, shard))
        if len(calls) == 1:
            raise KeyboardInterrupt("simulated Ctrl-C")

    with pytest.raises(KeyboardInterrupt):
        analyze_zoo(path, "hessian", "last", FAST, progress=False, on_unit=stop_after_first)
    assert "analysis" not in Zoo.open(path).manifest  # nothing half-written into the zoo
    resumed = analyze_zoo(path, "hessian", "last", FAST, progress=False)
    assert (resumed.reused_units, resumed.computed_units) == (1, 1)  # two shards of 6 models
    straight = _copy(phase_zoo, tmp_path / "b")
    analyze_zoo(straight, "hessian", "last", FAST, progress=False)
    for column in METRICS["hessian"].columns:
        np.testing.assert_allclose(Zoo.open(path).metrics[column],
                                   Zoo.open(straight).metrics[column], rtol=1e-5)


def test_masked_hessian_is_the_narrow_networks(phase_zoo):
    """The Hessian of a width-2 model in padded tensors equals the dense Hessian of the 2-unit
    network (its padded coordinates left out)."""
    zoo = phase_zoo.filter(epoch="last")
    i = int(np.flatnonzero(zoo.metrics["width"] == 2)[0])
    # 166 own parameters: a Hutch++ sketch of 170 vectors (510 HVPs) spans them, so exact
    settings = AnalyzeSettings(examples=32, lanczos_iterations=40, trace_samples=510)
    from wsl.eval.zoo_analysis import _Context, hessian_program

    context = _Context(Zoo.open(phase_zoo.path), settings)
    x, y, _ = context.data()
    row = zoo.global_rows[i:i + 1]
    arch = zoo.architecture
    top, trace = hessian_program(arch, settings, True)(
        context.params(row), context.masks(arch, row), x, y, context.keys(row))
    params = zoo.params(i)
    w = 2
    narrow = build("mlp", **{**arch.config, "widths": (w, w)})
    sub = {"dense_0": {"kernel": params["dense_0"]["kernel"][:, :w],
                       "bias": params["dense_0"]["bias"][:w]},
           "dense_1": {"kernel": params["dense_1"]["kernel"][:w, :w],
                       "bias": params["dense_1"]["bias"][:w]},
           "dense_2": {"kernel": params["dense_2"]["kernel"][:w],
                       "bias": params["dense_2"]["bias"]}}
    flat, unravel = ravel_pytree(jax.tree.map(jnp.asarray, sub))
    loss = lambda v: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        narrow.apply(unravel(v), x), y))
    dense = np.linalg.eigvalsh(np.asarray(jax.hessian(loss)(flat), np.float64))
    assert float(top[0]) == pytest.approx(dense[-1], rel=1e-3)
    assert float(trace[0]) == pytest.approx(dense.sum(), rel=1e-3)
    # what `wsl zoo analyze` runs: the narrowed 2-unit architecture, no mask
    narrowed_values = context.compute("hessian", row)
    assert narrowed_values["hessian_top_eigenvalue"][0] == pytest.approx(dense[-1], rel=1e-3)
    assert narrowed_values["hessian_trace"][0] == pytest.approx(dense.sum(), rel=1e-3)
    from wsl.zoos.architectures import narrowed

    assert narrowed(arch, 2).config["widths"] == (2, 2)
    transformer = build("transformer", input_shape=(14, 14, 1), patch=7)
    assert narrowed(transformer, 4) is None  # no width key: the masked way


def test_hessian_of_a_cnn_matches_the_dense_hessian():
    """Convolutions too (the trainer's matmul convolutions have a custom gradient that forward
    mode cannot differentiate: the Hessian must not use them)."""
    from wsl.eval.zoo_analysis import hessian_program

    arch = build("small_cnn", input_shape=(4, 4, 1), num_classes=3, channels=3, num_layers=1,
                 activation="tanh")
    params = jax.tree.map(lambda a: a[None], arch.init(jax.random.key(0)))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 4, 4, 1)).astype(np.float32)
    y = rng.integers(0, 3, 16).astype(np.int32)
    settings = AnalyzeSettings(lanczos_iterations=45, trace_samples=3 * 45)
    top, trace = hessian_program(arch, settings, False)(params, 0, x, y,
                                                        jax.random.split(jax.random.key(1), 1))
    flat, unravel = ravel_pytree(jax.tree.map(lambda a: jnp.asarray(a[0]), params))
    loss = lambda v: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        arch.apply(unravel(v), x), y))
    dense = np.linalg.eigvalsh(np.asarray(jax.hessian(loss)(flat), np.float64))
    assert len(flat) <= 45  # the sketch spans every direction: both estimates are exact
    assert float(top[0]) == pytest.approx(dense[-1], rel=1e-3)
    assert float(trace[0]) == pytest.approx(dense.sum(), rel=1e-3, abs=1e-4)


def test_last_layer_input_is_the_penultimate_representation():
    arch = build("mlp", input_shape=(5,), num_classes=3, widths=(4, 6), activation="relu")
    params = arch.init(jax.random.key(0))
    x = np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32)
    h = jax.nn.relu(x @ params["dense_0"]["kernel"] + params["dense_0"]["bias"])
    h = jax.nn.relu(h @ params["dense_1"]["kernel"] + params["dense_1"]["bias"])
    np.testing.assert_allclose(last_layer_input(arch)(params, x), h, rtol=1e-5, atol=1e-6)


def test_cka_of_a_network_is_blind_to_its_symmetries():
    """CKA of a network's representation with itself is 1, and stays 1 when its hidden units are
    permuted (`random_permutation`) or the representation is scaled: the same function."""
    from wsl.eval.cka import linear_cka

    arch = build("small_cnn", input_shape=(8, 8, 1), num_classes=10, channels=6, num_layers=2)
    params = arch.init(jax.random.key(1))
    x = np.random.default_rng(1).normal(size=(40, 8, 8, 1)).astype(np.float32)
    features = last_layer_input(arch)
    rep = features(params, x)
    permuted = arch.weight_space.permute(params, arch.weight_space.random_permutation(
        jax.random.key(2)))
    rep_permuted = features(permuted, x)
    assert not np.allclose(rep, rep_permuted)  # the units did move
    assert float(linear_cka(rep, rep)) == pytest.approx(1.0, abs=1e-5)
    assert float(linear_cka(rep, rep_permuted)) == pytest.approx(1.0, abs=1e-5)
    assert float(linear_cka(rep, 7.5 * rep_permuted)) == pytest.approx(1.0, abs=1e-5)
    other = features(arch.init(jax.random.key(3)), x)
    assert float(linear_cka(rep, other)) < 0.99  # another network is not the same


# ------------------------------------------------------------------------------ bad input
def test_analyze_errors_are_one_line(phase_zoo, tmp_path, capsys):
    with pytest.raises(EvaluationError, match="unknown metric 'sharpness'"):
        parse_metrics("hessian,sharpness")
    assert cli(["zoo", "analyze", str(phase_zoo.path), "--metrics", "nope"]) == 1
    assert "unknown metric 'nope'" in capsys.readouterr().err
    random = build_zoo(Recipe(name="random", architecture="mlp", arch={"widths": (4,)},
                              dataset="digits", num_models=3, epochs=1, lr=(1e-3, 1e-2)),
                       tmp_path / "random", progress=False, mesh=ONE_DEVICE)
    with pytest.raises(EvaluationError, match="grid cell"):
        analyze_zoo(random.path, "mc", progress=False)
    with pytest.raises(EvaluationError, match="no kernel of this zoo's 'mlp' networks"):
        analyze_zoo(random.path, "spectral", progress=False)  # 64-4-10: too small for a fit
    with pytest.raises(EvaluationError, match="no rows at epoch"):
        analyze_zoo(phase_zoo.path, "spectral", 99, progress=False)
    nodata = _copy(phase_zoo, tmp_path / "nodata")
    manifest = json.loads((nodata / "manifest.json").read_text())
    manifest["dataset"] = {"name": "somewhere", "external": True}  # as an imported zoo records
    (nodata / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EvaluationError, match="needs the zoo's training data"):
        analyze_zoo(nodata, "hessian", progress=False)
    analyze_zoo(nodata, "spectral", progress=False)  # weights alone are enough for spectra
    path = _copy(phase_zoo, tmp_path)
    (path / METRICS_FILE).write_text("model,epoch\n")
    assert cli(["zoo", "analyze", str(path), "--metrics", "spectral"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and METRICS_FILE in err and "Traceback" not in err


# ------------------------------------------------------------------------------ phase plots
def test_phase_grid_averages_the_seeds_of_each_cell(phase_zoo):
    grid = phase_grid(phase_zoo, "width", "lr", "test_acc")
    last = phase_zoo.filter(epoch="last").metrics
    assert grid.mean.shape == (2, 3) and (grid.count == 2).all()
    pick = (last["width"] == 4) & (last["lr"] == 0.3)
    assert grid.mean[1, 1] == pytest.approx(last["test_acc"][pick].mean())
    assert "width" in grid.table()
    with pytest.raises(EvaluationError, match="no column 'nope'"):
        phase_grid(phase_zoo, "width", "lr", "nope")


def test_cli_analyze_then_plot(phase_zoo, tmp_path, capsys):
    path = _copy(phase_zoo, tmp_path)
    assert cli(["zoo", "analyze", str(path), "--metrics", "spectral", "--no-progress"]) == 0
    assert "spectral_alpha" in capsys.readouterr().out
    out = tmp_path / "phase.png"
    assert cli(["zoo", "plot", str(path), "--color", "test_acc,spectral_alpha",
                "--out", str(out)]) == 0
    assert out.stat().st_size > 10_000 and "spectral_alpha" in capsys.readouterr().out
    size = out.stat().st_size
    assert cli(["zoo", "plot", str(path), "--out", str(out)]) == 1  # nothing is overwritten
    assert "already exists" in capsys.readouterr().err and out.stat().st_size == size
    assert cli(["zoo", "plot", str(path), "--out", str(out), "--force"]) == 0


@pytest.mark.eight_devices
def test_sharded_analysis_matches_one_device(phase_zoo):
    """With 8 devices the model axis is sharded (chunks padded to a multiple of 8); the numbers
    are those of one device."""
    import dataclasses

    from wsl.eval.zoo_analysis import _Context

    assert jax.device_count() == 8
    rows = phase_zoo.filter(epoch="last").global_rows[:5]
    zoo = Zoo.open(phase_zoo.path)
    sharded = _Context(zoo, FAST)
    single = _Context(zoo, dataclasses.replace(FAST, batch_models=2))
    single.mesh = make_mesh(("models",), devices=jax.devices()[:1])
    for metric in ("hessian", "mc", "cka"):
        a, b = sharded.compute(metric, rows), single.compute(metric, rows)
        for column in a:
            np.testing.assert_allclose(a[column], b[column], rtol=2e-4, atol=1e-5,
                                       err_msg=f"{metric}: {column}")
