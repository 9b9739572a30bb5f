"""Diagnosis: on held-out tasks, is it the sampled networks' heads that fall short, and does a
better start at epoch 0 (a better head, or the kept networks' average) shorten fine-tuning?

For the transfer benchmark's main experiment (its cached zoo and generators,
`benchmarks/transfer.py`) and each held-out task, the sampled init's kept networks (chosen as
there, on validation) are scored on the task's validation split

* as generated;
* with the output layer refit by logistic regression on the task's whole *training* split, the
  hidden layers frozen (an upper bound on what a head can do for these features; not an init:
  it has seen every training label);
* with the head refit on the support set alone (the generator's own view of the task);
* with the head refit on the support set by maximum a posteriori estimation, the generated head
  the prior's mean (weight `MAP_WEIGHTS`, chosen per task on validation);
* averaged: the uniform mean of the kept networks (a "soup"; they come out of the generator in
  its aligned weight space, where `zoo_mean` averages too), one network;

and then the generated networks, the MAP-refit ones, the soup (one copy per kept network) and
random init are fine-tuned side by side
(the benchmark's settings; the same batches), to compare epochs to random init's last validation
accuracy. Test splits are never read.

    python benchmarks/transfer_heads.py --smoke   # seconds: a tiny digits zoo, 2 tasks
    python benchmarks/transfer_heads.py           # main experiment, 12 tasks, generator seed 0

Prints a table and one JSON object as the last line; ``--save`` writes it to
``benchmarks/results/transfer_heads.json``.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import numpy as np

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sklearn.linear_model import LogisticRegression  # noqa: E402

from benchmarks.transfer import (  # noqa: E402
    diagnosis_mode,
    diagnosis_parser,
    main_generator,
    save_and_print,
    target_tasks,
)
from wsl.eval.transfer import epochs_to_reach  # noqa: E402
from wsl.train.transfer import make_inits  # noqa: E402
from wsl.zoos.population import TrainSettings, shared_hparams, train_population  # noqa: E402
from wsl.zoos.scoring import head_inputs, softmax_head  # noqa: E402
from wsl.zoos.tasks import draw_support, task_dataset  # noqa: E402

MAP_WEIGHTS = (0.01, 0.1, 1.0)  # λ of λ‖head − generated head‖²; chosen per task on validation


def _features(arch, params, x) -> np.ndarray:
    return np.asarray(head_inputs(arch, params, x), np.float64)


def _split(arch, flat: np.ndarray):
    """One network's flat weights → (params, head kernel (features, k), head bias (k,))."""
    space = arch.weight_space
    params = space.unflatten(flat)
    tensors = space.as_flat_dict(params)
    kernel, bias = (np.asarray(tensors[p], np.float64) for p in space.head_paths)
    return params, kernel, bias


def _with_head(arch, flat: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    space = arch.weight_space
    out = flat.copy()
    for path, value in zip(space.head_paths, (kernel, bias)):
        start, end = space.offsets[path]
        out[start:end] = value.reshape(-1)
    return out


def _accuracy(features, kernel, bias, y) -> float:
    return float(np.mean(np.argmax(features @ kernel + bias, axis=1) == y))


def map_head(features, y, kernel, bias, weight: float):
    """Softmax regression on (features, y) with λ‖(W, b) − (kernel, bias)‖²: the generated head
    as the prior's mean."""
    return softmax_head(features, y, kernel.shape[1], weight=weight, center=(kernel, bias))


def _logistic(features, y, c: float):
    fit = LogisticRegression(C=c, max_iter=3000).fit(features, y)
    return fit.coef_.T, fit.intercept_


def diagnose(gen, task, config, epochs: int) -> dict:
    arch = gen.architecture
    data = task_dataset(task)
    inits = make_inits(gen, task, dataclasses.replace(config, inits=("sampled", "random")))
    sampled = inits["inits"]["sampled"]
    support_x, support_y = draw_support(data, config.support, config.seed)
    y_train, y_val = np.asarray(data.y_train), np.asarray(data.y_val)
    scores = {"generated": [], "refit_train": [], "refit_support": []}
    by_weight = {w: ([], []) for w in MAP_WEIGHTS}  # weight -> (accuracies, networks)
    for flat in sampled:
        params, kernel, bias = _split(arch, flat)
        train, val = _features(arch, params, data.x_train), _features(arch, params, data.x_val)
        support = _features(arch, params, support_x)
        scores["generated"].append(_accuracy(val, kernel, bias, y_val))
        scores["refit_train"].append(_accuracy(val, *_logistic(train, y_train, 10.0), y_val))
        scores["refit_support"].append(_accuracy(val, *_logistic(support, support_y, 1.0),
                                                 y_val))
        for weight in MAP_WEIGHTS:
            w, b = map_head(support, support_y, kernel, bias, weight)
            by_weight[weight][0].append(_accuracy(val, w, b, y_val))
            by_weight[weight][1].append(_with_head(arch, flat, w, b))
    weight = max(MAP_WEIGHTS, key=lambda w: np.mean(by_weight[w][0]))  # on validation
    scores["refit_support_map"] = by_weight[weight][0]
    soup = sampled.mean(0)
    params, kernel, bias = _split(arch, soup)
    scores["soup"] = [_accuracy(_features(arch, params, data.x_val), kernel, bias, y_val)]
    # Fine-tuned side by side, as `wsl.train.transfer.transfer` does: network i of every init
    # has seed i, so all see the same batches.
    starts = {"random": inits["inits"]["random"], "generated": sampled,
              "refit_support_map": np.stack(by_weight[weight][1]).astype(np.float32),
              "soup": np.repeat(soup[None], len(sampled), axis=0).astype(np.float32)}
    n = len(sampled)
    result = train_population(
        arch, data, shared_hparams(list(np.tile(np.arange(n), len(starts))), lr=config.lr[0]),
        TrainSettings(epochs=epochs, checkpoints=tuple(range(epochs + 1)),
                      batch_size=config.batch_size, optimizer=config.optimizer,
                      seed=config.seed),
        initial_params=arch.weight_space.unflatten(np.concatenate(list(starts.values()))))
    curves = {name: result.metrics["val_acc"][i * n:(i + 1) * n].mean(0).tolist()
              for i, name in enumerate(starts)}
    target = curves["random"][-1]
    return {"task": task.spec, "val_epoch0": {k: float(np.mean(v)) for k, v in scores.items()},
            "map_weight": weight, "curves": curves, "random_final": target,
            "epochs_to_random_final": {k: epochs_to_reach(curves[k], target)
                                       for k in starts if k != "random"}}


def main(argv=None) -> int:
    parser = diagnosis_parser(__doc__, "transfer_heads")
    parser.add_argument("--tasks", type=int, default=None, help="the first N held-out tasks")
    args = parser.parse_args(argv)
    mode_name, mode = diagnosis_mode(parser, args)
    if args.tasks is not None and args.tasks < 1:
        parser.error(f"--tasks: at least 1 held-out task, got {args.tasks}")
    experiment, count = mode.experiments[0], mode.tasks[0]
    with main_generator(args, mode_name, mode) as (zoo, gen, _):
        tasks = target_tasks(zoo, experiment, count)[:args.tasks]
        rows = []
        for task in tasks:
            rows.append(diagnose(gen, task, mode.transfer_config(args.seed), mode.epochs))
            r = rows[-1]
            print(f"  {task.spec}: " + ", ".join(f"{k} {v:.3f}" for k, v in
                                                  r["val_epoch0"].items())
                  + f"; epochs to random's last {r['epochs_to_random_final']}", flush=True)
    names = list(rows[0]["val_epoch0"])
    reach = {k: [r["epochs_to_random_final"][k] for r in rows]
             for k in rows[0]["epochs_to_random_final"]}
    summary = {"val_epoch0": {k: float(np.mean([r["val_epoch0"][k] for r in rows]))
                              for k in names},
               # A task never reached counts as the full run, as the transfer benchmark counts.
               "epochs_to_random_final": {k: float(np.mean([mode.epochs if e is None else e
                                                            for e in v]))
                                          for k, v in reach.items()},
               "largest_curve_gap_after_epoch1": float(max(
                   np.max(np.abs(np.subtract(r["curves"]["generated"][1:],
                                             r["curves"]["refit_support_map"][1:])))
                   for r in rows))}
    print(f"\n{experiment.name}: {len(rows)} held-out tasks, generator seed {args.seed}; "
          f"validation accuracy at epoch 0 (mean over tasks)")
    for k in names:
        print(f"  {k:<20} {summary['val_epoch0'][k]:.3f}")
    print("epochs to random init's last accuracy: " + ", ".join(
        f"{k} {v:.1f}" for k, v in summary["epochs_to_random_final"].items()))
    payload = {"benchmark": "transfer_heads", "mode": mode_name, "experiment": experiment.name,
               "seed": args.seed, "map_weights": list(MAP_WEIGHTS), "summary": summary,
               "tasks": rows}
    save_and_print(payload, args.save)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
