"""The paper's two GPUs on logical CPU devices: loss scaling, dropout, metrics and evaluation per replica.

Tests that need N logical devices run this file as a script in a fresh process:
``python tests/test_replicas.py <mode> <devices> <output.json> ...``.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import tensorflow as tf  # noqa: E402
from converted import ASSORTED, IMAGENETTE, DrawnSet, RealSet, copy_shards, cycling, read_records  # noqa: E402

from alexnet_tf import data, device_preprocess, evaluation, preprocess, sources, statistics, training, views  # noqa: E402,E501
from alexnet_tf import workdir as workdir_lib  # noqa: E402
from alexnet_tf.config import get_config  # noqa: E402

# 13 validation images: batches of 2, 4, 5 and 9 leave a short last batch that some replicas see
# nothing of; one batch of 16 training images.
THIRTEEN = DrawnSet(train_labels=cycling(16), val_labels=cycling(13), train_shards=1)


def _tiny(**overrides):
    return get_config("tiny", **{**dict(batch_size=16, deterministic=True, pca_std=0.0), **overrides})


def _run_script(*args, timeout=300):
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, __file__, *map(str, args)], cwd=ROOT, env=environment,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]


# --------------------------------------------------------------------------------------------
# Metrics: one top-k definition


def test_validation_of_a_collapsed_network_counts_ties_as_misses():
    config = _tiny(dropout=0.0)
    trainer = training.Trainer(config, tf.distribute.OneDeviceStrategy("/cpu:0"))
    fc8 = trainer.model.get_layer("fc8")
    fc8.kernel.assign(tf.zeros_like(fc8.kernel))
    fc8.bias.assign(tf.zeros_like(fc8.bias))  # every image: the same probability for each class
    rng = np.random.default_rng(0)
    images = rng.normal(0, 50, (20, config.input_size, config.input_size, 3)).astype(np.float32)
    labels = np.arange(20, dtype=np.int32) % 10
    inputs = sources.array_inputs(config, images, labels, images, labels)
    result = trainer.validate(inputs)
    assert result["top1_error"] == pytest.approx(0.9)  # only class 0 is "predicted"
    assert result["top5_error"] == pytest.approx(0.5)


# --------------------------------------------------------------------------------------------
# Labels checked against synsets


def _middle_classes(offset: int) -> DrawnSet:
    """Images of middle classes only (never the first or last of ten), labels stored ``offset``-based."""
    classes = (3, 4, 5, 6) * 2
    return DrawnSet(train_labels=classes, val_labels=classes, label_offset=offset)


@pytest.mark.parametrize("stored, read", [(1, 0), (0, 1)])
def test_shifted_labels_stop_with_the_right_label_offset(converted, stored, read):
    data_dir = str(converted(_middle_classes(stored)))
    config = _tiny(label_offset=read, data_dir=data_dir)
    message = f"need --label_offset={stored}, not --label_offset={read}"
    with pytest.raises(ValueError, match=message):
        sources.record_inputs(config, data_dir)
    with pytest.raises(ValueError, match=message):
        evaluation.evaluate(lambda images: images, config, data_dir, progress=False)
    evaluation.data.check_labels(data_dir, "train", config.replace(label_offset=stored))  # the right one passes


def test_a_wnid_missing_from_the_synsets_file_is_an_error(converted, tmp_path):
    data_dir = copy_shards(converted(_middle_classes(0)), tmp_path / "data")
    (data_dir / "synsets.txt").write_text("".join(f"n{i:08d}\n" for i in range(10)))
    with pytest.raises(ValueError, match="synsets.txt does not list"):
        evaluation.data.check_labels(str(data_dir), "validation", _tiny())


# --------------------------------------------------------------------------------------------
# The training set's statistics travel with the model


def test_evaluation_uses_the_models_statistics_whatever_the_data_dir(converted, tmp_path):
    """The same images converted twice, beside two different training sets: the same report."""
    from alexnet_tf import export
    from alexnet_tf.statistics import imagenet_statistics, load_statistics

    config = _tiny(dropout=0.0, epochs=1)
    first = copy_shards(converted(THIRTEEN), tmp_path / "first")
    second = copy_shards(first, tmp_path / "second")
    for directory, mean in ((first, 60.0), (second, 200.0)):
        stats = imagenet_statistics()
        stats.mean_image = np.full((config.image_size, config.image_size, 3), mean, np.float32)
        stats.save(str(directory))
    workdir = tmp_path / "run"
    summary = training.train(config.replace(data_dir=str(first)), str(workdir), verbose=False)
    model, _ = workdir_lib.load_model(str(workdir))
    predict, _ = export.load_predictor(summary["saved_model"])
    reports = {}
    for source, predictor in ((str(workdir), model), (summary["saved_model"], predict)):
        stats = workdir_lib.model_statistics(source)
        assert stats is not None and stats.source.startswith(source)
        np.testing.assert_array_equal(stats.mean_image, load_statistics(str(first)).mean_image)
        for data_dir in (first, second):
            reports[source, data_dir] = evaluation.evaluate(predictor, config, str(data_dir), progress=False,
                                                            stats=stats, ten_crop=False)
    for report in reports.values():
        for view in ("center_crop",):
            first_report = reports[str(workdir), first][view]
            assert [report[view][k] for k in ("top1_error", "top5_error", "per_class", "most_confused")] == [
                first_report[k] for k in ("top1_error", "top5_error", "per_class", "most_confused")]
    assert reports[str(workdir), second]["statistics"] == str(workdir / "statistics.json")
    # Without the model's statistics the data directory's stand in, and the report says so.
    assert evaluation.evaluate(model, config, str(second), progress=False, ten_crop=False)["statistics"] == str(
        second / "statistics.json")


# --------------------------------------------------------------------------------------------
# Subprocess tests on N logical CPU devices


@pytest.mark.parametrize("devices", [2])
def test_loss_scaling_skips_the_step_when_any_replica_overflows(tmp_path, devices):
    out = tmp_path / "scaling.json"
    _run_script("scaling", devices, out)
    figures = json.loads(out.read_text())
    for replica, result in figures["overflow_on"].items():
        assert result["weights_finite"], f"replica {replica} overflowed: non-finite weights after the step"
        assert result["weights_unchanged"], f"replica {replica} overflowed: the step was applied"
        assert result["scale_after"] == result["scale_before"] / 2, f"replica {replica}: scale not lowered"
        assert result["loss_finite"], f"replica {replica}: a skipped step is not a NaN loss"
    assert figures["clean"]["weights_finite"] and not figures["clean"]["weights_unchanged"]
    assert figures["clean"]["scale_after"] == figures["clean"]["scale_before"]
    assert figures["nan_network_loss_is_nan"]  # a real NaN still stops the run


@pytest.mark.parametrize("devices", [2, 4])
def test_dropout_masks_are_independent_across_replicas(tmp_path, devices):
    out = tmp_path / "dropout.json"
    _run_script("dropout", devices, out)
    figures = json.loads(out.read_text())
    assert figures["replicas"] == devices
    # Each replica's share of the global batch gets its own masks...
    assert figures["identical_replica_pairs"] == [], figures
    # ...at the layer's rate...
    assert abs(figures["dropped_fraction"] - 0.5) < 0.05, figures
    # ...and they are the masks one device draws for the same global batch.
    assert figures["equals_one_device"]


@pytest.mark.parametrize("devices", [2, 3])
def test_batch_norm_statistics_agree_across_replicas(tmp_path, devices):
    """--batch_norm (not the paper's): each replica normalises by its share of the batch (3 or 2
    images), and every replica's copy of the moving statistics is their mean after each step."""
    out = tmp_path / "batch_norm.json"
    _run_script("batch_norm", devices, out)
    figures = json.loads(out.read_text())
    assert figures["replicas"] == devices
    # mixed_float16 and dropout, two steps: the copies are equal and have moved from their start.
    assert figures["copies_differ"] == [], figures
    assert figures["moved"] and figures["finite"], figures
    # Without dropout, one step on N replicas is the mean of N one-device steps on the shares
    # (the moving statistics, and the weights: the gradients are averaged)...
    assert figures["max_difference_from_shares"] < 1e-4, figures
    # ...not the first share's step alone, as the copies were left before.
    assert figures["max_difference_from_first_share"] > 1e-3, figures


# Imagenette's 224x224 photographs converted with the paper's --resize=256: every training crop
# is decoded alone (decode_and_crop_jpeg), no resize.
IMAGENETTE_256 = RealSet(train_per_class=2, val_per_class=1, resize=256)


@pytest.mark.parametrize("devices", [1, 2])
def test_device_finish_equals_the_float_pipeline(converted, tmp_path, devices):
    """The uint8 crops finished in the compiled step are today's float training views, same seeds.

    Mean image, mirrored with the crop, and the paper's colour noise, on 1 and 2 replicas: from
    --resize=256 shards (Imagenette) and drawn images whose shorter side is already image_size,
    to float rounding; from originals (Imagenette's 224 enlarged to 256; drawn images of assorted
    sizes shrunk or enlarged to 76), whose resize now ends in uint8, within its rounding (0.5).
    """
    sets = [
        {"name": "resized_256", "data_dir": str(converted(IMAGENETTE_256)), "preset": "paper"},
        {"name": "originals_224", "data_dir": str(converted(IMAGENETTE)), "preset": "paper"},
        {"name": "assorted", "data_dir": str(converted(ASSORTED)), "preset": "tiny"},
    ]
    out = tmp_path / "finish.json"
    _run_script("finish", devices, out, json.dumps(sets))
    results = {r["name"]: r for r in json.loads(out.read_text())}
    assert results["resized_256"]["exact"] == results["resized_256"]["images"] == 16
    assert results["originals_224"]["exact"] == 0 and results["originals_224"]["images"] == 160
    assert 0 < results["assorted"]["exact"] < results["assorted"]["images"] == 24  # both paths
    for result in results.values():
        assert result["replicas"] == devices
        assert 0 < result["flipped"] < result["images"], result  # mirrored and plain views both
        assert result["max_view"] > 50, result  # real pixels, not zeros
        if result["exact"]:
            assert result["max_difference_exact"] <= 1e-3, result
        if result["exact"] < result["images"]:
            assert result["max_difference_resized"] <= 0.5 + 1e-3, result
            assert result["mean_difference_resized"] > 0.05, result  # the rounding is there, and small


@pytest.mark.parametrize("devices", [2, 4])
def test_evaluation_counts_every_record_once_with_empty_replicas(converted, tmp_path, devices):
    data_dir = converted(THIRTEEN)
    labels = [r.label for r in read_records(data_dir, "validation")]
    histogram = np.bincount(labels, minlength=_tiny().num_classes).tolist()
    out = tmp_path / "evaluation.json"
    _run_script("evaluate", devices, out, data_dir)
    figures = json.loads(out.read_text())
    assert len(figures["cases"]) == 2 and len(labels) == len(THIRTEEN.val_labels)
    for case in figures["cases"]:
        assert case["num_images"] == len(labels), case
        assert case["labels"] == histogram, case
        assert case["errors"] == figures["one_device_errors"], case
        assert case["validation_images"] == len(labels), case


# --------------------------------------------------------------------------------------------
# Script modes


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
    config = _tiny(precision="mixed_float16", dropout=0.0)
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
    config = _tiny(dropout=0.5)
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
    config = _tiny(batch_norm=True, dropout=0.0, batch_size=6, learning_rate=0.05, precision="mixed_float16")
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
    base = _tiny(dropout=0.0)

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
