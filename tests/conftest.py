"""Shared fixtures: the real data in ../shared/data, and a CPU-friendly TensorFlow."""

from __future__ import annotations

import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


def require_shared_data(path: pathlib.Path = SHARED_DATA) -> pathlib.Path:
    """``path`` when it holds the shared test data; otherwise a skip, or a failure under CI.

    A skip on a developer's machine says what is missing. In CI (the ``CI`` environment variable
    set, as every CI service does) missing data is a broken setup, and a skip would let the
    tests that check the paper on real images pass without running, so the test fails instead.
    """
    if (path / "README.md").exists():
        return path
    message = f"real test data not found at {path} (see README.md: ../shared/data)"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI is set, so this is a failure, not a skip", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """``../shared/data``, or a skip naming what is missing (a failure when ``CI`` is set)."""
    return require_shared_data()
