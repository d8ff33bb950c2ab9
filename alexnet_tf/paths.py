"""Every file the project reads or writes, local or in object storage.

A path is a local path or a URL whose scheme TensorFlow's file systems handle: ``gs://`` comes
with TensorFlow, ``s3://``, ``hdfs://``, ``az://`` and others with the ``tensorflow-io`` package
(registered when it is imported), and ``ram://`` is TensorFlow's in-process file system, which the
tests use as a stand-in for object storage: it goes through the same layer as ``gs://``.

``check_supported`` turns a scheme the installed TensorFlow cannot handle into an error that
names the path, instead of a folder called ``s3:`` on the local disk. The helpers here read and
write whole files (text, JSON, NumPy arrays, figures) and write atomically: to a temporary name,
then a rename. On ``gs://`` a rename is a copy and a delete, so readers may briefly see both
names; the converter's manifest, written last, is what says which files are complete.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import re
import shutil
from typing import Any

import numpy as np
from absl import logging

from alexnet_tf.config import ConfigError

# Schemes that come with the tensorflow-io package rather than with TensorFlow itself.
TENSORFLOW_IO_SCHEMES = ("s3", "hdfs", "viewfs", "har", "az", "http", "https", "oss")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_LOCAL_SCHEMES = ("", "file")


class UnsupportedPathError(ConfigError):
    """A path of a scheme (``s3://``, ``foo://``) that no installed TensorFlow file system handles."""


def scheme(path: str) -> str:
    """The URL scheme of ``path`` (``"gs"``, ``"ram"``), or ``""`` for a local path."""
    match = _SCHEME.match(os.fspath(path))
    return match.group(1).lower() if match else ""


def is_local(path: str) -> bool:
    """Whether ``path`` is on the local disk (a plain path or a ``file://`` URL)."""
    return scheme(path) in _LOCAL_SCHEMES


def _plain(path: str) -> bool:
    """Whether ``path`` has no scheme: a local path that Python's own file functions handle."""
    return not _SCHEME.match(os.fspath(path))


def _tensorflow() -> Any:
    import tensorflow as tf  # only for URLs: a process that meets none never loads TensorFlow

    return tf


def _gfile() -> Any:
    return _tensorflow().io.gfile


def _registered() -> set[str]:
    return {name.lower() for name in _gfile().get_registered_schemes()}


def check_supported(path: str, flag: str = "") -> str:
    """``path`` itself when the installed TensorFlow can read and write it.

    ``tensorflow-io``, when installed, is imported for a scheme TensorFlow lacks (importing it
    registers its file systems).

    Args:
      path: a local path or a URL.
      flag: the flag or argument ``path`` came from, for the error message.

    Raises:
      UnsupportedPathError: naming ``path`` (and ``flag``) and what to install, for a scheme
        no file system is registered for.
    """
    name = scheme(path)
    if name in _LOCAL_SCHEMES or name in _registered():
        return path
    if importlib.util.find_spec("tensorflow_io") is not None:
        try:
            importlib.import_module("tensorflow_io")
        except Exception as e:  # a broken install must not hide the error about the path below
            logging.warning("tensorflow_io is installed but does not import: %s", e)
        if name in _registered():
            return path
    where = f"{flag}={path}" if flag else path
    if name in TENSORFLOW_IO_SCHEMES:
        advice = (f"TensorFlow reads {name}:// through the tensorflow-io package: pip install tensorflow-io "
                  "(the release made for this TensorFlow), or use a gs:// or local path")
    else:
        advice = "use a local path or one of those schemes (tensorflow-io adds s3://, hdfs://, az://)"
    raise UnsupportedPathError(
        f"{where}: TensorFlow {_tensorflow().__version__} has no file system for {name}:// "
        f"(it has {', '.join(sorted(s + '://' for s in _registered() if s))}); {advice}"
    )


def absolute(path: str) -> str:
    """``os.path.abspath`` for a local path; a URL unchanged (it is absolute already)."""
    return os.path.abspath(path) if not scheme(path) else path


def exists(path: str) -> bool:
    """Whether the file or directory ``path`` exists."""
    return os.path.exists(path) if _plain(path) else _gfile().exists(path)


def isdir(path: str) -> bool:
    """Whether ``path`` is a directory."""
    return os.path.isdir(path) if _plain(path) else _gfile().isdir(path)


def isfile(path: str) -> bool:
    """Whether ``path`` is an existing file (not a directory)."""
    if _plain(path):
        return os.path.isfile(path)
    return _gfile().exists(path) and not _gfile().isdir(path)


def makedirs(path: str) -> str:
    """Creates ``path`` and its parents (nothing to do when they exist); returns ``path``."""
    if _plain(path):
        if path:  # "" (the dirname of a bare file name) is the current directory, as for tf.io.gfile
            os.makedirs(path, exist_ok=True)
    else:
        _gfile().makedirs(path)
    return path


def size(path: str) -> int:
    """The size of the file ``path`` in bytes."""
    return os.path.getsize(path) if _plain(path) else _gfile().stat(path).length


def read_bytes(path: str) -> bytes:
    """The contents of the file ``path``."""
    with (open(path, "rb") if _plain(path) else _gfile().GFile(path, "rb")) as f:
        return f.read()


def read_text(path: str) -> str:
    """The contents of the UTF-8 text file ``path``."""
    return read_bytes(path).decode("utf-8")


def read_json(path: str) -> Any:
    """The JSON value in ``path``."""
    return json.loads(read_text(path))


def prepare_rewrite(path: str) -> str:
    """Deletes ``path`` (a file or a directory) before it is written again, on ``ram://`` only.

    TensorFlow's ``ram://`` file system appends to an existing file opened for writing instead
    of replacing it (local files and ``gs://`` objects are replaced), which would corrupt a
    rewritten ``summary.json``, ``model.keras`` or SavedModel.
    """
    if scheme(path) == "ram" and (gfile := _gfile()).exists(path):
        if gfile.isdir(path):
            # File by file, level by level: ram://'s rmtree and walk trip over a SavedModel's
            # names (assets/ beside assets.extra/); its glob lists them right.
            pattern = path.rstrip("/")
            while found := gfile.glob(pattern := pattern + "/*"):
                for name in found:
                    if not gfile.isdir(name):
                        gfile.remove(name)
        else:
            gfile.remove(path)
    return path


def write_bytes(path: str, data: bytes) -> str:
    """Writes ``data`` to ``path`` (a reader may see a partial file: see ``write_atomically``)."""
    with (open(path, "wb") if _plain(path) else _gfile().GFile(prepare_rewrite(path), "wb")) as f:
        f.write(data)
    return path


def write_text(path: str, text: str) -> str:
    """Writes ``text`` as UTF-8 to ``path``; returns ``path``."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str, value: Any, indent: int = 2) -> str:
    """Writes ``value`` as indented JSON to ``path``; returns ``path``."""
    return write_text(path, json.dumps(value, indent=indent))


def temporary_name(path: str) -> str:
    """``<path>.tmp-<pid>``: the name a file is written under before it is renamed to ``path``."""
    return f"{path}.tmp-{os.getpid()}"


def write_atomically(path: str, data: bytes | str) -> str:
    """Writes ``data`` under a temporary name, then renames it to ``path``.

    Locally and on ``ram://`` the rename is atomic: readers see the old file or the whole new
    one. On ``gs://`` it is a copy then a delete, still never a half-written ``path``.
    """
    tmp = temporary_name(path)
    write_bytes(tmp, data.encode("utf-8") if isinstance(data, str) else data)
    if _plain(path):
        os.replace(tmp, path)
    else:
        _gfile().rename(tmp, path, overwrite=True)
    return path


def save_npy(path: str, array: np.ndarray) -> str:
    """``np.save`` to any path (NumPy itself writes only local files)."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    return write_bytes(path, buffer.getvalue())


def load_npy(path: str) -> np.ndarray:
    """``np.load`` of an ``.npy`` file from any path."""
    return np.load(io.BytesIO(read_bytes(path)), allow_pickle=False)


def save_figure(figure: Any, path: str, **options: Any) -> str:
    """A matplotlib figure saved as PNG to any path (matplotlib writes only local files)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", **options)
    return write_bytes(path, buffer.getvalue())


def remove_tree(path: str) -> None:
    """Deletes the directory ``path`` and everything in it, if it exists."""
    # Nothing there (or deleted meanwhile) is the wanted end state.
    if _plain(path):
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(path)
        return
    with contextlib.suppress(_tensorflow().errors.NotFoundError):
        _gfile().rmtree(path)
