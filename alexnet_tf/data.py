"""The input pipeline (sections 2 and 4.1): the one place that orders the tf.data operations.

``make_dataset`` turns the converter's TFRecord shards into batches of uint8 crops (with the few
values per image the device needs to finish them: ``device_preprocess.DeviceFinish``) and 0-based
int32 labels; ``alexnet_tf.preprocess`` holds the image functions it maps. The data directory's
questions (its shards, its labels checked against the class list, its record counts) are
answered here too. ``sources.py`` builds what a run reads (``sources.Inputs``) from these
pipelines, arrays or random tensors.
"""
from __future__ import annotations

import os

import numpy as np
import tensorflow as tf
from absl import logging

from alexnet_tf import device_preprocess, imagenet, paths, preprocess, records, statistics
from alexnet_tf.config import Config, ConfigError
from alexnet_tf.records import SYNSETS_FILE
from alexnet_tf.statistics import DatasetStatistics

SPLIT_PREFIXES = {"train": records.TRAIN_PREFIX, "validation": records.VALIDATION_PREFIX,
                  "holdout": records.HOLDOUT_PREFIX}
CYCLE_LENGTH = 16  # shards read at once in training
READ_BUFFER_BYTES = 8 << 20  # per open shard
ACCOUNT_GROUP = 64  # records whose bytes are counted at once when reading a shard
DRAW_BLOCK = 1024  # training views whose random draws are made at once
PARSE_GROUP = 64  # records parsed by one op
# A TFRecord frames each record with a length (8 bytes) and two CRCs (4 bytes each).
RECORD_FRAMING_BYTES = 16
_SEED_PURPOSES = {"files": 1, "records": 2, "augment": 3}
LABEL_CHECK_RECORDS = 32  # per shard, from the first shards of a split: no decoding, a few KB read
LABEL_CHECK_SHARDS = 4


def file_pattern(data_dir: str, split: str) -> str:
    """The glob of a split's shards, ``<data_dir>/train-NNNNN-of-NNNNN`` (temporary files excluded).

    Raises:
      ValueError: for an unknown split.
      FileNotFoundError: naming the directory, when no shard matches.
    """
    if split not in SPLIT_PREFIXES:
        raise ValueError(f"unknown split {split!r}; choose one of {sorted(SPLIT_PREFIXES)}")
    pattern = os.path.join(paths.check_supported(data_dir, "--data_dir"), records.shard_glob(SPLIT_PREFIXES[split]))
    if not tf.io.gfile.glob(pattern):
        raise FileNotFoundError(
            f"no {split} shards ({os.path.basename(pattern)}) in {data_dir!r}: check --data_dir, "
            "or build the shards with the converter (data_prep/build_tfrecords.py)"
        )
    return pattern


def has_split(data_dir: str, split: str) -> bool:
    """Whether ``data_dir`` holds shards of ``split`` (e.g. the optional ``holdout`` split)."""
    return bool(tf.io.gfile.glob(os.path.join(data_dir, records.shard_glob(SPLIT_PREFIXES[split]))))


def check_labels(data_dir: str, split: str, config: Config) -> None:
    """Checks the stored labels against the records' synsets and the class list, before any run.

    Shards with 1-based labels read with ``--label_offset=0`` (or the reverse) would train on
    labels shifted by one, silently unless a record of the first or last class shows up. Each
    record carries its wnid (``image/class/synset``), and the class list in label order is the
    converter's ``synsets.txt`` beside the shards (ImageNet's for a 1000-class model without
    one), so the offset the shards were written with can be read off any record. The first
    records of the first few shards are parsed (not decoded).

    Raises:
      ConfigError: naming the shard, the record and the ``--label_offset`` the shards need, or
        the synsets file when a record's wnid is not in it.
    """
    synsets_path = os.path.join(data_dir, SYNSETS_FILE)
    if paths.exists(synsets_path):
        wnids = imagenet.load_synsets(synsets_path)
    elif config.num_classes == 1000:
        synsets_path, wnids = imagenet.DEFAULT_SYNSETS_FILE, imagenet.load_synsets()
    else:
        logging.info("No %s beside the shards in %s: labels not checked against synsets.", SYNSETS_FILE, data_dir)
        return
    index = {wnid: i for i, wnid in enumerate(wnids)}
    for path in sorted(tf.io.gfile.glob(file_pattern(data_dir, split)))[:LABEL_CHECK_SHARDS]:
        for serialized in tf.data.TFRecordDataset(path).take(LABEL_CHECK_RECORDS):
            parsed = records.parse_example(serialized)
            synset = parsed["synset"].numpy().decode("utf-8")
            if not synset:
                continue
            filename = parsed["filename"].numpy().decode("utf-8")
            if synset not in index:
                raise ConfigError(f"{path}: record {filename!r} is of {synset}, which {synsets_path} does not list; "
                                 "the shards and the class list do not belong together")
            stored = int(parsed["label"].numpy())
            needed = stored - index[synset]
            if needed != config.label_offset:
                raise ConfigError(
                    f"{path}: record {filename!r} is of {synset}, class {index[synset]} in {synsets_path}, "
                    f"stored with label {stored}: these shards need --label_offset={needed}, not "
                    f"--label_offset={config.label_offset}"
                )


def pipeline_seed(config: Config, pipeline_id: int, purpose: str) -> int:
    """A well-mixed seed per run seed, worker and purpose in deterministic mode, else a fresh one.

    Outside deterministic mode the seed comes from the operating system's entropy, never from
    TensorFlow's global seed: the trainer sets that to ``config.seed`` in every process, so a
    restarted run would read its epochs with the file orders and draws of the first run's first
    epochs.
    """
    entropy = [config.seed, pipeline_id, _SEED_PURPOSES[purpose]] if config.deterministic else None
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint32)[0] & 0x7FFFFFFF)


def shuffle_files(files: tf.data.Dataset, count: int, config: Config, pipeline_id: int) -> tf.data.Dataset:
    """``files`` (``count`` of them) in a new order at every pass over them (``pipeline_seed``'s)."""
    return files.shuffle(count, seed=pipeline_seed(config, pipeline_id, "files"), reshuffle_each_iteration=True)


def augmentation_draws(config: Config, stats: DatasetStatistics, pipeline_id: int) -> tf.data.Dataset:
    """An endless stream of training views' random draws (crop, flip, colour noise), one per record.

    They are drawn in blocks, a few ops per ``DRAW_BLOCK`` records rather than per record, from a
    stream of block seeds (``pipeline_seed``'s) rerandomised at each pass.
    """
    block_seeds = tf.data.Dataset.random(seed=pipeline_seed(config, pipeline_id, "augment"),
                                         rerandomize_each_iteration=True)
    return block_seeds.map(
        lambda seed: preprocess.training_draws(
            tf.stack([seed, tf.constant(pipeline_id, tf.int64)]), DRAW_BLOCK, config.image_size,
            config.input_size, stats, config.pca_std,
        )
    ).unbatch()


def _shard_files(pattern: str) -> list[str]:
    """The sorted shards matching ``pattern``; FileNotFoundError naming the directory when none do."""
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise FileNotFoundError(
            f"no TFRecord shards match {os.path.basename(pattern)!r} in {os.path.dirname(pattern)!r}: "
            "check --data_dir, or build the shards with the converter"
        )
    return files


def _read_shard(path: tf.Tensor, size: tf.Tensor) -> tf.data.Dataset:
    """The records of one shard, failing with the shard's name when it is corrupt or truncated.

    tf.data's own DataLossError names no file. So read errors are caught, the reader then stops
    at that shard, and the bytes the records account for are compared with the file's size: a
    shortfall raises an error naming ``path`` once the shard's intact records have been read.
    The bytes are counted a group of records at a time (one function call per group, not per
    record), and an empty group marks the end.
    """
    groups = tf.data.TFRecordDataset(path, buffer_size=READ_BUFFER_BYTES).ignore_errors().batch(ACCOUNT_GROUP)
    marked = groups.concatenate(tf.data.Dataset.from_tensors(tf.zeros([0], tf.string)))

    def account(total, group):
        is_end = tf.equal(tf.size(group), 0)
        check = tf.debugging.Assert(
            tf.logical_or(tf.logical_not(is_end), tf.equal(total, size)),
            [
                "Corrupt or truncated TFRecord shard",
                path,
                "- its intact records cover",
                total,
                "of its",
                size,
                "bytes; rebuild it with the converter",
            ],
            summarize=1,
        )
        with tf.control_dependencies([check]):
            lengths = tf.cast(tf.strings.length(group), tf.int64) + RECORD_FRAMING_BYTES
        return total + tf.reduce_sum(lengths), group

    # The end marker, an empty group, unbatches to nothing.
    return marked.scan(tf.constant(0, tf.int64), account).unbatch()


def make_dataset(
    file_pattern: str,
    training: bool,
    config: Config,
    input_context: tf.distribute.InputContext | None = None,
    stats: DatasetStatistics | None = None,
    ten_crop: bool = False,
    repeat: bool | None = None,
    skip_records: int = 0,
) -> tf.data.Dataset:
    """Batches of (features, labels) from the converter's shards: uint8 crops, finished on the device.

    Args:
      file_pattern: a glob of TFRecord shards, e.g. ``file_pattern(data_dir, "train")``.
      training: the paper's training view (random crops, flips, colour noise) with file and
        record shuffling and ``drop_remainder``; otherwise the centre crop (or ten crops) of
        every record exactly once, in file order, and a short last batch.
      config: batch_size (global), image sizes, mean subtraction, pca_std, label_offset,
        shuffle_buffer, deterministic, seed.
      input_context: from ``strategy.distribute_datasets_from_function``; shards the input across
        workers and sets the per-replica batch size.
      stats: the mean and PCA; default the converter's ``statistics.json`` beside the shards.
      ten_crop: evaluation only: yield the ten patches of each image.
      repeat: repeat forever; default True when training, False otherwise.
      skip_records: records of this pipeline to pass over undecoded (the batches a run resumed
        mid-epoch has already trained on); the rest are exactly those an unskipped pipeline
        yields after them, augmentation included.

    Returns:
      A dataset of (features, int32 [B] 0-based labels). The features are the host's half of the
      view, uint8 pixels and a few values per image: a ``views.TrainCrop``, ``EvalCrop`` or, for
      ten_crop, ``TenCropSquare``; ``device_preprocess.DeviceFinish(config,
      stats)`` turns a batch of them into float32 [B, s, s, 3] (or [B, 10, s, s, 3]) images,
      s = config.input_size, inside the compiled step (``finish_on_host`` does it here instead).

    Raises:
      FileNotFoundError: naming the directory, when nothing matches ``file_pattern``.
    """
    if ten_crop and training:
        raise ValueError(
            "ten_crop is an evaluation view; call make_dataset(..., training=False, ten_crop=True)"
        )
    files = _shard_files(file_pattern)
    if stats is None:
        stats = statistics.load_statistics(os.path.dirname(file_pattern))
    repeat = training if repeat is None else repeat
    num_pipelines = input_context.num_input_pipelines if input_context else 1
    pipeline_id = input_context.input_pipeline_id if input_context else 0
    batch_size = (
        input_context.get_per_replica_batch_size(config.batch_size) if input_context else config.batch_size
    )
    # With fewer shards than workers the records, not the files, are dealt out (slower: every
    # worker reads every shard).
    shard_records = num_pipelines > len(files)
    if shard_records:
        logging.warning("%d shards for %d input pipelines: sharding by record.", len(files), num_pipelines)

    sizes = [tf.io.gfile.stat(f).length for f in files]
    dataset = tf.data.Dataset.from_tensor_slices((files, np.array(sizes, np.int64)))
    # Shard before shuffling: every worker starts from the same sorted list, so the shards
    # partition it.
    if num_pipelines > 1 and not shard_records:
        dataset = dataset.shard(num_pipelines, pipeline_id)
    # Shuffle file names (cheap) so each epoch visits the shards in a new order; record sharding
    # needs the same order on every worker, and evaluation keeps file order.
    if training and not shard_records:
        dataset = shuffle_files(dataset, len(files), config, pipeline_id)
    # Repeat the file list rather than the records: no refill of the shuffle buffer at each
    # epoch boundary, and each pass gets a fresh file order.
    if repeat and not shard_records:
        dataset = dataset.repeat()
    # Interleave parallel reads of several shards, which also mixes their records. Evaluation
    # reads one shard after another to keep records in file order.
    dataset = dataset.interleave(
        _read_shard,
        cycle_length=min(CYCLE_LENGTH, len(files)) if training else 1,
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE if training else None,
        deterministic=(config.deterministic or shard_records) if training else None,
    )
    if num_pipelines > 1 and shard_records:
        dataset = dataset.shard(num_pipelines, pipeline_id)
        if repeat:
            dataset = dataset.repeat()
    # Shuffle the still-encoded records: a buffer of compressed bytes holds many more images than
    # one of decoded ones.
    if training:
        dataset = dataset.shuffle(config.shuffle_buffer, seed=pipeline_seed(config, pipeline_id, "records"))
    # Each record's crop, flip and colour noise, paired with it after shuffling so augmentation
    # does not depend on how many parallel calls the map runs.
    if training:
        dataset = tf.data.Dataset.zip(dataset, augmentation_draws(config, stats, pipeline_id))
    # Resuming mid-epoch: skip what was trained on before parsing and decoding, after the
    # shuffle and the seeds, so the remaining records and their augmentation are unchanged.
    if skip_records:
        dataset = dataset.skip(skip_records)
    # Parse a group of records with one op (one op per record cost the host as much again as the
    # rest of the per-record work) and check their labels, keeping their order.
    dataset = dataset.batch(PARSE_GROUP).map(_parse_group(config)).unbatch()
    # Decode and crop in one parallel map: decoding is the expensive step, and it runs only on
    # records that will be used. The pixels stay uint8: the float arithmetic (mean, colour
    # noise, mirroring) is the device's, which saves the host's CPU and 3/4 of the bytes to copy.
    dataset = dataset.map(
        _make_map_fn(training, ten_crop, config),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=config.deterministic or not training,
    )
    # Batch after the per-image work (tf.data fuses map and batch); training drops the short last
    # batch so every step has the same shape, evaluation keeps every record.
    dataset = dataset.batch(batch_size, drop_remainder=training)
    # Overlap preparing the next batches with the training step.
    dataset = dataset.prefetch(tf.data.AUTOTUNE)

    options = tf.data.Options()
    options.deterministic = config.deterministic or not training
    # Parallelism comes from tf.data's own threads; one op thread per element avoids oversubscription.
    options.threading.max_intra_op_parallelism = 1
    return dataset.with_options(options)


def _parse_group(config: Config):
    """Parses a group of serialized records at once and checks their labels: (records [N], ...) ->
    (features [N], ...)."""

    def parse(serialized, *rest):
        parsed = records.parse_examples(serialized, config.label_offset)
        label = parsed["label"]
        outside = tf.logical_or(label < 0, label >= config.num_classes)
        check = tf.debugging.Assert(
            tf.logical_not(tf.reduce_any(outside)),
            [
                "Label",
                tf.boolean_mask(label, outside)[:1],
                "of",
                tf.boolean_mask(parsed["filename"], outside)[:1],
                f"is outside [0, {config.num_classes}) after "
                f"--label_offset={config.label_offset}; check --label_offset (1 for 1-based labels, 0 for "
                "0-based)",
            ],
        )
        with tf.control_dependencies([check]):
            parsed["label"] = tf.identity(label)
        return (parsed, *rest) if rest else parsed

    return parse


def _make_map_fn(training: bool, ten_crop: bool, config: Config):
    """The per-record function: decode and crop (the host's half of the view)."""

    if training:

        def train_fn(parsed, draws):
            view = preprocess.decode_train_crop(parsed["encoded"], draws, config.image_size, config.input_size)
            return view, parsed["label"]

        return train_fn

    def eval_fn(parsed):
        encoded = parsed["encoded"]
        if ten_crop:
            return preprocess.ten_crop_square(encoded, config.image_size), parsed["label"]
        return preprocess.eval_crop(encoded, config.image_size, config.input_size), parsed["label"]

    return eval_fn


def finish_on_host(dataset: tf.data.Dataset, config: Config, stats: DatasetStatistics) -> tf.data.Dataset:
    """``make_dataset``'s batches with the float views made on the host: for Keras ``fit``, notebooks.

    ``stats`` must be those ``make_dataset`` was given (or the ones beside the shards it read).
    """
    finish = device_preprocess.DeviceFinish(config, stats)
    return dataset.map(lambda features, labels: (finish(features), labels))


def manifest_record_count(data_dir: str, split: str) -> int | None:
    """How many records a split holds according to the converter's manifest; None without one.

    Raises:
      ValueError: naming the manifest when it is not a converter manifest.
    """
    manifest_path = os.path.join(data_dir, records.MANIFEST_FILE)
    if not paths.exists(manifest_path):
        return None
    try:
        splits = paths.read_json(manifest_path).get("splits", {})
    except (ValueError, AttributeError) as e:
        raise ValueError(f"{manifest_path} is not a converter manifest ({e}); re-run the converter") from e
    prefix = SPLIT_PREFIXES[split]
    return int(splits[prefix]["num_records"]) if prefix in splits else None


def count_records(data_dir: str, split: str) -> int:
    """How many records a split holds: from the converter's manifest, else by reading the shards."""
    count = manifest_record_count(data_dir, split)
    if count is not None:
        return count
    files = sorted(tf.io.gfile.glob(file_pattern(data_dir, split)))
    dataset = tf.data.TFRecordDataset(files, num_parallel_reads=4)
    return int(dataset.reduce(np.int64(0), lambda count, _: count + 1).numpy())
