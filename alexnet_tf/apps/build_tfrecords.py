"""ImageNet-style JPEG folders -> sharded TFRecords, dataset statistics, manifest and summary.

``python data_prep/build_tfrecords.py`` and the installed ``alexnet-build-tfrecords`` take the same flags.

  python data_prep/build_tfrecords.py \\
    --train_directory=/data/imagenet/train --validation_directory=/data/imagenet/val \\
    --validation_labels_file=imagenet_2012_validation_synset_labels.txt \\
    --output_directory=/data/imagenet/tfrecords --resize=256

Re-running the same command resumes: shards whose manifest record verifies are kept. The exit
status is 1 when more files were rejected than --max_rejects (see rejects.txt), 2 for bad flags or
inputs, 3 when --verify finds a problem (alexnet_tf/cli.py). See alexnet_tf/converter/ for the details.
"""

from __future__ import annotations

import os

from alexnet_tf import console

console.quiet_tensorflow()  # before anything imports TensorFlow

from absl import app, flags, logging  # noqa: E402

from alexnet_tf import cli, converter, imagenette, paths  # noqa: E402

flags.DEFINE_enum("dataset", "imagenet", ["imagenet", "imagenette"], "imagenette: download and convert it.")
flags.DEFINE_string("train_directory", None, "Training images in <wnid>/ folders.")
flags.DEFINE_string("validation_directory", None, "Validation images, flat or in <wnid>/ folders.")
flags.DEFINE_string("validation_labels_file", None, "Line N = wnid of validation image N (flat layout).")
flags.DEFINE_string("output_directory", None, "Where the shards and the other outputs go (local or gs://...).")
flags.DEFINE_integer("train_shards", 1024, "Number of training shards.")
flags.DEFINE_integer("validation_shards", 128, "Number of validation shards.")
flags.DEFINE_integer("num_workers", os.cpu_count() or 1, "Worker processes.")
flags.DEFINE_string("labels_file", None, "Class wnids in label order (default: the 1000 ILSVRC-2012 classes).")
flags.DEFINE_string("imagenet_metadata_file", None, "wnid<TAB>name lines (default: shipped ImageNet names).")
flags.DEFINE_integer("resize", 0, "Rescale the shorter side to this (the paper: 256); 0 keeps JPEG bytes.")
flags.DEFINE_enum("resize_mode", "crop", ["crop", "squash"], "With --resize: crop rescales the shorter side "
                  "(the paper); squash brings both sides to --resize, the aspect ratio not kept (Caffe's 256x256).")
flags.DEFINE_integer("jpeg_quality", converter.JPEG_QUALITY, "Quality of the JPEGs the converter encodes.")
flags.DEFINE_integer("max_rejects", 0, "Fail (exit 1) when more files than this are rejected.")
flags.DEFINE_integer("label_offset", 0, "Added to labels; 1 writes the classic converter's 1-based labels.")
flags.DEFINE_integer("seed", 0, "Seed of the shuffle that mixes classes across shards (and of --holdout_per_class).")
flags.DEFINE_integer("holdout_per_class", 0, "Hold this many training images of every class out, as the selection "
                     "split (holdout-* shards) to choose settings on; the statistics exclude them. 0: none.")
flags.DEFINE_integer("num_tasks", 1, "Tasks of a job array sharing the work (each writes its own shards).")
flags.DEFINE_integer("task_index", 0, "This task's index in 0..num_tasks-1.")
flags.DEFINE_bool("merge", False, "Only merge the tasks' shard records into the manifest, checking completeness.")
flags.DEFINE_bool("verify", False, "Read every shard (CRCs, checksums, decodes, counts); alone or after converting.")
flags.DEFINE_string("download_directory", None, "imagenette: where the archive is kept (default: output_directory).")
flags.DEFINE_enum("imagenette_size", "160", ["160", "320"], "imagenette: the 160- or 320-pixel variant.")
flags.DEFINE_string("imagenette_url", None, "imagenette: a mirror of the official archive.")
flags.DEFINE_string("imagenette_sha256", None, "imagenette: the mirror's checksum (default: the official one).")
FLAGS = flags.FLAGS


def _convert() -> dict | None:
    options = dict(
        output_directory=FLAGS.output_directory,
        train_shards=FLAGS.train_shards,
        validation_shards=FLAGS.validation_shards,
        num_workers=FLAGS.num_workers,
        resize=FLAGS.resize or None,
        jpeg_quality=FLAGS.jpeg_quality,
        labels_file=FLAGS.labels_file,
        metadata_file=FLAGS.imagenet_metadata_file,
        max_rejects=FLAGS.max_rejects,
        label_offset=FLAGS.label_offset,
        seed=FLAGS.seed,
        num_tasks=FLAGS.num_tasks,
        task_index=FLAGS.task_index,
        holdout_per_class=FLAGS.holdout_per_class,
        resize_mode=FLAGS.resize_mode,
    )
    if FLAGS.dataset == "imagenette":
        # ~9,500 + 3,900 images: the ImageNet defaults would give shards of a few images, so
        # unless asked otherwise, Imagenette's own layout (the one train.py uses too).
        for flag in ("train_shards", "validation_shards"):
            if not FLAGS[flag].present:
                del options[flag]
        return imagenette.convert_imagenette(
            download_directory=FLAGS.download_directory,
            size=int(FLAGS.imagenette_size),
            url=FLAGS.imagenette_url,
            sha256=FLAGS.imagenette_sha256,
            **options,
        )
    if FLAGS.merge:
        summary = converter.merge_manifests(FLAGS.output_directory)
        logging.info("Merged every task's shards (%d records) into %s", summary["written"], FLAGS.output_directory)
        return summary
    if not (FLAGS.train_directory or FLAGS.validation_directory):
        return None
    return converter.convert(
        train_directory=FLAGS.train_directory,
        validation_directory=FLAGS.validation_directory,
        validation_labels_file=FLAGS.validation_labels_file,
        **options,
    )


def main(argv: list[str]) -> int:
    del argv
    if not FLAGS.output_directory:
        raise app.UsageError("--output_directory is required")
    try:
        paths.check_supported(FLAGS.output_directory, "--output_directory")
        summary = _convert()
        if summary is None and not FLAGS.verify:
            raise converter.ConversionError("pass --train_directory and/or --validation_directory (or --verify)")
        report = converter.verify(FLAGS.output_directory, FLAGS.num_workers) if FLAGS.verify else None
    except converter.ConversionError as e:
        return cli.usage_error(str(e))
    if summary is not None and not summary["ok"]:
        rejects = os.path.join(FLAGS.output_directory, converter.REJECTS_FILE)
        logging.error("%d files rejected (> --max_rejects=%d): see %s", summary["rejected"], FLAGS.max_rejects, rejects)
        return cli.FAILED
    if report is not None and not report["ok"]:
        return cli.VERIFY_FAILED
    return cli.OK


def run() -> None:
    """The command line: ``python data_prep/build_tfrecords.py``, ``alexnet-build-tfrecords``."""
    cli.run(main, usage=__doc__)


if __name__ == "__main__":
    run()
