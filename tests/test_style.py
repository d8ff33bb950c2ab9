"""The code base stays ruff-clean (settings in pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from conftest import ROOT


def test_ruff_clean():
    ruff = shutil.which("ruff") or str(ROOT / ".venv" / "bin" / "ruff")
    if not shutil.which(ruff):
        pytest.skip("ruff is not installed (pip install -r requirements.txt)")
    result = subprocess.run([ruff, "check", str(ROOT)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_tensorflow_addons_dependency():
    requirements = (ROOT / "requirements.txt").read_text()
    assert "tensorflow-addons" not in requirements and "tensorflow_addons" not in requirements
    for path in ROOT.rglob("*.py"):
        if ".venv" in path.parts:
            continue
        assert "tensorflow_addons" not in path.read_text(encoding="utf-8"), path
    assert sys.version_info >= (3, 10)
