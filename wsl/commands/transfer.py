"""`wsl transfer`: sample networks for a new task from a task-conditioned generator and fine-tune.

    wsl transfer --generator G --task mnist8:0-3-5-7-9:rot90 [--samples 10] [--epochs 25]
                 [--support 10] [--keep 0] [--guidance 1,2,3] [--lr 3e-3,1e-3]
                 [--train-per-class N] [--keep-by probe] [--head-epochs 1]
                 [--head-fit exact] [--warmup-epochs 1] [--out DIR]
    wsl transfer --generator G --list-tasks          # the held-out tasks of its training zoo

A task is ``SOURCE:CLASSES:TRANSFORM`` (`wsl.zoos.tasks`). The generator sees the task only
through a support set of ``--support`` labelled training examples per class; ``--train-per-class
N`` fine-tunes on N labelled examples per class (the support among them) instead of the whole
training split — the few-shot regime. Every init
(sampled, random, zoo mean, nearest-task zoo model, wrong-task control) gets the same number of
networks, fine-tuned together on the same batches; ``--keep K`` keeps the K best of
``--samples`` sampled networks by the task's *validation* accuracy (the nearest-task init then
keeps the K best of as many models of the nearest tasks), and several ``--guidance`` weights are
chosen between on validation too, as are several ``--lr`` rates (each init fine-tuned at every
rate and reported at its best). ``--head-epochs N``: the first N of the epochs train the output
layer alone, every init alike (linear probing, then fine-tuning; ``--head-fit exact`` makes the
one head epoch a softmax regression on the frozen features, solved to convergence);
``--warmup-epochs E`` raises
the learning rate linearly over the first E epochs, every init alike. The test split is scored once,
after the last epoch. Writes ``transfer.json`` (curves and summary) and ``transfer.png`` (learning
curves) to ``--out`` (default: ``GENERATOR/transfer/TASK``; an earlier result there is kept unless
``--force``) and prints the table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from wsl.commands import _help
from wsl.errors import UsageError


def _parser() -> argparse.ArgumentParser:
    from wsl.train.transfer import INITS, TransferConfig

    d = TransferConfig()
    p = _help.parser("wsl transfer", __doc__)
    p.add_argument("--generator", required=True, metavar="DIR",
                   help="a task-conditioned generator (wsl gen train on a multi-task zoo with "
                        "condition_task=true)")
    p.add_argument("--task", metavar="SPEC", help="SOURCE:CLASSES:TRANSFORM, e.g. "
                                                  "mnist8:0-3-5-7-9:rot90")
    p.add_argument("--list-tasks", action="store_true",
                   help="print the training zoo's held-out tasks and exit")
    p.add_argument("--samples", type=int, default=d.samples, metavar="K",
                   help="networks sampled (and, without --keep, networks per init)")
    p.add_argument("--keep", type=int, default=d.keep, metavar="K",
                   help="keep the K best samples by validation accuracy (0: all)")
    p.add_argument("--epochs", type=int, default=d.epochs, metavar="E",
                   help="fine-tuning epochs")
    p.add_argument("--support", type=int, default=d.support, metavar="N",
                   help="support examples per class that describe the task to the generator")
    p.add_argument("--train-per-class", type=int, default=d.train_per_class, metavar="N",
                   help="fine-tune on N labelled training examples per class (the support "
                        "among them); 0: the whole training split")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="fine-tuning batch size")
    p.add_argument("--lr", default=",".join(map(str, d.lr)), metavar="R[,R...]",
                   help="fine-tuning learning rate(s); with several, every init is fine-tuned at "
                        "each and reported at the one it ends best at on the task's validation "
                        "split")
    p.add_argument("--optimizer", default=d.optimizer, help="fine-tuning optimizer")
    p.add_argument("--keep-by", default=d.keep_by, metavar="val|probe",
                   help="--keep keeps the networks best by validation accuracy as they are (val) "
                        "or of a linear probe of their features fit on the training split "
                        "(probe; their heads are refit by fine-tuning anyway)")
    p.add_argument("--head-epochs", type=int, default=d.head_epochs, metavar="N",
                   help="of the --epochs, the first N train the output layer alone, every init "
                        "alike (linear probing, then fine-tuning); 0: everything throughout")
    p.add_argument("--head-fit", default=d.head_fit, metavar="sgd|exact",
                   help="how the head-only epochs train the head: the optimizer (sgd), or, with "
                        "--head-epochs 1, a softmax regression of the training split on each "
                        "network's frozen features solved to convergence (exact)")
    p.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs, metavar="E",
                   help="raise the learning rate linearly from near 0 over the first E epochs "
                        "(fractions allowed), every init alike; 0: none")
    p.add_argument("--lr-schedule", default=d.lr_schedule, metavar="constant|cosine",
                   help="the learning rate throughout (constant) or annealed to 0 along half a "
                        "cosine over the --epochs (cosine), every init alike")
    p.add_argument("--guidance", default=None, metavar="W[,W...]",
                   help="classifier-free guidance weight(s) for the sampled init; with several, "
                        "the one whose samples score best on the task's validation split is "
                        "used (default: the generator's)")
    p.add_argument("--cond-scalar", default=d.cond_scalar, metavar="V",
                   help="with a generator trained also with condition_scalar=COLUMN: the value "
                        "asked of the sampled networks, a number or a quantile of its training "
                        "population (q10 … q90)")
    p.add_argument("--inits", default=",".join(INITS), metavar="LIST",
                   help="inits to compare, comma-separated")
    p.add_argument("--seed", type=int, default=d.seed,
                   help="seed of the support set, the samples and the fine-tuning")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="where transfer.json and transfer.png go")
    p.add_argument("--force", action="store_true",
                   help="overwrite an earlier transfer.json / transfer.png in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _help.add_cpu_devices(p, "the fine-tuned networks")
    return p


def _numbers(text: str | None, option: str) -> tuple[float, ...]:
    if not text:
        return ()
    try:
        return tuple(float(w) for w in text.split(",") if w.strip())
    except ValueError:
        raise UsageError(f"{option} takes numbers separated by commas, got {text!r}") from None


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from wsl.config import ConfigError
    from wsl.eval.transfer import finish, table
    from wsl.mesh import describe_mesh, split_cpu
    from wsl.outputs import check_output_dir
    from wsl.train.generator import TrainedGenerator
    from wsl.train.transfer import TransferConfig, transfer
    from wsl.zoos.population import population_mesh
    from wsl.zoos.tasks import Task, tasks_of

    # First, before JAX starts: the networks fine-tune side by side, a device per core (see
    # split_cpu); sampling runs on one of them.
    split_cpu(args.cpu_devices)
    if args.task is None and not args.list_tasks:
        raise UsageError("give --task SPEC (e.g. mnist8:0-3-5-7-9:rot90) or --list-tasks")
    try:
        config = TransferConfig(samples=args.samples, keep=args.keep, epochs=args.epochs,
                                support=args.support, lr=_numbers(args.lr, "--lr"),
                                optimizer=args.optimizer,
                                train_per_class=args.train_per_class,
                                batch_size=args.batch_size, head_epochs=args.head_epochs,
                                head_fit=args.head_fit,
                                warmup_epochs=args.warmup_epochs,
                                lr_schedule=args.lr_schedule,
                                keep_by=args.keep_by,
                                seed=args.seed, guidance=_numbers(args.guidance, "--guidance"),
                                cond_scalar=args.cond_scalar,
                                inits=tuple(i.strip() for i in args.inits.split(",") if i.strip()))
    except ConfigError as err:
        raise UsageError(str(err)) from None
    task = Task.parse(args.task) if args.task else None  # a bad spec fails before any work
    generator = TrainedGenerator.load(args.generator)
    if args.list_tasks:
        from wsl.zoos.store import Zoo

        for held in tasks_of(Zoo.open(generator.meta["zoo"]).manifest, "heldout"):
            print(held.spec)
        return 0
    out = Path(args.out) if args.out else Path(args.generator) / "transfer" / task.spec.replace(
        ":", "_")
    # Before any work: an earlier result is never overwritten unasked, nor written into a zoo.
    check_output_dir(out)
    for name in ("transfer.json", "transfer.png"):
        if (out / name).exists() and not args.force:
            raise UsageError(f"--out {out} already holds {name} from an earlier transfer; pass "
                             f"--force to overwrite it or choose another --out")
    # Fine-tuning shards the networks as the population trainer does; sampling uses the default
    # device.
    mesh = population_mesh()
    print(f"{describe_mesh(mesh)} (fine-tuning; sampling on the default device)", flush=True)
    report = finish(transfer(generator, task, config, progress=not args.no_progress, mesh=mesh),
                    out)
    print(table(report))
    print(f"wrote {out / 'transfer.json'} and {out / 'transfer.png'}")
    return 0
