"""The paper's two GPUs on logical CPU devices: loss scaling, dropout, metrics and evaluation per replica.

Tests that need N logical devices run a mode of ``tests/scripts/replicas.py`` in a fresh process.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from alexnet_tf import evaluation, sources, training
from alexnet_tf import workdir as workdir_lib
from tests.scripts.replicas import tiny
from tests.support import run_script
from tests.support.converted import ASSORTED, IMAGENETTE, DrawnSet, RealSet, copy_shards, cycling, read_records

# 13 validation images: batches of 2, 4, 5 and 9 leave a short last batch that some replicas see
# nothing of; one batch of 16 training images.
THIRTEEN = DrawnSet(train_labels=cycling(16), val_labels=cycling(13), train_shards=1)


def _run_script(*args, timeout=300):
    result = run_script("replicas", *args, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]


# --------------------------------------------------------------------------------------------
# Metrics: one top-k definition


def test_validation_of_a_collapsed_network_counts_ties_as_misses():
    config = tiny(dropout=0.0)
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
    config = tiny(label_offset=read, data_dir=data_dir)
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
        evaluation.data.check_labels(str(data_dir), "validation", tiny())


# --------------------------------------------------------------------------------------------
# The training set's statistics travel with the model


def test_evaluation_uses_the_models_statistics_whatever_the_data_dir(converted, tmp_path):
    """The same images converted twice, beside two different training sets: the same report."""
    from alexnet_tf import export
    from alexnet_tf.statistics import imagenet_statistics, load_statistics

    config = tiny(dropout=0.0, epochs=1)
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
    histogram = np.bincount(labels, minlength=tiny().num_classes).tolist()
    out = tmp_path / "evaluation.json"
    _run_script("evaluate", devices, out, data_dir)
    figures = json.loads(out.read_text())
    assert len(figures["cases"]) == 2 and len(labels) == len(THIRTEEN.val_labels)
    for case in figures["cases"]:
        assert case["num_images"] == len(labels), case
        assert case["labels"] == histogram, case
        assert case["errors"] == figures["one_device_errors"], case
        assert case["validation_images"] == len(labels), case
