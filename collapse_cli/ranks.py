"""Which process this is in a run of several (`collapse run nproc=N`, experiment/distributed.py).

Below the experiment and the report: the run folder (rundir.py) asks `is_main` before every
write, and `collapse compare`/`show` read run folders without importing torch. So torch.distributed
is looked up, never imported: without it loaded there is no process group, and one process is rank 0.
"""

from __future__ import annotations

import sys


def process_group():
    """torch.distributed when this process is in a process group, else None."""
    dist = sys.modules.get("torch.distributed")
    return dist if dist is not None and dist.is_available() and dist.is_initialized() else None


def active() -> bool:
    return process_group() is not None


def rank() -> int:
    return process_group().get_rank() if active() else 0


def world_size() -> int:
    return process_group().get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0, or a single process: the one process that writes the run folder and talks to the user."""
    return rank() == 0
