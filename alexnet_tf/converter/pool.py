"""The worker pool and the progress bar: jobs run in spawned processes, images counted live.

Each job counts the images it has done in its own slot of a small shared-memory array (attached
by name, so the job carries it like any other argument); the parent sums the slots for the bar.
One writer per slot means no lock, and nothing lives in module-level state.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import multiprocessing
import os
import signal
import sys
import threading
import time
import types
import warnings
from collections.abc import Callable, Iterator, Sequence
from multiprocessing import shared_memory
from typing import Any

import numpy as np
from absl import logging

from alexnet_tf import console

_PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>
_WORKER_START_TIMEOUT = 600.0  # seconds to wait for the workers to start
# Inherited by the spawned workers: one BLAS thread each (the pool is the parallelism), and
# TensorFlow's C++ start-up lines silenced unless the user chose a level (workers import
# TensorFlow only to write to object storage).
_WORKER_ENVIRONMENT = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@dataclasses.dataclass(frozen=True)
class ProgressSlot:
    """Where one job counts its images: slot ``index`` of the shared array ``memory_name``."""

    memory_name: str
    index: int


class Tally:
    """A job's side of its slot: ``add(n)`` after every ``n`` images done."""

    def __init__(self, slot: ProgressSlot):
        self._memory = shared_memory.SharedMemory(name=slot.memory_name)
        self._counts = np.ndarray((slot.index + 1,), np.int64, buffer=self._memory.buf)
        self._index = slot.index

    def add(self, n: int = 1) -> None:
        self._counts[self._index] += n

    def close(self) -> None:
        del self._counts  # the buffer must have no views left before it is closed
        self._memory.close()


class ProgressCounts:
    """The parent's side: one int64 slot per job, summed for the bar.

    The slots are in shared memory for jobs run by worker processes (``shared``), else in this
    process's own: creating shared memory starts multiprocessing's resource tracker, one more
    Python process, which a conversion without workers does not need.
    """

    def __init__(self, num_jobs: int, shared: bool = True):
        size = max(num_jobs, 1)
        self._memory = shared_memory.SharedMemory(create=True, size=8 * size) if shared else None
        self._counts = np.zeros(size, np.int64) if self._memory is None else np.ndarray(
            (size,), np.int64, buffer=self._memory.buf
        )
        self._counts[:] = 0

    def slot(self, index: int) -> ProgressSlot:
        """Slot ``index`` for a job in a worker process (shared counts only)."""
        if self._memory is None:
            raise ValueError("these counts are not shared: count in-process jobs with adder()")
        return ProgressSlot(self._memory.name, index)

    def adder(self, index: int) -> Callable[[int], None]:
        """``count(n)`` of a job run in this process, counting into slot ``index``."""
        counts = self._counts

        def add(n: int = 1) -> None:
            counts[index] += n

        return add

    def done(self) -> int:
        return int(self._counts.sum())

    def close(self) -> None:
        del self._counts
        if self._memory is not None:
            self._memory.close()
            self._memory.unlink()


@dataclasses.dataclass(frozen=True)
class _Task:
    function: Callable[[Any, Callable[[int], None]], Any]
    job: Any
    slot: ProgressSlot


def _run_task(task: _Task) -> Any:
    tally = Tally(task.slot)
    try:
        return task.function(task.job, tally.add)
    finally:
        tally.close()


def _init_worker(ready: Any) -> None:
    warnings.simplefilter("ignore")  # Pillow's notes on odd metadata; decode errors still raise
    if sys.platform.startswith("linux"):
        # Die with the parent (even on kill -9) instead of finishing a shard nobody waits for.
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    with ready.get_lock():
        ready.value += 1


@contextlib.contextmanager
def _environment(settings: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _without_main_script() -> Iterator[None]:
    """Workers started meanwhile do not re-run the parent's ``__main__`` script.

    A spawned process imports the parent's main script first, so that functions defined there
    can be unpickled; a command line's script may import TensorFlow (train.py's does), seconds
    of start-up and hundreds of megabytes per worker. The jobs run module-level functions of this
    package, so the workers need no script.
    """
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")  # no __file__, no __spec__: nothing to import
    try:
        yield
    finally:
        sys.modules["__main__"] = main


@contextlib.contextmanager
def worker_pool(num_workers: int) -> Iterator[Any]:
    """Spawned worker processes (safe beside TensorFlow, unlike fork), one BLAS thread each.

    Returns once every worker has started, so the clock and the bar measure the work.
    """
    settings = {**_WORKER_ENVIRONMENT, console.LOG_LEVEL_VARIABLE: console.tensorflow_log_level()}
    context = multiprocessing.get_context("spawn")
    ready = context.Value("i", 0)
    # The settings are read by the workers as they start, and restored for the parent.
    with _environment(settings), _without_main_script():
        pool = context.Pool(num_workers, initializer=_init_worker, initargs=(ready,))
    try:
        deadline = time.time() + _WORKER_START_TIMEOUT
        while ready.value < num_workers and time.time() < deadline:
            time.sleep(0.01)
        yield pool
        pool.close()
        pool.join()
    finally:
        pool.terminate()


def run_jobs(
    function: Callable[[Any, Callable[[int], None]], Any],
    jobs: Sequence[Any],
    num_workers: int,
    total: int,
    description: str,
    timing: dict[str, float] | None = None,
) -> Iterator[Any]:
    """Runs ``function(job, count)`` over ``jobs`` in worker processes, with a progress bar.

    One worker (or one job) runs in this process. ``function`` must be a module-level function
    (workers import it by name) and call ``count(n)`` as it finishes ``n`` of the ``total`` units.

    Args:
      function: the work of one job.
      jobs: picklable job descriptions.
      num_workers: worker processes.
      total: the units (images, records) all jobs together will count: the bar's 100%.
      description: the bar's label.
      timing: receives "start" (workers ready) and "end" (last result) times.

    Yields:
      Each job's result, in the order they finish.
    """
    in_process = num_workers <= 1 or len(jobs) <= 1
    counts = ProgressCounts(len(jobs), shared=not in_process)
    pool_context: Any = contextlib.nullcontext(None) if in_process else worker_pool(min(num_workers, len(jobs)))
    timing = {} if timing is None else timing
    stop = threading.Event()
    bar, thread = None, None
    try:
        with pool_context as pool:
            bar = ProgressBar(total, description)
            thread = threading.Thread(target=_refresh, args=(bar, counts, stop), daemon=True)
            thread.start()
            timing["start"] = time.time()
            if pool is None:
                yield from (function(job, counts.adder(i)) for i, job in enumerate(jobs))
            else:
                tasks = [_Task(function, job, counts.slot(i)) for i, job in enumerate(jobs)]
                yield from pool.imap_unordered(_run_task, tasks)
            timing["end"] = time.time()
            stop.set()
            thread.join()
            bar.update(counts.done())  # before the pool shuts down, so the rate is the work's
    finally:
        stop.set()
        if thread is not None:
            thread.join()
            bar.close()
        counts.close()


def _refresh(bar: ProgressBar, counts: ProgressCounts, stop: threading.Event) -> None:
    while not stop.wait(bar.interval):
        bar.update(counts.done())


class ProgressBar:
    """Images done, rate and ETA: a live bar on a terminal, a log line every 30 s otherwise."""

    def __init__(self, total: int, description: str, stream: Any = None):
        self.total = max(total, 0)
        self.description = description
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interval = 0.2 if self.tty else 30.0
        self.start = time.time()
        self.done = 0

    def text(self, done: int) -> str:
        """The bar's line for ``done`` of ``total``: count, percentage, rate and ETA."""
        elapsed = max(time.time() - self.start, 1e-9)
        rate = done / elapsed
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        fraction = done / self.total if self.total else 1.0
        filled = int(30 * fraction)
        eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if eta != float("inf") else "--:--:--"
        return (
            f"{self.description} [{'#' * filled}{'.' * (30 - filled)}] {done}/{self.total} "
            f"{100 * fraction:5.1f}% {rate:7.1f} img/s ETA {eta_text}"
        )

    def update(self, done: int) -> None:
        """Redraws the bar (terminal) or logs its line (anything else)."""
        self.done = done
        if self.tty:
            self.stream.write("\r" + self.text(done))
            self.stream.flush()
        else:
            logging.info(self.text(done))

    def close(self) -> None:
        """Ends the bar's line on a terminal."""
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
