"""BVLC's reference AlexNet weights in the paper network: ``.caffemodel`` files and their ``.npy`` conversion.

``bvlc_alexnet`` (Caffe model zoo) is the paper's layout (section 3.5, Figure 2): conv -> ReLU ->
LRN -> max-pool in layers 1 and 2, conv2, conv4 and conv5 in two groups (our towers), 60,965,224
parameters. Only conventions differ from the paper's, and they travel with the model as ``Config``
fields (``reference_config``): LRN with k = 1 and alpha divided by n, BGR inputs with Caffe's mean
subtracted, images squashed to 256x256 before the 227 crop, no PCA lighting. conv1's BGR kernels
are flipped on import, so the model takes RGB like every other model of this project.

The files are read by ``caffe_files`` (no Caffe, no dependency beyond NumPy); this module checks
them against AlexNet, maps them onto the paper network and builds it. docs/reference-weights.md
describes the formats and how to evaluate the real file.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from absl import logging

from alexnet_tf import paths
from alexnet_tf.caffe_files import (
    CaffeLayer,
    ReferenceWeightsError,
    numbers,
    read_binaryproto_mean,
    read_caffemodel,
    read_npy,
)
from alexnet_tf.config import Config, get_config
from alexnet_tf.statistics import DatasetStatistics, imagenet_statistics

# Caffe's ILSVRC-2012 mean (python/caffe/imagenet/ilsvrc_2012_mean.npy, averaged over its 256x256
# pixels), in Caffe's BGR order on the 0-255 scale.
CAFFE_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)
# bvlc_alexnet's lrn_param (deploy.prototxt: local_size 5, alpha 0.0001, beta 0.75; k is the default 1).
CAFFE_LRN = {"local_size": 5, "alpha": 1e-4, "beta": 0.75, "k": 1.0, "norm_region": 0}
REFERENCE_INPUT_SIZE = 227


@dataclasses.dataclass(frozen=True)
class _Expected:
    name: str
    kernel: tuple[int, ...]  # Caffe's layout: (out, in / group, h, w) or (out, in)
    stride: int = 1
    pad: int = 0
    group: int = 1


# The weighted layers of bvlc_alexnet in file order (models/bvlc_alexnet/deploy.prototxt).
ALEXNET_LAYERS = (
    _Expected("conv1", (96, 3, 11, 11), stride=4),
    _Expected("conv2", (256, 48, 5, 5), pad=2, group=2),
    _Expected("conv3", (384, 256, 3, 3), pad=1),
    _Expected("conv4", (384, 192, 3, 3), pad=1, group=2),
    _Expected("conv5", (256, 192, 3, 3), pad=1, group=2),
    _Expected("fc6", (4096, 9216)),
    _Expected("fc7", (4096, 4096)),
    _Expected("fc8", (1000, 4096)),
)
POOL5_SHAPE = (256, 6, 6)  # fc6's input in Caffe's (channel, row, column) order
# The order of the layers that compute, as deploy.prototxt has them. CaffeNet
# (bvlc_reference_caffenet) has the same shapes but pools before it normalises.
ALEXNET_ORDER = (
    "Convolution", "ReLU", "LRN", "Pooling",
    "Convolution", "ReLU", "LRN", "Pooling",
    "Convolution", "ReLU", "Convolution", "ReLU", "Convolution", "ReLU", "Pooling",
    "InnerProduct", "ReLU", "InnerProduct", "ReLU", "InnerProduct",
)  # fmt: skip
_ORDERED_TYPES = frozenset(ALEXNET_ORDER)

# --- The mapping onto the paper network ---


def _setting(layer: CaffeLayer, param: str, number: int, default: int) -> int:
    values = numbers(layer.params[param].get(number, []), "u") if param in layer.params else []
    return values[0] if values else default


def _check_settings(layer: CaffeLayer, expected: _Expected, path: str) -> None:
    if layer.type == "Convolution" and "conv" in layer.params:
        found = {
            "kernel_size": _setting(layer, "conv", 4, _setting(layer, "conv", 11, 0)),
            "stride": _setting(layer, "conv", 6, _setting(layer, "conv", 13, 1)),
            "pad": _setting(layer, "conv", 3, _setting(layer, "conv", 9, 0)),
            "group": _setting(layer, "conv", 5, 1),
        }
        wanted = {"kernel_size": expected.kernel[2], "stride": expected.stride, "pad": expected.pad,
                  "group": expected.group}
        for key, value in wanted.items():
            if found[key] != value:
                raise ReferenceWeightsError(
                    f"{path}: layer {layer.name!r} (AlexNet's {expected.name}): convolution_param {key} {value} "
                    f"expected, found {found[key]}"
                )


def _check_order(layers: list[CaffeLayer], path: str) -> None:
    computing = [layer for layer in layers if layer.type in _ORDERED_TYPES]
    for index, layer in enumerate(computing):
        wanted = ALEXNET_ORDER[index] if index < len(ALEXNET_ORDER) else "nothing"
        if layer.type != wanted:
            after = computing[index - 1].name if index else "the input"
            hint = (" (pooling before normalisation: this is CaffeNet, bvlc_reference_caffenet, not AlexNet)"
                    if (layer.type, wanted) == ("Pooling", "LRN") else "")
            raise ReferenceWeightsError(
                f"{path}: layer {layer.name!r} is a {layer.type} where AlexNet has {wanted} after "
                f"{after!r}{hint}"
            )
        if layer.type == "LRN" and "lrn" in layer.params:
            params = layer.params["lrn"]
            found = {"local_size": _setting(layer, "lrn", 1, 5), "norm_region": _setting(layer, "lrn", 4, 0),
                     "alpha": (numbers(params.get(2, []), "f") or [1.0])[0],
                     "beta": (numbers(params.get(3, []), "f") or [0.75])[0],
                     "k": (numbers(params.get(5, []), "f") or [1.0])[0]}
            for key, value in CAFFE_LRN.items():
                if not np.isclose(found[key], value, rtol=1e-6):
                    raise ReferenceWeightsError(f"{path}: layer {layer.name!r}: lrn_param {key} {value} expected "
                                                f"(bvlc_alexnet's), found {found[key]}")
        if layer.type == "Pooling" and "pool" in layer.params:
            found = {"pool": _setting(layer, "pool", 1, 0), "kernel_size": _setting(layer, "pool", 2, 0),
                     "stride": _setting(layer, "pool", 3, 1), "pad": _setting(layer, "pool", 4, 0)}
            for key, value in {"pool": 0, "kernel_size": 3, "stride": 2, "pad": 0}.items():
                if found[key] != value:
                    raise ReferenceWeightsError(f"{path}: layer {layer.name!r}: pooling_param {key} {value} "
                                                f"expected (MAX is 0), found {found[key]}")


def _squeezed(array: np.ndarray, rank: int) -> np.ndarray:
    """Legacy 4-D blob dims: (1, 1, out, in) weights and (1, 1, 1, out) biases to rank ``rank``."""
    while array.ndim > rank and array.shape[0] == 1:
        array = array[0]
    return array


def _mismatch(path: str, layer: str, expected: _Expected, what: str, wanted: tuple, found: tuple) -> Exception:
    return ReferenceWeightsError(
        f"{path}: layer {layer!r} does not fit AlexNet's {expected.name}: {what} {wanted} expected, found {found}"
        " (another network, or a one-tower AlexNet?)"
    )


def caffe_to_keras(layers: list[CaffeLayer], path: str = "the file") -> dict[str, list[np.ndarray]]:
    """bvlc_alexnet's blobs as this project's [kernel, bias] per layer (still BGR in conv1).

    Convolutions (out, in / group, h, w) become (h, w, in / group, out): TowerConv2D's kernel,
    whose first out / 2 outputs form tower 1 and read the first half of the input channels, as
    Caffe's group 1 does. fc6's input is pool5 flattened in Caffe's (channel, row, column) order;
    its rows are reordered to Keras' Flatten order (row, column, channel). Fully connected
    weights (out, in) are transposed to (in, out).
    """
    weighted = [layer for layer in layers if layer.blobs]
    weights: dict[str, list[np.ndarray]] = {}
    for index, expected in enumerate(ALEXNET_LAYERS):
        if index >= len(weighted):
            raise ReferenceWeightsError(
                f"{path}: AlexNet's {expected.name} (weights {expected.kernel}) is missing: the file ends after "
                f"{weighted[-1].name if weighted else 'no'} layer; it is truncated or another network"
            )
        layer = weighted[index]
        if len(layer.blobs) != 2:
            raise _mismatch(path, layer.name, expected, "blobs", (2,), (len(layer.blobs),))
        kernel = _squeezed(layer.blobs[0], len(expected.kernel))
        bias = _squeezed(layer.blobs[1], 1)
        if kernel.shape != expected.kernel:
            raise _mismatch(path, layer.name, expected, "weights", expected.kernel, layer.blobs[0].shape)
        if bias.shape != (expected.kernel[0],):
            raise _mismatch(path, layer.name, expected, "biases", (expected.kernel[0],), layer.blobs[1].shape)
        _check_settings(layer, expected, path)
        if kernel.ndim == 4:
            kernel = kernel.transpose(2, 3, 1, 0)
        elif expected.name == "fc6":
            kernel = kernel.reshape((-1, *POOL5_SHAPE)).transpose(2, 3, 1, 0).reshape(-1, kernel.shape[0])
        else:
            kernel = kernel.T
        weights[expected.name] = [np.ascontiguousarray(kernel), bias]
    _check_order(layers, path)
    if len(weighted) > len(ALEXNET_LAYERS):
        extra = weighted[len(ALEXNET_LAYERS)]
        raise ReferenceWeightsError(f"{path}: layer {extra.name!r} has weights after fc8; AlexNet has none")
    return weights


def npy_to_keras(layers: dict[str, list[np.ndarray]], path: str = "the file") -> dict[str, list[np.ndarray]]:
    """A caffe-tensorflow ``.npy``, checked against AlexNet: it is in TensorFlow's layout already."""
    weights = {}
    for expected in ALEXNET_LAYERS:
        if expected.name not in layers:
            raise ReferenceWeightsError(
                f"{path}: no layer {expected.name!r} (it holds {sorted(layers)}): not AlexNet, or truncated"
            )
        found = layers[expected.name]
        out = expected.kernel[0]
        wanted = (*expected.kernel[2:], expected.kernel[1], out) if len(expected.kernel) == 4 else expected.kernel[::-1]
        if len(found) != 2 or found[0].shape != wanted or found[1].shape != (out,):
            raise ReferenceWeightsError(
                f"{path}: layer {expected.name!r}: [weights {wanted}, biases {(out,)}] expected, found "
                f"{[tuple(v.shape) for v in found]} (another network, or a one-tower AlexNet?)"
            )
        weights[expected.name] = list(found)
    logging.info("%s: a .npy has no layer order; it is taken for AlexNet (CaffeNet's would be accepted too)", path)
    return weights


def read_reference_weights(path: str) -> dict[str, list[np.ndarray]]:
    """[kernel, bias] per layer of the paper network from ``path``, conv1 flipped to RGB."""
    data = paths.read_bytes(path)
    if data[:6] == b"\x93NUMPY":
        weights = npy_to_keras(read_npy(path, data), path)
    else:
        weights = caffe_to_keras(read_caffemodel(path, data), path)
    # Caffe's conv1 reads B, G, R: the same kernels read R, G, B once their input axis is reversed.
    weights["conv1"][0] = np.ascontiguousarray(weights["conv1"][0][:, :, ::-1, :])
    return weights


def reference_config(**overrides: Any) -> Config:
    """The paper preset with Caffe's conventions: what bvlc_alexnet was trained and is evaluated with."""
    return get_config(
        "paper",
        lrn_k=CAFFE_LRN["k"],
        lrn_alpha=CAFFE_LRN["alpha"],
        lrn_alpha_convention="caffe",
        channel_order="bgr",
        mean_source="caffe",
        mean_subtraction="channel",
        resize_mode="squash",
        pca_std=0.0,  # trained without the paper's relighting (models/bvlc_alexnet/readme.md)
        bias_init="caffe",
    ).replace(**overrides)


def load_reference_weights(path: str, include_top: bool = True, config: Config | None = None):
    """The paper network carrying BVLC AlexNet's weights from a ``.caffemodel`` or ``.npy``.

    Args:
      path: ``bvlc_alexnet.caffemodel`` (legacy or current protobuf format) or ``bvlc_alexnet.npy``.
      include_top: True for the softmax over the 1000 classes (BVLC's order, sorted wnids: the
        order of ``imagenet_lsvrc_2015_synsets.txt``); False for fc7's features (after its ReLU).
      config: the conventions to build with; default ``reference_config()``.

    Returns:
      A Keras model from RGB images [N, 227, 227, 3], Caffe's mean already subtracted, to
      probabilities [N, 1000] (or fc7 features [N, 4096]).

    Raises:
      ReferenceWeightsError: naming the first layer that does not fit, with what was expected
        and found, for another network, CaffeNet, a truncated or unreadable file.
    """
    import keras

    from alexnet_tf.model import build_from_config

    config = config or reference_config()
    weights = read_reference_weights(path)
    model = build_from_config(config)
    for name, (kernel, bias) in weights.items():
        model.get_layer(name).set_weights([kernel, bias])
    logging.info("Loaded %s into the paper network (LRN k=%g, alpha=%g / 5, conv1 flipped to RGB)",
                 path, config.lrn_k, config.lrn_alpha)
    if include_top:
        return model
    return keras.Model(model.input, model.get_layer("fc7").output, name=f"{model.name}_fc7")


def reference_statistics(mean_file: str = "") -> DatasetStatistics:
    """Caffe's mean as this project's statistics (RGB): the mean image from ``mean_file``, else per channel."""

    stats = imagenet_statistics()
    stats.mean_rgb = np.array(CAFFE_MEAN_BGR[::-1], np.float32)
    stats.mean_image = read_binaryproto_mean(mean_file) if mean_file else None
    stats.source = mean_file or "Caffe's ILSVRC-2012 per-channel mean"
    return stats


def reference_evaluation(path: str, mean_file: str = "") -> tuple[Any, Config, DatasetStatistics]:
    """The model, configuration and statistics that evaluate a reference file as Caffe did.

    Args:
      path: the ``.caffemodel`` or ``.npy``.
      mean_file: Caffe's ``imagenet_mean.binaryproto``; without it, Caffe's per-channel mean.

    Returns:
      (model, config, stats) for ``evaluation.evaluate``: the centre 227 crop of the records'
      256x256 images, Caffe's mean subtracted, RGB (conv1 flipped from BGR on import).
    """
    config = reference_config(mean_subtraction="image", mean_file=mean_file) if mean_file else reference_config()
    stats = reference_statistics(mean_file)
    model = load_reference_weights(path, config=config)
    logging.info(
        "Caffe's conventions: LRN k=%g, alpha=%g/%d; mean %s; RGB input (conv1 flipped from %s); images "
        "resized by %s to %d then the central %d crop (records converted otherwise are evaluated as they are)",
        config.lrn_k, config.lrn_alpha, CAFFE_LRN["local_size"], stats.source, config.channel_order.upper(),
        config.resize_mode, config.image_size, config.input_size,
    )
    return model, config, stats
