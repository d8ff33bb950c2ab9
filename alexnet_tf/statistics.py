"""Training-set statistics the paper's preprocessing uses: the mean image and the RGB PCA.

The converter computes them from the training images and writes them beside the shards
(``statistics.json`` and ``mean_image.npy``); the input pipeline and the exporter read them.
All values are on the 0-255 pixel scale, channels in RGB order.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
from absl import logging

STATISTICS_FILE = "statistics.json"
MEAN_IMAGE_FILE = "mean_image.npy"

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
      eigenvalues: (3,) eigenvalues of the 3x3 RGB covariance, largest first.
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
        record = {
            "mean_rgb": [float(v) for v in self.mean_rgb],
            "std_rgb": [float(v) for v in self.std_rgb],
            "eigenvalues": [float(v) for v in self.eigenvalues],
            "eigenvectors": [[float(v) for v in row] for row in self.eigenvectors],
            "num_images": int(self.num_images),
            "mean_image_file": MEAN_IMAGE_FILE if self.mean_image is not None else None,
        }
        if self.mean_image is not None:
            np.save(os.path.join(directory, MEAN_IMAGE_FILE), self.mean_image.astype(np.float32))
        with open(os.path.join(directory, STATISTICS_FILE), "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2)


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
    path = os.path.join(data_dir, STATISTICS_FILE) if data_dir else ""
    if not path or not os.path.exists(path):
        logging.warning("No %s in %r: using the published ImageNet statistics.", STATISTICS_FILE, data_dir)
        return imagenet_statistics()
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
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
        if not os.path.exists(mean_path):
            raise ValueError(f"{path} names {mean_path}, which does not exist; re-run the converter")
        stats.mean_image = np.load(mean_path).astype(np.float32)
    return stats
