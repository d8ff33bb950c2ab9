"""Converter throughput and memory on the real ImageNet sample (issue 3, Performance).

  python benchmarks/convert.py [--input=../shared/data/imagenet-sample/train]

Measures images/s for keep-bytes and --resize=256 with 1 and 2 workers, the decode-only limit
(each file read and fully decoded once by Pillow, the converter's decoder, nothing written) at the
same worker counts, and the peak resident memory of the whole process tree (CLI + workers) for the
input and for the input listed 10 times. Rates exclude worker start-up (TensorFlow import), which a
real run pays once; each rate is the best of --trials runs. The last line printed is one JSON object.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app, flags  # noqa: E402
from PIL import Image  # noqa: E402

from alexnet_tf import converter  # noqa: E402

flags.DEFINE_string("input", os.path.join(ROOT, "..", "shared", "data", "imagenet-sample", "train"), "Class folders.")
flags.DEFINE_integer("shards", 16, "Shards per conversion (enough for two workers to balance).")
flags.DEFINE_integer("trials", 3, "Each rate is the best of this many runs (the machine may be shared).")
flags.DEFINE_integer("repeats", 10, "How many times the input is listed for the memory comparison.")
FLAGS = flags.FLAGS


def _decode(path: str) -> int:
    with open(path, "rb") as f:
        image = Image.open(io.BytesIO(f.read()))
        image.load()
    return image.size[0]


def _warm(_: int) -> None:
    time.sleep(0.5)  # keeps each worker busy so that every one of them has started


def _files(directory: str) -> list[str]:
    return sorted(
        os.path.join(directory, wnid, name)
        for wnid in os.listdir(directory)
        for name in os.listdir(os.path.join(directory, wnid))
    )


def decode_only(files: list[str], workers: int) -> float:
    """Images/s of read + full decode, in-process for one worker, spawned workers otherwise."""
    if workers == 1:
        start = time.time()
        for path in files:
            _decode(path)
        return len(files) / (time.time() - start)
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pool.map(_warm, range(workers), chunksize=1)
        start = time.time()
        for _ in pool.imap_unordered(_decode, files, chunksize=8):
            pass
        return len(files) / (time.time() - start)


def convert_rate(directory: str, output: str, workers: int, resize: int | None) -> float:
    summary = converter.convert(
        train_directory=directory,
        output_directory=output,
        train_shards=FLAGS.shards,
        num_workers=workers,
        resize=resize,
    )
    return summary["images_per_second"]


def _tree_rss(pid: int) -> tuple[int, int]:
    """(RSS of ``pid``, RSS of ``pid`` and all its descendants), in bytes."""

    def rss(p: int) -> int:
        try:
            with open(f"/proc/{p}/status") as f:
                return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            return 0

    def children(p: int) -> list[int]:
        found = []
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    found += [int(c) for c in f.read().split()]
        except OSError:
            pass
        return found

    own, total, stack = rss(pid), 0, [pid]
    while stack:
        p = stack.pop()
        total += rss(p)
        stack += children(p)
    return own, total


def peak_memory(directory: str, output: str) -> dict[str, float]:
    """Peak RSS (MiB) of the CLI process and of its whole tree while converting ``directory``."""
    command = [
        sys.executable,
        os.path.join(ROOT, "data_prep", "build_tfrecords.py"),
        f"--train_directory={directory}",
        f"--output_directory={output}",
        f"--train_shards={FLAGS.shards}",
        "--num_workers=2",
    ]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak_main = peak_tree = 0
    while process.poll() is None:
        own, total = _tree_rss(process.pid)
        peak_main, peak_tree = max(peak_main, own), max(peak_tree, total)
        time.sleep(0.05)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {process.returncode}")
    return {"main_mib": round(peak_main / 2**20, 1), "tree_mib": round(peak_tree / 2**20, 1)}


def _repeated_input(directory: str, target: str, repeats: int) -> None:
    for wnid in sorted(os.listdir(directory)):
        os.makedirs(os.path.join(target, wnid))
        for name in os.listdir(os.path.join(directory, wnid)):
            stem, ext = os.path.splitext(name)
            for k in range(repeats):
                os.symlink(os.path.join(directory, wnid, name), os.path.join(target, wnid, f"{stem}_{k}{ext}"))


def main(argv: list[str]) -> None:
    del argv
    directory = os.path.abspath(FLAGS.input)
    files = _files(directory)
    figures: dict[str, object] = {"images": len(files), "load_average_at_start": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, 2):
            figures[f"decode_only_{workers}w"] = round(max(decode_only(files, workers) for _ in range(FLAGS.trials)), 1)
            for mode, resize in (("keep_bytes", None), ("resize_256", 256)):
                rate = max(
                    convert_rate(directory, os.path.join(tmp, f"{mode}_{workers}_{trial}"), workers, resize)
                    for trial in range(FLAGS.trials)
                )
                figures[f"{mode}_{workers}w"] = rate
                print(f"{mode} with {workers} worker(s): {rate} images/s", flush=True)
            print(f"decode only with {workers} worker(s): {figures[f'decode_only_{workers}w']} images/s", flush=True)
        figures["keep_bytes_vs_decode"] = {
            f"{w}w": round(figures[f"keep_bytes_{w}w"] / figures[f"decode_only_{w}w"], 3) for w in (1, 2)
        }
        figures["workers_2_vs_1"] = {
            mode: round(figures[f"{mode}_2w"] / figures[f"{mode}_1w"], 3) for mode in ("keep_bytes", "resize_256")
        }
        repeated = os.path.join(tmp, "repeated")
        _repeated_input(directory, repeated, FLAGS.repeats)
        figures["peak_memory_input"] = peak_memory(directory, os.path.join(tmp, "memory_1"))
        print(f"peak memory, input: {figures['peak_memory_input']}", flush=True)
        figures[f"peak_memory_input_x{FLAGS.repeats}"] = peak_memory(repeated, os.path.join(tmp, "memory_10"))
        print(f"peak memory, input x{FLAGS.repeats}: {figures[f'peak_memory_input_x{FLAGS.repeats}']}", flush=True)
    figures["load_average_at_end"] = os.getloadavg()[0]
    print(json.dumps(figures))


if __name__ == "__main__":
    app.run(main)
