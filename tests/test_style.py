"""The code base stays ruff-clean (settings in pyproject.toml)."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import pytest

from tests.support import ROOT


def test_ruff_clean():
    beside_python = pathlib.Path(sys.executable).parent / "ruff"
    ruff = str(beside_python) if beside_python.exists() else shutil.which("ruff")
    if not ruff:
        pytest.skip("ruff is not installed (pip install -r requirements.txt)")
    result = subprocess.run([ruff, "check", str(ROOT)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_tensorflow_addons_dependency():
    # End-of-life and not importable with Keras 3 (README, "No tensorflow-addons").
    module = "tensorflow" + "_addons"  # spelled apart so this file does not match itself
    requirements = (ROOT / "requirements.txt").read_text()
    assert "tensorflow-addons" not in requirements and module not in requirements
    for path in ROOT.rglob("*.py"):
        if ".venv" in path.parts:
            continue
        text = path.read_text(encoding="utf-8")
        assert f"import {module}" not in text and f"from {module}" not in text, path
