"""Evaluation: the report against a direct computation, 10-crop against centre crop, loading runs."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from alexnet_tf import device_preprocess, evaluation, export, records, reports
from alexnet_tf import workdir as workdir_lib
from alexnet_tf.model import build_from_config
from tests.support import ROOT, run_python


@pytest.fixture(scope="module")
def run(tiny_run):
    return tiny_run


@pytest.fixture(scope="module")
def report(run, tmp_path_factory):
    report_dir = tmp_path_factory.mktemp("report")
    result = evaluation.evaluate(run.model, run.config, run.data_dir, str(report_dir), class_names=run.names,
                                 progress=False)
    return result, report_dir


def _direct_probabilities(run, model, view) -> np.ndarray:
    """Probabilities per validation file, preprocessed one JPEG at a time, in one model call."""
    if view == "center_crop":
        images = np.stack([device_preprocess.preprocess_for_eval(tf.constant(encoded), run.config, run.stats)
                           for encoded in run.val_images])
        return np.asarray(model(images, training=False))
    views = np.stack([device_preprocess.preprocess_for_ten_crop(tf.constant(encoded), run.config, run.stats)
                      for encoded in run.val_images])
    prob = np.asarray(model(views.reshape((-1,) + views.shape[2:]), training=False))
    return prob.reshape(len(run.val_images), 10, -1).mean(axis=1)


def test_ten_crop_averages_softmax_probabilities_not_logits():
    """Section 4.1: the prediction is the average of the ten patches' softmax outputs.

    Class 0 has probability 0.6 in nine views and almost none in the tenth; class 1 has 0.4 and
    almost 1. The mean probability ranks class 0 first (0.54 against 0.46); averaging logits or
    log probabilities (a geometric mean) ranks class 1 first, because one near-zero
    probability dominates a mean of logarithms.
    """
    table = np.array([[1e-9, 1 - 2e-9, 1e-9], [0.6, 0.4 - 1e-9, 1e-9]], np.float32)
    # One image of ten 1x1 views; the pixel value selects the view's probabilities.
    views = np.ones((1, 10, 1, 1, 3), np.float32)
    views[0, 0] = 0.0
    dataset = tf.data.Dataset.from_tensor_slices((views, np.array([0], np.int32))).batch(1)

    def predict(images):
        return tf.gather(tf.constant(table), tf.cast(images[:, 0, 0, 0], tf.int32))

    top_k, labels, _ = evaluation.predict_top_k(predict, dataset, 3, ten_crop=True, progress=False)
    np.testing.assert_array_equal(top_k[0], [0, 1, 2])
    geometric = np.log(table[0]) + 9 * np.log(table[1])
    assert np.argmax(geometric) == 1  # the answer logit averaging would give
    assert labels.tolist() == [0]


def test_report_matches_a_direct_computation(run, report):
    result, _ = report
    labels = run.val_labels
    assert result["num_images"] == len(labels)
    for view in ("center_crop", "ten_crop"):
        prob = _direct_probabilities(run, run.model, view)
        ranked = np.argsort(-prob, axis=1)
        top1 = np.mean(ranked[:, 0] != labels)
        top5 = np.mean([label not in row[:5] for row, label in zip(ranked, labels, strict=True)])
        assert result[view]["top1_error"] == pytest.approx(top1, abs=1e-9), view
        assert result[view]["top5_error"] == pytest.approx(top5, abs=1e-9), view
        for entry in result[view]["per_class"]:
            members = labels == entry["class"]
            assert entry["images"] == members.sum()
            assert entry["accuracy"] == pytest.approx(np.mean(ranked[members, 0] == entry["class"]))
        confusion = np.zeros((10, 10), int)
        np.add.at(confusion, (labels, ranked[:, 0]), 1)
        np.fill_diagonal(confusion, 0)
        counts = [p["count"] for p in result[view]["most_confused"]]
        assert counts == sorted(confusion.ravel(), reverse=True)[: len(counts)]
        assert result[view]["images_per_second"] > 0
    # The trained model is better than chance on the images it was not trained on: the
    # numbers above are not those of a constant predictor.
    assert result["ten_crop"]["top5_error"] < 0.5


def test_report_files(report):
    result, report_dir = report
    saved = json.loads((report_dir / reports.REPORT_JSON).read_text())
    assert saved["center_crop"]["top1_error"] == result["center_crop"]["top1_error"]
    assert saved["ten_crop"]["top5_error"] == result["ten_crop"]["top5_error"]
    markdown = (report_dir / reports.REPORT_MD).read_text()
    for text in ("| this model, centre crop |", "| this model, 10 crops |", "40.7 %", "18.2 %", "37.5 %", "17.0 %",
                 f"{100 * result['ten_crop']['top1_error']:.1f} %", "not comparable"):
        assert text in markdown


def _invariant_model(config) -> keras.Model:
    """Global average pooling then a dense softmax: the output ignores mirroring."""
    keras.utils.set_random_seed(1)
    inputs = keras.Input((config.input_size, config.input_size, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    return keras.Model(inputs, keras.layers.Dense(config.num_classes, activation="softmax")(pooled))


def test_ten_crop_equals_centre_crop_when_the_views_coincide(run):
    # With image_size == input_size all ten views are the whole square, five of them mirrored,
    # so a mirror-invariant model gives the centre crop's probabilities exactly.
    config = run.config.replace(image_size=run.config.input_size)
    model = _invariant_model(config)
    dataset = evaluation.data.make_dataset(
        evaluation.data.file_pattern(run.data_dir, "validation"), False, config, stats=run.stats
    )
    ten = evaluation.data.make_dataset(
        evaluation.data.file_pattern(run.data_dir, "validation"), False, config, stats=run.stats, ten_crop=True
    )
    finish = device_preprocess.DeviceFinish(config, run.stats)
    centre_top, centre_labels, _ = evaluation.predict_top_k(evaluation.as_predictor(model), dataset, 10, False,
                                                            progress=False, finish=finish)
    ten_top, ten_labels, _ = evaluation.predict_top_k(evaluation.as_predictor(model), ten, 10, True, progress=False,
                                                      finish=finish)
    np.testing.assert_array_equal(centre_labels, ten_labels)
    np.testing.assert_array_equal(centre_top, ten_top)


def test_ten_crop_is_the_mean_of_an_image_and_its_mirror_when_the_views_coincide(run):
    config = run.config.replace(image_size=run.config.input_size)
    result = evaluation.evaluate(run.model, config, run.data_dir, progress=False)
    images = np.stack([device_preprocess.preprocess_for_eval(tf.constant(encoded), config, run.stats)
                       for encoded in run.val_images])
    prob = np.asarray(run.model(images, training=False))
    mirrored = np.asarray(run.model(images[:, :, ::-1], training=False))
    expected = np.argmax(prob + mirrored, axis=1)
    assert result["ten_crop"]["top1_error"] == pytest.approx(np.mean(expected != run.val_labels), abs=1e-9)
    assert result["center_crop"]["top1_error"] == pytest.approx(
        np.mean(prob.argmax(axis=1) != run.val_labels), abs=1e-9)


def test_same_report_under_a_mirrored_strategy(run, report):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        model = build_from_config(run.config)
        model.set_weights(run.model.get_weights())
    result = evaluation.evaluate(model, run.config, run.data_dir, strategy=strategy, progress=False)
    for view in ("center_crop", "ten_crop"):
        for key in ("top1_error", "top5_error"):
            assert result[view][key] == report[0][view][key]


def test_load_model_from_keras_file_and_from_checkpoint(run, tmp_path):
    images = np.stack([device_preprocess.preprocess_for_eval(tf.constant(encoded), run.config, run.stats)
                       for encoded in run.val_images[:4]])
    expected = np.asarray(run.model(images, training=False))
    keras_dir, checkpoint_dir = tmp_path / "keras_run", tmp_path / "checkpoint_run"
    for workdir in (keras_dir, checkpoint_dir):
        workdir.mkdir()
        (workdir / workdir_lib.CONFIG_FILE).write_text(run.config.to_json())
    run.model.save(keras_dir / workdir_lib.MODEL_FILE)
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(model=run.model, optimizer=run.model.optimizer),
        str(checkpoint_dir / workdir_lib.CHECKPOINT_DIR), max_to_keep=1,
    )
    manager.save()
    for path in (keras_dir, keras_dir / workdir_lib.MODEL_FILE, checkpoint_dir):
        model, config = workdir_lib.load_model(str(path))
        assert config == run.config
        np.testing.assert_allclose(np.asarray(model(images, training=False)), expected, rtol=1e-5, atol=1e-7)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        workdir_lib.load_model(str(empty))
    (empty / workdir_lib.CONFIG_FILE).write_text(run.config.to_json())
    with pytest.raises(FileNotFoundError, match="neither model.keras nor a checkpoint"):
        workdir_lib.load_model(str(empty))


def test_evaluating_through_the_saved_model_gives_the_same_report(run, report, tmp_path):
    export_dir = export.export_saved_model(run.model, str(tmp_path / "1"), run.config, run.stats,
                                           run.wnids, run.names)
    predict, config = export.load_predictor(export_dir)
    result = evaluation.evaluate(predict, config, run.data_dir, progress=False)
    for view in ("center_crop", "ten_crop"):
        for key in ("top1_error", "top5_error"):
            assert result[view][key] == report[0][view][key]


def test_class_labels():
    wnids, names = reports.class_labels(1000)
    assert len(wnids) == len(names) == 1000 and names[0].startswith("tench")
    with pytest.raises(ValueError, match="--synsets"):
        reports.class_labels(10)


def test_class_labels_read_the_metadata_beside_the_synsets_file(tmp_path):
    """The built-in data set's made-up wnids get their names from metadata.txt beside synsets.txt."""
    synsets = tmp_path / "synsets.txt"
    synsets.write_text("n99000000\nn01440764\n")
    assert reports.class_labels(2, str(synsets))[1] == ["n99000000", "tench, Tinca tinca"]
    (tmp_path / records.METADATA_FILE).write_text("n99000000\tdisc\nn01440764\tfish\n")
    wnids, names = reports.class_labels(2, str(synsets))
    assert wnids == ["n99000000", "n01440764"] and names == ["disc", "fish"]


@pytest.mark.slow
def test_evaluate_cli(shared_data, run, tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / workdir_lib.CONFIG_FILE).write_text(run.config.to_json())
    run.model.save(workdir / workdir_lib.MODEL_FILE)
    report_dir = tmp_path / "report"
    command = [str(ROOT / "evaluate.py"), f"--checkpoint={workdir}", f"--data_dir={run.data_dir}",
               f"--report_dir={report_dir}", f"--synsets={shared_data / 'metadata' / 'imagenette_synsets.txt'}",
               "--figures", "--figure_train_images=32"]
    result = run_python(command, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((report_dir / reports.REPORT_JSON).read_text())
    assert set(saved) >= {"center_crop", "ten_crop"}
    assert "tench, Tinca tinca" in (report_dir / reports.REPORT_MD).read_text()
    assert sorted(p.name for p in (report_dir / "figures").iterdir()) == [
        "figure3_conv1_kernels.png", "figure4_neighbours.png", "figure4_predictions.png"]
    usage = run_python([str(ROOT / "evaluate.py"), f"--data_dir={run.data_dir}"],
                       timeout=300, cwd=tmp_path)
    assert usage.returncode != 0 and "exactly one of --checkpoint and --saved_model" in usage.stderr


def test_load_model_refuses_a_checkpoint_without_the_models_weights(tmp_path):
    """A checkpoint that does not hold the model's weights must not yield a randomly initialised model."""
    config = evaluation.Config().replace(num_classes=3, input_size=67, width=0.125, image_size=76)
    model = build_from_config(config, seed=1)
    images = np.random.default_rng(0).normal(size=(2, 67, 67, 3)).astype(np.float32) * 50
    for name, key in (("right", "model"), ("wrong", "net")):
        workdir = tmp_path / name
        workdir.mkdir()
        (workdir / workdir_lib.CONFIG_FILE).write_text(config.to_json())
        tf.train.CheckpointManager(
            tf.train.Checkpoint(**{key: model}), str(workdir / workdir_lib.CHECKPOINT_DIR), max_to_keep=1
        ).save()
    loaded, _ = workdir_lib.load_model(str(tmp_path / "right"))
    np.testing.assert_allclose(loaded(images, training=False), model(images, training=False), rtol=1e-6)
    with pytest.raises(ValueError, match="does not hold the weights"):
        workdir_lib.load_model(str(tmp_path / "wrong"))


def test_progress_bar_knows_its_total_when_the_dataset_does_not(capsys):
    """Records read from shards have an unknown cardinality; evaluate passes the manifest's count."""
    images = np.zeros((5, 4, 4, 3), np.float32)
    labels = np.arange(5, dtype=np.int32) % 3

    def batches():
        for start in range(0, 5, 2):
            yield images[start:start + 2], labels[start:start + 2]

    signature = (tf.TensorSpec([None, 4, 4, 3], tf.float32), tf.TensorSpec([None], tf.int32))
    dataset = tf.data.Dataset.from_generator(batches, output_signature=signature)
    assert int(dataset.cardinality()) < 0

    def predict(x):
        return tf.one_hot(tf.zeros(tf.shape(x)[0], tf.int32), 3)

    top_k, got, _ = evaluation.predict_top_k(predict, dataset, 3, ten_crop=False, num_batches=3)
    np.testing.assert_array_equal(got, labels)
    assert top_k.shape == (5, 3)
    shown = capsys.readouterr().out
    assert "3/3" in shown and "Unknown" not in shown
    evaluation.predict_top_k(predict, dataset, 3, ten_crop=False)
    assert "Unknown" in capsys.readouterr().out  # without a count, as before
