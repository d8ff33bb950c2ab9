"""alexnet_tf/statistics.py: the published values, the accumulator's arithmetic, the files' round trip."""

from __future__ import annotations

import io
import json
import pathlib
import random

import numpy as np
import pytest
from PIL import Image

from alexnet_tf import converter, statistics
from alexnet_tf.converter.shards import statistics_accumulator
from tests.support.converted import SHAPES, read_records


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
    with pytest.raises(ValueError, match=r"size 8 \(covariance stride 1\) into size 4"):
        acc.merge(statistics.StatisticsAccumulator(8))
    with pytest.raises(ValueError, match=r"stride 2\) into size 4 \(covariance stride 1\)"):
        acc.merge(statistics.StatisticsAccumulator(4, covariance_stride=2))
    with pytest.raises(ValueError, match="covariance_stride must be in 1..4"):
        statistics.StatisticsAccumulator(4, covariance_stride=0)
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
    acc = statistics_accumulator()
    for record in read_records(data_dir, "train"):
        acc.add(converter.central_square(Image.open(io.BytesIO(record.encoded)).convert("RGB"), acc.size))
    expected, stored = acc.result(mean_image_size=converter.STATISTICS_SIZE), statistics.load_statistics(str(data_dir))
    assert stored.num_images == len(SHAPES.train_labels) == expected.num_images
    assert stored.mean_image.shape == (converter.STATISTICS_SIZE, converter.STATISTICS_SIZE, 3)
    for field in ("mean_rgb", "std_rgb", "eigenvalues", "eigenvectors", "mean_image"):
        np.testing.assert_allclose(getattr(stored, field), getattr(expected, field), rtol=1e-6, err_msg=field)


def test_the_covariance_of_a_regular_subset_and_a_repeated_mean_image():
    images = _random_images(4, 6, seed=2)
    acc = statistics.StatisticsAccumulator(6, covariance_stride=2)
    for image in images:
        acc.add(image)
    stats = acc.result(mean_image_size=12)
    everything = np.stack(images).reshape(-1, 3).astype(np.float64)
    subset = np.stack([image[::2, ::2] for image in images]).reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(stats.mean_rgb, everything.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(stats.std_rgb, subset.std(axis=0), rtol=1e-5)
    values = np.linalg.eigvalsh(np.cov(subset, rowvar=False, bias=True))[::-1]
    np.testing.assert_allclose(stats.eigenvalues, values / 255, rtol=1e-4)
    # Each sample's mean fills its 2x2 square of the 12x12 mean image.
    mean = np.mean(images, axis=0)
    assert stats.mean_image.shape == (12, 12, 3)
    np.testing.assert_allclose(stats.mean_image[::2, ::2], mean, rtol=1e-6)
    np.testing.assert_allclose(stats.mean_image[1::2, 1::2], mean, rtol=1e-6)
    with pytest.raises(ValueError, match="multiple of 6, got 8"):
        acc.result(mean_image_size=8)
    # The stride travels with the sums; sums saved before it was recorded used every sample.
    loaded = statistics.StatisticsAccumulator.from_bytes(acc.to_bytes())
    assert loaded.covariance_stride == 2 and loaded.num_images == 4
    np.testing.assert_array_equal(loaded.sum_outer, acc.sum_outer)
    buffer = io.BytesIO()
    np.savez(buffer, num_images=np.int64(1), sum_image=np.zeros((6, 6, 3), np.uint32), sum_outer=np.zeros((3, 3)))
    assert statistics.StatisticsAccumulator.from_bytes(buffer.getvalue()).covariance_stride == 1


def _statistics_by_both_methods(files: list[pathlib.Path]) -> tuple[statistics.DatasetStatistics, ...]:
    """Method 1 (every sample of a 256x256 grid) and the converter's method, for the same files."""
    full = statistics.StatisticsAccumulator(converter.STATISTICS_SIZE)
    sampled = statistics_accumulator()
    for path in files:
        data = path.read_bytes()
        sampled.add(converter.convert_image(data, with_statistics=True).pixels)
        with Image.open(io.BytesIO(data)) as image:
            full.add(converter.central_square(image.convert("RGB"), converter.STATISTICS_SIZE))
    return full.result(), sampled.result(mean_image_size=converter.STATISTICS_SIZE)


# The converter's statistics agree with every sample's within these (docs/converter.md).
MEAN_TOLERANCE = 0.5  # levels of 0-255, for the mean and the std of each channel
EIGENVALUE_TOLERANCE = 0.02  # relative, each of the three
EIGENVECTOR_TOLERANCE = 0.99  # |cosine| between matching eigenvectors, at least
MEAN_IMAGE_TOLERANCE = 2.0  # levels, RMS over the 256x256x3 mean image


@pytest.mark.slow  # 1,000 real images decoded twice, per data set: ~20 s on 2 cores
@pytest.mark.parametrize("images", ["imagenet-sample", "imagenette"])
def test_the_sampled_statistics_agree_with_every_samples_on_real_images(shared_data, images):
    """The real sample's 1,000 originals, and a seeded 1,000 of Imagenette's 9,469 training images."""
    files = sorted((shared_data / images / "train").glob("*/*"))
    if images == "imagenette":
        files = random.Random(0).sample(files, 1000)
    assert len(files) == 1000
    full, sampled = _statistics_by_both_methods(files)
    assert sampled.num_images == full.num_images == 1000
    np.testing.assert_allclose(sampled.mean_rgb, full.mean_rgb, atol=MEAN_TOLERANCE)
    np.testing.assert_allclose(sampled.std_rgb, full.std_rgb, atol=MEAN_TOLERANCE)
    np.testing.assert_allclose(sampled.eigenvalues, full.eigenvalues, rtol=EIGENVALUE_TOLERANCE)
    cosines = np.abs(np.sum(sampled.eigenvectors * full.eigenvectors, axis=0))
    assert np.all(cosines >= EIGENVECTOR_TOLERANCE), cosines
    rms = np.sqrt(np.mean((sampled.mean_image - full.mean_image) ** 2))
    assert rms <= MEAN_IMAGE_TOLERANCE, rms
