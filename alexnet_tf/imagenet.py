"""ImageNet class index <-> wnid <-> human-readable name.

The 1000 ILSVRC-2012 wnids in their standard sorted order (line i is class i) and their names
ship inside the package, so nothing has to be downloaded.
"""

from __future__ import annotations

import functools
import os

from alexnet_tf import paths

_RESOURCES = os.path.join(os.path.dirname(__file__), "resources")
DEFAULT_SYNSETS_FILE = os.path.join(_RESOURCES, "imagenet_lsvrc_2015_synsets.txt")
DEFAULT_METADATA_FILE = os.path.join(_RESOURCES, "imagenet_metadata.txt")


def load_synsets(path: str | None = None) -> list[str]:
    """The class wnids in label order, one per non-empty line of ``path``.

    Raises:
      ValueError: naming the file, when a line is not a wnid or a wnid repeats.
    """
    path = path or DEFAULT_SYNSETS_FILE
    synsets = [line.strip() for line in paths.read_text(path).splitlines() if line.strip()]
    for number, wnid in enumerate(synsets, start=1):
        if not (wnid.startswith("n") and wnid[1:].isdigit()):
            raise ValueError(f"{path}: entry {number} ({wnid!r}) is not a wnid like n01440764")
    if len(set(synsets)) != len(synsets):
        raise ValueError(f"{path}: a wnid appears more than once")
    if not synsets:
        raise ValueError(f"{path}: no wnids found")
    return synsets


def load_metadata(path: str | None = None) -> dict[str, str]:
    """``{wnid: human-readable names}`` from a ``wnid<TAB>names`` file."""
    path = path or DEFAULT_METADATA_FILE
    names = {}
    for number, line in enumerate(paths.read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        if "\t" not in line:
            raise ValueError(f"{path}: line {number} is not 'wnid<TAB>names'")
        wnid, text = line.split("\t", 1)
        names[wnid.strip()] = text.strip()
    return names


@functools.lru_cache(maxsize=8)
def _class_names_cached(synsets_file: str, metadata_file: str) -> tuple[str, ...]:
    metadata = load_metadata(metadata_file)
    return tuple(metadata.get(wnid, wnid) for wnid in load_synsets(synsets_file))


def fallback_class_names(num_classes: int) -> list[str]:
    """``class_0``, ``class_1``, ...: the names (and ids) of classes nothing else names.

    One token without spaces, so it also serves as the export's wnid column.
    """
    return [f"class_{i}" for i in range(num_classes)]


def class_names(synsets_file: str | None = None, metadata_file: str | None = None) -> list[str]:
    """Human-readable names in label order (the wnid itself where the metadata has none)."""
    return list(
        _class_names_cached(synsets_file or DEFAULT_SYNSETS_FILE, metadata_file or DEFAULT_METADATA_FILE)
    )
