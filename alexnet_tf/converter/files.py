"""The converter's own files: atomic writes, JSON, checksums, and where the work records live.

The output directory may be local or in object storage. Local paths are read and written with
Python's own file functions, so the worker processes that write local shards never import
TensorFlow; any other scheme (``gs://``, ``ram://``) goes through :mod:`alexnet_tf.paths`
(``tf.io.gfile``), imported the first time such a path is met.

The output file names shared with the readers (``manifest.json``, ``synsets.txt``,
``metadata.txt``, ...) are owned by :mod:`alexnet_tf.records`; the names here are the
converter's private bookkeeping under ``.parts/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import IO, Any

PARTS_DIRECTORY = ".parts"  # one record per shard, plus the plan
PLAN_FILE = "plan.json"
FORMAT_VERSION = 1
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")  # as alexnet_tf.paths.scheme


def is_plain_local(path: str) -> bool:
    """Whether ``path`` is a plain local path (no ``scheme://``), handled without TensorFlow."""
    return not _URL.match(os.fspath(path))


def _gfile() -> Any:
    import tensorflow as tf  # only for paths in object storage or ram://

    return tf.io.gfile


def open_file(path: str, mode: str) -> IO[bytes]:
    """``path`` opened in binary ``mode`` ("rb" or "wb"), local or through ``tf.io.gfile``."""
    if is_plain_local(path):
        return open(path, mode)  # noqa: SIM115 (the caller closes it)
    if "w" in mode:
        from alexnet_tf import paths

        paths.prepare_rewrite(path)
    return _gfile().GFile(path, mode)


def exists(path: str) -> bool:
    """Whether the file or directory ``path`` exists."""
    return os.path.exists(path) if is_plain_local(path) else _gfile().exists(path)


def size(path: str) -> int:
    """The size of the file ``path`` in bytes."""
    return os.path.getsize(path) if is_plain_local(path) else _gfile().stat(path).length


def listdir(path: str) -> list[str]:
    """The names in the directory ``path``."""
    return os.listdir(path) if is_plain_local(path) else _gfile().listdir(path)


def remove(path: str) -> None:
    """Deletes the file ``path``."""
    if is_plain_local(path):
        os.remove(path)
    else:
        _gfile().remove(path)


def rename(source: str, target: str) -> None:
    """Renames ``source`` to ``target``, replacing ``target`` if it exists."""
    if is_plain_local(source) and is_plain_local(target):
        os.replace(source, target)
    else:
        _gfile().rename(source, target, overwrite=True)


def temporary_name(path: str) -> str:
    """``<path>.tmp-<pid>``: the name a file is written under before it is renamed to ``path``."""
    return f"{path}.tmp-{os.getpid()}"


def sha256_file(path: str) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open_file(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_atomically(path: str, data: bytes) -> None:
    """Writes ``data`` under a temporary name, then renames it: readers never see half a file."""
    tmp = temporary_name(path)
    with open_file(tmp, "wb") as f:
        f.write(data)
    rename(tmp, path)


def write_json(path: str, value: Any) -> None:
    """``value`` as indented UTF-8 JSON, written atomically."""
    write_atomically(path, (json.dumps(value, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))


def read_json(path: str) -> Any:
    """The JSON value in ``path``, or None when it is missing or unreadable."""
    # tf.io.gfile's errors are TensorFlow's own (NotFoundError...), not OSError.
    errors = (OSError, ValueError) if is_plain_local(path) else (OSError, ValueError, _tensorflow_error())
    try:
        with open_file(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except errors:
        return None


def _tensorflow_error() -> type[Exception]:
    import tensorflow as tf

    return tf.errors.OpError
