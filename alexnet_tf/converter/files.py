"""The converter's own files: atomic writes, JSON, checksums, and where the work records live.

The output directory may be local or in object storage: everything goes through
:mod:`alexnet_tf.paths` (``tf.io.gfile``).

The output file names shared with the readers (``manifest.json``, ``synsets.txt``,
``metadata.txt``, ...) are owned by :mod:`alexnet_tf.records`; the names here are the
converter's private bookkeeping under ``.parts/``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import tensorflow as tf

from alexnet_tf import paths

PARTS_DIRECTORY = ".parts"  # one record per shard, plus the plan
PLAN_FILE = "plan.json"
FORMAT_VERSION = 1


def sha256_file(path: str) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_atomically(path: str, data: bytes) -> None:
    """Writes ``data`` under a temporary name, then renames it: readers never see half a file."""
    paths.write_atomically(path, data)


def write_json(path: str, value: Any) -> None:
    """``value`` as indented UTF-8 JSON, written atomically."""
    write_atomically(path, (json.dumps(value, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))


def read_json(path: str) -> Any:
    """The JSON value in ``path``, or None when it is missing or unreadable."""
    try:
        return paths.read_json(path)
    except (OSError, ValueError, tf.errors.OpError):
        return None
