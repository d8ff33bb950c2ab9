"""Seconds to the first batch of a deterministic resume, mid-epoch, local and in object storage.

    python benchmarks/resume.py [--copies=5] [--fractions=0,0.5,0.9] [--shuffle_buffer=1000]

With ``--deterministic`` a run resumed mid-epoch passes over the records the epoch has already
trained on, so that it sees exactly the batches an uninterrupted run would. The skip comes after
the file interleave and the record shuffle (they decide which records were used), so every
skipped record is read from storage, though not decoded. This script converts the real ImageNet
sample (1,000 original JPEGs, bytes kept) once, repeats its shards ``--copies`` times, and
times ``sources.record_inputs(...).train(...)`` to its first batch when resuming at each fraction of
an epoch, from the local disk and from ``ram://`` (TensorFlow's in-process file system, which
goes through the same layer as ``gs://``). Outside ``--deterministic`` a resume skips nothing.
The last line printed is one JSON object; it includes the seconds per skipped record and what
that gives for ImageNet's 1,281,167 training images at 90 % of an epoch.
"""

from __future__ import annotations

import pathlib
import shutil
import tempfile

import harness
from absl import flags

flags.DEFINE_string("sample_dir", str(harness.SHARED_DATA / "imagenet-sample" / "train"),
                    "ImageNet training JPEGs in <wnid>/ folders.")
flags.DEFINE_integer("copies", 5, "How many times the converted shards are repeated.")
flags.DEFINE_list("fractions", ["0", "0.5", "0.9"], "Where in the epoch the run resumes.")
flags.DEFINE_integer("shuffle_buffer", 1000, "The record shuffle buffer (the paper preset's is 10,000).")
flags.DEFINE_integer("repeats", 2, "Timings of each (storage, fraction); the fastest is kept.")
FLAGS = flags.FLAGS
IMAGENET_TRAIN_IMAGES = 1_281_167


def _first_batch_seconds(data_dir: str, config, skip_batches: int) -> float:
    import tensorflow as tf

    from alexnet_tf import sources

    inputs = sources.record_inputs(config, data_dir)
    with harness.timed() as clock:
        next(iter(inputs.train(tf.distribute.InputContext(), 0, skip_batches)))
    return clock.seconds


def main(argv: list[str]) -> None:
    del argv
    harness.setup()
    import tensorflow as tf

    from alexnet_tf import converter
    from alexnet_tf.config import get_config

    with tempfile.TemporaryDirectory() as tmp:
        records = pathlib.Path(tmp) / "records"
        sample = pathlib.Path(FLAGS.sample_dir).parent
        labels = sample.parent / "metadata" / "imagenet_2012_validation_synset_labels.txt"
        converter.convert(train_directory=FLAGS.sample_dir, validation_directory=str(sample / "val"),
                          validation_labels_file=str(labels), output_directory=str(records), train_shards=8,
                          validation_shards=1, num_workers=2)
        shards = sorted(records.glob("train-*"))
        total_shards = len(shards) * FLAGS.copies
        for copy in range(1, FLAGS.copies):  # the same records again, under new shard names
            for i, shard in enumerate(shards):
                shutil.copy(shard, records / f"train-{copy * len(shards) + i:05d}-of-{total_shards:05d}")
        num_records = sum(1 for _ in tf.data.TFRecordDataset([str(p) for p in sorted(records.glob("train-*"))]))
        size = sum(p.stat().st_size for p in records.glob("train-*"))
        remote = "ram://resume-benchmark/records"
        tf.io.gfile.makedirs(remote)
        for path in records.iterdir():
            if path.is_file():
                tf.io.gfile.copy(str(path), f"{remote}/{path.name}", overwrite=True)
        config = get_config("paper", deterministic=True, shuffle_buffer=FLAGS.shuffle_buffer, image_size=256,
                            steps_per_epoch=num_records // 128)
        steps = config.steps_per_epoch
        figures: dict[str, dict[str, float]] = {}
        for storage, data_dir in (("local", str(records)), ("ram", remote)):
            for fraction in (float(f) for f in FLAGS.fractions):
                skip = int(fraction * steps)
                seconds = min(_first_batch_seconds(data_dir, config, skip) for _ in range(FLAGS.repeats))
                figures.setdefault(storage, {})[str(fraction)] = round(seconds, 3)
                print(f"{storage:>5}: resumed at {fraction:.0%} of an epoch ({skip} of {steps} batches skipped): "
                      f"{seconds:.2f} s to the first batch")
    fractions = sorted(float(f) for f in FLAGS.fractions)
    low, high = fractions[0], fractions[-1]
    per_record = {storage: (values[str(high)] - values[str(low)]) / ((high - low) * steps * 128)
                  for storage, values in figures.items()}
    harness.print_figures({"records": num_records, "shuffle_buffer": FLAGS.shuffle_buffer, "shard_bytes": size,
                           "first_batch_seconds": figures,
                           "seconds_per_skipped_record": {k: round(v, 7) for k, v in per_record.items()},
                           "imagenet_90_percent_seconds_estimate": {
                               k: round(v * 0.9 * IMAGENET_TRAIN_IMAGES) for k, v in per_record.items()}})


if __name__ == "__main__":
    harness.run(main)
