"""One shard: its images read, repaired and written as TFRecords, with a record of the work.

Each shard is written under a temporary name and renamed when complete, then its part record
(``.parts/<shard>.json``: count, size, sha256, what was converted or rejected, plus the
statistics sums in ``.parts/<shard>.npz``) is written after it. A re-run skips every shard whose
record still matches its inputs (the fingerprint) and whose bytes still hash to the recorded
checksum, so a run killed at any moment and run again gives the bytes of an uninterrupted run.

Nothing here imports TensorFlow: records are encoded and framed by :mod:`alexnet_tf.records`
and local files written with Python's own, so a worker process costs a decoder's memory and
start-up, not TensorFlow's (see :mod:`~alexnet_tf.converter.files` for other schemes).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import IO, Any

from alexnet_tf import records, statistics
from alexnet_tf.converter import files
from alexnet_tf.converter.image import (
    COVARIANCE_STRIDE,
    STATISTICS_GRID,
    STATISTICS_METHOD,
    RejectedImageError,
    convert_image,
)


@dataclasses.dataclass(frozen=True)
class ShardItem:
    """One input file of a shard and the label it gets."""

    path: str
    relpath: str
    size: int
    label: int
    wnid: str


@dataclasses.dataclass(frozen=True)
class ShardJob:
    """Everything a worker needs to write one shard (or to find it already written)."""

    split: str
    name: str
    output_directory: str
    parts_directory: str
    fingerprint: str
    items: tuple[ShardItem, ...]
    texts: dict[str, str]  # wnid -> human-readable name, for this shard's classes
    resize: int | None
    jpeg_quality: int
    with_statistics: bool
    resize_mode: str = "crop"  # image.RESIZE_MODES

    @property
    def path(self) -> str:
        return os.path.join(self.output_directory, self.name)

    @property
    def part_path(self) -> str:
        return os.path.join(self.parts_directory, self.name + ".json")

    @property
    def statistics_path(self) -> str:
        return os.path.join(self.parts_directory, self.name + ".npz")


@dataclasses.dataclass
class ShardPart:
    """The record of one written shard, as stored in ``.parts/<shard>.json``."""

    name: str
    split: str
    fingerprint: str
    records: int
    bytes: int
    sha256: str
    files: int
    rejected: int
    rejects: list[list[str]]  # [path, reason]
    bytes_in: int
    kinds: dict[str, int]
    misnamed: int
    classes: dict[str, int]
    seconds: float
    # How the statistics' sums were sampled (image.STATISTICS_METHOD); records written before
    # the method was recorded were sampled by method 1.
    statistics_method: int = 1

    @classmethod
    def load(cls, path: str) -> ShardPart | None:
        """The record in ``path``, or None when it is missing, unreadable or of another format."""
        value = files.read_json(path)
        try:
            return cls(**value) if isinstance(value, dict) else None
        except TypeError:
            return None

    def save(self, path: str) -> None:
        files.write_json(path, dataclasses.asdict(self))


@dataclasses.dataclass(frozen=True)
class ShardResult:
    """What a worker returns: the shard's record and whether it was already there."""

    part: ShardPart
    skipped: bool


def fingerprint(options: dict[str, Any], name: str, items: Sequence[ShardItem], texts: dict[str, str]) -> str:
    """A hash of everything that decides a shard's bytes: options, name, files, labels, names."""
    digest = hashlib.sha256(json.dumps([options, name], sort_keys=True).encode("utf-8"))
    for item in items:
        digest.update(json.dumps([item.relpath, item.size, item.label, item.wnid, texts[item.wnid]]).encode("utf-8"))
    return digest.hexdigest()


def statistics_accumulator() -> statistics.StatisticsAccumulator:
    """Empty sums for the samples ``convert_image`` returns, as ``STATISTICS_METHOD`` adds them."""
    return statistics.StatisticsAccumulator(STATISTICS_GRID, COVARIANCE_STRIDE)


def _shard_verifies(job: ShardJob, part: ShardPart | None) -> bool:
    if part is None or part.fingerprint != job.fingerprint or part.statistics_method != STATISTICS_METHOD:
        return False
    if job.with_statistics and not files.exists(job.statistics_path):
        return False
    path = job.path
    return files.exists(path) and files.size(path) == part.bytes and files.sha256_file(path) == part.sha256


class _HashingWriter:
    """Writes to a file and hashes what it writes, so the shard's checksum needs no second read."""

    def __init__(self, file: IO[bytes]):
        self.file = file
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self.digest.update(data)
        self.size += len(data)


@dataclasses.dataclass
class _Tallies:
    """What one shard's writing found, image by image."""

    kinds: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    classes: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    rejects: list[list[str]] = dataclasses.field(default_factory=list)
    written: int = 0
    bytes_in: int = 0
    misnamed: int = 0


def _write_item(
    item: ShardItem,
    job: ShardJob,
    writer: _HashingWriter,
    tallies: _Tallies,
    accumulator: statistics.StatisticsAccumulator | None,
) -> None:
    try:
        # Input images are local (listed with os.scandir); only the output may be remote.
        with open(item.path, "rb") as f:
            data = f.read()
    except OSError as e:
        tallies.rejects.append([item.path, f"unreadable: {e.strerror or e}"])
        return
    tallies.bytes_in += len(data)
    try:
        image = convert_image(data, job.resize, job.jpeg_quality, accumulator is not None, job.resize_mode)
    except RejectedImageError as e:
        tallies.rejects.append([item.path, str(e)])
        return
    extension = os.path.splitext(item.path)[1].lower().lstrip(".").replace("jpg", "jpeg")
    tallies.misnamed += extension != image.kind.split("_")[0]
    tallies.kinds[image.kind] += 1
    tallies.classes[item.wnid] += 1
    if accumulator is not None:
        accumulator.add(image.pixels)
    example = records.serialize_example(
        image.encoded,
        image.height,
        image.width,
        item.label,
        item.wnid,
        job.texts[item.wnid],
        os.path.basename(item.relpath),
    )
    for chunk in records.frame_record(example):
        writer.write(chunk)
    tallies.written += 1


def convert_shard(job: ShardJob, count: Callable[[int], None]) -> ShardResult:
    """Writes one shard (or verifies the one already there) and returns its record.

    Args:
      job: the shard to write.
      count: called with the number of input files finished (written or rejected).
    """
    part = ShardPart.load(job.part_path)
    if _shard_verifies(job, part):
        count(len(job.items))
        return ShardResult(part, skipped=True)
    # Names, not a glob: the output directory's own name may hold glob characters.
    for name in files.listdir(job.output_directory):
        if name.startswith(job.name + ".tmp-"):
            files.remove(os.path.join(job.output_directory, name))
    start = time.time()
    accumulator = statistics_accumulator() if job.with_statistics else None
    tallies = _Tallies()
    tmp = files.temporary_name(job.path)
    with files.open_file(tmp, "wb") as file:
        writer = _HashingWriter(file)
        for item in job.items:
            _write_item(item, job, writer, tallies, accumulator)
            count(1)
    sha256, size = writer.digest.hexdigest(), files.size(tmp)
    if size != writer.size:
        raise OSError(f"{tmp}: {size} bytes on disk, {writer.size} written; convert again")
    files.rename(tmp, job.path)
    if accumulator is not None:
        files.write_atomically(job.statistics_path, accumulator.to_bytes())
    part = ShardPart(
        name=job.name,
        split=job.split,
        fingerprint=job.fingerprint,
        records=tallies.written,
        bytes=size,
        sha256=sha256,
        files=len(job.items),
        rejected=len(tallies.rejects),
        rejects=tallies.rejects,
        bytes_in=tallies.bytes_in,
        kinds=dict(sorted(tallies.kinds.items())),
        misnamed=tallies.misnamed,
        classes=dict(sorted(tallies.classes.items())),
        seconds=round(time.time() - start, 3),
        statistics_method=STATISTICS_METHOD,
    )
    part.save(job.part_path)
    return ShardResult(part, skipped=False)
