"""The converter's own files: atomic writes, JSON, checksums, and where the work records live.

The output file names shared with the readers (``manifest.json``, ``synsets.txt``,
``metadata.txt``, ...) are owned by :mod:`alexnet_tf.records`; the names here are the
converter's private bookkeeping under ``.parts/``.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

PARTS_DIRECTORY = ".parts"  # one record per shard, plus the plan
PLAN_FILE = "plan.json"
FORMAT_VERSION = 1


def sha256_file(path: str) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_atomically(path: str, data: bytes) -> None:
    """Writes ``data`` under a temporary name, then renames it: readers never see half a file."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_json(path: str, value: Any) -> None:
    """``value`` as indented UTF-8 JSON, written atomically."""
    write_atomically(path, (json.dumps(value, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))


def read_json(path: str) -> Any:
    """The JSON value in ``path``, or None when it is missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
