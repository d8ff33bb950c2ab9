"""Imagenette (10 easy ImageNet classes, fast.ai): download, verify, extract, convert.

For people without ImageNet. The archive is fetched with Keras's download helper, its sha256 is
checked, and its ``imagenette2-<size>/{train,val}/<wnid>/*.JPEG`` folders (or a copy already on
disk) are converted by the same code as ImageNet (:func:`alexnet_tf.converter.convert`), with
the 10 wnids as the classes. :func:`convert_imagenette` is the one way in, for the converter's
command line and for ``train.py --dataset=imagenette`` (:func:`prepare_imagenette`) alike, so
both give the same shard layout.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from typing import Any

from absl import logging

from alexnet_tf import converter, paths, records

IMAGENETTE_URLS = {
    160: "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-160.tgz",
    320: "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-320.tgz",
}
IMAGENETTE_SHA256 = {
    160: "64d0c4859f35a461889e0147755a999a48b49bf38a7e0f9bd27003f10db02fe5",
    320: "569b4497c98db6dd29f335d1f109cf315fe127053cedf69010d047f0188e158c",
}
IMAGENETTE_BYTES = {160: 99_003_388, 320: 341_663_724}
SYNSETS_FILE = "imagenette_synsets.txt"
# 9,469 + 3,925 images: about 300 and 500 per shard, a few MB each at 160 pixels. Enough files
# for the pipeline to interleave and shuffle across, and to deal whole files to 8 input
# pipelines, without shards so small that opening them costs more than reading them.
TRAIN_SHARDS, VALIDATION_SHARDS = 32, 8
_EXTRACTED_MARKER = ".extracted"


def download_imagenette(
    download_directory: str, size: int = 160, url: str | None = None, sha256: str | None = None
) -> str:
    """Downloads (unless already there and intact) and extracts the Imagenette archive.

    Args:
      download_directory: where the archive and the extracted folders are kept.
      size: 160 or 320, the variant's shorter side.
      url, sha256: override the official archive location and checksum (e.g. for a mirror).

    Returns:
      The extracted root, holding ``train/`` and ``val/``.

    Raises:
      ConversionError: the size is unknown, the download's checksum is wrong, or the archive
        does not have the expected layout.
    """
    if size not in IMAGENETTE_URLS:
        raise converter.ConversionError(f"--imagenette_size must be one of {sorted(IMAGENETTE_URLS)}, got {size}")
    url = url or IMAGENETTE_URLS[size]
    sha256 = sha256 or IMAGENETTE_SHA256[size]
    # The archive and its JPEG folders are the converter's input, which it reads with os.scandir
    # and open(): a local directory (convert_imagenette picks one when its output is remote).
    download_directory = os.path.abspath(download_directory)
    os.makedirs(download_directory, exist_ok=True)
    archive_name = os.path.basename(url.split("?")[0])
    root_name = archive_name.split(".")[0]
    root = os.path.join(download_directory, root_name)
    if os.path.exists(os.path.join(root, _EXTRACTED_MARKER)):
        return root
    target = os.path.join(download_directory, archive_name)
    import keras  # here, not at the top: the converter's worker processes need no Keras

    try:
        path = keras.utils.get_file(
            fname=archive_name,
            origin=url,
            file_hash=sha256,
            hash_algorithm="sha256",
            cache_dir=download_directory,
            cache_subdir="",
        )
    except ValueError as e:
        actual = converter.sha256_file(target) if os.path.exists(target) else "nothing"
        if os.path.exists(target):
            os.remove(target)
        raise converter.ConversionError(
            f"{url}: the download's sha256 is {actual}, not the expected {sha256}; the file was deleted. "
            "Retry, or check the URL/checksum you passed"
        ) from e
    except Exception as e:  # Keras reports network failures as a plain Exception.
        raise converter.ConversionError(f"{url}: download failed ({e})") from e
    staging = os.path.join(download_directory, f".{root_name}.extracting-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    logging.info("Extracting %s", path)
    with tarfile.open(path) as archive:
        archive.extractall(staging, filter="data")
    extracted = os.path.join(staging, root_name)
    if not all(os.path.isdir(os.path.join(extracted, split)) for split in ("train", "val")):
        shutil.rmtree(staging, ignore_errors=True)
        raise converter.ConversionError(f"{path}: expected {root_name}/train and {root_name}/val in the archive")
    shutil.rmtree(root, ignore_errors=True)
    os.replace(extracted, root)
    shutil.rmtree(staging, ignore_errors=True)
    open(os.path.join(root, _EXTRACTED_MARKER), "w").close()
    return root


def write_synsets(train_directory: str, path: str) -> str:
    """Writes the wnids of ``train_directory``'s class folders, sorted (labels 0..9), to ``path``.

    ``train_directory`` is the converter's local input; ``path`` may be remote.
    """
    wnids = sorted(name for name in os.listdir(train_directory) if os.path.isdir(os.path.join(train_directory, name)))
    return paths.write_text(path, "".join(wnid + "\n" for wnid in wnids))


def convert_imagenette(
    output_directory: str,
    download_directory: str | None = None,
    size: int = 160,
    url: str | None = None,
    sha256: str | None = None,
    labels_file: str | None = None,
    source_directory: str | None = None,
    train_shards: int = TRAIN_SHARDS,
    validation_shards: int = VALIDATION_SHARDS,
    **convert_options: Any,
) -> dict[str, Any]:
    """Downloads Imagenette (unless ``source_directory`` holds it) and converts it to shards.

    The classes are the wnids of ``train/`` in sorted order (labels 0-9), written to
    ``imagenette_synsets.txt`` in ``output_directory``, unless ``labels_file`` is given (e.g.
    the 1000 ImageNet wnids, to keep ImageNet's label numbers).

    Args:
      output_directory: where the shards go.
      download_directory: where the archive is kept; default ``output_directory`` (a local
        temporary directory when that is not local).
      size, url, sha256: as for :func:`download_imagenette`.
      labels_file: class wnids in label order.
      source_directory: Imagenette's ``train/`` and ``val/`` folders already on disk; then
        nothing is downloaded.
      train_shards, validation_shards: shard counts.
      **convert_options: passed to :func:`alexnet_tf.converter.convert` (workers, resize...).

    Returns:
      The converter's summary.

    Raises:
      ConversionError: as :func:`download_imagenette`, or ``source_directory`` has no ``train/``.
    """
    if source_directory is None:
        download_directory = download_directory or output_directory
        if not paths.is_local(download_directory):
            # The download is the converter's input, which must be local; only the records go there.
            download_directory = os.path.join(tempfile.gettempdir(), "alexnet_tf_imagenette")
            logging.info("Downloading Imagenette into %s: the converter reads local folders", download_directory)
        source_directory = download_imagenette(download_directory, size, url, sha256)
    train, val = os.path.join(source_directory, "train"), os.path.join(source_directory, "val")
    if not os.path.isdir(train):  # the converter's input folders are local
        raise converter.ConversionError(
            f"--imagenette_dir={source_directory}: no train/ folder of <wnid>/ image folders"
        )
    if labels_file is None:
        paths.makedirs(output_directory)
        labels_file = write_synsets(train, os.path.join(output_directory, SYNSETS_FILE))
    return converter.convert(
        train_directory=train,
        validation_directory=val,
        output_directory=output_directory,
        labels_file=labels_file,
        train_shards=train_shards,
        validation_shards=validation_shards,
        **convert_options,
    )


def prepare_imagenette(
    root: str, image_size: int, source_dir: str | None = None, num_workers: int | None = None,
    holdout_per_class: int = 0,
) -> str:
    """Imagenette as records, its shorter sides already at ``image_size``, converted once.

    Args:
      root: receives ``records_<image_size>/`` (and the download, when there is no source).
      image_size: the preset's ``image_size``; the converter resizes to it so the pipeline
        decodes only the crop it needs.
      source_dir: JPEG folders ``train/<wnid>/`` and ``val/<wnid>/``; None downloads Imagenette.
      num_workers: converter processes.
      holdout_per_class: training images per class held out as the selection split.

    Returns:
      The records directory (``--data_dir`` for a later run).
    """
    records_dir = os.path.join(root, records.records_directory_name(f"records_{image_size}", holdout_per_class))
    if converter.is_converted(records_dir):
        logging.info("Using Imagenette already converted in %s", records_dir)
        return records_dir
    convert_imagenette(
        records_dir,
        download_directory=os.path.join(root, "download"),
        source_directory=source_dir,
        resize=image_size,
        num_workers=num_workers,
        holdout_per_class=holdout_per_class,
    )
    return records_dir
