"""The built-in drawn data set: real JPEGs in the ImageNet layout, with their own class files."""

from __future__ import annotations

import colorsys
import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from alexnet_tf import imagenet, records, synthetic_data

# Figures that always cover the image's centre (their centre moves at most 0.1 of the side, less
# than their smallest half-width).
SOLID_FIGURES = ("disc", "square", "diamond")


def test_layout_files_and_class_lists(tmp_path):
    paths = synthetic_data.write_dataset(str(tmp_path), num_classes=4, train_per_class=3, val_per_class=2)
    wnids = imagenet.load_synsets(paths["labels_file"])
    assert wnids == synthetic_data.wnids(4) == ["n99000000", "n99000001", "n99000002", "n99000003"]
    names = imagenet.load_metadata(paths["metadata_file"])
    assert [names[w] for w in wnids] == list(synthetic_data.CLASS_NAMES[:4])
    for split, count in (("train_directory", 3), ("validation_directory", 2)):
        folders = sorted(p.name for p in (tmp_path / paths[split].split("/")[-1]).iterdir())
        assert folders == wnids
        for wnid in wnids:
            files = sorted((tmp_path / paths[split].split("/")[-1] / wnid).glob("*.JPEG"))
            assert len(files) == count
            for path in files:
                assert path.name.startswith(wnid)
                with Image.open(path) as image:
                    assert image.format == "JPEG" and image.mode == "RGB"
                    assert image.size == (synthetic_data.IMAGE_WIDTH, synthetic_data.IMAGE_HEIGHT)


def test_the_same_seed_draws_the_same_bytes(tmp_path):
    first = synthetic_data.write_dataset(str(tmp_path / "a"), num_classes=2, train_per_class=2, val_per_class=1)
    second = synthetic_data.write_dataset(str(tmp_path / "b"), num_classes=2, train_per_class=2, val_per_class=1)
    other = synthetic_data.write_dataset(str(tmp_path / "c"), num_classes=2, train_per_class=2, val_per_class=1,
                                         seed=1)
    name = "n99000001/n99000001_00001.JPEG"

    def read(paths):
        return pathlib.Path(paths["train_directory"], name).read_bytes()

    assert read(first) == read(second)
    assert read(first) != read(other)


@pytest.mark.parametrize("name", SOLID_FIGURES)
def test_the_figure_has_its_class_hue(name):
    label = synthetic_data.CLASS_NAMES.index(name)
    rng = np.random.default_rng(7)
    for _ in range(10):
        pixels = np.asarray(synthetic_data.draw_image(label, rng), np.float64) / 255.0
        centre = pixels[synthetic_data.IMAGE_HEIGHT // 2, synthetic_data.IMAGE_WIDTH // 2]
        hue = colorsys.rgb_to_hsv(*centre)[0]
        expected = label / len(synthetic_data.CLASS_NAMES)
        distance = min(abs(hue - expected), 1 - abs(hue - expected))
        assert distance <= synthetic_data.HUE_JITTER + 1e-6


def test_classes_differ_in_shape_not_just_colour():
    """Stripes make many edges across their direction and few along it; a disc makes few."""
    rng = np.random.default_rng(0)

    def edge_density(label):
        densities = []
        for _ in range(5):
            pixels = np.asarray(synthetic_data.draw_image(label, rng), np.float64)
            down = np.abs(np.diff(pixels, axis=0)).sum(axis=-1) > 150
            across = np.abs(np.diff(pixels, axis=1)).sum(axis=-1) > 150
            densities.append((down.mean(), across.mean()))
        return np.mean(densities, axis=0)

    disc = edge_density(synthetic_data.CLASS_NAMES.index("disc"))
    horizontal = edge_density(synthetic_data.CLASS_NAMES.index("horizontal stripes"))
    vertical = edge_density(synthetic_data.CLASS_NAMES.index("vertical stripes"))
    assert horizontal[0] > 3 * disc[0] and horizontal[0] > 3 * horizontal[1]
    assert vertical[1] > 3 * disc[1] and vertical[1] > 3 * vertical[0]


def test_bad_class_count_is_refused(tmp_path):
    with pytest.raises(ValueError, match="num_classes"):
        synthetic_data.write_dataset(str(tmp_path), num_classes=11)


def test_prepare_shapes_draws_and_converts_once(tmp_path):
    records_dir = pathlib.Path(
        synthetic_data.prepare_shapes(str(tmp_path), train_per_class=1, val_per_class=1, num_workers=1)
    )
    manifest = json.loads((records_dir / records.MANIFEST_FILE).read_text())
    assert manifest["splits"]["train"]["num_shards"] == synthetic_data.TRAIN_SHARDS
    assert manifest["splits"]["validation"]["num_shards"] == synthetic_data.VALIDATION_SHARDS
    assert manifest["splits"]["train"]["num_records"] == len(synthetic_data.CLASS_NAMES)
    # The converter writes the class names beside the shards, for the report and the export.
    names = (records_dir / records.METADATA_FILE).read_text().splitlines()
    assert [line.split("\t")[1] for line in names] == list(synthetic_data.CLASS_NAMES)
    before = {p.name: p.stat().st_mtime_ns for p in records_dir.iterdir()}
    assert synthetic_data.prepare_shapes(str(tmp_path)) == str(records_dir)
    assert {p.name: p.stat().st_mtime_ns for p in records_dir.iterdir()} == before
