"""Training throughput on synthetic tensors: Keras fit, a bare tf.function step, our loop.

    python benchmarks/training.py [--steps=20] [--batch_size=32]

For the full network (the paper preset) and the small built-in preset, the same model and
optimiser (PaperSGD) train on one random batch repeated, so the input pipeline costs nothing:

* ``fit``: ``model.compile(...)`` + ``model.fit`` on a repeated ``tf.data`` batch;
* ``bare_step``: ``tf.function`` of GradientTape + ``apply_gradients``, nothing else;
* ``our_loop``: ``alexnet_tf.training.Trainer.train_step`` (strategy.run, replica sums, NaN check,
  the figures the progress bar shows).

Also prints the network's multiply-adds per image (counted from the layers' shapes) and the
images/s and FLOP/s a 90-epoch ImageNet run needs to finish in one day. The last line is one
JSON object of all figures.
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from alexnet_tf import data, distribute, training  # noqa: E402
from alexnet_tf import model as model_lib  # noqa: E402
from alexnet_tf.config import get_config  # noqa: E402
from alexnet_tf.optimizer import PaperSGD  # noqa: E402

IMAGENET_TRAIN_IMAGES = 1_281_167
EPOCHS = 90
SECONDS_PER_DAY = 86_400
WARMUP_STEPS = 3

flags.DEFINE_integer("steps", 15, "timed steps per method")
flags.DEFINE_integer("batch_size", 32, "global batch for the full network (the paper's is 128)")
flags.DEFINE_integer("small_batch_size", 32, "batch for the small preset")
FLAGS = flags.FLAGS


def multiply_adds(model: keras.Model) -> dict[str, int]:
    """Multiply-adds per image of every convolution and dense layer, from their shapes."""
    counts = {}
    for layer in model.layers:
        kernel = getattr(layer, "kernel", None)
        if kernel is None:
            continue
        per_position = int(np.prod(kernel.shape))  # (kh, kw, cin / towers, cout) or (in, out)
        spatial = int(np.prod(layer.output.shape[1:-1])) if len(layer.output.shape) == 4 else 1
        counts[layer.name] = per_position * spatial
    return counts


def _batch(config, batch_size):
    size = config.input_size
    images = tf.random.stateless_uniform([batch_size, size, size, 3], [0, 1], -128.0, 128.0)
    labels = tf.random.stateless_uniform([batch_size], [0, 2], 0, config.num_classes, tf.int32)
    return images, labels


def _time(step, steps: int) -> float:
    """Seconds per step after warm-up (tracing); ``step()`` must block until done."""
    for _ in range(WARMUP_STEPS):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def time_fit(config, batch_size: int, steps: int) -> float:
    model = model_lib.build_from_config(config, seed=0)
    model.compile(optimizer=PaperSGD(config.learning_rate), loss="sparse_categorical_crossentropy")
    dataset = tf.data.Dataset.from_tensors(_batch(config, batch_size)).repeat()
    model.fit(dataset, steps_per_epoch=WARMUP_STEPS, epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
    return batch_size * steps / (time.perf_counter() - start)


def time_bare_step(config, batch_size: int, steps: int) -> float:
    model = model_lib.build_from_config(config, seed=0)
    optimizer = PaperSGD(config.learning_rate)
    images, labels = _batch(config, batch_size)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, model(images, training=True)))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss

    return batch_size / _time(lambda: float(step()), steps)


def time_our_loop(config, batch_size: int, steps: int) -> float:
    config = config.replace(batch_size=batch_size)
    trainer = training.Trainer(config, distribute.make_strategy(devices=["/cpu:0"]))
    trainer.set_learning_rate(config.learning_rate)
    iterator = trainer.distribute(data.synthetic_inputs(config), 0)
    return batch_size / _time(lambda: trainer.train_step(iterator), steps)


def main(argv):
    del argv
    figures = {}
    for name, preset, batch_size in (("full", "paper", FLAGS.batch_size),
                                     ("small", "shapes", FLAGS.small_batch_size)):
        config = get_config(preset, batch_size=batch_size)
        fit = time_fit(config, batch_size, FLAGS.steps)
        bare = time_bare_step(config, batch_size, FLAGS.steps)
        ours = time_our_loop(config, batch_size, FLAGS.steps)
        figures[name] = {
            "preset": preset, "batch_size": batch_size, "input_size": config.input_size,
            "fit_images_per_second": round(fit, 1), "bare_step_images_per_second": round(bare, 1),
            "our_loop_images_per_second": round(ours, 1),
            "fit_vs_bare_step": round(fit / bare, 3), "our_loop_vs_bare_step": round(ours / bare, 3),
        }
        print(f"{name} ({preset}, batch {batch_size}): fit {fit:.1f} images/s, bare step {bare:.1f}, "
              f"our loop {ours:.1f}; fit/bare {fit / bare:.3f}, ours/bare {ours / bare:.3f}")
    macs = multiply_adds(model_lib.build_from_config(get_config("paper")))
    forward_flops = 2 * sum(macs.values())
    needed = EPOCHS * IMAGENET_TRAIN_IMAGES / SECONDS_PER_DAY
    # Training costs about three forward passes: the forward, and the backward for inputs and weights.
    figures["paper_network"] = {
        "multiply_adds_per_image": sum(macs.values()),
        "forward_gflops_per_image": round(forward_flops / 1e9, 3),
        "training_gflops_per_image": round(3 * forward_flops / 1e9, 3),
        "images_per_second_for_90_epochs_in_a_day": round(needed, 1),
        "training_tflops_per_second_for_90_epochs_in_a_day": round(needed * 3 * forward_flops / 1e12, 2),
        "cpu_days_for_90_epochs_at_measured_rate": round(
            EPOCHS * IMAGENET_TRAIN_IMAGES / figures["full"]["our_loop_images_per_second"] / SECONDS_PER_DAY, 1),
        "multiply_adds_by_layer": macs,
    }
    print(f"paper network: {sum(macs.values()):,} multiply-adds per image, {forward_flops / 1e9:.2f} GFLOPs "
          f"forward, ~{3 * forward_flops / 1e9:.2f} GFLOPs to train on one image; 90 epochs of ImageNet in a day "
          f"need {needed:.0f} images/s ({needed * 3 * forward_flops / 1e12:.2f} TFLOP/s sustained)")
    print(json.dumps(figures))


if __name__ == "__main__":
    app.run(main)
