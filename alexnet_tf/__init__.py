"""alexnet_tf: AlexNet (Krizhevsky, Sutskever, Hinton, NIPS 2012) with TensorFlow 2 and Keras 3."""

from alexnet_tf.config import Config, get_config
from alexnet_tf.layers import LocalResponseNormalization, TowerConv2D
from alexnet_tf.model import build_alexnet
from alexnet_tf.optimizer import PaperSGD

__all__ = ["Config", "LocalResponseNormalization", "PaperSGD", "TowerConv2D", "build_alexnet", "get_config"]
