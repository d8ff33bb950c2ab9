"""The TFRecord schema and the data directory's file names, defined once for both sides.

The converter writes with these names and keys; the input pipeline, the statistics, the
evaluation and the trainer read with them, so the two sides cannot drift.

The keys are those of the classic TensorFlow models ImageNet converter, so readers written for
its shards read ours too. Labels are 0-based here; the classic converter wrote 1-based labels,
which ``parse_example(..., label_offset=1)`` maps back.

Writing needs no TensorFlow (the converter's worker processes do without it): examples are
encoded and framed as TFRecords here, byte for byte as TensorFlow would; reading imports it.
"""

from __future__ import annotations

import functools
import struct
from typing import TYPE_CHECKING, Any

import google_crc32c

if TYPE_CHECKING:
    import tensorflow as tf

IMAGE_KEY = "image/encoded"
HEIGHT_KEY = "image/height"
WIDTH_KEY = "image/width"
COLORSPACE_KEY = "image/colorspace"
CHANNELS_KEY = "image/channels"
FORMAT_KEY = "image/format"
FILENAME_KEY = "image/filename"
LABEL_KEY = "image/class/label"
SYNSET_KEY = "image/class/synset"
TEXT_KEY = "image/class/text"
BBOX_KEYS = (
    "image/object/bbox/xmin",
    "image/object/bbox/ymin",
    "image/object/bbox/xmax",
    "image/object/bbox/ymax",
)

TRAIN_PREFIX = "train"
VALIDATION_PREFIX = "validation"
# The selection split: training images held out (converter --holdout_per_class) to choose settings on.
HOLDOUT_PREFIX = "holdout"

# The files the converter writes beside the shards.
MANIFEST_FILE = "manifest.json"  # every shard: name, record count, bytes, sha256
SUMMARY_FILE = "summary.json"  # what the conversion found, wrote and rejected
REJECTS_FILE = "rejects.txt"  # split<TAB>path<TAB>reason for every file left out
SYNSETS_FILE = "synsets.txt"  # class wnids in label order, one per line
METADATA_FILE = "metadata.txt"  # wnid<TAB>human-readable name, in label order
STATISTICS_FILE = "statistics.json"  # the training set's mean and RGB PCA
MEAN_IMAGE_FILE = "mean_image.npy"  # the training set's mean image


def shard_name(prefix: str, index: int, num_shards: int) -> str:
    """The file name of shard ``index`` of ``num_shards``, e.g. ``train-00003-of-01024``."""
    return f"{prefix}-{index:05d}-of-{num_shards:05d}"


def records_directory_name(name: str, holdout_per_class: int = 0, resize_mode: str = "crop") -> str:
    """The folder ``train.py`` converts a data set into: ``name``, ``name_squash`` for images squashed
    (the converter's ``--resize_mode=squash``), then ``_holdout<N>`` with a selection split.

    A conversion with another selection split or resize mode holds other shards: it goes elsewhere,
    so the two never mix in one folder.
    """
    name = f"{name}_{resize_mode}" if resize_mode != "crop" else name
    return f"{name}_holdout{holdout_per_class}" if holdout_per_class else name


def shard_glob(prefix: str) -> str:
    """A glob matching exactly the names ``shard_name`` gives, not temporary files beside them."""
    digits = "[0-9]" * 5
    return f"{prefix}-{digits}-of-{digits}"


# Field numbers of tensorflow/core/example/{example,feature}.proto.
_EXAMPLE_FEATURES = 1  # Example.features
_FEATURES_MAP = 1  # Features.feature, a map<string, Feature> of entries:
_ENTRY_KEY, _ENTRY_VALUE = 1, 2
_BYTES_LIST, _FLOAT_LIST, _INT64_LIST = 1, 2, 3  # Feature's oneof
_LIST_VALUE = 1  # BytesList.value, FloatList.value (packed), Int64List.value (packed)
_LENGTH_DELIMITED = 2  # the wire type of strings, messages and packed lists
_INT64_RANGE = range(-(2**63), 2**63)
_CRC_MASK_DELTA = 0xA282EAD8  # TFRecord's masked CRC-32C, tensorflow/core/lib/hash/crc32c.h


_ONE_BYTE_VARINTS = tuple(bytes((value,)) for value in range(0x80))  # field tags, short lengths


def _varint(value: int) -> bytes:
    if 0 <= value < 0x80:
        return _ONE_BYTE_VARINTS[value]
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _delimited(number: int, chunks: list[bytes]) -> list[bytes]:
    """Field ``number`` holding the concatenation of ``chunks`` (not copied: joined once, at the end)."""
    return [_varint(number << 3 | _LENGTH_DELIMITED), _varint(sum(map(len, chunks))), *chunks]


def _bytes(values: list[bytes]) -> list[bytes]:
    return _delimited(_BYTES_LIST, [chunk for value in values for chunk in _delimited(_LIST_VALUE, [value])])


def _int64(values: list[int]) -> list[bytes]:
    if any(value not in _INT64_RANGE for value in values):
        raise ValueError(f"int64 feature values out of range: {values}")
    # Negative values are their two's complement, ten bytes long, as protobuf encodes them.
    packed = b"".join(_varint(value & 0xFFFFFFFFFFFFFFFF) for value in values)
    return _delimited(_INT64_LIST, _delimited(_LIST_VALUE, [packed]) if values else [])


def _floats(values: list[float]) -> list[bytes]:
    packed = struct.pack(f"<{len(values)}f", *values)  # float32, little-endian, as protobuf stores them
    return _delimited(_FLOAT_LIST, _delimited(_LIST_VALUE, [packed]) if values else [])


def encode_example(feature: dict[str, list[bytes]]) -> bytes:
    """A ``tf.train.Example`` of the encoded features (``_bytes``, ``_int64``, ``_floats``).

    The bytes are those of ``SerializeToString(deterministic=True)``: the feature map's entries in
    key order (see ``_map_order``), each entry its key then its value. Written by hand because TensorFlow's
    ``example_pb2`` imports all of TensorFlow, which the converter's workers do without.
    """
    entries: list[bytes] = []
    for key in _key_order(tuple(feature)):
        entry = [_entry_key(key), *_delimited(_ENTRY_VALUE, feature[key])]
        entries.extend(_delimited(_FEATURES_MAP, entry))
    return b"".join(_delimited(_EXAMPLE_FEATURES, entries))


def _map_order(key: str) -> list[int]:
    # protobuf's deterministic order of string keys: bytewise, a key after the longer keys it
    # begins (upb's rule; no key of the schema begins another, where every implementation agrees).
    return [*key.encode("utf-8"), 256]


@functools.lru_cache(maxsize=64)
def _key_order(keys: tuple[str, ...]) -> tuple[str, ...]:
    """``keys`` in the map's order; every record of a data set has the same keys, sorted once."""
    return tuple(sorted(keys, key=_map_order))


@functools.lru_cache(maxsize=256)
def _entry_key(key: str) -> bytes:
    """A map entry's key field, encoded once per key name."""
    return b"".join(_delimited(_ENTRY_KEY, [key.encode("utf-8")]))


def _masked_crc32c(data: bytes) -> bytes:
    crc = google_crc32c.value(data)
    return struct.pack("<I", ((crc >> 15 | crc << 17) + _CRC_MASK_DELTA) & 0xFFFFFFFF)


def frame_record(data: bytes) -> list[bytes]:
    """One record of a TFRecord file: length, its masked CRC-32C, ``data``, its masked CRC-32C.

    The chunks, written in order, are what ``tf.io.TFRecordWriter`` writes for ``data`` (without
    compression): the header (length and its CRC), ``data`` itself (not copied), the footer.
    """
    length = struct.pack("<Q", len(data))
    return [length + _masked_crc32c(length), data, _masked_crc32c(data)]


def serialize_example(
    encoded: bytes,
    height: int,
    width: int,
    label: int,
    synset: str,
    text: str,
    filename: str,
    bboxes: list[tuple[float, float, float, float]] | None = None,
) -> bytes:
    """One image as a serialized ``tf.train.Example``, byte-identical across processes.

    The bytes equal ``tf.train.Example(...).SerializeToString(deterministic=True)`` for the same
    features; no TensorFlow is imported to make them.

    Args:
      encoded: RGB JPEG bytes.
      height, width: the pixel size of ``encoded``.
      label: the class index as stored (the converter applies ``--label_offset`` before this).
      synset: the class wnid, e.g. ``n01440764``.
      text: the human-readable class name.
      filename: the source file's base name.
      bboxes: optional (xmin, ymin, xmax, ymax) boxes, relative to the image size.
    """
    feature = {
        IMAGE_KEY: _bytes([encoded]),
        HEIGHT_KEY: _int64([height]),
        WIDTH_KEY: _int64([width]),
        COLORSPACE_KEY: _bytes([b"RGB"]),
        CHANNELS_KEY: _int64([3]),
        FORMAT_KEY: _bytes([b"JPEG"]),
        FILENAME_KEY: _bytes([filename.encode("utf-8")]),
        LABEL_KEY: _int64([label]),
        SYNSET_KEY: _bytes([synset.encode("utf-8")]),
        TEXT_KEY: _bytes([text.encode("utf-8")]),
    }
    if bboxes:
        for i, key in enumerate(BBOX_KEYS):
            feature[key] = _floats([box[i] for box in bboxes])
    return encode_example(feature)


@functools.cache
def _feature_spec() -> dict[str, Any]:
    import tensorflow as tf  # the readers' side; the writers' side above does without it

    return {
        IMAGE_KEY: tf.io.FixedLenFeature([], tf.string),
        LABEL_KEY: tf.io.FixedLenFeature([], tf.int64),
        HEIGHT_KEY: tf.io.FixedLenFeature([], tf.int64, default_value=0),
        WIDTH_KEY: tf.io.FixedLenFeature([], tf.int64, default_value=0),
        FILENAME_KEY: tf.io.FixedLenFeature([], tf.string, default_value=""),
        SYNSET_KEY: tf.io.FixedLenFeature([], tf.string, default_value=""),
    }


def parse_example(serialized: tf.Tensor, label_offset: int = 0) -> dict[str, tf.Tensor]:
    """Parses one serialized example (no decoding).

    Args:
      serialized: a scalar string tensor.
      label_offset: subtracted from the stored label; 1 for shards with 1-based labels.

    Returns:
      ``{"encoded", "label" (int32, 0-based), "height", "width", "filename", "synset"}``.
    """
    import tensorflow as tf

    return _features(tf.io.parse_single_example(serialized, _feature_spec()), label_offset)


def parse_examples(serialized: tf.Tensor, label_offset: int = 0) -> dict[str, tf.Tensor]:
    """``parse_example`` for a vector of serialized examples at once: one op, each value [N]."""
    import tensorflow as tf

    return _features(tf.io.parse_example(serialized, _feature_spec()), label_offset)


def _features(parsed: dict[str, tf.Tensor], label_offset: int) -> dict[str, tf.Tensor]:
    import tensorflow as tf

    return {
        "encoded": parsed[IMAGE_KEY],
        "label": tf.cast(parsed[LABEL_KEY], tf.int32) - label_offset,
        "height": tf.cast(parsed[HEIGHT_KEY], tf.int32),
        "width": tf.cast(parsed[WIDTH_KEY], tf.int32),
        "filename": parsed[FILENAME_KEY],
        "synset": parsed[SYNSET_KEY],
    }
