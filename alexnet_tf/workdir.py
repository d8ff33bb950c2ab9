"""A run's work directory: the one owner of its layout, for training, evaluation, export and the CLIs.

Everything a training run writes (section 5's long runs: checkpoints and resume) is named here::

    config.json        the resolved configuration (a resumed run must keep the model's shape)
    data/              data sets train.py prepares itself (the built-in drawn set, Imagenette)
    statistics.json    the training set's statistics (and mean_image.npy): evaluation and the
                       export preprocess with these, whatever data directory they read
    checkpoints/       tf.train.CheckpointManager: model, optimizer (slots, learning rate),
                       epoch, step, schedule state, dropout RNG state
    logs/train, logs/validation   TensorBoard
    logs/profile       --profile_steps' trace (TensorBoard's Profile tab)
    model.keras        the final model
    saved_model/1/     the serving export (export.py); saved_model/ is a TensorFlow Serving base path
    evaluation/        centre-crop and 10-crop report (evaluation.py)
    summary.json       the final figures and where everything went

The directory may be local or in object storage (``gs://...``): every file goes through
``tf.io.gfile`` (:mod:`alexnet_tf.paths`) or an API that uses it (checkpoints, summary writers,
Keras and SavedModel saving), so a preemptible machine keeps nothing the run needs on its disk.

``load_model`` and ``model_statistics`` read a finished (or interrupted) run back.
"""

from __future__ import annotations

import os
from typing import Any

import keras
import tensorflow as tf
from absl import logging
from tensorflow.core.framework import summary_pb2

from alexnet_tf import model as model_lib
from alexnet_tf import paths
from alexnet_tf.config import Config, ConfigError
from alexnet_tf.records import STATISTICS_FILE
from alexnet_tf.statistics import DatasetStatistics, load_statistics

CONFIG_FILE = "config.json"
DATA_DIR = "data"
CHECKPOINT_DIR = "checkpoints"
LOG_DIR = "logs"
LOG_SPLITS = ("train", "validation")  # and "holdout": the per-epoch check of a run with a selection split
PROFILE_DIR = os.path.join(LOG_DIR, "profile")
MODEL_FILE = "model.keras"
EXPORT_DIR = os.path.join("saved_model", "1")  # TensorFlow Serving loads numbered versions
REPORT_DIR = "evaluation"
SUMMARY_FILE = "summary.json"
CURVES_FILE = "curves.png"  # learning curves drawn from the logs (curves.py)
CHECKPOINTS_TO_KEEP = 3
_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
).SerializeToString()
# Config fields that change the model's variables (or, trainable_from, the optimiser's): a resumed
# run must keep them.
MODEL_FIELDS = ("num_classes", "input_size", "width", "towers", "conv_width", "lrn", "overlapping_pooling",
               "batch_norm", "trainable_from")


def _directory_of(path: str) -> str:
    """A work directory (or SavedModel directory) itself, or the directory of a file in it."""
    return path if paths.isdir(path) else os.path.dirname(path)


def write_config(config: Config, workdir: str, resuming: bool) -> str:
    """Writes ``config.json``; when resuming, refuses a configuration of another model shape.

    Returns:
      The path written.

    Raises:
      ConfigError: naming ``config.json`` and the fields, when a resumed run would change the
        model's variables (``MODEL_FIELDS``).
    """
    path = os.path.join(workdir, CONFIG_FILE)
    if resuming and paths.exists(path):
        saved = read_config(workdir)
        changed = [name for name in MODEL_FIELDS if getattr(saved, name) != getattr(config, name)]
        if changed:
            raise ConfigError(
                f"{path}: the checkpoints in {workdir} are of a model with "
                + ", ".join(f"{n}={getattr(saved, n)}" for n in changed)
                + f", not {', '.join(f'{n}={getattr(config, n)}' for n in changed)}; "
                "use another --workdir or the same settings"
            )
        if saved != config:
            logging.warning("Resuming with a changed configuration; %s is rewritten.", path)
    return paths.write_text(path, config.to_json())


def read_config(path: str) -> Config:
    """The configuration of the run in ``path`` (a work directory, or a ``.keras`` file in one).

    Raises:
      FileNotFoundError: naming ``config.json`` when there is none.
    """
    config_path = os.path.join(_directory_of(path), CONFIG_FILE)
    if not paths.exists(config_path):
        raise FileNotFoundError(f"{config_path} not found: --checkpoint must be a training workdir or a "
                                f".keras file with the run's {CONFIG_FILE} beside it")
    return Config.from_json(paths.read_text(config_path))


def latest_checkpoint(workdir: str) -> str | None:
    """The newest checkpoint in ``<workdir>/checkpoints``, or None."""
    return tf.train.latest_checkpoint(os.path.join(workdir, CHECKPOINT_DIR))


class Checkpoints:
    """The chief's CheckpointManager; other workers write to a scratch directory they delete.

    Every worker of a multi-worker run must take part in saving (the variables are gathered
    collectively), but only the chief's copy is kept.

    Args:
      checkpoint: what to save (model, optimizer, run state).
      step_counter: the global step, recorded with each checkpoint.
      workdir: the run's work directory.
      chief: whether this process keeps its checkpoints.
      task_id: this worker's index, naming its scratch directory.
    """

    def __init__(self, checkpoint: tf.train.Checkpoint, step_counter: tf.Variable, workdir: str, chief: bool,
                 task_id: int = 0):
        self.directory = os.path.join(workdir, CHECKPOINT_DIR)
        self.chief = chief
        directory = self.directory if chief else os.path.join(workdir, f".worker_{task_id}_checkpoints")
        self.manager = tf.train.CheckpointManager(
            checkpoint, directory, max_to_keep=CHECKPOINTS_TO_KEEP, step_counter=step_counter
        )

    def latest(self) -> str | None:
        """The chief's newest checkpoint (what a restart resumes from)."""
        return tf.train.latest_checkpoint(self.directory)

    def save(self) -> str:
        """Saves a checkpoint; returns its path (a deleted scratch path on other workers)."""
        path = self.manager.save()
        if not self.chief:
            paths.remove_tree(self.manager.directory)
        return path


def summary_writers(workdir: str, chief: bool, splits: tuple[str, ...] = LOG_SPLITS) -> dict[str, Any]:
    """TensorBoard writers for ``logs/<split>`` (train, validation); no-op writers off the chief."""
    if not chief:
        return {split: tf.summary.create_noop_writer() for split in splits}
    return {split: tf.summary.create_file_writer(os.path.join(workdir, LOG_DIR, split)) for split in splits}


def write_scalars(writer: Any, step: int, values: dict[str, float]) -> None:
    """Writes TensorBoard scalars at ``step`` (TensorBoard itself is not needed to write them)."""
    # tf.summary.scalar needs the tensorboard package; the summary op with the scalars plugin's
    # metadata writes the same event without it.
    with writer.as_default(step=step):
        for name, value in values.items():
            tf.summary.write(name, tf.constant(value, tf.float32), metadata=_SCALAR_METADATA)


def run_summary(workdir: str, data_dir: str, checkpoint: str | None, **figures: Any) -> dict[str, Any]:
    """``summary.json``'s contents: a run's ``figures``, then where its files are.

    The model, the evaluation report and the SavedModel are None until the end of the run fills
    them in.
    """
    return {
        **figures,
        "data_dir": data_dir,
        "workdir": paths.absolute(workdir),
        "checkpoint": checkpoint,
        "tensorboard": paths.absolute(os.path.join(workdir, LOG_DIR)),
        "saved_model": None,
        "model": None,
        "evaluation_report": None,
    }


def write_summary(summary: dict[str, Any], workdir: str) -> str:
    """Writes ``summary.json``; returns its absolute path."""
    return paths.write_json(paths.absolute(os.path.join(workdir, SUMMARY_FILE)), summary)


def model_statistics(path: str) -> DatasetStatistics | None:
    """The training-set statistics that travel with a model, or None for a model without them.

    Training writes ``statistics.json`` (and ``mean_image.npy``) into its work directory, beside
    ``model.keras``, and the export into the SavedModel's directory, so an evaluation on any data
    directory preprocesses as training did.

    Args:
      path: a training workdir, a ``.keras`` file in one, or a SavedModel directory.
    """
    directory = _directory_of(path)
    if not paths.exists(os.path.join(directory, STATISTICS_FILE)):
        logging.warning("%s carries no %s: the data directory's statistics stand in for the training set's",
                        path, STATISTICS_FILE)
        return None
    return load_statistics(directory)


def load_model(path: str) -> tuple[keras.Model, Config]:
    """A trained model and its configuration from a training workdir or a ``.keras`` file.

    A workdir holds ``config.json`` and either ``model.keras`` (preferred) or ``checkpoints/``
    (the latest is restored into a model built from the configuration). A ``.keras`` file
    takes its configuration from a ``config.json`` beside it.

    Raises:
      FileNotFoundError: naming ``path`` when it holds none of these.
      ValueError: naming the checkpoint, when it does not restore every weight of the model.
    """
    config = read_config(path)
    keras_file = path if not paths.isdir(path) else os.path.join(path, MODEL_FILE)
    if paths.exists(keras_file):
        logging.info("Loading %s", keras_file)
        return keras.saving.load_model(keras_file, compile=False), config
    latest = latest_checkpoint(_directory_of(path))
    if latest is None:
        raise FileNotFoundError(f"{path} holds neither {MODEL_FILE} nor a checkpoint in {CHECKPOINT_DIR}/")
    logging.info("Restoring %s", latest)
    model = model_lib.build_from_config(config)
    # Every variable of the model must come from the checkpoint (not its initialiser); the
    # checkpoint's optimizer and run state are not needed here.
    status = tf.train.Checkpoint(model=model).restore(latest)
    try:
        status.assert_existing_objects_matched()
    except AssertionError as e:
        raise ValueError(f"{latest} does not hold the weights of the model in "
                         f"{os.path.join(_directory_of(path), CONFIG_FILE)}: {e}") from e
    status.expect_partial()
    return model, config


def describe_layout(workdir: str) -> str:
    """Where a run's results go, for its first lines."""
    return (f"{paths.absolute(workdir)}: {CHECKPOINT_DIR}/, {LOG_DIR}/ (TensorBoard), {MODEL_FILE}, "
            f"{REPORT_DIR}/, {EXPORT_DIR}/, {SUMMARY_FILE}")


def log_outputs(summary: dict[str, Any]) -> None:
    """A run's last lines: its final figures and where everything went (``summary.json``'s paths)."""
    prefix = "holdout" if summary.get("evaluated_split") == "holdout" else "val"
    errors = ", ".join(f"{key} {summary[key]:.4f}" for key in (f"{prefix}_top1_error", f"{prefix}_top5_error",
                                                               f"{prefix}_ten_crop_top1_error",
                                                               f"{prefix}_ten_crop_top5_error")
                       if summary.get(key) is not None)
    logging.info("Done: %d epochs, %d steps%s", summary["epochs_completed"], summary["global_step"],
                 f"; {errors}" if errors else "")
    if summary.get("evaluation_note"):
        logging.warning("%s", summary["evaluation_note"])
    for key, what in (("checkpoint", "latest checkpoint"), ("tensorboard", "TensorBoard logs"),
                      ("model", "Keras model"), ("evaluation_report", "evaluation report"),
                      ("saved_model", "SavedModel"), ("summary", "summary")):
        if summary.get(key):
            logging.info("%-18s %s", what + ":", summary[key])
