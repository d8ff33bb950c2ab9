"""Object storage paths: every file through tf.io.gfile, tried on TensorFlow's in-process ram://.

``ram://`` goes through the same ``tf.io.gfile`` layer as ``gs://``, so a run whose data and work
directory are on ``ram://`` shows what a run on a bucket would read and write: the converter's
outputs, the statistics and manifest the pipeline reads, the work directory (config,
checkpoints, logs, summary, model, report, SavedModel, curves) and figures. Each test uses its own
``ram://`` root: the file system lives as long as the test process.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
import uuid

import keras
import numpy as np
import pytest
import tensorflow as tf

from alexnet_tf import (
    converter,
    data,
    evaluation,
    export,
    figures,
    paths,
    records,
    reports,
    sources,
    statistics,
    training,
)
from alexnet_tf import workdir as workdir_lib
from alexnet_tf.config import get_config
from tests.support import ROOT, run_python
from tests.support.converted import SHAPES

# Figures of a report that are measured, not computed: they differ between any two runs.
TIMINGS = ("seconds", "images_per_second", "ten_crop_vs_centre_cost")


def _ram(name: str) -> str:
    """A fresh ``ram://`` directory, so tests in one process never see each other's files."""
    return f"ram://{uuid.uuid4().hex}/{name}"


def _no_local_ram_folder(*directories: pathlib.Path | str) -> None:
    """The failure the issue found: ``ram://x`` made into a local folder ``ram:``."""
    for directory in {os.getcwd(), str(ROOT), tempfile.gettempdir(), *map(str, directories)}:
        assert not os.path.exists(os.path.join(directory, "ram:")), directory


def _copy_tree(source: str, target: str) -> None:
    """Copies a local records directory (without the converter's bookkeeping) to ``target``."""
    tf.io.gfile.makedirs(target)
    for name in tf.io.gfile.listdir(source):
        if name != converter.PARTS_DIRECTORY:
            tf.io.gfile.copy(os.path.join(source, name), os.path.join(target, name), overwrite=True)


def _convert_shapes(jpeg_root: pathlib.Path, output_directory: str, num_workers: int) -> dict:
    """The same conversion as ``converted.convert_drawn`` of SHAPES, into ``output_directory``."""
    return converter.convert(
        train_directory=str(jpeg_root / "jpeg" / "train"),
        validation_directory=str(jpeg_root / "jpeg" / "val"),
        output_directory=output_directory,
        labels_file=str(jpeg_root / records.SYNSETS_FILE),
        metadata_file=str(jpeg_root / records.METADATA_FILE),
        train_shards=SHAPES.train_shards,
        validation_shards=SHAPES.validation_shards,
        label_offset=SHAPES.label_offset,
        num_workers=num_workers,
    )


@pytest.fixture(scope="module")
def shapes_records(converted) -> tuple[str, str]:
    """``(local records, ram:// records)``: the drawn SHAPES folders converted to both places."""
    local = converted(SHAPES)
    remote = _ram("records")
    # Two workers asked for: worker processes would not see this process's ram://, so the
    # converter must fall back to converting in-process.
    _convert_shapes(local.parent, remote, num_workers=2)
    return str(local), remote


# --------------------------------------------------------------------------------------------
# The paths module


def test_schemes_and_absolute_paths():
    assert paths.scheme("gs://bucket/run") == "gs" and paths.scheme("RAM://x") == "ram"
    assert paths.scheme("/data/run") == "" and paths.scheme("runs/a:b") == ""
    assert paths.is_local("file:///tmp/x") and not paths.is_local("ram://x")
    assert paths.absolute("gs://bucket/run") == "gs://bucket/run"
    assert paths.absolute("runs/x") == os.path.join(os.getcwd(), "runs", "x")
    assert paths.check_supported("ram://x") == "ram://x" and paths.check_supported("relative/dir") == "relative/dir"


@pytest.mark.parametrize("url", ["s3://bucket/run", "foo://x/y"])
def test_an_unsupported_scheme_names_the_path_and_what_to_install(url, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(paths.UnsupportedPathError, match=f"--workdir={url}") as raised:
        paths.check_supported(url, "--workdir")
    message = str(raised.value)
    assert "tensorflow-io" in message and "gs://" in message
    if url.startswith("s3"):
        assert "pip install tensorflow-io" in message
    assert not os.listdir(tmp_path)


def test_atomic_writes_replace_the_file_and_leave_no_temporary(tmp_path):
    for directory in (str(tmp_path), _ram("atomic")):
        paths.makedirs(directory)
        target = os.path.join(directory, "manifest.json")
        paths.write_atomically(target, "first")
        paths.write_atomically(target, b"second")
        assert paths.read_text(target) == "second"
        assert tf.io.gfile.listdir(directory) == ["manifest.json"]


def test_local_paths_answer_as_tf_io_gfile_does(tmp_path, monkeypatch):
    """Plain local paths go through Python's own file functions: the same answers as ``tf.io.gfile``."""
    monkeypatch.chdir(tmp_path)
    nested = os.path.join(str(tmp_path), "a", "b")
    assert paths.makedirs(nested) == nested and paths.makedirs(nested) == nested  # twice: nothing to do
    paths.makedirs("")  # the directory of a bare file name: the current one
    file = paths.write_bytes(os.path.join(nested, "x.bin"), b"12345")
    for path in (str(tmp_path), nested, file, os.path.join(nested, "missing"), "", "x.bin"):
        found = (paths.exists(path), paths.isdir(path), paths.isfile(path))
        assert found == (tf.io.gfile.exists(path), tf.io.gfile.isdir(path), tf.io.gfile.exists(path)
                         and not tf.io.gfile.isdir(path)), path
    assert paths.size(file) == tf.io.gfile.stat(file).length == 5 and paths.read_bytes(file) == b"12345"
    array = np.arange(6, dtype=np.int16)
    np.testing.assert_array_equal(paths.load_npy(paths.save_npy(os.path.join(nested, "a.npy"), array)), array)
    paths.remove_tree(os.path.join(str(tmp_path), "a"))
    paths.remove_tree(os.path.join(str(tmp_path), "a"))  # gone already: nothing to do
    assert os.listdir(tmp_path) == []
    with pytest.raises(FileNotFoundError):
        paths.read_bytes(file)


def test_local_paths_need_no_tensorflow(tmp_path):
    """A process that reads and writes only local paths never imports TensorFlow; a URL imports it."""
    script = f"""
import json, os, sys
from alexnet_tf import paths
directory = paths.makedirs(os.path.join({str(tmp_path)!r}, "d"))
paths.write_atomically(os.path.join(directory, "f.json"), json.dumps([1]))
found = [paths.check_supported(directory), paths.read_json(os.path.join(directory, "f.json")),
         paths.isfile(os.path.join(directory, "f.json")), "tensorflow" in sys.modules]
paths.exists("ram://nothing/here")
print(json.dumps(found + ["tensorflow" in sys.modules]))
"""
    result = run_python(["-c", script], timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [str(tmp_path / "d"), [1], True, False, True]


def test_arrays_and_statistics_round_trip_through_ram():
    directory = paths.makedirs(_ram("stats"))
    array = np.arange(24, dtype=np.float32).reshape(2, 4, 3)
    np.testing.assert_array_equal(paths.load_npy(paths.save_npy(os.path.join(directory, "a.npy"), array)), array)
    accumulator = statistics.StatisticsAccumulator(4)
    accumulator.add(np.full((4, 4, 3), 7, np.uint8))
    accumulator.save(os.path.join(directory, "sums.npz"))
    loaded = statistics.StatisticsAccumulator.load(os.path.join(directory, "sums.npz"))
    assert loaded.num_images == 1 and int(loaded.sum_image.sum()) == 7 * 48


# --------------------------------------------------------------------------------------------
# The converter and the pipeline on ram://


def test_the_converter_writes_the_same_shards_to_ram_and_resumes_there(shapes_records, converted):
    local, remote = shapes_records
    manifest = paths.read_json(os.path.join(remote, records.MANIFEST_FILE))
    # Shard for shard the same bytes (sha256) as the local conversion, and the same statistics.
    assert manifest == json.loads((pathlib.Path(local) / records.MANIFEST_FILE).read_text())
    for name in (records.STATISTICS_FILE, records.MEAN_IMAGE_FILE, records.SYNSETS_FILE, records.METADATA_FILE):
        assert paths.read_bytes(os.path.join(remote, name)) == (pathlib.Path(local) / name).read_bytes(), name
    assert not [n for n in tf.io.gfile.listdir(remote) if ".tmp-" in n]
    assert converter.verify(remote, num_workers=2)["ok"]
    # The resume state (.parts/) is on ram:// too: a second run keeps every shard.
    again = _convert_shapes(pathlib.Path(local).parent, remote, num_workers=1)
    assert again["skipped_shards"] == SHAPES.train_shards + SHAPES.validation_shards
    assert again["converted_shards"] == 0
    # The merge reads the shards' records from ram:// on its own, as a job array's last step does.
    assert converter.merge_manifests(remote)["written"] == len(SHAPES.train_labels) + len(SHAPES.val_labels)
    _no_local_ram_folder(pathlib.Path(local).parent)


def test_statistics_and_manifest_are_read_from_a_ram_data_dir(shapes_records):
    local, _ = shapes_records
    remote = _ram("records")
    _copy_tree(local, remote)
    # Other statistics on ram:// than locally: the pipeline must take ram://'s, not fall back.
    record = paths.read_json(os.path.join(remote, records.STATISTICS_FILE))
    record["mean_rgb"] = [10.0, 20.0, 30.0]
    paths.write_json(os.path.join(remote, records.STATISTICS_FILE), record)
    config = get_config("tiny", data_dir=remote, deterministic=True)
    inputs = sources.record_inputs(config, remote)
    assert inputs.stats.source == os.path.join(remote, records.STATISTICS_FILE)
    np.testing.assert_allclose(inputs.stats.mean_rgb, [10.0, 20.0, 30.0])
    local_stats = statistics.load_statistics(local)
    np.testing.assert_array_equal(inputs.stats.mean_image, local_stats.mean_image)
    assert not np.allclose(local_stats.mean_rgb, inputs.stats.mean_rgb)
    # The record count comes from ram://'s manifest, not from reading the shards.
    assert data.manifest_record_count(remote, "train") == len(SHAPES.train_labels)


def test_unsupported_work_and_data_directories_fail_before_any_work(shapes_records, tmp_path, monkeypatch):
    local, _ = shapes_records
    monkeypatch.chdir(tmp_path)
    config = get_config("tiny", data_dir=local, epochs=1)
    with pytest.raises(paths.UnsupportedPathError, match="--workdir=s3://bucket/run"):
        training.train(config, "s3://bucket/run", verbose=False)
    with pytest.raises(paths.UnsupportedPathError, match="--data_dir=foo://records"):
        training.train(config.replace(data_dir="foo://records"), str(tmp_path / "run"), verbose=False)
    with pytest.raises(paths.UnsupportedPathError, match="--data_dir=s3://bucket/records"):
        sources.record_inputs(config, "s3://bucket/records")
    with pytest.raises(converter.ConversionError, match="--output_directory=s3://bucket/records"):
        _convert_shapes(pathlib.Path(local).parent, "s3://bucket/records", num_workers=1)
    assert not os.listdir(tmp_path)


def test_the_command_line_refuses_an_unsupported_work_directory(tmp_path):
    result = run_python([str(ROOT / "train.py"), "--workdir=s3://bucket/run"], cwd=tmp_path,
                        timeout=300)
    assert result.returncode != 0
    assert "--workdir=s3://bucket/run" in result.stderr and "tensorflow-io" in result.stderr
    assert not os.listdir(tmp_path)


# --------------------------------------------------------------------------------------------
# A whole run on ram://


def _report_without_timings(report: dict) -> dict:
    """The report's computed figures: what two identical runs must agree on."""
    if isinstance(report, dict):
        return {k: _report_without_timings(v) for k, v in report.items()
                if k not in (*TIMINGS, "data_dir", "statistics")}
    return report


def _run(config, data_dir: str, workdir: str) -> tuple[dict, dict, list[np.ndarray]]:
    summary = training.train(config.replace(data_dir=data_dir), workdir, verbose=False)
    report = paths.read_json(os.path.join(workdir, workdir_lib.REPORT_DIR, reports.REPORT_JSON))
    model, _ = workdir_lib.load_model(workdir)
    return summary, report, [np.array(w) for w in model.weights]


@pytest.mark.slow
def test_a_run_on_ram_matches_the_local_run_and_resumes(shapes_records, tmp_path):
    """Convert, train, evaluate, export, draw: the same bytes and figures as on the local disk."""
    local_data, remote_data = shapes_records
    config = get_config("tiny", epochs=1, batch_size=16, deterministic=True, shuffle_buffer=80)
    local_summary, local_report, local_weights = _run(config, local_data, str(tmp_path / "run"))
    workdir = _ram("run")
    summary, report, weights = _run(config, remote_data, workdir)

    for ours, theirs in zip(weights, local_weights, strict=True):
        np.testing.assert_array_equal(ours, theirs)
    assert _report_without_timings(report) == _report_without_timings(local_report)
    assert report["data_dir"] == remote_data
    # The statistics came from ram://, as the local run's came from its directory.
    assert report["statistics"] == os.path.join(remote_data, records.STATISTICS_FILE)
    for key in ("val_top1_error", "val_ten_crop_top1_error", "global_step", "weights_l2_norm"):
        assert summary[key] == local_summary[key], key
    # Everything the run wrote is on ram://, named by its URL.
    assert summary["workdir"] == workdir and summary["saved_model"] == os.path.join(workdir, workdir_lib.EXPORT_DIR)
    assert summary["summary"] == os.path.join(workdir, workdir_lib.SUMMARY_FILE)
    for name in (workdir_lib.CONFIG_FILE, workdir_lib.SUMMARY_FILE, workdir_lib.MODEL_FILE, workdir_lib.CURVES_FILE,
                 records.STATISTICS_FILE, os.path.join(workdir_lib.REPORT_DIR, reports.REPORT_MD),
                 os.path.join(workdir_lib.EXPORT_DIR, "saved_model.pb"), os.path.join(workdir_lib.EXPORT_DIR,
                                                                                       export.LABELS_FILE)):
        assert paths.exists(os.path.join(workdir, name)), name
    assert paths.read_json(os.path.join(workdir, workdir_lib.SUMMARY_FILE))["workdir"] == workdir
    assert "(../curves.png)" in paths.read_text(os.path.join(workdir, workdir_lib.REPORT_DIR, reports.REPORT_MD))
    assert tf.io.gfile.glob(os.path.join(workdir, workdir_lib.LOG_DIR, "train", "events.out.tfevents.*"))

    # The SavedModel on ram:// serves the same probabilities as the local one.
    images = np.random.default_rng(0).normal(0, 50, (2, config.input_size, config.input_size, 3)).astype(np.float32)
    predict, _ = export.load_predictor(summary["saved_model"])
    local_predict, _ = export.load_predictor(local_summary["saved_model"])
    np.testing.assert_allclose(predict(images).numpy(), local_predict(images).numpy(), rtol=1e-6, atol=1e-7)

    # evaluate.py's path: a model and its statistics read back from ram://, figures written there.
    model, saved_config = workdir_lib.load_model(workdir)
    stats = workdir_lib.model_statistics(workdir)
    assert stats is not None and stats.source == os.path.join(workdir, records.STATISTICS_FILE)
    report_dir = _ram("report")
    again = evaluation.evaluate(model, saved_config, remote_data, report_dir, ten_crop=False, progress=False,
                                stats=stats)
    assert again["center_crop"]["top1_error"] == report["center_crop"]["top1_error"]
    drawn = figures.make_figures(model, saved_config, remote_data, os.path.join(report_dir, figures.FIGURES_DIR),
                                 max_train_images=32)
    assert all(paths.read_bytes(p).startswith(b"\x89PNG") for p in drawn.values())

    # A second run on the ram:// work directory resumes from its checkpoint there, and rewrites
    # its config, summary, model, report and SavedModel in place.
    resumed = training.train(config.replace(data_dir=remote_data, epochs=2), workdir, verbose=False)
    assert resumed["resumed_from_epoch"] == 1 and resumed["epochs_completed"] == 2
    assert resumed["global_step"] == 2 * summary["global_step"]
    assert paths.read_json(os.path.join(workdir, workdir_lib.SUMMARY_FILE))["epochs_completed"] == 2
    assert workdir_lib.read_config(workdir).epochs == 2
    resumed_weights = [np.array(w) for w in workdir_lib.load_model(workdir)[0].weights]
    assert not all(np.array_equal(a, b) for a, b in zip(resumed_weights, weights, strict=True))
    export.load_predictor(resumed["saved_model"])[0](images)
    keras.backend.clear_session()
    _no_local_ram_folder(tmp_path)
