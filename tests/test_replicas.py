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
from converted import DrawnSet, copy_shards, cycling, read_records  # noqa: E402

from alexnet_tf import data, evaluation, training  # noqa: E402
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


def test_training_metrics_break_ties_as_the_evaluation_does():
    """Uniform outputs (a collapsed network) are not 100% right: ties go to the lower class."""
    uniform = tf.fill([6, 10], 0.1)
    labels = tf.constant([0, 3, 3, 7, 9, 4], tf.int32)
    top1, top5, count = (float(v) for v in evaluation.correct_counts(labels, uniform, 5))
    report = evaluation.metrics(evaluation.top_k_classes(uniform, 5).numpy(), labels.numpy(), 10)
    assert count == 6
    assert top1 == 1.0  # only label 0: the tie's winner
    assert top5 == 4.0  # labels 0, 3, 3, 4 are among classes 0-4
    assert 1 - top1 / count == pytest.approx(report["top1_error"])
    assert 1 - top5 / count == pytest.approx(report["top5_error"])
    # A partial tie: classes 2 and 5 share the top; the lower index wins in both definitions.
    tied = tf.constant([[0.0, 0.0, 0.4, 0.0, 0.0, 0.4, 0.2, 0.0, 0.0, 0.0]] * 2)
    top1, _, _ = evaluation.correct_counts(tf.constant([2, 5]), tied, 5)
    assert float(top1) == 1.0


def test_validation_of_a_collapsed_network_counts_ties_as_misses():
    config = _tiny(dropout=0.0)
    trainer = training.Trainer(config, tf.distribute.OneDeviceStrategy("/cpu:0"))
    fc8 = trainer.model.get_layer("fc8")
    fc8.kernel.assign(tf.zeros_like(fc8.kernel))
    fc8.bias.assign(tf.zeros_like(fc8.bias))  # every image: the same probability for each class
    rng = np.random.default_rng(0)
    images = rng.normal(0, 50, (20, config.input_size, config.input_size, 3)).astype(np.float32)
    labels = np.arange(20, dtype=np.int32) % 10
    inputs = data.array_inputs(config, images, labels, images, labels)
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
        data.record_inputs(config, data_dir)
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
        dataset = tf.data.Dataset.from_tensors((images, labels))
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
    dataset = tf.data.Dataset.from_tensors((base, labels))
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
        inputs = data.record_inputs(config, data_dir)
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


if __name__ == "__main__":
    modes = {"scaling": _scaling, "dropout": _dropout, "evaluate": _evaluate}
    modes[sys.argv[1]](*sys.argv[2:])
