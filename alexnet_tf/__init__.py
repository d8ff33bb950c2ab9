"""alexnet_tf: AlexNet (Krizhevsky, Sutskever, Hinton, NIPS 2012) with TensorFlow 2 and Keras 3."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from alexnet_tf.caffe import load_reference_weights
    from alexnet_tf.config import Config, get_config
    from alexnet_tf.layers import LocalResponseNormalization, TowerConv2D
    from alexnet_tf.model import build_alexnet
    from alexnet_tf.optimizer import PaperSGD

_PUBLIC = {
    "Config": "alexnet_tf.config",
    "get_config": "alexnet_tf.config",
    "LocalResponseNormalization": "alexnet_tf.layers",
    "TowerConv2D": "alexnet_tf.layers",
    "build_alexnet": "alexnet_tf.model",
    "PaperSGD": "alexnet_tf.optimizer",
    "load_reference_weights": "alexnet_tf.caffe",
}
__all__ = [
    "Config",
    "LocalResponseNormalization",
    "PaperSGD",
    "TowerConv2D",
    "build_alexnet",
    "get_config",
    "load_reference_weights",
]


def __getattr__(name: str) -> Any:
    # The public names load on first use, not with the package: the command lines import
    # alexnet_tf.console to set TensorFlow's log level before anything imports TensorFlow.
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'alexnet_tf' has no attribute {name!r}")
