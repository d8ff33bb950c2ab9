"""Caffe's weight files read without Caffe: ``.caffemodel``, ``.binaryproto`` and the community ``.npy``.

The protobuf wire format is decoded here from the field numbers of BVLC's ``caffe.proto``: a
``.caffemodel`` is a binary ``NetParameter`` whose layers are either the legacy ``layers``
(field 2) of ``V1LayerParameter`` or the current ``layer`` (field 100) of ``LayerParameter``;
their ``BlobProto`` weights carry a ``shape`` (field 7) or the legacy 4-D num, channels, height,
width (fields 1-4), and the values as packed floats (field 5). The community ``.npy``
(caffe-tensorflow's conversion) is a pickled dict; it is unpickled by an unpickler that builds
NumPy arrays, lists and dicts only. docs/reference-weights.md describes the formats.
"""

from __future__ import annotations

import dataclasses
import io
import pickle
from collections.abc import Iterator
from typing import Any

import numpy as np

from alexnet_tf import paths
from alexnet_tf.config import ConfigError

# V1LayerParameter.LayerType (caffe.proto) of the layers read here.
_V1_TYPES = {4: "Convolution", 14: "InnerProduct", 15: "LRN", 17: "Pooling", 18: "ReLU", 6: "Dropout", 20: "Softmax"}
# Field numbers: (name, type, blobs, convolution_param, inner_product_param, lrn_param, pooling_param).
_V1_FIELDS = {"name": 4, "type": 5, "blobs": 6, "conv": 10, "ip": 17, "lrn": 18, "pool": 19}
_V2_FIELDS = {"name": 1, "type": 2, "blobs": 7, "conv": 106, "ip": 117, "lrn": 118, "pool": 121}
_NET_LAYERS_V1, _NET_LAYER_V2 = 2, 100


class ReferenceWeightsError(ConfigError):
    """A weights file that is not BVLC's AlexNet, or not a readable one."""


@dataclasses.dataclass
class CaffeLayer:
    """One layer of a ``.caffemodel``: its type, settings and blobs in Caffe's layout."""

    name: str
    type: str
    blobs: list[np.ndarray]
    # "conv", "ip", "lrn", "pool" (the *_param messages): field number -> its (wire type, value) entries.
    params: dict[str, dict[int, list[tuple[int, Any]]]]



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


def numbers(entries: list[tuple[int, Any]], kind: str) -> list:
    """Values of a repeated or scalar field, packed or not: kind "u" (varint), "f" (float), "d" (double)."""
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
        shape = tuple(numbers(_grouped(fields[7][-1][1]).get(1, []), "u"))
    else:
        shape = tuple(numbers(fields.get(n, [(0, 0)]), "u")[-1] for n in (1, 2, 3, 4))
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
