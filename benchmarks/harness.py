"""What every benchmark shares: where things are, a quiet TensorFlow, timing, the CPU flags, the last line.

A benchmark is a script run from the repository's root once the package is installed
(``pip install -e .``; ``PYTHONPATH=.`` does as well)::

    python benchmarks/NAME.py [--flag=value ...]      # --help lists a benchmark's flags

It imports this module by name (the script's own folder is on ``sys.path``), calls ``setup``
before anything imports TensorFlow, defines its options as absl flags, starts through ``run``,
and prints its figures with ``print_figures``: the last line of its standard output is one JSON
object, and the CPU's AVX-512 flags go beside it on standard error (figures from this project
always name the CPU they were measured on).
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from absl import app, flags

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
FLAGS = flags.FLAGS


def setup(reuse_cpu_memory: bool = False) -> None:
    """TensorFlow's start-up chatter silenced (``console.quiet_tensorflow``), before TensorFlow loads.

    Args:
      reuse_cpu_memory: also choose the CPU allocator ``train.py`` and ``evaluate.py`` run with
        (``console.reuse_cpu_memory``), for figures that stand for theirs.
    """
    # Imported here: a benchmark's child process that must not load alexnet_tf imports this module too.
    from alexnet_tf import console

    console.quiet_tensorflow()
    if reuse_cpu_memory:
        console.reuse_cpu_memory()


def cpu_flags() -> list[str]:
    """The CPU's AVX-512 flags (``grep -o 'avx512[a-z_0-9]*' /proc/cpuinfo | sort -u``); [] elsewhere."""
    cpuinfo = pathlib.Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return []
    return sorted({word for word in cpuinfo.read_text().split() if word.startswith("avx512")})


class Stopwatch:
    """Wall-clock seconds of a ``with`` block (``time.perf_counter``): ``seconds`` once it ends."""

    def __init__(self) -> None:
        self.seconds = 0.0


@contextlib.contextmanager
def timed() -> Iterator[Stopwatch]:
    """``with timed() as clock: ...`` then ``clock.seconds``."""
    clock = Stopwatch()
    start = time.perf_counter()
    try:
        yield clock
    finally:
        clock.seconds = time.perf_counter() - start


def print_figures(figures: Any, **dumps_options: Any) -> None:
    """The benchmark's last line: ``figures`` as one JSON object (``json.dumps`` options kept as
    given); the CPU flags they were measured with go to standard error."""
    flags_text = " ".join(cpu_flags()) or "no AVX-512"
    print(f"CPU flags: {flags_text}", file=sys.stderr, flush=True)
    print(json.dumps(figures, **dumps_options), flush=True)


def run(main: Callable[[list[str]], Any]) -> None:
    """``absl.app.run(main)``: parses the flags, then calls ``main``; its return value is the exit status."""
    app.run(main)
