"""The --dataset=imagenette path against an archive served on loopback (built from real images)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import pathlib
import tarfile
import threading

import pytest

from alexnet_tf import converter, imagenette, records

TRAIN_PER_CLASS, VAL_PER_CLASS = 3, 2


@pytest.fixture()
def served_archive(shared_data, tmp_path):
    """A small ``imagenette2-160.tgz`` of real Imagenette images, served over HTTP on 127.0.0.1."""
    source = shared_data / "imagenette"
    site = tmp_path / "site"
    site.mkdir()
    archive = site / "imagenette2-160.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        for split, count in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
            for wnid_dir in sorted((source / split).iterdir()):
                for image in sorted(wnid_dir.iterdir())[:count]:
                    tar.add(image, arcname=f"imagenette2-160/{split}/{wnid_dir.name}/{image.name}")
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/imagenette2-160.tgz"
    yield url, hashlib.sha256(archive.read_bytes()).hexdigest(), requests
    server.shutdown()
    thread.join()


def test_official_archives_are_pinned():
    assert imagenette.IMAGENETTE_URLS[160].endswith("/fast-ai-imageclas/imagenette2-160.tgz")
    assert imagenette.IMAGENETTE_BYTES == {160: 99_003_388, 320: 341_663_724}
    assert imagenette.IMAGENETTE_SHA256[160].startswith("64d0c4859f35")
    assert imagenette.IMAGENETTE_SHA256[320].startswith("569b4497c98d")


def test_download_verify_extract_convert(served_archive, tmp_path):
    url, sha256, requests = served_archive
    out = tmp_path / "out"
    options = dict(train_shards=2, validation_shards=1, num_workers=1, url=url, sha256=sha256)
    summary = imagenette.convert_imagenette(str(out), download_directory=str(tmp_path / "dl"), **options)
    assert summary["splits"]["train"]["written"] == 10 * TRAIN_PER_CLASS
    assert summary["splits"]["validation"]["written"] == 10 * VAL_PER_CLASS
    assert summary["rejected"] == 0 and summary["ok"]
    synsets = (out / converter.SYNSETS_FILE).read_text().split()
    assert len(synsets) == 10 and synsets == sorted(synsets)
    labels = {
        int(e.features.feature[records.LABEL_KEY].int64_list.value[0])
        for e in converter.iterate_records(str(p) for p in sorted(out.glob("train-*")))
    }
    assert labels == set(range(10))
    assert (out / "statistics.json").exists()
    # A second run finds the verified archive and the extracted folders: no new download.
    downloads = len(requests)
    imagenette.convert_imagenette(str(out), download_directory=str(tmp_path / "dl"), **options)
    assert len(requests) == downloads == 1


def test_wrong_checksum_fails_clearly_and_keeps_nothing(served_archive, tmp_path):
    url, _, _ = served_archive
    download = tmp_path / "dl"
    with pytest.raises(converter.ConversionError, match="sha256.*not the expected 0000"):
        imagenette.convert_imagenette(str(tmp_path / "out"), download_directory=str(download), url=url, sha256="0" * 64)
    assert not os.path.exists(download / "imagenette2-160.tgz")
    assert not os.path.exists(download / "imagenette2-160")


def test_train_py_path_gives_the_command_lines_shard_layout(shared_data, tmp_path):
    """prepare_imagenette (train.py) converts through convert_imagenette: one layout, class names."""
    source = tmp_path / "imagenette"
    for split, count in (("train", 4), ("val", 1)):
        for wnid_dir in sorted((shared_data / "imagenette" / split).iterdir()):
            (source / split / wnid_dir.name).mkdir(parents=True)
            for image in sorted(wnid_dir.iterdir())[:count]:
                (source / split / wnid_dir.name / image.name).symlink_to(image)
    records_dir = imagenette.prepare_imagenette(str(tmp_path / "data"), 64, str(source), num_workers=1)
    manifest = json.loads((pathlib.Path(records_dir) / converter.MANIFEST_FILE).read_text())
    assert manifest["splits"]["train"]["num_shards"] == imagenette.TRAIN_SHARDS == 32
    assert manifest["splits"]["validation"]["num_shards"] == imagenette.VALIDATION_SHARDS == 8
    assert manifest["options"]["resize"] == 64
    names = (pathlib.Path(records_dir) / converter.METADATA_FILE).read_text().splitlines()
    assert names[0] == "n01440764\ttench, Tinca tinca" and len(names) == 10
    assert sorted(p.name for p in source.iterdir()) == ["train", "val"]  # nothing written into the source
    # Converted once: a second call finds the records and converts nothing.
    before = {p.name: p.stat().st_mtime_ns for p in pathlib.Path(records_dir).iterdir()}
    assert imagenette.prepare_imagenette(str(tmp_path / "data"), 64, str(source)) == records_dir
    assert {p.name: p.stat().st_mtime_ns for p in pathlib.Path(records_dir).iterdir()} == before
    with pytest.raises(converter.ConversionError, match="--imagenette_dir=.*no train/"):
        imagenette.prepare_imagenette(str(tmp_path / "other"), 64, str(tmp_path / "nothing"))
