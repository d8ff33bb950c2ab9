"""Test support for alexnet_tf.caffe: Caffe's forward pass in NumPy, and writers of the three file formats.

The forward pass follows Caffe's layer definitions (src/caffe/layers: convolution as
cross-correlation with groups and zero padding, LRN across channels, max pooling with ceil
rounding, inner product over the C-order flattening of (channel, row, column) blobs), on one
image at a time in Caffe's (channel, row, column) layout and BGR order. It shares no code with
the package. The writers build the files from the public format definitions: the protobuf
messages from a descriptor of the needed part of BVLC's caffe.proto (field numbers as there, so
the package's hand-written wire decoder is checked against protobuf's own encoder), and the
``.npy`` as caffe-tensorflow lays it out, optionally pickled as Python 2 did.
"""

from __future__ import annotations

import io
import pickle
import struct
from typing import Any

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

# (name, Caffe weights shape, stride, pad, group) of bvlc_alexnet's weighted layers.
ALEXNET = (
    ("conv1", (96, 3, 11, 11), 4, 0, 1),
    ("conv2", (256, 48, 5, 5), 1, 2, 2),
    ("conv3", (384, 256, 3, 3), 1, 1, 1),
    ("conv4", (384, 192, 3, 3), 1, 1, 2),
    ("conv5", (256, 192, 3, 3), 1, 1, 2),
    ("fc6", (4096, 9216), 1, 0, 1),
    ("fc7", (4096, 4096), 1, 0, 1),
    ("fc8", (1000, 4096), 1, 0, 1),
)
SETTINGS = {name: (stride, pad, group) for name, _, stride, pad, group in ALEXNET}
LRN = {"local_size": 5, "alpha": 1e-4, "beta": 0.75, "k": 1.0}
# Weight scales that give trained-like activations on mean-subtracted 0-255 pixels: conv1's ReLUs
# in the hundreds (LRN divides them by several), logits spread over several units.
GAINS = {"conv1": 0.12, "conv2": 0.012, "conv3": 0.02, "conv4": 0.02, "conv5": 0.02,
         "fc6": 0.004, "fc7": 0.02, "fc8": 0.025}  # fmt: skip


def random_weights(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Weights and biases of every layer in Caffe's layout, float32."""
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape, *_ in ALEXNET:
        kernel = rng.standard_normal(shape, dtype=np.float32) * np.float32(GAINS[name])
        bias = rng.uniform(-0.5, 1.0, shape[0]).astype(np.float32)
        weights[name] = (kernel, bias)
    return weights


def random_images(count: int = 2, seed: int = 1) -> np.ndarray:
    """RGB [count, 227, 227, 3] in the range of mean-subtracted pixels, smooth like photographs."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(-110.0, 130.0, (count, 15, 15, 3))
    blocks = np.repeat(np.repeat(coarse, 16, axis=1), 16, axis=2)[:, :227, :227]
    return (blocks + rng.normal(0.0, 15.0, blocks.shape)).astype(np.float32)


# --- Caffe's forward pass, one (C, H, W) image ---


def convolution(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, stride: int, pad: int, group: int) -> np.ndarray:
    channels = x.shape[0]
    out, per_group, kh, kw = kernel.shape
    assert channels == per_group * group
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    rows = (x.shape[1] - kh) // stride + 1
    cols = (x.shape[2] - kw) // stride + 1
    result = np.empty((out, rows, cols))
    for g in range(group):
        inputs = x[g * per_group:(g + 1) * per_group]
        # patches[c, i, j, y, x] = input[c, y * stride + i, x * stride + j]: cross-correlation, as Caffe's im2col.
        patches = np.stack([
            np.stack([inputs[:, i:i + stride * rows:stride, j:j + stride * cols:stride] for j in range(kw)], axis=1)
            for i in range(kh)
        ], axis=1)
        filters = kernel[g * out // group:(g + 1) * out // group].astype(np.float64)
        result[g * out // group:(g + 1) * out // group] = np.tensordot(filters, patches, axes=([1, 2, 3], [0, 1, 2]))
    return result + bias[:, None, None]


def lrn(x: np.ndarray, local_size: int, alpha: float, beta: float, k: float) -> np.ndarray:
    """Caffe's ACROSS_CHANNELS: x / (k + alpha / n * sum of squares over n channels around each) ^ beta."""
    half = (local_size - 1) // 2
    squares = np.pad(x**2, ((half, half), (0, 0), (0, 0)))
    sums = sum(squares[j:j + x.shape[0]] for j in range(local_size))
    return x / (k + alpha / local_size * sums) ** beta


def max_pool(x: np.ndarray, kernel: int = 3, stride: int = 2) -> np.ndarray:
    """Caffe's MAX pooling without padding: ceil((H - kernel) / stride) + 1 outputs, windows clipped at the edge."""
    height, width = x.shape[1:]
    rows = int(np.ceil((height - kernel) / stride)) + 1
    cols = int(np.ceil((width - kernel) / stride)) + 1
    result = np.empty((x.shape[0], rows, cols))
    for r in range(rows):
        for c in range(cols):
            window = x[:, r * stride:min(r * stride + kernel, height), c * stride:min(c * stride + kernel, width)]
            result[:, r, c] = window.max(axis=(1, 2))
    return result


def caffe_forward(weights: dict[str, tuple[np.ndarray, np.ndarray]], image_bgr: np.ndarray) -> dict[str, np.ndarray]:
    """Every blob of bvlc_alexnet's deploy net for one (3, 227, 227) BGR image, in float64."""
    relu = lambda v: np.maximum(v, 0.0)  # noqa: E731
    blobs: dict[str, np.ndarray] = {}
    x = image_bgr.astype(np.float64)
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5"):
        x = blobs[name] = relu(convolution(x, *weights[name], *SETTINGS[name]))
        if name in ("conv1", "conv2"):
            x = blobs[f"norm{name[-1]}"] = lrn(x, **LRN)
        if name in ("conv1", "conv2", "conv5"):
            x = blobs[f"pool{name[-1]}"] = max_pool(x)
    x = x.reshape(-1)  # C-order: (channel, row, column)
    for name in ("fc6", "fc7", "fc8"):
        kernel, bias = weights[name]
        x = kernel.astype(np.float64) @ x + bias
        x = blobs[name] = relu(x) if name != "fc8" else x
    shifted = np.exp(x - x.max())
    blobs["prob"] = shifted / shifted.sum()
    return blobs


# --- caffe.proto's messages (the fields used here, numbered as in BVLC/caffe) ---

_F = descriptor_pb2.FieldDescriptorProto
_MESSAGES = {
    "BlobShape": [("dim", 1, _F.TYPE_INT64, True, None)],
    "BlobProto": [("num", 1, _F.TYPE_INT32, False, None), ("channels", 2, _F.TYPE_INT32, False, None),
                  ("height", 3, _F.TYPE_INT32, False, None), ("width", 4, _F.TYPE_INT32, False, None),
                  ("data", 5, _F.TYPE_FLOAT, True, None), ("shape", 7, _F.TYPE_MESSAGE, False, "BlobShape")],
    "ConvolutionParameter": [("num_output", 1, _F.TYPE_UINT32, False, None), ("pad", 3, _F.TYPE_UINT32, "r", None),
                             ("kernel_size", 4, _F.TYPE_UINT32, "r", None), ("group", 5, _F.TYPE_UINT32, False, None),
                             ("stride", 6, _F.TYPE_UINT32, "r", None)],
    "InnerProductParameter": [("num_output", 1, _F.TYPE_UINT32, False, None)],
    "LRNParameter": [("local_size", 1, _F.TYPE_UINT32, False, None), ("alpha", 2, _F.TYPE_FLOAT, False, None),
                     ("beta", 3, _F.TYPE_FLOAT, False, None), ("k", 5, _F.TYPE_FLOAT, False, None)],
    "PoolingParameter": [("pool", 1, _F.TYPE_INT32, False, None), ("kernel_size", 2, _F.TYPE_UINT32, False, None),
                         ("stride", 3, _F.TYPE_UINT32, False, None)],
    "LayerParameter": [("name", 1, _F.TYPE_STRING, False, None), ("type", 2, _F.TYPE_STRING, False, None),
                       ("bottom", 3, _F.TYPE_STRING, "r", None), ("top", 4, _F.TYPE_STRING, "r", None),
                       ("blobs", 7, _F.TYPE_MESSAGE, "r", "BlobProto"),
                       ("convolution_param", 106, _F.TYPE_MESSAGE, False, "ConvolutionParameter"),
                       ("inner_product_param", 117, _F.TYPE_MESSAGE, False, "InnerProductParameter"),
                       ("lrn_param", 118, _F.TYPE_MESSAGE, False, "LRNParameter"),
                       ("pooling_param", 121, _F.TYPE_MESSAGE, False, "PoolingParameter")],
    "V1LayerParameter": [("bottom", 2, _F.TYPE_STRING, "r", None), ("top", 3, _F.TYPE_STRING, "r", None),
                         ("name", 4, _F.TYPE_STRING, False, None), ("type", 5, _F.TYPE_INT32, False, None),
                         ("blobs", 6, _F.TYPE_MESSAGE, "r", "BlobProto"),
                         ("convolution_param", 10, _F.TYPE_MESSAGE, False, "ConvolutionParameter"),
                         ("inner_product_param", 17, _F.TYPE_MESSAGE, False, "InnerProductParameter"),
                         ("lrn_param", 18, _F.TYPE_MESSAGE, False, "LRNParameter"),
                         ("pooling_param", 19, _F.TYPE_MESSAGE, False, "PoolingParameter")],
    "NetParameter": [("name", 1, _F.TYPE_STRING, False, None),
                     ("layers", 2, _F.TYPE_MESSAGE, "r", "V1LayerParameter"),
                     ("layer", 100, _F.TYPE_MESSAGE, "r", "LayerParameter")],
}
V1_TYPES = {"Convolution": 4, "InnerProduct": 14, "LRN": 15, "Pooling": 17, "ReLU": 18, "Dropout": 6, "Softmax": 20}


def _message_classes() -> dict[str, Any]:
    file = descriptor_pb2.FileDescriptorProto(name="caffe_subset.proto", package="caffe", syntax="proto2")
    for message, fields in _MESSAGES.items():
        proto = file.message_type.add(name=message)
        for name, number, kind, repeated, type_name in fields:
            # ``True``: repeated [packed = true] as in caffe.proto; "r": repeated, not packed.
            field = proto.field.add(name=name, number=number, type=kind,
                                    label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)
            if repeated is True:
                field.options.packed = True
            if type_name:
                field.type_name = f".caffe.{type_name}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"caffe.{name}")) for name in _MESSAGES}


CAFFE = _message_classes()


def net_layers(order: str = "alexnet") -> list[tuple[str, str]]:
    """(name, type) of bvlc_alexnet's deploy net; "caffenet" pools before it normalises."""
    layers = []
    for index in range(1, 6):
        layers += [(f"conv{index}", "Convolution"), (f"relu{index}", "ReLU")]
        if index <= 2:
            block = [(f"norm{index}", "LRN"), (f"pool{index}", "Pooling")]
            layers += block[::-1] if order == "caffenet" else block
        if index == 5:
            layers.append(("pool5", "Pooling"))
    for index in (6, 7):
        layers += [(f"fc{index}", "InnerProduct"), (f"relu{index}", "ReLU"), (f"drop{index}", "Dropout")]
    return [*layers, ("fc8", "InnerProduct"), ("prob", "Softmax")]


def _fill_blob(blob: Any, array: np.ndarray, legacy_dims: bool) -> None:
    if legacy_dims:
        dims = (1,) * (4 - array.ndim) + array.shape
        blob.num, blob.channels, blob.height, blob.width = dims
    else:
        blob.shape.dim.extend(array.shape)
    blob.data.extend(array.reshape(-1).tolist())


def write_caffemodel(
    path: str,
    weights: dict[str, tuple[np.ndarray, np.ndarray]],
    legacy: bool,
    order: str = "alexnet",
    lrn: dict[str, float] | None = None,
    layers: list[tuple[str, str]] | None = None,
) -> bytes:
    """A binary NetParameter: legacy (``layers`` of V1LayerParameter, 4-D blob dims) or current.

    ``weights`` maps layer names to (weights, biases) in Caffe's layout; ``layers`` replaces the
    deploy net's (name, type) list, for other networks.
    """
    net = CAFFE["NetParameter"](name="AlexNet")
    bottom = "data"
    for name, kind in layers or net_layers(order):
        layer = net.layers.add(name=name, type=V1_TYPES[kind]) if legacy else net.layer.add(name=name, type=kind)
        layer.bottom.append(bottom)
        if kind in ("Convolution", "InnerProduct", "LRN", "Pooling"):
            bottom = name
        layer.top.append(bottom)
        if kind == "Convolution":
            kernel = weights[name][0]
            stride, pad, group = SETTINGS.get(name, (1, (kernel.shape[-1] - 1) // 2, 1))
            param = layer.convolution_param
            param.num_output = kernel.shape[0]
            param.kernel_size.append(kernel.shape[-1])
            if stride != 1:
                param.stride.append(stride)
            if pad:
                param.pad.append(pad)
            if group != 1:
                param.group = group
        elif kind == "InnerProduct":
            layer.inner_product_param.num_output = weights[name][0].shape[0]
        elif kind == "LRN":
            for key, value in (lrn or LRN).items():
                setattr(layer.lrn_param, key, value)
        elif kind == "Pooling":
            layer.pooling_param.pool = 0
            layer.pooling_param.kernel_size = 3
            layer.pooling_param.stride = 2
        if name in weights:
            for array in weights[name]:
                _fill_blob(layer.blobs.add(), array, legacy_dims=legacy)
    data = net.SerializeToString()
    with open(path, "wb") as f:
        f.write(data)
    return data


def write_binaryproto_mean(path: str, mean_bgr: np.ndarray) -> None:
    """Caffe's mean image file: one BlobProto of dims (1, 3, H, W), BGR."""
    blob = CAFFE["BlobProto"]()
    _fill_blob(blob, mean_bgr[None], legacy_dims=True)
    with open(path, "wb") as f:
        f.write(blob.SerializeToString())


def tensorflow_layout(weights: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, list[np.ndarray]]:
    """caffe-tensorflow's conversion: kernels (h, w, in / group, out); fc6 over (row, column, channel); fc (in, out)."""
    converted = {}
    for name, (kernel, bias) in weights.items():
        if kernel.ndim == 4:
            kernel = kernel.transpose(2, 3, 1, 0)
        elif name == "fc6":
            kernel = kernel.reshape(4096, 256, 6, 6).transpose(2, 3, 1, 0).reshape(9216, 4096)
        else:
            kernel = kernel.T
        converted[name] = [np.ascontiguousarray(kernel), bias]
    return converted


class _Python2Pickler(pickle._Pickler):
    """Pickles as Python 2 with NumPy 1 did: byte strings (BINSTRING) and numpy.core's module path."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_bytes(self, obj: bytes) -> None:
        size = len(obj)
        header = pickle.SHORT_BINSTRING + bytes([size]) if size < 256 else pickle.BINSTRING + struct.pack("<i", size)
        self.write(header + obj)
        self.memoize(obj)

    def _save_str(self, obj: str) -> None:
        self._save_bytes(obj.encode("latin1"))

    dispatch[bytes] = _save_bytes
    dispatch[str] = _save_str

    def save_global(self, obj: Any, name: str | None = None) -> None:
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode("ascii"))
        self.memoize(obj)


def write_npy(path: str, content: Any, python2: bool = False) -> None:
    """``content`` pickled in a .npy as ``np.save`` does (a 0-d object array), or as Python 2 wrote it."""
    array = np.empty((), dtype=object)
    array[()] = content
    if not python2:
        np.save(path, array, allow_pickle=True)
        return
    stream = io.BytesIO()
    np.lib.format.write_array_header_1_0(stream, {"descr": "|O", "fortran_order": False, "shape": ()})
    _Python2Pickler(stream, protocol=2).dump(array)
    with open(path, "wb") as f:
        f.write(stream.getvalue())
