"""converter/run.py: the whole conversion on real images, its determinism, its command line."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import time

import numpy as np
import pytest

from alexnet_tf import converter, records, statistics
from tests.support import ROOT, python_env, run_python, start_python
from tests.support import converter_helpers as h

CLI = ROOT / "data_prep" / "build_tfrecords.py"


@pytest.fixture(scope="module")
def sample_run(shared_data, tmp_path_factory):
    """The real sample (40 classes + the flat validation images), converted once, keep-bytes."""
    tmp = tmp_path_factory.mktemp("sample")
    train = h.sample_subset(shared_data, tmp)
    out = tmp / "out"
    summary = h.convert_sample(shared_data, train, out, num_workers=1)
    return train, out, summary


def test_real_sample_keeps_bytes_labels_and_writes_outputs(shared_data, sample_run):
    train, out, summary = sample_run
    synsets = (out / converter.SYNSETS_FILE).read_text().split()
    assert len(synsets) == 1000
    examples = h.examples(out, "train")
    assert len(examples) == summary["splits"]["train"]["written"] == h.SAMPLE_CLASSES
    grayscale = summary["splits"]["train"]["kinds"].get("jpeg_grayscale", 0)
    kept = 0
    for example in examples:
        wnid = h.feature(example, records.SYNSET_KEY).decode()
        source = train / wnid / h.feature(example, records.FILENAME_KEY).decode()
        assert h.feature(example, records.LABEL_KEY) == synsets.index(wnid)
        kept += h.feature(example, records.IMAGE_KEY) == source.read_bytes()
    assert kept == h.SAMPLE_CLASSES - grayscale  # every RGB JPEG byte for byte
    assert summary["files_found"] == summary["written"] + summary["rejected"] == h.SAMPLE_CLASSES + 100
    assert len(summary["splits"]["train"]["missing_classes"]) == 1000 - h.SAMPLE_CLASSES
    # Flat validation: the label of ILSVRC2012_val_N is line N of the ground-truth file.
    lines = (shared_data / "metadata" / "imagenet_2012_validation_synset_labels.txt").read_text().split()
    for example in h.examples(out, "validation"):
        number = int(h.feature(example, records.FILENAME_KEY).decode()[15:23])
        assert h.feature(example, records.SYNSET_KEY).decode() == lines[number - 1]
    # Classes are mixed across shards: consecutive classes do not share a shard.
    first_shard = {h.feature(e, records.SYNSET_KEY) for e in h.examples(out, "train-00000")}
    assert first_shard != set(sorted(first_shard)[:1]) and len(first_shard) == h.SAMPLE_CLASSES // 4
    assert sorted(first_shard) != sorted(synsets[: h.SAMPLE_CLASSES // 4])
    stats = statistics.load_statistics(str(out))
    assert stats.num_images == h.SAMPLE_CLASSES and stats.mean_image.shape == (256, 256, 3)
    assert np.all((stats.mean_rgb > 60) & (stats.mean_rgb < 190)) and np.all(stats.eigenvalues[:2] > 0)
    manifest = json.loads((out / converter.MANIFEST_FILE).read_text())
    assert manifest["splits"]["train"]["num_records"] == h.SAMPLE_CLASSES
    assert (out / converter.REJECTS_FILE).read_text() == ""


def test_deterministic_across_worker_counts_and_verify(shared_data, sample_run, tmp_path, caplog):
    train, out, _ = sample_run
    again = tmp_path / "again"
    caplog.set_level(logging.INFO, logger="absl")
    h.convert_sample(shared_data, train, again, num_workers=2)
    # Two worker processes count every image into the bar, which knows its total.
    total = h.SAMPLE_CLASSES + 100
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("converting [")]
    assert progress and f" {total}/{total} " in progress[-1]
    # The first lines say what will be done, the last where everything went.
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"train: {h.SAMPLE_CLASSES} images in ") for m in messages)
    assert messages[-1].startswith("Shards and manifest.json, summary.json, synsets.txt, metadata.txt")
    assert messages[-1].endswith(str(again))
    assert h.shards(again) == h.shards(out)
    for name in (converter.MANIFEST_FILE, statistics.STATISTICS_FILE, statistics.MEAN_IMAGE_FILE):
        assert (again / name).read_bytes() == (out / name).read_bytes()
    report = converter.verify(str(again), num_workers=1)
    assert report["ok"] and report["records"] == total


def test_resize_mode_and_custom_labels(tmp_path):
    """Procedurally drawn folders with made-up wnids, a labels file and a metadata file."""
    wnids = [f"n0000000{i}" for i in range(1, 4)]
    (tmp_path / "labels.txt").write_text("\n".join(wnids) + "\n")
    (tmp_path / "meta.txt").write_text("".join(f"{w}\tthing {i}\n" for i, w in enumerate(wnids)))
    for split in ("train", "val"):
        for i, wnid in enumerate(wnids):
            (tmp_path / split / wnid).mkdir(parents=True)
            for j in range(3):
                image = h.gradient(80 + 10 * j, 60 + 40 * i)
                (tmp_path / split / wnid / f"{j}.JPEG").write_bytes(h.jpeg(image))
    summaries = []
    for out in ("a", "b"):
        summaries.append(
            converter.convert(
                train_directory=str(tmp_path / "train"),
                validation_directory=str(tmp_path / "val"),
                output_directory=str(tmp_path / out),
                train_shards=2,
                validation_shards=1,
                num_workers=1,
                resize=256,
                labels_file=str(tmp_path / "labels.txt"),
                metadata_file=str(tmp_path / "meta.txt"),
                label_offset=1,
            )
        )
    assert h.shards(tmp_path / "a") == h.shards(tmp_path / "b")
    assert summaries[0]["written"] == 18 and summaries[0]["splits"]["train"]["missing_classes"] == []
    for example in h.examples(tmp_path / "a", "train"):
        parsed = records.parse_example(example.SerializeToString(), label_offset=1)
        wnid = parsed["synset"].numpy().decode()
        assert int(parsed["label"]) == wnids.index(wnid)  # 1-based on disk, 0-based parsed
        assert h.feature(example, records.TEXT_KEY).decode() == f"thing {wnids.index(wnid)}"
        assert min(int(parsed["height"]), int(parsed["width"])) == 256
    stats = statistics.load_statistics(str(tmp_path / "a"))
    assert stats.num_images == 9 and stats.mean_image.shape == (256, 256, 3)


def test_odd_files_are_converted_or_rejected_never_lost(tmp_path):
    train = h.odd_dataset(tmp_path)
    summary = converter.convert(
        train_directory=str(train), output_directory=str(tmp_path / "out"), train_shards=3, num_workers=1
    )
    expected_kinds = {kind for _, kind in h.ODD_FILES.values() if kind}
    split = summary["splits"]["train"]
    assert set(split["kinds"]) == expected_kinds
    assert split["kinds"]["jpeg"] == 4
    assert summary["rejected"] == 4 and not summary["ok"]
    assert split["files_found"] == len(h.ODD_FILES) + 3 == summary["written"] + summary["rejected"]
    assert split["ignored_files"] == 1 and split["misnamed"] == 4
    rejects = (tmp_path / "out" / converter.REJECTS_FILE).read_text(encoding="utf-8").splitlines()
    assert sorted(os.path.basename(line.split("\t")[1]) for line in rejects) == sorted(
        name for name, (_, kind) in h.ODD_FILES.items() if kind is None
    )
    assert all(line.split("\t")[2] for line in rejects)
    names = {h.feature(e, records.FILENAME_KEY).decode() for e in h.examples(tmp_path / "out", "train")}
    assert {"with space.JPEG", 'potter\'s "wheel".jpg', "café_日本.JPEG"} <= names
    assert converter.verify(str(tmp_path / "out"), num_workers=1)["ok"]


def test_input_errors_are_found_before_any_work(shared_data, tmp_path):
    labels = shared_data / "metadata" / "imagenet_2012_validation_synset_labels.txt"
    out = tmp_path / "out"
    train = tmp_path / "train"
    (train / "n01440764").mkdir(parents=True)
    (train / "n01440764" / "a.JPEG").write_bytes(h.jpeg(h.gradient()))
    (train / "n99999999").mkdir()
    with pytest.raises(converter.ConversionError, match="n99999999"):
        converter.convert(train_directory=str(train), output_directory=str(out))
    val = tmp_path / "val"
    val.mkdir()
    (val / "ILSVRC2012_val_00000001.JPEG").write_bytes(h.jpeg(h.gradient()))
    with pytest.raises(converter.ConversionError, match="--validation_labels_file"):
        converter.convert(validation_directory=str(val), output_directory=str(out))
    short = tmp_path / "short.txt"
    short.write_text("n01751748\n")
    (val / "ILSVRC2012_val_00000007.JPEG").write_bytes(h.jpeg(h.gradient()))
    with pytest.raises(converter.ConversionError, match="short.txt"):
        converter.convert(validation_directory=str(val), validation_labels_file=str(short), output_directory=str(out))
    (val / "ILSVRC2012_val_00000007.JPEG").unlink()
    (val / "holiday.JPEG").write_bytes(h.jpeg(h.gradient()))
    with pytest.raises(converter.ConversionError, match="holiday.JPEG"):
        converter.convert(validation_directory=str(val), validation_labels_file=str(labels), output_directory=str(out))
    with pytest.raises(converter.ConversionError, match="--train_shards"):
        converter.convert(train_directory=str(train), output_directory=str(out), train_shards=0)
    assert not out.exists() or not list(out.glob("*-of-*"))


def _run_cli(*args: str, log_level: str | None = "3", python: tuple[str, ...] = ()) -> subprocess.Popen:
    env = python_env(drop=["TF_CPP_MIN_LOG_LEVEL"])
    if log_level is not None:
        env["TF_CPP_MIN_LOG_LEVEL"] = log_level
    return start_python([*python, CLI, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.slow  # three TensorFlow start-ups (CLI, two workers) and a re-run: ~20 s on 2 cores
def test_cli_kill_9_then_rerun_gives_identical_output(shared_data, tmp_path):
    train = h.sample_subset(shared_data, tmp_path, classes=120)
    args = [f"--train_directory={train}", "--train_shards=12", "--num_workers=2"]
    converter.convert(
        train_directory=str(train), output_directory=str(tmp_path / "ref"), train_shards=12, num_workers=1
    )
    out = tmp_path / "out"
    process = _run_cli(*args, f"--output_directory={out}")
    killed_mid_shard = False
    deadline = time.time() + 120
    while process.poll() is None and time.time() < deadline:
        parts = list((out / converter.PARTS_DIRECTORY).glob("train-*.json")) if out.exists() else []
        if parts and list(out.glob("train-*.tmp-*")):
            process.send_signal(signal.SIGKILL)
            killed_mid_shard = True
            break
        time.sleep(0.005)
    process.wait()
    assert killed_mid_shard, process.stderr.read()[-2000:]
    assert not (out / converter.MANIFEST_FILE).exists()
    time.sleep(0.5)  # the workers die with their parent (PR_SET_PDEATHSIG)
    rerun = _run_cli(*args, f"--output_directory={out}", "--num_workers=1")
    assert rerun.wait(timeout=120) == 0, rerun.stderr.read()[-2000:]
    assert h.shards(out) == h.shards(tmp_path / "ref")
    assert not list(out.glob("*.tmp-*"))
    for name in (converter.MANIFEST_FILE, statistics.STATISTICS_FILE, statistics.MEAN_IMAGE_FILE):
        assert (out / name).read_bytes() == (tmp_path / "ref" / name).read_bytes()
    summary = json.loads((out / converter.SUMMARY_FILE).read_text())
    assert summary["skipped_shards"] >= 1 and summary["converted_shards"] >= 1


def test_cli_exit_status_counts_rejects_and_the_console_is_quiet(tmp_path):
    train = h.odd_dataset(tmp_path)
    common = [f"--train_directory={train}", "--train_shards=2", "--num_workers=1"]
    # No TF_CPP_MIN_LOG_LEVEL: the CLI silences TensorFlow's C++ start-up lines itself (--verify
    # reads the shards with TensorFlow) ...
    failing = _run_cli(*common, f"--output_directory={tmp_path / 'a'}", "--max_rejects=3", "--verify", log_level=None)
    # ... unless the user chose a level: 0 shows them all (a ram:// output loads TensorFlow at once).
    bad = _run_cli("--train_directory=/nonexistent", "--output_directory=ram://cli/b", log_level="0")
    assert failing.wait(timeout=120) == 1
    quiet = failing.stderr.read()
    assert "4 files rejected" in quiet
    assert bad.wait(timeout=120) == 2
    loud = bad.stderr.read()
    assert "/nonexistent" in loud
    assert json.loads((tmp_path / "a" / converter.SUMMARY_FILE).read_text())["rejected"] == 4
    # TensorFlow's C++ INFO lines, but for cudart_stub's, which ignores the level (upstream bug).
    cpp_info = re.compile(r"^I\d{4} [\d:. ]+\d+ (?!cudart_stub)\S+\.cc:\d+\]", re.MULTILINE)
    assert not cpp_info.findall(quiet)
    assert cpp_info.findall(loud)
    # The first lines say what will be done; the last where everything went.
    assert f"train: {len(h.ODD_FILES) + 3} images in {train} -> 2 shards" in quiet
    outputs = "manifest.json, summary.json, synsets.txt, metadata.txt, statistics.json, rejects.txt"
    assert f"Shards and {outputs} are in {tmp_path / 'a'}" in quiet


def test_a_local_conversion_never_imports_tensorflow(tmp_path):
    """No process of a local conversion's tree loads TensorFlow: not the command line, not a worker.

    ``python -X importtime`` makes every process log each module it imports, and the spawned
    workers inherit the flag, so the log covers the whole tree: the converter's modules appear
    once per process, ``tensorflow`` in none. With every C++ log line shown, none is printed.
    """
    train = h.odd_dataset(tmp_path)
    out = tmp_path / "out"
    process = _run_cli(f"--train_directory={train}", f"--output_directory={out}", "--train_shards=2",
                       "--num_workers=2", "--max_rejects=10", log_level="0", python=("-X", "importtime"))
    stderr = process.communicate(timeout=120)[1]  # read as it comes: the log outgrows a pipe
    assert process.returncode == 0, stderr[-2000:]
    imported = re.findall(r"^import time: +\d+ \| +\d+ \| +(\S+)$", stderr, re.MULTILINE)
    assert imported.count("alexnet_tf.converter.shards") == 3, stderr[-2000:]  # the command line and 2 workers
    assert not [name for name in imported if name.split(".")[0] == "tensorflow"]
    assert not re.findall(r"^[IWE]\d{4} [\d:.]+ +\d+ \S+\.cc:\d+\]", stderr, re.MULTILINE), stderr[-2000:]
    summary = json.loads((out / converter.SUMMARY_FILE).read_text())
    assert summary["converted_shards"] == 2 and summary["written"] == 14


def test_converter_convert_in_process_never_imports_tensorflow(tmp_path):
    """``converter.convert`` into a local folder, then the manifest merged again: no TensorFlow.

    With one worker nothing else is started either: no worker, and no resource tracker (a
    Python process multiprocessing starts for shared memory), so no child process is left.
    """
    train = h.odd_dataset(tmp_path)
    out = tmp_path / "out"
    script = f"""
import glob, json, os, sys
from alexnet_tf import converter
summary = converter.convert(train_directory={str(train)!r}, output_directory={str(out)!r}, train_shards=2,
                            num_workers=1, max_rejects=10)
converter.merge_manifests({str(out)!r})
loaded = sorted(name for name in sys.modules if name.startswith("tensorflow"))
children = [pid for task in glob.glob(f"/proc/{{os.getpid()}}/task/*/children") for pid in open(task).read().split()]
print(json.dumps({{"written": summary["written"], "loaded": loaded, "children": children}}))
"""
    result = run_python(["-c", script], timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found == {"written": 14, "loaded": [], "children": []}
