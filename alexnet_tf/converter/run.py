"""The conversion from start to end: check the arguments, list, plan, convert, merge.

The work is planned once from the file listing (validated before anything is written), then
done shard by shard by worker processes (:mod:`~alexnet_tf.converter.shards`), and the shards'
records are merged into the run's output files (:mod:`~alexnet_tf.converter.manifest`).
"""

from __future__ import annotations

import dataclasses
import os
import random
import time
from typing import Any

from absl import logging

from alexnet_tf import imagenet, paths, records
from alexnet_tf.converter import files
from alexnet_tf.converter.image import RESIZE_MODES, STATISTICS_METHOD
from alexnet_tf.converter.listing import (
    IMAGE_EXTENSIONS,
    ConversionError,
    SplitListing,
    carve_holdout,
    list_training_files,
    list_validation_files,
)
from alexnet_tf.converter.manifest import (
    MixedStatisticsError,
    check_statistics_method,
    merge_manifests,
    warn_about_stale_shards,
)
from alexnet_tf.converter.pool import run_jobs
from alexnet_tf.converter.shards import ShardItem, ShardJob, convert_shard, fingerprint


@dataclasses.dataclass(frozen=True)
class ConvertArguments:
    """The arguments of :func:`alexnet_tf.converter.convert`, documented there."""

    train_directory: str | None
    validation_directory: str | None
    output_directory: str
    validation_labels_file: str | None
    train_shards: int
    validation_shards: int
    num_workers: int
    resize: int | None
    labels_file: str | None
    metadata_file: str | None
    max_rejects: int
    label_offset: int
    seed: int
    jpeg_quality: int
    num_tasks: int
    task_index: int
    holdout_per_class: int = 0
    resize_mode: str = "crop"


@dataclasses.dataclass(frozen=True)
class SplitInput:
    """One split's listed files, the shard count asked for and the folder they came from."""

    listing: SplitListing
    requested_shards: int
    directory: str


@dataclasses.dataclass(frozen=True)
class Classes:
    """The classes in label order, their names, and the file they came from."""

    synsets: list[str]
    texts: dict[str, str]  # wnid -> human-readable name (the wnid where there is none)
    labels_file: str


def _check_positive(value: int, flag: str) -> None:
    if not isinstance(value, int) or value < 1:
        raise ConversionError(f"{flag} must be a positive integer, got {value!r}")


def check_arguments(arguments: ConvertArguments) -> None:
    """Raises :class:`ConversionError`, naming the flag or file, for any bad argument of convert()."""
    a = arguments
    if not a.train_directory and not a.validation_directory:
        raise ConversionError("pass --train_directory and/or --validation_directory")
    if not a.output_directory:
        raise ConversionError("--output_directory is required")
    try:
        paths.check_supported(a.output_directory, "--output_directory")
    except paths.UnsupportedPathError as e:
        raise ConversionError(str(e)) from e
    for flag in ("train_shards", "validation_shards", "num_workers", "num_tasks"):
        _check_positive(getattr(a, flag), f"--{flag}")
    if a.resize is not None and a.resize != 0:
        _check_positive(a.resize, "--resize")
    if a.resize_mode not in RESIZE_MODES:
        raise ConversionError(f"--resize_mode must be one of {', '.join(RESIZE_MODES)}, got {a.resize_mode!r}")
    if a.resize_mode == "squash" and not a.resize:
        raise ConversionError("--resize_mode=squash brings both sides to --resize: pass --resize (Caffe: 256)")
    if not 1 <= a.jpeg_quality <= 100:
        raise ConversionError(f"--jpeg_quality must be in 1..100, got {a.jpeg_quality}")
    if not 0 <= a.task_index < a.num_tasks:
        raise ConversionError(
            f"--task_index must be in 0..{a.num_tasks - 1} (--num_tasks={a.num_tasks}), got {a.task_index}"
        )
    if a.label_offset < 0 or a.max_rejects < 0:
        raise ConversionError("--label_offset and --max_rejects must not be negative")
    if not isinstance(a.holdout_per_class, int) or a.holdout_per_class < 0:
        raise ConversionError(f"--holdout_per_class must be 0 or more, got {a.holdout_per_class!r}")
    if a.holdout_per_class and not a.train_directory:
        raise ConversionError("--holdout_per_class holds training images out: pass --train_directory")
    # The input folders are read with os.scandir and open(): local only (the output may be remote).
    for path, flag in ((a.train_directory, "--train_directory"), (a.validation_directory, "--validation_directory")):
        if path and not os.path.isdir(path):
            raise ConversionError(f"{flag}={path} is not a directory")
    for path, flag in ((a.labels_file, "--labels_file"), (a.metadata_file, "--imagenet_metadata_file")):
        if path and not paths.isfile(path):
            raise ConversionError(f"{flag}={path} does not exist")


def load_classes(labels_file: str | None, metadata_file: str | None) -> Classes:
    """The classes of ``labels_file`` (default ILSVRC-2012's 1000) named by ``metadata_file``."""
    labels_file = labels_file or imagenet.DEFAULT_SYNSETS_FILE
    try:
        synsets = imagenet.load_synsets(labels_file)
        metadata = imagenet.load_metadata(metadata_file)
    except ValueError as e:
        raise ConversionError(str(e)) from e
    unnamed = [wnid for wnid in synsets if wnid not in metadata]
    if unnamed:
        logging.warning(
            "%d classes have no name in the metadata file; using the wnid (e.g. %s)", len(unnamed), unnamed[0]
        )
    return Classes(synsets, {wnid: metadata.get(wnid, wnid) for wnid in synsets}, labels_file)


def list_inputs(arguments: ConvertArguments, classes: Classes) -> dict[str, SplitInput]:
    """Each split's files, listed and checked; raises :class:`ConversionError` for an empty split."""
    a = arguments
    inputs: dict[str, SplitInput] = {}
    holdout = None
    if a.train_directory:
        listing = list_training_files(a.train_directory, classes.synsets, classes.labels_file)
        if a.holdout_per_class:
            listing, holdout = carve_holdout(listing, a.holdout_per_class, a.seed)
        inputs[records.TRAIN_PREFIX] = SplitInput(listing, a.train_shards, a.train_directory)
    if a.validation_directory:
        listing = list_validation_files(
            a.validation_directory, a.validation_labels_file, classes.synsets, classes.labels_file
        )
        inputs[records.VALIDATION_PREFIX] = SplitInput(listing, a.validation_shards, a.validation_directory)
    if holdout is not None:  # as many shards as the validation set's: the two are about the same size
        inputs[records.HOLDOUT_PREFIX] = SplitInput(holdout, a.validation_shards, a.train_directory)
    for split, split_input in inputs.items():
        if not split_input.listing.items:
            raise ConversionError(
                f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in the {split} directory {split_input.directory}"
            )
    return inputs


def _warn_about_listing(split: str, listing: SplitListing, num_classes: int) -> None:
    if listing.missing_classes:
        logging.warning(
            "%s: %d of %d classes have no folder or image (e.g. %s)",
            split,
            len(listing.missing_classes),
            num_classes,
            listing.missing_classes[0],
        )
    if listing.ignored:
        logging.warning(
            "%s: ignoring %d files without an image extension (e.g. %s)",
            split,
            len(listing.ignored),
            listing.ignored[0],
        )


def _split_into_shards(items: list, num_shards: int) -> list[list]:
    return [items[i * len(items) // num_shards : (i + 1) * len(items) // num_shards] for i in range(num_shards)]


def _plan_split(
    split: str, split_input: SplitInput, classes: Classes, options: dict[str, Any], output_directory: str
) -> tuple[list[ShardJob], dict[str, Any]]:
    """One split's shard jobs and its entry in the plan; the shuffle mixes classes across shards."""
    items = sorted(split_input.listing.items, key=lambda item: item.relpath)
    random.Random(f"{split}:{options['seed']}").shuffle(items)
    num_shards = min(split_input.requested_shards, len(items))
    if num_shards < split_input.requested_shards:
        logging.warning(
            "%s: %d images, so %d shards instead of %d", split, len(items), num_shards, split_input.requested_shards
        )
    _warn_about_listing(split, split_input.listing, len(classes.synsets))
    label_of = {wnid: i + options["label_offset"] for i, wnid in enumerate(classes.synsets)}
    jobs = []
    for index, shard in enumerate(_split_into_shards(items, num_shards)):
        name = records.shard_name(split, index, num_shards)
        shard_items = tuple(ShardItem(f.path, f.relpath, f.size, label_of[f.wnid], f.wnid) for f in shard)
        jobs.append(
            ShardJob(
                split=split,
                name=name,
                output_directory=output_directory,
                parts_directory=os.path.join(output_directory, files.PARTS_DIRECTORY),
                fingerprint=fingerprint(options, name, shard_items, classes.texts),
                items=shard_items,
                texts={f.wnid: classes.texts[f.wnid] for f in shard},
                resize=options["resize"],
                jpeg_quality=options["jpeg_quality"],
                with_statistics=split == records.TRAIN_PREFIX,
                resize_mode=options.get("resize_mode", "crop"),
            )
        )
    entry = {
        "directory": os.path.abspath(split_input.directory),
        "num_shards": num_shards,
        "num_files": len(items),
        "fingerprints": [job.fingerprint for job in jobs],
        "missing_classes": split_input.listing.missing_classes,
        "ignored": split_input.listing.ignored,
    }
    return jobs, entry


def plan_jobs(
    arguments: ConvertArguments, classes: Classes, inputs: dict[str, SplitInput]
) -> tuple[dict[str, Any], list[ShardJob]]:
    """The plan (written to ``.parts/plan.json``, read by the merge) and every shard's job."""
    options = {
        "resize": arguments.resize or None,
        "jpeg_quality": arguments.jpeg_quality,
        "label_offset": arguments.label_offset,
        "seed": arguments.seed,
        "format_version": files.FORMAT_VERSION,
    }
    if arguments.holdout_per_class:  # recorded (and fingerprinted) only when used: older shards stay valid
        options["holdout_per_class"] = arguments.holdout_per_class
    if arguments.resize_mode != "crop":  # likewise: shards resized the paper's way keep their fingerprints
        options["resize_mode"] = arguments.resize_mode
    plan: dict[str, Any] = {
        "options": options,
        "num_tasks": arguments.num_tasks,
        "synsets": classes.synsets,
        "texts": classes.texts,
        "max_rejects": arguments.max_rejects,
        "statistics_method": STATISTICS_METHOD,
        "splits": {},
    }
    jobs: list[ShardJob] = []
    for split, split_input in inputs.items():
        split_jobs, plan["splits"][split] = _plan_split(
            split, split_input, classes, options, arguments.output_directory
        )
        jobs.extend(split_jobs)
    return plan, jobs


def _announce(arguments: ConvertArguments, inputs: dict[str, SplitInput], plan: dict[str, Any], num_jobs: int) -> None:
    """The run's first lines: what will be converted, how, and where it goes."""
    for split, split_input in inputs.items():
        logging.info(
            "%s: %d images in %s -> %d shards",
            split,
            len(split_input.listing.items),
            split_input.directory,
            plan["splits"][split]["num_shards"],
        )
    resize = arguments.resize
    if not resize:
        how = "RGB JPEGs kept byte for byte"
    elif arguments.resize_mode == "squash":
        how = f"squashed to {resize}x{resize}, the aspect ratio not kept"
    else:
        how = f"shorter side resized to {resize}"
    logging.info(
        "Converting %d shards (%s) with %d workers into %s",
        num_jobs,
        how,
        arguments.num_workers,
        paths.absolute(arguments.output_directory),
    )


def _report_outputs(output_directory: str, summary: dict[str, Any], done: RunCounts, seconds: float) -> None:
    """The run's last lines: what was written and where everything went."""
    logging.info(
        "%d files: %d written, %d rejected; %d shards converted, %d verified and kept; %.1f s, %.1f images/s",
        summary["files_found"],
        summary["written"],
        summary["rejected"],
        done.converted_shards,
        done.skipped_shards,
        seconds,
        summary["images_per_second"],
    )
    names = [records.MANIFEST_FILE, records.SUMMARY_FILE, records.SYNSETS_FILE, records.METADATA_FILE]
    if paths.exists(os.path.join(output_directory, records.STATISTICS_FILE)):
        names.append(records.STATISTICS_FILE)
    if summary["rejected"]:
        names.append(records.REJECTS_FILE)
    logging.info("Shards and %s are in %s", ", ".join(names), paths.absolute(output_directory))


@dataclasses.dataclass
class RunCounts:
    """What this process's conversion did (the summary's run figures)."""

    converted_shards: int = 0
    skipped_shards: int = 0  # found intact from an earlier run and kept
    converted_images: int = 0
    rejected: int = 0
    written: int = 0


def _run_shards(jobs: list[ShardJob], num_workers: int, description: str) -> tuple[RunCounts, float]:
    """Converts ``jobs``; returns the counts and the seconds the workers spent on them."""
    total = sum(len(job.items) for job in jobs)
    done = RunCounts()
    timing: dict[str, float] = {}
    start = time.time()
    for result in run_jobs(convert_shard, jobs, num_workers, total, description, timing):
        if result.skipped:
            done.skipped_shards += 1
        else:
            done.converted_shards += 1
            done.converted_images += result.part.files
        done.rejected += result.part.rejected
        done.written += result.part.records
    # The rate excludes listing, worker start-up and merging: fixed costs a large run amortises.
    return done, timing.get("end", start) - timing.get("start", start)


def run_conversion(arguments: ConvertArguments) -> dict[str, Any]:
    """:func:`alexnet_tf.converter.convert`, its arguments checked first; see there."""
    start = time.time()
    check_arguments(arguments)
    classes = load_classes(arguments.labels_file, arguments.metadata_file)
    inputs = list_inputs(arguments, classes)
    output_directory = arguments.output_directory
    plan, jobs = plan_jobs(arguments, classes, inputs)
    num_tasks, task_index = arguments.num_tasks, arguments.task_index
    jobs = [job for index, job in enumerate(jobs) if index % num_tasks == task_index]
    paths.makedirs(os.path.join(output_directory, files.PARTS_DIRECTORY))
    check_statistics_method(output_directory)
    warn_about_stale_shards(output_directory, plan)
    files.write_json(os.path.join(output_directory, files.PARTS_DIRECTORY, files.PLAN_FILE), plan)
    _announce(arguments, inputs, plan, len(jobs))

    description = f"task {task_index}/{num_tasks}" if num_tasks > 1 else "converting"
    num_workers = arguments.num_workers
    if paths.scheme(output_directory) == "ram" and num_workers > 1:
        # ram:// lives in this process's memory: what a worker process writes there, no one else sees.
        logging.info("%s is in this process's memory: converting in-process, not with %d workers",
                     output_directory, num_workers)
        num_workers = 1
    done, working = _run_shards(jobs, num_workers, description)
    seconds = time.time() - start
    run = {
        **dataclasses.asdict(done),
        "seconds": round(seconds, 3),
        "conversion_seconds": round(working, 3),
        "images_per_second": round(done.converted_images / working, 2) if working > 0 else 0.0,
        "task_index": task_index,
        "num_tasks": num_tasks,
    }
    try:
        summary = merge_manifests(output_directory)
    except ConversionError as e:
        if num_tasks == 1 or isinstance(e, MixedStatisticsError):
            raise
        logging.info("Task %d of %d done; the merge waits for the other tasks: %s", task_index, num_tasks, e)
        return {**run, "complete": False, "ok": done.rejected <= arguments.max_rejects}
    summary.update({key: value for key, value in run.items() if key not in ("written", "rejected")})
    files.write_json(os.path.join(output_directory, records.SUMMARY_FILE), summary)
    _report_outputs(output_directory, summary, done, seconds)
    return summary
