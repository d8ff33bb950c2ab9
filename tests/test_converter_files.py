"""converter/files.py: checksums and the atomic JSON the work records are kept in."""

from __future__ import annotations

import hashlib

from alexnet_tf.converter import files


def test_sha256_reads_past_one_block(tmp_path):
    data = bytes(range(256)) * 5000  # more than the 1 MiB read block
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert files.sha256_file(str(path)) == hashlib.sha256(data).hexdigest()


def test_json_round_trip_is_atomic_and_unreadable_files_read_as_none(tmp_path):
    path = tmp_path / "record.json"
    files.write_json(str(path), {"name": "café", "count": 3})
    assert files.read_json(str(path)) == {"name": "café", "count": 3}
    assert "café" in path.read_text(encoding="utf-8")  # UTF-8, not \u escapes
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]  # no temporary left behind
    path.write_text('{"name": ')
    assert files.read_json(str(path)) is None
    assert files.read_json(str(tmp_path / "absent.json")) is None
