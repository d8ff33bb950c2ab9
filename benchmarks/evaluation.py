"""Evaluation and serving cost of the full-size network (random weights) on CPU.

Prints what it measures, then one JSON object as its last line:

* ``ten_crop_vs_centre``: time of the 10-crop evaluation over the centre-crop one (goal <= 11),
  both through ``evaluation.predict_top_k`` (what ``evaluate`` runs) on real ILSVRC-2012 validation JPEGs of many sizes.
* ``latency_p50_ms`` / ``latency_p99_ms``: one JPEG per call through the loaded SavedModel's
  ``serving_default`` signature (decode, centre crop, network, top-5).
* ``images_per_second_batch32``: the same signature with 32 JPEGs per call.
* ``decode_share_batch1`` / ``decode_share_batch32``: the share of a call spent decoding and
  preprocessing (the in-graph preprocessing run alone, over the whole call).

  python benchmarks/evaluation.py [--shared_data=../shared/data] [--calls=200]
"""

from __future__ import annotations

import os
import pathlib
import tempfile
import time

import harness

harness.setup()  # before anything imports TensorFlow

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import flags  # noqa: E402

from alexnet_tf import device_preprocess, evaluation, export, imagenet, records  # noqa: E402
from alexnet_tf.config import get_config  # noqa: E402
from alexnet_tf.model import build_from_config  # noqa: E402
from alexnet_tf.statistics import imagenet_statistics  # noqa: E402

flags.DEFINE_string("shared_data", str(harness.SHARED_DATA),
                    "The real test data (imagenet-sample/val and metadata/).")
flags.DEFINE_integer("calls", 200, "Batch-1 serving calls timed (after warm-up).")
flags.DEFINE_integer("batch32_calls", 8, "Batch-32 serving calls timed (after warm-up).")
flags.DEFINE_integer("eval_batch_size", 40, "Centre-crop evaluation batch (10-crop uses a tenth).")
flags.DEFINE_integer("rounds", 3, "Alternating centre-crop and 10-crop evaluation rounds.")
flags.DEFINE_integer("copies", 1, "How many times the 100 validation images are written to the shard.")
FLAGS = flags.FLAGS
WARMUP = 5


def _validation_images(shared_data: pathlib.Path) -> list[tuple[bytes, int, str]]:
    """(JPEG bytes, label, file name) of the 100 real validation images in imagenet-sample/val."""
    wnids = imagenet.load_synsets()
    index = {w: i for i, w in enumerate(wnids)}
    labels = (shared_data / "metadata" / "imagenet_2012_validation_synset_labels.txt").read_text().split()
    items = []
    for path in sorted((shared_data / "imagenet-sample" / "val").glob("*.JPEG")):
        number = int(path.stem.rsplit("_", 1)[1])
        items.append((path.read_bytes(), index[labels[number - 1]], path.name))
    return items


def _write_shard(items, data_dir: str, copies: int) -> None:
    wnids, names = imagenet.load_synsets(), imagenet.class_names()
    with tf.io.TFRecordWriter(os.path.join(data_dir, records.shard_name(records.VALIDATION_PREFIX, 0, 1))) as writer:
        for _ in range(copies):
            for encoded, label, name in items:
                height, width, _ = tf.image.extract_jpeg_shape(encoded).numpy()
                writer.write(records.serialize_example(encoded, int(height), int(width), label, wnids[label],
                                                       names[label], name))
    imagenet_statistics().save(data_dir)


def _percentile_ms(seconds: list[float], q: float) -> float:
    return float(np.percentile(np.array(seconds) * 1000.0, q))


def _time_calls(function, batches, warmup: int = WARMUP) -> list[float]:
    for batch in batches[:warmup]:
        function(batch)
    times = []
    for batch in batches:
        start = time.perf_counter()
        out = function(batch)
        tf.nest.map_structure(lambda t: t.numpy(), out)
        times.append(time.perf_counter() - start)
    return times


def main(argv: list[str]) -> None:
    del argv
    tf.get_logger().setLevel("ERROR")
    shared_data = pathlib.Path(FLAGS.shared_data)
    items = _validation_images(shared_data)
    config = get_config("paper", mean_subtraction="channel", batch_size=FLAGS.eval_batch_size)
    stats = imagenet_statistics()
    model = build_from_config(config, seed=0)
    results: dict[str, float] = {}

    with tempfile.TemporaryDirectory() as work:
        _write_shard(items, work, FLAGS.copies)
        # The machine is shared: alternate the two views and keep each one's fastest round.
        seconds = {"center_crop": [], "ten_crop": []}
        for _ in range(FLAGS.rounds):
            for key, (dataset, is_ten_crop) in evaluation.view_datasets(config, work, stats).items():
                _, labels, elapsed = evaluation.predict_top_k(
                    evaluation.as_predictor(model), dataset, config.num_classes, is_ten_crop, progress=False,
                    finish=device_preprocess.DeviceFinish(config, stats))
                seconds[key].append(elapsed)
        num_images = len(labels)
        results["eval_images"] = num_images
        results["centre_images_per_second"] = round(num_images / min(seconds["center_crop"]), 1)
        results["ten_crop_images_per_second"] = round(num_images / min(seconds["ten_crop"]), 1)
        results["ten_crop_vs_centre"] = round(min(seconds["ten_crop"]) / min(seconds["center_crop"]), 2)
        print(f"evaluation over {num_images} images, best of {FLAGS.rounds} rounds: centre crop "
              f"{results['centre_images_per_second']} images/s, 10-crop {results['ten_crop_images_per_second']} "
              f"images/s, ratio {results['ten_crop_vs_centre']}")

        export_dir = export.export_saved_model(model, os.path.join(work, "export", "1"), config, stats,
                                               imagenet.load_synsets(), imagenet.class_names())
        assert not export.xla_must_compile_functions(export_dir)
        serve = tf.saved_model.load(export_dir).signatures[export.SERVING_SIGNATURE]
        encoded = [e for e, _, _ in items]

        def call(batch):
            return serve(image_bytes=batch)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def preprocess_only(batch):
            return tf.map_fn(lambda e: export.checked_preprocess(e, config, stats), batch,
                             fn_output_signature=tf.TensorSpec([config.input_size, config.input_size, 3]))

        singles = [tf.constant([encoded[i % len(encoded)]]) for i in range(FLAGS.calls)]
        batch1 = _time_calls(call, singles)
        batch1_decode = _time_calls(preprocess_only, singles)
        results["latency_p50_ms"] = round(_percentile_ms(batch1, 50), 2)
        results["latency_p99_ms"] = round(_percentile_ms(batch1, 99), 2)
        results["decode_share_batch1"] = round(float(np.median(batch1_decode) / np.median(batch1)), 3)
        print(f"serving_default, batch 1 ({FLAGS.calls} calls): p50 {results['latency_p50_ms']} ms, "
              f"p99 {results['latency_p99_ms']} ms, decode+preprocess p50 "
              f"{_percentile_ms(batch1_decode, 50):.2f} ms")

        batches = [tf.constant([encoded[(32 * b + i) % len(encoded)] for i in range(32)])
                   for b in range(FLAGS.batch32_calls)]
        batch32 = _time_calls(call, batches, warmup=2)
        batch32_decode = _time_calls(preprocess_only, batches, warmup=2)
        results["images_per_second_batch32"] = round(32 * len(batch32) / sum(batch32), 1)
        results["decode_share_batch32"] = round(sum(batch32_decode) / sum(batch32), 3)
        print(f"serving_default, batch 32 ({FLAGS.batch32_calls} calls): {results['images_per_second_batch32']} "
              f"images/s, decode+preprocess {32 * len(batch32_decode) / sum(batch32_decode):.1f} images/s alone")

        bare = tf.function(lambda x: model(x, training=False))
        inputs = [tf.random.normal([1, config.input_size, config.input_size, 3]) for _ in range(50)]
        results["bare_network_batch1_p50_ms"] = round(_percentile_ms(_time_calls(bare, inputs), 50), 2)
        print(f"bare network, batch 1: p50 {results['bare_network_batch1_p50_ms']} ms")
    harness.print_figures(results)


if __name__ == "__main__":
    harness.run(main)
