"""JPEG folders -> sharded TFRecords, with dataset statistics, a manifest and nothing lost.

The package follows the data, one module per stage:

  image.py     one image recognised by its content, decoded, repaired to an RGB JPEG
  listing.py   the input folders listed in a stable order and checked before any work
  pool.py      the worker processes and the progress bar
  shards.py    one shard written (or found intact and kept) with a record of the work
  manifest.py  the records merged into manifest, summary, rejects, class lists, statistics
  verify.py    every shard read back and checked
  run.py       the whole conversion, in order
  files.py     atomic writes, JSON, checksums, the ``.parts/`` bookkeeping

Killing a run at any moment and running it again gives the bytes of an uninterrupted run; with
``num_tasks > 1`` the tasks of a job array share the shards and the last merge checks the set.
The file names shared with the readers are :mod:`alexnet_tf.records`'s, re-exported here.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

from alexnet_tf.converter.image import JPEG_QUALITY

if TYPE_CHECKING:
    from alexnet_tf.converter.files import FORMAT_VERSION, PARTS_DIRECTORY, PLAN_FILE, sha256_file
    from alexnet_tf.converter.image import (
        STATISTICS_SIZE,
        ConvertedImage,
        RejectedImageError,
        central_square,
        convert_image,
        sniff_format,
    )
    from alexnet_tf.converter.listing import (
        IMAGE_EXTENSIONS,
        ConversionError,
        ListedFile,
        SplitListing,
        list_training_files,
        list_validation_files,
    )
    from alexnet_tf.converter.manifest import is_converted, merge_manifests
    from alexnet_tf.converter.pool import ProgressBar
    from alexnet_tf.converter.verify import iterate_records, verify
    from alexnet_tf.records import (
        MANIFEST_FILE,
        MEAN_IMAGE_FILE,
        METADATA_FILE,
        REJECTS_FILE,
        STATISTICS_FILE,
        SUMMARY_FILE,
        SYNSETS_FILE,
    )

_PUBLIC = {
    **dict.fromkeys(["FORMAT_VERSION", "PARTS_DIRECTORY", "PLAN_FILE", "sha256_file"], "alexnet_tf.converter.files"),
    **dict.fromkeys(
        ["STATISTICS_SIZE", "ConvertedImage", "RejectedImageError", "central_square", "convert_image", "sniff_format"],
        "alexnet_tf.converter.image",
    ),
    **dict.fromkeys(
        [
            "IMAGE_EXTENSIONS",
            "ConversionError",
            "ListedFile",
            "SplitListing",
            "list_training_files",
            "list_validation_files",
        ],
        "alexnet_tf.converter.listing",
    ),
    **dict.fromkeys(["is_converted", "merge_manifests"], "alexnet_tf.converter.manifest"),
    "ProgressBar": "alexnet_tf.converter.pool",
    **dict.fromkeys(["iterate_records", "verify"], "alexnet_tf.converter.verify"),
    **dict.fromkeys(
        [
            "MANIFEST_FILE",
            "MEAN_IMAGE_FILE",
            "METADATA_FILE",
            "REJECTS_FILE",
            "STATISTICS_FILE",
            "SUMMARY_FILE",
            "SYNSETS_FILE",
        ],
        "alexnet_tf.records",
    ),
}


def __getattr__(name: str) -> Any:
    # The names load on first use, not with the package: a worker process imports the package
    # to run shards.convert_shard, and verify.py (the parent's, with --verify) imports TensorFlow.
    if name not in _PUBLIC:
        raise AttributeError(f"module 'alexnet_tf.converter' has no attribute {name!r}")
    module = importlib.import_module(_PUBLIC[name])
    # Bound here as "from module import ..." would: importing verify.py binds the package's
    # "verify" to that module, which the function of the same name must replace.
    globals().update({key: getattr(module, key) for key, where in _PUBLIC.items() if where == module.__name__})
    return globals()[name]


__all__ = [
    "FORMAT_VERSION",
    "IMAGE_EXTENSIONS",
    "JPEG_QUALITY",
    "MANIFEST_FILE",
    "MEAN_IMAGE_FILE",
    "METADATA_FILE",
    "PARTS_DIRECTORY",
    "PLAN_FILE",
    "REJECTS_FILE",
    "STATISTICS_FILE",
    "STATISTICS_SIZE",
    "SUMMARY_FILE",
    "SYNSETS_FILE",
    "ConversionError",
    "ConvertedImage",
    "ListedFile",
    "ProgressBar",
    "RejectedImageError",
    "SplitListing",
    "central_square",
    "convert",
    "convert_image",
    "is_converted",
    "iterate_records",
    "list_training_files",
    "list_validation_files",
    "merge_manifests",
    "sha256_file",
    "sniff_format",
    "verify",
]


def convert(
    train_directory: str | None = None,
    validation_directory: str | None = None,
    output_directory: str = "",
    validation_labels_file: str | None = None,
    train_shards: int = 1024,
    validation_shards: int = 128,
    num_workers: int | None = None,
    resize: int | None = None,
    labels_file: str | None = None,
    metadata_file: str | None = None,
    max_rejects: int = 0,
    label_offset: int = 0,
    seed: int = 0,
    jpeg_quality: int = JPEG_QUALITY,
    num_tasks: int = 1,
    task_index: int = 0,
    holdout_per_class: int = 0,
    resize_mode: str = "crop",
) -> dict[str, Any]:
    """Converts image folders to sharded TFRecords in ``output_directory``.

    Args:
      train_directory: ``<wnid>/*`` folders of training images, or None.
      validation_directory: flat validation images (with ``validation_labels_file``) or class
        folders, or None.
      output_directory: where shards, manifest, summary, rejects, class lists and statistics go.
      validation_labels_file: line N = wnid of validation image N (flat layout only).
      train_shards, validation_shards: shard counts (at most one shard per image).
      num_workers: worker processes; default all cores.
      resize: rescale the shorter side to this many pixels; None keeps RGB JPEG bytes as they are.
      labels_file: the class wnids in label order; default the 1000 ILSVRC-2012 classes.
      metadata_file: ``wnid<TAB>name`` lines; default the shipped ImageNet metadata.
      max_rejects: more rejected files than this is reported as a failure (``summary["ok"]``).
      label_offset: added to every label (1 gives the classic converter's 1-based labels).
      seed: the shuffle that mixes classes across shards.
      jpeg_quality: quality of the JPEGs the converter encodes.
      num_tasks, task_index: this process writes shards ``i`` with ``i % num_tasks == task_index``.
      holdout_per_class: hold this many training images of every class out (chosen with ``seed``,
        stratified) as the selection split, ``holdout-*`` shards; the statistics are the rest's.
      resize_mode: "crop" (``resize`` is the shorter side, the paper's) or "squash" (both sides
        to ``resize``, the aspect ratio not kept: Caffe's ImageNet at 256x256); needs ``resize``.

    Returns:
      The summary (also in ``summary.json`` once all shards exist): counts per split, class and
      kind, bytes in and out, seconds, images/s, and ``ok`` (rejects within ``max_rejects``).

    Raises:
      ConversionError: naming the flag or file, for any problem with the inputs, before any work.
    """
    from alexnet_tf.converter.run import ConvertArguments, run_conversion

    arguments = ConvertArguments(
        train_directory=train_directory,
        validation_directory=validation_directory,
        output_directory=output_directory,
        validation_labels_file=validation_labels_file,
        train_shards=train_shards,
        validation_shards=validation_shards,
        num_workers=num_workers or os.cpu_count() or 1,
        resize=resize,
        labels_file=labels_file,
        metadata_file=metadata_file,
        max_rejects=max_rejects,
        label_offset=label_offset,
        seed=seed,
        jpeg_quality=jpeg_quality,
        num_tasks=num_tasks,
        task_index=task_index,
        holdout_per_class=holdout_per_class,
        resize_mode=resize_mode,
    )
    return run_conversion(arguments)
