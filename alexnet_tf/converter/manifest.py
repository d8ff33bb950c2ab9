"""The run's output files, merged from the shards' records: manifest, summary, class lists.

:func:`merge_manifests` checks that every shard of the plan is there and matches its record,
then writes ``manifest.json``, ``summary.json``, ``rejects.txt``, ``synsets.txt``,
``metadata.txt`` and (with training images) the dataset statistics. With ``num_tasks > 1``
each task of a job array writes a disjoint set of shards and the merge checks the whole set.
"""

from __future__ import annotations

import collections
import dataclasses
import fnmatch
import os
from typing import Any

from absl import logging

from alexnet_tf import paths, records, statistics
from alexnet_tf.converter import files
from alexnet_tf.converter.image import STATISTICS_METHOD, STATISTICS_SIZE
from alexnet_tf.converter.listing import ConversionError
from alexnet_tf.converter.shards import ShardPart, statistics_accumulator

_SUMMED = ("files", "records", "rejected", "bytes_in", "bytes", "misnamed")


class MixedStatisticsError(ConversionError):
    """Shards whose statistics were sampled by another method than this converter's."""


def _mixed_methods_message(output_directory: str, found: str, method: int) -> str:
    return (
        f"{output_directory}: {found} sampled by statistics method {method}, and this converter "
        f"uses method {STATISTICS_METHOD}; the statistics must come from one method. Convert into a new "
        f"--output_directory, or delete {os.path.join(output_directory, files.PARTS_DIRECTORY)} "
        "to convert every shard again"
    )


def check_statistics_method(output_directory: str) -> None:
    """Refuses to resume a conversion whose plan sampled the statistics by another method.

    Raises:
      MixedStatisticsError: naming the directory, the two methods and what to do.
    """
    plan = files.read_json(os.path.join(output_directory, files.PARTS_DIRECTORY, files.PLAN_FILE))
    if not isinstance(plan, dict) or records.TRAIN_PREFIX not in plan.get("splits", {}):
        return
    method = plan.get("statistics_method", 1)  # plans written before the method was recorded
    if method != STATISTICS_METHOD:
        raise MixedStatisticsError(_mixed_methods_message(output_directory, "its training shards were", method))


def is_converted(output_directory: str) -> bool:
    """Whether ``output_directory`` holds a finished conversion (manifest and class names)."""
    return all(
        paths.exists(os.path.join(output_directory, name)) for name in (records.MANIFEST_FILE, records.METADATA_FILE)
    )


def warn_about_stale_shards(output_directory: str, plan: dict[str, Any]) -> None:
    """Logs shards of another shard count left in ``output_directory`` by an earlier run."""
    expected = {
        records.shard_name(split, i, info["num_shards"])
        for split, info in plan["splits"].items()
        for i in range(info["num_shards"])
    }
    # Names, not a glob: the output directory's own name may hold glob characters.
    names = sorted(files.listdir(output_directory)) if paths.isdir(output_directory) else []
    for split in plan["splits"]:
        stale = [
            os.path.join(output_directory, name)
            for name in fnmatch.filter(names, f"{split}-*-of-*")
            if name not in expected and ".tmp-" not in name
        ]
        if stale:
            logging.warning(
                "%s holds %d %s shards of another shard count (e.g. %s); they are not in the manifest",
                output_directory,
                len(stale),
                split,
                stale[0],
            )


@dataclasses.dataclass
class _SplitMerge:
    """One split's shards and sums, as found in the parts records."""

    shards: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    totals: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    kinds: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    classes: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    rejects_lines: list[str] = dataclasses.field(default_factory=list)
    worker_seconds: float = 0.0

    def add(self, split: str, part: ShardPart) -> None:
        self.shards.append({"name": part.name, "records": part.records, "bytes": part.bytes, "sha256": part.sha256})
        self.totals.update({key: getattr(part, key) for key in _SUMMED})
        self.worker_seconds += part.seconds
        self.kinds.update(part.kinds)
        self.classes.update(part.classes)
        self.rejects_lines.extend(f"{split}\t{path}\t{reason}\n" for path, reason in part.rejects)


def _load_part(output_directory: str, name: str, fingerprint: str) -> ShardPart | None:
    """The shard's record when the shard is there, matches it and belongs to this plan."""
    part = ShardPart.load(os.path.join(output_directory, files.PARTS_DIRECTORY, name + ".json"))
    path = os.path.join(output_directory, name)
    if part is None or part.fingerprint != fingerprint or not paths.exists(path):
        return None
    return part if paths.size(path) == part.bytes else None


def _split_summary(info: dict[str, Any], merged: _SplitMerge, synsets: list[str]) -> dict[str, Any]:
    totals = merged.totals
    return {
        "directory": info["directory"],
        "files_found": totals["files"],
        "written": totals["records"],
        "rejected": totals["rejected"],
        "ignored_files": len(info["ignored"]),
        "ignored_examples": info["ignored"][:10],
        "bytes_in": totals["bytes_in"],
        "bytes_out": totals["bytes"],
        "worker_seconds": round(merged.worker_seconds, 3),
        "kinds": dict(sorted(merged.kinds.items())),
        "misnamed": totals["misnamed"],
        "missing_classes": info["missing_classes"],
        "class_counts": {wnid: merged.classes[wnid] for wnid in synsets if merged.classes[wnid]},
    }


def _write_class_files(output_directory: str, synsets: list[str], texts: dict[str, str]) -> None:
    """``synsets.txt`` (label order) and ``metadata.txt`` (wnid<TAB>name), for the readers."""
    synsets_text = "".join(wnid + "\n" for wnid in synsets)
    files.write_atomically(os.path.join(output_directory, records.SYNSETS_FILE), synsets_text.encode("utf-8"))
    metadata_text = "".join(f"{wnid}\t{texts.get(wnid, wnid)}\n" for wnid in synsets)
    files.write_atomically(os.path.join(output_directory, records.METADATA_FILE), metadata_text.encode("utf-8"))


def merge_manifests(output_directory: str) -> dict[str, Any]:
    """Checks that every shard of the plan is complete and writes the run's output files.

    Writes ``manifest.json``, ``summary.json``, ``rejects.txt``, ``synsets.txt``,
    ``metadata.txt`` and (when there are training images) the dataset statistics, from the
    ``.parts`` records of all tasks.

    Returns:
      The summary.

    Raises:
      ConversionError: naming the shards that are missing or do not match their record.
    """
    parts_directory = os.path.join(output_directory, files.PARTS_DIRECTORY)
    plan = files.read_json(os.path.join(parts_directory, files.PLAN_FILE))
    if plan is None:
        raise ConversionError(
            f"{output_directory}: no {files.PARTS_DIRECTORY}/{files.PLAN_FILE}; run the converter first"
        )
    synsets, num_tasks = plan["synsets"], plan["num_tasks"]
    manifest: dict[str, Any] = {
        "format_version": files.FORMAT_VERSION,
        "options": plan["options"],
        "num_classes": len(synsets),
        "synsets_file": records.SYNSETS_FILE,
        "splits": {},
    }
    summary: dict[str, Any] = {"splits": {}}
    accumulator = statistics_accumulator()
    missing, global_index, rejects_lines = [], 0, []
    for split, info in plan["splits"].items():
        merged = _SplitMerge()
        for index, fingerprint in enumerate(info["fingerprints"]):
            name = records.shard_name(split, index, info["num_shards"])
            part = _load_part(output_directory, name, fingerprint)
            if part is None:
                missing.append(f"{name} (task {global_index % num_tasks})")
            else:
                merged.add(split, part)
                if split == records.TRAIN_PREFIX and part.statistics_method != STATISTICS_METHOD:
                    found = f"{name} (task {global_index % num_tasks}) was"
                    raise MixedStatisticsError(_mixed_methods_message(output_directory, found, part.statistics_method))
                if split == records.TRAIN_PREFIX and not missing:
                    npz = os.path.join(parts_directory, name + ".npz")
                    accumulator.merge(statistics.StatisticsAccumulator.load(npz))
            global_index += 1
        totals = merged.totals
        if totals["files"] != totals["records"] + totals["rejected"] and not missing:
            raise ConversionError(
                f"{output_directory}: {split} shards account for {totals['records']} + {totals['rejected']} "
                f"of {totals['files']} files; re-run the converter"
            )
        rejects_lines.extend(merged.rejects_lines)
        manifest["splits"][split] = {
            "num_shards": info["num_shards"],
            "num_records": totals["records"],
            "shards": merged.shards,
        }
        summary["splits"][split] = _split_summary(info, merged, synsets)
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
    files.write_atomically(os.path.join(output_directory, records.REJECTS_FILE), "".join(rejects_lines).encode("utf-8"))
    _write_class_files(output_directory, synsets, plan["texts"])
    if accumulator.num_images:
        accumulator.result(source=output_directory, mean_image_size=STATISTICS_SIZE).save(output_directory)
        manifest["statistics_file"] = records.STATISTICS_FILE
        manifest["statistics_method"] = STATISTICS_METHOD
    files.write_json(os.path.join(output_directory, records.MANIFEST_FILE), manifest)
    files.write_json(os.path.join(output_directory, records.SUMMARY_FILE), summary)
    return summary
