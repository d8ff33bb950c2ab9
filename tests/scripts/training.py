"""Training runs that need a fresh interpreter (logical CPU devices, TF_CONFIG, kill -9).

    python -m tests.scripts.training <mode> [...]

Started by ``tests/test_training.py``, which reads what a mode writes; the helpers above the
modes (the tiny config, learnable arrays, a run's checkpointed state) serve both.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import time

import numpy as np
import tensorflow as tf

from alexnet_tf import distribute, sources, training, views
from alexnet_tf import workdir as workdir_lib
from alexnet_tf.config import get_config

NUM_IMAGES = 64


def tiny(**overrides):
    base = dict(batch_size=16, deterministic=True, epochs=2)
    return get_config("tiny", **{**base, **overrides})


def learnable_arrays(config, seed=0, num_images=NUM_IMAGES):
    """Images whose class shows in their mean brightness, so a tiny model can learn them."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, config.num_classes, num_images).astype(np.int32)
    size = config.input_size
    images = rng.normal(0.0, 20.0, (num_images, size, size, 3)) + (labels[:, None, None, None] - 4.5) * 20.0
    return images.astype(np.float32), labels


def learnable_inputs(config, seed=0):
    images, labels = learnable_arrays(config, seed)
    return sources.array_inputs(config, images, labels, images[:32], labels[:32])


def model_weights(model):
    return [np.array(w) for w in model.weights]


# --------------------------------------------------------------------------------------------
# In-process tests


def mirrored(out):
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    # One strategy for all variants: collective ops of several MirroredStrategy objects in one
    # process can collide.
    strategies = (("one", tf.distribute.OneDeviceStrategy("/cpu:0")),
                  ("two", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])))
    variants = {}
    for name, overrides in (("float32", dict(dropout=0.0)), ("dropout", dict(dropout=0.5)),
                            ("mixed_float16", dict(dropout=0.5, precision="mixed_float16"))):
        config = tiny(pca_std=0.0, **overrides)
        inputs = learnable_inputs(config)
        results = {}
        for key, strategy in strategies:
            trainer = training.Trainer(config, strategy)
            start = model_weights(trainer.model)
            trainer.set_learning_rate(config.learning_rate)
            iterator = trainer.distribute(inputs, 0)
            for _ in range(3):
                trainer.train_step(iterator)
            results[key] = (start, model_weights(trainer.model), strategy.num_replicas_in_sync)
        (start, one, _), (_, two, replicas) = results["one"], results["two"]
        variants[name] = {
            "replicas": replicas,
            "moved": max(float(np.abs(a - b).max()) for a, b in zip(start, one)),
            "max_abs_difference": max(float(np.abs(a - b).max()) for a, b in zip(one, two)),
        }
    pathlib.Path(out).write_text(json.dumps(variants))


# The model's weights as a run's checkpoint names them (reached through the optimizer first).
TRAINED_WEIGHTS = "optimizer/_trainable_variables/"


def run_state(checkpoint):
    """Everything a run's checkpoint holds (weights, slots, steps, schedule, dropout state) but its save count."""
    return {name: tf.train.load_variable(checkpoint, name) for name, _ in tf.train.list_variables(checkpoint)
            if name != "_CHECKPOINTABLE_OBJECT_GRAPH" and not name.startswith("save_counter")}


def loops(out):
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    config = tiny(epochs=2, dropout=0.5, learning_rate=0.01, lr_schedule="step:1")
    images, labels = learnable_arrays(config, num_images=96)
    inputs = sources.array_inputs(config, images, labels)
    calls, weights = {}, {}
    for steps_per_loop in (1, 4):
        workdir = str(pathlib.Path(out).parent / f"loop{steps_per_loop}")
        found = calls[steps_per_loop] = []
        training.train(config.replace(steps_per_loop=steps_per_loop), workdir, inputs=inputs, strategy=strategy,
                       verbose=False, finish=False,
                       step_callback=lambda step, figures, found=found: found.append({"step": step, **figures}))
        weights[steps_per_loop] = run_state(workdir_lib.latest_checkpoint(workdir))
    # The same initial weights (the Trainer seeds them), under the same checkpoint names.
    start = run_state(training.Trainer(config, strategy).checkpoint.write(
        str(pathlib.Path(out).parent / "start" / "ckpt")))
    trained = [name for name in start if name.startswith(TRAINED_WEIGHTS)]
    assert len(trained) > 10 and start.keys() == weights[1].keys()
    pathlib.Path(out).write_text(json.dumps({
        "replicas": strategy.num_replicas_in_sync,
        "moved": max(float(np.abs(start[name] - weights[1][name]).max()) for name in trained),
        "identical": weights[1].keys() == weights[4].keys()
        and all(np.array_equal(weights[1][name], weights[4][name]) for name in weights[1]),
        "calls": calls,
    }))


def run(workdir, delay, data_dir=None, steps_per_loop=0, every=2):
    delay = float(delay)
    if data_dir:  # through the record pipeline, on two replicas
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        config = tiny(epochs=2, checkpoint_every_steps=int(every), data_dir=data_dir, shuffle_buffer=80)
        if int(steps_per_loop):  # else the default
            config = config.replace(steps_per_loop=int(steps_per_loop))
        summary = training.train(config, workdir, strategy=tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]),
                                 verbose=False, step_callback=lambda step, figures: time.sleep(delay))
    else:
        config = tiny(epochs=3, checkpoint_every_steps=2)
        summary = training.train(config, workdir, inputs=learnable_inputs(config), verbose=False,
                                 step_callback=lambda step, figures: time.sleep(delay))
    if "stopped" in summary:
        print("stopped by", summary["stopped"], flush=True)
        return
    import keras

    model = keras.saving.load_model(os.path.join(workdir, workdir_lib.MODEL_FILE), compile=False)
    np.savez(os.path.join(workdir, "weights.npz"), **{w.path: np.array(w) for w in model.weights})


def mwms(task_index, port0, port1, workdir, out):
    os.environ["TF_CONFIG"] = json.dumps({
        "cluster": {"worker": [f"localhost:{port0}", f"localhost:{port1}"]},
        "task": {"type": "worker", "index": int(task_index)},
    })
    strategy = distribute.make_strategy()
    config = tiny(epochs=2, steps_per_epoch=2)
    summary = training.train(config, workdir, inputs=learnable_inputs(config), strategy=strategy, verbose=False)
    pathlib.Path(out).write_text(json.dumps({
        "replicas": strategy.num_replicas_in_sync,
        "global_step": summary["global_step"],
        "val_top1_error": summary["val_top1_error"],
        "weights_l2_norm": summary["weights_l2_norm"],
        **_mwms_scaling_and_dropout(strategy, config),
    }))


def _mwms_scaling_and_dropout(strategy, config):
    """Across workers: an overflow on the second worker only skips the step on both; masks differ."""
    mixed = config.replace(precision="mixed_float16", dropout=0.5)
    trainer = training.Trainer(mixed, strategy)
    trainer.set_learning_rate(mixed.learning_rate)
    rng = np.random.default_rng(0)
    per_replica = mixed.batch_size // strategy.num_replicas_in_sync
    images = rng.normal(0, 50, (per_replica, mixed.input_size, mixed.input_size, 3)).astype(np.float32)
    labels = rng.integers(0, mixed.num_classes, per_replica).astype(np.int32)

    def dataset_fn(context):
        # Pixels 1000x larger on the second worker: its scaled float16 gradients overflow.
        factor = 1000.0 if context.input_pipeline_id == 1 else 1.0
        return tf.data.Dataset.from_tensors((views.FloatImages(images * factor), labels)).repeat()

    before, scale = model_weights(trainer.model), float(trainer.optimizer.scale_loss(1.0))
    loss = trainer.train_step(iter(strategy.distribute_datasets_from_function(dataset_fn)))[0]
    after = model_weights(trainer.model)
    layer = trainer.model.get_layer("dropout6")

    @tf.function
    def masks():
        outputs = strategy.run(lambda: layer(tf.ones([per_replica, 64]), training=True))
        return strategy.gather(outputs, axis=0)

    first, second = np.split(masks().numpy() != 0, 2)
    return {
        "overflow_loss_finite": bool(np.isfinite(loss)),
        "overflow_step_skipped": all(np.array_equal(a, b) for a, b in zip(before, after, strict=True)),
        "overflow_scale_halved": float(trainer.optimizer.scale_loss(1.0)) == scale / 2,
        "worker_masks_differ": not np.array_equal(first, second),
    }


if __name__ == "__main__":
    modes = {"mirrored": mirrored, "run": run, "mwms": mwms, "loops": loops}
    modes[sys.argv[1]](*sys.argv[2:])
