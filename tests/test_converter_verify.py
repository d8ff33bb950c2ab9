"""converter/verify.py: every shard read back; a flipped byte or a lost shard is found."""

from __future__ import annotations

import pytest

from alexnet_tf import converter
from tests.support import converter_helpers as h


def test_verify_passes_intact_shards_and_names_damaged_ones(tmp_path):
    train = h.odd_dataset(tmp_path)
    out = tmp_path / "out"
    summary = converter.convert(
        train_directory=str(train), output_directory=str(out), train_shards=3, num_workers=1, max_rejects=10
    )
    report = converter.verify(str(out), num_workers=1)
    assert report["ok"] and report["shards_ok"] == 3 and report["records"] == summary["written"]
    # A flipped byte inside a record is found (record CRC and the manifest's sha256).
    shard = out / "train-00001-of-00003"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    (out / "train-00002-of-00003").unlink()
    report = converter.verify(str(out), num_workers=1)
    assert not report["ok"] and report["shards_ok"] == 1
    assert any("train-00001-of-00003" in e and "sha256" in e for e in report["errors"])
    assert any("train-00002-of-00003: missing" in e for e in report["errors"])


def test_verify_without_a_manifest_names_the_directory(tmp_path):
    with pytest.raises(converter.ConversionError, match=f"{tmp_path}.*manifest.json"):
        converter.verify(str(tmp_path), num_workers=1)
