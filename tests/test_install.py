"""The package installs as the README says (``pip install -e .``): its dependencies, and imports from any folder."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def requirement_lines(path: Path) -> list[str]:
    """The requirement specifiers of a requirements file: no comments, options (``-r``, ``-e``) or blank lines."""
    lines = (line.split(" #")[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith(("#", "-"))]


def test_pyproject_declares_the_requirements_txt_dependencies() -> None:
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads TOML")
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["dependencies"] == requirement_lines(REPO / "requirements.txt")
    assert "-e ." in (REPO / "requirements-test.txt").read_text(encoding="utf-8")  # CI installs the package


def test_load_encoder_imports_from_any_folder(tmp_path: Path) -> None:
    try:
        importlib.metadata.distribution("aetune")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("aetune is not installed: python -m pip install -e . (requirements-test.txt does it)")
    code = "import aetune; from aetune import load_encoder; print(aetune.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert Path(out.stdout.strip()).resolve() == REPO / "aetune" / "__init__.py"  # this checkout, editable
