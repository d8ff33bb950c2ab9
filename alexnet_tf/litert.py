"""A LiteRT (formerly TensorFlow Lite) model with int8 weights: the trained network for any CPU.

At batch 1 AlexNet is bound by reading its weights (fc6-fc8 hold 58.6 M of 61 M). Dynamic-range
quantisation stores every convolution and fully connected kernel in int8, a quarter of float32,
and the runtime's XNNPACK kernels quantise the activations on the fly; biases, LRN, pooling and the
softmax stay float32. LRN is written in elementwise ops (``ElementwiseLRN``) so that XNNPACK runs
the whole network: LiteRT's own LRN kernel, outside XNNPACK, took half the batch-1 time. Unlike
the bfloat16 SavedModel, this pays on any CPU (x86 with or without AVX-512, ARM).
``docs/serving.md`` compares the exports, and says why full-integer quantisation was not chosen.

One file, ``PATH.tflite``, with one signature ``serving_default``:

* input ``image``: float32 [batch, input_size, input_size, 3], the centre crop in 0-255 RGB pixel
  values, as ``centre_crop`` makes it from JPEG or PNG bytes. The training set's mean (the mean
  image's centre window, or the per-channel mean) is subtracted inside the file, so a caller needs
  no statistics. The input is float32, not uint8: the mean is subtracted in float32 anyway (a
  uint8 input would only add a cast), and the evaluator's other nine views (corners and
  mirrors, whose mean window lies elsewhere) are not whole pixel values once compensated
  (``load_predictor``).
* output ``prob``: float32 [batch, num_classes], the softmax.

Beside it, named after it (``sidecar_paths``): ``PATH.labels.txt`` (the class names, one a line,
in class order) and ``PATH.json`` (the preprocessing, the input and output, the wnids, the run's
configuration and statistics), plus ``PATH.mean_image.npy`` when the model subtracts a mean image
(only the evaluator's 10-crop views need it; serving does not).

The file is made from the float32 network (a mixed-precision model is copied to float32 first) by
TensorFlow's converter; it runs in the ``ai-edge-litert`` runtime, the package's optional
``litert`` extra (``LiteRTModel``), by default with XNNPACK.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Sequence
from typing import Any, NamedTuple

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from alexnet_tf import export, paths, preprocess, reports, statistics
from alexnet_tf import workdir as workdir_lib
from alexnet_tf.config import Config
from alexnet_tf.evaluation import Predictor
from alexnet_tf.layers import LocalResponseNormalization
from alexnet_tf.statistics import DatasetStatistics

SIGNATURE = "serving_default"
INPUT = "image"
OUTPUT = "prob"
# "dynamic_range": int8 weights, float activations (the export); "float32": the network unchanged
# (a reference for tests and benchmarks).
QUANTIZATIONS = ("dynamic_range", "float32")
DEFAULT_THREADS = 2
FORMAT_VERSION = 1
INSTALL_HINT = "pip install 'ai-edge-litert==2.3.0' (the package's 'litert' extra, requirements-litert.txt)"


class SidecarPaths(NamedTuple):
    """The files written beside ``PATH.tflite``."""

    labels: str  # PATH.labels.txt: one class name a line, in class order
    description: str  # PATH.json: preprocessing, input/output, wnids, config, statistics
    mean_image: str  # PATH.mean_image.npy: the training set's mean image, when the model uses one


def sidecar_paths(path: str) -> SidecarPaths:
    """The names of the files beside the LiteRT file ``path`` (``model.tflite`` -> ``model.json``, ...)."""
    stem = path[: -len(".tflite")] if path.endswith(".tflite") else path
    return SidecarPaths(f"{stem}.labels.txt", f"{stem}.json", f"{stem}.mean_image.npy")


def float32_model(model: keras.Model) -> keras.Model:
    """``model`` itself when it computes in float32, else a float32 copy of its weights."""
    if export.computes_in_float32(model):
        return model
    return export.float32_copy(model)


class ElementwiseLRN(keras.layers.Layer):
    """``layers.LocalResponseNormalization`` written in operations XNNPACK runs, for the LiteRT file.

    LiteRT's own LRN kernel is a float32 builtin that XNNPACK does not take, so the file
    would leave the delegate twice and spend about half its batch-1 time in the two LRN layers
    (``docs/serving.md``). The same formula from ops XNNPACK has: the squares, their sum over
    ``size`` adjacent channels as ``size`` shifted slices of the zero-padded squares (exact, unlike
    a banded 1x1 convolution, whose weights the converter would quantise to int8), then
    ``(k + alpha * sum) ^ -beta`` as ``r * sqrt(r)`` with ``r = rsqrt(.)`` for the paper's
    beta = 0.75, ``exp(-beta * log(.))`` for any other. Float32 throughout; it differs from
    ``tf.nn.local_response_normalization`` by float32 rounding only.

    Args:
      lrn: the layer to copy (its size, k, alpha read by its convention, beta and name).
    """

    def __init__(self, lrn: LocalResponseNormalization, **kwargs):
        super().__init__(name=lrn.name, dtype="float32", **kwargs)
        self.size = lrn.size
        self.k = lrn.k
        self.alpha = lrn.alpha / lrn.size if lrn.convention == "caffe" else lrn.alpha
        self.beta = lrn.beta

    def call(self, inputs):
        squares = tf.square(inputs)
        channels = inputs.shape[-1]
        radius = self.size // 2
        padded = tf.pad(squares, [[0, 0], [0, 0], [0, 0], [radius, radius]])
        window = padded[..., :channels]
        for shift in range(1, self.size):
            window = window + padded[..., shift:shift + channels]
        scale = self.k + self.alpha * window
        if self.beta == 0.75:
            root = tf.math.rsqrt(scale)
            return inputs * (root * tf.sqrt(root))
        return inputs * tf.exp(-self.beta * tf.math.log(scale))

    def compute_output_shape(self, input_shape):
        return input_shape


class FixedFlatten(keras.layers.Layer):
    """``Flatten`` as one reshape to ``[-1, features]``.

    Keras' ``Flatten`` reads the batch size from the tensor's shape at run time, which the converter
    writes as SHAPE, STRIDED_SLICE and PACK ops in front of the reshape: XNNPACK takes none of them,
    so the fully connected layers would start a delegate partition of their own.
    """

    def __init__(self, flatten: keras.layers.Flatten, **kwargs):
        super().__init__(name=flatten.name, dtype="float32", **kwargs)

    def call(self, inputs):
        return tf.reshape(inputs, [-1, int(np.prod(inputs.shape[1:]))])

    def compute_output_shape(self, input_shape):
        return (input_shape[0], int(np.prod(input_shape[1:])))


def litert_network(network: keras.Model) -> keras.Model:
    """``network`` with its LRN and Flatten layers in the forms XNNPACK runs; the other layers shared.

    The same function of the image (``ElementwiseLRN``, ``FixedFlatten``): the converter then
    emits a graph the runtime's XNNPACK delegate takes whole, with no op left to its builtin kernels.
    """

    def replace(layer: keras.layers.Layer) -> keras.layers.Layer:
        if isinstance(layer, LocalResponseNormalization):
            return ElementwiseLRN(layer)
        if isinstance(layer, keras.layers.Flatten):
            return FixedFlatten(layer)
        return layer

    return keras.models.clone_model(network, clone_function=replace)


def mean_window(config: Config, stats: DatasetStatistics) -> np.ndarray:
    """What the file subtracts: the mean image's centre ``input_size`` window [s, s, 3], or the mean [3].

    The same values ``device_preprocess.DeviceFinish`` subtracts from the centre crop (``eval_crop``'s offset).
    """
    mean = preprocess.mean_to_subtract(config, stats)
    if mean.ndim == 1:
        return mean
    offset = (config.image_size - config.input_size) // 2
    return np.ascontiguousarray(mean[offset : offset + config.input_size, offset : offset + config.input_size])


def convert(model: keras.Model, config: Config, stats: DatasetStatistics,
            quantization: str = "dynamic_range") -> bytes:
    """The LiteRT flatbuffer of ``model`` with the mean subtraction in front of it.

    The network is converted as ``litert_network`` writes it (LRN and Flatten in ops XNNPACK runs).

    Args:
      model: the network (``image`` -> softmax ``prob``), built from ``config``; any dtype policy.
      config: supplies input_size, image_size, mean_subtraction.
      stats: the training set's statistics (the mean subtracted inside the file).
      quantization: one of ``QUANTIZATIONS``.

    Returns:
      The ``.tflite`` file's bytes.
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r} (--litert_quantization)")
    network = litert_network(float32_model(model))
    size = config.input_size
    mean = tf.constant(mean_window(config, stats))

    def serve(image: tf.Tensor) -> dict[str, tf.Tensor]:
        return {OUTPUT: network(image - mean, training=False)}

    archive = keras.export.ExportArchive()
    archive.track(network)
    archive.add_endpoint(SIGNATURE, serve,
                         input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name=INPUT)])
    # Through a SavedModel: the converter freezes the Keras variables into constants on this path.
    with tempfile.TemporaryDirectory() as saved:
        archive.write_out(saved, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
        if quantization == "dynamic_range":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        return converter.convert()


def description(config: Config, stats: DatasetStatistics, wnids: Sequence[str], quantization: str,
                path: str) -> dict[str, Any]:
    """The JSON written beside the file: how to make its input, what it answers, where it came from."""
    files = sidecar_paths(path)
    has_mean_image = preprocess.mean_to_subtract(config, stats).ndim == 3
    size = config.input_size
    return {
        "format": "LiteRT flatbuffer",
        "format_version": FORMAT_VERSION,
        "file": os.path.basename(path),
        "quantization": quantization,
        "signature": SIGNATURE,
        "input": {"name": INPUT, "dtype": "float32", "shape": [-1, size, size, 3], "range": "0-255",
                  "channels": "RGB"},
        "output": {"name": OUTPUT, "dtype": "float32", "shape": [-1, config.num_classes], "meaning": "softmax"},
        "preprocessing": {
            "summary": (
                f"Decode (JPEG, PNG, GIF, BMP; grayscale and RGBA become RGB); cut the central square; "
                f"resize it to {config.image_size}x{config.image_size} (area when shrinking, bilinear when "
                f"enlarging) and round to 8 bits; take its central {size}x{size} crop, 0-255 values as float32. "
                f"The training set's {'mean image (its centre window)' if has_mean_image else 'per-channel mean'} "
                "is subtracted inside the file. alexnet_tf.litert.centre_crop does exactly this."
            ),
            "image_size": config.image_size,
            "input_size": size,
            "crop_offset": (config.image_size - size) // 2,
            "shrink_method": str(preprocess.SHRINK_METHOD),
            "enlarge_method": str(preprocess.ENLARGE_METHOD),
            "mean_subtraction": config.mean_subtraction if has_mean_image else "channel",
            "mean_subtracted_inside": True,
        },
        "labels_file": os.path.basename(files.labels),
        "wnids": list(wnids),
        "config": json.loads(config.to_json()),
        "statistics": {
            "source": stats.source,
            "num_images": int(stats.num_images),
            "mean_rgb": [float(v) for v in stats.mean_rgb],
            "std_rgb": [float(v) for v in stats.std_rgb],
            "eigenvalues": [float(v) for v in stats.eigenvalues],
            "eigenvectors": [[float(v) for v in row] for row in stats.eigenvectors],
            "mean_image_file": os.path.basename(files.mean_image) if has_mean_image else None,
        },
    }


def export_litert(
    model: keras.Model,
    path: str,
    config: Config,
    stats: DatasetStatistics,
    wnids: Sequence[str],
    names: Sequence[str],
    quantization: str = "dynamic_range",
) -> str:
    """Writes ``model`` as a LiteRT file at ``path`` (``*.tflite``) with its named files beside it.

    Args:
      model: the trained network, built from ``config``.
      path: the ``.tflite`` file to write; ``sidecar_paths(path)`` are written beside it.
      config: the run's configuration.
      stats: the training set's statistics (the mean is folded into the file).
      wnids: class index -> wnid, ``config.num_classes`` entries.
      names: class index -> human-readable name, ``config.num_classes`` entries.
      quantization: "dynamic_range" (int8 weights) or "float32".

    Returns:
      ``path``.
    """
    if not path.endswith(".tflite"):
        raise ValueError(f"export_litert: {path!r} must end in .tflite (--export_litert)")
    if len(wnids) != config.num_classes or len(names) != config.num_classes:
        raise ValueError(f"export_litert: {len(wnids)} wnids and {len(names)} names for a model with "
                         f"{config.num_classes} classes; pass one of each per class")
    flatbuffer = convert(model, config, stats, quantization)
    files = sidecar_paths(path)
    if os.path.dirname(path):
        paths.makedirs(os.path.dirname(path))
    paths.write_atomically(path, flatbuffer)
    paths.write_text(files.labels, "".join(f"{name}\n" for name in names))
    record = description(config, stats, wnids, quantization, path)
    paths.write_json(files.description, record)
    if record["statistics"]["mean_image_file"]:
        paths.save_npy(files.mean_image, preprocess.mean_to_subtract(config, stats))
    logging.info("Exported a LiteRT model (%s, %.1f MB) to %s, with %s and %s beside it", quantization,
                 len(flatbuffer) / 1e6, path, os.path.basename(files.labels), os.path.basename(files.description))
    return path


def export_run(workdir: str, path: str) -> str:
    """A finished training run's model as a LiteRT file at ``path``, with its statistics and class names."""
    model, config = workdir_lib.load_model(workdir)
    stats = workdir_lib.model_statistics(workdir) or statistics.load_statistics(config.data_dir)
    wnids, names = reports.data_class_labels(config.num_classes, config.data_dir)
    return paths.absolute(export_litert(model, path, config, stats, wnids, names))


def read_description(path: str) -> dict[str, Any]:
    """``PATH.json``, as ``export_litert`` wrote it beside ``path``."""
    json_path = sidecar_paths(path).description
    if not paths.exists(json_path):
        raise FileNotFoundError(f"{json_path} not found: {path} was not written by export_litert "
                                "(evaluate.py --export_litert)")
    return paths.read_json(json_path)


def load_statistics(path: str) -> DatasetStatistics:
    """The training-set statistics recorded beside the LiteRT file ``path``."""
    record = read_description(path)["statistics"]
    stats = DatasetStatistics(
        mean_rgb=np.array(record["mean_rgb"], np.float32),
        std_rgb=np.array(record["std_rgb"], np.float32),
        eigenvalues=np.array(record["eigenvalues"], np.float32),
        eigenvectors=np.array(record["eigenvectors"], np.float32),
        num_images=int(record["num_images"]),
        source=sidecar_paths(path).description,
    )
    if record["mean_image_file"]:
        mean_path = os.path.join(os.path.dirname(path), record["mean_image_file"])
        if not paths.exists(mean_path):
            raise FileNotFoundError(f"{mean_path} not found: {sidecar_paths(path).description} names it; "
                                    "re-export with evaluate.py --export_litert")
        stats.mean_image = paths.load_npy(mean_path).astype(np.float32)
    return stats


def centre_crop(encoded: tf.Tensor | bytes, config: Config, max_pixels: int = export.MAX_PIXELS) -> tf.Tensor:
    """The LiteRT model's input for one encoded image: float32 [input_size, input_size, 3], 0-255.

    The evaluation's centre crop before its mean subtraction (``preprocess.eval_crop``: central
    square, resized to ``image_size`` and rounded to 8 bits, its central ``input_size`` crop), so
    the file sees the pixels the evaluator and the SavedModel see. Images whose header declares
    more than ``max_pixels`` are refused before decoding, as the SavedModel refuses them.

    Raises (when run):
      InvalidArgumentError: the bytes are not a JPEG or PNG, do not decode, or declare too many pixels.
    """
    encoded = tf.convert_to_tensor(encoded, tf.string)
    height_width = export.header_height_width(encoded)
    check = tf.debugging.Assert(
        height_width[0] * height_width[1] <= max_pixels,
        [f"Image refused: more than {max_pixels} pixels; its header declares height, width", height_width],
    )
    with tf.control_dependencies([check]):
        encoded = tf.identity(encoded)
    return tf.cast(preprocess.eval_crop(encoded, config.image_size, config.input_size).image, tf.float32)


def centre_crops(images: Sequence[bytes], config: Config) -> np.ndarray:
    """``centre_crop`` of each encoded image, stacked: float32 [len(images), s, s, 3]."""
    return np.stack([centre_crop(encoded, config).numpy() for encoded in images])


def _interpreter_class() -> type:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as e:
        raise ImportError(f"The LiteRT runtime is not installed ({e}): {INSTALL_HINT}") from e
    return Interpreter


def runtime_available() -> bool:
    """Whether the ``ai-edge-litert`` runtime imports."""
    try:
        _interpreter_class()
    except ImportError:
        return False
    return True


class LiteRTModel:
    """A LiteRT file in the ``ai-edge-litert`` runtime, with the class names written beside it.

    ``predict`` may be called from several threads: calls are serialised (one interpreter runs
    one call at a time, on ``num_threads`` threads of its own).

    Args:
      path: a ``.tflite`` file written by ``export_litert``, or its bytes (then no names).
      num_threads: the runtime's threads (XNNPACK, the default delegate, uses them).
    """

    def __init__(self, path: str | bytes, num_threads: int = DEFAULT_THREADS):
        interpreter_class = _interpreter_class()
        if isinstance(path, bytes):
            self._interpreter = interpreter_class(model_content=path, num_threads=num_threads)
            self.description: dict[str, Any] | None = None
            self.names: list[str] | None = None
        else:
            self._interpreter = interpreter_class(model_content=paths.read_bytes(path), num_threads=num_threads)
            self.description = read_description(path)
            self.names = paths.read_text(sidecar_paths(path).labels).splitlines()
        self._runner = self._interpreter.get_signature_runner(SIGNATURE)
        self._lock = threading.Lock()

    @property
    def config(self) -> Config | None:
        return None if self.description is None else Config.from_json(json.dumps(self.description["config"]))

    @property
    def wnids(self) -> list[str] | None:
        return None if self.description is None else list(self.description["wnids"])

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Probabilities [B, num_classes] for centre crops [B, s, s, 3] in 0-255 values."""
        images = np.ascontiguousarray(images, np.float32)
        with self._lock:
            return self._runner(**{INPUT: images})[OUTPUT].copy()


def load_predictor(path: str, num_threads: int = DEFAULT_THREADS) -> tuple[Predictor, Config, DatasetStatistics]:
    """The LiteRT file as the evaluator's predictor: mean-subtracted views in, probabilities out.

    The evaluator hands every predictor the views of ``device_preprocess.DeviceFinish``: pixels minus the
    mean image at each view's own position. The file subtracts the centre window itself, so that
    window is added back first: the centre crop then reaches the file as its plain 0-255 pixels,
    and the corner and mirrored views reach the network exactly as they reach the SavedModel.

    Returns:
      ``(predict, config, stats)``; ``predict`` works inside a ``tf.function``.
    """
    model = LiteRTModel(path, num_threads)
    config, stats = model.config, load_statistics(path)
    window = mean_window(config, stats)

    def run(views: np.ndarray) -> np.ndarray:
        return model.predict(views + window)

    def predict(images: tf.Tensor) -> tf.Tensor:
        prob = tf.numpy_function(run, [tf.convert_to_tensor(images, tf.float32)], tf.float32, stateful=False)
        prob.set_shape([None, config.num_classes])
        return prob

    predict.model = model  # keeps the interpreter alive with the function
    return predict, config, stats
