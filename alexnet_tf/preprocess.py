"""Pure tf image functions: decode, the central square, crops, flips, PCA lighting, mean subtraction.

The paper's data handling (sections 2 and 4.1): the shorter side is rescaled to 256 and the
central 256x256 square kept; training takes random crops of the input size and their horizontal
reflections and adds PCA colour noise; the mean image of the training set is subtracted from the
raw 0-255 pixel values (nothing is divided by a standard deviation). Testing uses the centre crop
or the ten crops of ``ten_crop``.

The work is split in two halves, so that the host does only what needs the encoded bytes:

* On the host (``decode_train_crop``, ``eval_crop``, ``ten_crop_square``, mapped by
  ``data.make_dataset``): decode, the central square, the crop, all in uint8, plus a few values
  per image: the crop's offset, whether to mirror it, the PCA colour offset (``training_draws``
  makes these for a block of images at once; ``train_crop`` is both steps for one image), each
  view a named type of ``views.py`` (``TrainCrop``, ``EvalCrop``, ``TenCropSquare``). A
  227x227x3 crop is 154,587 bytes, a quarter of its float32 view.
* On the device, inside the compiled step (``device_preprocess.py``, one function per view type):
  cast to float, subtract the mean image at the crop's offset, mirror, add the colour offset.
  ``device_preprocess.preprocess_for_train`` / ``preprocess_for_eval`` / ``preprocess_for_ten_crop``
  are both halves for one image (serving, tests).

The ops take the sizes and statistics they use; ``mean_to_subtract`` reads them from a ``Config``.

Three orderings differ from a literal reading and give the same result for less work:

* The central square is cut from the original image first and then resized (rather than resizing
  the whole image and then cutting). Only the square's pixels are decoded and resized; the two
  differ by sub-pixel alignment on the long side only. A resized square is rounded to uint8 (at
  most 0.5 from the float resize).
* Mean subtraction and the colour noise are applied after the crop, with the mean image cropped
  at the same offset. Both are per-pixel, so cropping commutes with them.
* The mirror comes after the mean subtraction: the mirrored crop of (image - mean) is the
  mirrored image crop minus the mirrored mean window, as the paper's flip of the whole view.

When a JPEG's shorter side already equals ``image_size`` (shards written with ``--resize=256``),
only the crop the network will see is decoded (``tf.image.decode_and_crop_jpeg``).

Every function here works eagerly, inside ``Dataset.map`` and inside a ``tf.function``; the
statistics become graph constants.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tensorflow as tf
from absl import logging

from alexnet_tf.config import Config
from alexnet_tf.statistics import DatasetStatistics
from alexnet_tf.views import EvalCrop, TenCropSquare, TrainCrop

# Shrinking (most images) averages the source pixels each output pixel covers: no aliasing from
# 2400-pixel originals, and cheaper in TensorFlow than antialiased bilinear (docs/benchmarks.md). Enlarging
# (68-pixel thumbnails) interpolates bilinearly, where area would repeat pixels.
SHRINK_METHOD = tf.image.ResizeMethod.AREA
ENLARGE_METHOD = tf.image.ResizeMethod.BILINEAR
FLIP_PROBABILITY = 0.5
NUM_CROPS = 10
_SEED_MAX = 2**31 - 1



def decode_rgb(encoded: tf.Tensor) -> tf.Tensor:
    """Decodes JPEG, PNG, GIF or BMP bytes of any size to RGB.

    Args:
      encoded: a scalar string tensor. Grayscale and RGBA images become 3-channel RGB.

    Returns:
      uint8 [height, width, 3].
    """
    image = tf.io.decode_image(encoded, channels=3, dtype=tf.uint8, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def _square_window(height: tf.Tensor, width: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """(offset_y, offset_x, side) of the central square of a height x width image."""
    side = tf.minimum(height, width)
    return (height - side) // 2, (width - side) // 2, side


def _central_square_crop(image: tf.Tensor) -> tf.Tensor:
    shape = tf.shape(image)
    offset_y, offset_x, side = _square_window(shape[0], shape[1])
    return image[offset_y : offset_y + side, offset_x : offset_x + side]


def _resize(image: tf.Tensor, height: int, width: int) -> tf.Tensor:
    """float32 ``image`` at height x width: area when shrinking, bilinear when enlarging."""
    shape = tf.shape(image)
    size = [height, width]
    # One branch per image (each costs the input pipeline a function call); area at the same
    # size copies the pixels exactly.
    shrink = tf.logical_and(shape[0] >= height, shape[1] >= width)
    resized = tf.cond(
        shrink,
        lambda: tf.image.resize(image, size, method=SHRINK_METHOD),
        lambda: tf.image.resize(image, size, method=ENLARGE_METHOD),
    )
    resized.set_shape([height, width, image.shape[-1]])
    return resized


def _resize_square(square: tf.Tensor, image_size: int) -> tf.Tensor:
    """A square image resized to image_size x image_size, as float32 (no resize when it fits)."""
    return _resize(square, image_size, image_size)


def center_square(image: tf.Tensor, image_size: int = 256) -> tf.Tensor:
    """The paper's 256x256 view: the central square, resized so its side is ``image_size``.

    Cutting the square before resizing is the paper's "rescale the shorter side to 256, then
    crop the central 256x256" with fewer pixels resized; area when shrinking, bilinear when enlarging.

    Args:
      image: [height, width, channels], any real or integer dtype, 0-255 scale.
      image_size: the side of the result.

    Returns:
      float32 [image_size, image_size, channels], still on the 0-255 scale.
    """
    return _resize_square(_central_square_crop(tf.convert_to_tensor(image)), image_size)


def _decode_central_square(encoded: tf.Tensor) -> tf.Tensor:
    """uint8 [side, side, 3]: the central square of the encoded image, decoding only it for JPEG."""

    def jpeg() -> tf.Tensor:
        shape = tf.image.extract_jpeg_shape(encoded)
        offset_y, offset_x, side = _square_window(shape[0], shape[1])
        return tf.image.decode_and_crop_jpeg(encoded, tf.stack([offset_y, offset_x, side, side]), channels=3)

    square = tf.cond(tf.io.is_jpeg(encoded), jpeg, lambda: _central_square_crop(decode_rgb(encoded)))
    square.set_shape([None, None, 3])
    return square


def _mirror_if(flip: tf.Tensor | None, image: tf.Tensor) -> tf.Tensor:
    if flip is None:
        return image
    return tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: tf.identity(image))


def _to_uint8(image: tf.Tensor) -> tf.Tensor:
    """Rounded to the nearest integer (not truncated: at most 0.5 from ``image``), as uint8."""
    return tf.saturate_cast(tf.round(image), tf.uint8)


def _decode_square(encoded: tf.Tensor, image_size: int) -> tf.Tensor:
    """uint8 [image_size, image_size, 3]: ``center_square(decode(encoded))`` rounded (exact when it fits)."""
    square = _decode_central_square(encoded)
    shape = tf.shape(square)
    fits = tf.logical_and(shape[0] == image_size, shape[1] == image_size)
    square = tf.cond(fits, lambda: square, lambda: _to_uint8(_resize_square(square, image_size)))
    square.set_shape([image_size, image_size, 3])
    return square


def _decode_crop_of_square(
    encoded: tf.Tensor, image_size: int, offset_y: tf.Tensor, offset_x: tf.Tensor, crop_size: int
) -> tf.Tensor:
    """uint8 [crop_size, crop_size, 3]: ``center_square(decode(encoded))[y:y+c, x:x+c]``, rounded.

    A JPEG whose shorter side already is ``image_size`` needs no resize, so only the crop itself
    is decoded (exact: its pixels are the stored ones); anything else is decoded (its central
    square only, for JPEG), resized in float and the crop rounded to uint8.
    """

    def crop_of(square: tf.Tensor) -> tf.Tensor:
        resized = _resize_square(square, image_size)
        # Only the crop is rounded: the same pixels as rounding the square, fewer of them.
        return _to_uint8(resized[offset_y : offset_y + crop_size, offset_x : offset_x + crop_size])

    def jpeg() -> tf.Tensor:
        # The header read once, one decode: the crop alone when no resize is needed, else the square.
        shape = tf.image.extract_jpeg_shape(encoded)
        square_y, square_x, side = _square_window(shape[0], shape[1])

        def crop_only() -> tf.Tensor:
            window = tf.stack([square_y + offset_y, square_x + offset_x, crop_size, crop_size])
            return tf.image.decode_and_crop_jpeg(encoded, window, channels=3)

        def square_then_crop() -> tf.Tensor:
            window = tf.stack([square_y, square_x, side, side])
            return crop_of(tf.image.decode_and_crop_jpeg(encoded, window, channels=3))

        return tf.cond(side == image_size, crop_only, square_then_crop)

    crop = tf.cond(tf.io.is_jpeg(encoded), jpeg, lambda: crop_of(_central_square_crop(decode_rgb(encoded))))
    crop.set_shape([crop_size, crop_size, 3])
    return crop


def random_crop_offsets(seed: tf.Tensor, height, width, crop_size: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Uniform (offset_y, offset_x) such that the crop lies inside a height x width image.

    Args:
      seed: int32 or int64 [2], for the stateless random ops.
      height, width: the image size (Python ints or scalar int32 tensors).
      crop_size: the side of the crop.
    """
    offsets = _uniform_offsets(seed, tf.stack([height - crop_size + 1, width - crop_size + 1]))
    return offsets[0], offsets[1]


def _uniform_offsets(seed: tf.Tensor, limits: tf.Tensor, count: int | None = None) -> tf.Tensor:
    """int32 [2] (or [count, 2]) offsets, each uniform in [0, limits): row 0 is the same for any count."""
    leading = [] if count is None else [count]
    unit = tf.random.stateless_uniform([*leading, 2], seed=seed, dtype=tf.float32)
    return tf.minimum(tf.cast(unit * tf.cast(limits, tf.float32), tf.int32), limits - 1)


def random_crop(image: tf.Tensor, crop_size: int, seed: tf.Tensor) -> tf.Tensor:
    """A crop_size x crop_size crop at a uniformly random position inside ``image`` [h, w, c]."""
    image = tf.convert_to_tensor(image)
    shape = tf.shape(image)
    offset_y, offset_x = random_crop_offsets(seed, shape[0], shape[1], crop_size)
    crop = image[offset_y : offset_y + crop_size, offset_x : offset_x + crop_size]
    crop.set_shape([crop_size, crop_size, image.shape[-1]])
    return crop


def _flip_decision(seed: tf.Tensor, count: int | None = None) -> tf.Tensor:
    """bool [] (or [count]): mirror with probability FLIP_PROBABILITY; row 0 the same for any count."""
    return tf.random.stateless_uniform([] if count is None else [count], seed=seed) < FLIP_PROBABILITY


def random_flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """The horizontal reflection of ``image`` [h, w, c] with probability FLIP_PROBABILITY."""
    return _mirror_if(_flip_decision(seed), tf.convert_to_tensor(image))


def pca_offset(eigenvalues, eigenvectors, std: float, seed: tf.Tensor, count: int | None = None) -> tf.Tensor:
    """The paper's colour noise for one image (section 4.1): sum_i alpha_i * lambda_i * p_i.

    Args:
      eigenvalues: (3,) in the convention of ``statistics.IMAGENET_EIGENVALUES``: those of the
        covariance of [0, 1] pixels times 255 (the 0-255 covariance's divided by 255), so the
        offset is in 0-255 pixel units.
      eigenvectors: (3, 3), the unit eigenvectors p_i as columns (rows R, G, B).
      std: the standard deviation of alpha_i ~ N(0, std) (the paper's 0.1).
      seed: int32 or int64 [2].
      count: draw this many offsets at once (row 0 is the offset drawn without ``count``).

    Returns:
      float32 [3] (or [count, 3]), the RGB offset to add to every pixel.
    """
    alpha = std * tf.random.stateless_normal([3] if count is None else [count, 3], seed=seed)
    return tf.linalg.matvec(
        tf.constant(eigenvectors, tf.float32), alpha * tf.constant(eigenvalues, tf.float32)
    )


def ten_crop(image: tf.Tensor, crop_size: int) -> tf.Tensor:
    """The paper's ten test patches (section 4.1) of ``image`` [..., h, w, c].

    Order: top-left, top-right, bottom-left, bottom-right and centre crops of ``image``, then the
    same five positions of its mirror image ``image[..., :, ::-1, :]``. The centre crop starts at
    ((h - crop_size) // 2, (w - crop_size) // 2); the mirror's centre crop is its exact reflection
    (it starts at column ``w - crop_size - (w - crop_size) // 2`` of the mirror, one column further
    when ``w - crop_size`` is odd, as it is for 256 -> 227), so patch 9 is patch 4 reflected.
    Leading dimensions (a batch) are kept: [B, h, w, c] gives [B, 10, ...].

    Returns:
      [..., 10, crop_size, crop_size, c], the dtype of ``image``.
    """
    image = tf.convert_to_tensor(image)
    shape = tf.shape(image)
    bottom, right = shape[-3] - crop_size, shape[-2] - crop_size
    corners = [(0, 0), (0, right), (bottom, 0), (bottom, right)]
    crops = []
    for view, centre_x in ((image, right // 2), (tf.reverse(image, axis=[-2]), right - right // 2)):
        crops.extend(view[..., y : y + crop_size, x : x + crop_size, :] for y, x in [*corners, (bottom // 2, centre_x)])
    patches = tf.stack(crops, axis=-4)
    patches.set_shape([*image.shape[:-3], NUM_CROPS, crop_size, crop_size, image.shape[-1]])
    return patches


def subtracted_mean(stats: DatasetStatistics, image_size: int, mean_subtraction: str = "image") -> np.ndarray:
    """The mean the pipeline subtracts: [image_size, image_size, 3] or per-channel [3], float32.

    ``mean_subtraction="image"`` uses the statistics' mean image, resized to ``image_size`` when
    it was computed at another size; without a mean image the per-channel mean stands in.
    ``"channel"`` always takes the per-channel mean.
    """
    if mean_subtraction == "image" and stats.mean_image is not None:
        mean = np.asarray(stats.mean_image, np.float32)
        if mean.shape[:2] != (image_size, image_size):
            # Eagerly, once per trace, even when called while a graph is being built.
            with tf.init_scope():
                mean = _resize(tf.constant(mean), image_size, image_size).numpy()
        return mean
    if mean_subtraction == "image":
        logging.warning(
            "The statistics (%s) have no mean image: subtracting per-channel means.", stats.source
        )
    return np.asarray(stats.mean_rgb, np.float32).reshape(3)


def mean_to_subtract(config: Config, stats: DatasetStatistics) -> np.ndarray:
    """``subtracted_mean`` for a run's configuration (image_size, mean_subtraction)."""
    return subtracted_mean(stats, config.image_size, config.mean_subtraction)


def _seed_or_random(seed: tf.Tensor | None) -> tf.Tensor:
    if seed is None:
        return tf.random.uniform([2], maxval=_SEED_MAX, dtype=tf.int32)
    return tf.convert_to_tensor(seed)


# --------------------------------------------------------------------------------------------
# The host's half: uint8 pixels and a few values per image


class TrainingDraws(NamedTuple):
    """The random choices of training views (``training_draws``): one row per view.

    Attributes:
      crop: int32 [..., 2], the crop's (y, x) in the image_size square.
      flip: bool [...], mirror the view.
      rgb: float32 [..., 3], the PCA colour offset.
    """

    crop: tf.Tensor
    flip: tf.Tensor
    rgb: tf.Tensor


def training_draws(
    seed: tf.Tensor, count: int, image_size: int, input_size: int, stats: DatasetStatistics, pca_std: float
) -> TrainingDraws:
    """The paper's random choices (section 4.1) for ``count`` training views, from one seed.

    For each view: a uniform ``input_size`` crop position in the ``image_size`` square, whether
    to mirror it (probability FLIP_PROBABILITY) and the PCA colour offset (``pca_std``; 0 turns
    it off). Drawn for many views at once, a handful of ops per block instead of per image: the
    input pipeline draws blocks and hands one row to each record. The first row is what
    ``train_crop`` draws for one image from the same seed.

    Args:
      seed: int32/int64 [2], for the stateless random ops.
      count: how many views.
      image_size: the side of the central square.
      input_size: the side of the crop.
      stats: the training set's RGB eigen-decomposition.
      pca_std: the standard deviation of the colour noise's alphas (the paper's 0.1).

    Returns:
      ``TrainingDraws(crop=int32 [count, 2], flip=bool [count], rgb=float32 [count, 3])``.
    """
    seeds = tf.random.experimental.stateless_split(tf.convert_to_tensor(seed), 3)
    limit = image_size - input_size + 1
    if pca_std > 0:
        rgb = pca_offset(stats.eigenvalues, stats.eigenvectors, pca_std, seeds[2], count)
    else:
        rgb = tf.zeros([count, 3])
    return TrainingDraws(
        crop=_uniform_offsets(seeds[0], tf.constant([limit, limit]), count),
        flip=_flip_decision(seeds[1], count),
        rgb=rgb,
    )


def decode_train_crop(encoded: tf.Tensor, draws: TrainingDraws, image_size: int, input_size: int) -> TrainCrop:
    """The host's half of the training view of one encoded image, given its draws.

    Args:
      encoded: a scalar string tensor (JPEG, PNG, ...).
      draws: one row of ``training_draws``.
      image_size: the side of the central square.
      input_size: the side of the crop.

    Returns:
      The crop (uint8, not mirrored) with its draws; ``device_preprocess.finish_train_crop`` does the rest.
    """
    image = _decode_crop_of_square(encoded, image_size, draws.crop[0], draws.crop[1], input_size)
    return TrainCrop(image=image, crop=draws.crop, flip=draws.flip, rgb=draws.rgb)


def train_crop(
    encoded: tf.Tensor, image_size: int, input_size: int, stats: DatasetStatistics, pca_std: float,
    seed: tf.Tensor | None = None,
) -> TrainCrop:
    """The host's half of the paper's training view (section 4.1) of one encoded image.

    ``training_draws`` for one view, then ``decode_train_crop``.

    Args:
      encoded: a scalar string tensor (JPEG, PNG, ...).
      image_size: the side of the central square.
      input_size: the side of the crop.
      stats: the training set's RGB eigen-decomposition.
      pca_std: the colour noise's standard deviation (0 turns it off).
      seed: int32/int64 [2] for reproducible draws; None draws a fresh seed.

    Returns:
      ``TrainCrop``: uint8 [c, c, 3] (not mirrored), int32 [2], bool [], float32 [3].
    """
    draws = training_draws(_seed_or_random(seed), 1, image_size, input_size, stats, pca_std)
    return decode_train_crop(encoded, tf.nest.map_structure(lambda value: value[0], draws), image_size, input_size)


def eval_crop(encoded: tf.Tensor, image_size: int, input_size: int) -> EvalCrop:
    """The host's half of the centre-crop test view: uint8 [c, c, 3] and its offset, int32 [2]."""
    size, crop = image_size, input_size
    offset = (size - crop) // 2
    return EvalCrop(
        image=_decode_crop_of_square(encoded, size, offset, offset, crop),
        crop=tf.constant([offset, offset], tf.int32),
    )


def ten_crop_square(encoded: tf.Tensor, image_size: int) -> TenCropSquare:
    """The host's half of the ten test patches: the central square, uint8 [s, s, 3].

    One uint8 square is 196,608 bytes at 256, against 6.2 MB for ten float32 patches of 227.
    """
    return TenCropSquare(square=_decode_square(encoded, image_size))
