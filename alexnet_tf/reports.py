"""The evaluation's report (``report.json``, ``report.md``) and the class names it and the export use.

``evaluation.evaluate`` computes the numbers (``metrics.summarize`` per view); this module puts
them beside the paper's section 6 results and writes them, and reads the label files that name
the classes (the converter's ``synsets.txt`` and ``metadata.txt``, or ImageNet's shipped ones).
"""

from __future__ import annotations

import os
from typing import Any

from absl import logging

from alexnet_tf import imagenet, paths
from alexnet_tf.records import METADATA_FILE, SYNSETS_FILE
from alexnet_tf.workdir import CURVES_FILE

WORST_CLASSES = 10
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
# Section 6 of the paper: one CNN, 10-crop test.
PAPER_RESULTS = {
    "ILSVRC-2012 validation, one CNN": {"top1_error": 0.407, "top5_error": 0.182},
    "ILSVRC-2010 test, one CNN": {"top1_error": 0.375, "top5_error": 0.170},
}


def class_labels(num_classes: int, synsets_file: str | None = None) -> tuple[list[str], list[str]]:
    """``(wnids, names)`` in label order: from ``synsets_file``, or ImageNet's 1000 classes.

    Names come from a ``metadata.txt`` (``wnid<TAB>name``) beside ``synsets_file`` when there is
    one (the converter writes it beside its shards, e.g. for the built-in data set's made-up wnids),
    else from the shipped ImageNet metadata; a wnid without a name stands for itself.

    Raises:
      ValueError: naming the file when it does not list ``num_classes`` wnids, or when no file
        is given for a model that does not have 1000 classes.
    """
    if synsets_file is None and num_classes != 1000:
        raise ValueError(
            f"the model has {num_classes} classes, not ImageNet's 1000: pass --synsets, a file listing "
            "its wnids in label order"
        )
    wnids = imagenet.load_synsets(synsets_file)
    if len(wnids) != num_classes:
        raise ValueError(f"{synsets_file or imagenet.DEFAULT_SYNSETS_FILE} lists {len(wnids)} wnids, "
                         f"the model has {num_classes} classes")
    beside = os.path.join(os.path.dirname(synsets_file), METADATA_FILE) if synsets_file else ""
    metadata = imagenet.load_metadata(beside if beside and paths.exists(beside) else None)
    return wnids, [metadata.get(wnid, wnid) for wnid in wnids]


def data_class_labels(num_classes: int, data_dir: str) -> tuple[list[str], list[str]]:
    """``(wnids, names)`` for the export: beside the shards, else ImageNet's, else ``class_i``."""
    synsets = os.path.join(data_dir, SYNSETS_FILE) if data_dir else ""
    if synsets and paths.exists(synsets):
        try:
            return class_labels(num_classes, synsets)
        except ValueError as e:
            logging.warning("%s; ignoring it", e)
    if num_classes == 1000:
        return class_labels(1000)
    labels = imagenet.fallback_class_names(num_classes)
    return labels, labels



def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


_SPLIT_WORDS = {"holdout": "held-out selection"}  # a report's split, when it is not the validation split


def report_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: errors beside the paper's, slowest classes, confused pairs."""
    lines = [
        "# Evaluation",
        "",
        f"{report['num_images']} {_SPLIT_WORDS.get(report.get('split'), 'validation')} images of "
        f"{report['num_classes']} classes from `{report['data_dir']}`.",
        *(["", f"**{report['split_note']}**"] if report.get("split_note") else []),
        *(["", f"The model was trained on squashed images; these records were resized by: "
               f"{report['records_resize_mode']}."] if "records_resize_mode" in report else []),
        "",
        "| | top-1 error | top-5 error | images/s |",
        "|---|---|---|---|",
    ]
    for key, label in (("center_crop", "this model, centre crop"), ("ten_crop", "this model, 10 crops")):
        if key in report:
            result = report[key]
            lines.append(f"| {label} | {_percent(result['top1_error'])} | {_percent(result['top5_error'])} "
                         f"| {result['images_per_second']:.1f} |")
    for label, result in report["paper"].items():
        lines.append(f"| paper, {label}, 10 crops | {_percent(result['top1_error'])} "
                     f"| {_percent(result['top5_error'])} | |")
    if report.get("curves"):
        lines += ["", f"Training curves: [{report['curves']}]({report['curves']})"]
    if report["num_classes"] != 1000 or report["num_images"] != 50_000:
        lines += ["", "The paper's figures are for the 50,000 ILSVRC-2012 validation images of 1000 classes; "
                  "this evaluation is not on that set, so the rows are not comparable."]
    headline = report.get("ten_crop", report["center_crop"])
    view = "10 crops" if "ten_crop" in report else "centre crop"
    ranked = sorted((c for c in headline["per_class"] if c["accuracy"] is not None),
                    key=lambda c: (c["accuracy"], c["class"]))
    lines += ["", f"## Least accurate classes ({view})", "", "| class | name | images | top-1 accuracy |",
              "|---|---|---|---|"]
    lines += [f"| {c['class']} | {c['name']} | {c['images']} | {_percent(c['accuracy'])} |"
              for c in ranked[:WORST_CLASSES]]
    lines += ["", f"## Most confused pairs ({view})", "", "| true class | predicted as | images | share of the class |",
              "|---|---|---|---|"]
    lines += [f"| {p['true_name']} | {p['predicted_name']} | {p['count']} | {_percent(p['share_of_true_class'])} |"
              for p in headline["most_confused"]]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], report_dir: str) -> None:
    """Writes ``report.json`` and ``report.md`` to ``report_dir``, linking the run's curves if drawn."""
    paths.makedirs(report_dir)
    # The run's curves (curves.py) beside the report or in the work directory that holds it.
    for directory in (report_dir, os.path.dirname(paths.absolute(report_dir))):
        if paths.exists(os.path.join(directory, CURVES_FILE)):
            report["curves"] = os.path.relpath(os.path.join(directory, CURVES_FILE), report_dir)
            break
    paths.write_json(os.path.join(report_dir, REPORT_JSON), report)
    paths.write_text(os.path.join(report_dir, REPORT_MD), report_markdown(report))
    logging.info("Wrote %s and %s to %s", REPORT_JSON, REPORT_MD, report_dir)
