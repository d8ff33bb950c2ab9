"""What crosses from the host to the device: one named type per view the network is fed.

The input pipeline's host half (``preprocess.py``) sends uint8 pixels and the few values the
device needs to finish a view; the device half (``device_preprocess.py``) has one function per
type and chooses by type. The types are named tuples, which ``tf.data`` elements, ``tf.function``
arguments and ``tf.distribute`` values carry as structures (their fields are the components), so
a batch of views is the same type with a leading batch dimension on every field.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf


class TrainCrop(NamedTuple):
    """The paper's training view (section 4.1) before its float arithmetic.

    Attributes:
      image: uint8 [..., c, c, 3], the crop of the image_size square, not mirrored.
      crop: int32 [..., 2], the crop's (y, x) in the square: where its mean window is.
      flip: bool [...], mirror the view.
      rgb: float32 [..., 3], the PCA colour offset to add.
    """

    image: tf.Tensor
    crop: tf.Tensor
    flip: tf.Tensor
    rgb: tf.Tensor


class EvalCrop(NamedTuple):
    """The centre-crop test view before its mean subtraction.

    Attributes:
      image: uint8 [..., c, c, 3], the central crop of the image_size square.
      crop: int32 [..., 2], the crop's (y, x) in the square.
    """

    image: tf.Tensor
    crop: tf.Tensor


class TenCropSquare(NamedTuple):
    """The central square the device cuts the paper's ten test patches from.

    Attributes:
      square: uint8 [..., s, s, 3], s = image_size.
    """

    square: tf.Tensor


class FloatImages(NamedTuple):
    """Views finished already (arrays of preprocessed images, random tensors): nothing left to do.

    Attributes:
      images: float32 [..., s, s, 3], s = input_size.
    """

    images: tf.Tensor


HostView = TrainCrop | EvalCrop | TenCropSquare | FloatImages
VIEW_TYPES = (TrainCrop, EvalCrop, TenCropSquare, FloatImages)
