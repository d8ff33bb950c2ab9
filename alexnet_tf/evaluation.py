"""Centre-crop and 10-crop evaluation (section 4.1, section 6): the inference loop.

The centre crop is the one view ``device_preprocess.preprocess_for_eval`` makes (its host half in the
input pipeline, its device half, ``device_preprocess.DeviceFinish``, in the compiled step). The paper's 10-crop
test averages the softmax over the four corner crops, the centre crop and their reflections.
The ten views of an image go through the network in one batch (images x 10 views), with a tenth
as many images per batch as the centre-crop pass, so 10-crop costs about ten centre crops.

Only the top-5 classes of each image leave the device, and a confusion matrix is accumulated,
so memory does not grow with the number of classes times images.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from alexnet_tf import data, device_preprocess, distribute, imagenet, metrics, paths, records, reports
from alexnet_tf.config import Config
from alexnet_tf.preprocess import NUM_CROPS
from alexnet_tf.statistics import DatasetStatistics, load_statistics

VALIDATION_SPLIT = "validation"
HOLDOUT_SPLIT = "holdout"  # the selection split: scored only when the records have no validation split
# What a report on the selection split says (class folders only, train.py --image_dir): the figures are
# not an independent measure, since the same images steered the run.
HOLDOUT_NOTE = ("These images are the selection split (training images held out with --holdout_per_class): "
                "the run checked them every epoch and its schedule watched them, and there was no validation "
                "split. The figures are therefore not independent of the run's choices; for an independent "
                "measure, score images the run never saw (a val/ folder).")

Predictor = Callable[[tf.Tensor], tf.Tensor]


def as_predictor(model: keras.Model | Predictor) -> Predictor:
    """A function images -> probabilities: a Keras model in inference mode, or ``model`` itself."""
    if isinstance(model, keras.Model):
        return lambda images: model(images, training=False)
    return model


def _top_k_step(
    predict: Predictor, ten_crop: bool, k: int, finish: Callable[[Any], tf.Tensor]
) -> Callable[[Any], tf.Tensor]:
    """Batches (finished into [B, s, s, 3], or [B, 10, s, s, 3] for 10-crop) -> int32 top-k [B, k]."""

    def step(features: Any) -> tf.Tensor:
        images = finish(features)
        return distribute.unless_empty_replica(images, lambda: classes(images), lambda: tf.zeros([0, k], tf.int32))

    def classes(images: tf.Tensor) -> tf.Tensor:
        if ten_crop:
            shape = tf.shape(images)
            # All views of all images in one batch through the network.
            views = tf.reshape(images, tf.concat([[-1], shape[2:]], axis=0))
            prob = tf.cast(predict(views), tf.float32)
            prob = tf.reduce_mean(tf.reshape(prob, [shape[0], shape[1], -1]), axis=1)
        else:
            prob = tf.cast(predict(images), tf.float32)
        return metrics.top_k_classes(prob, k)

    return step


def predict_top_k(
    predict: Predictor,
    dataset: tf.data.Dataset,
    num_classes: int,
    ten_crop: bool,
    strategy: tf.distribute.Strategy | None = None,
    progress: bool = True,
    num_batches: int | None = None,
    finish: Callable[[Any], tf.Tensor] | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Runs ``predict`` over ``dataset`` of (images, labels) under ``strategy``.

    Args:
      predict: images -> probabilities.
      dataset: batches of (images, labels), one pass; the images may be ``data.make_dataset``'s
        uint8 features, which ``finish`` turns into float views on the device.
      num_classes: the model's classes.
      ten_crop: the images are [B, 10, s, s, 3]: average the softmax over the views.
      strategy: where to run; the default strategy when None.
      progress: show a progress bar.
      num_batches: the progress bar's total when the dataset cannot tell (records read from
        shards have an unknown cardinality; the converter's manifest knows their count).
      finish: the device's half of the preprocessing (``device_preprocess.DeviceFinish``); None when
        the images are float views already.

    Returns:
      ``(top_k [N, k] int32, labels [N] int32, seconds)`` where ``seconds`` excludes the first
      batch (tracing and pipeline warm-up) when there is more than one batch.
    """
    strategy = strategy or tf.distribute.get_strategy()
    step = _top_k_step(predict, ten_crop, metrics.k_for(num_classes), finish or (lambda images: images))

    distributed = strategy.experimental_distribute_dataset(dataset)

    # One trace for every batch size, the short last batch included.
    @tf.function(input_signature=[distributed.element_spec])
    def distributed_step(batch):
        images, labels = batch
        top_k = strategy.run(step, args=(images,))
        return strategy.gather(top_k, axis=0), strategy.gather(labels, axis=0)

    cardinality = int(dataset.cardinality())
    total = cardinality if cardinality > 0 else num_batches
    bar = keras.utils.Progbar(total, unit_name="batch") if progress else None
    tops, labels = [], []
    first_batch_end = None
    start = time.perf_counter()
    for batch in distributed:
        top_k, batch_labels = distributed_step(batch)
        tops.append(top_k.numpy())
        labels.append(batch_labels.numpy())
        if first_batch_end is None:
            first_batch_end = time.perf_counter()
            first_batch_images = len(labels[0])
        if bar:
            bar.add(1)
    end = time.perf_counter()
    if not tops:
        raise ValueError("the evaluation dataset is empty: the validation shards hold no records")
    tops, labels = np.concatenate(tops).astype(np.int32), np.concatenate(labels).astype(np.int32)
    if len(tops) > first_batch_images:
        seconds = (end - first_batch_end) * len(tops) / (len(tops) - first_batch_images)
    else:
        seconds = end - start
    return tops, labels, seconds


def records_resize_mode(data_dir: str) -> str | None:
    """How the converter resized the records in ``data_dir``: "crop", "squash", "none" (JPEG bytes
    kept), or None when there is no converter manifest to tell."""
    path = os.path.join(data_dir, records.MANIFEST_FILE)
    if not paths.exists(path):
        return None
    options = paths.read_json(path).get("options", {})
    if not options.get("resize"):
        return "none"
    return options.get("resize_mode", "crop")  # recorded only when squash


def _check_resize_mode(config: Config, data_dir: str, report: dict[str, Any]) -> None:
    """For a model trained on squashed images (Caffe's), says how the records were resized."""
    if config.resize_mode == "crop":
        return
    found = records_resize_mode(data_dir)
    report["records_resize_mode"] = found
    if found != config.resize_mode:
        logging.warning(
            "The model was trained on images resized by %s (resize_mode=%s), but the records in %s were %s: they "
            "are evaluated as they are, which is not the model's view; convert them with "
            "data_prep/build_tfrecords.py --resize=%d --resize_mode=%s", config.resize_mode, config.resize_mode,
            data_dir, {"crop": "resized by their shorter side (--resize_mode=crop)",
                       "none": "not resized (no --resize)"}.get(found, "converted by an unknown converter"),
            config.image_size, config.resize_mode)


def view_batch_size(config: Config, ten_crop: bool) -> int:
    """Images per batch of a view: a 10-crop batch holds a tenth, so each step runs as many views."""
    return max(1, config.batch_size // NUM_CROPS) if ten_crop else config.batch_size


def view_datasets(
    config: Config, data_dir: str, stats: DatasetStatistics, ten_crop: bool = True, split: str = VALIDATION_SPLIT
) -> dict[str, tuple[tf.data.Dataset, bool]]:
    """``{"center_crop": (dataset, False), "ten_crop": (dataset, True)}`` over ``split``'s shards.

    The 10-crop batches hold a tenth as many images, so both feed the network the same number
    of views per step.
    """
    pattern = data.file_pattern(data_dir, split)
    views = {"center_crop": (config, False)}
    if ten_crop:
        views["ten_crop"] = (config.replace(batch_size=view_batch_size(config, True)), True)
    return {
        key: (data.make_dataset(pattern, False, view_config, stats=stats, ten_crop=is_ten_crop, repeat=False),
              is_ten_crop)
        for key, (view_config, is_ten_crop) in views.items()
    }


def evaluate(
    model: keras.Model | Predictor,
    config: Config,
    data_dir: str,
    report_dir: str | None = None,
    strategy: tf.distribute.Strategy | None = None,
    ten_crop: bool = True,
    class_names: Sequence[str] | None = None,
    progress: bool = True,
    stats: DatasetStatistics | None = None,
    split: str = VALIDATION_SPLIT,
) -> dict[str, Any]:
    """Top-1/top-5 error of ``model`` on the validation shards in ``data_dir`` (or ``split``'s).

    Args:
      model: a Keras model (built under ``strategy``'s scope when one is given), or a function
        from preprocessed float images to probabilities (e.g. ``export.load_predictor``).
      config: the run's configuration (preprocessing and batch size).
      data_dir: holds ``validation-*`` shards and the training set's statistics.
      report_dir: when given, ``report.json`` and ``report.md`` are written there.
      strategy: the training run's distribution strategy; the default strategy when None.
      ten_crop: also run the paper's 10-crop test.
      class_names: class index -> name, for the per-class table; when None, ImageNet's names
        for a 1000-class model and ``class_i`` otherwise.
      progress: show a progress bar.
      stats: the statistics of the training set the model was trained on (``workdir.model_statistics``);
        when None, those beside the shards in ``data_dir`` (the fallback for models that carry
        none: right only when ``data_dir`` was converted with the model's training set).
      split: ``VALIDATION_SPLIT``, or ``HOLDOUT_SPLIT`` for records without a validation split
        (the report then says, in ``split`` and ``split_note``, that these images steered the run).

    Returns:
      The report: ``{"center_crop": {"top1_error", "top5_error", "images_per_second", ...},
      "ten_crop": {...}, "num_images", "num_classes", "paper", ...}``.
    """
    predict = as_predictor(model)
    if class_names is None and config.num_classes == 1000:
        class_names = imagenet.class_names()
    data.check_labels(data_dir, split, config)
    if stats is None:
        stats = load_statistics(data_dir)
        logging.warning("Preprocessing with the statistics of the data directory (%s), not the model's",
                        stats.source)
    else:
        logging.info("Preprocessing with the model's training-set statistics (%s)", stats.source)
    report: dict[str, Any] = {"data_dir": data_dir, "num_classes": config.num_classes, "statistics": stats.source}
    _check_resize_mode(config, data_dir, report)
    if split != VALIDATION_SPLIT:
        report.update(split=split, split_note=HOLDOUT_NOTE)
        logging.warning("Scoring the %s split, not a validation split: %s", split, HOLDOUT_NOTE)
    num_images = data.manifest_record_count(data_dir, split)
    finish = device_preprocess.DeviceFinish(config, stats)
    for key, (dataset, is_ten_crop) in view_datasets(config, data_dir, stats, ten_crop, split).items():
        logging.info("Evaluating the %s on %s%s", key.replace("_", " "), data_dir,
                     f" ({num_images} images)" if num_images is not None else "")
        batch_size = view_batch_size(config, is_ten_crop)
        top_k, labels, seconds = predict_top_k(
            predict, dataset, config.num_classes, is_ten_crop, strategy=strategy, progress=progress,
            num_batches=-(-num_images // batch_size) if num_images else None, finish=finish,
        )
        result = metrics.summarize(top_k, labels, config.num_classes, class_names)
        result["seconds"] = seconds
        result["images_per_second"] = len(labels) / seconds
        report[key] = result
        report["num_images"] = len(labels)
        logging.info("%s: top-1 error %.2f%%, top-5 error %.2f%%, %.1f images/s", key,
                     100 * result["top1_error"], 100 * result["top5_error"], result["images_per_second"])
    if ten_crop:
        report["ten_crop_vs_centre_cost"] = report["ten_crop"]["seconds"] / report["center_crop"]["seconds"]
    report["paper"] = reports.PAPER_RESULTS
    if report_dir:
        reports.write_report(report, report_dir)
    return report
