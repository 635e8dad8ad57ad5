"""One GPU per job when a sweep runs on one multi-GPU box under Hydra's `submitit_local` launcher.

submitit's LocalExecutor starts every job of a sweep at once, each in a fresh process, and gives
every one of them the same CUDA_VISIBLE_DEVICES (`range(gpus_per_node)`: all on GPU 0). So each
job claims a GPU itself, before anything touches CUDA: it takes an exclusive lock on one of the
box's GPUs (a file per GPU in the sweep folder), sets CUDA_VISIBLE_DEVICES to that GPU alone,
and holds the lock until it ends; jobs that find every GPU taken wait for one. As many jobs
compute at once as the box has GPUs, and each sees exactly one. The kernel drops a lock when
its process dies, so a killed job never keeps a GPU.

The parent (`collapse run -m`) publishes the box's GPUs in COLLAPSE_GPUS before the launcher
starts, since submitit has overwritten CUDA_VISIBLE_DEVICES by the time a job runs.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

from collapse_cli.rundir import RunDir

BOX_GPUS = "COLLAPSE_GPUS"
LOCKS = ".gpu_slots"
GPU_RECORD = "gpu.json"


def box_gpus() -> list[str]:
    """The GPUs this process may hand out: COLLAPSE_GPUS, else CUDA_VISIBLE_DEVICES, else every CUDA device."""
    for variable in (BOX_GPUS, "CUDA_VISIBLE_DEVICES"):
        if variable in os.environ:
            return [gpu.strip() for gpu in os.environ[variable].split(",") if gpu.strip()]
    import torch

    return [str(k) for k in range(torch.cuda.device_count())]


def publish_box_gpus() -> None:
    """Parent side: the jobs a launcher starts inherit this environment variable."""
    os.environ[BOX_GPUS] = ",".join(box_gpus())


def claimed_by_job() -> bool:
    """Claim only in jobs of submitit's local executor: other launchers assign devices themselves."""
    return os.environ.get("SUBMITIT_EXECUTOR") == "local" and bool(os.environ.get(BOX_GPUS))


@contextmanager
def claim_one(run_path: Path, device: str, poll_s: float = 0.5) -> Iterator[Optional[str]]:
    """Hold one of the box's GPUs while the run in `run_path` runs, seen alone through CUDA_VISIBLE_DEVICES.

    Yields the GPU (None when not claiming). The run folder's gpu.json records which GPU and when,
    so a sweep's folders say where each run ran.
    """
    if device == "cpu" or not claimed_by_job():
        yield None
        return
    locks = Path(run_path).parent / LOCKS
    locks.mkdir(parents=True, exist_ok=True)
    gpus = box_gpus()
    while True:
        for gpu in gpus:
            handle = open(locks / f"gpu{gpu}.lock", "w")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            os.environ["CUDA_VISIBLE_DEVICES"] = gpu
            record = {"CUDA_VISIBLE_DEVICES": gpu, "claimed_at": time.time()}
            RunDir(run_path).write_json(GPU_RECORD, record)
            try:
                yield gpu
            finally:
                RunDir(run_path).write_json(GPU_RECORD, {**record, "released_at": time.time()})
                handle.close()  # releases the lock
            return
        time.sleep(poll_s)
