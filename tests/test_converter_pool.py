"""converter/pool.py: jobs run in or out of process, every image counted, the bar's figures."""

from __future__ import annotations

import io
import logging

from alexnet_tf import converter
from alexnet_tf.converter.pool import ProgressCounts, Tally, run_jobs


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
