"""Caffe's resizing: ``build_tfrecords.py --resize=256 --resize_mode=squash`` and its records.

Squashing brings both sides to ``--resize`` (the aspect ratio not kept), as Caffe's ImageNet was
stored at 256x256; the paper's crop mode (the default) must stay byte for byte what it was, its
fingerprints included. The evaluation's centre crop of a squashed record is the centre of the
whole stored image, and ``train.py --image_dir`` converts with the run's ``resize_mode`` into a
folder of its own.
"""

from __future__ import annotations

import io
import json
import pathlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from alexnet_tf import converter, evaluation, folders, preprocess, records, reports, statistics
from alexnet_tf.config import get_config
from alexnet_tf.converter import files
from tests.support.converted import read_records

SIZES = {"n00000001": (80, 50), "n00000002": (40, 64)}  # (width, height): landscape and portrait


def _picture(width: int, height: int, seed: int) -> Image.Image:
    """Smooth colours (JPEG keeps them well) with a left-right and top-bottom asymmetry."""
    y, x = np.mgrid[0:height, 0:width]
    phase = seed * 0.7
    pixels = np.stack([
        128 + 100 * np.sin(x / width * 3.0 + phase),
        128 + 100 * np.cos(y / height * 2.0 + phase),
        (x * 200 // width + y * 50 // height) % 256,
    ], axis=-1)
    return Image.fromarray(pixels.astype(np.uint8))


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def image_folders(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("squash_images")
    for c, (wnid, (width, height)) in enumerate(SIZES.items()):
        for split, count in (("train", 3), ("val", 1)):
            (root / split / wnid).mkdir(parents=True)
            for i in range(count):
                (root / split / wnid / f"{wnid}_{i}.JPEG").write_bytes(_jpeg(_picture(width, height, 3 * c + i)))
    (root / "labels.txt").write_text("".join(f"{wnid}\n" for wnid in SIZES))
    return root


def _convert(image_folders: pathlib.Path, output: pathlib.Path, **options) -> dict:
    return converter.convert(
        train_directory=str(image_folders / "train"), validation_directory=str(image_folders / "val"),
        output_directory=str(output), labels_file=str(image_folders / "labels.txt"), train_shards=2,
        validation_shards=1, num_workers=1, **options)


def _plan_options(directory: pathlib.Path) -> dict:
    return json.loads((directory / files.PARTS_DIRECTORY / files.PLAN_FILE).read_text())["options"]


# --------------------------------------------------------------------------------------------
# One image


def test_squash_brings_both_sides_to_resize_and_crop_keeps_the_aspect_ratio():
    data = _jpeg(_picture(80, 50, 0))
    squashed = converter.convert_image(data, 32, resize_mode="squash", with_statistics=True)
    assert (squashed.width, squashed.height) == (32, 32) and not squashed.kept
    decoded = np.asarray(Image.open(io.BytesIO(squashed.encoded)))
    assert decoded.shape == (32, 32, 3)
    cropped = converter.convert_image(data, 32, with_statistics=True)
    assert (cropped.width, cropped.height) == (51, 32)  # 80 x 50 -> shorter side 32
    assert converter.convert_image(data, 32, resize_mode="crop").encoded == cropped.encoded
    # The statistics sample the stored image's central square: all of a squashed image, so its
    # left and right edges (which crop mode cuts off) are in the samples.
    assert squashed.pixels.shape == cropped.pixels.shape
    assert not np.array_equal(squashed.pixels, cropped.pixels)
    whole = Image.open(io.BytesIO(data)).convert("RGB").resize((32, 32), Image.Resampling.BICUBIC)
    np.testing.assert_array_equal(squashed.pixels, converter.central_square(whole))
    # An RGB JPEG already resize x resize is kept byte for byte, as in crop mode.
    exact = _jpeg(_picture(32, 32, 1))
    assert converter.convert_image(exact, 32, resize_mode="squash").encoded == exact


# --------------------------------------------------------------------------------------------
# A conversion


def test_squashed_records_are_square_and_the_option_is_recorded(image_folders, tmp_path):
    summary = _convert(image_folders, tmp_path / "squash", resize=24, resize_mode="squash")
    assert summary["options"]["resize_mode"] == "squash"
    assert _plan_options(tmp_path / "squash")["resize_mode"] == "squash"
    for split in ("train", "validation"):
        sizes = {(r.height, r.width) for r in read_records(str(tmp_path / "squash"), split)}
        assert sizes == {(24, 24)}, split
        for record in read_records(str(tmp_path / "squash"), split):
            assert tf.io.decode_jpeg(record.encoded).shape == (24, 24, 3)
    crop = _convert(image_folders, tmp_path / "crop", resize=24)
    assert "resize_mode" not in crop["options"] and "resize_mode" not in _plan_options(tmp_path / "crop")
    sizes = {(r.height, r.width) for r in read_records(str(tmp_path / "crop"), "train")}
    assert sizes == {(24, 38), (38, 24)}  # 80 x 50 and 40 x 64, shorter side 24
    # Other pixels, so other statistics and other fingerprints: a resumed conversion in another
    # mode converts every shard again instead of keeping the old ones.
    squashed_stats = statistics.load_statistics(str(tmp_path / "squash"))
    assert not np.allclose(squashed_stats.mean_rgb, statistics.load_statistics(str(tmp_path / "crop")).mean_rgb)
    assert evaluation.records_resize_mode(str(tmp_path / "squash")) == "squash"
    assert evaluation.records_resize_mode(str(tmp_path / "crop")) == "crop"
    plan = json.loads((tmp_path / "squash" / files.PARTS_DIRECTORY / files.PLAN_FILE).read_text())
    crop_plan = json.loads((tmp_path / "crop" / files.PARTS_DIRECTORY / files.PLAN_FILE).read_text())
    assert set(plan["splits"]["train"]["fingerprints"]).isdisjoint(crop_plan["splits"]["train"]["fingerprints"])


def test_crop_mode_is_byte_for_byte_the_conversion_without_the_option(image_folders, tmp_path):
    """The default leaves today's shards, manifest and fingerprints as they were."""
    _convert(image_folders, tmp_path / "default", resize=24)
    _convert(image_folders, tmp_path / "crop", resize=24, resize_mode="crop")
    assert _plan_options(tmp_path / "default") == _plan_options(tmp_path / "crop")
    assert sorted(_plan_options(tmp_path / "crop")) == ["format_version", "jpeg_quality", "label_offset",
                                                        "resize", "seed"]
    names = [records.shard_name("train", i, 2) for i in range(2)] + [
        records.shard_name("validation", 0, 1), records.MANIFEST_FILE, records.STATISTICS_FILE,
        records.MEAN_IMAGE_FILE]
    for name in names:
        assert (tmp_path / "default" / name).read_bytes() == (tmp_path / "crop" / name).read_bytes(), name


def test_an_unknown_mode_or_squash_without_resize_is_refused_naming_the_flag(image_folders, tmp_path):
    with pytest.raises(converter.ConversionError, match=r"--resize_mode must be one of crop, squash, got 'stretch'"):
        _convert(image_folders, tmp_path / "out", resize=24, resize_mode="stretch")
    with pytest.raises(converter.ConversionError, match=r"--resize_mode=squash .* pass --resize"):
        _convert(image_folders, tmp_path / "out", resize_mode="squash")
    assert not (tmp_path / "out").exists()  # refused before anything was written


# --------------------------------------------------------------------------------------------
# Reading squashed records, and train.py --image_dir


def test_the_centre_crop_of_a_squashed_record_is_the_centre_of_the_stored_image():
    """Caffe's view: squashed to 256x256, then the central 227x227 (no second resize, no cut sides)."""
    encoded = converter.convert_image(_jpeg(_picture(320, 200, 2)), 256, resize_mode="squash").encoded
    stored = tf.io.decode_jpeg(encoded).numpy()
    assert stored.shape == (256, 256, 3)
    view = preprocess.eval_crop(tf.constant(encoded), 256, 227)
    np.testing.assert_array_equal(view.image.numpy(), stored[14:241, 14:241])
    np.testing.assert_array_equal(view.crop.numpy(), [14, 14])
    # The ten test patches are cut from the whole stored image too.
    np.testing.assert_array_equal(preprocess.ten_crop_square(tf.constant(encoded), 256).square.numpy(), stored)


def test_prepare_folders_converts_with_the_runs_resize_mode_into_a_folder_of_its_own(image_folders, tmp_path):
    root = str(tmp_path / "data")
    squashed = folders.prepare_folders(str(image_folders), root, 20, num_workers=1, resize_mode="squash")
    assert pathlib.Path(squashed).name == "records_20_squash"
    assert {(r.height, r.width) for r in read_records(squashed, "train")} == {(20, 20)}
    assert json.loads((pathlib.Path(squashed) / records.SUMMARY_FILE).read_text())["options"]["resize_mode"] == (
        "squash")
    cropped = folders.prepare_folders(str(image_folders), root, 20, num_workers=1)
    assert pathlib.Path(cropped).name == "records_20" and cropped != squashed
    assert {(r.height, r.width) for r in read_records(cropped, "train")} == {(20, 32), (32, 20)}
    assert records.records_directory_name("records_256", 10, "squash") == "records_256_squash_holdout10"


def test_the_evaluation_of_a_squash_model_says_how_the_records_were_resized(image_folders, tmp_path, monkeypatch):
    _convert(image_folders, tmp_path / "crop", resize=24)
    _convert(image_folders, tmp_path / "kept")
    assert evaluation.records_resize_mode(str(tmp_path / "kept")) == "none"
    assert evaluation.records_resize_mode(str(tmp_path / "nothing")) is None
    warnings = []
    monkeypatch.setattr(evaluation.logging, "warning", lambda message, *args: warnings.append(message % args))
    caffe_like, report = get_config("paper", resize_mode="squash"), {}
    evaluation._check_resize_mode(caffe_like, str(tmp_path / "crop"), report)
    assert report == {"records_resize_mode": "crop"}
    assert len(warnings) == 1 and "--resize=256 --resize_mode=squash" in warnings[0]
    markdown = reports.report_markdown({"num_images": 1, "num_classes": 2, "data_dir": "d", "paper": {},
                                        "records_resize_mode": "crop",
                                        "center_crop": {"top1_error": 0.5, "top5_error": 0.0,
                                                        "images_per_second": 1.0, "per_class": [],
                                                        "most_confused": []}})
    assert "trained on squashed images; these records were resized by: crop." in markdown
    report = {}
    evaluation._check_resize_mode(get_config("paper"), str(tmp_path / "crop"), report)  # the paper's: silent
    assert report == {} and len(warnings) == 1
