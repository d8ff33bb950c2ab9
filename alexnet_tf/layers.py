"""The two layers AlexNet has that Keras does not: the paper's LRN and its two-tower convolution."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf
from keras import ops

from alexnet_tf.config import LRN_ALPHA_CONVENTIONS

# Section 3.3: k = 2, n = 5, alpha = 1e-4, beta = 0.75.
LRN_K = 2.0
LRN_N = 5
LRN_ALPHA = 1e-4
LRN_BETA = 0.75


@keras.saving.register_keras_serializable(package="alexnet_tf")
class LocalResponseNormalization(keras.layers.Layer):
    """Local response normalisation across channels, as in section 3.3 of the paper.

        b[x, y, i] = a[x, y, i] / (k + alpha * sum_{j = max(0, i - n/2)}^{min(N - 1, i + n/2)} a[x, y, j]^2) ^ beta

    with the paper's k = 2, n = 5, alpha = 1e-4, beta = 0.75 as defaults. With
    ``convention="paper"`` ``alpha`` multiplies the plain sum of squares, as in the paper. Caffe's
    ``LRN`` layer and ``torch.nn.LocalResponseNorm`` divide alpha by n, so the paper's setting there
    is ``local_size=5, alpha=5e-4, k=2, beta=0.75`` (Caffe) and
    ``LocalResponseNorm(size=5, alpha=5e-4, beta=0.75, k=2.0)`` (torch); ``convention="caffe"``
    takes alpha as those do, so a layer imported from Caffe keeps the file's numbers (bvlc_alexnet:
    ``k=1, alpha=1e-4, convention="caffe"``).

    Computed by ``tf.nn.local_response_normalization`` (``depth_radius = n // 2``) in float32
    whatever the input dtype, and cast back: there is no bfloat16 CPU kernel, and the float16 one
    sums the squares in float16, which overflows (NaN or 0 outputs) once five neighbouring
    activations exceed about 115, well within the range of conv1's ReLUs on 0-255 pixels.
    Inputs are channels-last.

    Args:
      size: n, the number of adjacent channels summed over (odd).
      k: the additive constant.
      alpha: the scale of the sum of squares ("paper"), or that scale times ``size`` ("caffe").
      beta: the exponent.
      convention: "paper" or "caffe", how ``alpha`` is read.
    """

    def __init__(
        self,
        size: int = LRN_N,
        k: float = LRN_K,
        alpha: float = LRN_ALPHA,
        beta: float = LRN_BETA,
        convention: str = "paper",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if size < 1 or size % 2 != 1:
            raise ValueError(f"LocalResponseNormalization: size must be a positive odd number, got {size}")
        if convention not in LRN_ALPHA_CONVENTIONS:
            raise ValueError(
                f"LocalResponseNormalization: convention must be one of {LRN_ALPHA_CONVENTIONS}, got {convention!r}"
            )
        self.size = int(size)
        self.k = float(k)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.convention = convention

    def call(self, inputs):
        x = inputs
        if x.dtype != tf.float32:
            x = tf.cast(x, tf.float32)
        alpha = self.alpha / self.size if self.convention == "caffe" else self.alpha
        y = tf.nn.local_response_normalization(x, depth_radius=self.size // 2, bias=self.k, alpha=alpha, beta=self.beta)
        return tf.cast(y, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "size": self.size,
            "k": self.k,
            "alpha": self.alpha,
            "beta": self.beta,
            "convention": self.convention,
        }


@keras.saving.register_keras_serializable(package="alexnet_tf")
class TowerConv2D(keras.layers.Conv2D):
    """A convolution split into towers that each see only their own share of the channels.

    This is the paper's two-GPU layout (section 3.2, Figure 2): in conv2, conv4 and conv5 each
    GPU's kernels read only the feature maps on that GPU. It computes exactly what
    ``Conv2D(groups=towers)`` computes, with the same kernel shape
    ``(kh, kw, in_channels // towers, filters)`` and the same parameter count, but as
    ``towers`` ordinary convolutions on the channel slices, concatenated. Keras 3 runs grouped
    convolutions through an XLA must-compile function on TensorFlow, which TensorFlow Serving
    builds without XLA cannot load and which was slower on CPU (docs/benchmarks.md).

    Args:
      filters: output channels in all (divisible by ``towers``).
      kernel_size: as for ``Conv2D``.
      towers: how many towers; 1 is an ordinary convolution.
      **kwargs: any other ``Conv2D`` argument except ``groups``.
    """

    def __init__(self, filters: int, kernel_size, towers: int = 2, **kwargs):
        if "groups" in kwargs:
            raise ValueError("TowerConv2D: pass towers=, not groups=")
        super().__init__(filters, kernel_size, groups=towers, **kwargs)
        if self.data_format != "channels_last":
            raise ValueError("TowerConv2D supports channels_last inputs only")
        self.towers = towers

    def convolution_op(self, inputs, kernel):
        if self.towers == 1:
            return super().convolution_op(inputs, kernel)
        input_slices = ops.split(inputs, self.towers, axis=-1)
        kernel_slices = ops.split(kernel, self.towers, axis=-1)
        outputs = [
            ops.conv(
                x,
                w,
                strides=list(self.strides),
                padding=self.padding,
                dilation_rate=self.dilation_rate,
                data_format=self.data_format,
            )
            for x, w in zip(input_slices, kernel_slices, strict=True)
        ]
        return ops.concatenate(outputs, axis=-1)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.pop("groups")
        config["towers"] = self.towers
        return config


@keras.saving.register_keras_serializable(package="alexnet_tf")
class ReplicaDropout(keras.layers.Dropout):
    """Dropout (section 4.2) whose masks are independent across the replicas of a global batch.

    Keras' ``Dropout`` draws its mask from a seed state that every replica shares, so under a
    distribution strategy example i of each replica's share gets the same mask. Here each step
    draws one mask for the whole global batch (replicas x the replica's batch) from that state,
    and each replica keeps the rows of its own examples: every example of the global batch has
    its own mask, whatever the number of replicas and workers, and a run on N replicas drops
    exactly the units a run of the same global batch on one device drops. The seed state is
    the layer's ``seed_generator``, as in ``Dropout``, so checkpoints carry it.
    """

    def call(self, inputs, training=False):
        if not training or self.rate <= 0:
            return inputs
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync if context is not None else 1
        replica = context.replica_id_in_sync_group if context is not None else 0
        seed = tf.cast(self.seed_generator.next(), tf.int32)
        shape = tf.shape(inputs)
        rows = shape[0]
        keep = tf.random.stateless_uniform(tf.concat([[rows * replicas], shape[1:]], axis=0), seed) >= self.rate
        keep = keep[tf.cast(replica, tf.int32) * rows:][:rows]
        scale = tf.cast(1.0 / (1.0 - self.rate), inputs.dtype)
        return tf.where(keep, inputs * scale, tf.zeros_like(inputs))
