"""The paper's optimisation (section 5): SGD with its weight decay inside the momentum, and the
learning-rate schedule, divided by 10 when the validation error stops improving.

``PaperSGD`` is the update rule; ``LearningRateSchedule`` decides the rate of each epoch (the
paper's plateau rule, or fixed steps) and keeps its state in variables a checkpoint carries.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import tensorflow as tf
from keras import ops

from alexnet_tf.config import Config, parse_lr_schedule

PAPER_WEIGHT_DECAY = 0.0005
LR_DIVISOR = 10.0  # section 5: "divide the learning rate by 10"


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


class LearningRateSchedule(tf.Module):
    """The paper's schedule (divide by 10 when the validation error stops improving) or steps.

    Its state lives in variables, so a checkpoint carries it across a restart.

    Args:
      config: learning_rate, lr_schedule, plateau_patience, max_lr_reductions.
    """

    def __init__(self, config: Config):
        super().__init__(name="lr_schedule")
        self.kind, self.boundaries = parse_lr_schedule(config.lr_schedule)
        self.base_rate = config.learning_rate
        self.patience = config.plateau_patience
        self.max_reductions = config.max_lr_reductions
        self.learning_rate = tf.Variable(config.learning_rate, dtype=tf.float64, trainable=False)
        self.best_error = tf.Variable(math.inf, dtype=tf.float64, trainable=False)
        self.epochs_without_improvement = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.reductions = tf.Variable(0, dtype=tf.int64, trainable=False)

    def rate_for_epoch(self, epoch: int) -> float:
        """The rate to train epoch ``epoch`` (0-based) with."""
        if self.kind == "step":
            drops = sum(1 for b in self.boundaries if epoch >= b)
            self.learning_rate.assign(self.base_rate / LR_DIVISOR**drops)
        return float(self.learning_rate.numpy())

    def end_epoch(self, val_top1_error: float | None) -> bool:
        """Records an epoch's validation error; True when the rate was just divided."""
        if self.kind != "plateau" or val_top1_error is None:
            return False
        if val_top1_error < float(self.best_error.numpy()):
            self.best_error.assign(val_top1_error)
            self.epochs_without_improvement.assign(0)
            return False
        self.epochs_without_improvement.assign_add(1)
        if (int(self.epochs_without_improvement.numpy()) >= self.patience
                and int(self.reductions.numpy()) < self.max_reductions):
            self.learning_rate.assign(self.learning_rate / LR_DIVISOR)
            self.reductions.assign_add(1)
            self.epochs_without_improvement.assign(0)
            return True
        return False
