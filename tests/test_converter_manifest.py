"""converter/manifest.py: the shards' records merged into the run's files, across tasks."""

from __future__ import annotations

import json

import pytest

from alexnet_tf import converter, reports, statistics
from alexnet_tf.converter.image import STATISTICS_METHOD
from alexnet_tf.converter.manifest import MixedStatisticsError
from tests.support import converter_helpers as h


def test_job_array_tasks_write_disjoint_shards_and_merge(tmp_path):
    train = h.odd_dataset(tmp_path)
    options = dict(train_directory=str(train), train_shards=3, num_workers=1, max_rejects=10)
    converter.convert(output_directory=str(tmp_path / "single"), **options)
    out = tmp_path / "tasks"
    first = converter.convert(output_directory=str(out), num_tasks=2, task_index=0, **options)
    assert not first["complete"] and first["converted_shards"] == 2
    with pytest.raises(converter.ConversionError, match="train-00001-of-00003 \\(task 1\\)"):
        converter.merge_manifests(str(out))
    second = converter.convert(output_directory=str(out), num_tasks=2, task_index=1, **options)
    assert second["complete"] and second["converted_shards"] == 1
    assert h.shards(out) == h.shards(tmp_path / "single")
    assert converter.merge_manifests(str(out))["written"] == second["written"]
    # The statistics, summed in integers, are those of the single run to the byte.
    for name in (statistics.STATISTICS_FILE, statistics.MEAN_IMAGE_FILE):
        assert (out / name).read_bytes() == (tmp_path / "single" / name).read_bytes(), name


def test_the_class_files_the_readers_need_are_written_here(tmp_path):
    wnids = ["n01440764", "n99000001"]
    (tmp_path / "labels.txt").write_text("".join(w + "\n" for w in wnids))
    (tmp_path / "meta.txt").write_text("n01440764\ttench\n")  # the second class has no name
    for wnid in wnids:
        (tmp_path / "train" / wnid).mkdir(parents=True)
        (tmp_path / "train" / wnid / "a.JPEG").write_bytes(h.jpeg(h.gradient()))
    out = tmp_path / "out"
    assert not converter.is_converted(str(out))
    converter.convert(
        train_directory=str(tmp_path / "train"),
        output_directory=str(out),
        train_shards=1,
        num_workers=1,
        labels_file=str(tmp_path / "labels.txt"),
        metadata_file=str(tmp_path / "meta.txt"),
    )
    assert converter.is_converted(str(out))
    assert (out / converter.SYNSETS_FILE).read_text() == "n01440764\nn99000001\n"
    assert (out / converter.METADATA_FILE).read_text() == "n01440764\ttench\nn99000001\tn99000001\n"
    # The readers find the names through the same file names.
    assert reports.class_labels(2, str(out / converter.SYNSETS_FILE)) == (wnids, ["tench", "n99000001"])
    (out / converter.METADATA_FILE).unlink()
    assert not converter.is_converted(str(out))


def _as_written_by_method_1(part_path) -> None:
    """A shard's record as a converter that sampled the statistics by method 1 wrote it."""
    record = json.loads(part_path.read_text())
    del record["statistics_method"]
    part_path.write_text(json.dumps(record))


def test_a_resume_with_another_statistics_method_is_refused(tmp_path):
    train = h.odd_dataset(tmp_path)
    options = dict(train_directory=str(train), output_directory=str(tmp_path / "out"), train_shards=2,
                   num_workers=1, max_rejects=10)
    converter.convert(**options)
    manifest = json.loads((tmp_path / "out" / converter.MANIFEST_FILE).read_text())
    assert manifest["statistics_method"] == STATISTICS_METHOD == 2
    plan_path = tmp_path / "out" / converter.PARTS_DIRECTORY / converter.PLAN_FILE
    plan = json.loads(plan_path.read_text())
    del plan["statistics_method"]  # as the converter wrote its plan before it recorded the method
    plan_path.write_text(json.dumps(plan))
    with pytest.raises(MixedStatisticsError, match=r"out: its training shards were sampled by statistics method 1, "
                       r"and this converter uses method 2.*Convert into a new --output_directory, or delete .*\.parts"):
        converter.convert(**options)


def test_a_merge_of_tasks_with_another_statistics_method_is_refused(tmp_path):
    train = h.odd_dataset(tmp_path)
    options = dict(train_directory=str(train), output_directory=str(tmp_path / "out"), train_shards=3,
                   num_workers=1, max_rejects=10, num_tasks=2)
    assert not converter.convert(task_index=0, **options)["complete"]
    _as_written_by_method_1(tmp_path / "out" / converter.PARTS_DIRECTORY / "train-00002-of-00003.json")
    # Task 1 finds the plan of its own method; the merge finds task 0's shard of the other.
    with pytest.raises(MixedStatisticsError, match=r"train-00002-of-00003 \(task 0\) was sampled by statistics "
                       r"method 1"):
        converter.convert(task_index=1, **options)
    assert not (tmp_path / "out" / converter.MANIFEST_FILE).exists()
