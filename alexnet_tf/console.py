"""A quiet console: TensorFlow's start-up lines silenced unless the user asked for them.

Every process that imports TensorFlow prints C++ start-up lines (CPU features, oneDNN, CUDA) on
stderr; they say nothing about a conversion, a training run or an evaluation. Most obey
``TF_CPP_MIN_LOG_LEVEL``, but some are printed before TensorFlow's logging is initialised (the
oneDNN notice on CPUs with AVX-512, the CUDA probes), where no level reaches them. The command
lines call ``quiet_tensorflow()`` before TensorFlow is imported: it sets the level, hides
TensorFlow's Python INFO lines (checkpoint sharding times and the like), and passes the
process's file descriptor 2 through a filter that drops exactly those known start-up lines
(``STARTUP_LINE``); everything else, warnings and errors included, passes. The converter's
worker processes inherit the filter and start with ``tensorflow_log_level()``. A user who sets
``TF_CPP_MIN_LOG_LEVEL``, or passes ``--verbosity`` of 1 or more, sees everything. This module
imports nothing heavy, so it can run before TensorFlow loads.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
import re
import select
import signal
import sys

LOG_LEVEL_VARIABLE = "TF_CPP_MIN_LOG_LEVEL"
# TensorFlow reads this once, when it creates its CPU allocator.
CPU_ALLOCATOR_VARIABLE = "TF_CPU_ALLOCATOR_USE_BFC"
# glibc reads this at start-up; ``reuse_cpu_memory`` sets the same through mallopt and exports it
# for the processes this one starts.
HEAP_PAD_VARIABLE = "MALLOC_TOP_PAD_"
HEAP_TOP_PAD = 256 * 1024 * 1024  # bytes
M_TOP_PAD = -2  # mallopt's parameter number in glibc's malloc.h
# 2 hides TensorFlow's C++ INFO and WARNING lines and keeps its errors.
QUIET_LEVEL = "2"
# The lines TensorFlow prints at start-up whatever the level: absl's notice that logging is not
# initialised yet, the oneDNN notice (CPUs with AVX-512, or TF_ENABLE_ONEDNN_OPTS=1), the CPU
# feature guard and its second line, and the CUDA probes of a machine without a GPU driver.
STARTUP_LINE = re.compile(
    rb"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"
    rb"|[IW]\d{4} [\d:.]+ +\d+ (?:port|cudart_stub|cpu_feature_guard|cuda_platform|cuda_executor)\.cc:\d+\] "
    rb"|E\d{4} [\d:.]+ +\d+ cuda_platform\.cc:\d+\] failed call to cuInit: "
    rb"|E\d{4} [\d:.]+ +\d+ cuda_(?:dnn|fft|blas)\.cc:\d+\] Unable to register cu\w+ factory: "
    rb"|To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler flags\.$"
)
_FILTER_FLUSH_SECONDS = 0.2  # a partial line waits this long for its end before it is passed on


def tensorflow_log_level() -> str:
    """The level for this process and the workers it starts: the user's, else ``QUIET_LEVEL``."""
    return os.environ.get(LOG_LEVEL_VARIABLE, QUIET_LEVEL)


def user_asked_for_logs(argv: list[str] | None = None) -> bool:
    """Whether the user set ``TF_CPP_MIN_LOG_LEVEL`` or passed absl's ``--verbosity`` (``-v``) of 1 or more."""
    if LOG_LEVEL_VARIABLE in os.environ:
        return True
    argv = sys.argv if argv is None else argv
    for i, arg in enumerate(argv[1:], start=1):
        name, equals, value = arg.partition("=")
        if name in ("--verbosity", "-v"):
            if not equals:
                value = argv[i + 1] if i + 1 < len(argv) else ""
            try:
                return int(value) >= 1
            except ValueError:
                return False
    return False


def quiet_tensorflow() -> None:
    """Quiets TensorFlow unless the user asked for its logs; call before importing TensorFlow.

    Sets ``TF_CPP_MIN_LOG_LEVEL`` for this process and those it starts, hides TensorFlow's
    Python INFO lines (its ``tensorflow`` logger, and the modules that log through absl), and
    filters the start-up lines that no level reaches (``filter_startup_lines``).
    """
    if user_asked_for_logs():
        return
    os.environ[LOG_LEVEL_VARIABLE] = QUIET_LEVEL
    filter_startup_lines()  # first: absl's handler below then writes to the new sys.stderr
    from absl import logging as absl_logging  # light: absl, not TensorFlow

    # TensorFlow's Python side logs through the standard "tensorflow" logger, and some of its
    # modules (the checkpoint saver, the SavedModel writer) through absl's.
    logging.getLogger("tensorflow").setLevel(logging.WARNING)
    absl_logging.get_absl_logger().addFilter(_hide_library_info)


def _library_directories() -> tuple[str, ...]:
    directories = []
    for name in ("tensorflow", "keras"):
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.submodule_search_locations:
            directories.extend(os.path.join(path, "") for path in spec.submodule_search_locations)
    return tuple(directories)


class _LibraryInfoFilter(logging.Filter):
    """Drops INFO (and finer) records logged from TensorFlow's or Keras's own files."""

    def __init__(self) -> None:
        super().__init__()
        self.directories: tuple[str, ...] | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        if self.directories is None:
            self.directories = _library_directories()
        return not record.pathname.startswith(self.directories)


_hide_library_info = _LibraryInfoFilter()
_filtering = False


def filter_startup_lines() -> bool:
    """Passes this process's file descriptor 2 through a filter that drops ``STARTUP_LINE`` lines.

    The filter is a forked process (made before TensorFlow loads, while this process has one
    thread) that copies a pipe to the original standard error line by line, so that nothing is
    lost when this process dies: it ends when every writer has closed the pipe. Python's own
    ``sys.stderr`` (logging, progress bars, tracebacks) keeps writing to the original stream
    directly, so its lines keep their order and a terminal stays a terminal; only what C++ code
    and child processes write to descriptor 2 passes through the filter.

    Returns:
      Whether the filter was installed: not twice, nor where ``os.fork`` is missing or
      descriptor 2 is closed.
    """
    global _filtering
    if _filtering or not hasattr(os, "fork"):
        return False
    try:
        os.fstat(2)
    except OSError:
        return False
    sys.stderr.flush()
    original = os.dup(2)
    read_end, write_end = os.pipe()
    if os.fork() == 0:  # the filter
        try:
            os.close(write_end)
            _copy_filtered(read_end, original)
        finally:
            os._exit(0)
    os.close(read_end)
    os.dup2(write_end, 2)
    os.close(write_end)
    os.set_inheritable(original, False)  # child processes write to the filter's pipe
    stream = sys.stderr
    sys.stderr = os.fdopen(original, "w", buffering=1, encoding=getattr(stream, "encoding", None),
                           errors=getattr(stream, "errors", None))
    _filtering = True
    return True


def _copy_filtered(source: int, destination: int) -> None:
    """The filter process: copies ``source`` to ``destination`` less ``STARTUP_LINE`` lines, until EOF."""
    # Ctrl-C and a supervisor's SIGTERM are for the process being filtered; the filter ends when
    # the pipe does, after passing on the last words of that process.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    null = os.open(os.devnull, os.O_RDWR)
    for descriptor in (0, 1):  # hold no copy of the filtered process's stdin or stdout
        os.dup2(null, descriptor)
    pending = b""
    while True:
        ready, _, _ = select.select([source], [], [], _FILTER_FLUSH_SECONDS if pending else None)
        if not ready:  # a partial line that stayed partial: pass it on as it is
            _write_all(destination, pending)
            pending = b""
            continue
        chunk = os.read(source, 65536)
        if not chunk:
            break
        *lines, pending = (pending + chunk).split(b"\n")
        kept = b"".join(line + b"\n" for line in lines if not STARTUP_LINE.match(line))
        _write_all(destination, kept)
    if pending and not STARTUP_LINE.match(pending):
        _write_all(destination, pending)


def _write_all(descriptor: int, data: bytes) -> None:
    while data:
        try:
            data = data[os.write(descriptor, data):]
        except OSError:  # the reader went away: nothing more can be shown
            return


def reuse_cpu_memory() -> None:
    """Gives TensorFlow's CPU tensors its best-fit (BFC) allocator and pads glibc's heap; call before
    importing TensorFlow.

    The default CPU allocator takes every tensor from malloc, and the large ones (a batch, a
    layer's activations) come back as fresh pages the kernel faults in and zeroes at every step.
    The BFC allocator keeps freed memory for the next step (``benchmarks/allocator.py`` measures
    both; figures in docs/benchmarks.md, "Memory on the host"). A value the user set is kept.

    The memory TensorFlow takes from malloc outside that allocator (kernels' scratch buffers) has
    the same problem one level down: glibc gives the top of its heap back to the kernel whenever
    it is free, and takes it back, faulted in and zeroed, a moment later; keeping 256 MiB at the
    top of the heap (glibc's ``M_TOP_PAD``) stops that (``benchmarks/allocator.py``; figures in
    docs/benchmarks.md). A ``MALLOC_TOP_PAD_`` the user set is kept (glibc has read it).
    """
    os.environ.setdefault(CPU_ALLOCATOR_VARIABLE, "true")
    pad_the_heap()


def pad_the_heap() -> bool:
    """Keeps ``HEAP_TOP_PAD`` bytes at the top of glibc's heap when it grows or shrinks.

    Returns whether it did: not when the user set ``MALLOC_TOP_PAD_``, nor without glibc's
    ``mallopt`` (macOS, Windows, musl).
    """
    if HEAP_PAD_VARIABLE in os.environ or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    if not mallopt(M_TOP_PAD, HEAP_TOP_PAD):
        return False
    os.environ[HEAP_PAD_VARIABLE] = str(HEAP_TOP_PAD)  # the processes this one starts
    return True
