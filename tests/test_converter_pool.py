"""converter/pool.py: jobs run in or out of process, every image counted, the bar's figures."""

from __future__ import annotations

import io
import logging
import os
import sys

from alexnet_tf import converter
from alexnet_tf.converter.pool import ProgressCounts, Tally, run_jobs
from alexnet_tf.converter.run import ConvertArguments, list_inputs, load_classes, plan_jobs
from tests.support import converter_helpers as h
from tests.support import converter_probe


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


def _count_items(job: list[int], count) -> int:
    for n in job:
        count(n)
    return sum(job)


def test_jobs_count_into_their_own_slots_and_the_bar_sees_the_sum():
    counts = ProgressCounts(3)
    try:
        tallies = [Tally(counts.slot(i)) for i in range(3)]
        for i, tally in enumerate(tallies):
            tally.add(i + 1)
            tally.add(10)
        assert counts.done() == 1 + 2 + 3 + 30
        for tally in tallies:
            tally.close()
    finally:
        counts.close()


def test_run_jobs_in_process_yields_every_result_and_times_the_work(caplog):
    caplog.set_level(logging.INFO, logger="absl")
    jobs = [[1, 2], [3], [4, 5, 6]]
    timing: dict[str, float] = {}
    results = list(run_jobs(_count_items, jobs, num_workers=1, total=21, description="testing", timing=timing))
    assert sorted(results) == [3, 3, 15]
    assert timing["end"] >= timing["start"]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("testing [")]
    assert lines and " 21/21 " in lines[-1] and "100.0%" in lines[-1]


def test_workers_write_shards_without_importing_tensorflow(tmp_path):
    """A worker process converts a shard and still has no ``tensorflow`` in ``sys.modules``."""
    train = h.odd_dataset(tmp_path)
    arguments = ConvertArguments(
        train_directory=str(train), validation_directory=None, output_directory=str(tmp_path / "out"),
        validation_labels_file=None, train_shards=2, validation_shards=1, num_workers=2, resize=None,
        labels_file=None, metadata_file=None, max_rejects=10, label_offset=0, seed=0, jpeg_quality=95, num_tasks=1,
        task_index=0,
    )
    classes = load_classes(None, None)
    _, jobs = plan_jobs(arguments, classes, list_inputs(arguments, classes))
    os.makedirs(jobs[0].parts_directory)
    assert "tensorflow" in sys.modules  # this process has it: the workers do not inherit it
    results = list(run_jobs(converter_probe.probe, jobs, num_workers=2, total=18, description="probing"))
    assert {pid for pid, _, _ in results}.isdisjoint({os.getpid()})
    assert sum(written for _, written, _ in results) == 14
    assert [loaded for _, _, loaded in results] == [[], []]
