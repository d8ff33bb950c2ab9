"""A small image-classification data set drawn on the spot, laid out like ImageNet on disk.

``python train.py`` with no data flags must run the whole road (JPEG folders -> converter ->
input pipeline -> training -> evaluation -> export) on a machine without internet, so it draws
its own classes: each is a kind of figure (a disc, a ring, stripes, a checkerboard, ...) of a
hue of its own (jittered, with random saturation and brightness), drawn at a random size and
place on a noisy greyish background. Shape and hue both tell the classes apart, so a small
network learns them within minutes on a CPU.

The files are real JPEGs in the layouts the converter reads:
``train/<wnid>/<wnid>_<n>.JPEG`` and ``val/<wnid>/<wnid>_val_<n>.JPEG``, with a synsets file
(one made-up wnid per line, in label order) and a metadata file (``wnid<TAB>name``) beside them.
The wnids (``n99000000`` ...) are not ImageNet's. :func:`prepare_shapes` draws the set and
converts it with :func:`alexnet_tf.converter.convert`, once.
"""

from __future__ import annotations

import colorsys
import io
import os
import tempfile

import numpy as np
from absl import logging
from PIL import Image, ImageDraw

from alexnet_tf import converter
from alexnet_tf import paths as paths_lib
from alexnet_tf.records import METADATA_FILE, SYNSETS_FILE, records_directory_name

# Wider than tall, so the pipeline's central square crop has something to do.
IMAGE_HEIGHT = 96
IMAGE_WIDTH = 112
JPEG_QUALITY = 90
HUE_JITTER = 0.03  # class hues are 0.1 apart
WNID_BASE = 99_000_000
TRAIN_DIR = "train"
VAL_DIR = "val"
TRAIN_SHARDS, VALIDATION_SHARDS = 8, 2  # 3,000 + 500 images by default: shards of ~375 and 250

# Index = label; figures that a horizontal flip maps onto another class are avoided.
CLASS_NAMES = (
    "disc",
    "square",
    "triangle",
    "cross",
    "ring",
    "horizontal stripes",
    "vertical stripes",
    "checkerboard",
    "dots",
    "diamond",
)


def wnids(num_classes: int = len(CLASS_NAMES)) -> list[str]:
    """The made-up wnids of the first ``num_classes`` classes, in label order."""
    _check_num_classes(num_classes)
    return [f"n{WNID_BASE + i:08d}" for i in range(num_classes)]


def _check_num_classes(num_classes: int) -> None:
    if not 1 <= num_classes <= len(CLASS_NAMES):
        raise ValueError(f"num_classes must be between 1 and {len(CLASS_NAMES)}, got {num_classes}")


def _colours(label: int, num_classes: int, rng: np.random.Generator) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A greyish background and a saturated figure colour whose hue belongs to the class."""
    hue = (label / num_classes + rng.uniform(-HUE_JITTER, HUE_JITTER)) % 1.0
    figure = colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0))
    background = colorsys.hsv_to_rgb(rng.uniform(0.0, 1.0), rng.uniform(0.0, 0.25), rng.uniform(0.05, 0.45))
    return tuple(int(255 * v) for v in background), tuple(int(255 * v) for v in figure)


def draw_image(label: int, rng: np.random.Generator) -> Image.Image:
    """One RGB image of class ``label`` (an index into ``CLASS_NAMES``)."""
    _check_num_classes(label + 1)
    background, colour = _colours(label, len(CLASS_NAMES), rng)
    noise = rng.normal(0.0, 12.0, size=(IMAGE_HEIGHT, IMAGE_WIDTH, 3))
    pixels = np.clip(np.array(background, np.float64) + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    # The figure stays inside the central square so that the pipeline's crops keep most of it.
    side = min(IMAGE_HEIGHT, IMAGE_WIDTH)
    left0 = (IMAGE_WIDTH - side) // 2
    radius = rng.uniform(0.22, 0.34) * side
    cx = left0 + side / 2 + rng.uniform(-0.1, 0.1) * side
    cy = side / 2 + rng.uniform(-0.1, 0.1) * side
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    name = CLASS_NAMES[label]
    if name == "disc":
        draw.ellipse(box, fill=colour)
    elif name == "square":
        draw.rectangle(box, fill=colour)
    elif name == "triangle":
        draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=colour)
    elif name == "cross":
        bar = radius / 3
        draw.rectangle((cx - radius, cy - bar, cx + radius, cy + bar), fill=colour)
        draw.rectangle((cx - bar, cy - radius, cx + bar, cy + radius), fill=colour)
    elif name == "ring":
        draw.ellipse(box, outline=colour, width=max(2, int(radius / 3)))
    elif name in ("horizontal stripes", "vertical stripes"):
        period = int(rng.integers(8, 14))
        for offset in range(-int(radius), int(radius), period):
            near, far = offset, offset + period // 2
            if name == "horizontal stripes":
                draw.rectangle((cx - radius, cy + near, cx + radius, cy + far), fill=colour)
            else:
                draw.rectangle((cx + near, cy - radius, cx + far, cy + radius), fill=colour)
    elif name == "checkerboard":
        cell = 2 * radius / 4
        for row in range(4):
            for col in range(row % 2, 4, 2):
                x0, y0 = cx - radius + col * cell, cy - radius + row * cell
                draw.rectangle((x0, y0, x0 + cell, y0 + cell), fill=colour)
    elif name == "dots":
        dot = radius / 5
        for row in range(3):
            for col in range(3):
                x = cx - radius + (col + 0.5) * 2 * radius / 3
                y = cy - radius + (row + 0.5) * 2 * radius / 3
                draw.ellipse((x - dot, y - dot, x + dot, y + dot), fill=colour)
    elif name == "diamond":
        corners = [(cx, cy - radius), (cx + radius, cy), (cx, cy + radius), (cx - radius, cy)]
        draw.polygon(corners, fill=colour)
    else:  # pragma: no cover - CLASS_NAMES and this function change together
        raise AssertionError(name)
    return image


def _jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def write_dataset(
    output_dir: str,
    num_classes: int = len(CLASS_NAMES),
    train_per_class: int = 300,
    val_per_class: int = 50,
    seed: int = 0,
) -> dict[str, str]:
    """Draws the data set as JPEG folders under ``output_dir``.

    Args:
      output_dir: created if needed; receives ``train/``, ``val/``, the synsets and metadata files.
        A local directory: these are the converter's input, which it reads with os.scandir and open().
      num_classes: how many of ``CLASS_NAMES`` to use.
      train_per_class: training images per class.
      val_per_class: validation images per class.
      seed: the same seed draws the same bytes.

    Returns:
      ``{"train_directory", "validation_directory", "labels_file", "metadata_file"}``, the
      paths the converter takes.
    """
    _check_num_classes(num_classes)
    rng = np.random.default_rng(seed)
    class_wnids = wnids(num_classes)
    paths = {
        "train_directory": os.path.join(output_dir, TRAIN_DIR),
        "validation_directory": os.path.join(output_dir, VAL_DIR),
        "labels_file": os.path.join(output_dir, SYNSETS_FILE),
        "metadata_file": os.path.join(output_dir, METADATA_FILE),
    }
    for split, per_class, suffix in (
        ("train_directory", train_per_class, ""),
        ("validation_directory", val_per_class, "_val"),
    ):
        for label, wnid in enumerate(class_wnids):
            folder = os.path.join(paths[split], wnid)
            os.makedirs(folder, exist_ok=True)
            for index in range(per_class):
                data = _jpeg_bytes(draw_image(label, rng))
                with open(os.path.join(folder, f"{wnid}{suffix}_{index:05d}.JPEG"), "wb") as f:
                    f.write(data)
    with open(paths["labels_file"], "w", encoding="utf-8") as f:
        f.write("".join(f"{wnid}\n" for wnid in class_wnids))
    with open(paths["metadata_file"], "w", encoding="utf-8") as f:
        f.write("".join(f"{wnid}\t{CLASS_NAMES[i]}\n" for i, wnid in enumerate(class_wnids)))
    total = num_classes * (train_per_class + val_per_class)
    logging.info("Drew %d synthetic JPEGs (%d classes) in %s", total, num_classes, output_dir)
    return paths


def prepare_shapes(
    root: str, seed: int = 0, num_workers: int | None = None, train_per_class: int = 300, val_per_class: int = 50,
    holdout_per_class: int = 0,
) -> str:
    """The built-in data set: draws it and converts it, once.

    Args:
      root: receives ``records/`` (shards) and, when local, ``jpeg/`` (the drawn ImageNet-style
        folders); may be in object storage (``gs://...``).
      seed: of the drawing.
      num_workers: converter processes.
      train_per_class, val_per_class: images per class (the held-out ones come out of the training images).
      holdout_per_class: training images per class held out as the selection split.

    Returns:
      The records directory (``--data_dir`` for a later run).
    """
    records_dir = os.path.join(root, records_directory_name("records", holdout_per_class))
    if converter.is_converted(records_dir):
        logging.info("Using the built-in data set already converted in %s", records_dir)
        return records_dir
    with tempfile.TemporaryDirectory(prefix="alexnet_tf_shapes_") as scratch:
        # The JPEG folders are the converter's input, which must be local: beside the records when
        # root is, else in a scratch directory deleted once the records are written.
        jpeg = os.path.join(root if paths_lib.is_local(root) else scratch, "jpeg")
        paths = write_dataset(jpeg, train_per_class=train_per_class, val_per_class=val_per_class, seed=seed)
        converter.convert(
            output_directory=records_dir,
            train_shards=TRAIN_SHARDS,
            validation_shards=VALIDATION_SHARDS,
            num_workers=num_workers,
            holdout_per_class=holdout_per_class,
            **paths,
        )
    return records_dir
