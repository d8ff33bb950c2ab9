"""The input pipeline (sections 2 and 4.1): the one place that orders the tf.data operations,
and the sources a run reads.

``make_dataset`` turns the converter's TFRecord shards into batches of uint8 crops (with the few
values per image the device needs to finish them: ``device_preprocess.DeviceFinish``) and 0-based int32
labels; ``alexnet_tf.preprocess`` holds the image functions it maps. ``Inputs`` is
what the trainer reads: training pipelines whose file orders and draws are new at every epoch
(seeded by (seed, epoch) in deterministic mode, afresh in every process otherwise), and a
validation pipeline; from the converter's shards (``record_inputs``), arrays (``array_inputs``)
or random tensors (``synthetic_inputs``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import numpy as np
import tensorflow as tf
from absl import logging

from alexnet_tf import device_preprocess, imagenet, paths, preprocess, records, statistics
from alexnet_tf.config import Config, ConfigError
from alexnet_tf.records import SYNSETS_FILE
from alexnet_tf.statistics import DatasetStatistics

SPLIT_PREFIXES = {"train": records.TRAIN_PREFIX, "validation": records.VALIDATION_PREFIX}
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
SYNTHETIC_STEPS_PER_EPOCH = 50


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


def _seed(config: Config, pipeline_id: int, purpose: str) -> int:
    """A well-mixed seed per run seed, worker and purpose in deterministic mode, else a fresh one.

    Outside deterministic mode the seed comes from the operating system's entropy, never from
    TensorFlow's global seed: the trainer sets that to ``config.seed`` in every process, so a
    restarted run would read its epochs with the file orders and draws of the first run's first
    epochs.
    """
    entropy = [config.seed, pipeline_id, _SEED_PURPOSES[purpose]] if config.deterministic else None
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint32)[0] & 0x7FFFFFFF)


def shuffle_files(files: tf.data.Dataset, count: int, config: Config, pipeline_id: int) -> tf.data.Dataset:
    """``files`` (``count`` of them) in a new order at every pass over them (``_seed``'s)."""
    return files.shuffle(count, seed=_seed(config, pipeline_id, "files"), reshuffle_each_iteration=True)


def augmentation_draws(config: Config, stats: DatasetStatistics, pipeline_id: int) -> tf.data.Dataset:
    """An endless stream of training views' random draws (crop, flip, colour noise), one per record.

    They are drawn in blocks, a few ops per ``DRAW_BLOCK`` records rather than per record, from a
    stream of block seeds (``_seed``'s) rerandomised at each pass.
    """
    block_seeds = tf.data.Dataset.random(seed=_seed(config, pipeline_id, "augment"), rerandomize_each_iteration=True)
    return block_seeds.map(
        lambda seed: preprocess.training_draws(
            config, stats, tf.stack([seed, tf.constant(pipeline_id, tf.int64)]), DRAW_BLOCK
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
      view, a dict of uint8 pixels and a few values per image (``preprocess.train_crop``,
      ``eval_crop`` or, for ten_crop, ``ten_crop_square``); ``device_preprocess.DeviceFinish(config,
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
        dataset = dataset.shuffle(config.shuffle_buffer, seed=_seed(config, pipeline_id, "records"))
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
            return preprocess.decode_train_crop(parsed["encoded"], config, draws), parsed["label"]

        return train_fn

    view = preprocess.ten_crop_square if ten_crop else preprocess.eval_crop

    def eval_fn(parsed):
        return view(parsed["encoded"], config), parsed["label"]

    return eval_fn


def finish_on_host(dataset: tf.data.Dataset, config: Config, stats: DatasetStatistics) -> tf.data.Dataset:
    """``make_dataset``'s batches with the float views made on the host: for Keras ``fit``, notebooks.

    ``stats`` must be those ``make_dataset`` was given (or the ones beside the shards it read).
    """
    finish = device_preprocess.DeviceFinish(config, stats)
    return dataset.map(lambda features, labels: (finish(features), labels))


# --------------------------------------------------------------------------------------------
# The sources a run reads


@dataclasses.dataclass
class Inputs:
    """Where a run's batches come from.

    Attributes:
      train: ``(input_context, epoch, skip_batches) -> dataset`` of per-replica (images, labels)
        batches, less the first ``skip_batches`` of the epoch, which it passes over (cheaply: a
        run resumed mid-epoch has trained on them). With ``--deterministic`` it is called afresh
        for every epoch and must yield at least ``steps_per_epoch`` batches; otherwise once per
        run, and the epochs read on from it (``Trainer.epoch_iterator``): it must not end.
      validation: ``() -> dataset`` of global-batch (images, labels), one pass; or None.
      steps_per_epoch: training steps per epoch.
      data_dir: the converted records these come from ("" for in-memory or synthetic data).
      stats: the training set's statistics (for the export), when known.
      description: what the batches are, for the run's first lines.
    """

    train: Callable[[tf.distribute.InputContext, int, int], tf.data.Dataset]
    validation: Callable[[], tf.data.Dataset] | None
    steps_per_epoch: int
    data_dir: str = ""
    stats: statistics.DatasetStatistics | None = None
    description: str = ""


def epoch_seed(config: Config, epoch: int) -> int:
    """The seed of epoch ``epoch``'s pipeline: each epoch reads the records in a new order."""
    return int(np.random.SeedSequence([config.seed, epoch]).generate_state(1, np.uint32)[0] & 0x7FFFFFFF)


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


def record_inputs(config: Config, data_dir: str) -> Inputs:
    """Inputs read from the converter's shards in ``data_dir`` by ``data.make_dataset``."""
    train_pattern = file_pattern(data_dir, "train")
    validation_pattern = file_pattern(data_dir, "validation")
    for split in ("train", "validation"):
        check_labels(data_dir, split, config)
    stats = statistics.load_statistics(data_dir)
    steps = config.steps_per_epoch
    num_train = None
    if not steps:
        num_train = count_records(data_dir, "train")
        steps = num_train // config.batch_size
        if steps == 0:
            raise ConfigError(f"{data_dir} holds {num_train} training images, fewer than one batch "
                             f"(--batch_size={config.batch_size})")
        logging.info("%d training images: %d steps per epoch of %d", num_train, steps, config.batch_size)
    num_train = num_train if num_train is not None else manifest_record_count(data_dir, "train")
    num_validation = manifest_record_count(data_dir, "validation")
    counts = [f"{n} {split} images" for n, split in ((num_train, "training"), (num_validation, "validation"))
              if n is not None]
    description = f"the records in {data_dir}" + (f" ({', '.join(counts)})" if counts else "")

    def train(input_context: tf.distribute.InputContext, epoch: int, skip_batches: int = 0) -> tf.data.Dataset:
        epoch_config = config.replace(seed=epoch_seed(config, epoch))
        skip = skip_batches * input_context.get_per_replica_batch_size(config.batch_size)
        return make_dataset(train_pattern, True, epoch_config, input_context=input_context,
                                 stats=stats, repeat=True, skip_records=skip)

    def validation() -> tf.data.Dataset:
        return make_dataset(validation_pattern, False, config, stats=stats, repeat=False)

    return Inputs(train, validation, steps, data_dir=data_dir, stats=stats, description=description)


def array_inputs(
    config: Config, train_images: np.ndarray, train_labels: np.ndarray,
    val_images: np.ndarray | None = None, val_labels: np.ndarray | None = None,
) -> Inputs:
    """Inputs from arrays of preprocessed float images (tests, small experiments).

    The images are the finished views (``device_preprocess.DeviceFinish`` passes them through unchanged).

    Training batches are reshuffled each epoch (seeded by seed and epoch in deterministic mode)
    and dealt out across input pipelines by ``input_context``.
    """
    num_pipelines = 1
    steps = config.steps_per_epoch or len(train_images) // config.batch_size

    def train(input_context: tf.distribute.InputContext, epoch: int, skip_batches: int = 0) -> tf.data.Dataset:
        nonlocal num_pipelines
        num_pipelines = input_context.num_input_pipelines
        dataset = tf.data.Dataset.from_tensor_slices((train_images, train_labels.astype(np.int32)))
        dataset = dataset.shard(num_pipelines, input_context.input_pipeline_id)
        # Outside deterministic mode a fresh seed: a restarted run must not replay the first epochs.
        seed = epoch_seed(config, epoch) if config.deterministic else _seed(config, 0, "records")
        dataset = dataset.shuffle(len(train_images), seed=seed).repeat()
        dataset = dataset.batch(input_context.get_per_replica_batch_size(config.batch_size), drop_remainder=True)
        return dataset.skip(skip_batches)  # arrays: nothing to decode

    validation = None
    if val_images is not None:
        def validation() -> tf.data.Dataset:
            dataset = tf.data.Dataset.from_tensor_slices((val_images, val_labels.astype(np.int32)))
            return dataset.batch(config.batch_size)

    description = f"arrays of {len(train_images)} training" + (
        f" and {len(val_images)} validation images" if val_images is not None else " images")
    return Inputs(train, validation, steps, description=description)


def synthetic_inputs(config: Config) -> Inputs:
    """Random tensors of the right shape, to time the model step without an input pipeline."""
    size = config.input_size

    def train(input_context: tf.distribute.InputContext, epoch: int, skip_batches: int = 0) -> tf.data.Dataset:
        del skip_batches  # every batch is the same
        batch = input_context.get_per_replica_batch_size(config.batch_size)
        images = tf.random.stateless_uniform([batch, size, size, 3], [config.seed, 1], -128.0, 128.0)
        labels = tf.random.stateless_uniform([batch], [config.seed, 2], 0, config.num_classes, tf.int32)
        return tf.data.Dataset.from_tensors((images, labels)).repeat()

    return Inputs(train, None, config.steps_per_epoch or SYNTHETIC_STEPS_PER_EPOCH,
                  description="random tensors (timing only: no validation, evaluation or export)")
