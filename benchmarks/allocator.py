"""CPU cost per training image with TensorFlow's default CPU allocator, its BFC allocator, and the
BFC allocator with glibc's heap padded.

    python benchmarks/allocator.py [--imagenette_dir=../shared/data/imagenette] [--steps=10,60]

TensorFlow's default CPU allocator hands every tensor to malloc; the large ones (a batch of
images, a layer's activations) come from fresh pages that the kernel must fault in and zero at
every step. ``train.py`` and ``evaluate.py`` therefore start TensorFlow with its best-fit
allocator (``TF_CPU_ALLOCATOR_USE_BFC=true``), which keeps freed memory for the next step, and
keep 256 MiB at the top of glibc's heap (``MALLOC_TOP_PAD_``) for what kernels still take from
malloc, both in ``alexnet_tf.console``. This script converts the Imagenette training images at
the preset's size once, then runs ``train.py --preset=imagenette`` on them as separate processes
with each setting, for two numbers of steps. The difference between the long and the short run
removes start-up, tracing, evaluation and export, leaving the cost of the steps themselves:
CPU-seconds (user and system) and page faults per training image, and images per CPU-second.
The settings are timed alternately in one run, with TensorFlow's oneDNN kernels off and on
(``--onednn=off,on``; on by default on CPUs with AVX-512, where TensorFlow also puts a caching
allocator of its own first). The last line printed is one JSON object.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time

import harness
from absl import flags

from alexnet_tf import console

flags.DEFINE_string("imagenette_dir", str(harness.SHARED_DATA / "imagenette"),
                    "Imagenette JPEG folders (train/, val/).")
flags.DEFINE_list("steps", ["10", "60"], "The short and the long run's training steps.")
flags.DEFINE_integer("repeats", 2, "Runs of each (allocator, steps) pair.")
flags.DEFINE_list("onednn", ["off", "on"], "TF_ENABLE_ONEDNN_OPTS settings to measure: off (0), on (1).")
FLAGS = flags.FLAGS
GLIBC_TOP_PAD = str(128 * 1024)  # glibc's own default


# name: (TF_CPU_ALLOCATOR_USE_BFC, MALLOC_TOP_PAD_ or None for train.py's own).
SETTINGS = {
    "malloc": ("false", GLIBC_TOP_PAD),
    "bfc": ("true", GLIBC_TOP_PAD),
    "bfc_padded": ("true", None),
}


def _run(data_dir: str, steps: int, setting: str, workdir: str, onednn: str) -> dict[str, float]:
    """One training process; its CPU-seconds, page faults and wall seconds."""
    allocator, pad = SETTINGS[setting]
    env = {k: v for k, v in os.environ.items() if k != console.HEAP_PAD_VARIABLE}
    env["TF_ENABLE_ONEDNN_OPTS"] = {"off": "0", "on": "1"}[onednn]
    env[console.CPU_ALLOCATOR_VARIABLE] = allocator
    if pad is not None:  # set by the "user": train.py keeps it
        env[console.HEAP_PAD_VARIABLE] = pad
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, str(harness.ROOT / "train.py"), "--dataset=records", "--preset=imagenette",
         f"--data_dir={data_dir}", f"--steps_per_epoch={steps}", "--epochs=1", f"--workdir={workdir}"],
        env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"user": after.ru_utime - before.ru_utime, "system": after.ru_stime - before.ru_stime,
            "faults": after.ru_minflt - before.ru_minflt, "wall": wall}


def main(argv: list[str]) -> None:
    del argv
    from alexnet_tf import imagenette  # TensorFlow loads here, after the flags are parsed
    from alexnet_tf.config import get_config

    config = get_config("imagenette")
    short, long = (int(s) for s in FLAGS.steps)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = imagenette.prepare_imagenette(os.path.join(tmp, "data"), config.image_size,
                                                 FLAGS.imagenette_dir)
        runs: dict[tuple[str, str, int], list[dict[str, float]]] = {}
        for repeat in range(FLAGS.repeats):
            for onednn in FLAGS.onednn:
                for setting in SETTINGS:
                    for steps in (short, long):
                        workdir = os.path.join(tmp, f"run-{onednn}-{setting}-{steps}-{repeat}")
                        runs.setdefault((onednn, setting, steps), []).append(
                            _run(data_dir, steps, setting, workdir, onednn))

    def per_image(onednn: str, setting: str) -> dict[str, float]:
        # The cheapest run of each length: the others met more of the machine's other work.
        best = {s: min(runs[(onednn, setting, s)], key=lambda r: r["user"] + r["system"]) for s in (short, long)}
        images = (long - short) * config.batch_size
        user = (best[long]["user"] - best[short]["user"]) / images
        system = (best[long]["system"] - best[short]["system"]) / images
        return {"cpu_seconds_per_image": round(user + system, 5), "system_share": round(system / (user + system), 3),
                "page_faults_per_image": round((best[long]["faults"] - best[short]["faults"]) / images, 1),
                "images_per_cpu_second": round(1.0 / (user + system), 1)}

    figures = {onednn: {setting: per_image(onednn, setting) for setting in SETTINGS} for onednn in FLAGS.onednn}
    names = {"malloc": "default (malloc)", "bfc": "BFC", "bfc_padded": "BFC + heap pad"}
    for onednn, settings in figures.items():
        for setting, each in settings.items():
            print(f"oneDNN {onednn:>3}, {names[setting]:>17}: {each['cpu_seconds_per_image'] * 1000:.2f} CPU-ms per "
                  f"image ({each['system_share']:.0%} in the kernel), {each['page_faults_per_image']:.0f} page "
                  f"faults per image, {each['images_per_cpu_second']} images per CPU-second")

    def ratio(onednn: str, a: str, b: str) -> float:
        return round(figures[onednn][a]["images_per_cpu_second"] / figures[onednn][b]["images_per_cpu_second"], 3)

    ratios = {f"{onednn}_{a}_vs_{b}_images_per_cpu_second": ratio(onednn, a, b)
              for onednn in FLAGS.onednn for a, b in (("bfc", "malloc"), ("bfc_padded", "bfc"))}
    harness.print_figures({"preset": "imagenette", "batch_size": config.batch_size, "steps": [short, long],
                           "cpu_avx512": harness.cpu_flags(), **figures, **ratios})


if __name__ == "__main__":
    harness.run(main)
