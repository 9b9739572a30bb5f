"""Import rules: layers point one way, bare folder names are never imported, tests stay apart.

core (``wsl``) ← ``wsl.zoos`` ← ``wsl.models`` ← ``wsl.train`` ← ``wsl.eval`` ← ``wsl.commands``:
a module may import its own layer or a lower one, never a higher one. Every import counts, at the
top of a file or inside a function. import-linter cannot check this: grimp only scans the root
package's own folder, and these subpackages live in sibling folders.
"""

import ast
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# folder -> the package it installs as (pyproject.toml's package-dir)
PACKAGES = {"wsl": "wsl", "zoos": "wsl.zoos", "models": "wsl.models", "train": "wsl.train",
            "eval": "wsl.eval"}
LAYERS = {"zoos": 1, "models": 2, "train": 3, "eval": 4, "commands": 5}  # under wsl.; else core 0
LAYER_NAMES = ("core", "zoos", "models", "train", "eval", "commands")
BARE = ("zoos", "models", "train", "eval")  # importable only from the repository root
SKIP_DIRS = {"build", "dist", "__pycache__", "node_modules"}


def module_layer(name: str) -> int | None:
    """The layer of an absolute module name; None outside the library."""
    parts = name.split(".")
    if parts[0] != "wsl":
        return None
    return LAYERS.get(parts[1], 0) if len(parts) > 1 else 0


def file_package(path: Path) -> str:
    """The package a library file's relative imports resolve against (``zoos/x.py``: wsl.zoos)."""
    rel = path.relative_to(ROOT)
    return ".".join([PACKAGES[rel.parts[0]], *rel.parts[1:-1]])


def imported_modules(tree: ast.AST, package: str):
    """(line, absolute module names) of every import statement in `tree`. A name imported from a
    package may be a submodule (``from wsl import train``), so it is listed as one too."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield node.lineno, [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            yield node.lineno, [module] + [f"{module}.{alias.name}" for alias in node.names]


def layer_violations(source: str, filename: str, package: str) -> list[str]:
    """``file:line`` messages, one per import statement of a layer above `package`'s own."""
    own = module_layer(package)
    found = []
    for line, modules in imported_modules(ast.parse(source, filename), package):
        layer, module = max((module_layer(m) or 0, m) for m in modules)
        if layer > own:
            found.append((line, f"{filename}:{line}: {LAYER_NAMES[own]} module imports "
                                f"{module} ({LAYER_NAMES[layer]})"))
    return [message for _, message in sorted(found)]


def bare_imports(source: str, filename: str) -> list[str]:
    """``file:line`` messages for each absolute import of a bare folder name (``import train``)."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        else:
            continue
        for name in names:
            if name.split(".")[0] in BARE:
                found.append(f"{filename}:{node.lineno}: imports {name!r}; use 'wsl.{name}'")
    return found


def _python_files(top: Path):
    for folder, dirs, files in os.walk(top):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS
                         and not d.endswith(".egg-info"))
        yield from (Path(folder) / f for f in sorted(files) if f.endswith(".py"))


def _library_files():
    for folder in PACKAGES:
        yield from _python_files(ROOT / folder)


# ------------------------------------------------------------------------------ the checker
def test_checker_catches_upward_imports_anywhere_in_a_file():
    source = ("import numpy\n"
              "from wsl.weight_space import WeightSpace\n"
              "def f():\n"
              "    from wsl.train import train\n"  # inside a function still counts
              "    import wsl.eval.lmc\n"
              "from wsl import models\n"  # a subpackage imported by name
              "from ..commands import main\n")  # relative, from wsl.zoos: wsl.commands
    found = layer_violations(source, "zoos/x.py", "wsl.zoos")
    assert [f.split(":")[1] for f in found] == ["4", "5", "6", "7"], found
    assert "zoos/x.py:4: zoos module imports wsl.train.train (train)" in found
    # Same or lower layers are fine; so is everything outside the library.
    ok = ("from wsl.zoos.store import Zoo\nfrom wsl import WslError\nfrom . import store\n"
          "import jax\n")
    assert layer_violations(ok, "models/y.py", "wsl.models") == []
    assert layer_violations("from wsl.commands import main\n", "wsl/commands/z.py",
                            "wsl.commands") == []
    assert layer_violations("from wsl.commands import main\n", "wsl/align.py", "wsl") != []


def test_checker_catches_bare_folder_names():
    source = "import models\nfrom train.trainer import train\nimport eval.lmc as lmc\n"
    assert len(bare_imports(source, "x.py")) == 3
    assert bare_imports("from zoos import open_zoo\n", "x.py") == [
        "x.py:1: imports 'zoos'; use 'wsl.zoos'"]
    assert bare_imports("import wsl.zoos\nfrom . import models\nimport evaluate\n", "x.py") == []


def test_file_packages():
    assert file_package(ROOT / "zoos" / "store.py") == "wsl.zoos"
    assert file_package(ROOT / "wsl" / "commands" / "zoo.py") == "wsl.commands"
    assert module_layer(file_package(ROOT / "wsl" / "commands" / "zoo.py")) == 5
    assert module_layer(file_package(ROOT / "wsl" / "align.py")) == 0


# ------------------------------------------------------------------------------ the repository
def test_layers_point_one_way():
    files = list(_library_files())
    assert len(files) > 30 and ROOT / "wsl" / "commands" / "__init__.py" in files
    found = [v for path in files
             for v in layer_violations(path.read_text(), str(path.relative_to(ROOT)),
                                       file_package(path))]
    assert not found, "imports against the layers:\n" + "\n".join(found)


def test_no_bare_folder_imports_anywhere():
    files = list(_python_files(ROOT))
    assert ROOT / "tests" / "test_layers.py" in files
    found = [v for path in files
             for v in bare_imports(path.read_text(), str(path.relative_to(ROOT)))]
    assert not found, "bare folder imports (they work only from the repository root):\n" + \
        "\n".join(found)


def imports_of_tests(source: str, filename: str, test_modules: set[str]) -> list[str]:
    """``file:line`` messages for each import of one of `test_modules` (by module stem)."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            names = [base] + [f"{base}.{alias.name}".lstrip(".") for alias in node.names]
        else:
            continue
        if any(set(name.split(".")) & test_modules for name in names):
            found.append(f"{filename}:{node.lineno}: imports {names[-1]}")
    return found


def test_checker_catches_test_modules_importing_each_other():
    modules = {"test_a", "test_b"}
    for source in ("from tests.test_a import helper\n", "import tests.test_b\n",
                   "from . import test_a\n", "from .test_b import x\n", "import test_a\n",
                   "def f():\n    from tests import test_b\n"):
        assert imports_of_tests(source, "tests/test_c.py", modules), source
    assert imports_of_tests("import pytest\nfrom wsl.config import test_value\n",
                               "tests/test_c.py", modules) == []


def test_no_test_module_imports_another():
    paths = sorted((ROOT / "tests").glob("test_*.py"))
    stems = {p.stem for p in paths}
    assert "test_layers" in stems
    found = [v for path in paths
             for v in imports_of_tests(path.read_text(), f"tests/{path.name}", stems)]
    assert not found, "shared helpers belong in tests/conftest.py:\n" + "\n".join(found)
