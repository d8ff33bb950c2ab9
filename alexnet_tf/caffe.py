"""BVLC's reference AlexNet weights in the paper network: ``.caffemodel`` files and their ``.npy`` conversion.

``bvlc_alexnet`` (Caffe model zoo) is the paper's layout (section 3.5, Figure 2): conv -> ReLU ->
LRN -> max-pool in layers 1 and 2, conv2, conv4 and conv5 in two groups (our towers), 60,965,224
parameters. Only conventions differ from the paper's, and they travel with the model as ``Config``
fields (``reference_config``): LRN with k = 1 and alpha divided by n, BGR inputs with Caffe's mean
subtracted, images squashed to 256x256 before the 227 crop, no PCA lighting. conv1's BGR kernels
are flipped on import, so the model takes RGB like every other model of this project.

Files are read without Caffe: the protobuf wire format is decoded here from the field numbers of
Caffe's ``caffe.proto`` (both the legacy ``NetParameter.layers`` of ``V1LayerParameter`` and the
current ``layer`` of ``LayerParameter``), and the community ``.npy`` (a pickled dict, TensorFlow
layout) is unpickled by an unpickler that builds NumPy arrays, lists and dicts only.
docs/reference-weights.md describes the formats and how to evaluate the real file.
"""

from __future__ import annotations

import dataclasses
import io
import pickle
from collections.abc import Iterator
from typing import Any

import numpy as np
from absl import logging

from alexnet_tf import paths
from alexnet_tf.config import Config, get_config

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

# V1LayerParameter.LayerType (caffe.proto) of the layers read here.
_V1_TYPES = {4: "Convolution", 14: "InnerProduct", 15: "LRN", 17: "Pooling", 18: "ReLU", 6: "Dropout", 20: "Softmax"}
# Field numbers: (name, type, blobs, convolution_param, inner_product_param, lrn_param, pooling_param).
_V1_FIELDS = {"name": 4, "type": 5, "blobs": 6, "conv": 10, "ip": 17, "lrn": 18, "pool": 19}
_V2_FIELDS = {"name": 1, "type": 2, "blobs": 7, "conv": 106, "ip": 117, "lrn": 118, "pool": 121}
_NET_LAYERS_V1, _NET_LAYER_V2 = 2, 100


class ReferenceWeightsError(ValueError):
    """A weights file that is not BVLC's AlexNet, or not a readable one."""


@dataclasses.dataclass
class CaffeLayer:
    """One layer of a ``.caffemodel``: its type, settings and blobs in Caffe's layout."""

    name: str
    type: str
    blobs: list[np.ndarray]
    params: dict[str, dict[int, list]]  # "conv", "ip", "lrn", "pool": field number -> values


# --- The protobuf wire format (developers.google.com/protocol-buffers/docs/encoding) ---


class _TruncatedError(Exception):
    pass


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise _TruncatedError
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value): an int for varints, a memoryview otherwise."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire in (1, 2, 5):
            if wire == 2:
                size, pos = _varint(buf, pos)
            else:
                size = 8 if wire == 1 else 4
            if pos + size > len(buf):
                raise _TruncatedError
            value, pos = buf[pos:pos + size], pos + size
        else:
            raise ReferenceWeightsError(f"wire type {wire} of field {field} is not protobuf's: not a .caffemodel")
        yield field, wire, value


def _grouped(buf: memoryview) -> dict[int, list[tuple[int, Any]]]:
    groups: dict[int, list[tuple[int, Any]]] = {}
    for field, wire, value in _fields(buf):
        groups.setdefault(field, []).append((wire, value))
    return groups


def _numbers(entries: list[tuple[int, Any]], kind: str) -> list:
    """Values of a scalar field, packed or not: kind "u" (varint), "f" (float), "d" (double)."""
    values: list = []
    for wire, value in entries:
        if wire == 0:
            values.append(value)
        elif wire in (1, 5):
            values.extend(np.frombuffer(value, "<f8" if wire == 1 else "<f4").tolist())
        elif kind == "u":
            inner = memoryview(value)
            pos = 0
            while pos < len(inner):
                number, pos = _varint(inner, pos)
                values.append(number)
        else:
            values.extend(np.frombuffer(value, "<f8" if kind == "d" else "<f4").tolist())
    return values


def _text(entries: list[tuple[int, Any]]) -> str:
    return bytes(entries[-1][1]).decode("utf-8", "replace")


def _blob(buf: memoryview, where: str) -> np.ndarray:
    """A BlobProto as an array: ``shape`` (field 7) or the legacy num/channels/height/width (1-4)."""
    fields = _grouped(buf)
    if 7 in fields:
        shape = tuple(_numbers(_grouped(fields[7][-1][1]).get(1, []), "u"))
    else:
        shape = tuple(_numbers(fields.get(n, [(0, 0)]), "u")[-1] for n in (1, 2, 3, 4))
    if 5 in fields:
        chunks = [np.frombuffer(value, "<f4") for wire, value in fields[5]]
    else:
        chunks = [np.frombuffer(value, "<f8").astype(np.float32) for wire, value in fields.get(8, [])]
    data = np.concatenate(chunks) if len(chunks) != 1 else chunks[0]
    if data.size != int(np.prod(shape)):
        raise ReferenceWeightsError(f"{where}: a blob of shape {shape} holds {data.size} values")
    return data.reshape(shape).astype(np.float32)


def _layer(buf: memoryview, legacy: bool, index: int) -> CaffeLayer:
    numbers = _V1_FIELDS if legacy else _V2_FIELDS
    fields = _grouped(buf)
    if legacy and 1 in fields:
        raise ReferenceWeightsError(
            "the file is in Caffe's V0 layer format: upgrade it with Caffe's tools/upgrade_net_proto_binary"
        )
    name = _text(fields[numbers["name"]]) if numbers["name"] in fields else f"#{index}"
    if legacy:
        code = fields.get(numbers["type"], [(0, 0)])[-1][1]
        kind = _V1_TYPES.get(code, f"V1 type {code}")
    else:
        kind = _text(fields[numbers["type"]]) if numbers["type"] in fields else ""
    where = f"layer {name!r}"
    blobs = [_blob(value, where) for _, value in fields.get(numbers["blobs"], [])]
    params = {
        key: _grouped(fields[numbers[key]][-1][1]) for key in ("conv", "ip", "lrn", "pool") if numbers[key] in fields
    }
    return CaffeLayer(name, kind, blobs, params)


def _truncated_layer_name(buf: memoryview, legacy: bool) -> str:
    """The name of a layer the file ends inside, read from the bytes that are there."""
    number = (_V1_FIELDS if legacy else _V2_FIELDS)["name"]
    try:
        for field, wire, value in _fields(buf):
            if field == number and wire == 2:
                return bytes(value).decode("utf-8", "replace")
    except _TruncatedError:
        pass
    return "?"


def read_caffemodel(path: str, data: bytes | None = None) -> list[CaffeLayer]:
    """The layers of a ``.caffemodel`` (a binary ``NetParameter``) in file order, legacy or current.

    Args:
      path: the file, read unless ``data`` holds its bytes already.
      data: the file's bytes.
    """
    buf = memoryview(paths.read_bytes(path) if data is None else data)
    layers: list[CaffeLayer] = []
    pos = 0
    try:
        while pos < len(buf):
            key, pos = _varint(buf, pos)
            field, wire = key >> 3, key & 7
            if wire not in (0, 1, 2, 5):
                raise ReferenceWeightsError(f"{path}: not a .caffemodel (wire type {wire} at byte {pos})")
            if wire != 2:
                _, pos = _varint(buf, pos) if wire == 0 else (None, pos + (8 if wire == 1 else 4))
                continue
            size, pos = _varint(buf, pos)
            if field in (_NET_LAYERS_V1, _NET_LAYER_V2) and pos + size > len(buf):
                legacy = field == _NET_LAYERS_V1
                name = _truncated_layer_name(buf[pos:], legacy)
                raise ReferenceWeightsError(
                    f"{path} is truncated: it ends inside layer {name!r} (layer {len(layers) + 1}), "
                    f"{len(buf) - pos:,} of its {size:,} bytes present; download the file again"
                )
            if field in (_NET_LAYERS_V1, _NET_LAYER_V2):
                layers.append(_layer(buf[pos:pos + size], field == _NET_LAYERS_V1, len(layers) + 1))
            pos += size
    except _TruncatedError:
        raise ReferenceWeightsError(f"{path} is truncated or not a .caffemodel (after {len(layers)} layers)") from None
    if not layers:
        raise ReferenceWeightsError(f"{path}: no layers (neither NetParameter.layers nor .layer): not a .caffemodel")
    return layers


def read_binaryproto_mean(path: str) -> np.ndarray:
    """Caffe's mean image (a BlobProto, (1, 3, H, W) BGR) as (H, W, 3) RGB float32."""
    blob = _blob(memoryview(paths.read_bytes(path)), path)
    if blob.ndim == 4 and blob.shape[0] == 1:
        blob = blob[0]
    if blob.ndim != 3 or blob.shape[0] != 3:
        raise ReferenceWeightsError(f"{path}: a mean image has shape (1, 3, H, W), found {blob.shape}")
    return np.ascontiguousarray(blob[::-1].transpose(1, 2, 0))


# --- The community .npy ---


class _ArraysOnly(pickle.Unpickler):
    """Rebuilds NumPy arrays, lists and dicts; any other class in the pickle is refused."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise ReferenceWeightsError(
                f"the pickle asks for {module}.{name}; a weights file holds only NumPy arrays, lists and dicts, "
                "so it is not unpickled"
            )
        return super().find_class(module.replace("numpy.core.", "numpy._core."), name)


def read_npy(path: str, data: bytes | None = None) -> dict[str, list[np.ndarray]]:
    """A caffe-tensorflow ``.npy``: {name: [weights, biases]} (or {name: {"weights", "biases"}}).

    Args:
      path: the file, read unless ``data`` holds its bytes already.
      data: the file's bytes.
    """
    stream = io.BytesIO(paths.read_bytes(path) if data is None else data)
    try:
        version = np.lib.format.read_magic(stream)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        header = read_header(stream, max_header_size=1 << 20)  # (shape, fortran order, dtype)
    except ValueError as e:
        raise ReferenceWeightsError(f"{path}: not a .npy file ({e})") from e
    if header[2] != np.dtype(object):
        raise ReferenceWeightsError(f"{path}: a {header[2]} array of shape {header[0]}, not a pickled dict of layers")
    try:
        content = _ArraysOnly(stream, encoding="latin1").load()
    except ReferenceWeightsError as e:
        raise ReferenceWeightsError(f"{path}: {e}") from None
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise ReferenceWeightsError(f"{path} is truncated or damaged: {e}") from e
    content = content.item() if isinstance(content, np.ndarray) and content.shape == () else content
    if not isinstance(content, dict):
        raise ReferenceWeightsError(f"{path}: holds a {type(content).__name__}, not a dict of layers")
    layers = {}
    for name, value in content.items():
        key = name.decode("latin1") if isinstance(name, bytes) else str(name)
        if isinstance(value, dict):
            value = [value.get(k, value.get(k.encode())) for k in ("weights", "biases")]
        layers[key] = [np.asarray(v, np.float32) for v in value]
    return layers


# --- The mapping onto the paper network ---


def _setting(layer: CaffeLayer, param: str, number: int, default: int) -> int:
    values = _numbers(layer.params[param].get(number, []), "u") if param in layer.params else []
    return values[0] if values else default


def _check_settings(layer: CaffeLayer, expected: _Expected) -> None:
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
                    f"layer {layer.name!r} (AlexNet's {expected.name}): {key} {value} expected, found {found[key]}"
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
                     "alpha": (_numbers(params.get(2, []), "f") or [1.0])[0],
                     "beta": (_numbers(params.get(3, []), "f") or [0.75])[0],
                     "k": (_numbers(params.get(5, []), "f") or [1.0])[0]}
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
        _check_settings(layer, expected)
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


def reference_statistics(mean_file: str = ""):
    """Caffe's mean as this project's statistics (RGB): the mean image from ``mean_file``, else per channel."""
    from alexnet_tf.statistics import imagenet_statistics

    stats = imagenet_statistics()
    stats.mean_rgb = np.array(CAFFE_MEAN_BGR[::-1], np.float32)
    stats.mean_image = read_binaryproto_mean(mean_file) if mean_file else None
    stats.source = mean_file or "Caffe's ILSVRC-2012 per-channel mean"
    return stats
