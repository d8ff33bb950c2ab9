"""Fine-tuning: a new run that starts from a trained network's weights (``--init_from``).

The source is BVLC AlexNet's ``.caffemodel`` / ``.npy`` (read by ``caffe.py``), or a work directory
or ``model.keras`` of this project. The new run's network is the source's: its architecture and
conventions (LRN constants, channel order, where the mean comes from, image and input size) are
taken from the source's configuration (``caffe.reference_config()`` for a Caffe file) by
:func:`source_config`; a flag that contradicts them is refused. On a fresh run every layer's
weights but fc8's are loaded (:func:`load_source_weights`); fc8 keeps its new initialisation for
the new classes. A resumed run restores its own checkpoint instead.

The mean the source was trained with is kept (:func:`keep_source_mean`): Caffe's ILSVRC-2012 mean,
or the source run's ``statistics.json``; the PCA colour noise uses the new training set's
eigen-decomposition. A Caffe source was trained without the colour noise, so its runs default to
``pca_std=0`` (an explicit ``--pca_std`` turns it on).

``--trainable_from=LAYER`` (:func:`freeze_below`) freezes the layers below LAYER; Keras runs frozen
batch-normalisation layers in inference mode.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import keras
import numpy as np
from absl import logging

from alexnet_tf import paths
from alexnet_tf import workdir as workdir_lib
from alexnet_tf.config import WEIGHT_LAYERS, Config, ConfigError
from alexnet_tf.sources import Inputs

CAFFE_SUFFIXES = (".caffemodel", ".npy")
# What a fine-tuned network takes from its source: the variables' shapes, the layers, and the
# conventions the weights were trained with (weight_init "he" adds the input scaling layer).
ARCHITECTURE_FIELDS = (
    "input_size", "width", "towers", "conv_width", "lrn", "overlapping_pooling", "batch_norm", "weight_init",
    "lrn_k", "lrn_alpha", "lrn_alpha_convention", "channel_order", "image_size", "mean_subtraction",
    "mean_source", "mean_file", "resize_mode",
)
NEW_LAYER = "fc8"  # re-initialised for the new classes


def is_caffe_source(source: str) -> bool:
    return source.endswith(CAFFE_SUFFIXES)


def _source_settings(source: str) -> Config:
    """The configuration the source was trained with."""
    if is_caffe_source(source):
        from alexnet_tf import caffe

        if not paths.exists(source):
            raise ConfigError(f"--init_from={source}: no such file")
        return caffe.reference_config()
    if source.endswith(".keras") or paths.isdir(source):
        try:
            return workdir_lib.read_config(source)
        except FileNotFoundError as e:
            raise ConfigError(f"--init_from={source}: {e}") from e
    raise ConfigError(f"--init_from={source}: name a .caffemodel or .npy of BVLC AlexNet, or a work directory "
                      f"or {workdir_lib.MODEL_FILE} of this project (SavedModel exports are not read)")


def source_config(config: Config, explicit: Iterable[str] = ()) -> Config:
    """``config`` with the architecture and conventions of ``config.init_from``'s network.

    Args:
      config: the run's configuration (preset and flags), with ``init_from`` set.
      explicit: the fields given as flags; one of ``ARCHITECTURE_FIELDS`` that differs from the
        source's is refused. Without an explicit ``pca_std``, a Caffe source's 0 is used.

    Raises:
      ConfigError: naming ``--init_from`` or the contradicting flag.
    """
    if not config.init_from:
        return config
    source = _source_settings(config.init_from)
    explicit = set(explicit)
    for name in ARCHITECTURE_FIELDS:
        if name in explicit and getattr(config, name) != getattr(source, name):
            raise ConfigError(f"--{name}={getattr(config, name)!r}: the network of --init_from={config.init_from} "
                              f"has {name}={getattr(source, name)!r}; leave --{name} out")
    inherited = {name: getattr(source, name) for name in ARCHITECTURE_FIELDS}
    if is_caffe_source(config.init_from) and "pca_std" not in explicit:
        inherited["pca_std"] = 0.0  # BVLC AlexNet was trained without the colour noise
    logging.info("The network of %s: %s", config.init_from, ", ".join(f"{k}={v!r}" for k, v in inherited.items()))
    return config.replace(**inherited)


def source_weights(source: str) -> dict[str, list[np.ndarray]]:
    """Every weighted layer's weights in ``source``, by layer name."""
    if is_caffe_source(source):
        from alexnet_tf import caffe

        return caffe.read_reference_weights(source)
    model, _ = workdir_lib.load_model(source)
    return {layer.name: layer.get_weights() for layer in model.layers if layer.weights}


def load_source_weights(model: keras.Model, config: Config) -> list[str]:
    """Loads ``config.init_from``'s weights into every layer of ``model`` but fc8.

    Returns:
      The names of the layers loaded.

    Raises:
      ConfigError: naming ``--init_from`` and the layer, when a layer is missing or of another shape.
    """
    weights = source_weights(config.init_from)
    loaded = []
    for layer in model.layers:
        if not layer.weights or layer.name == NEW_LAYER:
            continue
        found = weights.get(layer.name)
        expected = [tuple(w.shape) for w in layer.weights]
        if found is None or [tuple(np.shape(w)) for w in found] != expected:
            raise ConfigError(
                f"--init_from={config.init_from}: layer {layer.name} should hold shapes {expected}, found "
                f"{None if found is None else [tuple(np.shape(w)) for w in found]}")
        layer.set_weights(found)
        loaded.append(layer.name)
    logging.info("Loaded %s from %s; %s re-initialised for %d classes", ", ".join(loaded), config.init_from,
                 NEW_LAYER, config.num_classes)
    return loaded


def keep_source_mean(config: Config, inputs: Inputs) -> Inputs:
    """``inputs`` whose statistics carry the source's mean, the new training set's eigen-decomposition.

    The statistics go with the run (``statistics.json``), so its evaluation and export subtract
    the same mean. Without ``init_from`` (or without statistics) ``inputs`` is returned as it is.
    """
    if not config.init_from or inputs.stats is None:
        return inputs
    if is_caffe_source(config.init_from):
        from alexnet_tf import caffe

        mean = caffe.reference_statistics(config.mean_file)
    else:
        mean = workdir_lib.model_statistics(config.init_from)
        if mean is None:
            return inputs
    stats = dataclasses.replace(inputs.stats, mean_rgb=mean.mean_rgb, mean_image=mean.mean_image,
                                source=f"mean of {mean.source}; eigen-decomposition of {inputs.stats.source}")
    logging.info("Subtracting the source's mean (%s)", mean.source)
    return dataclasses.replace(inputs, stats=stats)


def freeze_below(model: keras.Model, trainable_from: str) -> list[str]:
    """Makes the layers below ``trainable_from`` (and their batch normalisation) not trainable.

    Returns:
      The frozen layers' names.
    """
    if not trainable_from:
        return []
    frozen_names = WEIGHT_LAYERS[:WEIGHT_LAYERS.index(trainable_from)]
    frozen = []
    for layer in model.layers:
        if layer.name in frozen_names or layer.name.removesuffix("_bn") in frozen_names:
            layer.trainable = False  # a frozen BatchNormalization also normalises with its moving statistics
            frozen.append(layer.name)
    logging.info("Frozen: %s; %s and above train", ", ".join(frozen) or "nothing", trainable_from)
    return frozen

