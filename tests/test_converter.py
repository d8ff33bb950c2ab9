"""Tests of the converter: odd files, layouts, determinism, resume after kill -9, tasks, verify."""

from __future__ import annotations

import io
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from alexnet_tf import converter, records, statistics

ROOT = pathlib.Path(__file__).resolve().parent.parent
CLI = ROOT / "data_prep" / "build_tfrecords.py"
SAMPLE_CLASSES = 40  # of the 1000 real sample images, enough to mix classes, fast enough for CI


def _jpeg(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **kwargs)
    return buffer.getvalue()


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def _gradient(width: int = 64, height: int = 48) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], axis=-1).astype(np.uint8)
    return Image.fromarray(pixels)


def _cmyk_jpeg(adobe_transform: int = 0) -> bytes:
    data = _jpeg(_gradient().convert("CMYK"))
    if adobe_transform:
        # Pillow writes an Adobe APP14 marker with transform 0 (CMYK); 2 declares YCCK.
        transform = data.index(b"Adobe") + 11  # after "Adobe", version, flags0 and flags1
        data = data[:transform] + bytes([adobe_transform]) + data[transform + 1 :]
    return data


def _png_16bit() -> bytes:
    pixels = np.full((32, 40), 0x8000, np.uint16)
    pixels[:, 20:] = 0xFF00
    return _encode(Image.fromarray(pixels), "PNG")


ODD_FILES = {
    # name: (bytes factory, expected kind or None for a reject)
    "rgb.JPEG": (lambda: _jpeg(_gradient()), "jpeg"),
    "gray.jpg": (lambda: _jpeg(_gradient().convert("L")), "jpeg_grayscale"),
    "cmyk.JPEG": (lambda: _cmyk_jpeg(), "jpeg_cmyk"),
    "ycck.JPEG": (lambda: _cmyk_jpeg(2), "jpeg_ycck"),
    "png_inside.JPEG": (lambda: _encode(_gradient(), "PNG"), "png"),
    "rgba.png": (lambda: _encode(_gradient().convert("RGBA"), "PNG"), "png_rgba"),
    "palette.PNG": (lambda: _encode(_gradient().convert("P"), "PNG"), "png_palette"),
    "deep.png": (_png_16bit, "png_16bit"),
    "gif_inside.JPEG": (lambda: _encode(_gradient().convert("P"), "GIF"), "gif_palette"),
    "bmp_inside.jpeg": (lambda: _encode(_gradient(), "BMP"), "bmp"),
    "webp_inside.JPEG": (lambda: _encode(_gradient(), "WEBP"), "webp"),
    "truncated.JPEG": (lambda: _jpeg(_gradient(200, 150))[:1500], None),
    "empty.JPEG": (lambda: b"", None),
    "text.JPEG": (lambda: b"this is not an image at all\n", None),
    "corrupt.JPEG": (lambda: b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8, None),
}


def test_convert_image_recognises_every_kind_by_content():
    for name, (make, kind) in ODD_FILES.items():
        data = make()
        if kind is None:
            with pytest.raises(converter.RejectedImageError):
                converter.convert_image(data)
            continue
        image = converter.convert_image(data, with_statistics=True)
        assert image.kind == kind, name
        assert image.kept == (kind == "jpeg"), name
        if image.kept:
            assert image.encoded == data
        decoded = tf.io.decode_jpeg(image.encoded).numpy()  # RGB JPEG whatever came in
        assert decoded.shape[2] == 3, name
        assert decoded.shape[:2] == (image.height, image.width), name
        assert image.pixels.shape == (256, 256, 3) and image.pixels.dtype == np.uint8


def test_convert_image_rejection_reasons_and_16bit_scaling():
    reasons = {name: "" for name, (_, kind) in ODD_FILES.items() if kind is None}
    for name in reasons:
        with pytest.raises(converter.RejectedImageError) as error:
            converter.convert_image(ODD_FILES[name][0]())
        reasons[name] = str(error.value)
    assert "empty" in reasons["empty.JPEG"]
    assert "not a JPEG" in reasons["text.JPEG"]
    assert "does not decode" in reasons["truncated.JPEG"]
    assert "does not decode" in reasons["corrupt.JPEG"]
    # 16-bit samples keep their top byte instead of clipping at 255.
    image = converter.convert_image(_png_16bit())
    decoded = tf.io.decode_jpeg(image.encoded).numpy().astype(int)
    assert abs(decoded[:, :10].mean() - 128) < 3 and abs(decoded[:, -10:].mean() - 255) < 3
    # Transparent pixels come out white, not black.
    transparent = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    decoded = tf.io.decode_jpeg(converter.convert_image(_encode(transparent, "PNG")).encoded).numpy()
    assert decoded.min() > 250


def test_resize_sets_the_shorter_side_and_keeps_jpegs_already_that_size():
    wide = converter.convert_image(_jpeg(_gradient(400, 300)), resize=256)
    assert (wide.height, wide.width) == (256, 341) and not wide.kept
    tall = converter.convert_image(_encode(_gradient(60, 90), "PNG"), resize=256)
    assert (tall.height, tall.width) == (384, 256)
    exact = _jpeg(_gradient(300, 256))
    assert converter.convert_image(exact, resize=256).encoded == exact


def test_statistics_known_answer_and_order_independence(tmp_path):
    colours = [(10, 20, 30), (50, 60, 70)]
    accumulators = []
    for order in (colours, colours[::-1]):
        acc = statistics.StatisticsAccumulator(8)
        for colour in order:
            acc.add(np.broadcast_to(np.array(colour, np.uint8), (8, 8, 3)).copy())
        accumulators.append(acc)
    stats = accumulators[0].result()
    np.testing.assert_allclose(stats.mean_rgb, [30, 40, 50])
    np.testing.assert_allclose(stats.std_rgb, [20, 20, 20])
    # Covariance is 400 everywhere: one eigenvalue 1200 along (1,1,1)/sqrt(3), stored /255.
    np.testing.assert_allclose(stats.eigenvalues, [1200 / 255, 0, 0], atol=1e-4)
    np.testing.assert_allclose(np.abs(stats.eigenvectors[:, 0]), [3**-0.5] * 3, atol=1e-6)
    np.testing.assert_allclose(stats.mean_image, np.broadcast_to([30, 40, 50], (8, 8, 3)))
    merged = statistics.StatisticsAccumulator(8)
    merged.merge(accumulators[1])
    merged.save(str(tmp_path / "s.npz"))
    loaded = statistics.StatisticsAccumulator.load(str(tmp_path / "s.npz"))
    assert loaded.num_images == 2
    np.testing.assert_array_equal(loaded.sum_image, accumulators[0].sum_image)
    np.testing.assert_array_equal(loaded.sum_outer, accumulators[0].sum_outer)


def _sample_subset(shared_data: pathlib.Path, tmp_path: pathlib.Path, classes: int = SAMPLE_CLASSES):
    """A training folder of the first ``classes`` real sample classes (symlinks, not copies)."""
    train = tmp_path / "train"
    for wnid_dir in sorted((shared_data / "imagenet-sample" / "train").iterdir())[:classes]:
        (train / wnid_dir.name).mkdir(parents=True)
        for image in wnid_dir.iterdir():
            (train / wnid_dir.name / image.name).symlink_to(image)
    return train


def _shards(directory: pathlib.Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if "-of-" in p.name}


def _examples(directory: pathlib.Path, prefix: str) -> list[tf.train.Example]:
    return list(converter.iterate_records(str(p) for p in sorted(directory.glob(f"{prefix}-*"))))


def _feature(example: tf.train.Example, key: str):
    feature = example.features.feature[key]
    return (feature.bytes_list.value or feature.int64_list.value)[0]


def _convert_sample(shared_data, train, out, num_workers):
    """The sample subset and the flat validation images, converted with the test's shard counts."""
    return converter.convert(
        train_directory=str(train),
        validation_directory=str(shared_data / "imagenet-sample" / "val"),
        validation_labels_file=str(shared_data / "metadata" / "imagenet_2012_validation_synset_labels.txt"),
        output_directory=str(out),
        train_shards=4,
        validation_shards=2,
        num_workers=num_workers,
    )


@pytest.fixture(scope="module")
def sample_run(shared_data, tmp_path_factory):
    """The real sample (40 classes + the flat validation images), converted once, keep-bytes."""
    tmp = tmp_path_factory.mktemp("sample")
    train = _sample_subset(shared_data, tmp)
    out = tmp / "out"
    summary = _convert_sample(shared_data, train, out, num_workers=1)
    return train, out, summary


def test_real_sample_keeps_bytes_labels_and_writes_outputs(shared_data, sample_run):
    train, out, summary = sample_run
    synsets = (out / converter.SYNSETS_FILE).read_text().split()
    assert len(synsets) == 1000
    examples = _examples(out, "train")
    assert len(examples) == summary["splits"]["train"]["written"] == SAMPLE_CLASSES
    grayscale = summary["splits"]["train"]["kinds"].get("jpeg_grayscale", 0)
    kept = 0
    for example in examples:
        wnid = _feature(example, records.SYNSET_KEY).decode()
        source = train / wnid / _feature(example, records.FILENAME_KEY).decode()
        assert _feature(example, records.LABEL_KEY) == synsets.index(wnid)
        kept += _feature(example, records.IMAGE_KEY) == source.read_bytes()
    assert kept == SAMPLE_CLASSES - grayscale  # every RGB JPEG byte for byte
    assert summary["files_found"] == summary["written"] + summary["rejected"] == SAMPLE_CLASSES + 100
    assert len(summary["splits"]["train"]["missing_classes"]) == 1000 - SAMPLE_CLASSES
    # Flat validation: the label of ILSVRC2012_val_N is line N of the ground-truth file.
    lines = (shared_data / "metadata" / "imagenet_2012_validation_synset_labels.txt").read_text().split()
    for example in _examples(out, "validation"):
        number = int(_feature(example, records.FILENAME_KEY).decode()[15:23])
        assert _feature(example, records.SYNSET_KEY).decode() == lines[number - 1]
    # Classes are mixed across shards: consecutive classes do not share a shard.
    first_shard = {_feature(e, records.SYNSET_KEY) for e in _examples(out, "train-00000")}
    assert first_shard != set(sorted(first_shard)[:1]) and len(first_shard) == SAMPLE_CLASSES // 4
    assert sorted(first_shard) != sorted(synsets[: SAMPLE_CLASSES // 4])
    stats = statistics.load_statistics(str(out))
    assert stats.num_images == SAMPLE_CLASSES and stats.mean_image.shape == (256, 256, 3)
    assert np.all((stats.mean_rgb > 60) & (stats.mean_rgb < 190)) and np.all(stats.eigenvalues[:2] > 0)
    manifest = json.loads((out / converter.MANIFEST_FILE).read_text())
    assert manifest["splits"]["train"]["num_records"] == SAMPLE_CLASSES
    assert (out / converter.REJECTS_FILE).read_text() == ""


def test_deterministic_across_worker_counts_and_verify(shared_data, sample_run, tmp_path):
    train, out, _ = sample_run
    again = tmp_path / "again"
    _convert_sample(shared_data, train, again, num_workers=2)
    assert _shards(again) == _shards(out)
    for name in (converter.MANIFEST_FILE, statistics.STATISTICS_FILE, statistics.MEAN_IMAGE_FILE):
        assert (again / name).read_bytes() == (out / name).read_bytes()
    report = converter.verify(str(again), num_workers=1)
    assert report["ok"] and report["records"] == SAMPLE_CLASSES + 100
    # A flipped byte inside a record is found (record CRC and the manifest's sha256).
    shard = again / "train-00001-of-00004"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    report = converter.verify(str(again), num_workers=1)
    assert not report["ok"] and any("train-00001" in e for e in report["errors"])


def test_resize_mode_and_custom_labels(tmp_path):
    """Procedurally drawn folders with made-up wnids, a labels file and a metadata file."""
    wnids = [f"n0000000{i}" for i in range(1, 4)]
    (tmp_path / "labels.txt").write_text("\n".join(wnids) + "\n")
    (tmp_path / "meta.txt").write_text("".join(f"{w}\tthing {i}\n" for i, w in enumerate(wnids)))
    for split in ("train", "val"):
        for i, wnid in enumerate(wnids):
            (tmp_path / split / wnid).mkdir(parents=True)
            for j in range(3):
                image = _gradient(80 + 10 * j, 60 + 40 * i)
                (tmp_path / split / wnid / f"{j}.JPEG").write_bytes(_jpeg(image))
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
    assert _shards(tmp_path / "a") == _shards(tmp_path / "b")
    assert summaries[0]["written"] == 18 and summaries[0]["splits"]["train"]["missing_classes"] == []
    for example in _examples(tmp_path / "a", "train"):
        parsed = records.parse_example(example.SerializeToString(), label_offset=1)
        wnid = parsed["synset"].numpy().decode()
        assert int(parsed["label"]) == wnids.index(wnid)  # 1-based on disk, 0-based parsed
        assert _feature(example, records.TEXT_KEY).decode() == f"thing {wnids.index(wnid)}"
        assert min(int(parsed["height"]), int(parsed["width"])) == 256
    stats = statistics.load_statistics(str(tmp_path / "a"))
    assert stats.num_images == 9 and stats.mean_image.shape == (256, 256, 3)


def _odd_dataset(root: pathlib.Path) -> pathlib.Path:
    train = root / "train"
    wnid = "n01440764"
    (train / wnid).mkdir(parents=True)
    (train / "n01443537").mkdir()
    for name, (make, _) in ODD_FILES.items():
        (train / wnid / name).write_bytes(make())
    # Awkward names: spaces, quotes, non-ASCII.
    for name in ("with space.JPEG", 'potter\'s "wheel".jpg', "café_日本.JPEG"):
        (train / "n01443537" / name).write_bytes(_jpeg(_gradient()))
    (train / "n01443537" / "notes.txt").write_text("not listed")
    return train


def test_odd_files_are_converted_or_rejected_never_lost(tmp_path):
    train = _odd_dataset(tmp_path)
    summary = converter.convert(
        train_directory=str(train), output_directory=str(tmp_path / "out"), train_shards=3, num_workers=1
    )
    expected_kinds = {kind for _, kind in ODD_FILES.values() if kind}
    split = summary["splits"]["train"]
    assert set(split["kinds"]) == expected_kinds
    assert split["kinds"]["jpeg"] == 4
    assert summary["rejected"] == 4 and not summary["ok"]
    assert split["files_found"] == len(ODD_FILES) + 3 == summary["written"] + summary["rejected"]
    assert split["ignored_files"] == 1 and split["misnamed"] == 4
    rejects = (tmp_path / "out" / converter.REJECTS_FILE).read_text(encoding="utf-8").splitlines()
    assert sorted(os.path.basename(line.split("\t")[1]) for line in rejects) == sorted(
        name for name, (_, kind) in ODD_FILES.items() if kind is None
    )
    assert all(line.split("\t")[2] for line in rejects)
    names = {_feature(e, records.FILENAME_KEY).decode() for e in _examples(tmp_path / "out", "train")}
    assert {"with space.JPEG", 'potter\'s "wheel".jpg', "café_日本.JPEG"} <= names
    assert converter.verify(str(tmp_path / "out"), num_workers=1)["ok"]


def test_input_errors_are_found_before_any_work(shared_data, tmp_path):
    labels = shared_data / "metadata" / "imagenet_2012_validation_synset_labels.txt"
    out = tmp_path / "out"
    train = tmp_path / "train"
    (train / "n01440764").mkdir(parents=True)
    (train / "n01440764" / "a.JPEG").write_bytes(_jpeg(_gradient()))
    (train / "n99999999").mkdir()
    with pytest.raises(converter.ConversionError, match="n99999999"):
        converter.convert(train_directory=str(train), output_directory=str(out))
    val = tmp_path / "val"
    val.mkdir()
    (val / "ILSVRC2012_val_00000001.JPEG").write_bytes(_jpeg(_gradient()))
    with pytest.raises(converter.ConversionError, match="--validation_labels_file"):
        converter.convert(validation_directory=str(val), output_directory=str(out))
    short = tmp_path / "short.txt"
    short.write_text("n01751748\n")
    (val / "ILSVRC2012_val_00000007.JPEG").write_bytes(_jpeg(_gradient()))
    with pytest.raises(converter.ConversionError, match="short.txt"):
        converter.convert(validation_directory=str(val), validation_labels_file=str(short), output_directory=str(out))
    (val / "ILSVRC2012_val_00000007.JPEG").unlink()
    (val / "holiday.JPEG").write_bytes(_jpeg(_gradient()))
    with pytest.raises(converter.ConversionError, match="holiday.JPEG"):
        converter.convert(validation_directory=str(val), validation_labels_file=str(labels), output_directory=str(out))
    with pytest.raises(converter.ConversionError, match="--train_shards"):
        converter.convert(train_directory=str(train), output_directory=str(out), train_shards=0)
    assert not out.exists() or not list(out.glob("*-of-*"))


def test_resume_skips_verified_shards_and_redoes_damaged_ones(tmp_path):
    train = _odd_dataset(tmp_path)
    options = dict(train_directory=str(train), train_shards=3, num_workers=1, max_rejects=10)
    out = tmp_path / "out"
    converter.convert(output_directory=str(out), **options)
    reference = _shards(out)
    (out / "train-00000-of-00003").unlink()
    damaged = out / "train-00001-of-00003"
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"\x00")  # same size, different checksum
    summary = converter.convert(output_directory=str(out), **options)
    assert (summary["converted_shards"], summary["skipped_shards"]) == (2, 1)
    assert _shards(out) == reference and summary["ok"]
    # Different options change every shard's fingerprint: nothing is skipped.
    summary = converter.convert(output_directory=str(out), resize=256, **options)
    assert summary["skipped_shards"] == 0


def test_job_array_tasks_write_disjoint_shards_and_merge(tmp_path):
    train = _odd_dataset(tmp_path)
    options = dict(train_directory=str(train), train_shards=3, num_workers=1, max_rejects=10)
    converter.convert(output_directory=str(tmp_path / "single"), **options)
    out = tmp_path / "tasks"
    first = converter.convert(output_directory=str(out), num_tasks=2, task_index=0, **options)
    assert not first["complete"] and first["converted_shards"] == 2
    with pytest.raises(converter.ConversionError, match="train-00001-of-00003 \\(task 1\\)"):
        converter.merge_manifests(str(out))
    second = converter.convert(output_directory=str(out), num_tasks=2, task_index=1, **options)
    assert second["complete"] and second["converted_shards"] == 1
    assert _shards(out) == _shards(tmp_path / "single")
    assert converter.merge_manifests(str(out))["written"] == second["written"]


def test_progress_bar_shows_rate_and_eta():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    bar = converter.ProgressBar(200, "converting", stream)
    bar.start -= 2.0
    bar.update(100)
    bar.close()
    text = stream.getvalue()
    assert text.startswith("\rconverting [###############") and "100/200" in text
    assert "img/s" in text and "ETA 00:00:0" in text


def _run_cli(*args: str) -> subprocess.Popen:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.Popen(
        [sys.executable, str(CLI), *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


@pytest.mark.slow  # three TensorFlow start-ups (CLI, two workers) and a re-run: ~20 s on 2 cores
def test_cli_kill_9_then_rerun_gives_identical_output(shared_data, tmp_path):
    train = _sample_subset(shared_data, tmp_path, classes=120)
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
    assert killed_mid_shard, process.stderr.read().decode()[-2000:]
    assert not (out / converter.MANIFEST_FILE).exists()
    time.sleep(0.5)  # the workers die with their parent (PR_SET_PDEATHSIG)
    rerun = _run_cli(*args, f"--output_directory={out}", "--num_workers=1")
    assert rerun.wait(timeout=120) == 0, rerun.stderr.read().decode()[-2000:]
    assert _shards(out) == _shards(tmp_path / "ref")
    assert not list(out.glob("*.tmp-*"))
    for name in (converter.MANIFEST_FILE, statistics.STATISTICS_FILE, statistics.MEAN_IMAGE_FILE):
        assert (out / name).read_bytes() == (tmp_path / "ref" / name).read_bytes()
    summary = json.loads((out / converter.SUMMARY_FILE).read_text())
    assert summary["skipped_shards"] >= 1 and summary["converted_shards"] >= 1


def test_cli_exit_status_counts_rejects(tmp_path):
    train = _odd_dataset(tmp_path)
    common = [f"--train_directory={train}", "--train_shards=2", "--num_workers=1"]
    failing = _run_cli(*common, f"--output_directory={tmp_path / 'a'}", "--max_rejects=3", "--verify")
    bad = _run_cli("--train_directory=/nonexistent", f"--output_directory={tmp_path / 'b'}")
    assert failing.wait(timeout=120) == 1
    assert b"4 files rejected" in failing.stderr.read()
    assert bad.wait(timeout=120) == 2 and b"/nonexistent" in bad.stderr.read()
    assert json.loads((tmp_path / "a" / converter.SUMMARY_FILE).read_text())["rejected"] == 4
