"""Learning curves of a run, drawn from the metrics it logged: ``<workdir>/curves.png``.

Training writes its metrics as TensorBoard events (``logs/train``: each loop of steps' mean loss,
top-1 and top-5 error and learning rate, at the loop's last global step; ``logs/validation``: the
same errors and loss at the end of each epoch, at the epoch's last global step). This module reads
those events back, without the tensorboard package, and draws loss and error against epochs with
the learning-rate drops marked, the way section 5 of the paper describes its schedule. Nothing is
recomputed: the validation points are the logged ones, and a training epoch's point is the mean
of its logged metrics, each weighted by the steps since the epoch's previous point (loops never
cross an epoch's end, and every step has a full batch, so that is the epoch's figure).
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
import tensorflow as tf
from absl import logging
from tensorflow.core.util import event_pb2

from alexnet_tf import paths
from alexnet_tf.workdir import CONFIG_FILE, CURVES_FILE, LOG_DIR

# The per-epoch check logs the selection split (holdout) when the records have one, else validation.
SPLITS = ("train", "validation", "holdout")
FIGURE_INCHES = (12.0, 4.5)
DPI = 100
PIXELS = (int(FIGURE_INCHES[0] * DPI), int(FIGURE_INCHES[1] * DPI))  # width, height of the PNG
COLOURS = {"train": "tab:blue", "validation": "tab:orange", "holdout": "tab:green"}
NAMES = {"train": "training", "validation": "validation", "holdout": "held-out selection"}
DROP_COLOUR = "0.4"


@dataclasses.dataclass
class Curves:
    """What ``draw_curves`` drew.

    Attributes:
      path: the PNG.
      steps_per_epoch: training steps in one epoch.
      lines: every plotted line by its legend label (``"training loss"``, ``"validation top-1
        error"``, ...): ``(epochs, values)``, errors in percent, exactly as drawn.
      lr_drops: ``(epoch, new rate)`` for each change of the learning rate: epoch ``e`` is the
        boundary after which training ran at the new rate.
    """

    path: str
    steps_per_epoch: int
    lines: dict[str, tuple[np.ndarray, np.ndarray]]
    lr_drops: list[tuple[int, float]]


def read_scalars(log_dir: str) -> dict[str, dict[int, float]]:
    """Every scalar in the event files of ``log_dir``: ``{tag: {global step: value}}``.

    A resumed run logs again the steps it trained after its last checkpoint; the value written
    last (by wall time) is the one kept, as it belongs to the run that went on.
    """
    events = []
    for path in sorted(tf.io.gfile.glob(os.path.join(log_dir, "events.out.tfevents.*"))):
        try:
            for record in tf.data.TFRecordDataset(path):
                event = event_pb2.Event.FromString(record.numpy())
                for value in event.summary.value:
                    if value.HasField("tensor"):
                        number = float(tf.make_ndarray(value.tensor))
                    else:
                        number = float(value.simple_value)
                    events.append((event.wall_time, value.tag, int(event.step), number))
        except tf.errors.DataLossError:
            # The file of a run still writing (or killed) may end in a partial record.
            logging.warning("%s ends in a partial record; using the events before it", path)
    scalars: dict[str, dict[int, float]] = {}
    for _, tag, step, number in sorted(events, key=lambda e: e[0]):
        scalars.setdefault(tag, {})[step] = number
    return scalars


def _checked_split(logged: dict[str, dict[str, dict[int, float]]]) -> str:
    """The split the per-epoch check logged: the selection split when there was one."""
    return "holdout" if logged.get("holdout", {}).get("loss") else "validation"


def _steps_per_epoch(workdir: str, validation_steps: list[int]) -> int:
    # The per-epoch check is logged at the last global step of each epoch: multiples of one epoch.
    if validation_steps:
        return math.gcd(*validation_steps)
    config_path = os.path.join(workdir, CONFIG_FILE)
    if paths.exists(config_path):
        steps = int(paths.read_json(config_path).get("steps_per_epoch", 0))
        if steps:
            return steps
    raise ValueError(f"{os.path.join(workdir, LOG_DIR, 'validation')} holds no validation metrics and "
                     f"{config_path} no steps_per_epoch: pass steps_per_epoch to place the steps in epochs")


def epoch_metrics(
    workdir: str, steps_per_epoch: int | None = None
) -> tuple[int, dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], list[tuple[int, float]]]:
    """The run's logged metrics per epoch.

    Args:
      workdir: the run's work directory (``logs/train``, ``logs/validation`` inside).
      steps_per_epoch: training steps per epoch; default from the validation log.

    Returns:
      ``(steps_per_epoch, metrics, lr_drops)``: ``metrics[split][tag] = (epochs, values)``, the
      training values being the means of each complete epoch's steps; ``lr_drops`` as in
      ``Curves``.

    Raises:
      FileNotFoundError: naming the log directory when it holds no training metrics.
    """
    logged = {split: read_scalars(os.path.join(workdir, LOG_DIR, split)) for split in SPLITS}
    if not logged["train"].get("loss"):
        raise FileNotFoundError(f"{os.path.join(workdir, LOG_DIR, 'train')} holds no logged training loss: "
                                "is this a training work directory?")
    validation_steps = sorted(logged[_checked_split(logged)].get("loss", {}))
    steps = steps_per_epoch or _steps_per_epoch(workdir, validation_steps)
    metrics: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {split: {} for split in SPLITS}
    for tag in ("loss", "top1_error", "top5_error"):
        by_epoch: dict[int, list[tuple[int, float]]] = {}
        for step, value in logged["train"].get(tag, {}).items():
            by_epoch.setdefault((step - 1) // steps + 1, []).append((step, value))
        means = {}
        for epoch, points in by_epoch.items():
            points.sort()
            if points[-1][0] == epoch * steps:  # else the epoch is under way
                covered = np.diff([(epoch - 1) * steps] + [step for step, _ in points])
                means[epoch] = np.average([value for _, value in points], weights=covered)
        complete = sorted(means)
        metrics["train"][tag] = (np.array(complete, np.float64),
                                 np.array([means[e] for e in complete], np.float64))
        for split in ("validation", "holdout"):
            points = sorted(logged[split].get(tag, {}).items())
            metrics[split][tag] = (np.array([s / steps for s, _ in points], np.float64),
                                   np.array([v for _, v in points], np.float64))
    drops = []
    rates = sorted(logged["train"].get("lr", {}).items())
    for (_, before), (step, after) in zip(rates, rates[1:]):
        if not math.isclose(before, after, rel_tol=1e-4):
            drops.append(((step - 1) // steps, float(f"{after:.6g}")))  # logged as float32
    return steps, metrics, drops


def draw_curves(workdir: str, steps_per_epoch: int | None = None, path: str | None = None) -> Curves:
    """Draws ``<workdir>/curves.png``: loss, and top-1/top-5 error, against epochs.

    Args:
      workdir: a training work directory.
      steps_per_epoch: training steps per epoch; default from the validation log.
      path: where the PNG goes; default ``<workdir>/curves.png``.

    Returns:
      What was drawn (``Curves``).
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator

    steps, metrics, drops = epoch_metrics(workdir, steps_per_epoch)
    path = path or os.path.join(workdir, CURVES_FILE)
    figure, (loss_axes, error_axes) = plt.subplots(1, 2, figsize=FIGURE_INCHES, dpi=DPI)
    names = NAMES
    lines: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def plot(axes, split, tag, label, scale=1.0, **style):
        epochs, values = metrics[split][tag]
        if len(epochs):
            axes.plot(epochs, values * scale, label=label, color=COLOURS[split],
                      marker="o" if len(epochs) < 30 else None, markersize=3, **style)
            lines[label] = (epochs, values * scale)

    for split in SPLITS:
        plot(loss_axes, split, "loss", f"{names[split]} loss")
        plot(error_axes, split, "top1_error", f"{names[split]} top-1 error", 100.0)
        plot(error_axes, split, "top5_error", f"{names[split]} top-5 error", 100.0, linestyle="--")
    for axes in (loss_axes, error_axes):
        for epoch, _ in drops:
            axes.axvline(epoch, color=DROP_COLOUR, linestyle=":", linewidth=1)
        axes.set_xlabel("epoch")
        axes.set_xlim(0, max([1.0] + [float(epochs[-1]) for epochs, _ in lines.values() if len(epochs)]) + 0.5)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        for epoch, rate in drops:
            axes.annotate(f"lr {rate:g}", xy=(epoch, 1.0), xycoords=("data", "axes fraction"), xytext=(2, -4),
                          textcoords="offset points", rotation=90, ha="left", va="top", fontsize=8,
                          color=DROP_COLOUR)
        axes.legend(loc="best", fontsize=8)
    loss_axes.set_ylabel("cross-entropy loss")
    loss_axes.set_title("Loss (dotted: learning rate divided by 10)")
    error_axes.set_ylabel("error (%)")
    error_axes.set_ylim(0, 100)
    error_axes.set_title("Top-1 and top-5 error")
    checked = "holdout" if len(metrics["holdout"]["top1_error"][1]) else "validation"
    final = metrics[checked]["top1_error"][1]
    summary = f", last {names[checked]} top-1 error {100 * final[-1]:.1f} %" if len(final) else ""
    figure.suptitle(f"{os.path.basename(paths.absolute(workdir).rstrip('/'))}: {steps} steps per epoch{summary}",
                    fontsize=10)
    figure.tight_layout()
    paths.save_figure(figure, path, dpi=DPI)
    plt.close(figure)
    logging.info("Wrote %s", path)
    return Curves(path=path, steps_per_epoch=steps, lines=lines, lr_drops=drops)


def draw_run_curves(workdir: str, steps_per_epoch: int) -> str | None:
    """``draw_curves`` at the end of a run: the PNG's path, or None when nothing was logged."""
    try:
        return paths.absolute(draw_curves(workdir, steps_per_epoch).path)
    except FileNotFoundError as e:
        logging.warning("%s; no %s drawn", e, CURVES_FILE)
        return None
