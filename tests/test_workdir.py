"""The work directory's contract: file names, the config and its resume check, checkpoints, logs,
the summary and the statistics that travel with a model.

``load_model`` (a workdir's model.keras or its latest checkpoint) is tested with a trained model
in tests/test_evaluation.py; the whole layout a run writes in tests/test_training.py.
"""

from __future__ import annotations

import json
import logging as python_logging

import numpy as np
import pytest
import tensorflow as tf

from alexnet_tf import records
from alexnet_tf import workdir as workdir_lib
from alexnet_tf.config import get_config
from alexnet_tf.statistics import imagenet_statistics


def test_config_round_trip_and_a_fresh_run_may_change_anything(tmp_path):
    config = get_config("tiny", epochs=3)
    path = workdir_lib.write_config(config, str(tmp_path), resuming=False)
    assert path == str(tmp_path / "config.json")
    assert workdir_lib.read_config(str(tmp_path)) == config
    # A .keras file in the workdir finds the same configuration beside it.
    assert workdir_lib.read_config(str(tmp_path / workdir_lib.MODEL_FILE)) == config
    wider = config.replace(width=0.25)
    workdir_lib.write_config(wider, str(tmp_path), resuming=False)  # no checkpoints: nothing to keep
    assert workdir_lib.read_config(str(tmp_path)) == wider


def test_resuming_refuses_another_model_shape_and_accepts_other_settings(tmp_path, caplog):
    config = get_config("tiny", epochs=3)
    workdir_lib.write_config(config, str(tmp_path), resuming=False)
    with pytest.raises(ValueError, match=r"config.json.*width=0.125, not width=0.25.*--workdir"):
        workdir_lib.write_config(config.replace(width=0.25), str(tmp_path), resuming=True)
    assert workdir_lib.read_config(str(tmp_path)) == config  # left as it was
    with caplog.at_level(python_logging.WARNING, logger="absl"):
        workdir_lib.write_config(config.replace(epochs=5), str(tmp_path), resuming=True)
    assert "changed configuration" in caplog.text
    assert workdir_lib.read_config(str(tmp_path)).epochs == 5


def test_a_directory_without_config_names_the_file_and_the_flag(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config.json not found: --checkpoint"):
        workdir_lib.read_config(str(tmp_path))


def test_the_chief_keeps_its_checkpoints_and_other_workers_keep_none(tmp_path):
    value, step = tf.Variable(1.0), tf.Variable(0, dtype=tf.int64)
    checkpoint = tf.train.Checkpoint(value=value)
    chief = workdir_lib.Checkpoints(checkpoint, step, str(tmp_path), chief=True)
    assert chief.latest() is None and workdir_lib.latest_checkpoint(str(tmp_path)) is None
    for _ in range(workdir_lib.CHECKPOINTS_TO_KEEP + 1):
        step.assign_add(1)
        path = chief.save()
    assert path.startswith(str(tmp_path / workdir_lib.CHECKPOINT_DIR))
    assert chief.latest() == path == workdir_lib.latest_checkpoint(str(tmp_path))
    assert len(tf.train.get_checkpoint_state(chief.directory).all_model_checkpoint_paths) == 3
    worker = workdir_lib.Checkpoints(checkpoint, step, str(tmp_path), chief=False, task_id=1)
    value.assign(2.0)
    worker.save()
    assert not (tmp_path / ".worker_1_checkpoints").exists()
    assert worker.latest() == path  # what a restart resumes from is the chief's
    assert tf.train.load_variable(path, "value/.ATTRIBUTES/VARIABLE_VALUE") == 1.0


def test_tensorboard_scalars_go_to_the_chiefs_logs_only(tmp_path):
    writers = workdir_lib.summary_writers(str(tmp_path / "chief"), chief=True)
    workdir_lib.write_scalars(writers["train"], 7, {"loss": 0.5, "top1_error": 0.25})
    writers["train"].flush()
    events = list((tmp_path / "chief" / workdir_lib.LOG_DIR / "train").glob("events.out.tfevents.*"))
    values = {value.tag: (event.step, tf.make_ndarray(value.tensor))
              for event in tf.compat.v1.train.summary_iterator(str(events[0])) for value in event.summary.value}
    assert values == {"loss": (7, pytest.approx(0.5)), "top1_error": (7, pytest.approx(0.25))}
    others = workdir_lib.summary_writers(str(tmp_path / "worker"), chief=False)
    workdir_lib.write_scalars(others["validation"], 7, {"loss": 0.5})
    assert not (tmp_path / "worker").exists()


def test_summary_holds_the_figures_then_absolute_paths(tmp_path, caplog):
    summary = workdir_lib.run_summary(str(tmp_path), "/data", "ckpt-3", epochs_completed=2, val_top1_error=0.125)
    assert list(summary)[:2] == ["epochs_completed", "val_top1_error"]
    assert summary["workdir"] == str(tmp_path.resolve())
    assert summary["tensorboard"] == str(tmp_path.resolve() / workdir_lib.LOG_DIR)
    assert summary["saved_model"] is None and summary["model"] is None and summary["evaluation_report"] is None
    summary.update(global_step=10, saved_model=str(tmp_path / workdir_lib.EXPORT_DIR))
    path = workdir_lib.write_summary(summary, str(tmp_path))
    assert path == str((tmp_path / workdir_lib.SUMMARY_FILE).resolve())
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    summary["summary"] = path
    with caplog.at_level(python_logging.INFO, logger="absl"):
        workdir_lib.log_outputs(summary)
    assert "Done: 2 epochs, 10 steps; val_top1_error 0.1250" in caplog.text
    for key in ("checkpoint", "tensorboard", "saved_model", "summary"):
        assert summary[key] in caplog.text


def test_statistics_travel_with_a_model_or_are_absent(tmp_path):
    assert workdir_lib.model_statistics(str(tmp_path)) is None
    stats = imagenet_statistics()
    stats.save(str(tmp_path))
    assert (tmp_path / records.STATISTICS_FILE).exists()
    for path in (tmp_path, tmp_path / workdir_lib.MODEL_FILE):
        loaded = workdir_lib.model_statistics(str(path))
        np.testing.assert_allclose(loaded.mean_rgb, stats.mean_rgb)


def test_layout_names_are_the_documented_ones(tmp_path):
    assert (workdir_lib.CONFIG_FILE, workdir_lib.CHECKPOINT_DIR, workdir_lib.LOG_DIR, workdir_lib.MODEL_FILE,
            workdir_lib.EXPORT_DIR, workdir_lib.REPORT_DIR, workdir_lib.SUMMARY_FILE, workdir_lib.DATA_DIR) == (
        "config.json", "checkpoints", "logs", "model.keras", "saved_model/1", "evaluation", "summary.json", "data")
    layout = workdir_lib.describe_layout(str(tmp_path))
    assert layout.startswith(str(tmp_path.resolve()))
    assert all(name in layout for name in ("checkpoints/", "logs/", "model.keras", "saved_model/1/", "summary.json"))
