"""Learning curves: drawn from the figures training logged, equal to them, with the lr drops marked."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from alexnet_tf import curves
from alexnet_tf import workdir as workdir_lib
from alexnet_tf.reports import REPORT_MD, write_report
from tests.support import ROOT, run_python

STEPS = 4  # per epoch
RATES = {1: 0.01, 2: 0.01, 3: 0.001, 4: 0.001, 5: 0.0001, 6: 0.0001}  # epoch -> learning rate


def _train_figures(step: int) -> dict[str, float]:
    # Distinct per step, so that any off-by-one in grouping steps into epochs changes a mean.
    epoch = (step - 1) // STEPS + 1
    return {"loss": 3.0 / step + 0.01 * (step % 3), "top1_error": 0.9 - 0.01 * step,
            "top5_error": 0.5 - 0.005 * step, "lr": RATES[epoch], "images_per_second": 100.0 + step}


def _validation_figures(epoch: int) -> dict[str, float]:
    return {"loss": 2.5 / epoch, "top1_error": 0.8 - 0.1 * epoch, "top5_error": 0.4 - 0.05 * epoch}


def _log(workdir: str, epochs: range, partial_steps: int = 0) -> None:
    """Logs as training does (its writers), for whole epochs and then ``partial_steps`` more."""
    writers = workdir_lib.summary_writers(workdir, chief=True)
    for epoch in epochs:
        for step in range((epoch - 1) * STEPS + 1, epoch * STEPS + 1):
            workdir_lib.write_scalars(writers["train"], step, _train_figures(step))
        workdir_lib.write_scalars(writers["validation"], epoch * STEPS, _validation_figures(epoch))
    for step in range(epochs[-1] * STEPS + 1, epochs[-1] * STEPS + 1 + partial_steps):
        workdir_lib.write_scalars(writers["train"], step, _train_figures(step))
    for writer in writers.values():
        writer.flush()
        writer.close()


def test_curves_plot_exactly_the_logged_figures(tmp_path):
    workdir = str(tmp_path / "run")
    _log(workdir, range(1, 6), partial_steps=2)  # epoch 6 is under way: not a training point yet
    drawn = curves.draw_curves(workdir)
    assert drawn.path == os.path.join(workdir, curves.CURVES_FILE)
    with Image.open(drawn.path) as image:
        assert image.format == "PNG" and image.size == curves.PIXELS == (1200, 450)
        # Not a blank canvas: lines and text in several colours.
        assert len(np.unique(np.asarray(image.convert("RGB")).reshape(-1, 3), axis=0)) > 20
    assert drawn.steps_per_epoch == STEPS  # found from the validation steps
    epochs = np.arange(1, 6)
    for tag, label, scale in (("loss", "loss", 1.0), ("top1_error", "top-1 error", 100.0),
                              ("top5_error", "top-5 error", 100.0)):
        x, y = drawn.lines[f"validation {label}"]
        np.testing.assert_array_equal(x, epochs)
        np.testing.assert_allclose(y, [scale * _validation_figures(e)[tag] for e in epochs], rtol=1e-6)
        x, y = drawn.lines[f"training {label}"]
        np.testing.assert_array_equal(x, epochs)
        means = [scale * np.mean([_train_figures(s)[tag] for s in range((e - 1) * STEPS + 1, e * STEPS + 1)])
                 for e in epochs]
        np.testing.assert_allclose(y, means, rtol=1e-6)
    # Training ran at 0.001 from epoch 3 and 0.0001 from epoch 5: drops after epochs 2 and 4.
    assert [e for e, _ in drawn.lr_drops] == [2, 4]
    np.testing.assert_allclose([r for _, r in drawn.lr_drops], [0.001, 0.0001], rtol=1e-6)


def test_points_of_loops_count_by_the_steps_they_cover(tmp_path):
    """Training logs one point per loop of steps (its mean); a short last loop weighs less."""
    workdir = str(tmp_path / "run")
    writers = workdir_lib.summary_writers(workdir, chief=True)
    for epoch in (1, 2):
        first = (epoch - 1) * STEPS + 1
        for loop in (range(first, first + 3), range(first + 3, first + STEPS)):  # 3 steps, then 1
            figures = {tag: np.mean([_train_figures(s)[tag] for s in loop]) for tag in ("loss", "top1_error")}
            workdir_lib.write_scalars(writers["train"], loop[-1], {**figures, "top5_error": 0.5, "lr": 0.01})
        workdir_lib.write_scalars(writers["validation"], epoch * STEPS, _validation_figures(epoch))
    # Epoch 3 under way: one loop logged, its end not reached.
    workdir_lib.write_scalars(writers["train"], 2 * STEPS + 3, {"loss": 9.0, "top1_error": 0.5})
    for writer in writers.values():
        writer.close()
    drawn = curves.draw_curves(workdir)
    x, y = drawn.lines["training loss"]
    np.testing.assert_array_equal(x, [1, 2])
    per_step = [np.mean([_train_figures(s)["loss"] for s in range((e - 1) * STEPS + 1, e * STEPS + 1)])
                for e in (1, 2)]
    np.testing.assert_allclose(y, per_step, rtol=1e-6)
    # Not the plain mean of the two points of an epoch: the weighting is what makes it right.
    loops = [np.mean([_train_figures(s)["loss"] for s in range(1, 4)]), _train_figures(4)["loss"]]
    assert abs(np.mean(loops) - per_step[0]) > 1e-3


def test_a_resumed_run_keeps_the_figures_logged_last(tmp_path):
    """A run killed after epoch 2's checkpoint logged epoch 3 twice; the resumed values count."""
    workdir = str(tmp_path / "run")
    _log(workdir, range(1, 3), partial_steps=3)  # killed 3 steps into epoch 3
    writers = workdir_lib.summary_writers(workdir, chief=True)  # the resumed run: new event files
    for step in range(2 * STEPS + 1, 3 * STEPS + 1):
        workdir_lib.write_scalars(writers["train"], step, {**_train_figures(step), "loss": 7.0})
    workdir_lib.write_scalars(writers["validation"], 3 * STEPS, _validation_figures(3))
    for writer in writers.values():
        writer.close()
    drawn = curves.draw_curves(workdir, steps_per_epoch=STEPS)
    x, y = drawn.lines["training loss"]
    np.testing.assert_array_equal(x, [1, 2, 3])
    assert y[2] == pytest.approx(7.0)
    np.testing.assert_array_equal(drawn.lines["validation loss"][0], [1, 2, 3])


def test_the_report_links_the_curves_of_its_run(tmp_path):
    workdir = tmp_path / "run"
    _log(str(workdir), range(1, 3))
    report = {"num_images": 2, "num_classes": 2, "data_dir": "d", "paper": {},
              "center_crop": {"top1_error": 0.5, "top5_error": 0.0, "images_per_second": 1.0,
                              "per_class": [], "most_confused": []}}
    write_report(dict(report), str(workdir / "evaluation"))
    assert "curves" not in (workdir / "evaluation" / REPORT_MD).read_text()
    curves.draw_curves(str(workdir))
    write_report(dict(report), str(workdir / "evaluation"))
    assert "[../curves.png](../curves.png)" in (workdir / "evaluation" / REPORT_MD).read_text()


def test_no_logs_is_a_clear_error_and_skipped_at_the_end_of_a_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="logs/train"):
        curves.draw_curves(str(tmp_path))
    assert curves.draw_run_curves(str(tmp_path), steps_per_epoch=4) is None
    assert not (tmp_path / curves.CURVES_FILE).exists()


def test_evaluate_py_curves_draws_from_the_logs_alone(tmp_path):
    """``evaluate.py --curves --checkpoint=WORKDIR``: the picture, with no model or data needed."""
    workdir = tmp_path / "run"
    _log(str(workdir), range(1, 4))
    command = [str(ROOT / "evaluate.py"), "--curves", f"--checkpoint={workdir}"]
    result = run_python(command, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    with Image.open(workdir / curves.CURVES_FILE) as image:
        assert image.size == curves.PIXELS
    assert "learning rate drops after epochs [2]" in result.stderr
