"""Runs on N logical CPU devices (the paper's two GPUs), each mode in a fresh interpreter.

    python -m tests.scripts.replicas <mode> <devices> <output.json> [...]

Started by ``tests/test_replicas.py``, which reads the JSON a mode writes.
"""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np
import tensorflow as tf

from alexnet_tf import data, device_preprocess, evaluation, preprocess, sources, statistics, training, views
from alexnet_tf.config import get_config


def tiny(**overrides):
    """The tiny preset, deterministic, batches of 16, no colour noise."""
    return get_config("tiny", **{**dict(batch_size=16, deterministic=True, pca_std=0.0), **overrides})


def _logical_devices(count):
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * int(count))
    return [f"/cpu:{i}" for i in range(int(count))]


def _weights(model):
    return [np.array(w) for w in model.weights]


def _scaling(devices, out):
    """One mixed_float16 step on a global batch whose share on one replica overflows float16."""
    names = _logical_devices(devices)
    strategy = tf.distribute.MirroredStrategy(names)
    config = tiny(precision="mixed_float16", dropout=0.0)
    rng = np.random.default_rng(0)
    size = config.input_size
    base = rng.normal(0, 50, (config.batch_size, size, size, 3)).astype(np.float32)
    labels = rng.integers(0, config.num_classes, config.batch_size).astype(np.int32)
    share = config.batch_size // len(names)

    def one_step(images):
        trainer = training.Trainer(config, strategy)
        trainer.set_learning_rate(config.learning_rate)
        before, scale_before = _weights(trainer.model), float(trainer.optimizer.scale_loss(1.0))
        dataset = tf.data.Dataset.from_tensors((views.FloatImages(images), labels))
        loss = trainer.train_step(iter(strategy.experimental_distribute_dataset(dataset)))[0]
        after = _weights(trainer.model)
        return {
            "loss_finite": bool(np.isfinite(loss)),
            "weights_finite": all(bool(np.isfinite(w).all()) for w in after),
            "weights_unchanged": all(np.array_equal(a, b) for a, b in zip(before, after, strict=True)),
            "scale_before": scale_before,
            "scale_after": float(trainer.optimizer.scale_loss(1.0)),
        }

    figures = {"clean": one_step(base), "overflow_on": {}}
    for replica in (0, len(names) - 1):  # the first replica's check decided; the last's was ignored
        # Pixels 1000x larger: the forward pass stays finite, the scaled float16 gradients do not.
        images = base.copy()
        images[replica * share:(replica + 1) * share] *= 1000.0
        figures["overflow_on"][replica] = one_step(images)
    # A NaN network (not an overflow a lower scale cures) still stops the run.
    trainer = training.Trainer(config, strategy)
    fc8 = trainer.model.get_layer("fc8")
    fc8.bias.assign(tf.fill(fc8.bias.shape, np.nan))
    dataset = tf.data.Dataset.from_tensors((views.FloatImages(base), labels))
    figures["nan_network_loss_is_nan"] = bool(np.isnan(
        trainer.train_step(iter(strategy.experimental_distribute_dataset(dataset)))[0]))
    pathlib.Path(out).write_text(json.dumps(figures))


def _dropout_outputs(strategy, config, units):
    """Each replica's output of the model's dropout6 on ones, for one step: [global batch, units]."""
    trainer = training.Trainer(config, strategy)
    layer = trainer.model.get_layer("dropout6")
    per_replica = config.batch_size // strategy.num_replicas_in_sync

    @tf.function
    def step():
        outputs = strategy.run(lambda: layer(tf.ones([per_replica, units]), training=True))
        return strategy.gather(outputs, axis=0)

    return step().numpy()


def _dropout(devices, out):
    names = _logical_devices(devices)
    config = tiny(dropout=0.5)
    units = 64
    mirrored = _dropout_outputs(tf.distribute.MirroredStrategy(names), config, units)
    one = _dropout_outputs(tf.distribute.OneDeviceStrategy("/cpu:0"), config, units)
    shares = np.split(mirrored != 0, len(names))
    identical = [[a, b] for a in range(len(names)) for b in range(a + 1, len(names))
                 if np.array_equal(shares[a], shares[b])]
    pathlib.Path(out).write_text(json.dumps({
        "replicas": len(names),
        "identical_replica_pairs": identical,
        "dropped_fraction": float(np.mean(mirrored == 0)),
        "equals_one_device": bool(np.array_equal(mirrored, one)),
    }))


def _batch_norm_step(strategy, config, images, labels, steps=1):
    """Every replica's copy of the model's variables, by name, after ``steps`` training steps."""
    trainer = training.Trainer(config, strategy)
    trainer.set_learning_rate(config.learning_rate)
    dataset = tf.data.Dataset.from_tensors((views.FloatImages(images), labels)).repeat()
    iterator = iter(strategy.experimental_distribute_dataset(dataset))
    for _ in range(steps):
        trainer.train_step(iterator)
    weights = trainer.model.weights
    copies = strategy.run(lambda: [tf.identity(w.value) for w in weights])
    return {w.path: [np.array(c, np.float32) for c in strategy.experimental_local_results(copy)]
            for w, copy in zip(weights, copies, strict=True)}


def _batch_norm(devices, out):
    names = _logical_devices(devices)
    mirrored = tf.distribute.MirroredStrategy(names)
    one = tf.distribute.OneDeviceStrategy("/cpu:0")
    share = 6 // len(names)
    config = tiny(batch_norm=True, dropout=0.0, batch_size=6, learning_rate=0.05, precision="mixed_float16")
    rng = np.random.default_rng(0)
    images = rng.normal(0, 50, (6, config.input_size, config.input_size, 3)).astype(np.float32)
    labels = rng.integers(0, config.num_classes, 6).astype(np.int32)
    initial = _batch_norm_step(one, config, images, labels, steps=0)
    with_dropout = _batch_norm_step(mirrored, config.replace(dropout=0.5), images, labels, steps=2)
    stats = [k for k in initial if k.endswith(("moving_mean", "moving_variance"))]
    step = {k: v[0] for k, v in _batch_norm_step(mirrored, config, images, labels).items()}
    shares = [_batch_norm_step(one, config.replace(batch_size=share), images[i:i + share], labels[i:i + share])
              for i in range(0, 6, share)]
    mean_of_shares = {k: np.mean([s[k][0] for s in shares], axis=0) for k in step}
    pathlib.Path(out).write_text(json.dumps({
        "replicas": len(names),
        "copies_differ": [k for k in stats if any(not np.array_equal(c, with_dropout[k][0]) for c in with_dropout[k])],
        "moved": all(not np.array_equal(with_dropout[k][0], initial[k][0]) for k in stats),
        "finite": all(bool(np.isfinite(c).all()) for v in with_dropout.values() for c in v),
        "max_difference_from_shares": max(float(np.abs(step[k] - mean_of_shares[k]).max()) for k in step),
        "max_difference_from_first_share": max(float(np.abs(step[k] - shares[0][k][0]).max()) for k in stats),
    }))


def _evaluate(devices, out, data_dir):
    """Evaluation and validation on N replicas for batch sizes that leave replicas empty."""
    from alexnet_tf.model import build_from_config

    names = _logical_devices(devices)
    base = tiny(dropout=0.0)

    def errors(report):
        return {view: [report[view]["top1_error"], report[view]["top5_error"]] for view in ("center_crop", "ten_crop")}

    one_model = build_from_config(base, seed=0)
    reference = evaluation.evaluate(one_model, base, data_dir, progress=False)
    strategy = tf.distribute.MirroredStrategy(names)
    with strategy.scope():
        model = build_from_config(base, seed=0)
    cases = []
    # (13 records, batch b): last batches of 1 .. b-1 images, fewer than the replicas need.
    for batch_size in (int(devices), 2 * int(devices) + 1):
        config = base.replace(batch_size=batch_size)
        report = evaluation.evaluate(model, config, data_dir, strategy=strategy, progress=False)
        inputs = sources.record_inputs(config, data_dir)
        trainer = training.Trainer(config.replace(batch_size=int(devices) * 2), strategy, inputs.stats)
        trainer.model.set_weights(one_model.get_weights())
        validation = trainer.validate(inputs)
        cases.append({
            "batch_size": batch_size,
            "num_images": report["num_images"],
            "labels": [c["images"] for c in report["center_crop"]["per_class"]],
            "errors": errors(report),
            "validation_images": validation["images"],
        })
    pathlib.Path(out).write_text(json.dumps({"one_device_errors": errors(reference), "cases": cases}))


def _float_training_view(encoded, config, stats, draws):
    """The training view as the float pipeline computed it before the uint8 host pipeline.

    The same draws (crop, flip, colour offset); the central square decoded and resized in float
    (or, when its side already is image_size, only the crop decoded); the crop mirrored, minus
    the mean image's window mirrored with it, plus the colour offset.
    """
    size, crop = config.image_size, config.input_size
    offset_y, offset_x = draws.crop[0], draws.crop[1]
    flip = draws.flip
    shape = tf.image.extract_jpeg_shape(encoded)  # the converter writes every record as JPEG
    side = tf.reduce_min(shape[:2])
    top, left = (shape[0] - side) // 2, (shape[1] - side) // 2

    def crop_only():
        window = tf.stack([top + offset_y, left + offset_x, crop, crop])
        return tf.cast(tf.image.decode_and_crop_jpeg(encoded, window, channels=3), tf.float32)

    def from_square():
        square = tf.image.decode_and_crop_jpeg(encoded, tf.stack([top, left, side, side]), channels=3)
        return preprocess.center_square(square, size)[offset_y : offset_y + crop, offset_x : offset_x + crop]

    image = tf.cond(side == size, crop_only, from_square)
    image = tf.where(flip, tf.reverse(image, axis=[1]), image)
    mean = preprocess.mean_to_subtract(config, stats)
    means = tf.constant(np.stack([mean, mean[:, ::-1]]))
    mean_x = tf.where(flip, size - offset_x - crop, offset_x)
    image = image - means[tf.cast(flip, tf.int32), offset_y : offset_y + crop, mean_x : mean_x + crop]
    return image + draws.rgb, side == size


def _finish(devices, out, sets):
    """Training batches finished on the device against the float views of the same records and seeds."""
    names = _logical_devices(devices)
    strategy = tf.distribute.MirroredStrategy(names) if len(names) > 1 else tf.distribute.OneDeviceStrategy(names[0])
    host_half = preprocess.decode_train_crop
    results = []
    for spec in json.loads(sets):
        data_dir = spec["data_dir"]
        config = get_config(spec["preset"], num_classes=1000, batch_size=8, deterministic=True, seed=5,
                            mean_subtraction="image", pca_std=0.1)
        stats = statistics.load_statistics(data_dir)
        assert stats.mean_image is not None

        def with_reference(encoded, draws, image_size, input_size, config=config, stats=stats):
            view = host_half(encoded, draws, image_size, input_size)
            return (view, *_float_training_view(encoded, config, stats, draws))

        preprocess.decode_train_crop = with_reference  # what data.make_dataset maps, traced below
        pattern = data.file_pattern(data_dir, "train")
        batches = strategy.distribute_datasets_from_function(
            lambda context, pattern=pattern, config=config, stats=stats: data.make_dataset(
                pattern, True, config, input_context=context, stats=stats))
        finish = device_preprocess.DeviceFinish(config, stats)

        @tf.function
        def step(batch, finish=finish):
            def replica(features, labels):
                view, reference, exact = features
                flags = [tf.cast(flag, tf.int32) for flag in (exact, view.flip)]  # gather takes no bool
                return finish(view), reference, *flags

            return [strategy.gather(t, axis=0) for t in strategy.run(replica, args=batch)]

        views, references, exact, flips = [], [], [], []
        iterator = iter(batches)
        for _ in range(data.count_records(data_dir, "train") // config.batch_size):
            for values, outputs in zip(step(next(iterator)), (views, references, exact, flips), strict=True):
                outputs.append(values.numpy())
        views, references = np.concatenate(views), np.concatenate(references)
        exact, flips = np.concatenate(exact).astype(bool), np.concatenate(flips)
        difference = np.abs(views - references).reshape(len(views), -1).max(axis=1)
        mean_difference = np.abs(views - references).reshape(len(views), -1).mean(axis=1)
        results.append({
            "name": spec["name"], "replicas": strategy.num_replicas_in_sync, "images": len(views),
            "exact": int(exact.sum()), "flipped": int(flips.sum()), "max_view": float(np.abs(views).max()),
            "max_difference_exact": float(difference[exact].max(initial=0.0)),
            "max_difference_resized": float(difference[~exact].max(initial=0.0)),
            "mean_difference_resized": float(mean_difference[~exact].mean()) if (~exact).any() else 0.0,
        })
    pathlib.Path(out).write_text(json.dumps(results))


if __name__ == "__main__":
    modes = {"scaling": _scaling, "dropout": _dropout, "evaluate": _evaluate, "finish": _finish,
             "batch_norm": _batch_norm}
    modes[sys.argv[1]](*sys.argv[2:])
