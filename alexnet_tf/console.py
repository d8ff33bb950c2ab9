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

import logging
import os

LOG_LEVEL_VARIABLE = "TF_CPP_MIN_LOG_LEVEL"
# TensorFlow reads this once, when it creates its CPU allocator.
CPU_ALLOCATOR_VARIABLE = "TF_CPU_ALLOCATOR_USE_BFC"
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
    """Gives TensorFlow's CPU tensors its best-fit (BFC) allocator; call before importing TensorFlow.

    The default CPU allocator takes every tensor from malloc, and the large ones (a batch, a
    layer's activations) come back as fresh pages the kernel faults in and zeroes at every step:
    measured with the Imagenette preset, 40 % of the training process's CPU time was spent in the
    kernel. The BFC allocator keeps freed memory for the next step (``benchmarks/allocator.py``
    measures both). A value the user set is kept.
    """
    os.environ.setdefault(CPU_ALLOCATOR_VARIABLE, "true")
