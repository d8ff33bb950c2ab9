"""alexnet_tf/imagenet.py: class index <-> wnid <-> name, the shipped lists and the errors naming the file."""

from __future__ import annotations

import pytest

from alexnet_tf import imagenet


def test_the_shipped_ilsvrc_2012_classes():
    synsets = imagenet.load_synsets()
    assert len(synsets) == len(set(synsets)) == 1000
    # The standard order: sorted wnids, tench first, toilet tissue last.
    assert synsets == sorted(synsets)
    assert synsets[0] == "n01440764" and synsets[999] == "n15075141"
    metadata = imagenet.load_metadata()
    assert set(synsets) <= set(metadata)
    names = imagenet.class_names()
    assert len(names) == 1000 and names[0] == "tench, Tinca tinca"
    assert names[999] == "toilet tissue, toilet paper, bathroom tissue"


def test_class_names_of_another_data_set(tmp_path):
    synsets_file, metadata_file = tmp_path / "synsets.txt", tmp_path / "metadata.txt"
    synsets_file.write_text("n99000001\n\nn01440764\n")  # blank lines are skipped
    metadata_file.write_text("n01440764\t tench \n\nn99000002\tunused\n")
    assert imagenet.load_synsets(str(synsets_file)) == ["n99000001", "n01440764"]
    assert imagenet.load_metadata(str(metadata_file)) == {"n01440764": "tench", "n99000002": "unused"}
    # A class the metadata does not name is called by its wnid.
    assert imagenet.class_names(str(synsets_file), str(metadata_file)) == ["n99000001", "tench"]
    # Without a metadata file the shipped ImageNet names stand in.
    assert imagenet.class_names(str(synsets_file)) == ["n99000001", "tench, Tinca tinca"]


def test_fallback_names_are_single_tokens():
    assert imagenet.fallback_class_names(3) == ["class_0", "class_1", "class_2"]
    assert imagenet.fallback_class_names(0) == []
    assert all(" " not in name for name in imagenet.fallback_class_names(1000))


@pytest.mark.parametrize(
    "content, message",
    [
        ("n01440764\ntench\n", r"entry 2 \('tench'\) is not a wnid"),
        ("n01440764\nn0144076x\n", r"entry 2 \('n0144076x'\) is not a wnid"),
        ("n01440764\nn01440764\n", "a wnid appears more than once"),
        ("\n\n", "no wnids found"),
    ],
)
def test_bad_synsets_files_are_errors_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad_synsets.txt"
    path.write_text(content)
    with pytest.raises(ValueError, match=f"bad_synsets.txt: {message}"):
        imagenet.load_synsets(str(path))


def test_bad_metadata_line_is_an_error_naming_the_file_and_line(tmp_path):
    path = tmp_path / "bad_metadata.txt"
    path.write_text("n01440764\ttench\nn01443537 goldfish\n")
    with pytest.raises(ValueError, match="bad_metadata.txt: line 2 is not 'wnid<TAB>names'"):
        imagenet.load_metadata(str(path))
