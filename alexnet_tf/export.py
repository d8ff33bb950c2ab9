"""A SavedModel that TensorFlow Serving loads as is: encoded images in, top-5 classes out.

Two signatures:

* ``serving_default``: ``image_bytes``, a batch of encoded JPEG or PNG images of any size
  (grayscale and RGBA too), preprocessed inside the graph exactly as the evaluation's centre
  crop (``device_preprocess.preprocess_for_eval``). Returns, per image, the top-5 ``classes`` (int32),
  ``wnids``, ``names`` and ``probabilities``.
* ``serve_images``: ``image``, a float32 batch of already preprocessed crops (the evaluation
  pipeline's output). Returns the full softmax ``prob`` and the same top-5 outputs.

Bytes that do not decode fail that call with ``InvalidArgumentError`` and nothing else: the
loaded model serves the next call. The pixel count in an image's header is checked before it is
decoded, so a small file that claims an enormous image (a decompression bomb) is refused.
The graph holds no XLA must-compile functions, so a TensorFlow Serving build without XLA loads it.

``precision="bfloat16"`` stores the weights in bfloat16 and runs the network in it: at batch 1
AlexNet is bound by reading fc6-fc8's 58.6 M weights, and bfloat16 halves those bytes (234 MB to
117 MB). LRN still runs in float32 inside (``layers.LocalResponseNormalization``), and the
softmax and every output stay float32, so the signatures are the same for both precisions.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import keras
import tensorflow as tf
from absl import logging

from alexnet_tf import device_preprocess, metrics, paths
from alexnet_tf.config import Config
from alexnet_tf.statistics import DatasetStatistics

SERVING_SIGNATURE = "serving_default"
FLOAT_SIGNATURE = "serve_images"
BYTES_INPUT = "image_bytes"
FLOAT_INPUT = "image"
# About 40 megapixels: 120 MB once decoded to RGB. The largest ILSVRC-2012 images are far
# smaller; anything above this is refused before decoding.
MAX_PIXELS = 40_000_000
# Written beside the graph; TensorFlow Serving ignores assets.extra.
CONFIG_FILE = os.path.join("assets.extra", "alexnet_config.json")
LABELS_FILE = os.path.join("assets.extra", "labels.tsv")

_JPEG_MAGIC = b"\xff\xd8"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_height_width(encoded: tf.Tensor) -> tf.Tensor:
    """Height and width from a PNG's IHDR chunk (big-endian uint32s at bytes 16-23)."""
    tf.debugging.assert_greater_equal(
        tf.strings.length(encoded), 24, message="PNG data is truncated before the end of its IHDR header"
    )
    header = tf.cast(tf.io.decode_raw(tf.strings.substr(encoded, 16, 8), tf.uint8), tf.int64)
    powers = tf.constant([1 << 24, 1 << 16, 1 << 8, 1], tf.int64)
    width = tf.reduce_sum(header[0:4] * powers)
    height = tf.reduce_sum(header[4:8] * powers)
    return tf.stack([height, width])


def header_height_width(encoded: tf.Tensor) -> tf.Tensor:
    """The [height, width] (int64) an encoded JPEG or PNG declares, read without decoding it.

    Raises (when run):
      InvalidArgumentError: when the bytes are neither JPEG nor PNG, or the header is broken.
    """
    is_jpeg = tf.equal(tf.strings.substr(encoded, 0, len(_JPEG_MAGIC)), _JPEG_MAGIC)
    is_png = tf.equal(tf.strings.substr(encoded, 0, len(_PNG_MAGIC)), _PNG_MAGIC)
    known = tf.debugging.Assert(
        tf.logical_or(is_jpeg, is_png),
        # The leading bytes as numbers: raw bytes that are not UTF-8 would make the error
        # message undecodable, and the caller would get a UnicodeDecodeError instead.
        ["Not a JPEG or PNG image; its first bytes are", tf.io.decode_raw(tf.strings.substr(encoded, 0, 8), tf.uint8)],
    )
    with tf.control_dependencies([known]):
        return tf.cond(
            is_jpeg,
            lambda: tf.cast(tf.image.extract_jpeg_shape(encoded)[:2], tf.int64),
            lambda: _png_height_width(encoded),
        )


def checked_preprocess(
    encoded: tf.Tensor, config: Config, stats: DatasetStatistics, max_pixels: int = MAX_PIXELS
) -> tf.Tensor:
    """``preprocess_for_eval`` after refusing images whose header declares too many pixels."""
    height_width = header_height_width(encoded)
    pixels = height_width[0] * height_width[1]
    check = tf.debugging.Assert(
        pixels <= max_pixels,
        [f"Image refused: more than {max_pixels} pixels (a decompression bomb?); its header declares "
         "height, width", height_width],
    )
    with tf.control_dependencies([check]):
        encoded = tf.identity(encoded)
    return device_preprocess.preprocess_for_eval(encoded, config, stats)


def bfloat16_copy(model: keras.Model) -> keras.Model:
    """A copy of the functional ``model`` whose weights are stored, and used, in bfloat16.

    Every layer is rebuilt with the ``bfloat16`` dtype policy and its weights are rounded into
    it, except the layers that produce the model's outputs (the softmax ``prob``), which stay
    float32 so the probabilities keep float32 precision. Keras's ``mixed_bfloat16`` policy
    would not do: it keeps float32 variables and casts them on every call, which reads more
    memory, not less.
    """
    output_layers = {tensor._keras_history.operation.name for tensor in model.outputs}
    return _copy_with_policies(model, lambda layer: "float32" if layer.name in output_layers else "bfloat16")


def float32_copy(model: keras.Model) -> keras.Model:
    """A copy of the functional ``model`` that stores and computes everything in float32.

    A model trained under a mixed policy (``--precision=mixed_float16`` or ``mixed_bfloat16``)
    keeps float32 weights but computes its layers in half precision; this copy computes them in
    float32, so the float32 export serves what the float32 network computes.
    """
    return _copy_with_policies(model, lambda layer: "float32")


def _copy_with_policies(model: keras.Model, policy: Callable[[keras.layers.Layer], str]) -> keras.Model:
    """``model`` cloned layer by layer with ``policy(layer)``'s dtype policy, its weights cast into it."""

    def rebuild(layer: keras.layers.Layer) -> keras.layers.Layer:
        layer_config = layer.get_config()
        layer_config["dtype"] = policy(layer)
        return layer.__class__.from_config(layer_config)

    copy = keras.models.clone_model(model, clone_function=rebuild)
    for source, target in zip(model.layers, copy.layers, strict=True):
        if source.name != target.name or len(source.weights) != len(target.weights):
            raise ValueError(f"export: layer {source.name!r} was not cloned one to one")
        for weight, copied in zip(source.weights, target.weights, strict=True):
            copied.assign(tf.cast(weight, copied.dtype))
    return copy


def computes_in_float32(model: keras.Model) -> bool:
    """Whether every layer of ``model`` computes in float32 (not so under a mixed policy)."""
    return all(layer.dtype_policy.compute_dtype == "float32" for layer in model.layers)


def export_saved_model(
    model: keras.Model,
    export_dir: str,
    config: Config,
    stats: DatasetStatistics,
    wnids: Sequence[str],
    names: Sequence[str],
    max_pixels: int = MAX_PIXELS,
    precision: str | None = None,
) -> str:
    """Writes ``model`` with its preprocessing and class names as a servable SavedModel.

    Args:
      model: the network (``image`` -> softmax ``prob``), built from ``config``.
      export_dir: where to write; a TensorFlow Serving model base path expects it to be a
        numbered version directory such as ``models/alexnet/1``.
      config: the run's configuration (input size, image size, mean subtraction).
      stats: the training-set statistics the preprocessing subtracts.
      wnids: class index -> wnid, ``config.num_classes`` entries.
      names: class index -> human-readable name, ``config.num_classes`` entries.
      max_pixels: images whose header declares more pixels are refused.
      precision: "float32" (the weights as trained, computed in float32 even when trained under a
        mixed policy) or "bfloat16" (weights stored and run in
        bfloat16, LRN and outputs in float32; see ``bfloat16_copy``); default
        ``config.export_precision``. The configuration written beside the graph records it.

    Returns:
      ``export_dir``.
    """
    if len(wnids) != config.num_classes or len(names) != config.num_classes:
        raise ValueError(
            f"export_saved_model: {len(wnids)} wnids and {len(names)} names for a model with "
            f"{config.num_classes} classes; pass one of each per class"
        )
    config = config.replace(export_precision=precision or config.export_precision)  # checks it
    precision = config.export_precision
    if precision == "bfloat16":
        model = bfloat16_copy(model)
    elif not computes_in_float32(model):  # trained under a mixed policy: serve what float32 computes
        model = float32_copy(model)
    size = config.input_size
    top_k = metrics.k_for(config.num_classes)
    wnid_table = tf.constant(list(wnids), tf.string)
    name_table = tf.constant(list(names), tf.string)

    def top_predictions(prob: tf.Tensor) -> dict[str, tf.Tensor]:
        probabilities, classes = tf.math.top_k(prob, k=top_k)
        return {
            "classes": classes,
            "wnids": tf.gather(wnid_table, classes),
            "names": tf.gather(name_table, classes),
            "probabilities": probabilities,
        }

    def serve_images(image: tf.Tensor) -> dict[str, tf.Tensor]:
        prob = tf.cast(model(image, training=False), tf.float32)
        return {"prob": prob, **top_predictions(prob)}

    def serve_bytes(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        images = tf.map_fn(
            lambda encoded: checked_preprocess(encoded, config, stats, max_pixels),
            image_bytes,
            fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32),
        )
        return top_predictions(tf.cast(model(images, training=False), tf.float32))

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        SERVING_SIGNATURE, serve_bytes, input_signature=[tf.TensorSpec([None], tf.string, name=BYTES_INPUT)]
    )
    archive.add_endpoint(
        FLOAT_SIGNATURE,
        serve_images,
        input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name=FLOAT_INPUT)],
    )
    archive.write_out(paths.prepare_rewrite(export_dir), verbose=False)

    paths.makedirs(os.path.join(export_dir, "assets.extra"))
    paths.write_text(os.path.join(export_dir, CONFIG_FILE), config.to_json())
    paths.write_text(os.path.join(export_dir, LABELS_FILE),
                     "".join(f"{index}\t{wnid}\t{name}\n" for index, (wnid, name) in enumerate(zip(wnids, names))))
    # The training set's statistics beside the graph that embeds them: evaluate.py --saved_model
    # preprocesses its float views with these, as training did.
    stats.save(export_dir)
    logging.info("Exported a %s SavedModel with signatures %s and %s to %s",
                 precision, SERVING_SIGNATURE, FLOAT_SIGNATURE, export_dir)
    return export_dir


def load_config(export_dir: str) -> Config:
    """The configuration ``export_saved_model`` wrote beside the SavedModel."""
    path = os.path.join(export_dir, CONFIG_FILE)
    if not paths.exists(path):
        raise FileNotFoundError(f"{path} not found: {export_dir} was not written by export_saved_model")
    return Config.from_json(paths.read_text(path))


def load_predictor(export_dir: str) -> tuple[Callable[[tf.Tensor], tf.Tensor], Config]:
    """A function from preprocessed float images to probabilities, through the SavedModel.

    Returns:
      ``(predict, config)``: ``predict(images [B, s, s, 3]) -> prob [B, num_classes]`` calls the
      ``serve_images`` signature of the loaded SavedModel.
    """
    config = load_config(export_dir)
    loaded = tf.saved_model.load(export_dir)
    if FLOAT_SIGNATURE not in loaded.signatures:
        raise ValueError(f"{export_dir} has no {FLOAT_SIGNATURE!r} signature; re-export it with export.py")
    signature = loaded.signatures[FLOAT_SIGNATURE]

    def predict(images: tf.Tensor) -> tf.Tensor:
        return signature(**{FLOAT_INPUT: tf.convert_to_tensor(images, tf.float32)})["prob"]

    predict.loaded = loaded  # keeps the loaded object (and its variables) alive
    return predict, config


def xla_must_compile_functions(export_dir: str) -> list[str]:
    """Names of the functions in ``saved_model.pb`` that carry ``_XlaMustCompile=true``."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString(paths.read_bytes(os.path.join(export_dir, "saved_model.pb")))
    found = []
    for meta_graph in saved.meta_graphs:
        for function in meta_graph.graph_def.library.function:
            if "_XlaMustCompile" in function.attr and function.attr["_XlaMustCompile"].b:
                found.append(function.signature.name)
            found.extend(
                f"{function.signature.name}/{node.name}"
                for node in function.node_def
                if "_XlaMustCompile" in node.attr and node.attr["_XlaMustCompile"].b
            )
    return sorted(set(found))

