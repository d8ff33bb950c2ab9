"""The shards every test reads: JPEG folders converted by the real converter, once per session.

A test never writes TFRecords itself: it names the image folders it needs (a :class:`DrawnSet`
of figures drawn by :mod:`alexnet_tf.synthetic_data`, or a :class:`RealSet` of Imagenette JPEGs
from ``../shared/data``) and the ``converted`` fixture of ``conftest.py`` returns the directory
``alexnet_tf.converter.convert`` wrote for them, converting each distinct set once per session.
The directories are shared: a test that changes files copies them first (:func:`copy_shards`).
Known answers come from the records as stored (:func:`read_records`), so they hold whatever
order the converter's shuffle gave the records.
"""

from __future__ import annotations

import dataclasses
import pathlib
import shutil

import numpy as np
from PIL import Image

from alexnet_tf import converter, records, synthetic_data

# (height, width) of the assorted sizes: odd ones, wider and taller than square, a tiny one.
ASSORTED_SIZES = ((76, 90), (100, 81), (57, 140), (9, 7), (76, 76), (130, 200))
GRAYSCALE_EVERY = 5  # every fifth image of an assorted set is stored grayscale (the converter makes it RGB)


@dataclasses.dataclass(frozen=True)
class DrawnSet:
    """Drawn JPEG folders: one image per entry of ``train_labels`` and ``val_labels``.

    Image i of a split is of class ``labels[i]`` and shows that class's figure (modulo the ten
    figures of ``synthetic_data.CLASS_NAMES``).

    Attributes:
      train_labels, val_labels: the class of every image, in drawing order.
      classes: "shapes" for the drawn set's ten made-up wnids and names (a labels file and a
        metadata file are passed to the converter), "imagenet" for the 1000 ILSVRC-2012 classes
        (the converter's default), so that labels can go up to 999.
      assorted_sizes: images of the sizes in ``ASSORTED_SIZES``, some grayscale, instead of the
        drawn set's 96x112.
      train_shards, validation_shards, label_offset: passed to the converter.
    """

    train_labels: tuple[int, ...]
    val_labels: tuple[int, ...]
    classes: str = "shapes"
    assorted_sizes: bool = False
    train_shards: int = 2
    validation_shards: int = 1
    label_offset: int = 0

    def replace(self, **changes) -> DrawnSet:
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class RealSet:
    """The first images of every class of the Imagenette copy in ``../shared/data``.

    ``resize`` is the converter's ``--resize`` (None keeps the JPEGs byte for byte).
    """

    train_per_class: int = 16
    val_per_class: int = 6
    train_shards: int = 2
    validation_shards: int = 2
    resize: int | None = None


def cycling(count: int, num_classes: int = len(synthetic_data.CLASS_NAMES)) -> tuple[int, ...]:
    """Labels 0, 1, ..., num_classes - 1, 0, 1, ...: ``count`` of them."""
    return tuple(i % num_classes for i in range(count))


# 80 training images of the ten drawn classes in 2 shards, 16 validation images: training runs.
SHAPES = DrawnSet(train_labels=cycling(80), val_labels=cycling(16))
# 24 training images of 24 different ImageNet classes (label = position in the drawing order),
# of assorted sizes, in 4 shards; 10 validation images in 2 shards, the last of class 999 so that
# 1-based labels of this set overflow a 1000-class model: the pipeline's tests.
ASSORTED = DrawnSet(
    train_labels=tuple(range(24)),
    val_labels=(*range(9), 999),
    classes="imagenet",
    assorted_sizes=True,
    train_shards=4,
    validation_shards=2,
)
# The tiny trained run of the evaluation, export and figure tests.
IMAGENETTE = RealSet()


def _draw(spec: DrawnSet, split: str, labels: tuple[int, ...], wnids: list[str], folder: pathlib.Path) -> None:
    rng = np.random.default_rng(0 if split == "train" else 1)
    figures = len(synthetic_data.CLASS_NAMES)
    for i, label in enumerate(labels):
        image = synthetic_data.draw_image(label % figures, rng)
        if spec.assorted_sizes:
            height, width = ASSORTED_SIZES[i % len(ASSORTED_SIZES)]
            image = image.resize((width, height), Image.BILINEAR)
            if i % GRAYSCALE_EVERY == GRAYSCALE_EVERY - 2:
                image = image.convert("L")
        wnid = wnids[label]
        (folder / wnid).mkdir(parents=True, exist_ok=True)
        image.save(folder / wnid / f"{wnid}_{split}_{i:05d}.JPEG", "JPEG", quality=synthetic_data.JPEG_QUALITY)


def convert_drawn(spec: DrawnSet, root: pathlib.Path) -> pathlib.Path:
    """Draws ``spec``'s folders under ``root/jpeg`` and converts them into ``root/records``."""
    class_files = {}
    if spec.classes == "shapes":
        wnids = synthetic_data.wnids()
        class_files = {
            "labels_file": str(root / records.SYNSETS_FILE),
            "metadata_file": str(root / records.METADATA_FILE),
        }
        (root / records.SYNSETS_FILE).write_text("".join(f"{w}\n" for w in wnids))
        (root / records.METADATA_FILE).write_text(
            "".join(f"{w}\t{name}\n" for w, name in zip(wnids, synthetic_data.CLASS_NAMES, strict=True))
        )
    elif spec.classes == "imagenet":
        from alexnet_tf import imagenet

        wnids = imagenet.load_synsets()
    else:
        raise ValueError(f"DrawnSet.classes={spec.classes!r}: choose 'shapes' or 'imagenet'")
    for split, labels in (("train", spec.train_labels), ("val", spec.val_labels)):
        _draw(spec, split, labels, wnids, root / "jpeg" / split)
    output = root / "records"
    converter.convert(
        train_directory=str(root / "jpeg" / "train"),
        validation_directory=str(root / "jpeg" / "val"),
        output_directory=str(output),
        train_shards=spec.train_shards,
        validation_shards=spec.validation_shards,
        label_offset=spec.label_offset,
        num_workers=1,  # in this process: spawning workers that import TensorFlow costs more than the work
        **class_files,
    )
    return output


def convert_real(spec: RealSet, root: pathlib.Path, shared_data: pathlib.Path) -> pathlib.Path:
    """Links the first Imagenette JPEGs of every class under ``root`` and converts them."""
    labels_file = shared_data / "metadata" / "imagenette_synsets.txt"
    for split, per_class in (("train", spec.train_per_class), ("val", spec.val_per_class)):
        for wnid in labels_file.read_text().split():
            (root / split / wnid).mkdir(parents=True)
            for image in sorted((shared_data / "imagenette" / split / wnid).glob("*.JPEG"))[:per_class]:
                (root / split / wnid / image.name).symlink_to(image)
    output = root / "records"
    converter.convert(
        train_directory=str(root / "train"),
        validation_directory=str(root / "val"),
        output_directory=str(output),
        labels_file=str(labels_file),
        train_shards=spec.train_shards,
        validation_shards=spec.validation_shards,
        resize=spec.resize,
        num_workers=1,
    )
    return output


@dataclasses.dataclass(frozen=True)
class StoredRecord:
    """One record as the converter stored it."""

    encoded: bytes
    label: int
    synset: str
    filename: str
    height: int
    width: int


def read_records(data_dir: str | pathlib.Path, split: str) -> list[StoredRecord]:
    """Every record of ``split`` in ``data_dir``, in shard order and in order within each shard."""
    paths = sorted(pathlib.Path(data_dir).glob(records.shard_glob(split)))
    stored = []
    for example in converter.iterate_records(str(p) for p in paths):
        features = example.features.feature
        stored.append(StoredRecord(
            encoded=features[records.IMAGE_KEY].bytes_list.value[0],
            label=int(features[records.LABEL_KEY].int64_list.value[0]),
            synset=features[records.SYNSET_KEY].bytes_list.value[0].decode("utf-8"),
            filename=features[records.FILENAME_KEY].bytes_list.value[0].decode("utf-8"),
            height=int(features[records.HEIGHT_KEY].int64_list.value[0]),
            width=int(features[records.WIDTH_KEY].int64_list.value[0]),
        ))
    return stored


def copy_shards(data_dir: pathlib.Path, destination: pathlib.Path) -> pathlib.Path:
    """A private copy of a converted directory (without the converter's resume bookkeeping)."""
    shutil.copytree(data_dir, destination, ignore=shutil.ignore_patterns(converter.PARTS_DIRECTORY))
    return destination
