"""JPEG folders -> sharded TFRecords, with dataset statistics, a manifest and nothing lost.

The work is planned once from the file listing (validated before anything is written), then done
shard by shard by worker processes. Each shard is written under a temporary name and renamed when
complete, and a small record of it (``.parts/<shard>.json``: count, size, sha256, what was
converted or rejected, plus the statistics sums in ``.parts/<shard>.npz``) is written after it.
A re-run skips every shard whose record still matches its inputs and whose bytes still hash to the
recorded checksum, so killing a run at any moment and running it again gives the same bytes as an
uninterrupted run. :func:`merge_manifests` turns the records into ``manifest.json``,
``summary.json``, ``rejects.txt``, ``synsets.txt`` and the dataset statistics; with
``num_tasks > 1`` each task of a job array writes a disjoint set of shards and the merge checks
that the whole set is there.

Images are recognised by their content, never by their name. RGB JPEGs are kept byte for byte
(or, with ``resize``, rescaled so the shorter side is ``resize`` pixels, as in section 2 of the
paper); everything else that decodes (grayscale, CMYK/YCCK, PNG, GIF, BMP, WebP) is converted to
an RGB JPEG and counted by kind. Files that do not decode go to ``rejects.txt`` with the reason.
EXIF orientation is ignored, as TensorFlow's decoders and the paper's pipeline ignore it: pixels
are stored in the order the file holds them.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import dataclasses
import glob
import hashlib
import io
import json
import multiprocessing
import os
import random
import re
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging
from PIL import Image

from alexnet_tf import imagenet, records, statistics

JPEG_QUALITY = 95  # for every image the converter re-encodes (converted kinds, --resize)
STATISTICS_SIZE = 256  # the paper's central 256x256 crop after shorter-side-to-256
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".gif", ".bmp", ".webp")
MANIFEST_FILE = "manifest.json"
SUMMARY_FILE = "summary.json"
REJECTS_FILE = "rejects.txt"
SYNSETS_FILE = "synsets.txt"
PARTS_DIRECTORY = ".parts"
PLAN_FILE = "plan.json"
FORMAT_VERSION = 1
_PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>
_WORKER_START_TIMEOUT = 600.0  # seconds to wait for the workers to import TensorFlow
_VALIDATION_NUMBER = re.compile(r"(\d+)$")
_PIL_FORMATS = {"jpeg": "JPEG", "png": "PNG", "gif": "GIF", "bmp": "BMP", "webp": "WEBP"}
_MODE_KINDS = {
    "RGB": "",
    "1": "_grayscale",
    "L": "_grayscale",
    "I": "_grayscale",
    "I;16": "_grayscale",
    "I;16B": "_grayscale",
    "LA": "_grayscale_alpha",
    "La": "_grayscale_alpha",
    "RGBA": "_rgba",
    "RGBa": "_rgba",
    "P": "_palette",
    "PA": "_palette",
}


class ConversionError(ValueError):
    """A problem with the inputs or flags, found before any work; the message names the file."""


class RejectedImageError(Exception):
    """A file that cannot become a training image; the message is the reason."""


# ---------------------------------------------------------------------------------------------
# One image.


def sniff_format(data: bytes) -> str | None:
    """The image format from the first bytes: "jpeg", "png", "gif", "bmp", "webp" or None."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:2] == b"BM":
        return "bmp"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def _kind(fmt: str, image: Image.Image, data: bytes) -> str:
    if fmt == "png" and len(data) > 24 and data[24] == 16:  # IHDR bit depth
        return "png_16bit"
    if image.mode == "CMYK":
        return f"{fmt}_ycck" if image.info.get("adobe_transform") == 2 else f"{fmt}_cmyk"
    return fmt + _MODE_KINDS.get(image.mode, "_" + image.mode.lower().replace(";", ""))


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L"):
        # 16-bit samples: keep the top 8 bits (convert("L") would clip everything above 255).
        values = np.asarray(image).astype(np.uint32) >> 8
        return Image.fromarray(np.minimum(values, 255).astype(np.uint8)).convert("RGB")
    if image.mode in ("RGBA", "LA", "La", "RGBa", "PA") or "transparency" in image.info:
        # Transparent pixels hold arbitrary colours; show them as a viewer would, over white.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _resize_shorter_side(image: Image.Image, target: int) -> Image.Image:
    width, height = image.size
    if min(width, height) == target:
        return image
    if width <= height:
        size = (target, max(1, round(height * target / width)))
    else:
        size = (max(1, round(width * target / height)), target)
    return image.resize(size, Image.Resampling.BICUBIC)


def central_square(image: Image.Image, size: int = STATISTICS_SIZE) -> np.ndarray:
    """The central square of ``image`` sampled on a ``size`` x ``size`` grid, as uint8 RGB.

    Nearest-neighbour sampling picks pixels without averaging them, so the statistics of the
    samples (mean, covariance) are those of the image's own pixels, not of a smoothed copy.
    """
    width, height = image.size
    side = min(width, height)
    box = ((width - side) // 2, (height - side) // 2, (width - side) // 2 + side, (height - side) // 2 + side)
    return np.asarray(image.resize((size, size), Image.Resampling.NEAREST, box=box), dtype=np.uint8)


@dataclasses.dataclass
class ConvertedImage:
    """One image ready for a record: RGB JPEG bytes, their size, and what the source was."""

    encoded: bytes
    height: int
    width: int
    kind: str
    kept: bool  # True when ``encoded`` is the source file's own bytes
    pixels: np.ndarray | None = None  # central square for the statistics, when asked for


def convert_image(
    data: bytes,
    resize: int | None = None,
    jpeg_quality: int = JPEG_QUALITY,
    with_statistics: bool = False,
) -> ConvertedImage:
    """Decodes ``data`` fully and returns an RGB JPEG version of it.

    Args:
      data: the file's bytes.
      resize: if set, the shorter side is rescaled to this many pixels (bicubic, antialiased).
      jpeg_quality: quality of any JPEG this function encodes.
      with_statistics: also return the central ``STATISTICS_SIZE`` square of the stored image.

    Raises:
      RejectedImageError: the file is empty, not an image, or does not decode; the message says which.
    """
    if not data:
        raise RejectedImageError("empty file (0 bytes)")
    fmt = sniff_format(data)
    if fmt is None:
        raise RejectedImageError(f"not a JPEG, PNG, GIF, BMP or WebP image (starts with {data[:8]!r})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[fmt]])
            if resize and fmt == "jpeg":
                # Let libjpeg scale down by a power of two while decoding (every coefficient is
                # still entropy-decoded, so corrupt data is still caught), leaving at least twice
                # the target size for the bicubic resize.
                width, height = image.size
                side = min(width, height)
                image.draft(image.mode, (width * 2 * resize // side, height * 2 * resize // side))
            image.load()
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError, Warning) as e:
        raise RejectedImageError(f"{fmt} does not decode: {e}") from e
    kind = _kind(fmt, image, data)
    try:
        rgb = _to_rgb(image)
    except (OSError, ValueError) as e:
        raise RejectedImageError(f"{kind} cannot be converted to RGB: {e}") from e
    if resize:
        rgb = _resize_shorter_side(rgb, resize)
    keep = kind == "jpeg" and rgb.size == image.size and rgb is image
    if keep:
        encoded = data
    else:
        buffer = io.BytesIO()
        rgb.save(buffer, "JPEG", quality=jpeg_quality)
        encoded = buffer.getvalue()
    pixels = central_square(rgb) if with_statistics else None
    return ConvertedImage(encoded, rgb.size[1], rgb.size[0], kind, keep, pixels)


# ---------------------------------------------------------------------------------------------
# Listing and validating the inputs.


@dataclasses.dataclass
class SplitListing:
    """The image files of one split, sorted, and what was found beside them."""

    items: list[tuple[str, str, int, str]]  # (path, path relative to the split directory, size, wnid)
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
            listing.items.append((entry.path, relpath, entry.stat().st_size, wnid))
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
    if not os.path.isfile(labels_file):
        raise ConversionError(f"--validation_labels_file={labels_file} does not exist")
    with open(labels_file, encoding="utf-8") as f:
        labels = [line.strip() for line in f.read().splitlines()]
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
        listing.items.append((entry.path, entry.name, entry.stat().st_size, wnid))
    if len(listing.items) != len(images):
        raise ConversionError(
            f"--validation_labels_file={labels_file} has {len(labels)} lines, but the images in {directory} "
            f"go up to number {highest}: every image needs its line (line N = wnid of image N)"
        )
    present = {item[3] for item in listing.items}
    listing.missing_classes = [wnid for wnid in synsets if wnid not in present]
    return listing


# ---------------------------------------------------------------------------------------------
# Plan, workers and shards.


def sha256_file(path: str) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_atomically(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _write_json(path: str, value: Any) -> None:
    _write_atomically(path, (json.dumps(value, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _fingerprint(options: dict[str, Any], name: str, items: list[tuple], texts: dict[str, str]) -> str:
    digest = hashlib.sha256(json.dumps([options, name], sort_keys=True).encode("utf-8"))
    for _, relpath, size, label, wnid in items:
        digest.update(json.dumps([relpath, size, label, wnid, texts[wnid]]).encode("utf-8"))
    return digest.hexdigest()


_COUNTER: Any = None


def _init_worker(counter: Any, ready: Any = None) -> None:
    global _COUNTER
    _COUNTER = counter
    if ready is not None:
        warnings.simplefilter("ignore")  # Pillow's notes on odd metadata; decode errors still raise
        if sys.platform.startswith("linux"):
            # Die with the parent (even on kill -9) instead of finishing a shard nobody waits for.
            with contextlib.suppress(OSError, AttributeError):
                ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        with ready.get_lock():
            ready.value += 1


def _count(n: int = 1) -> None:
    if _COUNTER is not None:
        with _COUNTER.get_lock():
            _COUNTER.value += n


def _shard_verifies(job: dict[str, Any], part: dict[str, Any] | None) -> bool:
    if not part or part.get("fingerprint") != job["fingerprint"]:
        return False
    path = os.path.join(job["output_directory"], job["name"])
    stats_path = os.path.join(job["parts_directory"], job["name"] + ".npz")
    if job["with_statistics"] and not os.path.exists(stats_path):
        return False
    return os.path.exists(path) and os.path.getsize(path) == part["bytes"] and sha256_file(path) == part["sha256"]


def _convert_shard(job: dict[str, Any]) -> dict[str, Any]:
    """Writes one shard (or verifies the one already there); returns its part record."""
    name, out = job["name"], job["output_directory"]
    part_path = os.path.join(job["parts_directory"], name + ".json")
    part = _read_json(part_path)
    if _shard_verifies(job, part):
        _count(len(job["items"]))
        part["skipped"] = True
        return part
    for stale in glob.glob(glob.escape(os.path.join(out, name)) + ".tmp-*"):
        os.remove(stale)
    start = time.time()
    accumulator = statistics.StatisticsAccumulator(STATISTICS_SIZE) if job["with_statistics"] else None
    kinds: collections.Counter[str] = collections.Counter()
    classes: collections.Counter[str] = collections.Counter()
    rejects, written, bytes_in, misnamed = [], 0, 0, 0
    tmp = os.path.join(out, f"{name}.tmp-{os.getpid()}")
    with tf.io.TFRecordWriter(tmp) as writer:
        for path, relpath, _, label, wnid in job["items"]:
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError as e:
                rejects.append([path, f"unreadable: {e.strerror or e}"])
                _count()
                continue
            bytes_in += len(data)
            try:
                image = convert_image(data, job["resize"], job["jpeg_quality"], accumulator is not None)
            except RejectedImageError as e:
                rejects.append([path, str(e)])
                _count()
                continue
            extension = os.path.splitext(path)[1].lower().lstrip(".").replace("jpg", "jpeg")
            misnamed += extension != image.kind.split("_")[0]
            kinds[image.kind] += 1
            classes[wnid] += 1
            if accumulator is not None:
                accumulator.add(image.pixels)
            writer.write(
                records.serialize_example(
                    image.encoded,
                    image.height,
                    image.width,
                    label,
                    wnid,
                    job["texts"][wnid],
                    os.path.basename(relpath),
                )
            )
            written += 1
            _count()
    sha256 = sha256_file(tmp)
    size = os.path.getsize(tmp)
    os.replace(tmp, os.path.join(out, name))
    if accumulator is not None:
        stats_path = os.path.join(job["parts_directory"], name + ".npz")
        accumulator.save(stats_path + f".tmp-{os.getpid()}")
        os.replace(stats_path + f".tmp-{os.getpid()}", stats_path)
    part = {
        "name": name,
        "split": job["split"],
        "fingerprint": job["fingerprint"],
        "records": written,
        "bytes": size,
        "sha256": sha256,
        "files": len(job["items"]),
        "rejected": len(rejects),
        "rejects": rejects,
        "bytes_in": bytes_in,
        "kinds": dict(sorted(kinds.items())),
        "misnamed": misnamed,
        "classes": dict(sorted(classes.items())),
        "seconds": round(time.time() - start, 3),
    }
    _write_json(part_path, part)
    part["skipped"] = False
    return part


class _LocalCounter:
    def __init__(self):
        self.value = 0

    def get_lock(self) -> contextlib.nullcontext:
        return contextlib.nullcontext()


@contextlib.contextmanager
def _worker_pool(num_workers: int, counter: Any) -> Iterator[Any]:
    """Spawned worker processes (safe with TensorFlow, unlike fork), one BLAS thread each."""
    settings = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    settings["TF_CPP_MIN_LOG_LEVEL"] = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")
    saved = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)  # inherited by the spawned workers, restored below
    context = multiprocessing.get_context("spawn")
    ready = context.Value("i", 0)
    try:
        pool = context.Pool(num_workers, initializer=_init_worker, initargs=(counter, ready))
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    try:
        # Start the clock (and the progress bar) once every worker has imported TensorFlow.
        deadline = time.time() + _WORKER_START_TIMEOUT
        while ready.value < num_workers and time.time() < deadline:
            time.sleep(0.01)
        yield pool
        pool.close()
        pool.join()
    finally:
        pool.terminate()


def _run_jobs(
    function: Any,
    jobs: list[dict[str, Any]],
    num_workers: int,
    total: int,
    description: str,
    timing: dict[str, float] | None = None,
) -> Iterator[Any]:
    """Runs ``function`` over ``jobs`` in worker processes (in-process for one worker) with a bar.

    ``timing`` receives "start" (workers ready) and "end" (last result) times.
    """
    if num_workers <= 1 or len(jobs) <= 1:
        counter = _LocalCounter()
        _init_worker(counter)
        pool_context: Any = contextlib.nullcontext(None)
    else:
        counter = multiprocessing.get_context("spawn").Value("q", 0)
        pool_context = _worker_pool(min(num_workers, len(jobs)), counter)
    timing = {} if timing is None else timing
    stop = threading.Event()
    bar, thread = None, None
    try:
        with pool_context as pool:
            bar = ProgressBar(total, description)
            thread = threading.Thread(target=_refresh, args=(bar, counter, stop), daemon=True)
            thread.start()
            timing["start"] = time.time()
            yield from map(function, jobs) if pool is None else pool.imap_unordered(function, jobs)
            timing["end"] = time.time()
            stop.set()
            thread.join()
            bar.update(counter.value)  # before the pool shuts down, so the rate is the work's
    finally:
        stop.set()
        if thread is not None:
            thread.join()
            bar.close()
        _init_worker(None)


def _refresh(bar: ProgressBar, counter: Any, stop: threading.Event) -> None:
    while not stop.wait(bar.interval):
        bar.update(counter.value)


class ProgressBar:
    """Images done, rate and ETA: a live bar on a terminal, a log line every 30 s otherwise."""

    def __init__(self, total: int, description: str, stream: Any = None):
        self.total = max(total, 0)
        self.description = description
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interval = 0.2 if self.tty else 30.0
        self.start = time.time()
        self.done = 0

    def text(self, done: int) -> str:
        elapsed = max(time.time() - self.start, 1e-9)
        rate = done / elapsed
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        fraction = done / self.total if self.total else 1.0
        filled = int(30 * fraction)
        eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if eta != float("inf") else "--:--:--"
        return (
            f"{self.description} [{'#' * filled}{'.' * (30 - filled)}] {done}/{self.total} "
            f"{100 * fraction:5.1f}% {rate:7.1f} img/s ETA {eta_text}"
        )

    def update(self, done: int) -> None:
        self.done = done
        if self.tty:
            self.stream.write("\r" + self.text(done))
            self.stream.flush()
        else:
            logging.info(self.text(done))

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


# ---------------------------------------------------------------------------------------------
# The public entry points.


def _check_positive(value: int, flag: str) -> None:
    if not isinstance(value, int) or value < 1:
        raise ConversionError(f"{flag} must be a positive integer, got {value!r}")


def _split_into_shards(items: list, num_shards: int) -> list[list]:
    return [items[i * len(items) // num_shards : (i + 1) * len(items) // num_shards] for i in range(num_shards)]


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
) -> dict[str, Any]:
    """Converts image folders to sharded TFRecords in ``output_directory``.

    Args:
      train_directory: ``<wnid>/*`` folders of training images, or None.
      validation_directory: flat validation images (with ``validation_labels_file``) or class
        folders, or None.
      output_directory: where shards, manifest, summary, rejects and statistics go.
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

    Returns:
      The summary (also in ``summary.json`` once all shards exist): counts per split, class and
      kind, bytes in and out, seconds, images/s, and ``ok`` (rejects within ``max_rejects``).

    Raises:
      ConversionError: naming the flag or file, for any problem with the inputs, before any work.
    """
    start = time.time()
    if not train_directory and not validation_directory:
        raise ConversionError("pass --train_directory and/or --validation_directory")
    if not output_directory:
        raise ConversionError("--output_directory is required")
    for value, flag in ((train_shards, "--train_shards"), (validation_shards, "--validation_shards")):
        _check_positive(value, flag)
    num_workers = num_workers or os.cpu_count() or 1
    _check_positive(num_workers, "--num_workers")
    _check_positive(num_tasks, "--num_tasks")
    if resize is not None and resize != 0:
        _check_positive(resize, "--resize")
    if not 1 <= jpeg_quality <= 100:
        raise ConversionError(f"--jpeg_quality must be in 1..100, got {jpeg_quality}")
    if not 0 <= task_index < num_tasks:
        raise ConversionError(f"--task_index must be in 0..{num_tasks - 1} (--num_tasks={num_tasks}), got {task_index}")
    if label_offset < 0 or max_rejects < 0:
        raise ConversionError("--label_offset and --max_rejects must not be negative")
    for path, flag in (
        (train_directory, "--train_directory"),
        (validation_directory, "--validation_directory"),
    ):
        if path and not os.path.isdir(path):
            raise ConversionError(f"{flag}={path} is not a directory")
    for path, flag in ((labels_file, "--labels_file"), (metadata_file, "--imagenet_metadata_file")):
        if path and not os.path.isfile(path):
            raise ConversionError(f"{flag}={path} does not exist")
    labels_file = labels_file or imagenet.DEFAULT_SYNSETS_FILE
    try:
        synsets = imagenet.load_synsets(labels_file)
        metadata = imagenet.load_metadata(metadata_file)
    except ValueError as e:
        raise ConversionError(str(e)) from e
    texts = {wnid: metadata.get(wnid, wnid) for wnid in synsets}
    unnamed = [wnid for wnid in synsets if wnid not in metadata]
    if unnamed:
        logging.warning(
            "%d classes have no name in the metadata file; using the wnid (e.g. %s)", len(unnamed), unnamed[0]
        )

    listings: dict[str, tuple[SplitListing, int, str]] = {}
    if train_directory:
        listings[records.TRAIN_PREFIX] = (
            list_training_files(train_directory, synsets, labels_file),
            train_shards,
            train_directory,
        )
    if validation_directory:
        listing = list_validation_files(validation_directory, validation_labels_file, synsets, labels_file)
        listings[records.VALIDATION_PREFIX] = (listing, validation_shards, validation_directory)
    for split, (listing, _, directory) in listings.items():
        if not listing.items:
            raise ConversionError(
                f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in the {split} directory {directory}"
            )

    options = {
        "resize": resize or None,
        "jpeg_quality": jpeg_quality,
        "label_offset": label_offset,
        "seed": seed,
        "format_version": FORMAT_VERSION,
    }
    label_of = {wnid: i + label_offset for i, wnid in enumerate(synsets)}
    parts_directory = os.path.join(output_directory, PARTS_DIRECTORY)
    os.makedirs(parts_directory, exist_ok=True)
    plan: dict[str, Any] = {
        "options": options,
        "num_tasks": num_tasks,
        "synsets": synsets,
        "texts": texts,
        "max_rejects": max_rejects,
        "splits": {},
    }
    jobs = []
    for split, (listing, requested, directory) in listings.items():
        items = sorted(listing.items, key=lambda item: item[1])
        random.Random(f"{split}:{seed}").shuffle(items)
        num_shards = min(requested, len(items))
        if num_shards < requested:
            logging.warning("%s: %d images, so %d shards instead of %d", split, len(items), num_shards, requested)
        if listing.missing_classes:
            logging.warning(
                "%s: %d of %d classes have no folder or image (e.g. %s)",
                split,
                len(listing.missing_classes),
                len(synsets),
                listing.missing_classes[0],
            )
        if listing.ignored:
            logging.warning(
                "%s: ignoring %d files without an image extension (e.g. %s)",
                split,
                len(listing.ignored),
                listing.ignored[0],
            )
        fingerprints = []
        for index, shard in enumerate(_split_into_shards(items, num_shards)):
            name = records.shard_name(split, index, num_shards)
            shard_items = [(path, rel, size, label_of[wnid], wnid) for path, rel, size, wnid in shard]
            shard_texts = {wnid: texts[wnid] for *_, wnid in shard}
            fingerprint = _fingerprint(options, name, shard_items, texts)
            fingerprints.append(fingerprint)
            jobs.append(
                {
                    "split": split,
                    "name": name,
                    "output_directory": output_directory,
                    "parts_directory": parts_directory,
                    "fingerprint": fingerprint,
                    "items": shard_items,
                    "texts": shard_texts,
                    "resize": resize or None,
                    "jpeg_quality": jpeg_quality,
                    "with_statistics": split == records.TRAIN_PREFIX,
                }
            )
        plan["splits"][split] = {
            "directory": os.path.abspath(directory),
            "num_shards": num_shards,
            "num_files": len(items),
            "fingerprints": fingerprints,
            "missing_classes": listing.missing_classes,
            "ignored": listing.ignored,
        }
    jobs = [job for index, job in enumerate(jobs) if index % num_tasks == task_index]
    _warn_about_stale_shards(output_directory, plan)
    _write_json(os.path.join(parts_directory, PLAN_FILE), plan)

    total = sum(len(job["items"]) for job in jobs)
    done = {"converted_shards": 0, "skipped_shards": 0, "converted_images": 0, "rejected": 0, "written": 0}
    description = f"task {task_index}/{num_tasks}" if num_tasks > 1 else "converting"
    timing: dict[str, float] = {}
    for part in _run_jobs(_convert_shard, jobs, num_workers, total, description, timing):
        done["skipped_shards" if part["skipped"] else "converted_shards"] += 1
        if not part["skipped"]:
            done["converted_images"] += part["files"]
        done["rejected"] += part["rejected"]
        done["written"] += part["records"]
    seconds = time.time() - start
    # The rate excludes listing, worker start-up and merging: fixed costs a large run amortises.
    working = timing.get("end", start) - timing.get("start", start)
    run = {
        **done,
        "seconds": round(seconds, 3),
        "conversion_seconds": round(working, 3),
        "images_per_second": round(done["converted_images"] / working, 2) if working > 0 else 0.0,
        "task_index": task_index,
        "num_tasks": num_tasks,
    }
    try:
        summary = merge_manifests(output_directory)
    except ConversionError as e:
        if num_tasks == 1:
            raise
        logging.info("Task %d of %d done; the merge waits for the other tasks: %s", task_index, num_tasks, e)
        return {**run, "complete": False, "ok": done["rejected"] <= max_rejects}
    summary.update({key: value for key, value in run.items() if key not in ("written", "rejected")})
    _write_json(os.path.join(output_directory, SUMMARY_FILE), summary)
    logging.info(
        "%d files: %d written, %d rejected; %d shards converted, %d verified and kept; %.1f s, %.1f images/s",
        summary["files_found"],
        summary["written"],
        summary["rejected"],
        done["converted_shards"],
        done["skipped_shards"],
        seconds,
        run["images_per_second"],
    )
    return summary


def _warn_about_stale_shards(output_directory: str, plan: dict[str, Any]) -> None:
    expected = {
        records.shard_name(split, i, info["num_shards"])
        for split, info in plan["splits"].items()
        for i in range(info["num_shards"])
    }
    for split in plan["splits"]:
        stale = [
            p
            for p in glob.glob(os.path.join(glob.escape(output_directory), f"{split}-*-of-*"))
            if os.path.basename(p) not in expected and ".tmp-" not in p
        ]
        if stale:
            logging.warning(
                "%s holds %d %s shards of another shard count (e.g. %s); they are not in the manifest",
                output_directory,
                len(stale),
                split,
                stale[0],
            )


def merge_manifests(output_directory: str) -> dict[str, Any]:
    """Checks that every shard of the plan is complete and writes the run's output files.

    Writes ``manifest.json``, ``summary.json``, ``rejects.txt``, ``synsets.txt`` and (when there
    are training images) the dataset statistics, from the ``.parts`` records of all tasks.

    Returns:
      The summary.

    Raises:
      ConversionError: naming the shards that are missing or do not match their record.
    """
    parts_directory = os.path.join(output_directory, PARTS_DIRECTORY)
    plan = _read_json(os.path.join(parts_directory, PLAN_FILE))
    if plan is None:
        raise ConversionError(f"{output_directory}: no {PARTS_DIRECTORY}/{PLAN_FILE}; run the converter first")
    synsets, num_tasks = plan["synsets"], plan["num_tasks"]
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "options": plan["options"],
        "num_classes": len(synsets),
        "synsets_file": SYNSETS_FILE,
        "splits": {},
    }
    summary: dict[str, Any] = {"splits": {}}
    accumulator = statistics.StatisticsAccumulator(STATISTICS_SIZE)
    missing, global_index = [], 0
    rejects_lines = []
    for split, info in plan["splits"].items():
        shards = []
        totals = collections.Counter()
        kinds: collections.Counter[str] = collections.Counter()
        classes: collections.Counter[str] = collections.Counter()
        for index, fingerprint in enumerate(info["fingerprints"]):
            name = records.shard_name(split, index, info["num_shards"])
            part = _read_json(os.path.join(parts_directory, name + ".json"))
            path = os.path.join(output_directory, name)
            if (
                part is None
                or part.get("fingerprint") != fingerprint
                or not os.path.exists(path)
                or os.path.getsize(path) != part["bytes"]
            ):
                missing.append(f"{name} (task {global_index % num_tasks})")
                global_index += 1
                continue
            global_index += 1
            shards.append({"name": name, "records": part["records"], "bytes": part["bytes"], "sha256": part["sha256"]})
            totals.update({key: part[key] for key in ("files", "records", "rejected", "bytes_in", "bytes", "misnamed")})
            totals["worker_seconds"] += part["seconds"]
            kinds.update(part["kinds"])
            classes.update(part["classes"])
            rejects_lines.extend(f"{split}\t{path}\t{reason}\n" for path, reason in part["rejects"])
            if split == records.TRAIN_PREFIX and not missing:
                accumulator.merge(statistics.StatisticsAccumulator.load(os.path.join(parts_directory, name + ".npz")))
        if totals["files"] != totals["records"] + totals["rejected"] and not missing:
            raise ConversionError(
                f"{output_directory}: {split} shards account for {totals['records']} + {totals['rejected']} "
                f"of {totals['files']} files; re-run the converter"
            )
        manifest["splits"][split] = {
            "num_shards": info["num_shards"],
            "num_records": totals["records"],
            "shards": shards,
        }
        summary["splits"][split] = {
            "directory": info["directory"],
            "files_found": totals["files"],
            "written": totals["records"],
            "rejected": totals["rejected"],
            "ignored_files": len(info["ignored"]),
            "ignored_examples": info["ignored"][:10],
            "bytes_in": totals["bytes_in"],
            "bytes_out": totals["bytes"],
            "worker_seconds": round(totals["worker_seconds"], 3),
            "kinds": dict(sorted(kinds.items())),
            "misnamed": totals["misnamed"],
            "missing_classes": info["missing_classes"],
            "class_counts": {wnid: classes[wnid] for wnid in synsets if classes[wnid]},
        }
    if missing:
        raise ConversionError(
            f"{output_directory}: {len(missing)} shard(s) missing or incomplete "
            f"(e.g. {', '.join(missing[:5])}); "
            "run (or re-run) those tasks, then merge"
        )
    for key in ("files_found", "written", "rejected", "bytes_in", "bytes_out"):
        summary[key] = sum(s[key] for s in summary["splits"].values())
    summary["max_rejects"] = plan["max_rejects"]
    summary["ok"] = summary["rejected"] <= plan["max_rejects"]
    summary["complete"] = True
    summary["options"] = plan["options"]
    _write_atomically(os.path.join(output_directory, REJECTS_FILE), "".join(rejects_lines).encode("utf-8"))
    _write_atomically(os.path.join(output_directory, SYNSETS_FILE), "".join(w + "\n" for w in synsets).encode("utf-8"))
    if accumulator.num_images:
        stats = accumulator.result(source=output_directory)
        stats.save(output_directory)
        manifest["statistics_file"] = statistics.STATISTICS_FILE
    _write_json(os.path.join(output_directory, MANIFEST_FILE), manifest)
    _write_json(os.path.join(output_directory, SUMMARY_FILE), summary)
    return summary


# ---------------------------------------------------------------------------------------------
# Verification.


def _verify_shard(job: dict[str, Any]) -> dict[str, Any]:
    """Checks one shard's size, checksum, record CRCs, labels and every image's decode."""
    path, entry = job["path"], job["entry"]
    errors: list[str] = []
    count = 0
    if not os.path.exists(path):
        return {"name": entry["name"], "records": 0, "errors": [f"{path}: missing"]}
    if os.path.getsize(path) != entry["bytes"] or sha256_file(path) != entry["sha256"]:
        errors.append(f"{path}: size or sha256 differs from the manifest")
    low, high = job["label_offset"], job["label_offset"] + job["num_classes"]
    try:
        for serialized in tf.data.TFRecordDataset(path):
            count += 1
            _count()
            example = tf.train.Example.FromString(serialized.numpy())
            feature = example.features.feature
            filename = feature[records.FILENAME_KEY].bytes_list.value[0].decode("utf-8", "replace")
            label = feature[records.LABEL_KEY].int64_list.value[0]
            if not low <= label < high:
                errors.append(f"{path}: record {count} ({filename}) has label {label} outside {low}..{high - 1}")
            try:
                shape = tf.io.decode_jpeg(feature[records.IMAGE_KEY].bytes_list.value[0], channels=3).shape
            except tf.errors.OpError as e:
                errors.append(f"{path}: record {count} ({filename}) does not decode: {e.message}")
                continue
            size = (
                feature[records.HEIGHT_KEY].int64_list.value[0],
                feature[records.WIDTH_KEY].int64_list.value[0],
            )
            if tuple(shape[:2]) != size:
                errors.append(
                    f"{path}: record {count} ({filename}) is {shape[0]}x{shape[1]}, recorded {size[0]}x{size[1]}"
                )
    except tf.errors.OpError as e:
        errors.append(f"{path}: unreadable after record {count}: {e.message}")
    if count != entry["records"]:
        errors.append(f"{path}: {count} records, the manifest says {entry['records']}")
    return {"name": entry["name"], "records": count, "errors": errors}


def verify(output_directory: str, num_workers: int | None = None) -> dict[str, Any]:
    """Reads every shard of the manifest: checksums, record CRCs, labels, image decodes, counts.

    Returns:
      ``{"ok", "shards", "shards_ok", "records", "errors"}``.

    Raises:
      ConversionError: when there is no manifest.
    """
    manifest = _read_json(os.path.join(output_directory, MANIFEST_FILE))
    if manifest is None:
        raise ConversionError(f"{output_directory}: no readable {MANIFEST_FILE}; run the converter first")
    jobs = [
        {
            "path": os.path.join(output_directory, entry["name"]),
            "entry": entry,
            "label_offset": manifest["options"]["label_offset"],
            "num_classes": manifest["num_classes"],
        }
        for split in manifest["splits"].values()
        for entry in split["shards"]
    ]
    total = sum(job["entry"]["records"] for job in jobs)
    report = {"shards": len(jobs), "shards_ok": 0, "records": 0, "errors": []}
    for result in _run_jobs(_verify_shard, jobs, num_workers or os.cpu_count() or 1, total, "verifying"):
        report["records"] += result["records"]
        report["shards_ok"] += not result["errors"]
        report["errors"].extend(result["errors"])
    report["ok"] = report["shards_ok"] == report["shards"]
    for error in report["errors"][:20]:
        logging.error("%s", error)
    logging.info("Verified %d of %d shards, %d records", report["shards_ok"], report["shards"], report["records"])
    return report


def iterate_records(paths: Iterable[str]) -> Iterator[tf.train.Example]:
    """Every record of ``paths`` as a ``tf.train.Example`` (for tests and tools)."""
    for path in paths:
        for serialized in tf.data.TFRecordDataset(path):
            yield tf.train.Example.FromString(serialized.numpy())
