"""alexnet_tf/records.py: the record schema both sides use, and the data directory's file names."""

from __future__ import annotations

import fnmatch

import numpy as np
import pytest
import tensorflow as tf

from alexnet_tf import records
from tests.support.converted import ASSORTED, read_records

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


def _serialize_with_tensorflow(feature: dict[str, tuple[str, list]]) -> bytes:
    """The reference: TensorFlow's own Example, serialized as the converter did before."""
    kinds = {
        "bytes": lambda v: tf.train.Feature(bytes_list=tf.train.BytesList(value=v)),
        "int64": lambda v: tf.train.Feature(int64_list=tf.train.Int64List(value=v)),
        "floats": lambda v: tf.train.Feature(float_list=tf.train.FloatList(value=v)),
    }
    features = {key: kinds[kind](values) for key, (kind, values) in feature.items()}
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString(deterministic=True)


@pytest.mark.parametrize(
    "feature",
    [
        {"image/encoded": ("bytes", [ENCODED]), "image/height": ("int64", [5])},
        # Empty lists and an empty key, negative and extreme int64s, float32 rounding and infinity.
        {"": ("bytes", []), "a": ("int64", []), "b": ("floats", []), "c": ("bytes", [b""])},
        {"i": ("int64", [0, 1, -1, 127, 128, 300, 2**63 - 1, -(2**63)]), "f": ("floats", [0.1, -2.5, 1e-30, np.inf])},
        # Keys in UTF-8 order (not insertion order); a value longer than 2**14 bytes (3-byte lengths).
        {"z": ("bytes", [b"x" * 70_000, b"y"]), "é": ("int64", [3]), "A": ("bytes", ["café".encode()])},
        # A key that begins another comes after it, as protobuf's own encoder orders them.
        {"a": ("int64", [1]), "ab": ("int64", [2]), "a\x00": ("int64", [3]), "b": ("int64", [4])},
    ],
)
def test_the_hand_written_encoder_equals_tensorflows_deterministic_bytes(feature):
    encoders = {"bytes": records._bytes, "int64": records._int64, "floats": records._floats}
    encoded = records.encode_example({key: encoders[kind](values) for key, (kind, values) in feature.items()})
    assert encoded == _serialize_with_tensorflow(feature)


def test_serialize_example_equals_tensorflows_bytes_for_the_schema():
    boxes = [(0.1, 0.2, 0.5, 0.6), (0.0, 0.0, 1.0, 1.0)]
    for label, bboxes in ((42, None), (0, boxes), (-1, None), (999, [])):
        expected = {
            records.IMAGE_KEY: ("bytes", [ENCODED]),
            records.HEIGHT_KEY: ("int64", [5]),
            records.WIDTH_KEY: ("int64", [7]),
            records.COLORSPACE_KEY: ("bytes", [b"RGB"]),
            records.CHANNELS_KEY: ("int64", [3]),
            records.FORMAT_KEY: ("bytes", [b"JPEG"]),
            records.FILENAME_KEY: ("bytes", ["café 1.JPEG".encode()]),
            records.LABEL_KEY: ("int64", [label]),
            records.SYNSET_KEY: ("bytes", [b"n01440764"]),
            records.TEXT_KEY: ("bytes", [b"tench, Tinca tinca"]),
        }
        for i, key in enumerate(records.BBOX_KEYS if bboxes else ()):
            expected[key] = ("floats", [box[i] for box in bboxes])
        assert _example(label=label, bboxes=bboxes) == _serialize_with_tensorflow(expected), (label, bboxes)
    with pytest.raises(ValueError, match="out of range"):
        _example(label=2**63)


def test_framed_records_equal_tfrecordwriters_file(tmp_path):
    payloads = [b"", b"a", _example(), bytes(range(256)) * 300]
    with tf.io.TFRecordWriter(str(tmp_path / "tf")) as writer:
        for payload in payloads:
            writer.write(payload)
    ours = b"".join(chunk for payload in payloads for chunk in records.frame_record(payload))
    assert ours == (tmp_path / "tf").read_bytes()
    assert list(tf.data.TFRecordDataset(str(tmp_path / "tf")).as_numpy_iterator()) == payloads
