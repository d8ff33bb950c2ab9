"""converter/shards.py: one shard written with its record, kept when intact, redone when not."""

from __future__ import annotations

import pathlib

import tensorflow as tf

from alexnet_tf import converter
from alexnet_tf.converter.shards import ShardItem, ShardJob, ShardPart, convert_shard, fingerprint
from tests.support import converter_helpers as h


def test_resume_skips_verified_shards_and_redoes_damaged_ones(tmp_path):
    train = h.odd_dataset(tmp_path)
    options = dict(train_directory=str(train), train_shards=3, num_workers=1, max_rejects=10)
    out = tmp_path / "out"
    converter.convert(output_directory=str(out), **options)
    reference = h.shards(out)
    (out / "train-00000-of-00003").unlink()
    damaged = out / "train-00001-of-00003"
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"\x00")  # same size, different checksum
    summary = converter.convert(output_directory=str(out), **options)
    assert (summary["converted_shards"], summary["skipped_shards"]) == (2, 1)
    assert h.shards(out) == reference and summary["ok"]
    # Different options change every shard's fingerprint: nothing is skipped.
    summary = converter.convert(output_directory=str(out), resize=256, **options)
    assert summary["skipped_shards"] == 0


def _job(tmp_path, items, texts=None) -> ShardJob:
    parts = tmp_path / converter.PARTS_DIRECTORY
    parts.mkdir(parents=True, exist_ok=True)
    texts = texts or {"n01440764": "tench"}
    return ShardJob(
        split="train",
        name="train-00000-of-00001",
        output_directory=str(tmp_path),
        parts_directory=str(parts),
        fingerprint=fingerprint({"seed": 0}, "train-00000-of-00001", items, texts),
        items=tuple(items),
        texts=texts,
        resize=None,
        jpeg_quality=converter.JPEG_QUALITY,
        with_statistics=True,
    )


def test_one_shard_counts_every_file_and_records_what_it_did(tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    names = ["rgb.JPEG", "gray.jpg", "empty.JPEG", "png_inside.JPEG"]
    items = []
    for name in names:
        (source / name).write_bytes(h.ODD_FILES[name][0]())
        items.append(ShardItem(str(source / name), f"n01440764/{name}", (source / name).stat().st_size, 0, "n01440764"))
    items.append(ShardItem(str(source / "gone.JPEG"), "n01440764/gone.JPEG", 10, 0, "n01440764"))
    out = tmp_path / "out"
    job = _job(out, items)
    counted = []
    result = convert_shard(job, counted.append)
    assert not result.skipped and sum(counted) == len(items)  # rejects count towards the total too
    part = result.part
    assert (part.files, part.records, part.rejected) == (5, 3, 2)
    assert part.kinds == {"jpeg": 1, "jpeg_grayscale": 1, "png": 1} and part.misnamed == 1
    assert sorted(reason.split(":")[0] for _, reason in part.rejects) == ["empty file (0 bytes)", "unreadable"]
    assert part.sha256 == converter.sha256_file(job.path) and part.bytes == (out / job.name).stat().st_size
    assert ShardPart.load(job.part_path) == part
    assert len(list(converter.iterate_records([job.path]))) == 3
    # Run again: the shard is found intact and kept, every file still counted once.
    counted.clear()
    again = convert_shard(job, counted.append)
    assert again.skipped and again.part == part and sum(counted) == len(items)
    # Another class name is another fingerprint: the shard is written again.
    renamed = _job(out, items, {"n01440764": "tinca"})
    assert renamed.fingerprint != job.fingerprint
    assert not convert_shard(renamed, counted.append).skipped


def _serialize_as_before(encoded: bytes, height: int, width: int, label: int, synset: bytes, text: bytes,
                         filename: bytes) -> bytes:
    """An example as the converter made it before it wrote without TensorFlow: tf.train.Example."""
    def bytes_feature(value: bytes) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def int64_feature(value: int) -> tf.train.Feature:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

    feature = {
        "image/encoded": bytes_feature(encoded),
        "image/height": int64_feature(height),
        "image/width": int64_feature(width),
        "image/colorspace": bytes_feature(b"RGB"),
        "image/channels": int64_feature(3),
        "image/format": bytes_feature(b"JPEG"),
        "image/filename": bytes_feature(filename),
        "image/class/label": int64_feature(label),
        "image/class/synset": bytes_feature(synset),
        "image/class/text": bytes_feature(text),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)


def _assert_shards_equal_tensorflows(train: pathlib.Path, out: pathlib.Path, tmp_path: pathlib.Path) -> int:
    """Writes every shard again, record by record, with TensorFlow's serializer and TFRecordWriter
    from the source files (each decoded and repaired again), and compares the files' bytes."""
    shards = h.shards(out)
    assert shards
    records_seen = 0
    for name, data in shards.items():
        with tf.io.TFRecordWriter(str(tmp_path / name)) as writer:
            for example in converter.iterate_records([str(out / name)]):
                synset, filename = h.feature(example, "image/class/synset"), h.feature(example, "image/filename")
                source = (train / synset.decode() / filename.decode()).read_bytes()
                image = converter.convert_image(source)
                text = example.features.feature["image/class/text"].bytes_list.value[0]
                label = h.feature(example, "image/class/label")
                writer.write(_serialize_as_before(image.encoded, image.height, image.width, label, synset, text,
                                                  filename))
                records_seen += 1
        assert (tmp_path / name).read_bytes() == data, name
    return records_seen


def test_shards_are_byte_identical_to_tensorflows_writer(tmp_path):
    """Odd files of every kind, two workers: the shards TensorFlow would have written, byte for byte."""
    train = h.odd_dataset(tmp_path)
    out = tmp_path / "out"
    summary = converter.convert(train_directory=str(train), output_directory=str(out), train_shards=3, num_workers=2,
                                max_rejects=10)
    reference = tmp_path / "reference"
    reference.mkdir()
    assert _assert_shards_equal_tensorflows(train, out, reference) == summary["written"] == 14


def test_real_sample_shards_are_byte_identical_to_tensorflows_writer(shared_data, tmp_path):
    train = h.sample_subset(shared_data, tmp_path)
    out = tmp_path / "out"
    summary = converter.convert(train_directory=str(train), output_directory=str(out), train_shards=4, num_workers=2)
    reference = tmp_path / "reference"
    reference.mkdir()
    assert _assert_shards_equal_tensorflows(train, out, reference) == summary["written"] == h.SAMPLE_CLASSES
