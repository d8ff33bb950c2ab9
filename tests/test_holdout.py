"""The selection split: training images held out per class by the converter, watched by training.

``--holdout_per_class=N`` must be stratified (N of every class), reproducible (the seed decides),
disjoint (no image in two splits, none lost), and leave the training set's shards and statistics
exactly as if the held-out images had never been there. A run on records with a selection split
checks it every epoch (and its schedule watches it), and scores the validation set only at the end.
"""

from __future__ import annotations

import io
import json
import os
import pathlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from alexnet_tf import converter, curves, data, records, synthetic_data, training
from alexnet_tf.config import ConfigError, get_config
from tests.support import ROOT, run_python

CLASS_SIZES = {"n00000001": 10, "n00000002": 8, "n00000003": 6}  # unequal, as real classes are


def _jpeg(colour: tuple[int, int, int], size: int = 24) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> pathlib.Path:
    """Training and validation folders of 3 classes, each image a different colour."""
    root = tmp_path_factory.mktemp("holdout_images")
    for c, (wnid, count) in enumerate(CLASS_SIZES.items()):
        for split, n in (("train", count), ("val", 2)):
            (root / split / wnid).mkdir(parents=True)
            for i in range(n):
                colour = (40 + 80 * c, 10 + 20 * i, 200 - 15 * i if split == "train" else 5)
                (root / split / wnid / f"{wnid}_{i:02d}.JPEG").write_bytes(_jpeg(colour))
    (root / "labels.txt").write_text("".join(f"{wnid}\n" for wnid in CLASS_SIZES))
    return root


def _convert(folders: pathlib.Path, output: pathlib.Path, train: pathlib.Path | None = None, **options) -> dict:
    return converter.convert(
        train_directory=str(train or folders / "train"), validation_directory=str(folders / "val"),
        output_directory=str(output), labels_file=str(folders / "labels.txt"), train_shards=3,
        validation_shards=2, num_workers=1, resize=24, **options)


def _names(directory: pathlib.Path, split: str) -> list[tuple[str, str]]:
    """(wnid, file name) of every record of ``split``'s shards."""
    names = []
    for path in sorted(directory.glob(f"{split}-*-of-*")):
        for record in tf.data.TFRecordDataset(str(path)):
            features = tf.io.parse_single_example(record, {
                records.SYNSET_KEY: tf.io.FixedLenFeature([], tf.string),
                records.FILENAME_KEY: tf.io.FixedLenFeature([], tf.string)})
            names.append((features[records.SYNSET_KEY].numpy().decode(),
                          os.path.basename(features[records.FILENAME_KEY].numpy().decode())))
    return sorted(names)


def test_the_selection_split_is_stratified_disjoint_and_loses_nothing(folders, tmp_path):
    summary = _convert(folders, tmp_path / "out", holdout_per_class=3)
    held, trained = _names(tmp_path / "out", "holdout"), _names(tmp_path / "out", "train")
    assert sorted({wnid for wnid, _ in held}) == sorted(CLASS_SIZES)
    assert all(sum(w == wnid for w, _ in held) == 3 for wnid in CLASS_SIZES)  # 3 of every class
    assert not set(held) & set(trained)  # no image in two splits
    every = sorted((wnid, f"{wnid}_{i:02d}.JPEG") for wnid, n in CLASS_SIZES.items() for i in range(n))
    assert sorted(held + trained) == every  # and none lost
    assert summary["splits"]["holdout"]["written"] == 9 and summary["splits"]["train"]["written"] == 15
    manifest = json.loads((tmp_path / "out" / records.MANIFEST_FILE).read_text())
    assert manifest["splits"]["holdout"]["num_records"] == 9
    assert manifest["options"]["holdout_per_class"] == 3
    assert data.count_records(str(tmp_path / "out"), "holdout") == 9


def test_the_seed_decides_the_selection_split(folders, tmp_path):
    _convert(folders, tmp_path / "a", holdout_per_class=2, seed=7)
    _convert(folders, tmp_path / "b", holdout_per_class=2, seed=7)
    _convert(folders, tmp_path / "c", holdout_per_class=2, seed=8)
    first = _names(tmp_path / "a", "holdout")
    assert _names(tmp_path / "b", "holdout") == first
    assert _names(tmp_path / "c", "holdout") != first
    for name in ("holdout-00000-of-00002", "train-00000-of-00003"):  # the same bytes, too
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_the_training_set_is_as_if_the_held_out_images_were_never_there(folders, tmp_path):
    """Training shards and statistics equal those of a folder without the held-out images."""
    _convert(folders, tmp_path / "with", holdout_per_class=3)
    held = set(_names(tmp_path / "with", "holdout"))
    remaining = tmp_path / "remaining"
    for wnid, n in CLASS_SIZES.items():
        (remaining / wnid).mkdir(parents=True)
        for i in range(n):
            name = f"{wnid}_{i:02d}.JPEG"
            if (wnid, name) not in held:
                (remaining / wnid / name).symlink_to(folders / "train" / wnid / name)
    _convert(folders, tmp_path / "without", train=remaining)
    for index in range(3):
        name = records.shard_name("train", index, 3)
        assert (tmp_path / "with" / name).read_bytes() == (tmp_path / "without" / name).read_bytes()
    with_stats = json.loads((tmp_path / "with" / records.STATISTICS_FILE).read_text())
    without = json.loads((tmp_path / "without" / records.STATISTICS_FILE).read_text())
    assert with_stats["num_images"] == without["num_images"] == 15
    np.testing.assert_array_equal(with_stats["mean_rgb"], without["mean_rgb"])
    np.testing.assert_array_equal(np.load(tmp_path / "with" / records.MEAN_IMAGE_FILE),
                                  np.load(tmp_path / "without" / records.MEAN_IMAGE_FILE))
    # ...and differ from the statistics of all 24 training images.
    _convert(folders, tmp_path / "all")
    every = json.loads((tmp_path / "all" / records.STATISTICS_FILE).read_text())
    assert every["num_images"] == 24 and every["mean_rgb"] != with_stats["mean_rgb"]


def test_a_selection_split_that_leaves_a_class_empty_is_refused(folders, tmp_path):
    with pytest.raises(converter.ConversionError, match=r"--holdout_per_class=6: 1 class\(es\).*n00000003: 6"):
        _convert(folders, tmp_path / "out", holdout_per_class=6)
    with pytest.raises(converter.ConversionError, match="--holdout_per_class must be 0 or more"):
        _convert(folders, tmp_path / "out", holdout_per_class=-1)
    with pytest.raises(ConfigError, match="--holdout_per_class=-1"):
        get_config("shapes", holdout_per_class=-1)
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_train_py_names_the_conversion_by_its_selection_split():
    assert records.records_directory_name("records_112", 50) == "records_112_holdout50"
    assert records.records_directory_name("records", 0) == "records"


def test_a_run_watches_the_selection_split_and_scores_validation_once(tmp_path, monkeypatch):
    data_dir = synthetic_data.prepare_shapes(str(tmp_path / "data"), train_per_class=12, val_per_class=2,
                                             num_workers=1, holdout_per_class=4)
    assert data_dir.endswith("records_holdout4")
    assert data.count_records(data_dir, "train") == 80 and data.count_records(data_dir, "holdout") == 40
    config = get_config("shapes", data_dir=data_dir, epochs=2, batch_size=16, shuffle_buffer=80,
                        lr_schedule="plateau", plateau_patience=1)
    watched = []
    original = training.Trainer.validate

    def validate(trainer, inputs, split="validation"):
        watched.append(split)
        return original(trainer, inputs, split)

    monkeypatch.setattr(training.Trainer, "validate", validate)
    summary = training.train(config, str(tmp_path / "run"), verbose=False)
    assert watched == ["holdout", "holdout"]  # every epoch, and only the selection split
    logs = tmp_path / "run" / "logs"
    assert (logs / "holdout").is_dir() and not (logs / "validation").exists()
    assert summary["holdout_top1_error"] is not None
    report = json.loads((tmp_path / "run" / "evaluation" / "report.json").read_text())
    assert report["num_images"] == 20  # the validation set, scored at the end
    assert summary["val_top1_error"] == report["center_crop"]["top1_error"]
    _, metrics, _ = curves.epoch_metrics(str(tmp_path / "run"))
    assert len(metrics["holdout"]["top1_error"][0]) == 2 and not len(metrics["validation"]["top1_error"][0])


def test_the_command_line_refuses_a_selection_split_for_records_converted_before(tmp_path):
    result = run_python([ROOT / "train.py", f"--data_dir={tmp_path}", "--holdout_per_class=5",
                         f"--workdir={tmp_path / 'run'}"], timeout=300)
    assert result.returncode == 2, result.stderr
    assert "--holdout_per_class" in result.stderr and "build_tfrecords.py" in result.stderr
