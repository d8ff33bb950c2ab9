"""The paper's network (section 3.5, Figure 2) as a Keras functional model."""

from __future__ import annotations

import keras

from alexnet_tf.config import check_model
from alexnet_tf.layers import LRN_ALPHA, LRN_K, LocalResponseNormalization, ReplicaDropout, TowerConv2D

PAPER_INPUT_SIZE = 227
WEIGHT_STDDEV = 0.01  # section 5: weights from N(0, 0.01)
# Section 5: "We initialized the neuron biases in the second, fourth, and fifth convolutional
# layers, as well as in the fully-connected hidden layers, with the constant 1." Caffe's
# reference model uses 0.1 there, because 1 stalls training on some setups.
POSITIVE_BIAS = {"paper": 1.0, "caffe": 0.1}
POSITIVE_BIAS_LAYERS = ("conv2", "conv4", "conv5", "fc6", "fc7")
PIXEL_STDDEV = 58.0  # of mean-subtracted ImageNet pixels on the 0-255 scale
# Section 3.4: pooling windows of z = 3 at stride s = 2 overlap. The paper's comparison pools
# z = 2 at s = 2, which gives the same output sizes at every layer of the paper's network.
POOL_SIZE = 3
ADJACENT_POOL_SIZE = 2
POOL_STRIDE = 2


def _conv_output(size: int, kernel: int, stride: int) -> int:
    return (size - kernel) // stride + 1


def feature_map_sizes(input_size: int, overlapping_pooling: bool = True) -> dict[str, int]:
    """Spatial size after conv1, pool1, pool2 and pool5 for a square input.

    3x3/2 and 2x2/2 pooling give the same sizes from odd inputs (55 -> 27 -> 13 -> 6 in the
    paper's network); from an even one 2x2/2 gives one more.
    """
    window = POOL_SIZE if overlapping_pooling else ADJACENT_POOL_SIZE
    conv1 = _conv_output(input_size, 11, 4)
    pool1 = _conv_output(conv1, window, POOL_STRIDE)
    pool2 = _conv_output(pool1, window, POOL_STRIDE)
    pool5 = _conv_output(pool2, window, POOL_STRIDE)
    return {"conv1": conv1, "pool1": pool1, "pool2": pool2, "pool5": pool5}


def build_alexnet(
    num_classes: int = 1000,
    input_size: int = PAPER_INPUT_SIZE,
    width: float = 1.0,
    towers: int = 2,
    dropout: float = 0.5,
    bias_init: str = "paper",
    weight_init: str = "paper",
    lrn: bool = True,
    overlapping_pooling: bool = True,
    conv_width: float = 1.0,
    batch_norm: bool = False,
    lrn_k: float = LRN_K,
    lrn_alpha: float = LRN_ALPHA,
    lrn_alpha_convention: str = "paper",
    seed: int | None = None,
    name: str = "alexnet",
) -> keras.Model:
    """AlexNet as published, or a scaled variant of it built by the same code.

    The paper says its inputs are 224x224, but an 11x11 convolution with stride 4 and no
    padding gives 55x55 (the size Figure 2 shows) only from 227x227: (227 - 11) / 4 + 1 = 55,
    while (224 - 11) / 4 + 1 is not a whole number. So the input is 227, as in Caffe.

    Layers (section 3.5): conv1 96@11x11/4, ReLU, lrn1, pool1 (3x3/2, overlapping, section 3.4);
    conv2 256@5x5 in two towers, ReLU, lrn2, pool2; conv3 384@3x3 over both towers; conv4
    384@3x3 and conv5 256@3x3 in two towers, pool5; fc6 and fc7 4096 with dropout 0.5
    (section 4.2); fc8 ``num_classes``, then the softmax ``prob`` (float32 under mixed
    precision). With the defaults it has 60,965,224 parameters.

    Args:
      num_classes: width of fc8.
      input_size: side of the square RGB input; at least 67, so that pool5 is not empty.
      width: multiplies the channels of every convolution (kept divisible by ``towers``) and
        the units of fc6 and fc7; 1.0 is the paper's network.
      towers: 2 for the paper's two-GPU connectivity, 1 for the single-tower variant: full
        connectivity in conv2, conv4 and conv5 at the same width (62,378,344 parameters).
      dropout: rate of the dropout after fc6 and fc7.
      bias_init: "paper" (biases 1 in conv2, conv4, conv5, fc6, fc7) or "caffe" (0.1 there);
        all other biases are 0.
      weight_init: "paper" (all weights N(0, 0.01)) or "he" (variance 2 / fan_in, truncated
        normal, with the pixels divided by their standard deviation, 58, before conv1).
        With N(0, 0.01) the signal shrinks from layer to layer, the more so the narrower the
        network, and training sits on a plateau before it starts; scaled-down CPU variants
        use "he" to skip it.
      lrn: the paper's local response normalisation after conv1 and conv2 (section 3.3);
        False leaves lrn1 and lrn2 out (the paper's ablation: +1.4 / +1.2 points of error).
      overlapping_pooling: 3x3 pooling windows at stride 2 (section 3.4); False pools 2x2 at
        stride 2, the paper's non-overlapping comparison (+0.4 / +0.3 points of error).
      conv_width: multiplies the channels of the convolutions only, on top of ``width``. The
        paper's one-GPU comparison (section 3.2: +1.7 / +1.2 points of error) is ``towers=1,
        conv_width=0.5``: one tower with half the kernels of each convolutional layer.
      batch_norm: not in the paper (off there): batch normalisation (Ioffe and Szegedy, 2015)
        after each convolution, before its ReLU; the convolutions then have no biases, and
        ``bias_init`` applies to fc6 and fc7 only. Each replica normalises by its own share of
        the batch; the trainer keeps the moving statistics equal across replicas.
      lrn_k: LRN's additive constant (section 3.3: 2; Caffe's bvlc_alexnet: 1).
      lrn_alpha: LRN's alpha, read by ``lrn_alpha_convention``.
      lrn_alpha_convention: "paper" (alpha times the sum of squares) or "caffe" (alpha / 5 times it).
      seed: makes the initial weights reproducible.
      name: the model's name.

    Returns:
      A functional model from ``image`` [batch, input_size, input_size, 3] (mean-subtracted
      pixels) to class probabilities [batch, num_classes].
    """
    check_model(input_size, width, towers, conv_width, dropout, bias_init, weight_init, overlapping_pooling,
                num_classes)

    def channels(n: int) -> int:
        return max(towers, round(n * width * conv_width / towers) * towers)

    def units(n: int) -> int:
        return max(1, round(n * width))

    layer_seeds = iter(range(100)) if seed is None else iter(range(seed * 100, seed * 100 + 100))

    def initializers(layer_name: str) -> dict:
        weight_seed = None if seed is None else next(layer_seeds)
        bias = POSITIVE_BIAS[bias_init] if layer_name in POSITIVE_BIAS_LAYERS else 0.0
        if weight_init == "paper":
            kernel_initializer = keras.initializers.RandomNormal(0.0, WEIGHT_STDDEV, seed=weight_seed)
        else:
            kernel_initializer = keras.initializers.VarianceScaling(
                2.0, mode="fan_in", distribution="truncated_normal", seed=weight_seed
            )
        return dict(
            name=layer_name,
            kernel_initializer=kernel_initializer,
            bias_initializer=keras.initializers.Constant(bias),
        )

    def conv(x, layer_name, filters, kernel, stride=1, split=1):
        padding = "valid" if kernel == 11 else "same"
        layer = TowerConv2D(
            channels(filters), kernel, towers=split, strides=stride, padding=padding,
            activation=None if batch_norm else "relu", use_bias=not batch_norm, **initializers(layer_name),
        )
        x = layer(x)
        if not batch_norm:
            return x
        x = keras.layers.BatchNormalization(name=f"{layer_name}_bn")(x)
        return keras.layers.ReLU(name=f"{layer_name}_relu")(x)

    def pool(x, layer_name):
        window = POOL_SIZE if overlapping_pooling else ADJACENT_POOL_SIZE
        return keras.layers.MaxPooling2D(pool_size=window, strides=POOL_STRIDE, name=layer_name)(x)

    def normalise(x, layer_name):
        if not lrn:
            return x
        return LocalResponseNormalization(k=lrn_k, alpha=lrn_alpha, convention=lrn_alpha_convention, name=layer_name)(x)

    inputs = keras.Input(shape=(input_size, input_size, 3), name="image")
    x = inputs
    if weight_init == "he":
        # He et al.'s variance assumes unit-variance inputs. Scaling the pixels, rather than
        # shrinking conv1's weights by the same factor, keeps conv1's updates in proportion to
        # its weights (shrunk weights would see 58^2 times larger relative steps).
        x = keras.layers.Rescaling(1.0 / PIXEL_STDDEV, name="pixel_scale")(x)
    x = conv(x, "conv1", 96, 11, stride=4)
    x = pool(normalise(x, "lrn1"), "pool1")
    x = conv(x, "conv2", 256, 5, split=towers)
    x = pool(normalise(x, "lrn2"), "pool2")
    x = conv(x, "conv3", 384, 3)
    x = conv(x, "conv4", 384, 3, split=towers)
    x = conv(x, "conv5", 256, 3, split=towers)
    x = pool(x, "pool5")
    x = keras.layers.Flatten(name="flatten")(x)
    for index in (6, 7):
        x = keras.layers.Dense(units(4096), activation="relu", **initializers(f"fc{index}"))(x)
        # Independent masks on every replica (Keras' Dropout repeats one replica's masks).
        x = ReplicaDropout(dropout, name=f"dropout{index}")(x)
    logits = keras.layers.Dense(num_classes, **initializers("fc8"))(x)
    probabilities = keras.layers.Activation("softmax", dtype="float32", name="prob")(logits)
    return keras.Model(inputs, probabilities, name=name)


def build_from_config(config, seed: int | None = None) -> keras.Model:
    """``build_alexnet`` with the model fields of a ``Config``."""
    return build_alexnet(
        num_classes=config.num_classes,
        input_size=config.input_size,
        width=config.width,
        towers=config.towers,
        dropout=config.dropout,
        bias_init=config.bias_init,
        weight_init=config.weight_init,
        lrn=config.lrn,
        overlapping_pooling=config.overlapping_pooling,
        conv_width=config.conv_width,
        batch_norm=config.batch_norm,
        lrn_k=config.lrn_k,
        lrn_alpha=config.lrn_alpha,
        lrn_alpha_convention=config.lrn_alpha_convention,
        seed=seed,
    )
