"""Diagnosis: on the generator's own *training* tasks, are its kept samples as good as the zoo's
models of those tasks?

The transfer benchmark's samples start held-out tasks below random init's last accuracy
(`benchmarks/transfer.py`). This asks whether that is fidelity (the generator cannot make networks
as good as its zoo's, whatever the task) or reach (it cannot carry them to new tasks). For the
main experiment (its cached zoo and generator) and `--tasks` of the tasks the generator was trained
on, drawn by a fixed seed, it compares on each task's validation and test splits

* ``sampled``: the generator conditioned on the task's support set, the best `keep` of `samples`
  per guidance weight kept by validation accuracy, as the transfer benchmark keeps them;
* ``sampled_all``: every sample of the winning guidance weight (what keeping adds);
* ``zoo``: the zoo's trained models of that very task (every one; nothing chosen).

The kept samples are chosen on validation, so their test accuracy is the unbiased figure. Paired
differences (sampled − zoo, per task) come with a t interval over tasks: one generator seed, so
it speaks of these tasks, not of generator seeds.

    python benchmarks/transfer_fidelity.py --smoke   # seconds: a tiny digits zoo, 3 tasks
    python benchmarks/transfer_fidelity.py           # main experiment, 12 training tasks, seed 0

Prints a table and one JSON object as the last line; ``--save`` writes it to
``benchmarks/results/transfer_fidelity.json``.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import numpy as np

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.transfer import (  # noqa: E402
    diagnosis_mode,
    diagnosis_parser,
    main_generator,
    save_and_print,
)
from wsl.eval.intervals import t_interval  # noqa: E402
from wsl.train.transfer import make_inits, training_rows  # noqa: E402
from wsl.zoos.scoring import population_metrics  # noqa: E402
from wsl.zoos.tasks import Task, task_dataset  # noqa: E402

SPLITS = ("val", "test")


def training_tasks(metrics: dict, count: int) -> list[Task]:
    """`count` of the tasks the generator's training rows hold models of, drawn by a fixed seed
    (in sorted order the first ones share their classes)."""
    specs = sorted(set(str(t) for t in metrics["task"]))
    tasks = [Task.parse(s) for s in specs]
    pick = np.sort(np.random.default_rng(0).choice(len(tasks), min(count, len(tasks)),
                                                   replace=False))
    return [tasks[i] for i in pick]


def compare(gen, task: Task, config, metrics: dict, aligned: np.ndarray) -> dict:
    """Kept samples, all samples and the zoo's own models of `task`, scored on val and test."""
    arch = gen.architecture
    data = task_dataset(task)
    made = make_inits(gen, task, dataclasses.replace(config, inits=("sampled",)))
    note = made["notes"]["sampled"]
    kept = made["inits"]["sampled"]
    mine = np.asarray([str(t) for t in metrics["task"]]) == task.spec
    own = aligned[mine]
    out = {"task": task.spec, "guidance": note["guidance"], "zoo_models": int(len(own))}
    for name, flat in (("sampled", kept), ("zoo", own)):
        scores = population_metrics(arch, flat, data, splits=SPLITS)
        out[name] = {s: float(np.mean(scores[f"{s}_acc"])) for s in SPLITS}
    # What the zoo recorded for them, on its evaluation subsample (the recipe's eval_examples of
    # the source's validation split): beside the rescoring on the whole split, for comparison.
    out["zoo"]["val_recorded"] = float(np.mean(metrics["val_acc"][mine]))
    out["sampled_all"] = {"val": float(np.mean(note["val_acc_of_all"]))}
    return out


def summarise(rows: list[dict]) -> dict:
    summary = {}
    for name in ("sampled", "zoo"):
        for split in SPLITS:
            values = [r[name][split] for r in rows]
            summary[f"{name}_{split}"] = {"mean": float(np.mean(values)),
                                          "range": [float(min(values)), float(max(values))]}
    for split in SPLITS:
        diff = [r["sampled"][split] - r["zoo"][split] for r in rows]
        summary[f"sampled_minus_zoo_{split}"] = {"mean": float(np.mean(diff)),
                                                 "ci95_over_tasks": t_interval(diff)}
    summary["sampled_all_val"] = {"mean": float(np.mean([r["sampled_all"]["val"] for r in rows]))}
    return summary


def main(argv=None) -> int:
    parser = diagnosis_parser(__doc__, "transfer_fidelity")
    parser.add_argument("--tasks", type=int, default=None,
                        help="training tasks compared (default 12, as the held-out tasks; "
                             "smoke: 3)")
    args = parser.parse_args(argv)
    mode_name, mode = diagnosis_mode(parser, args)
    if args.tasks is None:
        args.tasks = 3 if args.smoke else 12
    if args.tasks < 2:
        parser.error(f"--tasks: at least 2 training tasks (an interval needs two), "
                     f"got {args.tasks}")
    experiment = mode.experiments[0]
    config = mode.transfer_config(args.seed)
    with main_generator(args, mode_name, mode) as (_, gen, gen_name):
        metrics, aligned = training_rows(gen)
        rows = []
        for task in training_tasks(metrics, args.tasks):
            rows.append(compare(gen, task, config, metrics, aligned))
            r = rows[-1]
            print(f"  {task.spec}: kept samples val {r['sampled']['val']:.3f} test "
                  f"{r['sampled']['test']:.3f}; zoo ({r['zoo_models']}) val {r['zoo']['val']:.3f}"
                  f" test {r['zoo']['test']:.3f}", flush=True)
    summary = summarise(rows)
    print(f"\n{experiment.name}: {len(rows)} of the generator's training tasks, generator seed "
          f"{args.seed}; {config.keep} kept of {config.samples} samples per guidance weight")
    print(f"  {'':<12} {'val':>22} {'test':>22}")
    for name in ("sampled", "zoo"):
        print(f"  {name:<12} " + " ".join(
            "{mean:.3f} [{0:.3f}-{1:.3f}]".format(*summary[f"{name}_{s}"]["range"],
                                                 mean=summary[f"{name}_{s}"]["mean"]).rjust(22)
            for s in SPLITS))
    print("  sampled - zoo " + ", ".join(
        f"{s} {summary[f'sampled_minus_zoo_{s}']['mean']:+.3f} "
        f"[{summary[f'sampled_minus_zoo_{s}']['ci95_over_tasks'][0]:+.3f}, "
        f"{summary[f'sampled_minus_zoo_{s}']['ci95_over_tasks'][1]:+.3f}]" for s in SPLITS)
        + " (95 % t interval over tasks)")
    print(f"  every sample (before keeping), val {summary['sampled_all_val']['mean']:.3f}")
    payload = {"benchmark": "transfer_fidelity", "mode": mode_name, "experiment": experiment.name,
               "generator": gen_name, "seed": args.seed, "samples": config.samples,
               "keep": config.keep, "guidance": list(config.guidance), "summary": summary,
               "tasks": rows}
    save_and_print(payload, args.save)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
