"""Lazy reading of a full-size Small CNN Zoo: resident memory grows by a batch, not by the file.

Writes a synthetic 30,000 × 4,970 float32 `weights.npy` (≈ 596 MB) with the published layout and
metrics files, opens it with `wsl.zoos.small_cnn_zoo.SmallCNNZoo`, reads random batches of rows, and
reports the growth of this process's resident set size against the file size. Baseline: `np.load`
of the whole file (what loaders that read `weights.npy` eagerly do), measured in a subprocess.

    python benchmarks/zoo_io.py [--rows 30000] [--batch 256] [--dir /tmp/zoo_io]
    python benchmarks/zoo_io.py --smoke      # seconds: 900 rows (17 MB), batches of 32

Prints a table; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def write_zoo(directory: Path, rows: int) -> None:
    from wsl.zoos.architectures import build

    space = build("small_cnn").weight_space
    directory.mkdir(parents=True, exist_ok=True)
    weights = np.lib.format.open_memmap(directory / "weights.npy", mode="w+", dtype=np.float32,
                                        shape=(rows, space.num_params))
    rng = np.random.default_rng(0)
    for start in range(0, rows, 2048):  # chunked, so writing does not hold the file in memory
        stop = min(start + 2048, rows)
        weights[start:stop] = rng.standard_normal((stop - start, space.num_params), np.float32)
    weights.flush()
    del weights
    names = {"conv_0": "conv2d", "conv_1": "conv2d_1", "conv_2": "conv2d_2", "dense_0": "dense"}
    with open(directory / "layout.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["varname", "start_idx", "end_idx", "size", "shape"])
        for t, (start, end) in zip(space.tensors, space.offsets.values()):
            module, kind = t.path.split("/")
            w.writerow([f"sequential/{names[module]}/{kind}:0", start, end, end - start,
                        str(t.shape)])
    with open(directory / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["modeldir", "step", "test_accuracy", "test_loss", "train_accuracy",
                    "train_loss"])
        for r in range(rows):
            w.writerow([f"m{r // 9}", (0, 1, 2, 3, 20, 40, 60, 80, 86)[r % 9], 0.5, 1.0, 0.5, 1.0])


def eager_growth(path: Path) -> float:
    # The repository root by path, not the working directory: the benchmark runs from anywhere.
    code = (f"import numpy as np, sys; sys.path.insert(0, {str(ROOT)!r}); "
            "from benchmarks.zoo_io import rss_mb; "
            f"b = rss_mb(); a = np.load({str(path)!r}); print(rss_mb() - b)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=30_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--dir", type=Path, default=None, help="where to write the zoo (kept)")
    parser.add_argument("--skip-eager", action="store_true", help="skip the np.load baseline")
    parser.add_argument("--smoke", action="store_true",
                        help="seconds: 900 rows, 2 batches of 32 (checks it runs)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.rows, args.batch, args.batches = 900, 32, 2
    directory = args.dir or Path(tempfile.mkdtemp(prefix="zoo_io_"))
    try:
        if not (directory / "weights.npy").exists():
            t = time.perf_counter()
            write_zoo(directory, args.rows)
            print(f"wrote {directory} in {time.perf_counter() - t:.1f} s")
        from wsl.zoos.architectures import build
        from wsl.zoos.small_cnn_zoo import SmallCNNZoo

        build("small_cnn")  # start JAX first: its one-off start-up is not the reader's memory
        file_mb = (directory / "weights.npy").stat().st_size / 2**20
        before = rss_mb()
        t = time.perf_counter()
        zoo = SmallCNNZoo(directory)
        opened = rss_mb()
        rng = np.random.default_rng(0)
        for _ in range(args.batches):
            batch = zoo.flat(rng.choice(len(zoo), args.batch, replace=False))
        elapsed = time.perf_counter() - t
        after = rss_mb()
        eager = float("nan") if args.skip_eager else eager_growth(directory / "weights.npy")
        rows = [("reader", "RSS growth (MB)", "file (MB)", "growth / file"),
                ("SmallCNNZoo (lazy rows), open", f"{opened - before:.1f}", f"{file_mb:.0f}",
                 f"{(opened - before) / file_mb:.4f}"),
                (f"  + {args.batches} batches of {args.batch}", f"{after - before:.1f}",
                 f"{file_mb:.0f}", f"{(after - before) / file_mb:.4f}"),
                ("np.load (eager baseline)", f"{eager:.1f}", f"{file_mb:.0f}",
                 f"{eager / file_mb:.4f}")]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for i, r in enumerate(rows):
            print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
            if i == 0:
                print("  ".join("-" * w for w in widths))
        print(f"batch shape {batch.shape}; open + read took {elapsed:.2f} s")
        print(json.dumps({"benchmark": "zoo_io", "mode": "smoke" if args.smoke else "full",
                          "rss_growth_mb": round(after - before, 2), "file_mb": round(file_mb, 1),
                          "eager_rss_growth_mb": round(eager, 1), "rows": len(zoo),
                          "batch": args.batch}))
    finally:
        if args.dir is None:
            shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
