"""`wsl transfer` end to end on a tiny multi-task zoo, its bad inputs, and the summaries."""

import csv
import dataclasses
import json

import numpy as np
import pytest

from wsl.commands import main as wsl
from wsl.eval.transfer import aggregate, epochs_to_reach, summarize
from wsl.train.transfer import TransferConfig, TransferError, control_task, transfer
from wsl.zoos.tasks import Task


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    root = tmp_path_factory.mktemp("transfer")
    assert wsl(["zoo", "build", "digits-tasks", "--out", str(root / "zoo"), "--no-progress",
                "num_models=12", "epochs=2", "checkpoints=[0,2]", "models_per_shard=12"]) == 0
    assert wsl(["gen", "train", "--zoo", str(root / "zoo"), "--out", str(root / "gen"),
                "--no-progress", "condition_task=true", "hidden=32", "depth=1",
                "train.steps=30"]) == 0
    return root


def _heldout(root):
    manifest = json.loads((root / "zoo" / "manifest.json").read_text())
    return [t["spec"] for t in manifest["tasks"]["table"] if t["split"] == "heldout"]


def test_transfer_end_to_end(generator, capsys):
    task = _heldout(generator)[0]
    out = generator / "out"
    assert wsl(["transfer", "--generator", str(generator / "gen"), "--task", task,
                "--samples", "3", "--keep", "2", "--epochs", "2", "--out", str(out),
                "--guidance", "0.5,2", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"task {task}" in printed and "nearest_task" in printed
    report = json.loads((out / "transfer.json").read_text())
    assert (out / "transfer.png").stat().st_size > 0
    assert set(report["curves"]) == {"sampled", "random", "zoo_mean", "nearest_task",
                                     "wrong_task"}
    for name, curve in report["curves"].items():
        assert np.asarray(curve["val_acc"]).shape == (2, 3), name  # kept networks × epochs 0..2
        assert len(curve["test_acc_final"]) == 2 and len(curve["test_acc_epoch0"]) == 2
        assert 0 <= min(curve["test_acc_epoch0"]) and max(curve["test_acc_epoch0"]) <= 1
    assert "test@0" in printed  # the inits' own test accuracy, beside their validation one
    sampled = report["curves"]["sampled"]
    # The two kept samples are the best two of three by validation accuracy of the task.
    val = np.asarray(sampled["val_acc_of_all"])
    assert sorted(sampled["kept"]) == sorted(np.argsort(-val, kind="stable")[:2].tolist())
    np.testing.assert_allclose(np.asarray(sampled["val_acc"])[:, 0], val[sampled["kept"]],
                               atol=1e-6)
    # The guidance weight is the candidate whose kept samples score best on validation.
    by_guidance = sampled["val_acc_by_guidance"]
    assert set(by_guidance) == {"0.5", "2.0"}
    assert by_guidance[str(sampled["guidance"])] == max(by_guidance.values())
    assert report["curves"]["wrong_task"]["guidance"] == sampled["guidance"]
    assert report["curves"]["wrong_task"]["task"] == control_task(Task.parse(task)).spec
    assert report["curves"]["nearest_task"]["task"] not in _heldout(generator)
    # The random init learns the task within two epochs of fine-tuning: real training.
    assert report["summary"]["random"]["val_final"] > 0.5
    # A second run into the same folder keeps the first result unless asked.
    before = (out / "transfer.json").read_bytes()
    assert wsl(["transfer", "--generator", str(generator / "gen"), "--task", task,
                "--out", str(out), "--epochs", "1"]) == 2
    assert "--force" in capsys.readouterr().err
    assert (out / "transfer.json").read_bytes() == before
    assert wsl(["transfer", "--generator", str(generator / "gen"), "--list-tasks"]) == 0
    assert capsys.readouterr().out.split() == _heldout(generator)


def _fails(args, capsys, words, code=1):
    assert wsl(["transfer"] + args) == code
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1, err


def test_transfer_bad_inputs(generator, capsys):
    gen = str(generator / "gen")
    _fails(["--generator", gen, "--task", "digitz:0-1-2-3-4"], capsys, "unknown task source")
    _fails(["--generator", gen, "--task", "digits:0-1-2-3-14", "--epochs", "1"], capsys,
           "has classes 0..9")
    _fails(["--generator", gen, "--task", "digits:0-1-2"], capsys, "makes 5-way networks")
    _fails(["--generator", gen, "--task", "mnist1d:0-1-2-3-4"], capsys,
           "makes networks for inputs (8, 8, 1)")
    with open(generator / "zoo" / "metrics.csv") as table:
        train_task = next(csv.DictReader(table))["task"]
    _fails(["--generator", gen, "--task", train_task, "--inits", "nearest_task"], capsys,
           "trained on")
    _fails(["--generator", gen, "--task", _heldout(generator)[0], "--inits", "sampled,best"],
           capsys, "inits", code=2)
    _fails(["--generator", gen, "--task", _heldout(generator)[0], "--keep", "5",
            "--samples", "2"], capsys, "keep", code=2)
    _fails(["--generator", gen], capsys, "--task", code=2)


def test_few_shot_fine_tuning(generator, capsys):
    """--train-per-class fine-tunes on that many examples per class, the support among them."""
    from wsl.train.transfer import fine_tuning_data
    from wsl.zoos.tasks import draw_support, task_dataset

    task = Task.parse(_heldout(generator)[0])
    data = task_dataset(task)
    config = TransferConfig(train_per_class=4, support=3, seed=1)
    few = fine_tuning_data(data, config)
    assert np.bincount(few.y_train, minlength=data.num_classes).tolist() == [4] * 5
    assert few.x_val is data.x_val and few.x_test is data.x_test
    support_x, _ = draw_support(data, config.support, config.seed)
    rows = {r.tobytes() for r in few.x_train}
    assert all(r.tobytes() in rows for r in support_x)
    assert fine_tuning_data(data, TransferConfig()) is data
    out = generator / "few"
    assert wsl(["transfer", "--generator", str(generator / "gen"), "--task", task.spec,
                "--samples", "2", "--epochs", "1", "--train-per-class", "4", "--batch-size",
                "8", "--inits", "sampled,random", "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "transfer.json").read_text())
    assert report["config"]["train_per_class"] == 4 and report["config"]["batch_size"] == 8
    capsys.readouterr()
    _fails(["--generator", str(generator / "gen"), "--task", task.spec, "--train-per-class",
            "-1"], capsys, "train_per_class", code=2)


def test_several_learning_rates_each_init_at_its_best_on_validation(generator, capsys):
    """With several --lr rates every init is fine-tuned at each and reported at the one whose
    networks end best on validation; its curves are those of a run at that rate alone."""
    task = _heldout(generator)[0]
    both = transfer(generator / "gen", task, TransferConfig(samples=2, epochs=2, lr=(3e-3, 0.3),
                                                            inits=("sampled", "random")),
                    progress=False)
    for name, curve in both["curves"].items():
        by_lr = curve["val_final_by_lr"]
        assert set(by_lr) == {"0.003", "0.3"}
        assert by_lr[str(curve["lr"])] == max(by_lr.values()), name
        alone = transfer(generator / "gen", task,
                         TransferConfig(samples=2, epochs=2, lr=curve["lr"],
                                        inits=("sampled", "random")), progress=False)
        assert "lr" not in alone["curves"][name]  # one rate: nothing chosen
        np.testing.assert_allclose(curve["val_acc"], alone["curves"][name]["val_acc"],
                                   atol=1e-6, err_msg=name)
    _fails(["--generator", str(generator / "gen"), "--task", task, "--lr", "3e-3,0"], capsys,
           "lr", code=2)
    _fails(["--generator", str(generator / "gen"), "--task", task, "--lr", "fast"], capsys,
           "--lr takes numbers", code=2)


def test_head_epochs_probe_linearly_then_fine_tune(generator, capsys):
    """--head-epochs N: the first N epochs train the head alone, then everything; the curve is
    one run of `epochs` epochs whose first N match a head-only population run."""
    from wsl.train.generator import TrainedGenerator
    from wsl.train.transfer import make_inits
    from wsl.zoos.population import TrainSettings, shared_hparams, train_population
    from wsl.zoos.tasks import task_dataset

    task = Task.parse(_heldout(generator)[0])
    config = TransferConfig(samples=2, epochs=3, head_epochs=1, inits=("sampled", "random"))
    report = transfer(generator / "gen", task, config, progress=False)
    gen = TrainedGenerator.load(generator / "gen")
    inits = make_inits(gen, task, config)["inits"]
    flat = np.concatenate([inits["sampled"], inits["random"]])
    probe = train_population(gen.architecture, task_dataset(task),
                             shared_hparams([0, 1, 0, 1], lr=config.lr[0]),
                             TrainSettings(epochs=1, checkpoints=(0, 1), batch_size=32,
                                           trainable=gen.architecture.weight_space.head_paths),
                             initial_params=gen.architecture.weight_space.unflatten(flat))
    for i, name in enumerate(("sampled", "random")):
        curve = np.asarray(report["curves"][name]["val_acc"])
        assert curve.shape == (2, 4), name
        np.testing.assert_allclose(curve[:, :2], probe.metrics["val_acc"][2 * i:2 * i + 2],
                                   atol=1e-6, err_msg=name)
    assert report["config"]["head_epochs"] == 1
    _fails(["--generator", str(generator / "gen"), "--task", task.spec, "--epochs", "2",
            "--head-epochs", "3"], capsys, "head_epochs: 3 of 2 epochs", code=2)


def test_exact_head_fit_is_the_first_epoch(generator, capsys):
    """--head-epochs 1 --head-fit exact: epoch 0 is the inits as they are, epoch 1 the inits with
    their heads refit by softmax regression on the training split, and fine-tuning starts there:
    the rest of the curve is a population run of the remaining epochs from the refit inits."""
    from wsl.train.generator import TrainedGenerator
    from wsl.train.transfer import make_inits
    from wsl.zoos.population import TrainSettings, shared_hparams, train_population
    from wsl.zoos.scoring import population_metrics, refit_heads
    from wsl.zoos.tasks import task_dataset

    task = Task.parse(_heldout(generator)[0])
    config = TransferConfig(samples=2, epochs=3, head_epochs=1, head_fit="exact",
                            inits=("sampled", "random"))
    report = transfer(generator / "gen", task, config, progress=False)
    gen = TrainedGenerator.load(generator / "gen")
    arch, data = gen.architecture, task_dataset(task)
    inits = make_inits(gen, task, config)["inits"]
    flat = np.concatenate([inits["sampled"], inits["random"]])
    refit = refit_heads(arch, flat, data.x_train, data.y_train)
    rest = train_population(arch, data, shared_hparams([0, 1, 0, 1], lr=config.lr[0]),
                            TrainSettings(epochs=2, checkpoints=(0, 1, 2), batch_size=32,
                                          seed=config.seed + 1),
                            initial_params=arch.weight_space.unflatten(refit))
    start = population_metrics(arch, flat, data, splits=("val",))["val_acc"]
    for i, name in enumerate(("sampled", "random")):
        curve = np.asarray(report["curves"][name]["val_acc"])
        assert curve.shape == (2, 4), name
        np.testing.assert_allclose(curve[:, 0], start[2 * i:2 * i + 2], atol=1e-6, err_msg=name)
        np.testing.assert_allclose(curve[:, 1:], rest.metrics["val_acc"][2 * i:2 * i + 2],
                                   atol=1e-6, err_msg=name)
    assert report["timing"]["head_fit_s"] > 0
    _fails(["--generator", str(generator / "gen"), "--task", task.spec, "--head-fit", "exact"],
           capsys, "head_fit='exact' fits the head once", code=2)
    _fails(["--generator", str(generator / "gen"), "--task", task.spec, "--head-epochs", "1",
            "--head-fit", "lbfgs"], capsys, "head_fit: 'lbfgs' is not one of", code=2)


def test_warmup_and_schedule_reach_the_population_trainer(generator, capsys):
    """--warmup-epochs E --lr-schedule cosine: every init is fine-tuned with the rate warmed up
    over E epochs and annealed, as a population run with TrainSettings(warmup_epochs=E,
    lr_schedule="cosine") from the same inits."""
    from wsl.train.generator import TrainedGenerator
    from wsl.train.transfer import make_inits
    from wsl.zoos.population import TrainSettings, shared_hparams, train_population
    from wsl.zoos.tasks import task_dataset

    task = Task.parse(_heldout(generator)[0])
    config = TransferConfig(samples=2, epochs=1, warmup_epochs=0.5, lr_schedule="cosine",
                            inits=("sampled", "random"))
    report = transfer(generator / "gen", task, config, progress=False)
    gen = TrainedGenerator.load(generator / "gen")
    inits = make_inits(gen, task, config)["inits"]
    warmed = train_population(gen.architecture, task_dataset(task),
                              shared_hparams([0, 1, 0, 1], lr=config.lr[0]),
                              TrainSettings(epochs=1, checkpoints=(0, 1), batch_size=32,
                                            warmup_epochs=0.5, lr_schedule="cosine"),
                              initial_params=gen.architecture.weight_space.unflatten(
                                  np.concatenate([inits["sampled"], inits["random"]])))
    for i, name in enumerate(("sampled", "random")):
        np.testing.assert_allclose(report["curves"][name]["val_acc"],
                                   warmed.metrics["val_acc"][2 * i:2 * i + 2], atol=1e-6,
                                   err_msg=name)
    assert report["config"]["warmup_epochs"] == 0.5
    assert report["config"]["lr_schedule"] == "cosine"
    _fails(["--generator", str(generator / "gen"), "--task", task.spec, "--epochs", "2",
            "--warmup-epochs", "3"], capsys, "warmup_epochs: must lie in [0, epochs = 2]", code=2)
    _fails(["--generator", str(generator / "gen"), "--task", task.spec, "--lr-schedule",
            "linear"], capsys, "lr_schedule: 'linear' is none of ['constant', 'cosine']", code=2)


def test_keep_by_probe_keeps_the_networks_with_the_best_features(generator, capsys):
    """--keep-by probe: the kept samples are the best by a linear probe of their features (fit on
    the training split, scored on validation), and so are the nearest-task models."""
    from wsl.train.generator import TrainedGenerator
    from wsl.zoos.scoring import linear_probe_accuracy
    from wsl.zoos.tasks import draw_support, support_features, task_dataset

    task = Task.parse(_heldout(generator)[0])
    gen = TrainedGenerator.load(generator / "gen")
    config = TransferConfig(samples=6, keep=2, keep_by="probe", inits=("sampled",))
    report = transfer(gen, task, dataclasses.replace(config, epochs=0), progress=False)
    note = report["curves"]["sampled"]
    data = task_dataset(task)
    support = support_features(*draw_support(data, config.support, config.seed),
                               data.num_classes)
    drawn = gen.sample(6, seed=0, cond_task=support, guidance=None)
    probe = linear_probe_accuracy(gen.architecture, drawn, (data.x_train, data.y_train),
                                  (data.x_val, data.y_val))
    np.testing.assert_allclose(note["probe_acc_of_all"], probe, atol=1e-6)
    assert sorted(note["kept"]) == sorted(np.argsort(-probe, kind="stable")[:2].tolist())
    assert wsl(["transfer", "--generator", str(generator / "gen"), "--task", task.spec,
                "--samples", "3", "--keep", "1", "--keep-by", "probe", "--epochs", "0",
                "--out", str(generator / "probe"), "--no-progress"]) == 0
    assert json.loads((generator / "probe" / "transfer.json").read_text())["config"][
        "keep_by"] == "probe"
    capsys.readouterr()
    _fails(["--generator", str(generator / "gen"), "--task", task.spec, "--keep-by", "loss"],
           capsys, "keep_by: 'loss' is not one of", code=2)


def test_accuracy_condition_is_asked_of_the_samples(generator, capsys):
    """A generator trained on task and validation accuracy samples for --cond-scalar (a
    quantile); one without the scalar condition, or an unknown quantile, is refused up front."""
    from wsl.train.generator import TrainedGenerator
    from wsl.train.transfer import make_inits

    gen_dir = generator / "gen-acc"
    assert wsl(["gen", "train", "--zoo", str(generator / "zoo"), "--out", str(gen_dir),
                "--no-progress", "condition_task=true", "condition_scalar=val_acc", "hidden=32",
                "depth=1", "train.steps=30"]) == 0
    task = Task.parse(_heldout(generator)[0])
    gen = TrainedGenerator.load(gen_dir)
    draw = lambda value: make_inits(gen, task, TransferConfig(
        samples=3, inits=("sampled",), cond_scalar=value))["inits"]["sampled"]
    high, low, none = draw("q90"), draw("q10"), draw("")
    assert not np.allclose(high, low) and not np.allclose(high, none)
    np.testing.assert_allclose(draw("q90"), high)  # deterministic for the seed
    capsys.readouterr()
    _fails(["--generator", str(gen_dir), "--task", task.spec, "--cond-scalar", "q91"], capsys,
           "q91")
    _fails(["--generator", str(generator / "gen"), "--task", task.spec, "--cond-scalar", "q90"],
           capsys, "no scalar condition")


def test_plain_generator_is_refused(generator):
    from wsl.train.generator import TrainedGenerator

    gen = TrainedGenerator.load(generator / "gen")
    gen.meta = {**gen.meta, "task": None}
    with pytest.raises(TransferError, match="not task-conditioned"):
        transfer(gen, _heldout(generator)[0], TransferConfig(samples=1, epochs=0),
                 progress=False)


def test_summaries_and_aggregation():
    assert epochs_to_reach([0.1, 0.5, 0.9], 0.5) == 1 and epochs_to_reach([0.1], 0.5) is None
    curves = {"random": {"val_acc": [[0.2, 0.6, 0.8]], "test_acc_final": [0.79]},
              "sampled": {"val_acc": [[0.5, 0.8, 0.85], [0.7, 0.82, 0.9]],
                          "test_acc_final": [0.84, 0.86]}}
    s = summarize(curves, 2)
    assert s["sampled"]["epochs_to_random_final"] == 1
    assert s["random"]["epochs_to_random_final"] == 2
    assert s["sampled"]["val_epoch0"] == pytest.approx(0.6)
    slow = {"random": curves["random"], "sampled": {"val_acc": [[0.1, 0.2, 0.3]],
                                                     "test_acc_final": [0.3]}}
    reports = [{"seed": 0, "config": {"epochs": 2}, "summary": s},
               {"seed": 1, "config": {"epochs": 2}, "summary": summarize(slow, 2)}]
    agg = aggregate(reports)
    # A task never reaching random's final accuracy counts as epochs + 1 = 3.
    assert agg["sampled"]["epochs_to_random_final"]["per_seed"] == [1.0, 3.0]
    assert agg["sampled"]["reached_random_final"] == 0.5
    lo, hi = agg["sampled"]["val_epoch0"]["ci95"]
    assert lo < agg["sampled"]["val_epoch0"]["mean"] < hi
    # The inits' test accuracy at epoch 0 where recorded; a report from before it was is
    # aggregated without it rather than failing.
    curves["sampled"]["test_acc_epoch0"] = [0.6, 0.8]
    curves["random"]["test_acc_epoch0"] = [0.21]
    assert summarize(curves, 2)["sampled"]["test_epoch0"] == pytest.approx(0.7)
    newer = [{"seed": 2, "config": {"epochs": 2}, "summary": summarize(curves, 2)}]
    assert aggregate(newer)["sampled"]["test_epoch0"]["mean"] == pytest.approx(0.7)
    assert "test_epoch0" not in aggregate(reports + newer)["sampled"]


def test_gen_sample_for_a_task(generator, capsys):
    task = _heldout(generator)[1]
    out = generator / "samples"
    assert wsl(["gen", "sample", str(generator / "gen"), "-n", "4", "--out", str(out),
                "--task", task]) == 0
    assert f"validation accuracy on {task}" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dataset"]["options"]["spec"] == task
    from wsl.zoos.store import Zoo

    assert Zoo.open(out).dataset().name == task  # scored on, and reopened with, the task's data
    assert wsl(["gen", "sample", str(generator / "gen"), "-n", "4", "--out",
                str(generator / "samples2")]) == 1
    assert "give --task SPEC" in capsys.readouterr().err
    # wsl gen eval audits the samples on their task, against every training model.
    assert wsl(["gen", "eval", str(out), "--generator", str(generator / "gen")]) == 0
    assert f"scored on its task {task}" in capsys.readouterr().out
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["num_generated"] == 4
    assert evaluation["num_train"] == 12


@pytest.mark.parametrize("method", [pytest.param("ddpm", marks=pytest.mark.slow), "latent-ddpm"])
def test_diffusion_generators_take_tasks_too(generator, method, capsys):
    out = generator / f"gen-{method}"
    assert wsl(["gen", "train", "--zoo", str(generator / "zoo"), "--out", str(out),
                "--method", method, "--no-progress", "condition_task=true", "hidden=32",
                "depth=1", "train.steps=10", "ae_steps=10", "ae_hidden=[32]", "latent_dim=8",
                "diffusion_steps=20", "sample_steps=5"]) == 0
    task = _heldout(generator)[2]
    assert wsl(["gen", "sample", str(out), "-n", "3", "--out", str(out / "samples"),
                "--task", task]) == 0
    assert f"validation accuracy on {task}" in capsys.readouterr().out
