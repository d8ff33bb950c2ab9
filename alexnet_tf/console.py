"""A quiet console: TensorFlow's C++ start-up lines silenced unless the user chose a level.

Every process that imports TensorFlow prints its C++ start-up lines (CPU features, oneDNN,
CUDA) on stderr; they say nothing about a conversion, a training run or an evaluation. The
command lines call ``quiet_tensorflow()`` before TensorFlow is imported, and the converter's
worker processes start with ``tensorflow_log_level()``. A ``TF_CPP_MIN_LOG_LEVEL`` the user set
is kept, and with it TensorFlow's Python INFO lines (checkpoint sharding times and the like),
which are hidden otherwise. This module imports nothing heavy, so it can run before TensorFlow
loads.
"""

from __future__ import annotations

import ctypes
import logging
import os
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


def tensorflow_log_level() -> str:
    """The level for this process and the workers it starts: the user's, else ``QUIET_LEVEL``."""
    return os.environ.get(LOG_LEVEL_VARIABLE, QUIET_LEVEL)


def quiet_tensorflow() -> None:
    """Quiets TensorFlow unless the user set ``TF_CPP_MIN_LOG_LEVEL``; call before importing TensorFlow."""
    if LOG_LEVEL_VARIABLE in os.environ:
        return
    os.environ[LOG_LEVEL_VARIABLE] = QUIET_LEVEL
    # TensorFlow's Python side logs through the standard "tensorflow" logger.
    logging.getLogger("tensorflow").setLevel(logging.WARNING)


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
