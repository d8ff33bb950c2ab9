"""converter/listing.py: the input folders listed in a stable order, every problem named."""

from __future__ import annotations

import pytest

from alexnet_tf import converter
from tests.support import converter_helpers as h

WNIDS = ["n01440764", "n01443537", "n01484850"]


def _write(path, data=b"") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data or h.jpeg(h.gradient()))


def test_training_listing_is_sorted_and_reports_what_it_skips(tmp_path):
    for name in ("b.JPEG", "a.jpg", "c.png"):
        _write(tmp_path / WNIDS[1] / name)
    _write(tmp_path / WNIDS[0] / "z.JPEG")
    _write(tmp_path / WNIDS[0] / "readme.txt", b"notes")
    _write(tmp_path / WNIDS[0] / ".hidden.JPEG")
    _write(tmp_path / "stray.JPEG")
    listing = converter.list_training_files(str(tmp_path), WNIDS)
    assert [f.relpath for f in listing.items] == [f"{WNIDS[0]}/z.JPEG"] + [
        f"{WNIDS[1]}/{name}" for name in ("a.jpg", "b.JPEG", "c.png")
    ]
    assert all(isinstance(f, converter.ListedFile) and f.size > 0 for f in listing.items)
    assert [f.wnid for f in listing.items] == [WNIDS[0]] + [WNIDS[1]] * 3
    assert listing.missing_classes == [WNIDS[2]]
    assert sorted(p.rsplit("/", 1)[1] for p in listing.ignored) == ["readme.txt", "stray.JPEG"]


def test_a_folder_that_is_no_class_is_refused_by_name(tmp_path):
    _write(tmp_path / WNIDS[0] / "a.JPEG")
    _write(tmp_path / "n99999999" / "a.JPEG")
    with pytest.raises(converter.ConversionError, match="--train_directory=.*labels file labels.txt .e.g. n99999999"):
        converter.list_training_files(str(tmp_path), WNIDS, "labels.txt")


def test_flat_validation_takes_line_n_of_the_labels_file(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text(f"{WNIDS[2]}\n{WNIDS[0]}\n{WNIDS[2]}\n\n")
    val = tmp_path / "val"
    for number in (3, 1, 2):
        _write(val / f"ILSVRC2012_val_{number:08d}.JPEG")
    listing = converter.list_validation_files(str(val), str(labels), WNIDS)
    assert [(f.relpath[-10:-5], f.wnid) for f in listing.items] == [
        ("00001", WNIDS[2]),
        ("00002", WNIDS[0]),
        ("00003", WNIDS[2]),
    ]
    assert listing.missing_classes == [WNIDS[1]]
    _write(val / "ILSVRC2012_val_00000009.JPEG")
    with pytest.raises(converter.ConversionError, match="labels.txt has 3 lines.*number 9"):
        converter.list_validation_files(str(val), str(labels), WNIDS)


def test_mixed_validation_layouts_and_unknown_labels_are_refused(tmp_path):
    val = tmp_path / "val"
    _write(val / "ILSVRC2012_val_00000001.JPEG")
    _write(val / WNIDS[0] / "a.JPEG")
    with pytest.raises(converter.ConversionError, match="both class folders and images"):
        converter.list_validation_files(str(val), None, WNIDS)
    (val / WNIDS[0] / "a.JPEG").unlink()
    (val / WNIDS[0]).rmdir()
    labels = tmp_path / "labels.txt"
    labels.write_text("n12345678\n")
    with pytest.raises(converter.ConversionError, match="line 1 .*n12345678"):
        converter.list_validation_files(str(val), str(labels), WNIDS)
    with pytest.raises(converter.ConversionError, match="--validation_labels_file=.*missing.txt does not exist"):
        converter.list_validation_files(str(val), str(tmp_path / "missing.txt"), WNIDS)
