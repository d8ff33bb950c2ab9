"""The sources a run reads: ``Inputs``, from the converter's shards, arrays or random tensors.

``Inputs`` is what the trainer reads: training pipelines whose file orders and draws are new at
every epoch (seeded by (seed, epoch) in deterministic mode, afresh in every process otherwise),
a validation pipeline, and a pipeline of the selection split when the records have one.
``record_inputs`` builds them with ``data.make_dataset`` from the
converter's shards; ``array_inputs`` from arrays of finished views; ``synthetic_inputs`` from
random tensors (timing only).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import numpy as np
import tensorflow as tf
from absl import logging

from alexnet_tf import data, statistics
from alexnet_tf.config import Config, ConfigError
from alexnet_tf.views import FloatImages

SYNTHETIC_STEPS_PER_EPOCH = 50


@dataclasses.dataclass
class Inputs:
    """Where a run's batches come from.

    Attributes:
      train: ``(input_context, epoch, skip_batches) -> dataset`` of per-replica (images, labels)
        batches, less the first ``skip_batches`` of the epoch, which it passes over (cheaply: a
        run resumed mid-epoch has trained on them). With ``--deterministic`` it is called afresh
        for every epoch and must yield at least ``steps_per_epoch`` batches; otherwise once per
        run, and the epochs read on from it (``Trainer.epoch_iterator``): it must not end.
      validation: ``() -> dataset`` of global-batch (images, labels), one pass; or None (also for
        records of class folders only, which have a selection split and no validation split).
      holdout: the same for the selection split (training images held out by the converter's
        ``--holdout_per_class``), or None. When there is one, the per-epoch check and the plateau
        schedule watch it, and the validation set is scored once, at the end.
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
    holdout: Callable[[], tf.data.Dataset] | None = None

    @property
    def watched(self) -> str:
        """The split the per-epoch check and the schedule watch: ``holdout`` when there is one, else ``validation``."""
        return "holdout" if self.holdout is not None else "validation"

    def split(self, name: str) -> Callable[[], tf.data.Dataset] | None:
        """The one-pass pipeline of split ``name`` (``validation`` or ``holdout``), or None."""
        return self.holdout if name == "holdout" else self.validation


def epoch_seed(config: Config, epoch: int) -> int:
    """The seed of epoch ``epoch``'s pipeline: each epoch reads the records in a new order."""
    return int(np.random.SeedSequence([config.seed, epoch]).generate_state(1, np.uint32)[0] & 0x7FFFFFFF)


def record_inputs(config: Config, data_dir: str) -> Inputs:
    """Inputs read from the converter's shards in ``data_dir`` by ``data.make_dataset``.

    The validation split is required unless the records have a selection split (class folders
    only, ``train.py --image_dir``): then ``validation`` is None and the selection split is both
    watched and, at the end, scored.
    """
    train_pattern = data.file_pattern(data_dir, "train")
    holdout_pattern = data.file_pattern(data_dir, "holdout") if data.has_split(data_dir, "holdout") else None
    has_validation = holdout_pattern is None or data.has_split(data_dir, "validation")
    validation_pattern = data.file_pattern(data_dir, "validation") if has_validation else None
    for split in ("train",) + (("validation",) if has_validation else ()) + (("holdout",) if holdout_pattern else ()):
        data.check_labels(data_dir, split, config)
    stats = statistics.load_statistics(data_dir)
    steps = config.steps_per_epoch
    num_train = None
    if not steps:
        num_train = data.count_records(data_dir, "train")
        steps = num_train // config.batch_size
        if steps == 0:
            raise ConfigError(f"{data_dir} holds {num_train} training images, fewer than one batch "
                             f"(--batch_size={config.batch_size})")
        logging.info("%d training images: %d steps per epoch of %d", num_train, steps, config.batch_size)
    num_train = num_train if num_train is not None else data.manifest_record_count(data_dir, "train")
    num_validation = data.manifest_record_count(data_dir, "validation") if has_validation else None
    num_holdout = data.manifest_record_count(data_dir, "holdout") if holdout_pattern else None
    counts = [f"{n} {split} images" for n, split in ((num_train, "training"), (num_validation, "validation"),
                                                     (num_holdout, "held-out selection"))
              if n is not None]
    description = f"the records in {data_dir}" + (f" ({', '.join(counts)})" if counts else "")

    def train(input_context: tf.distribute.InputContext, epoch: int, skip_batches: int = 0) -> tf.data.Dataset:
        epoch_config = config.replace(seed=epoch_seed(config, epoch))
        skip = skip_batches * input_context.get_per_replica_batch_size(config.batch_size)
        return data.make_dataset(train_pattern, True, epoch_config, input_context=input_context,
                                 stats=stats, repeat=True, skip_records=skip)

    def validation(pattern: str = validation_pattern) -> tf.data.Dataset:
        return data.make_dataset(pattern, False, config, stats=stats, repeat=False)

    holdout = functools.partial(validation, holdout_pattern) if holdout_pattern else None
    return Inputs(train, validation if has_validation else None, steps, data_dir=data_dir, stats=stats,
                  description=description, holdout=holdout)


def array_inputs(
    config: Config, train_images: np.ndarray, train_labels: np.ndarray,
    val_images: np.ndarray | None = None, val_labels: np.ndarray | None = None,
) -> Inputs:
    """Inputs from arrays of preprocessed float images (tests, small experiments).

    The images are the finished views; the batches carry them as ``views.FloatImages``.

    Training batches are reshuffled each epoch (seeded by seed and epoch in deterministic mode)
    and dealt out across input pipelines by ``input_context``.
    """
    num_pipelines = 1
    steps = config.steps_per_epoch or len(train_images) // config.batch_size

    def train(input_context: tf.distribute.InputContext, epoch: int, skip_batches: int = 0) -> tf.data.Dataset:
        nonlocal num_pipelines
        num_pipelines = input_context.num_input_pipelines
        dataset = tf.data.Dataset.from_tensor_slices((FloatImages(train_images), train_labels.astype(np.int32)))
        dataset = dataset.shard(num_pipelines, input_context.input_pipeline_id)
        # Outside deterministic mode a fresh seed: a restarted run must not replay the first epochs.
        seed = epoch_seed(config, epoch) if config.deterministic else data.pipeline_seed(config, 0, "records")
        dataset = dataset.shuffle(len(train_images), seed=seed).repeat()
        dataset = dataset.batch(input_context.get_per_replica_batch_size(config.batch_size), drop_remainder=True)
        return dataset.skip(skip_batches)  # arrays: nothing to decode

    validation = None
    if val_images is not None:
        def validation() -> tf.data.Dataset:
            dataset = tf.data.Dataset.from_tensor_slices((FloatImages(val_images), val_labels.astype(np.int32)))
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
        return tf.data.Dataset.from_tensors((FloatImages(images), labels)).repeat()

    return Inputs(train, None, config.steps_per_epoch or SYNTHETIC_STEPS_PER_EPOCH,
                  description="random tensors (timing only: no validation, evaluation or export)")
