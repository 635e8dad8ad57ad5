"""A test hook: SIGKILL this process right after one named write of the run folder.

`COLLAPSE_KILL_AT=<write>:<generation>` (say `DONE:1`) kills the run the moment that write is on disk,
so a test can stop a run between any two of its writes, not only at random moments, and check that
`collapse resume` still ends where an uninterrupted run ends (tests/test_integrity.py does so for
every write in WRITES). Unset, as everywhere outside the tests, each call costs one dict lookup.
"""

from __future__ import annotations

import os
import signal

# Every write of a generation, in the order the loop makes them (experiment/loop.py, rundir.py).
# `status` is the progress count after a generation; the last four are made once, after the last one.
WRITES = ("composition", "train_origin", "samples", "curated_index", "reference", "model", "metrics_json",
          "DONE", "metrics_jsonl", "previous_model_delete", "status", "summary", "figures", "reference_delete")
ENV = "COLLAPSE_KILL_AT"


def written(name: str, generation: int) -> None:
    """Mark the write `name` of `generation` done; die here if the test asked for it."""
    if os.environ.get(ENV) == f"{name}:{generation}":
        os.kill(os.getpid(), signal.SIGKILL)
