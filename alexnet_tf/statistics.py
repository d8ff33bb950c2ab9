"""Training-set statistics the paper's preprocessing uses: the mean image and the RGB PCA.

The converter computes them from the training images and writes them beside the shards
(``statistics.json`` and ``mean_image.npy``); the input pipeline and the exporter read them.
All values are on the 0-255 pixel scale, channels in RGB order.
"""

from __future__ import annotations

import dataclasses
import io
import os

import numpy as np
from absl import logging

from alexnet_tf.records import MEAN_IMAGE_FILE, STATISTICS_FILE

# alexnet_tf.paths (and with it TensorFlow) is imported where files are read or written, not
# here: the converter's worker processes accumulate sums without TensorFlow.

# Published ImageNet values (fb.resnet.torch, computed on [0, 1] pixels; scaled here to 0-255).
# Eigenvectors are the COLUMNS of the matrix, rows are R, G, B.
IMAGENET_MEAN_RGB = (123.68, 116.78, 103.94)
IMAGENET_STD_RGB = (58.393, 57.12, 57.375)
IMAGENET_EIGENVALUES = (0.2175 * 255.0, 0.0188 * 255.0, 0.0045 * 255.0)
IMAGENET_EIGENVECTORS = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


@dataclasses.dataclass
class DatasetStatistics:
    """Per-channel mean and std, the RGB covariance's eigen-decomposition, the mean image.

    Attributes:
      mean_rgb: (3,) per-channel mean.
      std_rgb: (3,) per-channel standard deviation.
      eigenvalues: (3,) eigenvalues of the 3x3 RGB covariance of [0, 1] pixels times 255
        (not of the 0-255 covariance: see ``StatisticsAccumulator``), largest first.
      eigenvectors: (3, 3) the matching unit eigenvectors as columns (rows R, G, B).
      mean_image: (H, W, 3) float32 mean of the centre-cropped training images, or None.
      num_images: how many images the figures were computed from (0 for published values).
      source: where the figures came from (a path, or "published ImageNet values").
    """

    mean_rgb: np.ndarray
    std_rgb: np.ndarray
    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    mean_image: np.ndarray | None = None
    num_images: int = 0
    source: str = "published ImageNet values"

    def save(self, directory: str) -> None:
        """Writes ``statistics.json`` (and ``mean_image.npy`` when there is one) to ``directory``."""
        from alexnet_tf import paths

        record = {
            "mean_rgb": [float(v) for v in self.mean_rgb],
            "std_rgb": [float(v) for v in self.std_rgb],
            "eigenvalues": [float(v) for v in self.eigenvalues],
            "eigenvectors": [[float(v) for v in row] for row in self.eigenvectors],
            "num_images": int(self.num_images),
            "mean_image_file": MEAN_IMAGE_FILE if self.mean_image is not None else None,
        }
        if self.mean_image is not None:
            paths.save_npy(os.path.join(directory, MEAN_IMAGE_FILE), self.mean_image.astype(np.float32))
        paths.write_json(os.path.join(directory, STATISTICS_FILE), record)


def imagenet_statistics() -> DatasetStatistics:
    """The published ImageNet figures (no mean image: per-channel means stand in)."""
    return DatasetStatistics(
        mean_rgb=np.array(IMAGENET_MEAN_RGB, np.float32),
        std_rgb=np.array(IMAGENET_STD_RGB, np.float32),
        eigenvalues=np.array(IMAGENET_EIGENVALUES, np.float32),
        eigenvectors=np.array(IMAGENET_EIGENVECTORS, np.float32),
    )


def load_statistics(data_dir: str | None) -> DatasetStatistics:
    """The statistics written by the converter in ``data_dir``, else the published ones.

    Raises:
      ValueError: naming the file, when ``statistics.json`` exists but is malformed.
    """
    from alexnet_tf import paths

    path = os.path.join(data_dir, STATISTICS_FILE) if data_dir else ""
    if not path or not paths.exists(path):
        logging.warning("No %s in %r: using the published ImageNet statistics.", STATISTICS_FILE, data_dir)
        return imagenet_statistics()
    try:
        record = paths.read_json(path)
        stats = DatasetStatistics(
            mean_rgb=np.array(record["mean_rgb"], np.float32).reshape(3),
            std_rgb=np.array(record["std_rgb"], np.float32).reshape(3),
            eigenvalues=np.array(record["eigenvalues"], np.float32).reshape(3),
            eigenvectors=np.array(record["eigenvectors"], np.float32).reshape(3, 3),
            num_images=int(record.get("num_images", 0)),
            source=path,
        )
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: malformed dataset statistics ({e}); re-run the converter") from e
    if record.get("mean_image_file"):
        mean_path = os.path.join(data_dir, record["mean_image_file"])
        if not paths.exists(mean_path):
            raise ValueError(f"{path} names {mean_path}, which does not exist; re-run the converter")
        stats.mean_image = paths.load_npy(mean_path).astype(np.float32)
    return stats


class StatisticsAccumulator:
    """Running sums for :class:`DatasetStatistics`, in integers so any split of the work agrees.

    Images arrive as ``(size, size, 3)`` uint8 arrays (the converter's samples of the central
    square). The sums are exact: per-image products of 8-bit values are integers far below 2**53,
    so partial sums from different shards or workers merge to the same result in any order, and
    the memory is one ``(size, size, 3)`` int64 array however many images there are.

    Every sample enters the mean image and the mean; the RGB covariance (and with it the std and
    the PCA) is summed over every ``covariance_stride``-th sample in each direction, a regular
    subset of the same pixels: a 3x3 matrix needs far fewer samples than a mean image, and its
    products are most of the per-image cost.

    The eigenvalues follow the convention of ``IMAGENET_EIGENVALUES``: those of the covariance of
    pixels scaled to [0, 1], multiplied by 255 (equivalently, the 0-255 covariance's divided by 255),
    so that PCA noise ``eigenvectors @ (alpha * eigenvalues)`` is in 0-255 pixel units.
    """

    def __init__(self, size: int = 256, covariance_stride: int = 1):
        if not 1 <= covariance_stride <= size:
            raise ValueError(f"covariance_stride must be in 1..{size}, got {covariance_stride}")
        self.size = size
        self.covariance_stride = covariance_stride
        self.num_images = 0
        self.sum_image = np.zeros((size, size, 3), np.int64)
        self.sum_outer = np.zeros((3, 3), np.int64)  # over the covariance's samples only

    def add(self, image: np.ndarray) -> None:
        """Adds one ``(size, size, 3)`` uint8 image."""
        if image.shape != (self.size, self.size, 3) or image.dtype != np.uint8:
            raise ValueError(f"expected a ({self.size}, {self.size}, 3) uint8 image, got {image.shape}")
        np.add(self.sum_image, image, out=self.sum_image)
        step = self.covariance_stride
        # Per image, float64 sums of products of 8-bit values are exact integers (< 2**53). einsum's
        # own loop, not BLAS, whose thread start-up costs more than this small product.
        channels = image[::step, ::step].reshape(-1, 3).T.astype(np.float64, order="C")
        self.sum_outer += np.einsum("ij,kj->ik", channels, channels, optimize=False).astype(np.int64)
        self.num_images += 1

    def merge(self, other: StatisticsAccumulator) -> None:
        """Adds another accumulator's sums to this one."""
        if (other.size, other.covariance_stride) != (self.size, self.covariance_stride):
            raise ValueError(
                f"cannot merge statistics of size {other.size} (covariance stride {other.covariance_stride}) "
                f"into size {self.size} (covariance stride {self.covariance_stride})"
            )
        self.sum_image += other.sum_image
        self.sum_outer += other.sum_outer
        self.num_images += other.num_images

    def to_bytes(self) -> bytes:
        """The sums as the bytes of an ``.npz`` file."""
        # Uncompressed (compression costs more than the write); uint32 halves the size when it fits.
        fits = self.sum_image.max(initial=0) < 2**32
        sum_image = self.sum_image.astype(np.uint32) if fits else self.sum_image
        buffer = io.BytesIO()
        np.savez(
            buffer,
            num_images=np.int64(self.num_images),
            sum_image=sum_image,
            sum_outer=self.sum_outer,
            covariance_stride=np.int64(self.covariance_stride),
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> StatisticsAccumulator:
        """The sums of :meth:`to_bytes`."""
        with np.load(io.BytesIO(data)) as arrays:
            # Sums written before the stride was recorded used every sample.
            stride = int(arrays["covariance_stride"]) if "covariance_stride" in arrays else 1
            acc = cls(int(arrays["sum_image"].shape[0]), stride)
            acc.num_images = int(arrays["num_images"])
            acc.sum_image = arrays["sum_image"].astype(np.int64)
            acc.sum_outer = arrays["sum_outer"].astype(np.int64)
        return acc

    def save(self, path: str) -> None:
        """Writes the sums to ``path`` (an ``.npz`` file)."""
        from alexnet_tf import paths

        paths.write_bytes(path, self.to_bytes())

    @classmethod
    def load(cls, path: str) -> StatisticsAccumulator:
        """Reads sums written by :meth:`save`."""
        from alexnet_tf import paths

        return cls.from_bytes(paths.read_bytes(path))

    def result(self, source: str = "", mean_image_size: int | None = None) -> DatasetStatistics:
        """Mean, std, the RGB covariance's eigen-decomposition (largest first) and the mean image.

        Args:
          source: where the images came from, for the statistics' ``source``.
          mean_image_size: the mean image's side, a multiple of ``size`` (each sample's mean is
            repeated over its square of pixels); default ``size``.

        Raises:
          ValueError: when no image was added, or for a ``mean_image_size`` not a multiple of ``size``.
        """
        if self.num_images == 0:
            raise ValueError("no training images were accumulated; cannot compute dataset statistics")
        repeat = (mean_image_size or self.size) // self.size
        if repeat < 1 or repeat * self.size != (mean_image_size or self.size):
            raise ValueError(f"mean_image_size must be a multiple of {self.size}, got {mean_image_size}")
        mean = self.sum_image.sum(axis=(0, 1)).astype(np.float64) / (self.num_images * self.size * self.size)
        step = self.covariance_stride
        sampled = self.sum_image[::step, ::step]
        num_sampled = self.num_images * sampled.shape[0] * sampled.shape[1]
        sampled_mean = sampled.sum(axis=(0, 1)).astype(np.float64) / num_sampled
        covariance = self.sum_outer.astype(np.float64) / num_sampled - np.outer(sampled_mean, sampled_mean)
        eigenvalues, eigenvectors = np.linalg.eigh(covariance)
        order = np.argsort(eigenvalues)[::-1]
        eigenvalues, eigenvectors = eigenvalues[order], eigenvectors[:, order]
        # eigh's signs are arbitrary; fix them so the largest entry of each vector is positive.
        signs = np.sign(eigenvectors[np.argmax(np.abs(eigenvectors), axis=0), range(3)])
        eigenvectors = eigenvectors * np.where(signs == 0, 1.0, signs)
        mean_image = self.sum_image / self.num_images
        if repeat > 1:
            mean_image = mean_image.repeat(repeat, axis=0).repeat(repeat, axis=1)
        return DatasetStatistics(
            mean_rgb=mean.astype(np.float32),
            std_rgb=np.sqrt(np.maximum(np.diag(covariance), 0.0)).astype(np.float32),
            eigenvalues=(np.maximum(eigenvalues, 0.0) / 255.0).astype(np.float32),
            eigenvectors=eigenvectors.astype(np.float32),
            mean_image=mean_image.astype(np.float32),
            num_images=self.num_images,
            source=source,
        )
