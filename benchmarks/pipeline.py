"""Images/s of the training input pipeline against the decode-only limit of the same records.

  python benchmarks/pipeline.py [--source=../shared/data/imagenet-sample/train] [--passes=4]

Builds two sets of shards from the source images with the converter: the original bytes and
``--resize=256``. For each it times (1) reading, parsing and decoding, nothing else, and (2) the
host's half of the training pipeline (``alexnet_tf.data.make_dataset``: shuffles, the central
square, the random crop decoded alone where that is exact, the draws of flip and PCA noise,
batching of uint8 crops; the mean image, mirroring and colour noise are the device's, not timed
here), and (3) decoding the central square and resizing it to 256, nothing else: the ceiling
of any training view that resizes. CPU-seconds are the process's user + system time over the
timed passes, so the figures are work per image, steadier than wall time on a machine shared
with other jobs. The three are measured in ``--rounds`` alternating rounds, each on a fresh
iterator, and each figure is the median of its rounds: the machine's drift then falls on both
alike. As in ``train.py``, TensorFlow's CPU tensors get the BFC allocator. The last line printed
is one JSON object: train_vs_decode_cpu and train_vs_decode_resized_cpu (training-view images per CPU-second
over decode-only images per CPU-second, same records; goal >= 0.9), each round's ratio, the
ceiling (3) over decode-only, the bytes per training image that leave the host, images/s and per
CPU-second, peak memory.
"""

from __future__ import annotations

import os
import resource
import tempfile
import time

import harness

# The allocator train.py gives the pipeline it feeds; set before TensorFlow is imported.
harness.setup(reuse_cpu_memory=True)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import flags, logging  # noqa: E402

from alexnet_tf import converter, data, preprocess, records, statistics  # noqa: E402
from alexnet_tf.config import get_config  # noqa: E402

flags.DEFINE_string(
    "source",
    str(harness.SHARED_DATA / "imagenet-sample" / "train"),
    "Training images in <wnid>/ folders.",
)
flags.DEFINE_string("work_dir", None, "Where the shards go (default: a temporary directory).")
flags.DEFINE_integer("num_shards", 16, "Shards per set.")
flags.DEFINE_integer("passes", 4, "Timed passes over the records per round (after one warm-up pass).")
flags.DEFINE_integer("rounds", 5, "Alternating rounds of decode-only and training view; medians count.")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
FLAGS = flags.FLAGS


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _decode_only(pattern: str, batch_size: int) -> tf.data.Dataset:
    """Read, parse and decode with the same parallelism as the pipeline, nothing else."""
    files = tf.data.Dataset.list_files(pattern, shuffle=False)
    dataset = files.interleave(
        tf.data.TFRecordDataset,
        cycle_length=data.CYCLE_LENGTH,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=False,
    )
    dataset = dataset.map(
        lambda r: (preprocess.decode_rgb(records.parse_example(r)["encoded"])[0, 0], 0),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=False,
    )
    options = tf.data.Options()
    options.threading.max_intra_op_parallelism = 1
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE).with_options(options)


def _square_only(pattern: str, num_images: int, stats: statistics.DatasetStatistics) -> tf.data.Dataset:
    """Read, parse, decode the central square and resize it to 256 in uint8 (one pixel kept).

    The least any training view of these records must do (no crop, draws, shuffling or copies):
    from originals the resize is most of the gap between this and decoding alone.
    """
    del num_images, stats
    config = get_config("paper")
    files = tf.data.Dataset.list_files(pattern, shuffle=False).repeat()
    dataset = files.interleave(
        tf.data.TFRecordDataset, cycle_length=data.CYCLE_LENGTH, num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=False,
    )
    dataset = dataset.map(
        lambda r: (preprocess.ten_crop_square(records.parse_example(r)["encoded"], config.image_size).square[0, 0], 0),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=False,
    )
    options = tf.data.Options()
    options.threading.max_intra_op_parallelism = 1
    return dataset.batch(FLAGS.batch_size).prefetch(tf.data.AUTOTUNE).with_options(options)


def _images_per_second(dataset: tf.data.Dataset, num_images: int) -> tuple[float, float]:
    """(images per wall-clock second, images per CPU second of this process).

    One warm-up pass, then ``FLAGS.passes`` passes' worth of images. On a machine shared with
    other work the CPU figure (work done per image) is the steadier of the two.
    """
    iterator = iter(dataset)
    seen = 0
    while seen < num_images:
        seen += int(next(iterator)[1].shape[0])
    seen, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while seen < FLAGS.passes * num_images:
        seen += int(next(iterator)[1].shape[0])
    return seen / (time.perf_counter() - start), seen / (time.process_time() - cpu_start)


def _bytes_per_image(dataset: tf.data.Dataset) -> int:
    """Bytes per image of a batched dataset's elements (images, extras and label): what leaves the host."""
    return int(sum(spec.dtype.size * np.prod(spec.shape[1:]) for spec in tf.nest.flatten(dataset.element_spec)))


def _training_view(pattern: str, num_images: int, stats: statistics.DatasetStatistics) -> tf.data.Dataset:
    config = get_config("paper", batch_size=FLAGS.batch_size, shuffle_buffer=num_images)
    return data.make_dataset(pattern, True, config, stats=stats)


def _measure(pattern: str, num_images: int, stats: statistics.DatasetStatistics) -> dict[str, float]:
    """Medians over ``FLAGS.rounds`` alternating rounds, and the median of the rounds' CPU ratios."""
    rounds: dict[str, list[float]] = {name: [] for name in ("decode", "decode_cpu", "train", "train_cpu", "square_cpu")}
    ratios = []
    for _ in range(FLAGS.rounds):
        decode, decode_cpu = _images_per_second(_decode_only(pattern, FLAGS.batch_size).repeat(), num_images)
        train, train_cpu = _images_per_second(_training_view(pattern, num_images, stats), num_images)
        _, square_cpu = _images_per_second(_square_only(pattern, num_images, stats), num_images)
        for name, value in zip(rounds, (decode, decode_cpu, train, train_cpu, square_cpu), strict=True):
            rounds[name].append(value)
        ratios.append(train_cpu / decode_cpu)
    figures = {name: float(np.median(values)) for name, values in rounds.items()}
    figures["ratio_cpu_rounds"] = [round(r, 3) for r in ratios]
    return figures


def main(argv: list[str]) -> None:
    del argv
    work_dir = FLAGS.work_dir or tempfile.mkdtemp(prefix="pipeline_benchmark_")
    sets = {"original": None, "resized": 256}
    patterns, num_images = {}, 0
    for name, resize in sets.items():
        output = os.path.join(work_dir, name)
        summary = converter.convert(
            train_directory=FLAGS.source,
            output_directory=output,
            train_shards=FLAGS.num_shards,
            resize=resize,
        )
        num_images = summary["written"]
        patterns[name] = data.file_pattern(output, "train")
    # The statistics of the original set, with its mean image: the paper's default subtraction.
    stats = statistics.load_statistics(os.path.dirname(patterns["original"]))
    results = {}
    for name, pattern in patterns.items():
        results[name] = _measure(pattern, num_images, stats)
        logging.info("%s: %s", name, results[name])
        print(
            f"{name:>9}: decode-only {results[name]['decode']:6.0f} images/s "
            f"({results[name]['decode_cpu']:5.0f} per CPU-s), training pipeline "
            f"{results[name]['train']:6.0f} images/s ({results[name]['train_cpu']:5.0f} per CPU-s), "
            f"central square resized to 256 only {results[name]['square_cpu']:5.0f} per CPU-s"
        )
    cores = _cores()
    training_view = _training_view(patterns["original"], num_images, stats)
    labels_bytes = _bytes_per_image(training_view.map(lambda features, labels: labels))
    bytes_per_image = _bytes_per_image(training_view)
    shapes = tf.nest.map_structure(lambda spec: f"{spec.dtype.name}{spec.shape[1:]}", training_view.element_spec)
    print(f"bytes per training image leaving the host: {bytes_per_image:,} ({shapes})")
    figures = {
        "bytes_per_training_image": bytes_per_image,
        "bytes_per_training_image_without_label": bytes_per_image - labels_bytes,
        "train_vs_decode": round(results["original"]["train"] / results["original"]["decode"], 3),
        "train_vs_decode_resized": round(results["resized"]["train"] / results["resized"]["decode"], 3),
        "resized_vs_original": round(results["resized"]["train"] / results["original"]["train"], 3),
        "images_per_second_per_core": {
            f"{kind}_{name}": round(results[name][kind] / cores, 1)
            for name in sets
            for kind in ("decode", "train")
        },
        # The same ratios from CPU time (images per CPU-second), steadier on a shared machine.
        "train_vs_decode_cpu": round(results["original"]["train_cpu"] / results["original"]["decode_cpu"], 3),
        "train_vs_decode_resized_cpu": round(
            results["resized"]["train_cpu"] / results["resized"]["decode_cpu"], 3
        ),
        "resized_vs_original_cpu": round(
            results["resized"]["train_cpu"] / results["original"]["train_cpu"], 3
        ),
        "images_per_cpu_second": {
            f"{kind}_{name}": round(results[name][f"{kind}_cpu"], 1)
            for name in sets
            for kind in ("decode", "train")
        },
        # Each round's training-view / decode-only CPU figure: the spread of the ratios above.
        "train_vs_decode_cpu_rounds": {name: results[name]["ratio_cpu_rounds"] for name in sets},
        # The central square decoded and resized to 256, nothing else, over decode-only: the
        # ceiling of any training view that resizes (from originals, the area resize's cost).
        "square_resize_vs_decode_cpu": {
            name: round(results[name]["square_cpu"] / results[name]["decode_cpu"], 3) for name in sets
        },
        "rounds": FLAGS.rounds,
        "cores": cores,
        "num_images": num_images,
        "batch_size": FLAGS.batch_size,
        "peak_memory_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "mean_subtraction": "image" if stats.mean_image is not None else "channel",
        "tensorflow": tf.__version__,
        "numpy": np.__version__,
    }
    harness.print_figures(figures, sort_keys=True)


if __name__ == "__main__":
    harness.run(main)
