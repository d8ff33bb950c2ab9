"""A converter worker's task that also reports what the worker process has imported.

The worker pool starts fresh interpreters (spawn), which import this module by name: it lives
in the support package rather than in the test that uses it.
"""

from __future__ import annotations

import os
import sys

from alexnet_tf.converter import shards


def probe(job, count):
    """A shard written in a worker, and the TensorFlow modules that worker has loaded."""
    result = shards.convert_shard(job, count)
    return os.getpid(), result.part.records, sorted(m for m in sys.modules if m.split(".")[0] == "tensorflow")
