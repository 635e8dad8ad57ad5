"""The LM's corpus files in a generation folder: token ids (compressed .npz) and texts (.txt.gz, one per line).

Written through the run folder's atomic writes (RunDir.write_bytes); read back by resume, the measurement's
extinction summary and by hand (`zcat`, `numpy.load(f)['ids']`).
"""

from __future__ import annotations

import gzip
import io
import re
from pathlib import Path

import numpy as np

from collapse_cli.rundir import RunDir, require_run_arrays


def save_ids(run_dir: RunDir, relative: str | Path, ids: np.ndarray) -> None:
    """Token ids, compressed: a synthetic corpus is the bulk of a run's disk use."""
    buffer = io.BytesIO()
    dtype = np.uint16 if ids.size and ids.max() < 2**16 else np.int32
    np.savez_compressed(buffer, ids=ids.astype(dtype))
    run_dir.write_bytes(relative, buffer.getvalue())


def load_ids(path: Path) -> np.ndarray:
    """The ids save_ids wrote, as int64."""
    return require_run_arrays(path, ("ids",))["ids"].astype(np.int64)


def save_texts_gz(run_dir: RunDir, relative: str | Path, lines: list[str]) -> None:
    # One sequence per line; newlines inside a sequence are escaped so lines stay sequences.
    body = "\n".join(line.replace("\\", "\\\\").replace("\n", "\\n") for line in lines) + "\n"
    run_dir.write_bytes(relative, gzip.compress(body.encode("utf-8"), mtime=0))


def read_texts_gz(path: Path) -> list[str]:
    text = gzip.decompress(Path(path).read_bytes()).decode("utf-8")
    # One left-to-right pass undoes save_texts_gz's escaping (\\n -> newline, \\\\ -> backslash).
    unescape = re.compile(r"\\(.)")
    return [unescape.sub(lambda m: "\n" if m.group(1) == "n" else m.group(1), line) for line in text.split("\n")[:-1]]
