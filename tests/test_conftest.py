"""The shared-data fixture: a skip on a developer's machine, a failure in CI."""

from __future__ import annotations

import pytest
from conftest import SHARED_DATA, require_shared_data


def test_missing_data_skips_locally_and_fails_under_ci(tmp_path, monkeypatch):
    missing = tmp_path / "no_data_here"
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no_data_here"):
        require_shared_data(missing)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no_data_here.*CI is set"):
        require_shared_data(missing)
    # Present data is returned whatever CI says.
    missing.mkdir()
    (missing / "README.md").write_text("test data\n")
    assert require_shared_data(missing) == missing


def test_the_fixture_is_the_checked_path(shared_data):
    assert shared_data == SHARED_DATA and (shared_data / "README.md").exists()
