"""The tests' support package: the real data (a skip locally, a failure in CI) and the converted shards."""

from __future__ import annotations

import json

import pytest

from alexnet_tf import records
from tests.support import SHARED_DATA, require_shared_data
from tests.support.converted import ASSORTED, ASSORTED_SIZES, GRAYSCALE_EVERY, read_records


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


def test_converted_sets_are_converted_once_by_the_real_converter(converted):
    data_dir = converted(ASSORTED)
    assert converted(ASSORTED) == data_dir  # once per session
    assert converted(ASSORTED.replace(train_shards=6)) != data_dir
    summary = json.loads((data_dir / records.SUMMARY_FILE).read_text())
    assert summary["ok"] and summary["splits"]["train"]["written"] == len(ASSORTED.train_labels)
    # The grayscale drawings went through the converter's repair into RGB JPEGs.
    grayscale = range(GRAYSCALE_EVERY - 2, len(ASSORTED.train_labels), GRAYSCALE_EVERY)
    assert summary["splits"]["train"]["kinds"]["jpeg_grayscale"] == len(grayscale)
    stored = read_records(data_dir, "train")
    assert sorted(r.label for r in stored) == sorted(ASSORTED.train_labels)
    assert sorted((r.height, r.width) for r in stored) == sorted(
        ASSORTED_SIZES[i % len(ASSORTED_SIZES)] for i in range(len(stored)))
