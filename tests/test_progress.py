"""What a run reports while it works, off a terminal: occasional log lines, never a bar."""

from __future__ import annotations

import io
import logging

import pytest
from rich.console import Console

from collapse_cli.experiment.progress import Feedback, duration


def _log_console() -> Console:
    return Console(file=io.StringIO(), force_terminal=False)  # what a batch job's log file is


def test_a_long_stage_logs_its_progress_and_its_end(caplog):
    feedback = Feedback(_log_console(), log_every_s=0.0)  # every update is "long enough"
    with caplog.at_level(logging.INFO, logger="collapse"):
        with feedback.task("gen 3 generate", total=4) as update:
            update(1, 4)
            update(4, 4)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "gen 3 generate: 1/4, 0s elapsed"  # one item gives no rate yet
    assert lines[1] == "gen 3 generate: 4/4, 0s elapsed"  # no eta once the stage is complete
    assert lines[2].startswith("gen 3 generate: done in ")
    assert feedback.console.file.getvalue() == ""  # no bar, no escape codes in the log


def test_a_short_stage_and_the_other_ranks_stay_silent(caplog):
    quick = Feedback(_log_console(), log_every_s=3600.0)
    other_rank = Feedback(Console(quiet=True), log_every_s=0.0)
    with caplog.at_level(logging.INFO, logger="collapse"):
        for feedback in (quick, other_rank):
            with feedback.task("gen 0 train", total=2) as update:
                update(1, 2)
                update(2, 2)
    assert caplog.records == []


@pytest.mark.parametrize("seconds, text", [(4.4, "4s"), (59.6, "1m00s"), (185, "3m05s"), (7620, "2h07m")])
def test_duration(seconds, text):
    assert duration(seconds) == text


def test_the_eta_leaves_out_the_first_items_one_off_cost(caplog, monkeypatch):
    """A compiled first step took 100 s, every later one 1 s: 89 steps to go is 89 s, not 890 s."""
    from collapse_cli.experiment import progress

    clock = iter([0.0, 100.0, 110.0])  # start; step 1 done (compiled); step 11 done
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    feedback = Feedback(_log_console(), log_every_s=5.0)
    with caplog.at_level(logging.INFO, logger="collapse"):
        with feedback.task("gen 0 train", total=100) as update:
            update(1, 100)
            update(11, 100)
            monkeypatch.setattr(progress.time, "monotonic", lambda: 110.0)  # the closing line's clock
    lines = [r.getMessage() for r in caplog.records]
    assert lines[:2] == ["gen 0 train: 1/100, 1m40s elapsed", "gen 0 train: 11/100, 1m50s elapsed, eta 1m29s"]
