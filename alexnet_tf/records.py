"""The TFRecord schema and the data directory's file names, defined once for both sides.

The converter writes with these names and keys; the input pipeline, the statistics, the
evaluation and the trainer read with them, so the two sides cannot drift.

The keys are those of the classic TensorFlow models ImageNet converter, so readers written for
its shards read ours too. Labels are 0-based here; the classic converter wrote 1-based labels,
which ``parse_example(..., label_offset=1)`` maps back.
"""

from __future__ import annotations

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


def shard_glob(prefix: str) -> str:
    """A glob matching exactly the names ``shard_name`` gives, not temporary files beside them."""
    digits = "[0-9]" * 5
    return f"{prefix}-{digits}-of-{digits}"


def _bytes(values: list[bytes]) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def _int64(values: list[int]) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def _floats(values: list[float]) -> tf.train.Feature:
    return tf.train.Feature(float_list=tf.train.FloatList(value=values))


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
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    # The feature map's order otherwise differs from process to process.
    return example.SerializeToString(deterministic=True)


_FEATURES = {
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
    return _features(tf.io.parse_single_example(serialized, _FEATURES), label_offset)


def parse_examples(serialized: tf.Tensor, label_offset: int = 0) -> dict[str, tf.Tensor]:
    """``parse_example`` for a vector of serialized examples at once: one op, each value [N]."""
    return _features(tf.io.parse_example(serialized, _FEATURES), label_offset)


def _features(parsed: dict[str, tf.Tensor], label_offset: int) -> dict[str, tf.Tensor]:
    return {
        "encoded": parsed[IMAGE_KEY],
        "label": tf.cast(parsed[LABEL_KEY], tf.int32) - label_offset,
        "height": tf.cast(parsed[HEIGHT_KEY], tf.int32),
        "width": tf.cast(parsed[WIDTH_KEY], tf.int32),
        "filename": parsed[FILENAME_KEY],
        "synset": parsed[SYNSET_KEY],
    }
