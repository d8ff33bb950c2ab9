"""alexnet_tf/records.py: the record schema both sides use, and the data directory's file names."""

from __future__ import annotations

import fnmatch

import numpy as np
import pytest
import tensorflow as tf
from converted import ASSORTED, read_records

from alexnet_tf import records

ENCODED = tf.io.encode_jpeg(np.full((5, 7, 3), 200, np.uint8)).numpy()


def _example(**overrides) -> bytes:
    arguments = dict(encoded=ENCODED, height=5, width=7, label=42, synset="n01440764", text="tench, Tinca tinca",
                     filename="café 1.JPEG")
    return records.serialize_example(**{**arguments, **overrides})


def test_round_trip_through_parse_example():
    parsed = records.parse_example(tf.constant(_example()))
    assert parsed["encoded"].numpy() == ENCODED
    assert parsed["label"].dtype == tf.int32 and int(parsed["label"]) == 42
    assert (int(parsed["height"]), int(parsed["width"])) == (5, 7)
    assert parsed["filename"].numpy().decode("utf-8") == "café 1.JPEG"
    assert parsed["synset"].numpy() == b"n01440764"
    # 1-based labels of the classic converter come back 0-based.
    assert int(records.parse_example(tf.constant(_example(label=1)), label_offset=1)["label"]) == 0


def test_the_classic_converters_keys_and_values():
    """Readers written for the classic TensorFlow ImageNet shards find what they expect."""
    example = tf.train.Example.FromString(_example(bboxes=[(0.1, 0.2, 0.5, 0.6), (0.0, 0.0, 1.0, 1.0)]))
    features = example.features.feature
    assert sorted(features) == sorted([
        "image/encoded", "image/height", "image/width", "image/colorspace", "image/channels", "image/format",
        "image/filename", "image/class/label", "image/class/synset", "image/class/text",
        "image/object/bbox/xmin", "image/object/bbox/ymin", "image/object/bbox/xmax", "image/object/bbox/ymax",
    ])
    assert features["image/colorspace"].bytes_list.value == [b"RGB"]
    assert features["image/format"].bytes_list.value == [b"JPEG"]
    assert features["image/channels"].int64_list.value == [3]
    assert features["image/class/text"].bytes_list.value == [b"tench, Tinca tinca"]
    # One list per coordinate, one entry per box.
    np.testing.assert_allclose(features["image/object/bbox/xmin"].float_list.value, [0.1, 0.0])
    np.testing.assert_allclose(features["image/object/bbox/ymax"].float_list.value, [0.6, 1.0])


def test_serialization_is_byte_identical_whatever_the_insertion_order():
    first = _example()
    assert _example() == first
    # The same features built in another order serialize to the same bytes (deterministic=True).
    parsed = tf.train.Example.FromString(first)
    reordered = tf.train.Example()
    for key in sorted(parsed.features.feature, reverse=True):
        reordered.features.feature[key].CopyFrom(parsed.features.feature[key])
    assert reordered.SerializeToString(deterministic=True) == first


def test_optional_fields_default_and_the_label_is_required():
    bare = tf.train.Example(features=tf.train.Features(feature={
        records.IMAGE_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[ENCODED])),
        records.LABEL_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[3])),
    })).SerializeToString()
    parsed = records.parse_example(tf.constant(bare))
    assert int(parsed["label"]) == 3 and int(parsed["height"]) == int(parsed["width"]) == 0
    assert parsed["filename"].numpy() == b"" and parsed["synset"].numpy() == b""
    unlabelled = tf.train.Example(features=tf.train.Features(feature={
        records.IMAGE_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[ENCODED])),
    })).SerializeToString()
    with pytest.raises(tf.errors.InvalidArgumentError, match="image/class/label"):
        records.parse_example(tf.constant(unlabelled))


def test_shard_names_and_the_glob_that_matches_only_them():
    assert records.shard_name("train", 3, 1024) == "train-00003-of-01024"
    assert records.shard_name(records.VALIDATION_PREFIX, 0, 1) == "validation-00000-of-00001"
    pattern = records.shard_glob("train")
    assert fnmatch.fnmatch(records.shard_name("train", 99999, 99999), pattern)
    for other in ("train-00003-of-01024.tmp-123", "validation-00000-of-00001", "train-3-of-1024", "train-00003"):
        assert not fnmatch.fnmatch(other, pattern), other


def test_the_converter_writes_every_file_named_here(converted):
    """The names readers look up are the names the converter wrote (one owner for both)."""
    data_dir = converted(ASSORTED)
    for name in (records.MANIFEST_FILE, records.SUMMARY_FILE, records.REJECTS_FILE, records.SYNSETS_FILE,
                 records.METADATA_FILE, records.STATISTICS_FILE, records.MEAN_IMAGE_FILE):
        assert (data_dir / name).is_file(), name
    shards = sorted(p.name for p in data_dir.glob(records.shard_glob(records.TRAIN_PREFIX)))
    assert shards == [records.shard_name("train", i, ASSORTED.train_shards) for i in range(ASSORTED.train_shards)]
    # Its records parse with this module's schema: labels, sizes and names as stored.
    serialized = next(iter(tf.data.TFRecordDataset(str(data_dir / shards[0]))))
    parsed = records.parse_example(serialized)
    first = read_records(data_dir, records.TRAIN_PREFIX)[0]
    assert int(parsed["label"]) == first.label and parsed["filename"].numpy().decode() == first.filename
    decoded = tf.io.decode_jpeg(parsed["encoded"])
    assert decoded.shape[:2] == (int(parsed["height"]), int(parsed["width"])) and decoded.shape[2] == 3
