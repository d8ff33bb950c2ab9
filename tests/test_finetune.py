"""Fine-tuning: a folder of images with made-up class names, weights from a trained run, frozen layers."""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import pytest

from alexnet_tf import data, finetune, folders, sources, statistics, synthetic_data, training
from alexnet_tf import model as model_lib
from alexnet_tf import workdir as workdir_lib
from alexnet_tf.config import ConfigError, get_config
from alexnet_tf.trainer import Trainer
from tests.support import ROOT, run_python
from tests.support.converted import SHAPES, read_records

CLASSES = ("cat", "dog", "bird")  # made-up names, not wnids; sorted: bird, cat, dog
TRAIN_PER_CLASS, VAL_PER_CLASS = 12, 4
BELOW_FC8 = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")


def _draw_folders(root: pathlib.Path, splits=("train", "val")) -> pathlib.Path:
    """``root/<split>/<class>/`` JPEGs: each class shows one of the drawn figures."""
    rng = np.random.default_rng(0)
    for split in splits:
        count = TRAIN_PER_CLASS if split == "train" else VAL_PER_CLASS
        for figure, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                synthetic_data.draw_image(figure, rng).save(folder / f"{name}_{i}.jpg", "JPEG")
    return root


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> pathlib.Path:
    return _draw_folders(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def source_run(converted, tmp_path_factory) -> pathlib.Path:
    """A tiny run of 10 drawn classes (two steps), its checkpoint and statistics in its work directory."""
    workdir = tmp_path_factory.mktemp("source")
    config = get_config("tiny", data_dir=str(converted(SHAPES)), epochs=1, steps_per_epoch=2,
                        deterministic=True, batch_norm=True, weight_init="he")
    training.train(config, str(workdir), finish=False, verbose=False)
    return workdir


def _weights(model, names):
    return {name: [np.array(w) for w in model.get_layer(name).get_weights()] for name in names}


def _finetune_config(source, records_dir, **overrides):
    config = get_config("tiny", init_from=str(source), num_classes=len(CLASSES), data_dir=str(records_dir),
                        epochs=1, steps_per_epoch=2, deterministic=True, **overrides)
    return finetune.source_config(config)


# --------------------------------------------------------------------------------------------
# The folders


def test_class_names_are_the_sorted_folders_and_num_classes_must_agree(image_dir):
    assert folders.class_names(str(image_dir)) == ["bird", "cat", "dog"]
    assert folders.check_num_classes(str(image_dir), None) == 3
    assert folders.check_num_classes(str(image_dir), 3) == 3
    with pytest.raises(ConfigError, match=r"--num_classes=5: .* has 3 class folders"):
        folders.check_num_classes(str(image_dir), 5)


def test_class_folders_without_a_split_are_refused_naming_the_layout(tmp_path):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"--image_dir=.*no val/ folder.*train/<class>/ and val/<class>/"):
        folders.class_names(str(tmp_path))
    other = _draw_folders(tmp_path / "other", splits=("train",))
    (other / "val" / "cat").mkdir(parents=True)
    with pytest.raises(ConfigError, match="only in one of them: bird, dog"):
        folders.class_names(str(other))


def test_folders_are_converted_once_with_their_classes(image_dir, tmp_path):
    records_dir = folders.prepare_folders(str(image_dir), str(tmp_path / "data"), 76, num_workers=1)
    assert (pathlib.Path(records_dir) / folders.CLASSES_FILE).read_text() == "bird\ncat\ndog\n"
    assert data.count_records(records_dir, "train") == 3 * TRAIN_PER_CLASS
    assert data.count_records(records_dir, "validation") == 3 * VAL_PER_CLASS
    # Labels follow the sorted names, whatever the made-up wnids the converter keys them by.
    for record in read_records(records_dir, "train"):
        assert record.label == ["bird", "cat", "dog"].index(os.path.basename(record.filename).split("_")[0])
    stamp = os.path.getmtime(pathlib.Path(records_dir) / "summary.json")
    assert folders.prepare_folders(str(image_dir), str(tmp_path / "data"), 76) == records_dir
    assert os.path.getmtime(pathlib.Path(records_dir) / "summary.json") == stamp  # not converted again


# --------------------------------------------------------------------------------------------
# The configuration


def test_trainable_from_names_a_layer():
    assert get_config("tiny", trainable_from="fc6").trainable_from == "fc6"
    with pytest.raises(ConfigError, match=r"--trainable_from='fc9': name one of conv1, .*fc8"):
        get_config("tiny", trainable_from="fc9")


def test_finetune_preset_is_short_with_a_fixed_schedule_and_no_higher_rate():
    paper, tuned = get_config("paper"), get_config("finetune")
    assert tuned.epochs < paper.epochs and tuned.learning_rate <= paper.learning_rate
    assert tuned.lr_schedule == "step:24" and tuned.epochs == 30  # the setting chosen in docs/finetuning.md


def test_the_network_is_the_sources_and_contradicting_flags_are_refused(source_run):
    config = finetune.source_config(get_config("paper", init_from=str(source_run), num_classes=3))
    source = workdir_lib.read_config(str(source_run))
    for name in finetune.ARCHITECTURE_FIELDS:
        assert getattr(config, name) == getattr(source, name), name
    assert config.num_classes == 3 and config.pca_std == source.pca_std
    with pytest.raises(ConfigError, match=r"--width=1.0: the network of --init_from=.* has width=0.125"):
        finetune.source_config(get_config("paper", init_from=str(source_run)), explicit=["width"])
    with pytest.raises(ConfigError, match="--init_from=.*saved_model"):
        finetune.source_config(get_config("paper", init_from=str(source_run / "saved_model")))


# --------------------------------------------------------------------------------------------
# Training from the source


def test_fresh_run_starts_from_every_layer_but_fc8_and_frozen_layers_stay(source_run, image_dir, tmp_path):
    source_model, _ = workdir_lib.load_model(str(source_run))
    source = _weights(source_model, BELOW_FC8)
    records_dir = folders.prepare_folders(str(image_dir), str(tmp_path / "data"), 76, num_workers=1)
    config = _finetune_config(source_run, records_dir, trainable_from="fc8")
    workdir = tmp_path / "run"
    summary = training.train(config, str(workdir), finish=False, verbose=False)
    assert summary["global_step"] == 2
    tuned, _ = workdir_lib.load_model(str(workdir))
    for name, weights in _weights(tuned, BELOW_FC8).items():
        for w, s in zip(weights, source[name], strict=True):
            np.testing.assert_array_equal(w, s, err_msg=name)  # loaded, then frozen
    # The frozen batch normalisation ran in inference mode: its moving statistics did not move.
    for w, s in zip(tuned.get_layer("conv1_bn").get_weights(), source_model.get_layer("conv1_bn").get_weights(),
                    strict=True):
        np.testing.assert_array_equal(w, s)
    assert tuned.get_layer("fc8").get_weights()[0].shape[-1] == len(CLASSES)
    # The source's mean travels with the run; the colour noise's eigen-decomposition is the new data's.
    run_stats = workdir_lib.model_statistics(str(workdir))
    np.testing.assert_allclose(run_stats.mean_rgb, workdir_lib.model_statistics(str(source_run)).mean_rgb)
    new_data = statistics.load_statistics(records_dir)
    np.testing.assert_allclose(run_stats.eigenvalues, new_data.eigenvalues)
    assert not np.allclose(run_stats.mean_rgb, new_data.mean_rgb)


def test_a_resumed_run_restores_its_own_checkpoint_not_the_source(source_run, image_dir, tmp_path, monkeypatch):
    records_dir = folders.prepare_folders(str(image_dir), str(tmp_path / "data"), 76, num_workers=1)
    config = _finetune_config(source_run, records_dir)
    workdir = str(tmp_path / "run")
    training.train(config, workdir, finish=False, verbose=False)
    after_one, _ = workdir_lib.load_model(workdir)
    trained = _weights(after_one, ("conv1", "fc8"))

    def refuse(*args, **kwargs):
        raise AssertionError("a resumed run loaded the source's weights")

    monkeypatch.setattr(finetune, "load_source_weights", refuse)
    restored = {}
    training.train(config.replace(epochs=2), workdir, finish=False, verbose=False,
                   step_callback=lambda step, figures: restored.setdefault(step, True))
    assert restored  # it trained on
    resumed = Trainer(config, stats=None)
    resumed.checkpoint.restore(workdir_lib.latest_checkpoint(workdir))
    assert int(resumed.epoch.numpy()) == 2
    assert not np.allclose(resumed.model.get_layer("conv1").get_weights()[0], trained["conv1"][0])


def test_frozen_layers_do_not_move_and_the_others_do():
    config = get_config("tiny", batch_norm=True, weight_init="he", trainable_from="conv3", pca_std=0.0)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, config.num_classes, 32).astype(np.int32)
    images = rng.normal(0.0, 50.0, (32, config.input_size, config.input_size, 3)).astype(np.float32)
    inputs = sources.array_inputs(config, images, labels)
    trainer = Trainer(config, stats=None)
    before = _weights(trainer.model, [layer.name for layer in trainer.model.layers if layer.weights])
    assert not trainer.model.get_layer("conv2_bn").trainable and trainer.model.get_layer("conv3_bn").trainable
    trainer.train_loop(trainer.epoch_iterator(inputs, 0), 3)
    after = _weights(trainer.model, before)
    for name in before:
        moved = any(not np.array_equal(a, b) for a, b in zip(after[name], before[name], strict=True))
        frozen = name.removesuffix("_bn") in ("conv1", "conv2")
        assert moved != frozen, f"{name}: {'moved' if moved else 'did not move'}"


# --------------------------------------------------------------------------------------------
# Through the command line, and from a Caffe file


def test_train_py_fine_tunes_a_folder_from_a_model_keras(source_run, image_dir, tmp_path):
    source_model, _ = workdir_lib.load_model(str(source_run))
    keras_dir = tmp_path / "source"
    keras_dir.mkdir()
    source_model.save(keras_dir / workdir_lib.MODEL_FILE)
    for name in (workdir_lib.CONFIG_FILE, statistics.STATISTICS_FILE, statistics.MEAN_IMAGE_FILE):
        if (source_run / name).exists():
            (keras_dir / name).write_bytes((source_run / name).read_bytes())
    workdir = tmp_path / "run"
    command = [str(ROOT / "train.py"), f"--image_dir={image_dir}",
               f"--init_from={keras_dir / workdir_lib.MODEL_FILE}", "--preset=tiny", "--epochs=1",
               "--trainable_from=conv5", f"--workdir={workdir}", "--nojit_compile"]
    result = run_python(command, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (workdir / folders.CLASSES_FILE).read_text() == "bird\ncat\ndog\n"
    config = workdir_lib.read_config(str(workdir))
    assert (config.num_classes, config.width, config.batch_norm) == (3, 0.125, True)
    summary = json.loads((workdir / workdir_lib.SUMMARY_FILE).read_text())
    assert summary["epochs_completed"] == 1
    assert "fc8 re-initialised for 3 classes" in result.stderr
    wrong = run_python([*command[:1], f"--image_dir={image_dir}", "--num_classes=4",
                       f"--workdir={tmp_path / 'other'}"], cwd=ROOT, timeout=300)
    assert wrong.returncode == 2 and "--num_classes=4" in wrong.stderr


@pytest.mark.slow
def test_a_caffe_source_brings_its_conventions_and_weights(tmp_path):
    from alexnet_tf import caffe
    from tests.support.caffe_reference import random_weights, write_caffemodel

    path = tmp_path / "bvlc_alexnet.caffemodel"
    write_caffemodel(str(path), random_weights(), legacy=True)
    config = finetune.source_config(get_config("finetune", init_from=str(path), num_classes=3))
    reference = caffe.reference_config()
    assert (config.lrn_k, config.lrn_alpha_convention, config.channel_order, config.mean_source) == (
        reference.lrn_k, "caffe", "bgr", "caffe")
    assert config.pca_std == 0.0 and config.input_size == 227
    assert finetune.source_config(get_config("finetune", init_from=str(path), pca_std=0.1),
                                  explicit=["pca_std"]).pca_std == 0.1
    model = model_lib.build_from_config(config)
    assert finetune.load_source_weights(model, config) == list(BELOW_FC8)
    expected = caffe.read_reference_weights(str(path))
    np.testing.assert_array_equal(model.get_layer("conv1").get_weights()[0], expected["conv1"][0])
    np.testing.assert_array_equal(model.get_layer("fc6").get_weights()[0], expected["fc6"][0])
    assert model.get_layer("fc8").get_weights()[0].shape == (4096, 3)


# --------------------------------------------------------------------------------------------
# Class folders only: the selection split is carved out, and scores the run


def test_class_folders_only_need_a_selection_split(tmp_path):
    image_dir = _draw_folders(tmp_path / "drawn", splits=("train",)) / "train"  # <class>/ folders only
    assert folders.class_names(str(image_dir)) == ["bird", "cat", "dog"]
    root = str(tmp_path / "data")
    with pytest.raises(ConfigError, match=r"--image_dir=.* class folders only .*--holdout_per_class=N"):
        folders.prepare_folders(str(image_dir), root, 76, num_workers=1)
    assert not (tmp_path / "data").exists()  # refused before anything was written
    records_dir = folders.prepare_folders(str(image_dir), root, 76, num_workers=1, holdout_per_class=2)
    assert pathlib.Path(records_dir).name == "records_76_holdout2"
    assert (pathlib.Path(records_dir) / folders.CLASSES_FILE).read_text() == "bird\ncat\ndog\n"
    assert data.count_records(records_dir, "train") == 3 * (TRAIN_PER_CLASS - 2)
    assert data.count_records(records_dir, "holdout") == 3 * 2
    assert not data.has_split(records_dir, "validation")
    for split in ("train", "holdout"):
        for record in read_records(records_dir, split):
            assert record.label == ["bird", "cat", "dog"].index(os.path.basename(record.filename).split("_")[0])
    inputs = sources.record_inputs(get_config("tiny", num_classes=3, data_dir=records_dir), records_dir)
    assert inputs.validation is None and inputs.watched == "holdout"


def test_train_py_on_class_folders_only_scores_the_selection_split_and_says_so(tmp_path):
    image_dir = _draw_folders(tmp_path / "drawn", splits=("train",)) / "train"
    workdir = tmp_path / "run"
    command = [ROOT / "train.py", f"--image_dir={image_dir}", "--preset=tiny", "--epochs=1",
               "--steps_per_epoch=2", f"--workdir={workdir}", "--nojit_compile"]
    refused = run_python(command, timeout=300)
    assert refused.returncode == 2 and "--holdout_per_class" in refused.stderr, refused.stderr[-3000:]
    # --resize_mode=squash (a Caffe source's) too: train.py converts with the run's resize mode.
    result = run_python([*command, "--holdout_per_class=2", "--resize_mode=squash"], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((workdir / "evaluation" / "report.json").read_text())
    assert report["split"] == "holdout" and report["num_images"] == 6  # 2 of each of the 3 classes
    assert "not independent" in report["split_note"]
    markdown = (workdir / "evaluation" / "report.md").read_text()
    assert markdown.startswith("# Evaluation\n\n6 held-out selection images of 3 classes")
    assert "not independent" in markdown
    summary = json.loads((workdir / workdir_lib.SUMMARY_FILE).read_text())
    assert summary["evaluated_split"] == "holdout" and "not independent" in summary["evaluation_note"]
    assert summary["holdout_top1_error"] == report["center_crop"]["top1_error"]
    assert summary["holdout_ten_crop_top1_error"] == report["ten_crop"]["top1_error"]
    assert "val_top1_error" not in summary and "val_ten_crop_top1_error" not in summary
    assert pathlib.Path(summary["data_dir"]).name == "records_76_squash_holdout2"
    assert {(r.height, r.width) for r in read_records(summary["data_dir"], "train")} == {(76, 76)}
    assert report["records_resize_mode"] == "squash"
    assert (workdir / workdir_lib.EXPORT_DIR).is_dir()
    assert "not independent" in result.stderr  # the run's last lines say it too
