"""SGD with the paper's weight decay, applied inside the momentum (section 5)."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

PAPER_WEIGHT_DECAY = 0.0005


@keras.saving.register_keras_serializable(package="alexnet_tf")
class PaperSGD(keras.optimizers.SGD):
    """Momentum SGD with the update rule of section 5 of the paper:

        v <- momentum * v - weight_decay * lr * w - lr * dL/dw
        w <- w + v

    The decay enters the momentum like a gradient (it is the gradient of
    ``weight_decay / 2 * sum(w^2)``). Keras 3's own ``weight_decay=`` argument is decoupled
    (it shrinks the weights outside the momentum), which is a different rule, so it is refused
    here. Only weights with two or more dimensions (kernels) are decayed; biases are not, as in
    cuda-convnet and Caffe.

    Args:
      learning_rate: float or a schedule; the paper's is 0.01.
      momentum: the paper's is 0.9.
      l2_decay: the paper's 0.0005.
      **kwargs: other ``keras.optimizers.Optimizer`` arguments (not ``weight_decay``).
    """

    def __init__(
        self,
        learning_rate: float = 0.01,
        momentum: float = 0.9,
        l2_decay: float = PAPER_WEIGHT_DECAY,
        name: str = "paper_sgd",
        **kwargs: Any,
    ):
        if kwargs.get("weight_decay") is not None:
            raise ValueError("PaperSGD: weight_decay= is Keras's decoupled decay; use l2_decay=")
        kwargs.pop("weight_decay", None)
        kwargs.pop("nesterov", None)
        super().__init__(learning_rate=learning_rate, momentum=momentum, nesterov=False, name=name, **kwargs)
        self.l2_decay = float(l2_decay)

    def update_step(self, gradient, variable, learning_rate):
        if self.l2_decay and len(variable.shape) >= 2:
            gradient = ops.add(
                ops.cast(gradient, variable.dtype),
                ops.multiply(ops.cast(self.l2_decay, variable.dtype), variable),
            )
        super().update_step(gradient, variable, learning_rate)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.pop("nesterov", None)
        config["l2_decay"] = self.l2_decay
        return config
