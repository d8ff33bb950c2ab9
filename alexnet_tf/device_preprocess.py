"""The float32 views the network sees: the device's half of the preprocessing, and both halves for one image.

``preprocess.py``'s host half sends one of the view types of ``views.py``: uint8 pixels and a few
values per image. The device finishes each type with its own function, first in the compiled
train, validation and evaluation steps: ``finish_train_crop`` (cast, mean image subtracted at
the crop's offset, mirrored, PCA colour offset added), ``finish_eval_crop`` (cast, mean
subtracted), ``finish_ten_crop`` (the ten test patches cut from the mean-subtracted square) and
``finish_float_images`` (nothing left to do). They take the mean and the sizes they use;
``DeviceFinish`` builds them from a ``Config`` and the statistics and chooses by the view's type.
``preprocess_for_train`` / ``preprocess_for_eval`` / ``preprocess_for_ten_crop`` run both halves
on one encoded image (serving, tests).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

from alexnet_tf.config import Config
from alexnet_tf.preprocess import eval_crop, mean_to_subtract, ten_crop, ten_crop_square, train_crop
from alexnet_tf.statistics import DatasetStatistics
from alexnet_tf.views import VIEW_TYPES, EvalCrop, FloatImages, HostView, TenCropSquare, TrainCrop

# --------------------------------------------------------------------------------------------
# The device's half: one function per view


def _mirror_where(flips: tf.Tensor, images: tf.Tensor) -> tf.Tensor:
    """Images [N, h, w, c] mirrored where ``flips`` [N] is true."""
    return tf.where(flips[:, None, None, None], tf.reverse(images, axis=[2]), images)


def _mean_windows(mean: np.ndarray, offsets: tf.Tensor, crop: int) -> tf.Tensor:
    """[N, crop, crop, 3]: the mean image's window at each (y, x) of ``offsets`` [N, 2]."""
    size = mean.shape[0]
    span = tf.range(crop)
    rows = offsets[:, :1] + span  # [N, crop]
    columns = offsets[:, 1:] + span
    pixels = rows[:, :, None] * size + columns[:, None, :]  # [N, crop, crop], into the flat mean
    return tf.gather(tf.constant(mean.reshape(size * size, 3)), pixels)


def _flat_crops(image: tf.Tensor, offsets: tf.Tensor, mean: np.ndarray) -> tuple[tf.Tensor, tf.Tensor]:
    """(pixels, means): the crops as float32 [N, c, c, 3] (any leading dimensions flattened) and
    the mean to subtract from each, its window at the crop's offset or the per-channel mean."""
    crop = image.shape[-2]
    pixels = tf.reshape(tf.cast(image, tf.float32), [-1, crop, crop, 3])
    if mean.ndim == 3:
        return pixels, _mean_windows(mean, tf.reshape(tf.cast(offsets, tf.int32), [-1, 2]), crop)
    return pixels, tf.constant(mean)


def _with_leading(images: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
    """[N, c, c, 3] back to the leading dimensions of ``like`` [..., c, c, 3]."""
    return tf.reshape(images, tf.concat([tf.shape(like)[:-3], images.shape[1:].as_list()], axis=0))


def finish_train_crop(view: TrainCrop, mean: np.ndarray) -> tf.Tensor:
    """The paper's training view (section 4.1) from the host's ``TrainCrop``.

    Args:
      view: uint8 crops [..., c, c, 3] with their offsets, flips and colour offsets.
      mean: ``preprocess.subtracted_mean``: the mean image [s, s, 3] or per-channel [3].

    Returns:
      float32 [..., c, c, 3]: the crop minus the mean at its offset, mirrored, plus its colour offset.
    """
    pixels, means = _flat_crops(view.image, view.crop, mean)
    images = pixels - means
    # Mirrored after the mean: a mirrored view has the mirrored mean window subtracted.
    images = _mirror_where(tf.reshape(view.flip, [-1]), images)
    images = images + tf.reshape(tf.cast(view.rgb, tf.float32), [-1, 1, 1, 3])
    return _with_leading(images, view.image)


def finish_eval_crop(view: EvalCrop, mean: np.ndarray) -> tf.Tensor:
    """The centre-crop test view: float32 [..., c, c, 3], the crop minus the mean at its offset."""
    pixels, means = _flat_crops(view.image, view.crop, mean)
    return _with_leading(pixels - means, view.image)


def finish_ten_crop(view: TenCropSquare, mean: np.ndarray, input_size: int) -> tf.Tensor:
    """The paper's ten test patches (``preprocess.ten_crop``) of the mean-subtracted square.

    Returns:
      float32 [..., 10, input_size, input_size, 3].
    """
    return ten_crop(tf.cast(view.square, tf.float32) - tf.constant(mean), input_size)


def finish_float_images(view: FloatImages) -> tf.Tensor:
    """Views finished already (``sources.array_inputs``, ``sources.synthetic_inputs``): the images."""
    return view.images


class DeviceFinish:
    """The device's half of the preprocessing for a run: each host view -> its float32 view.

    Called inside the compiled train, validation and evaluation steps on a batch of one of the
    types of ``views.py`` (any leading dimensions), it calls that type's function with the
    run's mean and input size.

    Args:
      config: supplies image_size, input_size, mean_subtraction.
      stats: the training set's statistics; None only when every batch is ``FloatImages``.
    """

    def __init__(self, config: Config, stats: DatasetStatistics | None):
        self.input_size = config.input_size
        self.mean = None if stats is None else mean_to_subtract(config, stats)
        self._finishers: dict[type, Callable[..., tf.Tensor]] = {
            TrainCrop: lambda view: finish_train_crop(view, self._require_mean()),
            EvalCrop: lambda view: finish_eval_crop(view, self._require_mean()),
            TenCropSquare: lambda view: finish_ten_crop(view, self._require_mean(), self.input_size),
            FloatImages: finish_float_images,
        }

    def __call__(self, view: HostView) -> tf.Tensor:
        finisher = self._finishers.get(type(view))
        if finisher is None:
            names = ", ".join(f"views.{kind.__name__}" for kind in VIEW_TYPES)
            raise TypeError(
                f"DeviceFinish takes one of {names}, not {type(view).__name__}: wrap float images that "
                "need no preprocessing in views.FloatImages"
            )
        return finisher(view)

    def _require_mean(self) -> np.ndarray:
        if self.mean is None:
            raise ValueError(
                "the batches hold uint8 crops from data.make_dataset, which need the training set's "
                "statistics on the device: pass stats= (e.g. statistics.load_statistics(data_dir))"
            )
        return self.mean


# --------------------------------------------------------------------------------------------
# Both halves, for one image


def preprocess_for_train(
    encoded: tf.Tensor, config: Config, stats: DatasetStatistics, seed: tf.Tensor | None = None
) -> tf.Tensor:
    """The paper's training view (section 4.1) of one encoded image: ``train_crop``, ``finish_train_crop``.

    Central square at ``config.image_size``, a random ``config.input_size`` crop, a random
    horizontal flip, mean subtraction, PCA colour noise with ``config.pca_std`` (0 turns it off).

    Args:
      encoded: a scalar string tensor (JPEG, PNG, ...).
      config: supplies input_size, image_size, mean_subtraction, pca_std.
      stats: the training set's mean and RGB eigen-decomposition.
      seed: int32/int64 [2] for reproducible draws; None draws a fresh seed.

    Returns:
      float32 [input_size, input_size, 3], 0-255 scale minus the mean.
    """
    return finish_train_crop(
        train_crop(encoded, config.image_size, config.input_size, stats, config.pca_std, seed),
        mean_to_subtract(config, stats),
    )


def preprocess_for_eval(encoded: tf.Tensor, config: Config, stats: DatasetStatistics) -> tf.Tensor:
    """The centre-crop test view: central square, its central ``input_size`` crop, minus the mean.

    Graph-friendly (no Python state per call), so it serves inside ``tf.map_fn`` in a SavedModel.

    Returns:
      float32 [input_size, input_size, 3].
    """
    return finish_eval_crop(eval_crop(encoded, config.image_size, config.input_size), mean_to_subtract(config, stats))


def preprocess_for_ten_crop(encoded: tf.Tensor, config: Config, stats: DatasetStatistics) -> tf.Tensor:
    """The ten test patches (``ten_crop``) of the mean-subtracted central square.

    Returns:
      float32 [10, input_size, input_size, 3].
    """
    square = ten_crop_square(encoded, config.image_size)
    return finish_ten_crop(square, mean_to_subtract(config, stats), config.input_size)
