"""Training (section 5): strategy, optimiser, schedule, the loop, checkpoints and resume.

One loop serves every strategy (one device, ``MirroredStrategy`` over GPUs, and
``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` is set): a ``tf.function`` step run by
``strategy.run`` on batches from ``distribute_datasets_from_function``, its figures summed over
replicas. Keras 3's ``Model.fit`` fails under ``MultiWorkerMirroredStrategy``
(keras-team/keras#20585), so it is not used.

A work directory holds everything a run writes::

    config.json        the resolved configuration
    statistics.json    the training set's statistics (and mean_image.npy): evaluation uses these
    checkpoints/       tf.train.CheckpointManager: model, optimizer (slots, learning rate),
                       epoch, step, schedule state, dropout RNG state
    logs/train, logs/validation   TensorBoard
    model.keras        the final model
    saved_model/1/     the serving export (export.py); saved_model/ is a TensorFlow Serving base path
    evaluation/        centre-crop and 10-crop report (evaluation.py)
    summary.json       the final figures and where everything went

Running again with the same work directory resumes from the latest checkpoint. Each epoch reads a
fresh pipeline seeded by (seed, epoch), so in deterministic mode a resumed run sees the same
batches as an uninterrupted one; a checkpoint taken mid-epoch skips the batches already used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import logging
from tensorflow.core.framework import summary_pb2
from tensorflow.python.framework import config as tf_framework_config

from alexnet_tf import curves, data, evaluation, export, imagenet, statistics
from alexnet_tf import model as model_lib
from alexnet_tf.config import Config
from alexnet_tf.evaluation import CHECKPOINT_DIR, CONFIG_FILE, MODEL_FILE, TOP_K
from alexnet_tf.optimizer import PaperSGD
from alexnet_tf.records import MANIFEST_FILE, SYNSETS_FILE

LOG_DIR = "logs"
EXPORT_DIR = os.path.join("saved_model", "1")  # TensorFlow Serving loads numbered versions
REPORT_DIR = "evaluation"
SUMMARY_FILE = "summary.json"
CHECKPOINTS_TO_KEEP = 3
LR_DIVISOR = 10.0  # section 5: "divide the learning rate by 10"
SYNTHETIC_STEPS_PER_EPOCH = 50
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
# Config fields that change the model's variables: a resumed run must keep them.
MODEL_FIELDS = ("num_classes", "input_size", "width", "towers", "conv_width", "lrn", "overlapping_pooling")
_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
).SerializeToString()


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stopped without saving."""


# --------------------------------------------------------------------------------------------
# Strategy


def make_strategy(num_gpus: int | None = None, devices: list[str] | None = None) -> tf.distribute.Strategy:
    """The distribution strategy of a run.

    ``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` is set; otherwise ``MirroredStrategy``
    over ``devices`` (or the first ``num_gpus`` visible GPUs, all by default) when there are two
    or more, and one device otherwise.

    Args:
      num_gpus: how many GPUs to use (None: all visible; 0: the CPU).
      devices: explicit device names, e.g. ``["/cpu:0", "/cpu:1"]`` (overrides ``num_gpus``).

    Raises:
      ValueError: when ``num_gpus`` asks for more GPUs than are visible.
    """
    if os.environ.get("TF_CONFIG"):
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        logging.info("MultiWorkerMirroredStrategy: %d replicas in sync", strategy.num_replicas_in_sync)
        return strategy
    if devices is None:
        gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
        if num_gpus is not None and num_gpus > len(gpus):
            raise ValueError(f"--num_gpus={num_gpus} but only {len(gpus)} GPU(s) are visible")
        devices = gpus[: len(gpus) if num_gpus is None else num_gpus] or ["/cpu:0"]
    if len(devices) == 1:
        logging.info("One device: %s", devices[0])
        return tf.distribute.OneDeviceStrategy(devices[0])
    logging.info("MirroredStrategy over %s", devices)
    return tf.distribute.MirroredStrategy(devices)


def _is_chief(strategy: tf.distribute.Strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


# --------------------------------------------------------------------------------------------
# Learning-rate schedule


def parse_lr_schedule(spec: str) -> tuple[str, tuple[int, ...]]:
    """``"plateau"`` -> ("plateau", ()); ``"step:30,60,80"`` -> ("step", (30, 60, 80)).

    Raises:
      ValueError: naming ``--lr_schedule`` when ``spec`` is neither form.
    """
    if spec == "plateau":
        return "plateau", ()
    if spec.startswith("step:"):
        try:
            boundaries = tuple(int(v) for v in spec[len("step:"):].split(","))
        except ValueError:
            boundaries = ()
        if boundaries and all(b > 0 for b in boundaries) and list(boundaries) == sorted(set(boundaries)):
            return "step", boundaries
    raise ValueError(
        f"--lr_schedule={spec!r}: use 'plateau' or 'step:E1,E2,...' with increasing epochs, "
        "e.g. step:30,60,80"
    )


class LearningRateSchedule(tf.Module):
    """The paper's schedule (divide by 10 when the validation error stops improving) or steps.

    Its state lives in variables, so a checkpoint carries it across a restart.

    Args:
      config: learning_rate, lr_schedule, plateau_patience, max_lr_reductions.
    """

    def __init__(self, config: Config):
        super().__init__(name="lr_schedule")
        self.kind, self.boundaries = parse_lr_schedule(config.lr_schedule)
        self.base_rate = config.learning_rate
        self.patience = config.plateau_patience
        self.max_reductions = config.max_lr_reductions
        self.learning_rate = tf.Variable(config.learning_rate, dtype=tf.float64, trainable=False)
        self.best_error = tf.Variable(math.inf, dtype=tf.float64, trainable=False)
        self.epochs_without_improvement = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.reductions = tf.Variable(0, dtype=tf.int64, trainable=False)

    def rate_for_epoch(self, epoch: int) -> float:
        """The rate to train epoch ``epoch`` (0-based) with."""
        if self.kind == "step":
            drops = sum(1 for b in self.boundaries if epoch >= b)
            self.learning_rate.assign(self.base_rate / LR_DIVISOR**drops)
        return float(self.learning_rate.numpy())

    def end_epoch(self, val_top1_error: float | None) -> bool:
        """Records an epoch's validation error; True when the rate was just divided."""
        if self.kind != "plateau" or val_top1_error is None:
            return False
        if val_top1_error < float(self.best_error.numpy()):
            self.best_error.assign(val_top1_error)
            self.epochs_without_improvement.assign(0)
            return False
        self.epochs_without_improvement.assign_add(1)
        if (int(self.epochs_without_improvement.numpy()) >= self.patience
                and int(self.reductions.numpy()) < self.max_reductions):
            self.learning_rate.assign(self.learning_rate / LR_DIVISOR)
            self.reductions.assign_add(1)
            self.epochs_without_improvement.assign(0)
            return True
        return False


# --------------------------------------------------------------------------------------------
# Inputs


@dataclasses.dataclass
class Inputs:
    """Where a run's batches come from.

    Attributes:
      train: ``(input_context, epoch, skip_batches) -> dataset`` of per-replica (images, labels)
        batches; it is called afresh for every epoch and must yield at least ``steps_per_epoch``
        batches, less the first ``skip_batches`` of the epoch, which it passes over (cheaply:
        a run resumed mid-epoch has trained on them).
      validation: ``() -> dataset`` of global-batch (images, labels), one pass; or None.
      steps_per_epoch: training steps per epoch.
      data_dir: the converted records these come from ("" for in-memory or synthetic data).
      stats: the training set's statistics (for the export), when known.
    """

    train: Callable[[tf.distribute.InputContext, int, int], tf.data.Dataset]
    validation: Callable[[], tf.data.Dataset] | None
    steps_per_epoch: int
    data_dir: str = ""
    stats: statistics.DatasetStatistics | None = None


def _epoch_seed(config: Config, epoch: int) -> int:
    return int(np.random.SeedSequence([config.seed, epoch]).generate_state(1, np.uint32)[0] & 0x7FFFFFFF)


def count_records(data_dir: str, split: str) -> int:
    """How many records a split holds: from the converter's manifest, else by reading the shards."""
    manifest_path = os.path.join(data_dir, MANIFEST_FILE)
    if os.path.exists(manifest_path):
        try:
            with open(manifest_path, encoding="utf-8") as f:
                splits = json.load(f).get("splits", {})
        except (ValueError, AttributeError) as e:
            raise ValueError(f"{manifest_path} is not a converter manifest ({e}); re-run the converter") from e
        prefix = data.SPLIT_PREFIXES[split]
        if prefix in splits:
            return int(splits[prefix]["num_records"])
    files = sorted(tf.io.gfile.glob(data.file_pattern(data_dir, split)))
    dataset = tf.data.TFRecordDataset(files, num_parallel_reads=4)
    return int(dataset.reduce(np.int64(0), lambda count, _: count + 1).numpy())


def record_inputs(config: Config, data_dir: str) -> Inputs:
    """Inputs read from the converter's shards in ``data_dir`` by ``data.make_dataset``."""
    train_pattern = data.file_pattern(data_dir, "train")
    validation_pattern = data.file_pattern(data_dir, "validation")
    for split in ("train", "validation"):
        data.check_labels(data_dir, split, config)
    stats = statistics.load_statistics(data_dir)
    steps = config.steps_per_epoch
    if not steps:
        num_train = count_records(data_dir, "train")
        steps = num_train // config.batch_size
        if steps == 0:
            raise ValueError(f"{data_dir} holds {num_train} training images, fewer than one batch "
                             f"(--batch_size={config.batch_size})")
        logging.info("%d training images: %d steps per epoch of %d", num_train, steps, config.batch_size)

    def train(input_context: tf.distribute.InputContext, epoch: int, skip_batches: int = 0) -> tf.data.Dataset:
        epoch_config = config.replace(seed=_epoch_seed(config, epoch))
        skip = skip_batches * input_context.get_per_replica_batch_size(config.batch_size)
        return data.make_dataset(train_pattern, True, epoch_config, input_context=input_context,
                                 stats=stats, repeat=True, skip_records=skip)

    def validation() -> tf.data.Dataset:
        return data.make_dataset(validation_pattern, False, config, stats=stats, repeat=False)

    return Inputs(train, validation, steps, data_dir=data_dir, stats=stats)


def array_inputs(
    config: Config, train_images: np.ndarray, train_labels: np.ndarray,
    val_images: np.ndarray | None = None, val_labels: np.ndarray | None = None,
) -> Inputs:
    """Inputs from arrays of preprocessed images (tests, small experiments).

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
        seed = _epoch_seed(config, epoch) if config.deterministic else None
        dataset = dataset.shuffle(len(train_images), seed=seed).repeat()
        dataset = dataset.batch(input_context.get_per_replica_batch_size(config.batch_size), drop_remainder=True)
        return dataset.skip(skip_batches)  # arrays: nothing to decode

    validation = None
    if val_images is not None:
        def validation() -> tf.data.Dataset:
            dataset = tf.data.Dataset.from_tensor_slices((val_images, val_labels.astype(np.int32)))
            return dataset.batch(config.batch_size)

    return Inputs(train, validation, steps)


def synthetic_inputs(config: Config) -> Inputs:
    """Random tensors of the right shape, to time the model step without an input pipeline."""
    size = config.input_size

    def train(input_context: tf.distribute.InputContext, epoch: int, skip_batches: int = 0) -> tf.data.Dataset:
        del skip_batches  # every batch is the same
        batch = input_context.get_per_replica_batch_size(config.batch_size)
        images = tf.random.stateless_uniform([batch, size, size, 3], [config.seed, 1], -128.0, 128.0)
        labels = tf.random.stateless_uniform([batch], [config.seed, 2], 0, config.num_classes, tf.int32)
        return tf.data.Dataset.from_tensors((images, labels)).repeat()

    return Inputs(train, None, config.steps_per_epoch or SYNTHETIC_STEPS_PER_EPOCH)


# --------------------------------------------------------------------------------------------
# The trainer


def _set_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"--precision={precision!r}: choose one of {', '.join(PRECISIONS)}")
    keras.mixed_precision.set_global_policy(precision)


class Trainer:
    """A model, its optimiser and run state under a strategy, with compiled train/eval steps.

    Args:
      config: the run's configuration.
      strategy: where to run; ``make_strategy()`` when None.
    """

    def __init__(self, config: Config, strategy: tf.distribute.Strategy | None = None):
        self.config = config
        self.strategy = strategy or make_strategy()
        replicas = self.strategy.num_replicas_in_sync
        if config.batch_size % replicas:
            raise ValueError(f"--batch_size={config.batch_size} is not divisible by the {replicas} replicas")
        previous_policy = keras.mixed_precision.global_policy().name
        _set_precision(config.precision)
        try:
            # Seeds Python, NumPy, TensorFlow and Keras: the dropout layers' RNG starts the same.
            keras.utils.set_random_seed(config.seed)
            with self.strategy.scope():
                self.model = model_lib.build_from_config(config, seed=config.seed)
                self.sgd = PaperSGD(config.learning_rate, config.momentum, config.weight_decay)
                self.optimizer = (
                    keras.optimizers.LossScaleOptimizer(self.sgd)
                    if config.precision == "mixed_float16" else self.sgd
                )
                self.optimizer.build(self.model.trainable_variables)
        finally:
            keras.mixed_precision.set_global_policy(previous_policy)
        self.schedule = LearningRateSchedule(config)
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)  # epochs completed
        self.step_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.global_step = tf.Variable(0, dtype=tf.int64, trainable=False)
        # Dropout's seed-generator states are not reachable through the model's checkpoint
        # dependencies; listing them keeps a resumed run's dropout masks in step.
        rng_states = [v for v in self.model.variables if "seed_generator_state" in v.path]
        self.checkpoint = tf.train.Checkpoint(
            model=self.model, optimizer=self.optimizer, schedule=self.schedule, epoch=self.epoch,
            step_in_epoch=self.step_in_epoch, global_step=self.global_step,
            rng=tf.train.Checkpoint(**{f"state_{i}": v for i, v in enumerate(rng_states)}),
        )
        self._train_step = self._make_train_step()
        self._eval_step = self._make_eval_step()

    @property
    def global_batch(self) -> int:
        return self.config.batch_size

    def _make_train_step(self) -> Callable[[Any], list[tf.Tensor]]:
        model, optimizer, strategy = self.model, self.optimizer, self.strategy
        scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        global_batch = self.global_batch
        top_k = min(TOP_K, self.config.num_classes)

        def forward_backward(images, labels):
            with tf.GradientTape() as tape:
                probabilities = model(images, training=True)
                per_example = keras.losses.sparse_categorical_crossentropy(labels, probabilities)
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
                target = optimizer.scale_loss(loss) if scaled else loss
            return loss, tape.gradient(target, model.trainable_variables), probabilities

        forward_backward = tf.function(forward_backward, jit_compile=self.config.jit_compile)

        def replica_step(images, labels):
            loss, gradients, probabilities = forward_backward(images, labels)
            # The loss clips probabilities, so it can stay finite while the network turns to NaN:
            # the probabilities and gradients tell. (Under loss scaling, overflowing gradients are
            # the optimiser's business: it skips the step and lowers the scale; NaN probabilities
            # are a NaN forward pass, which no scale cures.)
            finite = tf.cast(tf.math.is_finite(loss), tf.float32)
            finite *= tf.cast(tf.reduce_all(tf.math.is_finite(tf.cast(probabilities, tf.float32))), tf.float32)
            if not scaled:
                finite *= tf.cast(tf.math.is_finite(tf.linalg.global_norm(gradients)), tf.float32)
            else:
                gradients = _overflow_on_every_replica(gradients)
            # Keras sums the gradients over replicas before applying them.
            optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
            return (loss, *_correct_counts(labels, probabilities, top_k), 1.0 - finite)

        # Takes the batch, not the iterator: a new iterator each epoch would retrace the function.
        @tf.function
        def train_step(batch):
            results = strategy.run(replica_step, args=batch)
            return [strategy.reduce(tf.distribute.ReduceOp.SUM, r, axis=None) for r in results]

        return train_step

    def _make_eval_step(self) -> Callable[[Any], list[tf.Tensor]]:
        model, strategy = self.model, self.strategy
        top_k = min(TOP_K, self.config.num_classes)

        def figures(images, labels):
            probabilities = model(images, training=False)
            loss = tf.reduce_sum(keras.losses.sparse_categorical_crossentropy(labels, probabilities))
            return (loss, *_correct_counts(labels, probabilities, top_k))

        def replica_step(images, labels):
            # The last global batch can leave a replica without images; a convolution of an
            # empty batch gives a wrong shape on CPU, so such a replica contributes zeros.
            return tf.cond(tf.shape(labels)[0] > 0, lambda: figures(images, labels),
                           lambda: (tf.constant(0.0),) * 4)

        @tf.function(reduce_retracing=True)
        def eval_step(batch):
            results = strategy.run(replica_step, args=batch)
            return [strategy.reduce(tf.distribute.ReduceOp.SUM, r, axis=None) for r in results]

        return eval_step

    def set_learning_rate(self, rate: float) -> None:
        self.sgd.learning_rate.assign(rate)

    def distribute(self, inputs: Inputs, epoch: int) -> Iterator:
        """An iterator over this epoch's distributed training batches, from step ``step_in_epoch`` on.

        A checkpoint taken mid-epoch resumes after the batches already trained on; the input
        pipelines pass over their records without decoding them.
        """
        done = int(self.step_in_epoch.numpy())

        def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
            # Each step takes one batch per replica from its worker's pipeline.
            replicas_per_pipeline = context.num_replicas_in_sync // context.num_input_pipelines
            return inputs.train(context, epoch, done * replicas_per_pipeline)

        return iter(self.strategy.distribute_datasets_from_function(dataset_fn))

    def train_step(self, iterator: Iterator) -> tuple[float, float, float, float]:
        """One optimisation step: (mean loss, top-1 correct, top-5 correct, images).

        The loss is NaN when a replica's loss or gradients were not finite.
        """
        loss, top1, top5, count, non_finite = self._train_step(next(iterator))
        return (float(loss) if not non_finite else math.nan), float(top1), float(top5), float(count)

    def validate(self, inputs: Inputs) -> dict[str, float] | None:
        """Centre-crop loss and top-1/top-5 error over the validation inputs, or None without any."""
        if inputs.validation is None:
            return None
        dataset = inputs.validation()
        options = tf.data.Options()
        # Every worker reads all records and keeps its share: no worker can run out of files.
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        dataset = self.strategy.experimental_distribute_dataset(dataset.with_options(options))
        totals = np.zeros(4)
        for batch in dataset:
            totals += [float(v) for v in self._eval_step(batch)]
        loss, top1, top5, count = totals
        if not count:
            return None
        return {"loss": float(loss / count), "top1_error": float(1 - top1 / count),
                "top5_error": float(1 - top5 / count), "images": int(count)}


def _overflow_on_every_replica(gradients: list[tf.Tensor]) -> list[tf.Tensor]:
    """Makes every replica's gradients non-finite when any replica's are (in replica context).

    Keras' ``LossScaleOptimizer`` checks the gradients for overflow on each replica before they
    are summed and lets the first replica decide: an overflow on another replica alone would be
    summed into the weights and leave the scale as it is. Agreeing on one flag first (an
    all-reduce over every replica of every worker) makes each replica's check see the overflow,
    so the step is skipped everywhere and the scale lowered.
    """
    finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in gradients])
    overflows = tf.cast(tf.logical_not(finite), tf.float32)
    overflows = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, overflows)
    poison = tf.where(overflows > 0, math.nan, 1.0)
    return [g * tf.cast(poison, g.dtype) for g in gradients]


def _correct_counts(labels: tf.Tensor, probabilities: tf.Tensor, top_k: int) -> tuple[tf.Tensor, ...]:
    """(top-1 hits, top-k hits, images) by the evaluation's top-k definition (ties: lower index)."""
    hits = tf.equal(evaluation.top_k_classes(probabilities, top_k), tf.cast(labels, tf.int32)[:, None])
    top1 = tf.reduce_sum(tf.cast(hits[:, 0], tf.float32))
    topk = tf.reduce_sum(tf.cast(tf.reduce_any(hits, axis=1), tf.float32))
    return top1, topk, tf.cast(tf.shape(labels)[0], tf.float32)


# --------------------------------------------------------------------------------------------
# The run


@contextlib.contextmanager
def _sigterm_flag() -> Iterator[dict[str, bool]]:
    """Turns SIGTERM into a flag the loop checks after each step (main thread only)."""
    flag = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        logging.warning("SIGTERM received: checkpointing after this step, then stopping.")
        flag["stop"] = True

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)


def _write_config(config: Config, workdir: str, resuming: bool) -> None:
    path = os.path.join(workdir, CONFIG_FILE)
    if resuming and os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            saved = Config.from_json(f.read())
        changed = [name for name in MODEL_FIELDS if getattr(saved, name) != getattr(config, name)]
        if changed:
            raise ValueError(
                f"{path}: the checkpoints in {workdir} are of a model with "
                + ", ".join(f"{n}={getattr(saved, n)}" for n in changed)
                + f", not {', '.join(f'{n}={getattr(config, n)}' for n in changed)}; "
                "use another --workdir or the same settings"
            )
        if saved != config:
            logging.warning("Resuming with a changed configuration; %s is rewritten.", path)
    with open(path, "w", encoding="utf-8") as f:
        f.write(config.to_json())


class _Checkpoints:
    """The chief's CheckpointManager; other workers write to a scratch directory they delete."""

    def __init__(self, trainer: Trainer, workdir: str, chief: bool, task_id: int):
        self.directory = os.path.join(workdir, CHECKPOINT_DIR)
        self.chief = chief
        directory = self.directory if chief else os.path.join(workdir, f".worker_{task_id}_checkpoints")
        self.manager = tf.train.CheckpointManager(
            trainer.checkpoint, directory, max_to_keep=CHECKPOINTS_TO_KEEP, step_counter=trainer.global_step
        )

    def latest(self) -> str | None:
        return tf.train.latest_checkpoint(self.directory)

    def save(self) -> str:
        path = self.manager.save()
        if not self.chief:
            shutil.rmtree(self.manager.directory, ignore_errors=True)
        return path


def _summary_writers(workdir: str, chief: bool) -> dict[str, Any]:
    if not chief:
        return {"train": tf.summary.create_noop_writer(), "validation": tf.summary.create_noop_writer()}
    return {split: tf.summary.create_file_writer(os.path.join(workdir, LOG_DIR, split))
            for split in ("train", "validation")}


def _write_scalars(writer: Any, step: int, values: dict[str, float]) -> None:
    # tf.summary.scalar needs the tensorboard package; the summary op with the scalars plugin's
    # metadata writes the same event without it.
    with writer.as_default(step=step):
        for name, value in values.items():
            tf.summary.write(name, tf.constant(value, tf.float32), metadata=_SCALAR_METADATA)


def _class_labels(config: Config, data_dir: str) -> tuple[list[str], list[str]]:
    """``(wnids, names)`` for the export: beside the shards, else ImageNet's, else ``class_i``."""
    synsets = os.path.join(data_dir, SYNSETS_FILE) if data_dir else ""
    if synsets and os.path.exists(synsets):
        try:
            return evaluation.class_labels(config.num_classes, synsets)
        except ValueError as e:
            logging.warning("%s; ignoring it", e)
    if config.num_classes == 1000:
        return evaluation.class_labels(1000)
    labels = imagenet.fallback_class_names(config.num_classes)
    return labels, labels


def train(
    config: Config,
    workdir: str,
    inputs: Inputs | None = None,
    strategy: tf.distribute.Strategy | None = None,
    synthetic: bool = False,
    finish: bool = True,
    step_callback: Callable[[int, dict[str, float]], None] | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """Trains (or resumes training) and, at the end, evaluates and exports.

    Args:
      config: the run; ``config.data_dir`` names the converted records unless ``inputs`` or
        ``synthetic`` say otherwise.
      workdir: where everything goes; a run with the same workdir resumes.
      inputs: where batches come from; default the records in ``config.data_dir``.
      strategy: default ``make_strategy()``.
      synthetic: train on random tensors (timing only).
      finish: after the last epoch, save ``model.keras``, and with records also evaluate
        (centre crop and 10-crop) and export the SavedModel.
      step_callback: called after every step with (global step, figures of the step).
      verbose: show a progress bar.

    Returns:
      The summary written to ``<workdir>/summary.json`` (or, when stopped by SIGTERM, one with
      ``"stopped": "SIGTERM"`` and nothing written but the checkpoint).

    Raises:
      NonFiniteLossError: when the loss becomes NaN or infinite; the last checkpoint is kept.
    """
    if config.deterministic and config.jit_compile:
        raise ValueError("--deterministic and --jit_compile: XLA has no deterministic max-pool gradient; "
                         "choose one")
    # Op determinism is a process-wide switch: on for this run only.
    was_deterministic = tf_framework_config.is_op_determinism_enabled()
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    try:
        return _train(config, workdir, inputs, strategy, synthetic, finish, step_callback, verbose)
    finally:
        if not was_deterministic:
            tf_framework_config.disable_op_determinism()


def _train(
    config: Config, workdir: str, inputs: Inputs | None, strategy: tf.distribute.Strategy | None,
    synthetic: bool, finish: bool, step_callback: Callable[[int, dict[str, float]], None] | None,
    verbose: bool,
) -> dict[str, Any]:
    strategy = strategy or make_strategy()
    if inputs is None:
        if synthetic:
            inputs = synthetic_inputs(config)
        elif config.data_dir:
            inputs = record_inputs(config, config.data_dir)
        else:
            raise ValueError("no training data: pass --data_dir (converted records), --dataset or "
                             "--synthetic")
    os.makedirs(workdir, exist_ok=True)
    chief = _is_chief(strategy)
    resolver = getattr(strategy, "cluster_resolver", None)
    latest = tf.train.latest_checkpoint(os.path.join(workdir, CHECKPOINT_DIR))
    if chief:
        _write_config(config, workdir, resuming=bool(latest))
        if inputs.stats is not None:
            # The preprocessing travels with the model: evaluation reads these, not the data dir's.
            inputs.stats.save(workdir)
    trainer = Trainer(config, strategy)
    checkpoints = _Checkpoints(trainer, workdir, chief, resolver.task_id if resolver else 0)
    if latest:
        trainer.checkpoint.restore(latest).assert_existing_objects_matched()
        done = int(trainer.epoch.numpy())
        logging.info("Resumed from %s: %d epoch(s) done, step %d of epoch %d", latest, done,
                     int(trainer.step_in_epoch.numpy()), done + 1)
    resumed_from_epoch = int(trainer.epoch.numpy())
    writers = _summary_writers(workdir, chief)
    last_validation = None
    with _sigterm_flag() as sigterm:
        while int(trainer.epoch.numpy()) < config.epochs:
            epoch = int(trainer.epoch.numpy())
            rate = trainer.schedule.rate_for_epoch(epoch)
            trainer.set_learning_rate(rate)
            stopped = _train_epoch(trainer, inputs, epoch, rate, checkpoints, writers["train"], sigterm,
                                   step_callback, verbose and chief)
            if stopped:
                logging.warning("Stopped by SIGTERM at epoch %d step %d; checkpoint %s. Run again with "
                                "--workdir=%s to resume.", epoch + 1, int(trainer.step_in_epoch.numpy()),
                                stopped, workdir)
                return {"stopped": "SIGTERM", "checkpoint": stopped}
            last_validation = trainer.validate(inputs)
            reduced = trainer.schedule.end_epoch(last_validation["top1_error"] if last_validation else None)
            trainer.epoch.assign_add(1)
            trainer.step_in_epoch.assign(0)
            path = checkpoints.save()
            if last_validation:
                _write_scalars(writers["validation"], int(trainer.global_step.numpy()), {
                    "loss": last_validation["loss"], "top1_error": last_validation["top1_error"],
                    "top5_error": last_validation["top5_error"]})
                logging.info("Epoch %d/%d: validation loss %.4f, top-1 error %.4f, top-5 error %.4f",
                             epoch + 1, config.epochs, last_validation["loss"], last_validation["top1_error"],
                             last_validation["top5_error"])
            if reduced:
                logging.info("Validation top-1 error stopped improving: learning rate now %g "
                             "(reduction %d of %d)", float(trainer.schedule.learning_rate.numpy()),
                             int(trainer.schedule.reductions.numpy()), config.max_lr_reductions)
            logging.info("Saved %s", path)
    for writer in writers.values():
        writer.flush()
    summary = {
        "epochs_completed": int(trainer.epoch.numpy()),
        "resumed_from_epoch": resumed_from_epoch,
        "global_step": int(trainer.global_step.numpy()),
        # This process's copy: equal on every worker of a multi-worker run.
        "weights_l2_norm": float(np.sqrt(sum(np.sum(np.square(w)) for w in trainer.model.get_weights()))),
        "val_top1_error": last_validation["top1_error"] if last_validation else None,
        "val_top5_error": last_validation["top5_error"] if last_validation else None,
        "data_dir": inputs.data_dir,
        "workdir": os.path.abspath(workdir),
        "checkpoint": checkpoints.latest(),
        "tensorboard": os.path.abspath(os.path.join(workdir, LOG_DIR)),
        "saved_model": None,
        "model": None,
        "evaluation_report": None,
    }
    if finish:
        summary.update(_finish(trainer, config, workdir, inputs, chief))
    if chief:
        with open(os.path.join(workdir, SUMMARY_FILE), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
        summary["summary"] = os.path.abspath(os.path.join(workdir, SUMMARY_FILE))
    return summary


def _train_epoch(
    trainer: Trainer, inputs: Inputs, epoch: int, rate: float, checkpoints: _Checkpoints, writer: Any,
    sigterm: dict[str, bool], step_callback: Callable | None, verbose: bool,
) -> str | None:
    """Runs the rest of epoch ``epoch``; returns the checkpoint path when SIGTERM stopped it."""
    config = trainer.config
    steps = inputs.steps_per_epoch
    done = int(trainer.step_in_epoch.numpy())
    iterator = trainer.distribute(inputs, epoch)  # from step `done`: a mid-epoch checkpoint resumes there
    progress = keras.utils.Progbar(steps, stateful_metrics=["lr", "images/s"], verbose=1 if verbose else 0)
    if verbose:
        logging.info("Epoch %d/%d, learning rate %g", epoch + 1, config.epochs, rate)
    totals = np.zeros(4)
    for step in range(done, steps):
        start = time.perf_counter()
        loss, top1, top5, count = trainer.train_step(iterator)
        seconds = time.perf_counter() - start
        global_step = int(trainer.global_step.assign_add(1).numpy())
        if not math.isfinite(loss):
            raise NonFiniteLossError(
                f"the training loss or its gradients are not finite at epoch {epoch + 1}, step {step + 1} "
                f"(global step {global_step}); stopped without saving. The last good checkpoint is "
                f"{checkpoints.latest()}. Lower --learning_rate, check the input data, or use "
                "--precision=float32."
            )
        trainer.step_in_epoch.assign(step + 1)
        totals += (loss * count, top1, top5, count)
        figures = {"loss": loss, "top1_error": 1 - top1 / count, "top5_error": 1 - top5 / count,
                   "lr": rate, "images/s": count / seconds}
        progress.update(step + 1, [(k, v) for k, v in figures.items()])
        _write_scalars(writer, global_step, {("images_per_second" if k == "images/s" else k): v
                                             for k, v in figures.items()})
        if step_callback is not None:
            step_callback(global_step, figures)
        every = config.checkpoint_every_steps
        if sigterm["stop"] or (every and global_step % every == 0 and step + 1 < steps):
            path = checkpoints.save()
            if sigterm["stop"]:
                return path
    loss, top1, top5, count = totals
    if count:
        logging.info("Epoch %d: training loss %.4f, top-1 error %.4f, top-5 error %.4f", epoch + 1,
                     loss / count, 1 - top1 / count, 1 - top5 / count)
    return None


def _finish(trainer: Trainer, config: Config, workdir: str, inputs: Inputs, chief: bool) -> dict[str, Any]:
    """Saves the model and, with records, evaluates (centre crop and 10-crop) and exports it."""
    results: dict[str, Any] = {}
    if chief:
        path = os.path.join(workdir, MODEL_FILE)
        trainer.model.save(path)
        results["model"] = os.path.abspath(path)
        results["curves"] = curves.draw_run_curves(workdir, inputs.steps_per_epoch)  # before report.md links it
    if not inputs.data_dir:
        return results
    wnids, names = _class_labels(config, inputs.data_dir)
    report_dir = os.path.join(workdir, REPORT_DIR)
    report = evaluation.evaluate(trainer.model, config, inputs.data_dir,
                                 report_dir=report_dir if chief else None, strategy=trainer.strategy,
                                 ten_crop=True, class_names=names, progress=chief,
                                 stats=inputs.stats or statistics.load_statistics(inputs.data_dir))
    results.update({
        "val_top1_error": report["center_crop"]["top1_error"],
        "val_top5_error": report["center_crop"]["top5_error"],
        "val_ten_crop_top1_error": report["ten_crop"]["top1_error"],
        "val_ten_crop_top5_error": report["ten_crop"]["top5_error"],
        "evaluation_report": os.path.abspath(report_dir) if chief else None,
    })
    if chief:
        stats = inputs.stats or statistics.load_statistics(inputs.data_dir)
        export_dir = export.export_saved_model(trainer.model, os.path.join(workdir, EXPORT_DIR), config,
                                               stats, wnids, names)
        results["saved_model"] = os.path.abspath(export_dir)
    return results
