"""The quiet console: TensorFlow's start-up logging is silenced before TensorFlow loads, unless the
user chose a level; importing the package does not load TensorFlow.

Each case runs in a fresh interpreter: TensorFlow reads the level once, when it is imported.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from alexnet_tf import console

ROOT = pathlib.Path(__file__).resolve().parent.parent

PROBE = """
import json, logging, os, sys
from alexnet_tf import console
console.quiet_tensorflow()
before = "tensorflow" in sys.modules
level = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
python_level = logging.getLogger("tensorflow").level
import alexnet_tf
model_loaded = "tensorflow" in sys.modules
alexnet_tf.build_alexnet  # a public name loads its module on first use
print(json.dumps({"tf_before": before, "level": level, "python_level": python_level,
                  "tf_after_package": model_loaded, "tf_after_name": "tensorflow" in sys.modules,
                  "worker_level": console.tensorflow_log_level()}))
"""


def _run_probe(script: str, variable: str, user_value: str | None) -> dict:
    """Runs ``script`` in a fresh interpreter with ``variable`` unset or set to ``user_value``; its last JSON line."""
    env = {key: value for key, value in os.environ.items() if key != variable}
    if user_value is not None:
        env[variable] = user_value
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _probe(level: str | None) -> dict:
    return _run_probe(PROBE, console.LOG_LEVEL_VARIABLE, level)


def test_quiet_by_default_before_tensorflow_loads():
    found = _probe(None)
    assert not found["tf_before"] and not found["tf_after_package"]
    assert found["level"] == "2" and found["worker_level"] == "2"
    assert found["python_level"] == 30  # logging.WARNING: TensorFlow's Python INFO lines hidden too
    assert found["tf_after_name"]  # the public names still work, loading TensorFlow when used


@pytest.mark.parametrize("level", ["0", "3"])
def test_the_users_level_is_kept(level):
    found = _probe(level)
    assert found["level"] == level and found["worker_level"] == level
    assert found["python_level"] == 0  # untouched


def test_every_command_line_quiets_tensorflow_before_importing_it():
    for script in ("train.py", "evaluate.py", "data_prep/build_tfrecords.py"):
        text = (ROOT / script).read_text()
        assert text.index("console.quiet_tensorflow()") < text.index("from absl import"), script
        assert "TF_CPP_MIN_LOG_LEVEL" not in text, f"{script} sets the level itself instead of using console"


FAULTS_PROBE = """
import json, os, resource, sys
from alexnet_tf import console
console.reuse_cpu_memory()
import tensorflow as tf
step = tf.function(lambda x: tf.reduce_sum(x * 2.0 + 1.0))
x = tf.random.uniform([2048, 2048])  # 16 MB: every temporary is a large allocation
step(x).numpy()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step(x).numpy()
print(json.dumps({"variable": os.environ.get(console.CPU_ALLOCATOR_VARIABLE),
                  "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _faults(user_value: str | None) -> dict:
    return _run_probe(FAULTS_PROBE, console.CPU_ALLOCATOR_VARIABLE, user_value)


def test_the_bfc_allocator_reuses_memory_and_the_users_choice_is_kept():
    reused, fresh = _faults(None), _faults("false")
    assert reused["variable"] == "true" and fresh["variable"] == "false"
    # The default allocator faults in fresh pages for the temporaries at every call (measured: about
    # 3,000 per call, a 16 MB tensor is 4,096 pages); the BFC allocator hands back the same memory.
    assert fresh["faults"] > 20 * 1024, fresh
    assert reused["faults"] < fresh["faults"] / 10, (reused, fresh)


def test_training_and_evaluation_choose_the_allocator_before_importing_tensorflow():
    for script in ("train.py", "evaluate.py"):
        text = (ROOT / script).read_text()
        assert text.index("console.reuse_cpu_memory()") < text.index("from absl import"), script


HEAP_PROBE = """
import ctypes, json, os, resource
from alexnet_tf import console
padded = console.pad_the_heap()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

def cycle():  # 64 MiB in 64 KiB blocks (below glibc's mmap threshold: from the heap), touched, freed
    blocks = [libc.malloc(65536) for _ in range(1024)]
    for block in blocks:
        ctypes.memset(block, 1, 65536)
    for block in reversed(blocks):
        libc.free(block)

cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    cycle()
print(json.dumps({"padded": padded, "variable": os.environ.get(console.HEAP_PAD_VARIABLE),
                  "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _heap_faults(user_value: str | None) -> dict:
    return _run_probe(HEAP_PROBE, console.HEAP_PAD_VARIABLE, user_value)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the heap pad is glibc's (Linux)")
def test_the_padded_heap_keeps_its_pages_and_the_users_choice_is_kept():
    padded, plain = _heap_faults(None), _heap_faults("131072")  # glibc's default pad, set by the user
    assert padded["padded"] and padded["variable"] == str(console.HEAP_TOP_PAD)
    assert not plain["padded"] and plain["variable"] == "131072"
    # Unpadded, glibc gives the freed 64 MiB back and faults it in again each time: 16,384 pages a
    # cycle. Padded, the pages stay.
    assert plain["faults"] > 10 * 8192, plain
    assert padded["faults"] < plain["faults"] / 20, (padded, plain)
