"""Training throughput on synthetic tensors: Keras fit, a bare tf.function step, our loop.

    python benchmarks/training.py [--steps=20] [--batch_size=32]
    python benchmarks/training.py --parts=loop          # only loop_vs_in_graph
    python benchmarks/training.py --parts=xla --repeats=3 --steps=30   # --jit_compile, imagenette preset

``--parts=throughput``: for the full network (the paper preset) and the small built-in preset,
the same model and optimiser (PaperSGD) train on one random batch repeated, so the input
pipeline costs nothing:

* ``fit``: ``model.compile(...)`` + ``model.fit`` on a repeated ``tf.data`` batch;
* ``bare_step``: ``tf.function`` of GradientTape + ``apply_gradients``, nothing else;
* ``our_loop``: ``alexnet_tf.training.Trainer.train_step`` (strategy.run, replica sums, NaN check,
  the figures the progress bar shows), one step per call.

Also prints the network's multiply-adds per image (counted from the layers' shapes) and the
images/s and FLOP/s a 90-epoch ImageNet run needs to finish in one day.

``--parts=loop``: what the host's round trips cost when a step is as short as on a GPU. A
scaled-down AlexNet built by the same code (``--loop_*`` flags, sized for a step of milliseconds
on a quiet 2-core machine; it prints the step time it measured, docs/benchmarks.md gives it) trains
on an in-memory batch, so the input pipeline is not the limit, two ways:

* ``in_graph``: the Trainer's own train step in one ``tf.while_loop`` over all timed steps: one
  call, no host round trip at all, the ceiling;
* ``train``: ``alexnet_tf.training.train`` itself (progress bar off, TensorBoard on), with
  ``steps_per_loop`` at its default and at 1, timed between its per-loop callbacks after the
  first (which includes tracing).

``loop_vs_in_graph`` is ``train``'s images/s over ``in_graph``'s (goal >= 0.9), each the best of
``--repeats`` interleaved runs.

``--parts=epochs``: what a new input pipeline per epoch costs. ``training.train`` runs the
``imagenette`` preset's network on synthetic batches for ``--epochs_epochs`` epochs of
``--epochs_steps`` steps, alternately as it does (one pipeline for
the run: ``Trainer.epoch_iterator``) and with a new pipeline every epoch, as with
``--deterministic``. Deleting a tf.data iterator waits until its autotuning thread wakes, and
that thread sleeps longer and longer (up to a minute) as the iterator ages. Printed: each epoch's
first loop of steps, whose time includes deleting the last epoch's iterator, and images/s over
the epochs after the first, best of ``--repeats``.

``--parts=xla``: what ``--jit_compile`` buys on this CPU. ``Trainer.train_step`` of the
``imagenette`` preset on synthetic batches, without and with XLA, alternately for ``--repeats``
rounds of ``--steps`` steps: images/s and CPU-milliseconds per image (this process), best of the
rounds, and their ratios.

The last line is one JSON object of all figures.
"""

from __future__ import annotations

import tempfile
import time

import harness

# The memory settings train.py runs with; set before TensorFlow is imported.
harness.setup(reuse_cpu_memory=True)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from alexnet_tf import distribute, sources, training  # noqa: E402
from alexnet_tf import model as model_lib  # noqa: E402
from alexnet_tf.config import Config, get_config  # noqa: E402
from alexnet_tf.optimizer import PaperSGD  # noqa: E402

IMAGENET_TRAIN_IMAGES = 1_281_167
EPOCHS = 90
SECONDS_PER_DAY = 86_400
WARMUP_STEPS = 3

flags.DEFINE_integer("steps", 15, "timed steps per method")
flags.DEFINE_integer("batch_size", 32, "global batch for the full network (the paper's is 128)")
flags.DEFINE_integer("small_batch_size", 32, "batch for the small preset")
flags.DEFINE_list("parts", ["throughput", "loop"], "throughput (fit, bare step, our loop), loop "
                  "(loop_vs_in_graph), epochs (a pipeline per epoch against one per run) and/or xla "
                  "(--jit_compile against the graph alone, imagenette preset)")
flags.DEFINE_integer("loop_steps", 800, "timed steps per loop_vs_in_graph measurement")
flags.DEFINE_integer("loop_batch_size", 4, "batch of the ~2 ms model")
flags.DEFINE_integer("loop_input_size", 67, "input of the ~2 ms model")
flags.DEFINE_float("loop_width", 0.0625, "width of the ~2 ms model")
flags.DEFINE_integer("repeats", 3, "interleaved repeats of each loop measurement; the best counts")
flags.DEFINE_list("steps_per_loop", [], "steps_per_loop values to time besides the default and 1")
flags.DEFINE_integer("epochs_epochs", 5, "epochs per --parts=epochs run")
flags.DEFINE_integer("epochs_steps", 60, "steps per epoch of a --parts=epochs run")
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


def _time(step, steps: int) -> tuple[float, float]:
    """Seconds and CPU-seconds (this process) per step after warm-up (tracing); ``step()`` must block."""
    for _ in range(WARMUP_STEPS):
        step()
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps, (time.process_time() - cpu_start) / steps


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

    return batch_size / _time(lambda: float(step()), steps)[0]


def _our_loop_step(config, batch_size: int, steps: int) -> tuple[float, float]:
    """Seconds and CPU-seconds per step of ``Trainer.train_step`` on synthetic batches."""
    config = config.replace(batch_size=batch_size)
    trainer = training.Trainer(config, distribute.make_strategy(devices=["/cpu:0"]))
    trainer.set_learning_rate(config.learning_rate)
    iterator = trainer.distribute(sources.synthetic_inputs(config), 0)
    return _time(lambda: trainer.train_step(iterator), steps)


def time_our_loop(config, batch_size: int, steps: int) -> float:
    return batch_size / _our_loop_step(config, batch_size, steps)[0]


def _loop_config() -> Config:
    return get_config("tiny", batch_size=FLAGS.loop_batch_size, input_size=FLAGS.loop_input_size,
                      width=FLAGS.loop_width, epochs=1, deterministic=False)


def time_in_graph(config: Config, steps: int) -> float:
    """Images/s of the Trainer's train step in one tf.while_loop of ``steps`` steps."""
    trainer = training.Trainer(config, distribute.make_strategy(devices=["/cpu:0"]))
    trainer.set_learning_rate(config.learning_rate)
    iterator = trainer.distribute(sources.synthetic_inputs(config), 0)
    step = trainer._train_step  # the function the Trainer's loops run, one batch per call

    @tf.function
    def in_graph(iterator, steps):
        def body(i, images):
            return i + 1, images + step(next(iterator))[3]

        return tf.while_loop(lambda i, _: i < steps, body, (tf.constant(0), tf.constant(0.0)))[1]

    in_graph(iterator, tf.constant(WARMUP_STEPS))
    start = time.perf_counter()
    images = float(in_graph(iterator, tf.constant(steps)))
    return images / (time.perf_counter() - start)


def time_train(config: Config, steps: int, steps_per_loop: int) -> float:
    """Images/s of ``training.train`` between its first and last per-loop callbacks."""
    marks = []
    warmup = max(WARMUP_STEPS, steps_per_loop)
    run = config.replace(steps_per_loop=steps_per_loop, steps_per_epoch=steps + warmup)
    with tempfile.TemporaryDirectory() as workdir:
        training.train(run, workdir, synthetic=True, finish=False, verbose=False,
                       strategy=distribute.make_strategy(devices=["/cpu:0"]),
                       step_callback=lambda step, figures: marks.append((time.perf_counter(), step)))
    (start, first), (end, last) = marks[0], marks[-1]
    return (last - first) * config.batch_size / (end - start)


def loop_vs_in_graph() -> dict:
    config = _loop_config()
    default = Config().steps_per_loop
    loops = sorted({default, 1, *(int(n) for n in FLAGS.steps_per_loop)})
    best = {"in_graph": 0.0, **{n: 0.0 for n in loops}}
    for repeat in range(FLAGS.repeats):
        rate = time_in_graph(config, FLAGS.loop_steps)
        best["in_graph"] = max(best["in_graph"], rate)
        print(f"repeat {repeat + 1}: in-graph while_loop {rate:.0f} images/s", end="")
        for n in loops:
            rate = time_train(config, FLAGS.loop_steps, n)
            best[n] = max(best[n], rate)
            print(f", train(steps_per_loop={n}) {rate:.0f}", end="")
        print(flush=True)
    ceiling = best["in_graph"]
    figures = {
        "model": {"input_size": config.input_size, "width": config.width, "batch_size": config.batch_size,
                  "step_ms_in_graph": round(1000 * config.batch_size / ceiling, 3)},
        "timed_steps": FLAGS.loop_steps, "repeats": FLAGS.repeats, "steps_per_loop_default": default,
        "in_graph_images_per_second": round(ceiling, 1),
        "train_images_per_second": {str(n): round(best[n], 1) for n in loops},
        "loop_vs_in_graph": round(best[default] / ceiling, 3),
        "loop_vs_in_graph_steps_per_loop_1": round(best[1] / ceiling, 3),
        "loop_vs_in_graph_by_steps_per_loop": {str(n): round(best[n] / ceiling, 3) for n in loops},
    }
    print(f"step {figures['model']['step_ms_in_graph']:.2f} ms in-graph; loop_vs_in_graph "
          f"{figures['loop_vs_in_graph']:.3f} at steps_per_loop={default}, "
          f"{figures['loop_vs_in_graph_steps_per_loop_1']:.3f} at 1; by steps_per_loop: "
          + ", ".join(f"{n}: {v}" for n, v in figures["loop_vs_in_graph_by_steps_per_loop"].items()))
    return figures


def time_epochs(pipeline_per_epoch: bool) -> tuple[list[float], float]:
    """Seconds of each epoch's first loop, and images/s over the epochs after the first."""
    config = get_config("imagenette", epochs=FLAGS.epochs_epochs, steps_per_epoch=FLAGS.epochs_steps)
    marks = []
    original = training.Trainer.epoch_iterator
    if pipeline_per_epoch:
        training.Trainer.epoch_iterator = training.Trainer.distribute
    try:
        with tempfile.TemporaryDirectory() as workdir:
            training.train(config, workdir, synthetic=True, finish=False, verbose=False,
                           strategy=distribute.make_strategy(devices=["/cpu:0"]),
                           step_callback=lambda step, figures: marks.append((time.perf_counter(), step)))
    finally:
        training.Trainer.epoch_iterator = original
    loops_per_epoch = len(marks) // config.epochs
    firsts = [marks[e * loops_per_epoch][0] - marks[e * loops_per_epoch - 1][0]
              for e in range(1, config.epochs)]
    (start, first), (end, last) = marks[loops_per_epoch - 1], marks[-1]
    return firsts, (last - first) * config.batch_size / (end - start)


def pipeline_per_epoch_vs_per_run() -> dict:
    best = {"per_run": 0.0, "per_epoch": 0.0}
    firsts = {"per_run": [], "per_epoch": []}
    for repeat in range(FLAGS.repeats):
        for name in ("per_epoch", "per_run"):
            seconds, rate = time_epochs(name == "per_epoch")
            firsts[name] += seconds
            best[name] = max(best[name], rate)
            print(f"repeat {repeat + 1}, a pipeline {name.replace('_', ' ')}: first loop of epochs 2-"
                  f"{FLAGS.epochs_epochs}: " + ", ".join(f"{s:.1f}" for s in seconds)
                  + f" s; {rate:.0f} images/s", flush=True)
    figures = {
        "preset": "imagenette", "epochs": FLAGS.epochs_epochs, "steps_per_epoch": FLAGS.epochs_steps,
        "first_loop_seconds": {k: [round(s, 2) for s in v] for k, v in firsts.items()},
        "images_per_second": {k: round(v, 1) for k, v in best.items()},
        "per_run_vs_per_epoch": round(best["per_run"] / best["per_epoch"], 3),
    }
    print(f"one pipeline per run: {best['per_run']:.0f} images/s; a pipeline per epoch: {best['per_epoch']:.0f} "
          f"({figures['per_run_vs_per_epoch']:.3f}x); first loops: per run median "
          f"{np.median(firsts['per_run']):.1f} s (max {max(firsts['per_run']):.1f}), per epoch median "
          f"{np.median(firsts['per_epoch']):.1f} s (max {max(firsts['per_epoch']):.1f})")
    return figures


def xla_vs_graph() -> dict:
    """The ``imagenette`` preset's train step without and with ``--jit_compile``, alternately."""
    config = get_config("imagenette", deterministic=False)
    best = {"graph": (0.0, 0.0), "xla": (0.0, 0.0)}  # (images/s, images per CPU-second)
    for repeat in range(FLAGS.repeats):
        for name in best:
            seconds, cpu = _our_loop_step(config.replace(jit_compile=name == "xla"), config.batch_size, FLAGS.steps)
            rates = (config.batch_size / seconds, config.batch_size / cpu)
            best[name] = tuple(max(old, new) for old, new in zip(best[name], rates))
            print(f"repeat {repeat + 1}, {name}: {rates[0]:.1f} images/s, {1000 / rates[1]:.2f} CPU-ms per image",
                  flush=True)
    figures = {
        "preset": "imagenette", "batch_size": config.batch_size, "steps": FLAGS.steps,
        "images_per_second": {k: round(v[0], 1) for k, v in best.items()},
        "cpu_ms_per_image": {k: round(1000 / v[1], 2) for k, v in best.items()},
        "xla_vs_graph": round(best["xla"][0] / best["graph"][0], 3),
        "xla_vs_graph_cpu": round(best["xla"][1] / best["graph"][1], 3),
    }
    print(f"--jit_compile: {figures['xla_vs_graph']:.3f}x the images/s, {figures['xla_vs_graph_cpu']:.3f}x the "
          f"images per CPU-second of the graph without XLA (best of {FLAGS.repeats})")
    return figures


def throughput() -> dict:
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
    return figures


def main(argv):
    del argv
    unknown = set(FLAGS.parts) - {"throughput", "loop", "epochs", "xla"}
    if unknown:
        raise app.UsageError(f"--parts: unknown {sorted(unknown)}; choose from throughput, loop, epochs, xla")
    figures = {}
    if "loop" in FLAGS.parts:
        figures["loop"] = loop_vs_in_graph()
    if "epochs" in FLAGS.parts:
        figures["epochs"] = pipeline_per_epoch_vs_per_run()
    if "xla" in FLAGS.parts:
        figures["xla"] = xla_vs_graph()
    if "throughput" in FLAGS.parts:
        figures.update(throughput())
    harness.print_figures(figures)


if __name__ == "__main__":
    harness.run(main)
