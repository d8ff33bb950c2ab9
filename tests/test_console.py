"""The quiet console: TensorFlow's start-up logging is silenced before TensorFlow loads, unless the
user chose a level; importing the package does not load TensorFlow.

Each case runs in a fresh interpreter: TensorFlow reads the level once, when it is imported.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from alexnet_tf import console
from tests.support import ROOT, python_env, run_python

pytestmark = pytest.mark.onednn  # CI runs these again with TF_ENABLE_ONEDNN_OPTS flipped


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
    env = python_env(drop=[variable])
    if user_value is not None:
        env[variable] = user_value
    result = run_python(["-c", script], env=env, timeout=120)
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


COMMANDS = {"train.py": "train", "evaluate.py": "evaluate", "data_prep/build_tfrecords.py": "build_tfrecords"}


def test_every_command_line_quiets_tensorflow_before_importing_it():
    for script, app in COMMANDS.items():
        # The entry script imports its command's module and nothing else that could load TensorFlow.
        entry = (ROOT / script).read_text()
        assert f"from alexnet_tf.apps import {app}\n" in entry and "sys.path" not in entry, script
        assert [line.strip() for line in entry.splitlines() if line.strip().startswith(("import ", "from "))] == [
            *(["import sys"] if script.startswith("data_prep") else []), f"from alexnet_tf.apps import {app}"], script
        text = (ROOT / "alexnet_tf" / "apps" / f"{app}.py").read_text()
        assert text.index("console.quiet_tensorflow()") < text.index("from absl import"), app
        assert "TF_CPP_MIN_LOG_LEVEL" not in text, f"{app} sets the level itself instead of using console"
    package = (ROOT / "alexnet_tf" / "apps" / "__init__.py").read_text()
    assert not [line for line in package.splitlines() if line.startswith(("import ", "from "))]  # imports nothing


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
from tensorflow.python.util import _pywrap_util_port
print(json.dumps({"variable": os.environ.get(console.CPU_ALLOCATOR_VARIABLE),
                  "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before,
                  "onednn": _pywrap_util_port.IsMklEnabled()}))
"""


def _faults(user_value: str | None) -> dict:
    return _run_probe(FAULTS_PROBE, console.CPU_ALLOCATOR_VARIABLE, user_value)


def test_memory_is_reused_from_call_to_call_and_the_users_choice_is_kept():
    reused, chosen = _faults(None), _faults("false")
    assert reused["variable"] == "true" and chosen["variable"] == "false"
    # 20 calls whose temporaries are 16 MB each (4,096 pages): memory handed back to the kernel
    # is faulted in again at every call, memory kept for the next call is not.
    assert reused["faults"] < 2 * 1024, reused
    if not chosen["onednn"]:
        # TensorFlow's own CPU allocator is plain malloc: the probe sees the difference. (With
        # oneDNN on, TensorFlow puts its own caching allocator first, and both settings reuse.)
        assert chosen["faults"] > 20 * 1024, chosen


def test_training_and_evaluation_choose_the_allocator_before_importing_tensorflow():
    for app in ("train", "evaluate"):
        text = (ROOT / "alexnet_tf" / "apps" / f"{app}.py").read_text()
        assert text.index("console.reuse_cpu_memory()") < text.index("from absl import"), app


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


# Lines TensorFlow 2.21 printed before absl's logging was initialised, as seen on a CPU with
# AVX-512 (oneDNN on): no TF_CPP_MIN_LOG_LEVEL reaches them.
STARTUP_LINES = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796525679.612435    5294 port.cc:153] oneDNN custom operations are on. You may see slightly "
    "different numerical results due to floating-point round-off errors from different computation orders. "
    "To turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.",
    "I0000 00:00:1796525679.612843    5294 cudart_stub.cc:31] Could not find cuda drivers on your machine, "
    "GPU will not be used.",
    "E0000 00:00:1796525683.301039    5294 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: "
    "Failed call to cuInit: UNKNOWN ERROR (303)",
    "I0000 00:00:1796525656.700327    4084 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use "
    "available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow with the "
    "appropriate compiler flags.",
]
REAL_LINES = [
    "E0000 00:00:1796525683.301039    5294 op_kernel.cc:1840] OP_REQUIRES failed at conv_ops.cc:100 : "
    "INVALID_ARGUMENT: input must be 4-dimensional",
    "W0000 00:00:1796525683.301039    5294 port.cc:999",  # not of the start-up form: kept
    "F0000 00:00:1796525683.301039    5294 cuda_platform.cc:52] Check failed: device",
    "I1206 02:55:15.839194 139961130273664 training.py:178] Epoch 1/2: validation loss 0.6126",
    "Traceback (most recent call last):",
    "E0000 00:00:1796525683.301039    5294 cuda_platform.cc:52] failed call to cuDeviceGet: out of memory",
]


def test_the_startup_pattern_takes_the_startup_lines_and_nothing_else():
    for line in STARTUP_LINES:
        assert console.STARTUP_LINE.match(line.encode()), line
    for line in REAL_LINES:
        assert not console.STARTUP_LINE.match(line.encode()), line


FILTER_PROBE = """
import os, sys
from alexnet_tf import console
console.quiet_tensorflow()
lines = {lines!r}
os.write(2, "".join(line + "\\n" for line in lines).encode())  # as C++ code writes them
sys.stderr.write("python's own stderr\\n")
os.write(2, b"a partial line")
{ending}
"""


def _filtered(ending: str, level: str | None = None) -> subprocess.CompletedProcess:
    env = python_env(drop=[console.LOG_LEVEL_VARIABLE])
    if level is not None:
        env[console.LOG_LEVEL_VARIABLE] = level
    script = FILTER_PROBE.format(lines=[*STARTUP_LINES, *REAL_LINES], ending=ending)
    return run_python(["-c", script], env=env, timeout=120)


@pytest.mark.parametrize("ending", ["import tensorflow", "os.abort()"], ids=["exit", "abort"])
def test_the_filter_drops_startup_lines_keeps_the_rest_and_loses_nothing_when_the_process_dies(ending):
    result = _filtered(ending)
    assert (result.returncode == 0) == (ending != "os.abort()"), result.stderr
    shown = result.stderr.splitlines()
    for line in STARTUP_LINES:
        assert line not in shown
    for line in REAL_LINES:  # in order, even after an abort
        assert line in shown
    assert [shown.index(line) for line in REAL_LINES] == sorted(shown.index(line) for line in REAL_LINES)
    assert "python's own stderr" in shown and "a partial line" in result.stderr
    # TensorFlow's own start-up lines (with oneDNN on, or a CPU without CUDA drivers) are gone too.
    assert "absl::InitializeLog" not in result.stderr and "oneDNN custom operations" not in result.stderr


def test_a_user_who_sets_the_level_sees_every_line():
    result = _filtered("import tensorflow", level="0")
    for line in STARTUP_LINES + REAL_LINES:
        assert line in result.stderr.splitlines()


@pytest.mark.parametrize(("argv", "asked"), [
    (["train.py"], False), (["train.py", "--verbosity=1"], True), (["train.py", "-v", "2"], True),
    (["train.py", "--verbosity=0"], False), (["train.py", "--epochs=1", "-v=-1"], False),
])
def test_verbosity_on_the_command_line_asks_for_logs(monkeypatch, argv, asked):
    monkeypatch.delenv(console.LOG_LEVEL_VARIABLE, raising=False)
    assert console.user_asked_for_logs(argv) == asked
