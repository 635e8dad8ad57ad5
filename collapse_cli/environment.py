"""The machine and library versions a run computed on, in RUN/environment.json.

A figure that does not reproduce on another machine is explained by this record: the
same machine and versions give bit-identical runs; another CPU or another numpy /
torch / transformers gives results within seed noise but not identical. The file is a
list: a run's start appends one entry, and every `collapse resume` appends another,
so generations computed elsewhere stay visible.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

FILE = "environment.json"
# Distributions whose versions change numbers (imported names may differ: sklearn is scikit-learn).
PACKAGES = ("collapse", "torch", "transformers", "tokenizers", "numpy", "scikit-learn", "scipy")
# Keys that say when and where, not what computed: never a reason to flag a difference.
CIRCUMSTANCE_KEYS = ("recorded", "first_generation", "host", "threads", "cpus_usable")


def package_version(name: str) -> Optional[str]:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def git_commit() -> Optional[str]:
    """The source checkout's commit, '+dirty' with uncommitted changes; None outside a git checkout."""
    source = Path(__file__).resolve().parent.parent
    if not (source / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + ("+dirty" if dirty else "")) or None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cpus() -> int:
    """The cores this process may run on (its affinity mask: a scheduler's or taskset's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows: no affinity API
        return os.cpu_count() or 1


# Set by `collapse run -m` for its jobs: how many runs the sweep has (a local launcher starts them all at once).
SWEEP_JOBS = "COLLAPSE_SWEEP_JOBS"


def jobs_at_once() -> int:
    """Runs computing on this box at once: a sweep's under submitit's local executor (every job starts
    together), else 1 (Hydra's basic launcher runs jobs one after another; SLURM gives each its own cores)."""
    if os.environ.get("SUBMITIT_EXECUTOR") != "local":
        return 1
    try:
        return max(1, int(os.environ.get(SWEEP_JOBS, "1")))
    except ValueError:
        return 1


def thread_count(choice: str) -> int:
    """threads=N, or for auto the user's OMP_NUM_THREADS, else this process's share of its usable cores:
    each process running as many OpenMP threads as the box has cores made loaded runs 10-18x slower."""
    if choice != "auto":
        return int(choice)
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        return max(1, usable_cpus() // jobs_at_once())


def apply_threads(choice: str) -> int:
    """Set torch's and the BLAS libraries' (numpy, scikit-learn) thread pools; returns the count."""
    import torch

    threads = thread_count(choice)
    torch.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=threads)  # applies now, for the rest of the process
    except ImportError:  # scikit-learn brings threadpoolctl; without it BLAS keeps its own default
        pass
    return threads


def gpu() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"cuda": torch.version.cuda}
    if torch.cuda.is_available():
        info["gpu"] = ", ".join(sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())}))
        info["gpu_count"] = torch.cuda.device_count()
        info["gpu_driver"] = nvidia_driver()
    return info


def nvidia_driver() -> Optional[str]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    return out[0] if out else None


def collect(first_generation: int = 0) -> dict[str, Any]:
    import torch

    return {"recorded": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "first_generation": first_generation,
            "git_commit": git_commit(), "python": platform.python_version(),
            **{name: package_version(name) for name in PACKAGES},
            "cpu": cpu_model(), "cpus_usable": usable_cpus(), "threads": torch.get_num_threads(),
            **gpu(), "os": platform.platform(), "host": platform.node()}


def record(run_path: Path, first_generation: int) -> dict[str, Any]:
    """Append this process's environment to the run's list (a start, or a resume at `first_generation`)."""
    from collapse_cli.atomic import atomic_write_bytes
    from collapse_cli.rundir import to_json

    # A damaged record is replaced by this process's entry alone: the earlier ones were unknown already.
    entries = [e for e in read(run_path) or [] if e.get("first_generation", 0) < first_generation]
    entry = collect(first_generation)
    atomic_write_bytes(run_path / FILE, (to_json([*entries, entry]) + "\n").encode())
    return entry


def read(run_path: Path) -> Optional[list[dict]]:
    """The run's environment entries, oldest first; [] for a run from before this record, None for a record
    that cannot be read (torn or edited): its versions are unknown, which is not the same as none recorded."""
    try:
        loaded = json.loads((run_path / FILE).read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError):
        return None
    entries = loaded if isinstance(loaded, list) else [loaded]
    return [e for e in entries if isinstance(e, dict)]


def identity(entry: dict) -> dict[str, Any]:
    """What computed: versions and hardware, without when, where and how many threads."""
    return {k: v for k, v in entry.items() if k not in CIRCUMSTANCE_KEYS}


def differences(entries: list[dict]) -> list[str]:
    """Keys on which the entries' identities disagree ("numpy 1.26.4 / 2.1.3")."""
    keys = sorted({k for e in entries for k in identity(e)})
    lines = []
    for key in keys:
        values = list(dict.fromkeys(str(e.get(key)) for e in entries))
        if len(values) > 1:
            lines.append(f"{key} {' / '.join(values)}")
    return lines


def words(entry: dict) -> str:
    """One line: 'collapse 0.1.0 (abc1234), Python 3.11.9, torch 2.4.1 (CUDA 12.1), ... on <cpu> (4 threads)'."""
    commit = entry.get("git_commit")
    versions = [f"collapse {entry.get('collapse')}" + (f" ({commit[:12]})" if commit else ""),
                f"Python {entry.get('python')}"]
    versions += [f"{name} {entry[name]}" for name in PACKAGES[1:] if entry.get(name)]
    where = f"{entry.get('cpu')} ({entry.get('threads')} threads of {entry.get('cpus_usable')} cores)"
    if entry.get("gpu"):
        where += f", {entry['gpu']} (driver {entry.get('gpu_driver')}, CUDA {entry.get('cuda')})"
    return f"{', '.join(versions)}; {where}; {entry.get('os')}"
