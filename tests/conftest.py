"""Shared fixtures: the real data in ../shared/data, and a CPU-friendly TensorFlow."""

from __future__ import annotations

import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """``../shared/data``, or a skip naming what is missing."""
    if not (SHARED_DATA / "README.md").exists():
        pytest.skip(f"real test data not found at {SHARED_DATA} (see DEVELOPERS.md: ../shared/data)")
    return SHARED_DATA
