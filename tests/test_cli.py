"""The command lines as a user meets them: bad input in one line, exit statuses, a quiet console.

Every case runs the real script in a fresh process.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import subprocess
import time

import pytest

from alexnet_tf import cli
from tests.support import ROOT, python_env, run_python, start_python
from tests.support.converted import SHAPES

TRAIN, EVALUATE, CONVERT = "train.py", "evaluate.py", "data_prep/build_tfrecords.py"
# absl's prefix: level, date, time, thread, file:line.
ABSL_LINE = re.compile(r"^[IWEF]\d{4} [\d:.]+ +\d+ ([\w.]+\.py):\d+\] ")
OUR_FILES = {path.name for path in (*ROOT.glob("*.py"), *ROOT.glob("alexnet_tf/**/*.py"), *ROOT.glob("data_prep/*.py"))}


def _env() -> dict[str, str]:
    return python_env(drop=["TF_CPP_MIN_LOG_LEVEL"])


def _run(script: str, *args: str, cwd: pathlib.Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return run_python([ROOT / script, *args], cwd=cwd, env=_env(), timeout=timeout)


# (script, arguments, what the one line must say). Each ends with status 2 before any work.
BAD_INPUT = [
    (TRAIN, ["--num_gpus=2"], "--num_gpus=2 but only 0 GPU(s) are visible"),
    (TRAIN, ["--data_dir=/nonexistent"], "--data_dir=/nonexistent: no such directory"),
    (TRAIN, ["--preset=nope"], "flag --preset=nope: value should be one of"),
    (TRAIN, ["--precision=fp8"], "--precision='fp8': choose one of float32, mixed_float16, mixed_bfloat16"),
    (TRAIN, ["--lr_schedule=step:x"], "--lr_schedule='step:x': use 'plateau' or 'step:E1,E2,...'"),
    (TRAIN, ["--batch_size=0"], "--batch_size=0: must be at least 1"),
    (TRAIN, ["--batch_size=many"], "flag --batch_size=many: invalid literal"),
    (TRAIN, ["--input_size=300"], "--image_size=76: smaller than --input_size=300"),
    (TRAIN, ["--dataset=imagenette", "--imagenette_dir=/nonexistent"], "--imagenette_dir=/nonexistent: no such"),
    (TRAIN, ["--workdir=s3://bucket/run"], "s3://"),
    (TRAIN, ["--image_dir=/nonexistent"], "--image_dir=/nonexistent: no such directory"),
    (TRAIN, ["--dataset=folders"], "--dataset=folders needs --image_dir"),
    (TRAIN, ["--init_from=/nonexistent.caffemodel"], "--init_from=/nonexistent.caffemodel: no such file"),
    (TRAIN, ["--trainable_from=fc9"], "--trainable_from='fc9': name one of conv1"),
    (TRAIN, ["extra"], "unexpected arguments: ['extra']"),
    (EVALUATE, ["--checkpoint=/nonexistent"], "--checkpoint=/nonexistent: no such file or directory"),
    (EVALUATE, [], "pass exactly one of --checkpoint and --saved_model"),
    (EVALUATE, ["--saved_model=/nonexistent"], "--saved_model=/nonexistent: no such file or directory"),
    (CONVERT, ["--output_directory=out", "--train_directory=/nonexistent"], "/nonexistent"),
    (CONVERT, ["--train_directory=x"], "--output_directory is required"),
]


@pytest.mark.parametrize(("script", "args", "message"), BAD_INPUT,
                         ids=[f"{s.split('/')[-1]}:{' '.join(a) or 'nothing'}" for s, a, _ in BAD_INPUT])
def test_bad_input_ends_in_one_line_and_status_2(tmp_path, script, args, message):
    result = _run(script, *args, cwd=tmp_path)
    assert result.returncode == cli.USAGE, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr[-3000:]
    assert lines[0].startswith(f"{os.path.basename(script)}: ")
    assert not os.listdir(tmp_path), os.listdir(tmp_path)  # nothing drawn, converted, trained or written


def _foreign_lines(stderr: str) -> list[str]:
    """stderr lines that are not absl lines of this project's own files."""
    foreign = []
    for line in stderr.splitlines():
        match = ABSL_LINE.match(line)
        if not (match and match.group(1) in OUR_FILES):
            foreign.append(line)
    return foreign


@pytest.mark.slow  # two training processes: ~40 s on 2 cores
@pytest.mark.onednn  # the console's quiet on either kind of CPU: CI runs it again with oneDNN flipped
def test_sigterm_exits_75_and_the_same_command_resumes_on_a_quiet_console(converted, tmp_path):
    """A preempted run says "resume me" (75); the same command, again, finishes (0). No TensorFlow chatter."""
    data_dir = converted(SHAPES)
    workdir = tmp_path / "run"
    command = [ROOT / TRAIN, f"--data_dir={data_dir}", "--preset=tiny", f"--workdir={workdir}",
               "--epochs=1", "--steps_per_loop=1", "--checkpoint_every_steps=2"]
    process = start_python([*command, "--steps_per_epoch=100000"], cwd=tmp_path, env=_env(), stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not list((workdir / "checkpoints").glob("ckpt-*.index")):
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, stopped = process.communicate(timeout=120)
    assert process.returncode == cli.RESUMABLE, stopped[-3000:]
    assert "SIGTERM" in stopped and f"--workdir={workdir}" in stopped
    assert not (workdir / "summary.json").exists()
    # The same command again (the epoch shortened so that it ends here): resumes and finishes.
    resumed = run_python([*command, "--steps_per_epoch=2"], cwd=tmp_path, env=_env(), timeout=300)
    assert resumed.returncode == cli.OK, resumed.stderr[-3000:]
    assert "Resumed from" in resumed.stderr
    assert json.loads((workdir / "summary.json").read_text())["epochs_completed"] == 1
    # Training, evaluation and export: every stderr line is this project's own (no TensorFlow
    # start-up lines, oneDNN notices or checkpoint-saver INFO), whatever the CPU.
    for stderr in (stopped, resumed.stderr):
        assert not _foreign_lines(stderr), _foreign_lines(stderr)
    assert len(resumed.stderr.splitlines()) < 40, resumed.stderr
