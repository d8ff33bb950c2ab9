"""A folder of your own images as a data set: ``train.py --image_dir=DIR``.

``DIR`` holds ``train/<class>/`` and ``val/<class>/`` folders of images, or ``<class>/`` folders
only; the class names are the folder names, any names (not only ImageNet wnids), and the labels
are their sorted order. The
folders are converted once, by the same converter as ImageNet and Imagenette
(:func:`alexnet_tf.converter.convert`: the same odd-file handling, resume and statistics), into
the run's work directory, with the class list written beside the records and into the run.
The converter keys classes by wnid: folders named otherwise are given made-up wnids
(``n90000000`` on, in the sorted order) through a folder of links, and their names become the
classes' human-readable names (the converter's metadata file), which reports show.

Class folders without a ``train/`` / ``val/`` split are all training images, and need the run's
``--holdout_per_class=N``: N images of every class are held out as the selection split, which
the run watches every epoch and, there being no validation split, scores at its end (centre crop,
10 crops, report), so those figures are not independent of the run's choices: the report says so.
Without ``--holdout_per_class`` such a folder is refused.
"""

from __future__ import annotations

import os
import tempfile

from absl import logging

from alexnet_tf import converter, paths, records
from alexnet_tf.config import ConfigError

CLASSES_FILE = "classes.txt"  # the run's class names in label order, one per line
SPLITS = ("train", "val")
TRAIN_SHARDS, VALIDATION_SHARDS = 16, 4
MADE_UP_WNID_BASE = 90_000_000  # far from ImageNet's (n01440764 to n15075141) and the drawn set's
LINKS_DIR = ".class_links"


def _is_wnid(name: str) -> bool:
    return name.startswith("n") and name[1:].isdigit() and len(name) == 9


def wnids_for(names: list[str]) -> list[str]:
    """The names themselves when all are wnids (Imagenette's folders), else made-up wnids in their order."""
    if all(_is_wnid(name) for name in names):
        return list(names)
    return [f"n{MADE_UP_WNID_BASE + i:08d}" for i in range(len(names))]


def _linked_folders(image_dir: str, names: list[str], wnids: list[str], root: str) -> str:
    """``root/.class_links/<split>/<wnid>`` links to ``image_dir/<split>/<name>``: the converter's input.

    For class folders only, ``root/.class_links/train/<wnid>`` links to ``image_dir/<name>``.
    """
    links = os.path.join(root if paths.is_local(root) else tempfile.mkdtemp(prefix="alexnet_tf_"), LINKS_DIR)
    split_folders = SPLITS if has_split_folders(image_dir) else ("",)
    for split in split_folders:
        os.makedirs(os.path.join(links, split or "train"), exist_ok=True)
        for name, wnid in zip(names, wnids, strict=True):
            link = os.path.join(links, split or "train", wnid)
            if os.path.lexists(link):
                os.remove(link)
            os.symlink(os.path.abspath(os.path.join(image_dir, split, name)), link, target_is_directory=True)
    return links


def has_split_folders(image_dir: str) -> bool:
    """Whether ``image_dir`` is split into ``train/`` and ``val/`` (else: class folders only)."""
    return any(os.path.isdir(os.path.join(image_dir, split)) for split in SPLITS)


def _subfolders(folder: str) -> list[str]:
    return sorted(name for name in os.listdir(folder) if os.path.isdir(os.path.join(folder, name)))


def class_names(image_dir: str) -> list[str]:
    """The sorted class folder names of ``image_dir/train`` (``val/`` must have the same), or of
    ``image_dir`` itself when it holds class folders only.

    Raises:
      ConfigError: naming ``--image_dir`` and what is expected, when the split folders are
        missing, hold no class folders, disagree, or a name cannot be a class name.
    """
    if not os.path.isdir(image_dir):
        raise ConfigError(f"--image_dir={image_dir}: no such directory; pass a local folder holding "
                          "train/<class>/ and val/<class>/ folders of images (or <class>/ folders only, "
                          "with --holdout_per_class)")
    if not has_split_folders(image_dir):
        names = _subfolders(image_dir)
        if not names:
            raise ConfigError(f"--image_dir={image_dir}: no class folders. Expected train/<class>/ and "
                              "val/<class>/ folders of images, or <class>/ folders only (with --holdout_per_class)")
        return _check_names(image_dir, names)
    found = {}
    for split in SPLITS:
        folder = os.path.join(image_dir, split)
        if not os.path.isdir(folder):
            raise ConfigError(
                f"--image_dir={image_dir}: no {split}/ folder. Expected train/<class>/ and val/<class>/ "
                "folders of images, or <class>/ folders only (with --holdout_per_class)")
        found[split] = _subfolders(folder)
        if not found[split]:
            raise ConfigError(f"--image_dir={image_dir}: {split}/ holds no class folders (expected {split}/<class>/)")
    if found["train"] != found["val"]:
        only = sorted(set(found["train"]) ^ set(found["val"]))
        raise ConfigError(f"--image_dir={image_dir}: train/ and val/ must hold the same class folders; "
                          f"only in one of them: {', '.join(only)}")
    return _check_names(image_dir, found["train"])


def _check_names(image_dir: str, names: list[str]) -> list[str]:
    bad = [name for name in names if name != name.strip() or any(c in name for c in "\t\n\r ")]
    if bad:
        raise ConfigError(f"--image_dir={image_dir}: class folder name {bad[0]!r} has white space; rename it")
    return names


def check_num_classes(image_dir: str, num_classes: int | None) -> int:
    """The number of classes of ``image_dir``; a ``--num_classes`` given must agree.

    Raises:
      ConfigError: naming ``--num_classes`` when it differs from the folders' count.
    """
    names = class_names(image_dir)
    if num_classes is not None and num_classes != len(names):
        raise ConfigError(f"--num_classes={num_classes}: --image_dir={image_dir} has {len(names)} class "
                          "folders; leave --num_classes out (it is taken from the folders)")
    return len(names)


def prepare_folders(image_dir: str, root: str, image_size: int, num_workers: int | None = None,
                    holdout_per_class: int = 0, resize_mode: str = "crop") -> str:
    """``image_dir``'s folders as records, resized to ``image_size``, converted once.

    Args:
      image_dir: holds ``train/<class>/`` and ``val/<class>/``, or ``<class>/`` folders only (then
        ``holdout_per_class`` must be set: there is no validation split).
      root: receives ``records_<image_size>/`` (usually ``<workdir>/data``; ``records_<image_size>_squash/``
        for squashed images, with ``_holdout<N>`` for a selection split).
      image_size: the run's ``image_size``.
      num_workers: converter processes.
      holdout_per_class: training images per class held out as the selection split.
      resize_mode: the run's ``resize_mode``: "crop" rescales the shorter side to ``image_size``,
        "squash" both sides (Caffe's convention, a Caffe source's).

    Returns:
      The records directory, with ``classes.txt`` (and the converter's ``synsets.txt``) in it.

    Raises:
      ConfigError: as :func:`class_names`; naming ``--holdout_per_class`` for class folders only
        without it.
      ConversionError: the converter's, naming the file.
    """
    names = class_names(image_dir)
    split = has_split_folders(image_dir)
    if not split and not holdout_per_class:
        raise ConfigError(f"--image_dir={image_dir} holds class folders only (no train/ and val/): pass "
                          "--holdout_per_class=N to hold N images of every class out as the selection split, "
                          "which then also scores the run (not independently), or move some images of every "
                          "class into val/<class>/ and the rest into train/<class>/")
    records_dir = os.path.join(root, records.records_directory_name(f"records_{image_size}", holdout_per_class,
                                                                    resize_mode))
    if converter.is_converted(records_dir):
        saved = paths.read_text(os.path.join(records_dir, CLASSES_FILE)).split("\n")[:-1]
        if saved != names:
            raise ConfigError(f"--image_dir={image_dir}: its classes ({', '.join(names)}) are not those already "
                              f"converted in {records_dir} ({', '.join(saved)}); use another --workdir")
        logging.info("Using %s already converted in %s", image_dir, records_dir)
        return records_dir
    paths.makedirs(records_dir)
    paths.write_text(os.path.join(records_dir, CLASSES_FILE), "".join(f"{n}\n" for n in names))
    wnids = wnids_for(names)
    labels_file = paths.write_text(os.path.join(root, f".{records.SYNSETS_FILE}"), "".join(f"{w}\n" for w in wnids))
    metadata_file = paths.write_text(os.path.join(root, f".{records.METADATA_FILE}"),
                                     "".join(f"{w}\t{n}\n" for w, n in zip(wnids, names, strict=True)))
    source = image_dir if wnids == names else _linked_folders(image_dir, names, wnids, root)
    logging.info("Converting %s: %d classes (%s)%s", image_dir, len(names), ", ".join(names),
                 "" if split else f"; class folders only: {holdout_per_class} images of every class held out "
                 "as the selection split, no validation split")
    if split:
        train_directory, validation_directory = os.path.join(source, "train"), os.path.join(source, "val")
        num_train = _count_files(os.path.join(image_dir, "train"))
        num_validation = _count_files(os.path.join(image_dir, "val"))
    else:  # all training images; the selection split is carved out of them
        train_directory = image_dir if source == image_dir else os.path.join(source, "train")
        validation_directory = None
        num_train, num_validation = _count_files(image_dir), holdout_per_class * len(names)
    converter.convert(
        train_directory=train_directory,
        validation_directory=validation_directory,
        output_directory=records_dir,
        labels_file=labels_file,
        metadata_file=metadata_file,
        # At most one shard per image (the selection split takes as many shards as a validation split).
        train_shards=min(TRAIN_SHARDS, num_train),
        validation_shards=min(VALIDATION_SHARDS, num_validation),
        resize=image_size,
        num_workers=num_workers,
        holdout_per_class=holdout_per_class,
        resize_mode=resize_mode,
    )
    return records_dir


def _count_files(folder: str) -> int:
    return max(1, sum(len(files) for _, _, files in os.walk(folder)))


def write_run_classes(records_dir: str, workdir: str) -> str:
    """Copies the class names in label order into the run's work directory (``classes.txt``)."""
    paths.makedirs(workdir)
    return paths.write_text(os.path.join(workdir, CLASSES_FILE),
                            paths.read_text(os.path.join(records_dir, CLASSES_FILE)))
