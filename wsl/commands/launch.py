"""`wsl launch -n N -- COMMAND ...`: one multi-process JAX run of N local processes.

Each process gets the environment `wsl.distributed` reads (``JAX_COORDINATOR_ADDRESS``,
``WSL_NUM_PROCESSES``, ``WSL_PROCESS_ID``) and runs COMMAND, which joins the run when it starts.
Process 0 writes to this terminal; the others' standard output is dropped (every process of a
run computes the same summaries) unless ``--all-output``, their errors always show, prefixed
``[process i]``. If one process fails, the others are stopped and its exit code is returned.

On a cluster, set the three variables on every host yourself (the coordinator is host 0) or run
under SLURM (``srun -n N wsl ...``), where JAX reads the allocation itself.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

from wsl.commands._help import parser as make_parser
from wsl.errors import UsageError


def _parser():
    p = make_parser("wsl launch", __doc__,
                    epilog="example: wsl launch -n 2 -- wsl zoo build quick --out runs/zoo")
    p.add_argument("-n", "--num-processes", type=int, required=True, metavar="N",
                   help="number of processes")
    p.add_argument("--port", type=int, default=0,
                   help="coordinator port on this machine (default: a free one)")
    p.add_argument("--devices-per-process", type=int, default=None, metavar="K",
                   help="fake CPU devices per process (XLA_FLAGS "
                        "--xla_force_host_platform_device_count=K; default: as XLA_FLAGS says)")
    p.add_argument("--all-output", action="store_true",
                   help="show every process's standard output, prefixed [process i]")
    p.add_argument("command", nargs=argparse.REMAINDER, help="the command to run, after --")
    return p


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _environment(index: int, count: int, port: int, devices: int | None) -> dict:
    env = dict(os.environ, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
               WSL_NUM_PROCESSES=str(count), WSL_PROCESS_ID=str(index))
    if devices is not None:
        flags = [f for f in env.get("XLA_FLAGS", "").split()
                 if not f.startswith("--xla_force_host_platform_device_count")]
        env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"])
    return env


def _forward(stream, prefix: str, out) -> None:
    for line in stream:
        out.write(prefix + line)
        out.flush()


def launch(command: list[str], count: int, *, port: int = 0, devices: int | None = None,
           all_output: bool = False, poll: float = 0.1) -> int:
    """Run `command` as `count` processes of one run; the first failing exit code, else 0."""
    port = port or _free_port()
    processes, threads = [], []
    for index in range(count):
        quiet = index > 0 and not all_output
        proc = subprocess.Popen(
            command, env=_environment(index, count, port, devices), text=True,
            stdout=subprocess.DEVNULL if quiet else (None if index == 0 else subprocess.PIPE),
            stderr=None if index == 0 else subprocess.PIPE)
        processes.append(proc)
        for stream, out in ((proc.stdout, sys.stdout), (proc.stderr, sys.stderr)):
            if stream is not None:
                thread = threading.Thread(target=_forward, daemon=True,
                                          args=(stream, f"[process {index}] ", out))
                thread.start()
                threads.append(thread)
    try:
        while True:
            codes = [p.poll() for p in processes]  # every process polled, each time
            failed = [c for c in codes if c not in (None, 0)]
            if failed or None not in codes:
                # A failed process: the others would wait for it at their next collective.
                code = failed[0] if failed else 0
                break
            time.sleep(poll)
    except KeyboardInterrupt:
        code = 130
    for proc in processes:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in processes:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for thread in threads:
        thread.join(timeout=1)
    return 128 - code if code < 0 else code  # killed by signal N: 128 + N, as a shell says


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise UsageError("no command to launch; e.g. wsl launch -n 2 -- wsl zoo build quick "
                         "--out runs/zoo")
    if args.num_processes < 1:
        raise UsageError(f"-n must be ≥ 1; got {args.num_processes}")
    if args.devices_per_process is not None and args.devices_per_process < 1:
        raise UsageError(f"--devices-per-process must be ≥ 1; got {args.devices_per_process}")
    print(f"wsl launch: {args.num_processes} processes: {shlex.join(command)}",
          file=sys.stderr, flush=True)
    if command[0] == "wsl":  # this installation's wsl, whether or not it is on PATH
        command = [sys.executable, "-m", "wsl.commands", *command[1:]]
    return launch(command, args.num_processes, port=args.port, devices=args.devices_per_process,
                  all_output=args.all_output)
