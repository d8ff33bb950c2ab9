"""The input folders: listed in a stable order and checked before anything is written.

Training images live in ``<wnid>/`` folders; validation images either in ``<wnid>/`` folders or
flat (``ILSVRC2012_val_N.JPEG``) with a labels file whose line N is the wnid of image N. Every
problem a user can meet raises :class:`ConversionError` naming the flag or file.
"""

from __future__ import annotations

import dataclasses
import os
import random
import re

from alexnet_tf import paths

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".gif", ".bmp", ".webp")
_VALIDATION_NUMBER = re.compile(r"(\d+)$")


class ConversionError(ValueError):
    """A problem with the inputs or flags, found before any work; the message names the file."""


@dataclasses.dataclass(frozen=True)
class ListedFile:
    """One image file found in an input folder."""

    path: str
    relpath: str  # relative to the split directory; sorts the split before the shuffle
    size: int
    wnid: str


@dataclasses.dataclass
class SplitListing:
    """The image files of one split, sorted, and what was found beside them."""

    items: list[ListedFile]
    missing_classes: list[str]
    ignored: list[str]  # files without an image extension (never read)


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _scan_class_folder(directory: str, rel: str, wnid: str, listing: SplitListing) -> None:
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        if _is_hidden(entry.name):
            continue
        relpath = f"{rel}/{entry.name}" if rel else entry.name
        if entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
            listing.items.append(ListedFile(entry.path, relpath, entry.stat().st_size, wnid))
        else:
            listing.ignored.append(entry.path)


def _list_class_folders(directory: str, synsets: list[str], labels_file: str, flag: str) -> SplitListing:
    known = set(synsets)
    listing = SplitListing([], [], [])
    folders, unknown = [], []
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        if _is_hidden(entry.name):
            continue
        if not entry.is_dir():
            listing.ignored.append(entry.path)
        elif entry.name in known:
            folders.append(entry)
        else:
            unknown.append(entry.name)
    if unknown:
        raise ConversionError(
            f"{flag}={directory}: {len(unknown)} folder(s) are not classes of the labels file {labels_file} "
            f"(e.g. {', '.join(unknown[:5])}); remove them or pass --labels_file listing them"
        )
    for entry in folders:
        _scan_class_folder(entry.path, entry.name, entry.name, listing)
    present = {entry.name for entry in folders}
    listing.missing_classes = [wnid for wnid in synsets if wnid not in present]
    return listing


def list_training_files(directory: str, synsets: list[str], labels_file: str = "") -> SplitListing:
    """The images of ``directory/<wnid>/*``.

    Raises:
      ConversionError: a folder is not a wnid of ``synsets``.
    """
    return _list_class_folders(directory, synsets, labels_file, "--train_directory")


def list_validation_files(
    directory: str, labels_file: str | None, synsets: list[str], synsets_file: str = ""
) -> SplitListing:
    """The validation images, flat (``ILSVRC2012_val_N.JPEG`` + labels file) or in class folders.

    In the flat layout line N of ``labels_file`` holds the wnid of the image whose name ends in N.

    Raises:
      ConversionError: naming the file, when the layout is mixed, an image has no line in the
        labels file, the labels file is missing or too short, or a wnid is unknown.
    """
    entries = [e for e in sorted(os.scandir(directory), key=lambda e: e.name) if not _is_hidden(e.name)]
    has_folders = any(e.is_dir() for e in entries)
    images = [e for e in entries if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS]
    if has_folders and images:
        raise ConversionError(
            f"--validation_directory={directory} holds both class folders and images "
            f"(e.g. {images[0].name}); use one layout"
        )
    if has_folders:
        return _list_class_folders(directory, synsets, synsets_file, "--validation_directory")
    if not labels_file:
        raise ConversionError(
            f"--validation_directory={directory} is flat (no class folders): pass "
            "--validation_labels_file (line N = wnid of image N)"
        )
    if not paths.isfile(labels_file):
        raise ConversionError(f"--validation_labels_file={labels_file} does not exist")
    labels = [line.strip() for line in paths.read_text(labels_file).splitlines()]
    while labels and not labels[-1]:
        labels.pop()
    known = set(synsets)
    listing = SplitListing([], [], [e.path for e in entries if e not in images])
    highest = 0
    for entry in images:
        match = _VALIDATION_NUMBER.search(os.path.splitext(entry.name)[0])
        if match is None:
            raise ConversionError(
                f"{entry.path}: no image number at the end of the name, so it has no line in "
                f"--validation_labels_file={labels_file}"
            )
        number = int(match.group(1))
        highest = max(highest, number)
        if number == 0 or number > len(labels):
            continue
        wnid = labels[number - 1]
        if wnid not in known:
            raise ConversionError(
                f"{labels_file}: line {number} ({wnid!r}, the label of {entry.name}) is not a class of the "
                f"labels file {synsets_file}"
            )
        listing.items.append(ListedFile(entry.path, entry.name, entry.stat().st_size, wnid))
    if len(listing.items) != len(images):
        raise ConversionError(
            f"--validation_labels_file={labels_file} has {len(labels)} lines, but the images in {directory} "
            f"go up to number {highest}: every image needs its line (line N = wnid of image N)"
        )
    present = {item.wnid for item in listing.items}
    listing.missing_classes = [wnid for wnid in synsets if wnid not in present]
    return listing


def carve_holdout(listing: SplitListing, per_class: int, seed: int) -> tuple[SplitListing, SplitListing]:
    """Splits ``per_class`` images of every class off a training listing: (training, holdout).

    Stratified and reproducible: each class's files, in their sorted order, are shuffled by a
    generator seeded with ``seed`` and the wnid, and the first ``per_class`` are held out. The
    choice of a class depends only on its own files, the seed and ``per_class``.

    Raises:
      ConversionError: naming ``--holdout_per_class`` when a class has no more images than that.
    """
    by_class: dict[str, list[ListedFile]] = {}
    for item in listing.items:
        by_class.setdefault(item.wnid, []).append(item)
    short = {wnid: len(items) for wnid, items in by_class.items() if len(items) <= per_class}
    if short:
        wnid, count = next(iter(sorted(short.items())))
        raise ConversionError(
            f"--holdout_per_class={per_class}: {len(short)} class(es) have no more images than that (e.g. {wnid}: "
            f"{count}), so none would be left to train on; hold out fewer"
        )
    held: set[str] = set()
    for wnid, items in by_class.items():
        order = sorted(items, key=lambda item: item.relpath)
        random.Random(f"holdout:{seed}:{wnid}").shuffle(order)
        held.update(item.relpath for item in order[:per_class])
    train = SplitListing([i for i in listing.items if i.relpath not in held], listing.missing_classes, listing.ignored)
    holdout = SplitListing([i for i in listing.items if i.relpath in held], listing.missing_classes, [])
    return train, holdout
