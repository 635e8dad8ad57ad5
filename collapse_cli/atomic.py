"""Writes that a killed process cannot tear: a temporary sibling renamed over the target.

Only rank 0 of a run of several processes writes (ranks.is_main); the others compute the same and write nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

from collapse_cli.ranks import is_main

# Temporary names: `.<name>.tmp<pid>` files (atomic_write_bytes), `<folder>.tmp` checkpoint folders.
TMP_MARK = ".tmp"


def atomic_write_bytes(path: Path, payload: bytes, sync: bool = True) -> None:
    """Write to a temporary sibling, flush it to disk (`sync`), then rename over the target.

    The rename alone makes a killed process leave the old file or the new one, never half of one;
    the fsync adds durability through a power loss, and costs milliseconds a file on a busy disk.
    In a run of several processes (nproc=N) only rank 0 writes; the other ranks compute the
    same things and write nothing.
    """
    if not is_main():
        return
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    try:
        handle = open(tmp, "wb")
    except FileNotFoundError:  # the first file of a folder (a mkdir per write costs a syscall each time)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(tmp, "wb")
    try:
        with handle:
            handle.write(payload)
            if sync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk, a signal: no half-written temporary stays behind
        tmp.unlink(missing_ok=True)
        raise


def write_in_place(path: Path, payload: bytes) -> None:
    """Overwrite an existing file's bytes without allocating (when `payload` fits): the one write a full
    disk still allows. `payload` is padded with spaces to the file's size (JSON allows trailing whitespace)."""
    with open(path, "r+b") as handle:
        handle.write(payload.ljust(path.stat().st_size, b" "))
        handle.flush()
        os.fsync(handle.fileno())
