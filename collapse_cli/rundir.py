"""The run folder: every file written atomically, every generation marked when done.

The format both sides share: experiment/ writes run folders and report/ reads them, and both import
this module, which imports neither: only atomic.py (its writes), liveness.py (is the writer alive), ranks.py
(which process writes) and the test hook killpoint.py. The LM's corpus files are families/lm/corpus_files.py.

Layout (see README "Output layout"):
    status.json            running | finished | failed | interrupted | awaiting_review (curate=review), with reason
    metrics.jsonl          one line per finished generation (appended; resume rebuilds it from gen_*/metrics.json)
    summary.json           written last, when the run finishes
    reference/             the generation-0 model while the run needs it
    gen_NNN/               the family's samples (LM: synthetic.txt.gz, synthetic_ids.npz, seq_ppl.npy),
                           composition.json, train_origin.npy, curated_index.npy, metrics.json, DONE
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import time
import zipfile
from pathlib import Path
from typing import Any, Optional

import numpy as np

from collapse_cli.atomic import TMP_MARK, atomic_write_bytes, write_in_place
from collapse_cli.errors import CollapseError
from collapse_cli.killpoint import written
from collapse_cli.liveness import PROCESS_STARTED_AT, process_start
from collapse_cli.ranks import is_main

STATUS = "status.json"
AWAITING_REVIEW = "awaiting_review"  # the status of a run that stopped for its reviewer (curate=review)
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
DONE = "DONE"
PROGRESS_KEYS = ("generations_done", "generations_total")
# The overrides of every `collapse resume` of the run, in order (a list of key=value; later ones win).
RESUME_OVERRIDES = "resume_overrides.yaml"
# status.json is padded to this size, so that on a full disk the last state (failed: the disk is full)
# can still be written over it in place: an atomic rename needs a new file, an overwrite no new space.
STATUS_BYTES = 4096


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def to_json(obj: Any) -> str:
    # NaN is not JSON; null is what every reader of a metrics file understands.
    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value
    return json.dumps(clean(obj), default=_json_default, sort_keys=False)


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """A nested record (a config, summary.json) as dotted keys: `{"train": {"lr": 1}}` -> `{"train.lr": 1}`.
    What trackers name hyperparameters by, and what `collapse compare` compares configs on."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def gen_name(generation: int) -> str:
    return f"gen_{generation:03d}"


class RunDir:
    """The run folder's files. Its writes are atomic renames without fsync: resume recovers from a
    killed process, and a 2,000-generation run writes ~6 files a generation (fsyncs would cost more
    than a small family's whole generation)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def write_bytes(self, relative: str | Path, payload: bytes) -> None:
        atomic_write_bytes(self.path / relative, payload, sync=False)

    def gen(self, generation: int) -> Path:
        return self.path / gen_name(generation)

    def write_json(self, relative: str | Path, obj: Any) -> None:
        self.write_bytes(relative, (to_json(obj) + "\n").encode())

    def read_json(self, relative: str | Path) -> dict:
        """A JSON object the run wrote (a generation's metrics.json); damaged or missing is a one-line error."""
        value = read_json_object(self.path / relative)
        if value is None:
            raise damaged(self.path / relative, "missing")
        return value

    def save_array(self, relative: str | Path, array: np.ndarray) -> None:
        import io

        buffer = io.BytesIO()
        np.save(buffer, array)
        self.write_bytes(relative, buffer.getvalue())

    # --- status -----------------------------------------------------------
    def set_status(self, state: str, reason: Optional[str] = None, **extra: Any) -> None:
        # The progress counts outlive a change of state: an interrupted or failed run still says how far it got.
        progress = {key: value for key, value in self.status().items() if key in PROGRESS_KEYS}
        status = {"state": state, "reason": reason, "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
                  "pid": os.getpid(), "started": process_start(os.getpid()), "process_started_at": PROCESS_STARTED_AT,
                  "host": socket.gethostname(),
                  **progress, **extra}
        payload = (to_json(status) + "\n").encode().ljust(STATUS_BYTES, b" ")
        try:
            self.write_bytes(STATUS, payload)
        except OSError:
            if not is_main() or not (self.path / STATUS).is_file():
                raise
            # No space for a new file: overwrite the padded one (a reason longer than the padding is cut).
            status["reason"] = (reason or "")[:STATUS_BYTES // 2] or None
            write_in_place(self.path / STATUS, (to_json(status) + "\n").encode())

    def status(self) -> dict:
        return read_json_object(self.path / STATUS) or {"state": "unknown"}

    # --- generations --------------------------------------------------------
    def done_generations(self) -> list[int]:
        return sorted(int(p.parent.name[4:]) for p in self.path.glob(f"gen_*/{DONE}"))

    def finish_generation(self, generation: int, metrics: dict) -> None:
        """Mark a generation done, then append its line to metrics.jsonl.

        Appending costs the same at generation 2,000 as at 1 (a rebuild would read every
        generation's file each time). A kill between DONE and the append leaves the line
        out; resume rebuilds metrics.jsonl from the done generations, so exactly one line
        per generation is there whatever moment a process was killed at.
        """
        if not is_main():  # metrics.jsonl is appended to below, past atomic_write_bytes: rank 0 alone
            return
        redone = (self.gen(generation) / DONE).exists()
        line = to_json(metrics)
        self.write_bytes(Path(gen_name(generation)) / "metrics.json", (line + "\n").encode())  # write_json's bytes
        written("metrics_json", generation)
        self.write_bytes(Path(gen_name(generation)) / DONE, b"")
        written("DONE", generation)
        if redone:  # its old line is in the file: only a rebuild keeps one line per generation
            self.rebuild_metrics()
        else:
            with open(self.path / METRICS, "ab") as handle:
                handle.write((line + "\n").encode())  # one write: readers never see half a line in practice
        written("metrics_jsonl", generation)

    def rebuild_metrics(self) -> None:
        """metrics.jsonl from the done generations' metrics.json (also on resume: a kill can land between the two)."""
        lines = [to_json(self.read_json(Path(gen_name(g)) / "metrics.json")) for g in self.done_generations()]
        atomic_write_bytes(self.path / METRICS, "".join(line + "\n" for line in lines).encode())

    def remove_temporaries(self) -> list[Path]:
        """The temporary files and checkpoint folders a killed process or a full disk left behind."""
        if not is_main():
            return []
        # Where the run writes: its root, figures/ and the generation folders (not trackers' own folders).
        folders = [self.path, self.path / "figures", *self.path.glob("gen_*")]
        left = [p for folder in folders for p in folder.glob(f"*{TMP_MARK}*")
                if re.fullmatch(rf"\..+{re.escape(TMP_MARK)}\d+", p.name) or p.name.endswith(TMP_MARK)]
        for leftover in left:
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
        return left

    def discard_unfinished(self, generation: int) -> None:
        """Remove a generation folder that was started but never marked done."""
        folder = self.gen(generation)
        if is_main() and folder.exists() and not (folder / DONE).exists():
            shutil.rmtree(folder)

    def disk_usage(self, generation: int) -> int:
        if not is_main():  # rank 0 may be renaming files there; only its figures are written
            return 0
        return sum(p.stat().st_size for p in self.gen(generation).rglob("*") if p.is_file())


def read_yaml(path: Path) -> Any:
    """A run folder's YAML file (config, Hydra's overrides, resume record); None when the file is absent."""
    import yaml

    text = read_run_text(path)
    if text is None:
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise damaged(path, f"not valid YAML ({str(err).splitlines()[0]})") from None


def resume_overrides(path: Path) -> list[str]:
    """The overrides of every `collapse resume` of the run in `path`, in order (RESUME_OVERRIDES); [] without one.

    Hydra rewrites .hydra/ when a job is requeued or relaunched, so the run's changes to its job's
    config are kept in this record: a relaunch applies them, and compare groups the run by them.
    """
    record = path / RESUME_OVERRIDES
    overrides = read_yaml(record)
    if overrides is None:
        return []
    if not isinstance(overrides, list):
        raise CollapseError(f"{record}: not a list of key=value overrides; fix or remove that run")
    return [str(override) for override in overrides]


def read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl's rows, [] without the file; CollapseError (damaged) naming the first line that is not
    a JSON object."""
    file = Path(path) / METRICS
    rows = []
    for number, line in enumerate((read_run_text(file) or "").splitlines(), start=1):
        if not line.strip():
            continue
        rows.append(json_object(line, file, f"line {number} "))
    return rows


# --- the one guarded reader of run-folder files (compare, show, resume and a run's own start) ---


def damaged(path: Path, why: str) -> CollapseError:
    """The one-line error for a run-folder file that is there but cannot be used."""
    return CollapseError(f"{path}: damaged: {why}; fix or remove that run")


def json_kind(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")


def read_run_text(path: Path) -> Optional[str]:
    """A run-folder file's UTF-8 text; None when it does not exist. A folder in its place, a file this user
    cannot read or one that is not UTF-8 is an error naming the file and why, never a traceback."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return None
    except IsADirectoryError:
        why = "a folder stands where this file should be"
    except PermissionError:
        why = f"this user (uid {os.getuid()}) may not read it"
    except UnicodeDecodeError as err:
        why = f"not UTF-8 text (byte {err.start} is {err.object[err.start:err.start + 1]!r})"
    except OSError as err:
        why = f"cannot read it ({err.strerror})"
    raise damaged(path, why)


def read_run_array(path: Path) -> Optional[np.ndarray]:
    """A run-folder .npy array (no pickles); None when absent; damaged when it is not one."""
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, EOFError) as err:
        why = getattr(err, "strerror", None) or str(err).split(". ")[0]
        raise damaged(path, f"not a readable .npy array ({why})") from None


def require_run_array(path: Path) -> np.ndarray:
    """A run-folder .npy array that must be there (samples, a saved model): a missing one is damaged too."""
    array = read_run_array(path)
    if array is None:
        raise damaged(path, "missing")
    return array


def require_run_arrays(path: Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The named arrays of a run-folder .npz that must be there (a saved model, a synthetic corpus), read in
    full: missing, torn or lacking a name, it is one 'damaged' line, not numpy's or zipfile's traceback."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in names}
    except FileNotFoundError:
        raise damaged(path, "missing") from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise damaged(path, f"unreadable ({type(error).__name__})") from None


def check_resumable(path: Path) -> None:
    """Before a resume writes anything: the run folder, its .hydra/ and what is directly in them must be this
    user's to write (another user's run stops here, not halfway through), and no folder may stand where the
    run rewrites a file."""
    folders = [Path(path), Path(path) / ".hydra"]
    entries = [p for folder in folders if folder.is_dir() for p in sorted(folder.iterdir())]
    for entry in (p for p in [*folders, *entries] if not os.access(p, os.W_OK)):
        owner = entry.stat().st_uid
        raise CollapseError(f"{entry}: this user (uid {os.getuid()}) may not write it (owner: uid {owner}); "
                            f"resume as the run's owner, or copy the folder and resume the copy")
    for name in (STATUS, METRICS, SUMMARY, "config.yaml", "collapse.log"):
        if (Path(path) / name).is_dir():
            raise damaged(Path(path) / name, "a folder stands where this file should be")


def read_json_object(path: Path) -> Optional[dict]:
    """A JSON object file (status.json, summary.json, a generation's metrics.json); None when absent."""
    text = read_run_text(path)
    return None if text is None else json_object(text, path)


def json_object(text: str, path: Path, where: str = "") -> dict:
    """`text` (all of `path`, or its line `where`) parsed as a JSON object; damaged otherwise."""
    try:
        value = json.loads(text)
    except ValueError as err:
        raise damaged(path, f"{where}not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise damaged(path, f"{where}holds a JSON {json_kind(value)}, not an object")
    return value
