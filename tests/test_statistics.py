"""alexnet_tf/statistics.py: the published values, the accumulator's arithmetic, the files' round trip."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from converted import SHAPES, read_records
from PIL import Image

from alexnet_tf import converter, statistics


def _random_images(count: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """Pixels with correlated channels, so the covariance has three distinct eigenvalues."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        base = rng.integers(0, 200, (size, size, 1))
        noise = rng.integers(0, 56, (size, size, 3)) * np.array([1, 0.5, 0.2])
        images.append((base + noise).astype(np.uint8))
    return images


def test_published_imagenet_values_are_an_orthonormal_pca():
    stats = statistics.imagenet_statistics()
    np.testing.assert_allclose(stats.mean_rgb, [123.68, 116.78, 103.94], atol=1e-4)
    assert stats.mean_image is None and stats.num_images == 0 and stats.source == "published ImageNet values"
    # Largest eigenvalue first; the eigenvectors (columns) orthonormal, to the printed 4 digits.
    assert list(stats.eigenvalues) == sorted(stats.eigenvalues, reverse=True)
    np.testing.assert_allclose(stats.eigenvectors.T @ stats.eigenvectors, np.eye(3), atol=2e-4)


def test_statistics_known_answer_and_order_independence(tmp_path):
    colours = [(10, 20, 30), (50, 60, 70)]
    accumulators = []
    for order in (colours, colours[::-1]):
        acc = statistics.StatisticsAccumulator(8)
        for colour in order:
            acc.add(np.broadcast_to(np.array(colour, np.uint8), (8, 8, 3)).copy())
        accumulators.append(acc)
    stats = accumulators[0].result()
    np.testing.assert_allclose(stats.mean_rgb, [30, 40, 50])
    np.testing.assert_allclose(stats.std_rgb, [20, 20, 20])
    # Covariance is 400 everywhere: one eigenvalue 1200 along (1,1,1)/sqrt(3), stored /255.
    np.testing.assert_allclose(stats.eigenvalues, [1200 / 255, 0, 0], atol=1e-4)
    np.testing.assert_allclose(np.abs(stats.eigenvectors[:, 0]), [3**-0.5] * 3, atol=1e-6)
    np.testing.assert_allclose(stats.mean_image, np.broadcast_to([30, 40, 50], (8, 8, 3)))
    merged = statistics.StatisticsAccumulator(8)
    merged.merge(accumulators[1])
    merged.save(str(tmp_path / "s.npz"))
    loaded = statistics.StatisticsAccumulator.load(str(tmp_path / "s.npz"))
    assert loaded.num_images == 2
    np.testing.assert_array_equal(loaded.sum_image, accumulators[0].sum_image)
    np.testing.assert_array_equal(loaded.sum_outer, accumulators[0].sum_outer)


def test_accumulator_matches_a_direct_float64_computation():
    images = _random_images(5, 6)
    acc = statistics.StatisticsAccumulator(6)
    for image in images:
        acc.add(image)
    stats = acc.result(source="here")
    pixels = np.stack(images).reshape(-1, 3).astype(np.float64)
    covariance = np.cov(pixels, rowvar=False, bias=True)
    np.testing.assert_allclose(stats.mean_rgb, pixels.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(stats.std_rgb, pixels.std(axis=0), rtol=1e-5)
    np.testing.assert_allclose(stats.mean_image, np.mean(images, axis=0), rtol=1e-6)
    # Stored as the eigenvalues of the 0-255 covariance divided by 255 (the published convention).
    values = np.linalg.eigvalsh(covariance)[::-1]
    assert values[0] > values[1] > values[2] > 0
    np.testing.assert_allclose(stats.eigenvalues, values / 255, rtol=1e-4)
    for i in range(3):
        vector = stats.eigenvectors[:, i]
        np.testing.assert_allclose(covariance @ vector, values[i] * vector, rtol=1e-3, atol=1e-3)
        assert vector[np.argmax(np.abs(vector))] > 0  # the sign convention
    assert stats.num_images == 5 and stats.source == "here"


def test_merged_parts_equal_one_pass_exactly(tmp_path):
    images = _random_images(7, 4, seed=1)
    whole = statistics.StatisticsAccumulator(4)
    parts = [statistics.StatisticsAccumulator(4) for _ in range(3)]
    for i, image in enumerate(images):
        whole.add(image)
        parts[i % 3].add(image)
    merged = statistics.StatisticsAccumulator(4)
    for part in reversed(parts):
        part.save(str(tmp_path / "part.npz"))  # through the file, as the converter's workers do
        merged.merge(statistics.StatisticsAccumulator.load(str(tmp_path / "part.npz")))
    np.testing.assert_array_equal(merged.sum_image, whole.sum_image)
    np.testing.assert_array_equal(merged.sum_outer, whole.sum_outer)
    assert merged.num_images == whole.num_images == 7


def test_accumulator_refuses_wrong_images_sizes_and_emptiness():
    acc = statistics.StatisticsAccumulator(4)
    with pytest.raises(ValueError, match=r"\(4, 4, 3\) uint8"):
        acc.add(np.zeros((4, 5, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        acc.add(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="size 8 into size 4"):
        acc.merge(statistics.StatisticsAccumulator(8))
    with pytest.raises(ValueError, match="no training images"):
        acc.result()


def test_save_and_load_round_trip(tmp_path):
    acc = statistics.StatisticsAccumulator(4)
    for image in _random_images(3, 4):
        acc.add(image)
    stats = acc.result()
    stats.save(str(tmp_path))
    loaded = statistics.load_statistics(str(tmp_path))
    assert loaded.source == str(tmp_path / statistics.STATISTICS_FILE) and loaded.num_images == 3
    for field in ("mean_rgb", "std_rgb", "eigenvalues", "eigenvectors", "mean_image"):
        np.testing.assert_allclose(getattr(loaded, field), getattr(stats, field), rtol=1e-6, err_msg=field)


def test_statistics_without_a_mean_image(tmp_path):
    statistics.imagenet_statistics().save(str(tmp_path))
    assert json.loads((tmp_path / statistics.STATISTICS_FILE).read_text())["mean_image_file"] is None
    assert not (tmp_path / statistics.MEAN_IMAGE_FILE).exists()
    loaded = statistics.load_statistics(str(tmp_path))
    assert loaded.mean_image is None
    np.testing.assert_allclose(loaded.mean_rgb, statistics.IMAGENET_MEAN_RGB, rtol=1e-6)


def test_missing_files_fall_back_to_the_published_values(tmp_path):
    for data_dir in (None, str(tmp_path)):
        stats = statistics.load_statistics(data_dir)
        assert stats.source == "published ImageNet values" and stats.mean_image is None


def test_malformed_files_are_errors_naming_the_file(tmp_path):
    path = tmp_path / statistics.STATISTICS_FILE
    path.write_text('{"mean_rgb": [1, 2]}')
    with pytest.raises(ValueError, match=f"{path}: malformed.*re-run the converter"):
        statistics.load_statistics(str(tmp_path))
    statistics.imagenet_statistics().save(str(tmp_path))
    record = json.loads(path.read_text())
    record["mean_image_file"] = "gone.npy"
    path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match=f"{path} names .*gone.npy, which does not exist"):
        statistics.load_statistics(str(tmp_path))


def test_the_converters_statistics_are_one_pass_over_its_training_records(converted):
    """Per-shard sums merged by the converter equal one accumulator over the stored records."""
    data_dir = converted(SHAPES)
    acc = statistics.StatisticsAccumulator()
    for record in read_records(data_dir, "train"):
        acc.add(converter.central_square(Image.open(io.BytesIO(record.encoded)).convert("RGB"), acc.size))
    expected, stored = acc.result(), statistics.load_statistics(str(data_dir))
    assert stored.num_images == len(SHAPES.train_labels) == expected.num_images
    for field in ("mean_rgb", "std_rgb", "eigenvalues", "eigenvectors", "mean_image"):
        np.testing.assert_allclose(getattr(stored, field), getattr(expected, field), rtol=1e-6, err_msg=field)
