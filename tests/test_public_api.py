"""The public names resolve, and the import direction of the stages holds (DESIGN.md)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import lorasum

SRC = Path(lorasum.__file__).parent


@pytest.mark.parametrize("name", [n for n in lorasum.__all__ if n != "__version__"])
def test_public_name_resolves(name):
    assert getattr(lorasum, name) is not None


def test_import_lorasum_is_light():
    code = "import sys, lorasum; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def _imports(package: str) -> set[str]:
    mods = set()
    for path in (SRC / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                mods |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                mods.add(node.module)
    return mods


@pytest.mark.parametrize("package", ["compose", "geometry"])
def test_math_stages_do_not_import_io_or_upper_stages(package):
    """compose/ and geometry/ are pure math over lorasum.adapters: no model loading, training or CLI."""
    forbidden = ("lorasum.models", "lorasum.train", "lorasum.evaluate", "lorasum.experiment",
                 "lorasum.report", "lorasum.cli", "lorasum.data")
    bad = sorted(m for m in _imports(package) if m.startswith(forbidden))
    assert not bad, f"{package}/ imports {bad}"


@pytest.mark.parametrize("package", ["data", "compose", "geometry", "evaluate", "train"])
def test_lower_stages_never_import_cli_or_experiment(package):
    bad = sorted(m for m in _imports(package) if m.startswith(("lorasum.cli", "lorasum.experiment", "lorasum.report")))
    assert not bad, f"{package}/ imports {bad}"
