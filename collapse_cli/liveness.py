"""Whether the process a run folder's status.json names is alive: on this machine, and the same process.

What status.json records of its writer (pid, start time, host) is read here; rundir.py writes it. A killed
run cannot say it stopped, so a reader finds out from the process table. No other collapse module is imported.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Optional


def live_state(status: dict) -> str:
    """The state status.json records, except that a "running" run whose process is gone from this machine is
    "stopped": a SIGKILL, the out-of-memory killer or a lost node leaves no chance to write "interrupted".
    A run recorded on another host (or before hosts were recorded) stays "running": its process is not
    visible from here."""
    state = str(status.get("state", "unknown"))
    pid = status.get("pid")
    if state != "running" or not written_here(status) or not isinstance(pid, int):
        return state
    return "running" if process_alive(pid, status.get("started")) else "stopped"


def writer_here(status: dict) -> Optional[int]:
    """The pid of the process on this machine that still writes the run, else None: a second process
    (a resume, a relaunched job) must not write the same folder at the same time."""
    pid = status.get("pid")
    return pid if isinstance(pid, int) and live_state(status) == "running" and written_here(status) else None


def unwritten_reason(status: dict) -> Optional[str]:
    """What a running or stopped status says that no process wrote into it: a killed run could not, and a
    running one has nothing to say yet. One wording for show, compare, a sweep's end and resume."""
    state = live_state(status)
    if state == "stopped":
        return f"its process ({status.get('pid')}) is gone without a word, killed"
    if state != "running":
        return None
    if written_here(status):
        return f"process {status.get('pid')} on this machine still writes it"
    return f"on {status.get('host') or 'another machine'}, last update {status.get('updated')}"


def written_here(status: dict) -> bool:
    """Whether this machine wrote the status (its process, if any, is one this machine can see)."""
    return status.get("host") == socket.gethostname()


# For a reader of status.json: `started` is in clock ticks (what the pid check compares); this is a time of
# day. Taken when the run-folder code loads, seconds after the process starts.
PROCESS_STARTED_AT = time.strftime("%Y-%m-%dT%H:%M:%S%z")


def process_alive(pid: int, started: Optional[str] = None) -> bool:
    """Whether process `pid` exists and, where `started` (process_start's value) is known, is the one that
    started then: pids are reused, and a message telling the user to kill one must name the right process."""
    try:
        os.kill(pid, 0)  # signal 0: the existence check, nothing is sent
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    now = process_start(pid)
    return started is None or now is None or now == started


def process_start(pid: int) -> Optional[str]:
    """When the process started, in clock ticks since boot (Linux's /proc/PID/stat field 22); None elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # after the command's ")", fields run from 3 (state): 22 is at 19
