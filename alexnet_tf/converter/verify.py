"""Reading every shard back: checksums, record CRCs, labels, image decodes and counts."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import tensorflow as tf
from absl import logging

from alexnet_tf import paths, records
from alexnet_tf.converter import files
from alexnet_tf.converter.listing import ConversionError
from alexnet_tf.converter.pool import run_jobs


@dataclasses.dataclass(frozen=True)
class VerifyJob:
    """One shard of the manifest and the labels its records may hold."""

    path: str
    name: str
    records: int
    bytes: int
    sha256: str
    label_offset: int
    num_classes: int


@dataclasses.dataclass(frozen=True)
class VerifyResult:
    """What reading one shard found."""

    name: str
    records: int
    errors: list[str]


def _record_errors(path: str, number: int, serialized: bytes, low: int, high: int) -> list[str]:
    """The problems of record ``number`` of ``path``: label range, decode, recorded size."""
    feature = tf.train.Example.FromString(serialized).features.feature
    filename = feature[records.FILENAME_KEY].bytes_list.value[0].decode("utf-8", "replace")
    label = feature[records.LABEL_KEY].int64_list.value[0]
    errors = []
    if not low <= label < high:
        errors.append(f"{path}: record {number} ({filename}) has label {label} outside {low}..{high - 1}")
    try:
        shape = tf.io.decode_jpeg(feature[records.IMAGE_KEY].bytes_list.value[0], channels=3).shape
    except tf.errors.OpError as e:
        return [*errors, f"{path}: record {number} ({filename}) does not decode: {e.message}"]
    size = (feature[records.HEIGHT_KEY].int64_list.value[0], feature[records.WIDTH_KEY].int64_list.value[0])
    if tuple(shape[:2]) != size:
        errors.append(f"{path}: record {number} ({filename}) is {shape[0]}x{shape[1]}, recorded {size[0]}x{size[1]}")
    return errors


def verify_shard(job: VerifyJob, count: Callable[[int], None]) -> VerifyResult:
    """Checks one shard's size, checksum, record CRCs, labels and every image's decode.

    Args:
      job: the shard and what the manifest says of it.
      count: called once per record read.
    """
    path = job.path
    if not paths.exists(path):
        return VerifyResult(job.name, 0, [f"{path}: missing"])
    errors: list[str] = []
    if paths.size(path) != job.bytes or files.sha256_file(path) != job.sha256:
        errors.append(f"{path}: size or sha256 differs from the manifest")
    number = 0
    try:
        for serialized in tf.data.TFRecordDataset(path):
            number += 1
            count(1)
            errors.extend(
                _record_errors(path, number, serialized.numpy(), job.label_offset, job.label_offset + job.num_classes)
            )
    except tf.errors.OpError as e:
        errors.append(f"{path}: unreadable after record {number}: {e.message}")
    if number != job.records:
        errors.append(f"{path}: {number} records, the manifest says {job.records}")
    return VerifyResult(job.name, number, errors)


def verify(output_directory: str, num_workers: int | None = None) -> dict[str, Any]:
    """Reads every shard of the manifest: checksums, record CRCs, labels, image decodes, counts.

    Returns:
      ``{"ok", "shards", "shards_ok", "records", "errors"}``.

    Raises:
      ConversionError: when there is no manifest.
    """
    manifest = files.read_json(os.path.join(output_directory, records.MANIFEST_FILE))
    if manifest is None:
        raise ConversionError(f"{output_directory}: no readable {records.MANIFEST_FILE}; run the converter first")
    jobs = [
        VerifyJob(
            path=os.path.join(output_directory, entry["name"]),
            name=entry["name"],
            records=entry["records"],
            bytes=entry["bytes"],
            sha256=entry["sha256"],
            label_offset=manifest["options"]["label_offset"],
            num_classes=manifest["num_classes"],
        )
        for split in manifest["splits"].values()
        for entry in split["shards"]
    ]
    total = sum(job.records for job in jobs)
    report: dict[str, Any] = {"shards": len(jobs), "shards_ok": 0, "records": 0, "errors": []}
    num_workers = num_workers or os.cpu_count() or 1
    if paths.scheme(output_directory) == "ram":
        num_workers = 1  # worker processes do not see this process's in-memory files
    for result in run_jobs(verify_shard, jobs, num_workers, total, "verifying"):
        report["records"] += result.records
        report["shards_ok"] += not result.errors
        report["errors"].extend(result.errors)
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
