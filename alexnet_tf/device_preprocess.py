"""The float32 views the network sees: the device's half of the preprocessing, and both halves for one image.

``preprocess.py``'s host half (``decode_train_crop``, ``eval_crop``, ``ten_crop_square``) sends uint8
pixels and a few values per image; ``DeviceFinish``, first in the compiled train, validation and
evaluation steps, turns them into the paper's float views: cast, mean image subtracted at the
crop's offset, mirrored, PCA colour offset added, or the ten test patches cut from the
mean-subtracted square. ``preprocess_for_train`` / ``preprocess_for_eval`` / ``preprocess_for_ten_crop``
run both halves on one encoded image (serving, tests).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import tensorflow as tf

from alexnet_tf.config import Config
from alexnet_tf.preprocess import (
    CROP,
    FLIP,
    IMAGE,
    RGB,
    SQUARE,
    eval_crop,
    mean_to_subtract,
    ten_crop,
    ten_crop_square,
    train_crop,
)
from alexnet_tf.statistics import DatasetStatistics

# --------------------------------------------------------------------------------------------
# The device's half


def _mirror_where(flips: tf.Tensor, images: tf.Tensor) -> tf.Tensor:
    """Images [N, h, w, c] mirrored where ``flips`` [N] is true."""
    return tf.where(flips[:, None, None, None], tf.reverse(images, axis=[2]), images)


class DeviceFinish:
    """The device's half of the preprocessing: the host's uint8 features -> the float32 views.

    Called inside the compiled train, validation and evaluation steps on a batch of
    ``train_crop`` / ``eval_crop`` / ``ten_crop_square`` features (any leading dimensions). It
    casts the pixels to float, subtracts the mean image at each crop's offset (or the per-channel
    mean), mirrors the flipped views and adds their colour offsets; for ``SQUARE`` it subtracts
    the mean image from the square and cuts the ten patches. Images that are already float
    (``sources.array_inputs``, ``sources.synthetic_inputs``) pass through unchanged.

    Args:
      config: supplies image_size, input_size, mean_subtraction.
      stats: the training set's statistics; None only when every batch is already float.
    """

    def __init__(self, config: Config, stats: DatasetStatistics | None):
        self.config = config
        self.mean = None if stats is None else mean_to_subtract(config, stats)

    def __call__(self, features: Any) -> Any:
        if not isinstance(features, Mapping):
            return features
        if self.mean is None:
            raise ValueError(
                "the batches hold uint8 crops from data.make_dataset, which need the training set's "
                "statistics on the device: pass stats= (e.g. statistics.load_statistics(data_dir))"
            )
        if SQUARE in features:
            return self._ten_patches(features[SQUARE])
        return self._crop_views(features)

    def _crop_views(self, features: Mapping[str, tf.Tensor]) -> tf.Tensor:
        image = features[IMAGE]
        crop = image.shape[-2]
        leading = tf.shape(image)[:-3]
        pixels = tf.reshape(tf.cast(image, tf.float32), [-1, crop, crop, 3])
        if self.mean.ndim == 3:
            means = self._mean_windows(tf.reshape(tf.cast(features[CROP], tf.int32), [-1, 2]), crop)
        else:
            means = tf.constant(self.mean)
        images = pixels - means
        if FLIP in features:
            # Mirrored after the mean: a mirrored view has the mirrored mean window subtracted.
            images = _mirror_where(tf.reshape(features[FLIP], [-1]), images)
        if RGB in features:
            images = images + tf.reshape(tf.cast(features[RGB], tf.float32), [-1, 1, 1, 3])
        return tf.reshape(images, tf.concat([leading, [crop, crop, 3]], axis=0))

    def _mean_windows(self, offsets: tf.Tensor, crop: int) -> tf.Tensor:
        """[N, crop, crop, 3]: the mean image's window at each (y, x) of ``offsets`` [N, 2]."""
        size = self.mean.shape[0]
        span = tf.range(crop)
        rows = offsets[:, :1] + span  # [N, crop]
        columns = offsets[:, 1:] + span
        pixels = rows[:, :, None] * size + columns[:, None, :]  # [N, crop, crop], into the flat mean
        return tf.gather(tf.constant(self.mean.reshape(size * size, 3)), pixels)

    def _ten_patches(self, square: tf.Tensor) -> tf.Tensor:
        squares = tf.cast(square, tf.float32) - tf.constant(self.mean)
        return ten_crop(squares, self.config.input_size)


# --------------------------------------------------------------------------------------------
# Both halves, for one image


def preprocess_for_train(
    encoded: tf.Tensor, config: Config, stats: DatasetStatistics, seed: tf.Tensor | None = None
) -> tf.Tensor:
    """The paper's training view (section 4.1) of one encoded image: ``train_crop`` then ``DeviceFinish``.

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
    return DeviceFinish(config, stats)(train_crop(encoded, config, stats, seed))


def preprocess_for_eval(encoded: tf.Tensor, config: Config, stats: DatasetStatistics) -> tf.Tensor:
    """The centre-crop test view: central square, its central ``input_size`` crop, minus the mean.

    Graph-friendly (no Python state per call), so it serves inside ``tf.map_fn`` in a SavedModel.

    Returns:
      float32 [input_size, input_size, 3].
    """
    return DeviceFinish(config, stats)(eval_crop(encoded, config))


def preprocess_for_ten_crop(encoded: tf.Tensor, config: Config, stats: DatasetStatistics) -> tf.Tensor:
    """The ten test patches (``ten_crop``) of the mean-subtracted central square.

    Returns:
      float32 [10, input_size, input_size, 3].
    """
    return DeviceFinish(config, stats)(ten_crop_square(encoded, config))
