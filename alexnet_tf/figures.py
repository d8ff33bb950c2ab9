"""The paper's Figures 3 and 4 from any trained model.

* Figure 3: the conv1 kernels as one image, each tower's kernels in its own block (the paper's
  top 48 were learned on GPU 1, the bottom 48 on GPU 2). conv1 is not split in the model; by
  convention kernels 0-47 are tower 1 and 48-95 tower 2.
* Figure 4, left: validation images with the model's top-5 predictions as bars, the true
  label's bar marked.
* Figure 4, right: validation images (first column) and the training images whose fc7 feature
  vectors are nearest in Euclidean distance (section 6.1).

Image grids are assembled in numpy and written pixel for pixel; the bar charts use matplotlib,
which is imported only here, only when a figure is drawn.
"""

from __future__ import annotations

import io
import math
import os
import textwrap
from collections.abc import Sequence

import keras
import numpy as np
from absl import logging

from alexnet_tf import data, device_preprocess, imagenet
from alexnet_tf import paths as paths_lib
from alexnet_tf.config import Config
from alexnet_tf.statistics import load_statistics

KERNELS_PER_ROW = 16
KERNEL_SCALE = 4  # each 11x11 kernel drawn as 44x44 pixels
KERNEL_GAP = 2
TOWER_GAP = 12
TILE_GAP = 4
QUERY_GAP = 16  # between a query image and its neighbours
BACKGROUND = 255
FEATURE_LAYER = "fc7"

DPI = 100
PANEL_WIDTH_INCHES = 2.2
PANEL_HEIGHT_INCHES = 4.0
TRUE_COLOUR = "#d62728"
OTHER_COLOUR = "#1f77b4"

FIGURES_DIR = "figures"  # beside the evaluation report
FIGURE3_FILE = "figure3_conv1_kernels.png"
FIGURE4_PREDICTIONS_FILE = "figure4_predictions.png"
FIGURE4_NEIGHBOURS_FILE = "figure4_neighbours.png"


def _save_rgb(image: np.ndarray, path: str) -> str:
    import matplotlib.image

    buffer = io.BytesIO()  # matplotlib writes local files only; the bytes go through tf.io.gfile
    matplotlib.image.imsave(buffer, image, format="png")
    paths_lib.makedirs(os.path.dirname(path) or ".")
    return paths_lib.write_bytes(path, buffer.getvalue())


def kernel_grid(kernel: np.ndarray, towers: int = 2) -> np.ndarray:
    """The conv1 kernels as one uint8 RGB image, one block of rows per tower.

    Each kernel is contrast-stretched on its own to 0-255 and enlarged KERNEL_SCALE times
    (nearest neighbour). Blocks are KERNELS_PER_ROW kernels wide (fewer when a tower has fewer).

    Args:
      kernel: [kh, kw, 3, n], n divisible by ``towers``.
      towers: how many blocks.

    Returns:
      uint8 [height, width, 3].
    """
    kh, kw, channels, count = kernel.shape
    if channels != 3 or count % towers:
        raise ValueError(f"expected a [kh, kw, 3, n] kernel with n divisible by {towers}, got {kernel.shape}")
    per_tower = count // towers
    columns = min(KERNELS_PER_ROW, per_tower)
    rows = math.ceil(per_tower / columns)
    tile_h, tile_w = kh * KERNEL_SCALE, kw * KERNEL_SCALE
    block_h = rows * tile_h + (rows - 1) * KERNEL_GAP
    height = towers * block_h + (towers - 1) * TOWER_GAP
    width = columns * tile_w + (columns - 1) * KERNEL_GAP
    canvas = np.full((height, width, 3), BACKGROUND, np.uint8)
    for index in range(count):
        tower, within = divmod(index, per_tower)
        row, column = divmod(within, columns)
        weights = kernel[..., index].astype(np.float64)
        low, high = weights.min(), weights.max()
        tile = (weights - low) / (high - low) if high > low else np.full_like(weights, 0.5)
        tile = np.kron(np.round(255 * tile).astype(np.uint8), np.ones((KERNEL_SCALE, KERNEL_SCALE, 1), np.uint8))
        top = tower * (block_h + TOWER_GAP) + row * (tile_h + KERNEL_GAP)
        left = column * (tile_w + KERNEL_GAP)
        canvas[top : top + tile_h, left : left + tile_w] = tile
    return canvas


def plot_conv1_kernels(model: keras.Model, path: str, towers: int = 2) -> str:
    """Figure 3: writes ``kernel_grid`` of the model's conv1 kernels to ``path``."""
    kernel = keras.ops.convert_to_numpy(model.get_layer("conv1").kernel)
    return _save_rgb(kernel_grid(kernel, towers), path)


def neighbours_grid(queries: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """Query images in the first column, their neighbours to the right.

    Args:
      queries: uint8 [q, s, s, 3].
      neighbours: uint8 [q, k, s, s, 3].

    Returns:
      uint8 [q * s + (q - 1) * TILE_GAP, (k + 1) * s + (k - 1) * TILE_GAP + QUERY_GAP, 3].
    """
    q, k, s = neighbours.shape[0], neighbours.shape[1], neighbours.shape[2]
    height = q * s + (q - 1) * TILE_GAP
    width = (k + 1) * s + (k - 1) * TILE_GAP + QUERY_GAP
    canvas = np.full((height, width, 3), BACKGROUND, np.uint8)
    for row in range(q):
        top = row * (s + TILE_GAP)
        canvas[top : top + s, :s] = queries[row]
        for column in range(k):
            left = s + QUERY_GAP + column * (s + TILE_GAP)
            canvas[top : top + s, left : left + s] = neighbours[row, column]
    return canvas


def nearest(query_features: np.ndarray, features: np.ndarray, k: int) -> np.ndarray:
    """Indices [q, k] of the rows of ``features`` nearest to each query (Euclidean), nearest first."""
    distances = (
        np.sum(query_features**2, axis=1, keepdims=True)
        - 2.0 * query_features @ features.T
        + np.sum(features**2, axis=1)[None, :]
    )
    return np.argsort(distances, axis=1, kind="stable")[:, :k]


def plot_predictions(
    images: np.ndarray, prob: np.ndarray, labels: np.ndarray, class_names: Sequence[str], path: str
) -> str:
    """Figure 4 (left): each image above its top-5 predictions; the true class's bar in red.

    The figure is ``len(images) * PANEL_WIDTH_INCHES * DPI`` by ``PANEL_HEIGHT_INCHES * DPI`` pixels.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    count = len(images)
    figure = plt.figure(figsize=(count * PANEL_WIDTH_INCHES, PANEL_HEIGHT_INCHES), dpi=DPI)
    grid = figure.add_gridspec(2, count, height_ratios=[1.1, 1.0], left=0.01, right=0.99, top=0.95,
                               bottom=0.02, wspace=0.08, hspace=0.25)
    for i in range(count):
        image_axes = figure.add_subplot(grid[0, i])
        image_axes.imshow(images[i])
        image_axes.set_axis_off()
        image_axes.set_title(textwrap.shorten(class_names[labels[i]], 28, placeholder="..."), fontsize=8)
        top = np.argsort(-prob[i])[:5]
        bars = figure.add_subplot(grid[1, i])
        colours = [TRUE_COLOUR if c == labels[i] else OTHER_COLOUR for c in top]
        bars.barh(np.arange(len(top)), prob[i][top], color=colours, alpha=0.6)
        for y, c in enumerate(top):
            bars.text(0.01, y, textwrap.shorten(class_names[c], 30, placeholder="..."), va="center", fontsize=7)
        bars.set_xlim(0, 1)
        bars.invert_yaxis()
        bars.set_yticks([])
        bars.tick_params(axis="x", labelsize=6)
    paths_lib.makedirs(os.path.dirname(path) or ".")
    paths_lib.save_figure(figure, path, dpi=DPI)
    plt.close(figure)
    return path


def _first_images(
    config: Config, pattern: str, stats, limit: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Up to ``limit`` centre crops in file order: (model inputs, displayable uint8, labels)."""
    dataset = data.make_dataset(pattern, False, config, stats=stats, repeat=False)
    finish = device_preprocess.DeviceFinish(config, stats)
    inputs, display, labels = [], [], []
    for features, batch_labels in dataset.take(math.ceil(limit / config.batch_size)):
        inputs.append(finish(features).numpy())
        display.append(features.image.numpy())  # the uint8 crop before the mean
        labels.append(batch_labels.numpy())
    return tuple(np.concatenate(arrays)[:limit] for arrays in (inputs, display, labels))


def make_figures(
    model: keras.Model,
    config: Config,
    data_dir: str,
    output_dir: str,
    class_names: Sequence[str] | None = None,
    num_examples: int = 8,
    num_queries: int = 5,
    num_neighbours: int = 6,
    max_train_images: int = 2000,
) -> dict[str, str]:
    """Writes Figure 3 and both halves of Figure 4 for ``model`` to ``output_dir``.

    Args:
      model: the trained Keras model (with layers ``conv1`` and ``fc7``).
      config: the run's configuration.
      data_dir: holds ``validation-*`` and ``train-*`` shards.
      output_dir: where the PNGs go.
      class_names: class index -> name; ``class_i`` when None.
      num_examples: validation images in Figure 4 (left).
      num_queries: validation images in Figure 4 (right).
      num_neighbours: training images shown per query.
      max_train_images: the first this many training images are searched for neighbours.

    Returns:
      ``{"figure3": path, "figure4_predictions": path, "figure4_neighbours": path}``.
    """
    names = list(class_names) if class_names is not None else imagenet.fallback_class_names(config.num_classes)
    stats = load_statistics(data_dir)
    paths = {"figure3": plot_conv1_kernels(model, os.path.join(output_dir, FIGURE3_FILE), config.towers)}

    count = max(num_examples, num_queries)
    inputs, display, labels = _first_images(config, data.file_pattern(data_dir, "validation"), stats, count)
    prob = keras.ops.convert_to_numpy(model.predict(inputs[:num_examples], verbose=0))
    paths["figure4_predictions"] = plot_predictions(
        display[:num_examples], prob, labels[:num_examples], names,
        os.path.join(output_dir, FIGURE4_PREDICTIONS_FILE),
    )

    features = keras.Model(model.inputs, model.get_layer(FEATURE_LAYER).output)
    train_inputs, train_display, _ = _first_images(
        config, data.file_pattern(data_dir, "train"), stats, max_train_images
    )
    train_features = features.predict(train_inputs, batch_size=config.batch_size, verbose=0)
    query_features = features.predict(inputs[:num_queries], verbose=0)
    k = min(num_neighbours, len(train_inputs))
    indices = nearest(np.asarray(query_features, np.float64), np.asarray(train_features, np.float64), k)
    paths["figure4_neighbours"] = _save_rgb(
        neighbours_grid(display[:num_queries], train_display[indices]),
        os.path.join(output_dir, FIGURE4_NEIGHBOURS_FILE),
    )
    for name, path in paths.items():
        logging.info("Wrote %s to %s", name, path)
    return paths

