"""Import boundaries of the package, checked by parsing every module's imports (``ast``).

- The copyable core (``summarymixing/{__init__,cell,mixers,encoders,architecture}.py`` and
  ``summarymixing/w2v2/``) imports only the standard library, torch, SpeechBrain and other core
  modules: copying those files is enough to use SummaryMixing elsewhere.
- ``data_prep`` imports nothing from the model package ``summarymixing`` (nor from the recipes).

Imports inside functions count as well. A violation names the module, the line and the import.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CORE_FILES = ("summarymixing/__init__.py", "summarymixing/cell.py", "summarymixing/mixers.py",
              "summarymixing/encoders.py", "summarymixing/architecture.py",
              "summarymixing/branchformer.py", "summarymixing/asr.py")
CORE_FOLDERS = ("summarymixing/w2v2",)
CORE_THIRD_PARTY = {"torch", "speechbrain"}


def module_name(path: Path) -> str:
    """``summarymixing/w2v2/encoder.py`` -> ``summarymixing.w2v2.encoder`` (packages without
    ``.__init__``)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(module: str, source: str, is_package: bool = False) -> list[tuple[int, str]]:
    """``(line, module)`` of every import in ``source`` (relative imports resolved against
    ``module``); ``from a import b`` yields ``a.b``, which may be a submodule or a name."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".")
                anchor = package[: len(package) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def is_module(name: str) -> bool:
    """Whether a dotted name is a module or package of this repository."""
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def is_core(module: str) -> bool:
    """Whether a module of this repository belongs to the copyable core."""
    core = {module_name(ROOT / name) for name in CORE_FILES}
    folders = {module_name(ROOT / name / "__init__.py") for name in CORE_FOLDERS}
    return module in core or any(module == f or module.startswith(f + ".") for f in folders)


def imports_core(target: str) -> bool:
    """Whether an import target is core: a module, or a name taken from a core module."""
    return is_core(target if is_module(target) else target.rpartition(".")[0])


def violations(path: Path, source: str | None = None) -> list[str]:
    """The imports of the module at ``path`` that break its package's boundary."""
    module = module_name(path)
    source = path.read_text(encoding="utf-8") if source is None else source
    found = []
    for line, target in imported_modules(module, source, path.name == "__init__.py"):
        top = target.split(".")[0]
        if is_core(module):
            allowed = (
                top in sys.stdlib_module_names
                or top in CORE_THIRD_PARTY
                or (top == "summarymixing" and imports_core(target))
            )
        elif top == "data_prep" or module.split(".")[0] != "data_prep":
            allowed = True
        else:
            allowed = top not in {"summarymixing", "recipes"}
        if not allowed:
            found.append(f"{path.relative_to(ROOT)}:{line}: {module} imports {target}")
    return found


def modules_of(*folders: str) -> list[Path]:
    """Every Python file under ``folders``."""
    return sorted(path for folder in folders for path in (ROOT / folder).rglob("*.py"))


def test_core_and_data_prep_respect_their_import_boundaries():
    paths = modules_of("summarymixing", "data_prep")
    assert sum(is_core(module_name(path)) for path in paths) >= 7  # the core is found
    broken = [message for path in paths for message in violations(path)]
    assert not broken, "import boundary violated:\n" + "\n".join(broken)


@pytest.mark.parametrize(
    ("path", "source", "expected"),
    [
        ("summarymixing/mixers.py", "import numpy as np\n",
         ["summarymixing/mixers.py:1: summarymixing.mixers imports numpy"]),
        ("summarymixing/w2v2/encoder.py", "def f():\n    from summarymixing.export import x\n",
         ["summarymixing/w2v2/encoder.py:2: summarymixing.w2v2.encoder imports "
          "summarymixing.export.x"]),
        ("summarymixing/w2v2/encoder.py", "from ..downstream import layers\n",
         ["summarymixing/w2v2/encoder.py:1: summarymixing.w2v2.encoder imports "
          "summarymixing.downstream.layers"]),
        ("data_prep/common.py", "from summarymixing.audio import read_audio\n",
         ["data_prep/common.py:1: data_prep.common imports summarymixing.audio.read_audio"]),
        ("summarymixing/encoders.py",
         "import math\nimport torch\nfrom speechbrain.nnet import CNN\n"
         "from summarymixing.mixers import build_mixer\nfrom .w2v2 import encoder\n", []),
        ("summarymixing/__init__.py", "from summarymixing import export\n",
         ["summarymixing/__init__.py:1: summarymixing imports summarymixing.export"]),
        ("summarymixing/__init__.py", "from . import cell\nfrom summarymixing import MODES\n", []),
        ("summarymixing/downstream/data.py", "import numpy\nfrom data_prep.audio import x\n", []),
        ("data_prep/commonvoice.py", "from data_prep.audio import read_audio\nimport tqdm\n", []),
    ],
)
def test_violations_name_the_module_and_the_import(path, source, expected):
    assert violations(ROOT / path, source) == expected
