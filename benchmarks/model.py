"""The full network on this machine: towers against Keras's grouped convolution, and exactness.

Prints the parameter count, the LRN layer's error against the paper's formula in NumPy, the
tower convolution's difference from ``Conv2D(groups=2)`` on the full network, and training
images/s of the full network with each, measured in one run. Last line: one JSON object.

    python benchmarks/model.py [--batch=32] [--steps=6]
"""

from __future__ import annotations

import os

import harness

harness.setup()  # before anything imports TensorFlow

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import flags  # noqa: E402

from alexnet_tf import LocalResponseNormalization, PaperSGD, build_alexnet  # noqa: E402

flags.DEFINE_integer("batch", 32, "Training batch size.")
flags.DEFINE_integer("steps", 6, "Timed training steps per measurement (after one warm-up step).")
FLAGS = flags.FLAGS


def grouped_twin(model: keras.Model) -> keras.Model:
    """The same network with every TowerConv2D as Keras's Conv2D(groups=towers), same weights."""
    config = model.get_config()
    for layer in config["layers"]:
        if layer["class_name"] == "TowerConv2D":
            layer["class_name"] = "Conv2D"
            layer["module"] = "keras.layers"
            layer.pop("registered_name", None)
            layer["config"]["groups"] = layer["config"].pop("towers")
    twin = keras.Model.from_config(config)
    twin.set_weights(model.get_weights())
    return twin


def lrn_error() -> float:
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 100, size=(4, 27, 27, 96)).astype(np.float32)
    padded = np.pad(a.astype(np.float64) ** 2, [(0, 0), (0, 0), (0, 0), (2, 2)])
    sum_sq = sum(padded[..., j : j + 96] for j in range(5))
    want = a / (2.0 + 1e-4 * sum_sq) ** 0.75
    got = LocalResponseNormalization()(a).numpy()
    return float(np.max(np.abs(got - want) / np.abs(want).clip(1e-12)))


def train_images_per_second(model: keras.Model, batch: int, steps: int) -> float:
    optimizer = PaperSGD()
    loss_fn = keras.losses.SparseCategoricalCrossentropy()

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss

    x = tf.random.normal((batch, 227, 227, 3), stddev=50.0)
    y = tf.random.uniform((batch,), maxval=1000, dtype=tf.int32)
    step(x, y).numpy()  # trace and warm up
    with harness.timed() as clock:
        for _ in range(steps):
            loss = step(x, y)
        loss.numpy()
    return batch * steps / clock.seconds


def main(argv: list[str]) -> None:
    del argv

    towers = build_alexnet(seed=0)
    grouped = grouped_twin(towers)
    x = tf.random.normal((8, 227, 227, 3), stddev=50.0, seed=1)
    equivalence = float(tf.reduce_max(tf.abs(towers(x) - grouped(x))))
    conv_error = float(tf.reduce_max(tf.abs(
        keras.Model(towers.input, towers.get_layer("conv5").output)(x)
        - keras.Model(grouped.input, grouped.get_layer("conv5").output)(x)
    )))
    # Alternate the two so that load from other processes hits both alike.
    towers_ips, grouped_ips = [], []
    for _ in range(2):
        towers_ips.append(train_images_per_second(towers, FLAGS.batch, FLAGS.steps))
        grouped_ips.append(train_images_per_second(grouped, FLAGS.batch, FLAGS.steps))
    figures = {
        "parameters": towers.count_params(),
        "lrn_max_rel_error_vs_numpy": lrn_error(),
        "towers_vs_grouped_max_abs_diff_conv5": conv_error,
        "towers_vs_grouped_max_abs_diff_prob": equivalence,
        "train_images_per_s_towers": round(max(towers_ips), 2),
        "train_images_per_s_groups2": round(max(grouped_ips), 2),
        "towers_vs_groups2": round(max(towers_ips) / max(grouped_ips), 2),
        "batch": FLAGS.batch,
        "cores": os.cpu_count(),
    }
    harness.print_figures(figures)


if __name__ == "__main__":
    harness.run(main)
