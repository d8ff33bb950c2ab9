"""The trainer (section 5): the model, ``PaperSGD`` and the run's state under a strategy, with the
compiled steps.

``Trainer`` builds the network and the optimiser inside the strategy's scope and compiles three
functions: a loop of ``steps_per_loop`` training steps (each ``strategy.run`` on one batch from the
distributed iterator, the device finishing the host's uint8 crops first), its metrics summed over
replicas and steps on the device; and the validation step. ``training.py`` drives it: epochs,
checkpoints, the progress bar, SIGTERM and the end of a run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import keras
import numpy as np
import tensorflow as tf

from alexnet_tf import device_preprocess, distribute, finetune, metrics
from alexnet_tf import model as model_lib
from alexnet_tf.config import Config, ConfigError
from alexnet_tf.optimizer import LearningRateSchedule, PaperSGD
from alexnet_tf.sources import Inputs
from alexnet_tf.statistics import DatasetStatistics


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stopped without saving."""


class LoopMetrics(NamedTuple):
    """A training loop's metrics, summed over its steps (and replicas) on the device."""

    loss_sum: float  # each step's mean loss times its images
    top1: float  # top-1 correct
    top5: float  # top-5 correct
    images: float


def training_loss(labels: tf.Tensor, probabilities: tf.Tensor, label_smoothing: float = 0.0) -> tf.Tensor:
    """Per-example cross-entropy against the labels, smoothed when ``label_smoothing`` > 0.

    The paper's loss is the plain one (0). Smoothed, the target of each example puts
    ``1 - s + s / K`` on its label and ``s / K`` on each of the other K - 1 classes.
    """
    if label_smoothing == 0.0:
        return keras.losses.sparse_categorical_crossentropy(labels, probabilities)
    targets = tf.one_hot(tf.cast(labels, tf.int32), tf.shape(probabilities)[-1], dtype=probabilities.dtype)
    return keras.losses.categorical_crossentropy(targets, probabilities, label_smoothing=label_smoothing)


# --------------------------------------------------------------------------------------------
# The trainer


class Trainer:
    """A model, its optimiser and run state under a strategy, with compiled train/eval steps.

    Args:
      config: the run's configuration.
      strategy: where to run; ``distribute.make_strategy()`` when None.
      stats: the training set's statistics, which the steps need to finish the input pipeline's
        uint8 crops on the device (``Inputs.stats``); None when the batches are float images.
    """

    def __init__(self, config: Config, strategy: tf.distribute.Strategy | None = None,
                 stats: DatasetStatistics | None = None):
        self.config = config
        # The device's half of the preprocessing, first in the train and validation steps.
        self.finish = device_preprocess.DeviceFinish(config, stats)
        self.strategy = strategy or distribute.make_strategy()
        replicas = self.strategy.num_replicas_in_sync
        if config.batch_size % replicas:
            raise ConfigError(f"--batch_size={config.batch_size} is not divisible by the {replicas} replicas; "
                              f"use a multiple of {replicas}")
        previous_policy = keras.mixed_precision.global_policy().name
        keras.mixed_precision.set_global_policy(config.precision)
        try:
            # Seeds Python, NumPy, TensorFlow and Keras: the dropout layers' RNG starts the same.
            keras.utils.set_random_seed(config.seed)
            with self.strategy.scope():
                self.model = model_lib.build_from_config(config, seed=config.seed)
                finetune.freeze_below(self.model, config.trainable_from)
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
        self._train_loop = self._make_train_loop()
        self._loop_iterator, self._loop_function = None, None
        self._shared_iterator: tuple[Inputs, Iterator] | None = None
        self._eval_step = self._make_eval_step()

    @property
    def global_batch(self) -> int:
        return self.config.batch_size

    def _make_train_step(self) -> Callable[[Any], list[tf.Tensor]]:
        model, optimizer, strategy, finish = self.model, self.optimizer, self.strategy, self.finish
        scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        global_batch = self.global_batch
        top_k = metrics.k_for(self.config.num_classes)
        smoothing = self.config.label_smoothing
        # Moving statistics of --batch_norm, assigned by each replica in its forward pass.
        moving = [v for v in model.non_trainable_variables if v.path.endswith(("moving_mean", "moving_variance"))]

        def forward_backward(images, labels):
            with tf.GradientTape() as tape:
                probabilities = model(images, training=True)
                per_example = training_loss(labels, probabilities, smoothing)
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
                target = optimizer.scale_loss(loss) if scaled else loss
            return loss, tape.gradient(target, model.trainable_variables), probabilities

        forward_backward = tf.function(forward_backward, jit_compile=self.config.jit_compile)

        def replica_step(images, labels):
            images = finish(images)
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
                gradients = distribute.overflow_on_every_replica(gradients)
            # Keras sums the gradients over replicas before applying them.
            optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
            if moving:
                distribute.mean_over_replicas(moving)
            return (loss, *metrics.correct_counts(labels, probabilities, top_k), 1.0 - finite)

        # Traced inside the loop below (and the benchmark's in-graph loop), not compiled alone.
        def train_step(batch):
            results = strategy.run(replica_step, args=batch)
            return [strategy.reduce(tf.distribute.ReduceOp.SUM, r, axis=None) for r in results]

        return train_step

    def _make_train_loop(self) -> Callable[[Iterator, tf.Tensor], tf.Tensor]:
        step = self._train_step

        # Many steps per call: the host sees the device once per loop. The step count is a
        # tensor, so a shorter loop (an epoch's remainder, a checkpoint step) needs no new trace,
        # and a new iterator of the same kind each epoch none either.
        @tf.function
        def train_loop(iterator, steps):
            totals = tf.zeros([4])  # loss x images, top-1 correct, top-5 correct, images
            first_non_finite = tf.constant(-1.0)
            for i in tf.range(steps):
                loss, top1, top5, count, non_finite = step(next(iterator))
                totals += tf.stack([loss * count, top1, top5, count])
                if non_finite > 0:
                    # The same reduced flag on every replica and worker: they all leave here.
                    first_non_finite = tf.cast(i, tf.float32)
                    break
            # One tensor: one transfer to the host per loop.
            return tf.concat([totals, [first_non_finite]], axis=0)

        return train_loop

    def _make_eval_step(self) -> Callable[[Any], list[tf.Tensor]]:
        model, strategy, finish = self.model, self.strategy, self.finish
        top_k = metrics.k_for(self.config.num_classes)

        def replica_metrics(images, labels):
            probabilities = model(images, training=False)
            loss = tf.reduce_sum(keras.losses.sparse_categorical_crossentropy(labels, probabilities))
            return (loss, *metrics.correct_counts(labels, probabilities, top_k))

        def replica_step(images, labels):
            images = finish(images)
            return distribute.unless_empty_replica(images, lambda: replica_metrics(images, labels),
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

        With ``--deterministic``, a checkpoint taken mid-epoch resumes after the batches already
        trained on (the input pipelines pass over their records without decoding them), so the
        resumed run sees the batches an uninterrupted one saw. Otherwise the pipeline's orders and
        draws are new in every process (``data.pipeline_seed``): the rest of the epoch is a fresh draw and
        nothing is skipped.
        """
        done = int(self.step_in_epoch.numpy()) if self.config.deterministic else 0

        def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
            # Each step takes one batch per replica from its worker's pipeline.
            replicas_per_pipeline = context.num_replicas_in_sync // context.num_input_pipelines
            return inputs.train(context, epoch, done * replicas_per_pipeline)

        return iter(self.strategy.distribute_datasets_from_function(dataset_fn))

    def epoch_iterator(self, inputs: Inputs, epoch: int) -> Iterator:
        """The batches of epoch ``epoch``, from step ``step_in_epoch`` on, for ``train_loop``.

        With ``--deterministic`` every epoch reads its own pipeline (``distribute``), seeded by
        (seed, epoch), so that a resumed run sees the batches an uninterrupted one saw. Otherwise
        the pipeline's order and draws are random anyway, and the epochs of this process read on
        from one endless pipeline, each taking its ``steps_per_epoch`` batches. Deleting a tf.data
        iterator waits for its autotuning thread to wake (TensorFlow 2.21: the thread's sleep grows
        to a minute and deleting does not cut it short): with a pipeline per epoch the Imagenette
        preset stood still at the start of many epochs (``benchmarks/training.py --parts=epochs``;
        figures in docs/benchmarks.md, "One input pipeline per run").
        """
        if self.config.deterministic:
            return self.distribute(inputs, epoch)
        if self._shared_iterator is None or self._shared_iterator[0] is not inputs:
            self._shared_iterator = (inputs, self.distribute(inputs, epoch))
        return self._shared_iterator[1]

    def train_loop(self, iterator: Iterator, steps: int) -> tuple[LoopMetrics, int | None]:
        """``steps`` optimisation steps in one call to the device.

        Returns:
          The loop's metrics, summed over its steps on the device, and the index (0-based, in
          the loop) of the first step whose loss, probabilities or gradients were not finite on
          some replica, or None. The loop stops after that step.
        """
        if self._loop_iterator is not iterator:
            # Looked up once per iterator: finding the traced function for an iterator argument
            # costs about as much host time as the rest of a loop's bookkeeping.
            self._loop_function = self._train_loop.get_concrete_function(iterator, tf.TensorSpec([], tf.int32))
            self._loop_iterator = iterator
        *totals, first = (float(v) for v in self._loop_function(iterator, tf.constant(steps, tf.int32)).numpy())
        return LoopMetrics(*totals), (int(first) if first >= 0 else None)

    def train_step(self, iterator: Iterator) -> tuple[float, float, float, float]:
        """One optimisation step: (mean loss, top-1 correct, top-5 correct, images).

        The loss is NaN when a replica's loss or gradients were not finite.
        """
        loop, non_finite = self.train_loop(iterator, 1)
        loss = loop.loss_sum / loop.images if loop.images else 0.0
        return (loss if non_finite is None else math.nan), loop.top1, loop.top5, loop.images

    def validate(self, inputs: Inputs, split: str = "validation") -> dict[str, float] | None:
        """Centre-crop loss and top-1/top-5 error over ``inputs``' validation (or holdout) split, or None."""
        make = inputs.split(split)
        if make is None:
            return None
        dataset = make()
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
