"""A folder of your own images as a data set: ``train.py --image_dir=DIR``.

``DIR`` holds ``train/<class>/`` and ``val/<class>/`` folders of images; the class names are the
folder names, any names (not only ImageNet wnids), and the labels are their sorted order. The
folders are converted once, by the same converter as ImageNet and Imagenette
(:func:`alexnet_tf.converter.convert`: the same odd-file handling, resume and statistics), into
the run's work directory, with the class list written beside the records and into the run.
The converter keys classes by wnid: folders named otherwise are given made-up wnids
(``n90000000`` on, in the sorted order) through a folder of links, and their names become the
classes' human-readable names (the converter's metadata file), which reports show.

Class folders without a ``train/`` / ``val/`` split are refused: the split must be made first.
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
    """``root/.class_links/<split>/<wnid>`` links to ``image_dir/<split>/<name>``: the converter's input."""
    links = os.path.join(root if paths.is_local(root) else tempfile.mkdtemp(prefix="alexnet_tf_"), LINKS_DIR)
    for split in SPLITS:
        os.makedirs(os.path.join(links, split), exist_ok=True)
        for name, wnid in zip(names, wnids, strict=True):
            link = os.path.join(links, split, wnid)
            if os.path.lexists(link):
                os.remove(link)
            os.symlink(os.path.abspath(os.path.join(image_dir, split, name)), link, target_is_directory=True)
    return links


def class_names(image_dir: str) -> list[str]:
    """The sorted class folder names of ``image_dir/train``; ``val/`` must have the same.

    Raises:
      ConfigError: naming ``--image_dir`` and what is expected, when the split folders are
        missing, hold no class folders, disagree, or a name cannot be a class name.
    """
    if not os.path.isdir(image_dir):
        raise ConfigError(f"--image_dir={image_dir}: no such directory; pass a local folder holding "
                          "train/<class>/ and val/<class>/ folders of images")
    found = {}
    for split in SPLITS:
        folder = os.path.join(image_dir, split)
        if not os.path.isdir(folder):
            raise ConfigError(
                f"--image_dir={image_dir}: no {split}/ folder. Expected train/<class>/ and val/<class>/ "
                "folders of images; class folders without a train/val split are not split for you yet: "
                "move some images of every class into val/<class>/")
        found[split] = sorted(name for name in os.listdir(folder) if os.path.isdir(os.path.join(folder, name)))
        if not found[split]:
            raise ConfigError(f"--image_dir={image_dir}: {split}/ holds no class folders (expected {split}/<class>/)")
    if found["train"] != found["val"]:
        only = sorted(set(found["train"]) ^ set(found["val"]))
        raise ConfigError(f"--image_dir={image_dir}: train/ and val/ must hold the same class folders; "
                          f"only in one of them: {', '.join(only)}")
    bad = [name for name in found["train"] if name != name.strip() or any(c in name for c in "\t\n\r ")]
    if bad:
        raise ConfigError(f"--image_dir={image_dir}: class folder name {bad[0]!r} has white space; rename it")
    return found["train"]


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
                    holdout_per_class: int = 0) -> str:
    """``image_dir``'s folders as records, shorter sides at ``image_size``, converted once.

    Args:
      image_dir: holds ``train/<class>/`` and ``val/<class>/``.
      root: receives ``records_<image_size>/`` (usually ``<workdir>/data``).
      image_size: the run's ``image_size``.
      num_workers: converter processes.
      holdout_per_class: training images per class held out as the selection split.

    Returns:
      The records directory, with ``classes.txt`` (and the converter's ``synsets.txt``) in it.

    Raises:
      ConfigError: as :func:`class_names`.
      ConversionError: the converter's, naming the file.
    """
    names = class_names(image_dir)
    records_dir = os.path.join(root, records.records_directory_name(f"records_{image_size}", holdout_per_class))
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
    logging.info("Converting %s: %d classes (%s)", image_dir, len(names), ", ".join(names))
    converter.convert(
        train_directory=os.path.join(source, "train"),
        validation_directory=os.path.join(source, "val"),
        output_directory=records_dir,
        labels_file=labels_file,
        metadata_file=metadata_file,
        # At most one shard per image.
        train_shards=min(TRAIN_SHARDS, _count_files(os.path.join(image_dir, "train"))),
        validation_shards=min(VALIDATION_SHARDS, _count_files(os.path.join(image_dir, "val"))),
        resize=image_size,
        num_workers=num_workers,
        holdout_per_class=holdout_per_class,
    )
    return records_dir


def _count_files(folder: str) -> int:
    return max(1, sum(len(files) for _, _, files in os.walk(folder)))


def write_run_classes(records_dir: str, workdir: str) -> str:
    """Copies the class names in label order into the run's work directory (``classes.txt``)."""
    paths.makedirs(workdir)
    return paths.write_text(os.path.join(workdir, CLASSES_FILE),
                            paths.read_text(os.path.join(records_dir, CLASSES_FILE)))
