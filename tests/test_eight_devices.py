"""Every test marked `eight_devices`, run together in one subprocess with 8 fake CPU devices.

One process pays for one JAX start-up and shares compiled programs between the sharded tests
(trainer, pipeline, population trainer, generator training, alignment, encoders); each of them
compares its sharded result with one device.
"""

import subprocess
import sys
from pathlib import Path

import jax
import pytest

TESTS = Path(__file__).resolve().parent


@pytest.mark.skipif(jax.device_count() >= 8, reason="8 devices here: the tests run directly")
def test_every_eight_device_test_passes_on_fake_devices(eight_device_env):
    files = sorted(str(p) for p in TESTS.glob("test_*.py")
                   if "mark.eight_devices" in p.read_text(encoding="utf-8"))
    assert len(files) >= 6, files
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider",
         "-m", "eight_devices and not slow", *files],
        cwd=TESTS.parent, env=eight_device_env, capture_output=True, text=True, timeout=900)
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else ""
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-3000:]
    passed = int(summary.split(" passed")[0].split()[-1])
    assert passed >= 7 and "skipped" not in summary, summary
