"""What the tests share: the repository's root, the real data, and a runner for child processes.

The modules beside this one hold the converted-data helpers (``converted``: the data sets the
``converted`` fixture converts; ``converter_helpers``: small inputs for the converter's tests;
``eval_helpers``: a tiny trained run; ``caffe_reference``: Caffe's forward pass and file formats in
NumPy). Tests import them as ``tests.support.<module>``; the programs tests start in a fresh
interpreter live in ``tests/scripts/``.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
from collections.abc import Iterable, Sequence

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
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


def python_env(drop: Iterable[str] = (), **settings: str) -> dict[str, str]:
    """This process's environment for a child Python, less ``drop``, plus ``settings``.

    The repository's root leads ``PYTHONPATH``, so the children import this checkout's
    ``alexnet_tf`` and ``tests`` whether or not the package is installed.
    """
    env = {key: value for key, value in os.environ.items() if key not in set(drop)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return {**env, **settings}


def _command(args: Sequence[object]) -> list[str]:
    return [sys.executable, *map(str, args)]


def run_python(
    args: Sequence[object], *, cwd: os.PathLike | str = ROOT, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """``python ARGS`` (a script, ``-m module`` or ``-c code``) to the end: its status and text output."""
    return subprocess.run(_command(args), cwd=cwd, env=python_env() if env is None else env, capture_output=True,
                          text=True, timeout=timeout)


def start_python(
    args: Sequence[object], *, cwd: os.PathLike | str = ROOT, env: dict[str, str] | None = None,
    stdout: int | None = subprocess.PIPE, stderr: int | None = subprocess.STDOUT,
) -> subprocess.Popen:
    """``python ARGS`` started in the background (text output; stderr into stdout by default)."""
    return subprocess.Popen(_command(args), cwd=cwd, env=python_env() if env is None else env, stdout=stdout,
                            stderr=stderr, text=True)


def run_script(module: str, *args: object, env: dict[str, str] | None = None,
               timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m tests.scripts.MODULE ARGS`` from the repository's root."""
    return run_python(["-m", f"tests.scripts.{module}", *args], env=env, timeout=timeout)


def start_script(module: str, *args: object, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``python -m tests.scripts.MODULE ARGS`` started in the background, its output in one text pipe."""
    return start_python(["-m", f"tests.scripts.{module}", *args], env=env)
