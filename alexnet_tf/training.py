"""Training (section 5): a run's epochs and loops, and its end (evaluation and export).

The model, the optimiser and the compiled steps are ``trainer.Trainer``'s. One loop serves every
strategy (``distribute.make_strategy``: one device, ``MirroredStrategy`` over GPUs,
``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` is set): a ``tf.function`` that runs
``steps_per_loop`` steps, each ``strategy.run`` on a batch from
``distribute_datasets_from_function``, its metrics summed over replicas and steps on the device, so
the host (progress bar, TensorBoard, SIGTERM, the NaN check, checkpoints) sees the run once per
loop. Keras 3's ``Model.fit`` fails under ``MultiWorkerMirroredStrategy`` (keras-team/keras#20585),
so it is not used. The optimiser and its schedule are ``optimizer.py``'s, the batches
``sources.Inputs``, and everything a run writes goes where ``workdir.py`` says.

Running again with the same work directory resumes from the latest checkpoint. In deterministic
mode each epoch reads a fresh pipeline seeded by (seed, epoch), so a resumed run sees the same
batches as an uninterrupted one; a checkpoint taken mid-epoch skips the batches already used.
Otherwise the epochs read on from one pipeline (``Trainer.epoch_iterator``) whose file orders and
draws are new in every process, so a restart neither replays earlier epochs nor skips anything.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import logging
from tensorflow.python.framework import config as tf_framework_config

from alexnet_tf import curves, distribute, evaluation, export, finetune, paths, reports, sources, statistics
from alexnet_tf import workdir as workdir_lib
from alexnet_tf.config import Config, ConfigError, parse_profile_steps
from alexnet_tf.sources import Inputs
from alexnet_tf.trainer import NonFiniteLossError, Trainer

# The stall warning: a training loss this close (relative) to ln(num_classes), the loss of a
# uniform guess, after ``stall_warning_steps`` steps.
STALL_TOLERANCE = 0.02

# --------------------------------------------------------------------------------------------
# The run


@contextlib.contextmanager
def _sigterm_flag() -> Iterator[dict[str, bool]]:
    """Turns SIGTERM into a flag the loop checks after each loop of steps (main thread only)."""
    flag = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        logging.warning("SIGTERM received: checkpointing after this loop of steps, then stopping.")
        flag["stop"] = True

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)


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
      strategy: default ``distribute.make_strategy()``.
      synthetic: train on random tensors (timing only).
      finish: after the last epoch, save ``model.keras``, and with records also evaluate
        (centre crop and 10-crop) and export the SavedModel.
      step_callback: called after every loop of ``config.steps_per_loop`` steps (fewer at the end
        of an epoch, before a checkpoint step and at ``--profile_steps``' bounds) with (global
        step at its end, the loop's metrics: mean loss, top-1/top-5 error, learning rate, images/s).
      verbose: show a progress bar.

    Returns:
      The summary written to ``<workdir>/summary.json`` (or, when stopped by SIGTERM, one with
      ``"stopped": "SIGTERM"`` and nothing written but the checkpoint).

    Raises:
      NonFiniteLossError: when the loss becomes NaN or infinite; the last checkpoint is kept.
    """
    # Before anything is read or built: an s3:// path without tensorflow-io fails here, naming it.
    # (The configuration checked itself when it was made.)
    paths.check_supported(workdir, "--workdir")
    if config.data_dir:
        paths.check_supported(config.data_dir, "--data_dir")
    # Op determinism is a process-wide switch: on for this run only.
    was_deterministic = tf_framework_config.is_op_determinism_enabled()
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    try:
        return _train(config, workdir, inputs, strategy, synthetic, finish, step_callback, verbose)
    finally:
        if not was_deterministic:
            tf_framework_config.disable_op_determinism()


def _inputs_of(config: Config, inputs: Inputs | None, synthetic: bool) -> Inputs:
    if inputs is not None:
        return inputs
    if synthetic:
        return sources.synthetic_inputs(config)
    if config.data_dir:
        return sources.record_inputs(config, config.data_dir)
    raise ConfigError("no training data: pass --data_dir (converted records), --dataset or --synthetic")


def _start(config: Config, workdir: str, inputs: Inputs, strategy: tf.distribute.Strategy,
           chief: bool) -> tuple[Trainer, workdir_lib.Checkpoints]:
    """Writes the run's configuration, builds the trainer and restores the latest checkpoint."""
    paths.makedirs(workdir)
    latest = workdir_lib.latest_checkpoint(workdir)
    if chief:
        workdir_lib.write_config(config, workdir, resuming=bool(latest))
        if inputs.stats is not None:
            # The preprocessing travels with the model: evaluation reads these, not the data dir's.
            inputs.stats.save(workdir)
    trainer = Trainer(config, strategy, inputs.stats)
    if config.init_from and not latest:  # a resumed run restores its own weights below
        finetune.load_source_weights(trainer.model, config)
    checkpoints = workdir_lib.Checkpoints(trainer.checkpoint, trainer.global_step, workdir, chief,
                                          distribute.task_id(strategy))
    if latest:
        trainer.checkpoint.restore(latest).assert_existing_objects_matched()
        done = int(trainer.epoch.numpy())
        logging.info("Resumed from %s: %d epoch(s) done, step %d of epoch %d", latest, done,
                     int(trainer.step_in_epoch.numpy()), done + 1)
    return trainer, checkpoints


def _log_plan(config: Config, workdir: str, inputs: Inputs, trainer: Trainer, finish: bool) -> None:
    """The run's first lines: what it reads, where it computes, how long, where results go."""
    logging.info("Training on %s", inputs.description or inputs.data_dir)
    logging.info("Model: %d classes, input %d, width %g, %s; on %s", config.num_classes, config.input_size,
                 config.width, config.precision, distribute.describe(trainer.strategy))
    logging.info("%d epoch(s) x %d steps of %d images, learning rate %g (%s schedule)", config.epochs,
                 inputs.steps_per_epoch, config.batch_size, config.learning_rate, config.lr_schedule)
    ends = "centre-crop and 10-crop evaluation and export" if finish and inputs.data_dir else "no evaluation"
    logging.info("Then %s; results go to %s", ends, workdir_lib.describe_layout(workdir))


def _end_epoch(trainer: Trainer, inputs: Inputs, epoch: int, checkpoints: workdir_lib.Checkpoints,
               writer: Any) -> dict[str, float] | None:
    """Checks the watched split, lets the schedule see its error, closes the epoch and checkpoints it.

    The watched split is the selection split (``holdout``) when the records have one: then the
    validation images play no part in the run until they are scored at its end.
    """
    config = trainer.config
    split = inputs.watched
    validation = trainer.validate(inputs, split)
    reduced = trainer.schedule.end_epoch(validation["top1_error"] if validation else None)
    trainer.epoch.assign_add(1)
    trainer.step_in_epoch.assign(0)
    path = checkpoints.save()
    if validation:
        workdir_lib.write_scalars(writer, int(trainer.global_step.numpy()), {
            "loss": validation["loss"], "top1_error": validation["top1_error"],
            "top5_error": validation["top5_error"]})
        logging.info("Epoch %d/%d: %s loss %.4f, top-1 error %.4f, top-5 error %.4f",
                     epoch + 1, config.epochs, curves.NAMES[split], validation["loss"], validation["top1_error"],
                     validation["top5_error"])
    if reduced:
        logging.info("The %s top-1 error stopped improving: learning rate now %g "
                     "(reduction %d of %d)", curves.NAMES[split], float(trainer.schedule.learning_rate.numpy()),
                     int(trainer.schedule.reductions.numpy()), config.max_lr_reductions)
    logging.info("Saved %s", path)
    return validation


def _train(
    config: Config, workdir: str, inputs: Inputs | None, strategy: tf.distribute.Strategy | None,
    synthetic: bool, finish: bool, step_callback: Callable[[int, dict[str, float]], None] | None,
    verbose: bool,
) -> dict[str, Any]:
    strategy = strategy or distribute.make_strategy()
    inputs = finetune.keep_source_mean(config, _inputs_of(config, inputs, synthetic))
    chief = distribute.is_chief(strategy)
    trainer, checkpoints = _start(config, workdir, inputs, strategy, chief)
    if chief:
        _log_plan(config, workdir, inputs, trainer, finish)
    resumed_from_epoch = int(trainer.epoch.numpy())
    watched = inputs.watched
    writers = workdir_lib.summary_writers(workdir, chief, ("train", watched))
    last_validation = None
    profiler = _Profiler(config.profile_steps, os.path.join(workdir, workdir_lib.PROFILE_DIR), chief)
    with _sigterm_flag() as sigterm, contextlib.closing(profiler):
        loop = _LoopContext(trainer, inputs, checkpoints, writers["train"], sigterm, profiler, step_callback,
                            verbose and chief)
        while int(trainer.epoch.numpy()) < config.epochs:
            epoch = int(trainer.epoch.numpy())
            rate = trainer.schedule.rate_for_epoch(epoch)
            trainer.set_learning_rate(rate)
            stopped = _train_epoch(loop, epoch, rate)
            if stopped:
                logging.warning("Stopped by SIGTERM at epoch %d step %d; checkpoint %s. Run again with "
                                "--workdir=%s to resume.", epoch + 1, int(trainer.step_in_epoch.numpy()),
                                stopped, workdir)
                return {"stopped": "SIGTERM", "checkpoint": stopped}
            last_validation = _end_epoch(trainer, inputs, epoch, checkpoints, writers[watched])
    for writer in writers.values():
        writer.flush()
    summary = workdir_lib.run_summary(
        workdir, inputs.data_dir, checkpoints.latest(),
        epochs_completed=int(trainer.epoch.numpy()),
        resumed_from_epoch=resumed_from_epoch,
        global_step=int(trainer.global_step.numpy()),
        # This process's copy: equal on every worker of a multi-worker run.
        weights_l2_norm=float(np.sqrt(sum(np.sum(np.square(w)) for w in trainer.model.get_weights()))),
        **_last_check(watched, last_validation),
    )
    if finish:
        summary.update(_finish(trainer, config, workdir, inputs, chief))
    if chief:
        summary["summary"] = workdir_lib.write_summary(summary, workdir)
        workdir_lib.log_outputs(summary)
    return summary


def _last_check(split: str, figures: dict[str, float] | None) -> dict[str, float | None]:
    """The summary's figures of the last per-epoch check: ``holdout_*`` for the selection split.

    With a selection split the validation figures come from the final evaluation alone.
    """
    prefix = "holdout" if split == "holdout" else "val"
    return {f"{prefix}_top1_error": figures["top1_error"] if figures else None,
            f"{prefix}_top5_error": figures["top5_error"] if figures else None}


class _Profiler:
    """``--profile_steps``: a TensorBoard profile (``tf.profiler``) of those global steps, on the chief.

    Loops end before the first and after the last profiled step, so the trace holds exactly
    those steps (and the host's work between their loops). Every worker ends its loops there, so
    that all run the same loops; only the chief traces.
    """

    def __init__(self, spec: str, directory: str, chief: bool):
        self.steps = parse_profile_steps(spec)
        self.directory = directory
        self.chief = chief
        self.running = False

    def bounds(self) -> tuple[int, ...]:
        """Global steps after which a loop must end."""
        return (self.steps[0] - 1, self.steps[1]) if self.steps else ()

    def before_loop(self, global_step: int) -> None:
        """Starts the trace when the next step (``global_step + 1``) is the first to profile."""
        if self.chief and self.steps and not self.running and self.steps[0] <= global_step + 1 <= self.steps[1]:
            logging.info("Profiling global steps %d-%d into %s", global_step + 1, self.steps[1], self.directory)
            tf.profiler.experimental.start(self.directory)
            self.running = True

    def after_loop(self, global_step: int) -> None:
        if self.running and global_step >= self.steps[1]:
            self.close()

    def close(self) -> None:
        """Stops a running trace and writes it (also when the run stops early)."""
        if self.running:
            tf.profiler.experimental.stop()
            self.running = False
            logging.info("Wrote the profile to %s (TensorBoard's Profile tab)", self.directory)


def _loop_length(config: Config, step: int, steps: int, global_step: int, bounds: tuple[int, ...]) -> int:
    """The next loop's steps: ``steps_per_loop``, cut at the epoch's end, a checkpoint step, a profile bound."""
    length = min(config.steps_per_loop, steps - step)
    every = config.checkpoint_every_steps
    if every:  # checkpoints land exactly on their steps
        length = min(length, every - global_step % every)
    for bound in bounds:
        if bound > global_step:
            length = min(length, bound - global_step)
    return length


@dataclasses.dataclass(frozen=True)
class _LoopContext:
    """What the loops of a run need besides the epoch and its learning rate."""

    trainer: Trainer
    inputs: Inputs
    checkpoints: workdir_lib.Checkpoints  # saved at checkpoint steps and on SIGTERM
    writer: Any  # the training split's summary writer: one point per loop
    sigterm: dict[str, bool]  # ``_sigterm_flag``'s flag, checked after each loop
    profiler: _Profiler  # ends loops at its bounds and traces between them
    step_callback: Callable[[int, dict[str, float]], None] | None  # after each loop: global step, its metrics
    verbose: bool  # a progress bar (the chief's)


def _train_epoch(loop: _LoopContext, epoch: int, rate: float) -> str | None:
    """Runs the rest of epoch ``epoch``, a loop of steps per call; the checkpoint path when SIGTERM stopped it."""
    trainer, inputs, checkpoints, profiler, verbose = (loop.trainer, loop.inputs, loop.checkpoints, loop.profiler,
                                                       loop.verbose)
    config = trainer.config
    steps = inputs.steps_per_epoch
    step = int(trainer.step_in_epoch.numpy())
    global_step = int(trainer.global_step.numpy())
    iterator = trainer.epoch_iterator(inputs, epoch)  # from step `step`: a mid-epoch checkpoint resumes there
    progress = keras.utils.Progbar(steps, stateful_metrics=["lr", "images/s"], verbose=1 if verbose else 0)
    if verbose:
        logging.info("Epoch %d/%d, learning rate %g", epoch + 1, config.epochs, rate)
    totals = np.zeros(4)
    while step < steps:
        length = _loop_length(config, step, steps, global_step, profiler.bounds())
        profiler.before_loop(global_step)
        start = time.perf_counter()
        sums, non_finite = trainer.train_loop(iterator, length)
        seconds = time.perf_counter() - start
        if non_finite is not None:
            raise NonFiniteLossError(
                f"the training loss or its gradients are not finite at epoch {epoch + 1}, step "
                f"{step + non_finite + 1} (global step {global_step + non_finite + 1}), in the loop of steps "
                f"{step + 1}-{step + length}; stopped without saving. The last good checkpoint is "
                f"{checkpoints.latest()}. Lower --learning_rate, check the input data, or use "
                "--precision=float32."
            )
        step += length
        global_step += length
        trainer.step_in_epoch.assign(step)
        trainer.global_step.assign(global_step)
        profiler.after_loop(global_step)
        totals += sums
        loss, top1, top5, count = sums.loss_sum / sums.images, sums.top1, sums.top5, sums.images
        loop_metrics = {"loss": loss, "top1_error": 1 - top1 / count, "top5_error": 1 - top5 / count,
                        "lr": rate, "images/s": count / seconds}
        progress.update(step, [(k, v) for k, v in loop_metrics.items()])
        # One point per loop, at its last step: the mean of its steps (curves.py weighs it so).
        workdir_lib.write_scalars(loop.writer, global_step, {("images_per_second" if k == "images/s" else k): v
                                                             for k, v in loop_metrics.items()})
        if loop.step_callback is not None:
            loop.step_callback(global_step, loop_metrics)
        _warn_if_stalled(config, loss, global_step, length)
        every = config.checkpoint_every_steps
        if loop.sigterm["stop"] or (every and global_step % every == 0 and step < steps):
            path = checkpoints.save()
            if loop.sigterm["stop"]:
                return path
    loss, top1, top5, count = totals
    if count:
        logging.info("Epoch %d: training loss %.4f, top-1 error %.4f, top-5 error %.4f", epoch + 1,
                     loss / count, 1 - top1 / count, 1 - top5 / count)
    return None


def _warn_if_stalled(config: Config, loss: float, global_step: int, length: int) -> bool:
    """Warns once, in the loop that reaches ``stall_warning_steps``, if the loss is still ln(K)'s.

    The commonest failure of an AlexNet reproduction is a loss that never leaves ln(num_classes):
    the network outputs a uniform guess. Returns whether it warned.
    """
    steps, chance = config.stall_warning_steps, math.log(config.num_classes)
    if not steps or config.num_classes < 2 or not global_step - length < steps <= global_step:
        return False
    if abs(loss - chance) > STALL_TOLERANCE * chance:
        return False
    logging.warning(
        "The training loss is %.4f after %d steps, within %d%% of ln(%d) = %.4f, the loss of a uniform guess: "
        "the network has not started to learn. Likely causes: weights initialised too small for the "
        "network's width (--weight_init=he, --bias_init=caffe), a learning rate off by 10x "
        "(--learning_rate), labels that do not belong to the images (--label_offset; the converter's "
        "synsets.txt), or a pipeline that feeds the wrong pixels (--mean_subtraction). "
        "--stall_warning_steps=0 turns this check off.",
        loss, global_step, round(100 * STALL_TOLERANCE), config.num_classes, chance)
    return True


def _finish(trainer: Trainer, config: Config, workdir: str, inputs: Inputs, chief: bool) -> dict[str, Any]:
    """Saves the model and, with records, evaluates (centre crop and 10-crop) and exports it.

    Records without a validation split (class folders only, ``train.py --image_dir``) are scored on
    their selection split: the summary's figures are then ``holdout_*`` and ``evaluation_note`` says
    that the same images steered the run.
    """
    results: dict[str, Any] = {}
    if chief:
        path = os.path.join(workdir, workdir_lib.MODEL_FILE)
        trainer.model.save(paths.prepare_rewrite(path))
        results["model"] = paths.absolute(path)
        results["curves"] = curves.draw_run_curves(workdir, inputs.steps_per_epoch)  # before report.md links it
    if not inputs.data_dir:
        return results
    wnids, names = reports.data_class_labels(config.num_classes, inputs.data_dir)
    stats = inputs.stats or statistics.load_statistics(inputs.data_dir)
    report_dir = os.path.join(workdir, workdir_lib.REPORT_DIR)
    scored = (evaluation.HOLDOUT_SPLIT if inputs.validation is None and inputs.holdout is not None
              else evaluation.VALIDATION_SPLIT)
    report = evaluation.evaluate(trainer.model, config, inputs.data_dir,
                                 report_dir=report_dir if chief else None, strategy=trainer.strategy,
                                 ten_crop=True, class_names=names, progress=chief, stats=stats, split=scored)
    prefix = "val" if scored == evaluation.VALIDATION_SPLIT else "holdout"
    results.update({
        f"{prefix}_top1_error": report["center_crop"]["top1_error"],
        f"{prefix}_top5_error": report["center_crop"]["top5_error"],
        f"{prefix}_ten_crop_top1_error": report["ten_crop"]["top1_error"],
        f"{prefix}_ten_crop_top5_error": report["ten_crop"]["top5_error"],
        "evaluation_report": paths.absolute(report_dir) if chief else None,
    })
    if scored != evaluation.VALIDATION_SPLIT:
        results.update(evaluated_split=scored, evaluation_note=evaluation.HOLDOUT_NOTE)
    if chief:
        export_dir = export.export_saved_model(trainer.model, os.path.join(workdir, workdir_lib.EXPORT_DIR), config,
                                               stats, wnids, names)
        results["saved_model"] = paths.absolute(export_dir)
    return results
