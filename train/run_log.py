"""A run's metrics record: JSON lines in the run directory, TensorBoard if installed, a bar.

TensorBoard event files need tensorboardX: ``pip install "wsl[tensorboard]"``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import time
from pathlib import Path

from tqdm.auto import tqdm

METRICS_FILE = "metrics.jsonl"


def _summary_writer(directory: Path):
    """A TensorBoard writer from whichever package is installed, else None (it is optional)."""
    # Look before importing: torch's writer needs the tensorboard package, and importing torch
    # only to find that out costs seconds.
    if importlib.util.find_spec("tensorboardX") is not None:
        from tensorboardX import SummaryWriter
    elif (importlib.util.find_spec("tensorboard") is not None
          and importlib.util.find_spec("torch") is not None):
        from torch.utils.tensorboard import SummaryWriter
    else:
        return None
    return SummaryWriter(str(directory))


def read_records(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _json_value(value):
    # JSON has no NaN / inf; write them as strings a reader can still parse with float().
    return value if math.isfinite(value) else str(value)


class RunLog:
    """One JSON object per record in ``run_dir/metrics.jsonl``: ``{"step": s, "train/loss": …}``.

    Opening at `resume_step` drops records after it (written by a run that was killed before its
    next checkpoint), so the file reads as one uninterrupted run.
    """

    def __init__(self, run_dir: str | Path, *, total_steps: int, resume_step: int = 0,
                 progress: bool = True, tensorboard: bool = True, primary: bool = True,
                 label: str | None = None):
        # Only the primary process (of several hosts) writes files and shows the bar; `label`
        # names the bar when a command trains more than one run.
        self.run_dir = Path(run_dir)
        self.records = [r for r in read_records(self.run_dir) if r["step"] <= resume_step]
        self._file = self._writer = None
        if primary:
            path = self.run_dir / METRICS_FILE
            path.write_text("".join(json.dumps(r) + "\n" for r in self.records))
            self._file = path.open("a")
            self._writer = _summary_writer(self.run_dir / "tensorboard") if tensorboard else None
        self._bar = tqdm(total=total_steps, initial=resume_step, disable=not (progress and primary),
                         dynamic_ncols=True, unit="step", desc=label)
        self._last_step, self._last_time = resume_step, time.perf_counter()

    def write(self, step: int, metrics: dict[str, float]) -> dict:
        record = {"step": int(step), **{k: _json_value(float(v)) for k, v in metrics.items()}}
        self.records.append(record)
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        if self._writer is not None:
            for key, value in metrics.items():
                self._writer.add_scalar(key, float(value), int(step))
        return record

    def advance(self, step: int, loss: float) -> float:
        """Move the progress bar to `step`; returns the training rate in steps per second."""
        now = time.perf_counter()
        rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
        self._bar.update(step - self._last_step)
        self._bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
        self._last_step, self._last_time = step, now
        return rate

    def close(self) -> None:
        self._bar.close()
        if self._file is not None:
            self._file.close()
        if self._writer is not None:
            self._writer.close()
