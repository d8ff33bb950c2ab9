"""The converter's whole-process throughput, start-up, memory and decode-only limit, in one run.

  python benchmarks/convert.py [--input=../shared/data/imagenet-sample/train] [--repeats=5] \\
      [--baseline=/path/to/an/older/checkout] [--other='name=command {input} {output} {workers} {shards}']

The input's class folders are linked ``--repeats`` times (the 1,000-image sample gives 5,000
images) and converted into ``--shards`` shards by the command line, data_prep/build_tfrecords.py,
with 1 and 2 workers. Each figure is for the whole process, start-up included: images / wall time
from process start to exit (imports, listing, workers, conversion, merge), the CPU seconds of the
process tree, its peak memory (RSS and PSS summed over the tree, sampled every 50 ms), and the
start-up: seconds until the first training shard's file appears. ``--baseline`` runs another
checkout's command line the same way (e.g. an older commit), ``--other`` any other converter
(placeholders: {input}, {output}, {workers}, {shards}); the systems alternate within each of
``--rounds`` rounds, and each figure is the best and the median over the rounds.

Also printed: the decode-only limit (each file read and fully decoded by Pillow, the converter's
decoder, nothing written; worker start-up excluded) with 1 and 2 processes and with 2 threads,
and the statistics' per-image cost (sampling and sums) by method 1 and by the converter's method.
The last line printed is one JSON object.
"""

from __future__ import annotations

import concurrent.futures
import io
import multiprocessing
import os
import resource
import shlex
import shutil
import statistics as stats
import subprocess
import sys
import tempfile
import time

import harness
from absl import flags
from PIL import Image

from alexnet_tf import statistics
from alexnet_tf.converter import image
from alexnet_tf.converter.shards import statistics_accumulator

flags.DEFINE_string("input", str(harness.SHARED_DATA / "imagenet-sample" / "train"), "Class folders.")
flags.DEFINE_integer("repeats", 5, "How many times each input image is linked into the converted folder.")
flags.DEFINE_integer("shards", 16, "Training shards per conversion.")
flags.DEFINE_integer("rounds", 3, "Rounds; the systems alternate within each.")
flags.DEFINE_string("baseline", None, "Another checkout of this project whose command line runs beside this one.")
flags.DEFINE_multi_string("other", [], "name=command template of another converter, run beside this one.")
flags.DEFINE_integer("statistics_images", 300, "Images for the statistics' per-image cost.")
FLAGS = flags.FLAGS

_POLL = 0.05  # seconds between samples of the process tree's memory and the output folder


def _files(directory: str) -> list[str]:
    return sorted(
        os.path.join(directory, wnid, name)
        for wnid in os.listdir(directory)
        for name in os.listdir(os.path.join(directory, wnid))
    )


def _decode(path: str) -> int:
    with open(path, "rb") as f:
        decoded = Image.open(io.BytesIO(f.read()))
        decoded.load()
    return decoded.size[0]


def _warm(_: int) -> None:
    time.sleep(0.5)  # keeps each worker busy so that every one of them has started


def decode_only(files: list[str], workers: int, threads: bool = False) -> float:
    """Images/s of read + full decode: in-process for one worker, else processes or threads."""
    if workers == 1:
        start = time.time()
        for path in files:
            _decode(path)
        return len(files) / (time.time() - start)
    if threads:
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            start = time.time()
            for _ in pool.map(_decode, files, chunksize=8):
                pass
            return len(files) / (time.time() - start)
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pool.map(_warm, range(workers), chunksize=1)
        start = time.time()
        for _ in pool.imap_unordered(_decode, files, chunksize=8):
            pass
        return len(files) / (time.time() - start)


def statistics_cost(files: list[str]) -> dict[str, float]:
    """Milliseconds per image of the statistics' sampling and sums, by each method."""
    decoded = []
    for path in files:
        with Image.open(path) as source:
            decoded.append(source.convert("RGB"))
    methods = {
        "method_1": (image.STATISTICS_SIZE, lambda: statistics.StatisticsAccumulator(image.STATISTICS_SIZE)),
        f"method_{image.STATISTICS_METHOD}": (image.STATISTICS_GRID, statistics_accumulator),
    }
    costs = {}
    for name, (grid, make) in methods.items():
        best = float("inf")
        for _ in range(3):
            accumulator = make()
            start = time.perf_counter()
            for rgb in decoded:
                accumulator.add(image.central_square(rgb, grid))
            best = min(best, time.perf_counter() - start)
        costs[f"{name}_ms"] = round(1000 * best / len(decoded), 3)
    return costs


def _tree(pid: int) -> list[int]:
    found, stack = [], [pid]
    while stack:
        p = stack.pop()
        found.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    stack += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return found


def _memory(pid: int) -> tuple[int, int]:
    """(resident set size, proportional set size) of ``pid`` in bytes.

    RSS counts every page the process maps, shared or not: summed over a tree it counts a forked,
    not yet exec'd child's pages twice. PSS splits each shared page between the processes mapping
    it, machine-wide: it counts a page once, but shrinks when other processes share the libraries.
    """
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            found = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if line[:4] in ("Rss:", "Pss:")}
        return found.get("Rss", 0), found.get("Pss", 0)
    except (OSError, ValueError):
        return 0, 0


def whole_process(command: list[str], output: str, images: int) -> dict[str, float]:
    """Runs ``command`` to its end: images/s, start-up, CPU seconds and peak memory of its tree."""
    os.makedirs(output)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")  # the consoles are not read
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryFile() as stderr:
        start = time.time()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, cwd=output, env=env)
        peak_rss = peak_pss = 0
        first_shard = None
        while process.poll() is None:
            memory = [_memory(p) for p in _tree(process.pid)]
            peak_rss = max(peak_rss, sum(rss for rss, _ in memory))
            peak_pss = max(peak_pss, sum(pss for _, pss in memory))
            if first_shard is None and any(name.startswith("train-") for name in os.listdir(output)):
                first_shard = time.time() - start
            time.sleep(_POLL)
        wall = time.time() - start
        if process.returncode != 0:
            stderr.seek(0)
            message = stderr.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"{shlex.join(command)} exited with {process.returncode}: {message}")
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return {
        "images_per_second": round(images / wall, 1),
        "wall_seconds": round(wall, 2),
        "startup_seconds": round(first_shard if first_shard is not None else wall, 2),
        "cpu_seconds": round(cpu, 1),
        "peak_tree_rss_mib": round(peak_rss / 2**20, 1),
        "peak_tree_pss_mib": round(peak_pss / 2**20, 1),
    }


def _link_repeated(directory: str, target: str, repeats: int) -> int:
    count = 0
    for wnid in sorted(os.listdir(directory)):
        os.makedirs(os.path.join(target, wnid))
        for name in os.listdir(os.path.join(directory, wnid)):
            stem, ext = os.path.splitext(name)
            for k in range(repeats):
                os.symlink(os.path.join(directory, wnid, name), os.path.join(target, wnid, f"{stem}_{k}{ext}"))
                count += 1
    return count


def _systems(train: str) -> dict[str, object]:
    """name -> a function of (output, workers) giving the command line to run."""

    def project(root: str):
        cli = os.path.join(root, "data_prep", "build_tfrecords.py")
        # Each checkout's command line imports its own package, installed or not.
        return lambda output, workers: [
            "env", f"PYTHONPATH={root}", sys.executable, cli, f"--train_directory={train}",
            f"--output_directory={output}",
            f"--train_shards={FLAGS.shards}", f"--num_workers={workers}",
        ]

    systems = {"this": project(str(harness.ROOT))}
    if FLAGS.baseline:
        systems["baseline"] = project(os.path.abspath(FLAGS.baseline))
    for entry in FLAGS.other:
        name, _, template = entry.partition("=")
        systems[name] = lambda output, workers, template=template: shlex.split(
            template.format(input=train, output=output, workers=workers, shards=FLAGS.shards)
        )
    return systems


def main(argv: list[str]) -> None:
    del argv
    directory = os.path.abspath(FLAGS.input)
    files = _files(directory)
    figures: dict[str, object] = {"input_images": len(files), "load_average_at_start": os.getloadavg()[0]}
    figures["statistics_per_image"] = statistics_cost(files[: FLAGS.statistics_images])
    print(f"statistics per image: {figures['statistics_per_image']}", flush=True)
    limits = {
        "1_process": decode_only(files, 1),
        "2_processes": decode_only(files, 2),
        "2_threads": decode_only(files, 2, threads=True),
    }
    figures["decode_only_images_per_second"] = {key: round(value, 1) for key, value in limits.items()}
    print(f"decode only (images/s, start-up excluded): {figures['decode_only_images_per_second']}", flush=True)
    runs: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        train = os.path.join(tmp, "train")
        images = _link_repeated(directory, train, FLAGS.repeats)
        figures["images"] = images
        systems = _systems(train)
        for round_index in range(FLAGS.rounds):
            for workers in (1, 2):
                for name, command in systems.items():
                    output = os.path.join(tmp, f"{name}_{workers}_{round_index}")
                    result = whole_process(command(output, workers), output, images)
                    runs.setdefault(f"{name}_{workers}w", []).append(result)
                    print(f"round {round_index + 1}, {name}, {workers} worker(s): {result}", flush=True)
                    shutil.rmtree(output)
    summary = {}
    for key, results in runs.items():
        rates = [r["images_per_second"] for r in results]
        summary[key] = {
            "best_images_per_second": max(rates),
            "median_images_per_second": stats.median(rates),
            **{f"median_{field}": stats.median(r[field] for r in results)
               for field in ("startup_seconds", "cpu_seconds", "peak_tree_rss_mib", "peak_tree_pss_mib")},
        }
    figures["whole_process"] = summary
    figures["runs"] = runs
    for name in (n for n in systems if n != "this"):
        figures[f"this_vs_{name}"] = {
            f"{w}w": round(summary[f"this_{w}w"]["median_images_per_second"]
                           / summary[f"{name}_{w}w"]["median_images_per_second"], 3)
            for w in (1, 2)
        }
    figures["this_vs_decode_only"] = {
        "1w": round(summary["this_1w"]["median_images_per_second"] / limits["1_process"], 3),
        "2w": round(summary["this_2w"]["median_images_per_second"] / limits["2_processes"], 3),
    }
    figures["load_average_at_end"] = os.getloadavg()[0]
    harness.print_figures(figures)


if __name__ == "__main__":
    harness.run(main)
