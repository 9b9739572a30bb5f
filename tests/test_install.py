"""The installed package imports as ``wsl.*`` from anywhere, and never as bare folder names.

The folders stand at the repository's top level (``zoos/``, ``models/``, ...); from the repository
root ``import models`` would work by accident, so every check runs in a directory outside it with
no PYTHONPATH. The default suite checks this install (editable in development); the slow test
builds a wheel and checks a fresh environment with only that wheel installed.
"""

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECK = """
import importlib, sys
for bare in ("models", "train", "zoos", "eval"):
    try:
        importlib.import_module(bare)
    except ModuleNotFoundError:
        continue
    sys.exit(f"'import {bare}' works outside the repository: {sys.modules[bare]!r}")
from wsl.zoos import open_zoo
import wsl.train, wsl.eval, wsl.models, wsl.commands
import wsl
print(wsl.__file__)
"""


def _clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def _run(args, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=_clean_env(), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, f"{args}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def test_installed_package_imports_only_under_wsl(tmp_path):
    out = _run([sys.executable, "-c", CHECK], cwd=tmp_path).stdout
    assert Path(out.strip().splitlines()[-1]).name == "__init__.py"


def _copy_sources(dest: Path) -> None:
    """The repository without environments, build outputs and caches: the wheel builds there, so
    it writes nothing into the checkout."""
    skip = shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info", "__pycache__",
                                  ".pytest_cache", ".hypothesis", "runs", "shared")
    shutil.copytree(ROOT, dest, ignore=skip)


@pytest.mark.slow
def test_wheel_installs_and_imports_only_under_wsl(tmp_path):
    _copy_sources(tmp_path / "src")
    _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir",
          str(tmp_path / "dist"), str(tmp_path / "src")], cwd=tmp_path)
    wheels = list((tmp_path / "dist").glob("wsl-*.whl"))
    assert len(wheels) == 1, wheels
    # A fresh environment whose dependencies come from this one: --system-site-packages gives the
    # base interpreter's; when this is a virtual environment, a .pth adds its site-packages too
    # (after the new environment's own, and without running its .pth files, so an editable
    # install of wsl here stays invisible there).
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], cwd=tmp_path)
    python, wsl = venv / "bin" / "python", venv / "bin" / "wsl"
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                   cwd=tmp_path).stdout.strip()
    (Path(purelib) / "deps-from-test-env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheels[0])],
         cwd=tmp_path)

    outside = tmp_path / "outside"
    outside.mkdir()
    installed = Path(_run([str(python), "-c", CHECK], cwd=outside).stdout.strip().splitlines()[-1])
    assert installed.is_relative_to(venv), f"wsl imported from {installed}, not the wheel"
    usage = _run([str(wsl), "--help"], cwd=outside).stdout
    assert "usage" in usage.lower() and "zoo" in usage
