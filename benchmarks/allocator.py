"""CPU cost per training image with TensorFlow's default CPU allocator and with its BFC allocator.

    python benchmarks/allocator.py [--imagenette_dir=../shared/data/imagenette] [--steps=10,60]

TensorFlow's default CPU allocator hands every tensor to malloc; the large ones (a batch of
images, a layer's activations) come from fresh pages that the kernel must fault in and zero at
every step. ``train.py`` and ``evaluate.py`` therefore start TensorFlow with its best-fit
allocator (``TF_CPU_ALLOCATOR_USE_BFC=true``, see ``alexnet_tf.console``), which keeps freed
memory for the next step. This script converts the Imagenette training images at the preset's
size once, then runs ``train.py --preset=imagenette`` on them as separate processes, with each
allocator, for two numbers of steps. The difference between the long and the short run removes
start-up, tracing, evaluation and export, leaving the cost of the steps themselves: CPU-seconds
(user and system) and page faults per training image, and images per CPU-second. The pairs are
timed alternately in one run. The last line printed is one JSON object.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from alexnet_tf import console  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
flags.DEFINE_string("imagenette_dir", os.path.join(ROOT, "..", "shared", "data", "imagenette"),
                    "Imagenette JPEG folders (train/, val/).")
flags.DEFINE_list("steps", ["10", "60"], "The short and the long run's training steps.")
flags.DEFINE_integer("repeats", 2, "Runs of each (allocator, steps) pair.")
FLAGS = flags.FLAGS


def _run(data_dir: str, steps: int, allocator: str, workdir: str) -> dict[str, float]:
    """One training process; its CPU-seconds, page faults and wall seconds."""
    env = dict(os.environ, **{console.CPU_ALLOCATOR_VARIABLE: allocator})
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, os.path.join(ROOT, "train.py"), "--dataset=records", "--preset=imagenette",
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
        runs: dict[tuple[str, int], list[dict[str, float]]] = {}
        for repeat in range(FLAGS.repeats):
            for allocator in ("false", "true"):
                for steps in (short, long):
                    workdir = os.path.join(tmp, f"run-{allocator}-{steps}-{repeat}")
                    runs.setdefault((allocator, steps), []).append(_run(data_dir, steps, allocator, workdir))

    def per_image(allocator: str) -> dict[str, float]:
        # The cheapest run of each length: the others met more of the machine's other work.
        best = {s: min(runs[(allocator, s)], key=lambda r: r["user"] + r["system"]) for s in (short, long)}
        images = (long - short) * config.batch_size
        user = (best[long]["user"] - best[short]["user"]) / images
        system = (best[long]["system"] - best[short]["system"]) / images
        return {"cpu_seconds_per_image": round(user + system, 5), "system_share": round(system / (user + system), 3),
                "page_faults_per_image": round((best[long]["faults"] - best[short]["faults"]) / images, 1),
                "images_per_cpu_second": round(1.0 / (user + system), 1)}

    malloc, bfc = per_image("false"), per_image("true")
    for name, figures in (("default (malloc)", malloc), ("BFC", bfc)):
        print(f"{name:>17}: {figures['cpu_seconds_per_image'] * 1000:.2f} CPU-ms per image "
              f"({figures['system_share']:.0%} in the kernel), {figures['page_faults_per_image']:.0f} page faults "
              f"per image, {figures['images_per_cpu_second']} images per CPU-second")
    print(json.dumps({"preset": "imagenette", "batch_size": config.batch_size, "steps": [short, long],
                      "malloc": malloc, "bfc": bfc,
                      "bfc_vs_malloc_images_per_cpu_second": round(
                          bfc["images_per_cpu_second"] / malloc["images_per_cpu_second"], 3)}))


if __name__ == "__main__":
    app.run(main)
