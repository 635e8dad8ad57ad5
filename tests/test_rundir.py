"""The run folder's own guarantees: atomic files, one metrics line per generation, round trips."""

from __future__ import annotations

import errno
import math
import os
import socket
from pathlib import Path

import numpy as np
import pytest
from conftest import gone_pid

from collapse_cli.atomic import atomic_write_bytes
from collapse_cli.families.lm.corpus_files import load_ids, read_texts_gz, save_ids, save_texts_gz
from collapse_cli.liveness import live_state
from collapse_cli.rundir import RunDir, flatten, read_metrics


def test_texts_round_trip_with_newlines_and_backslashes(tmp_path: Path):
    lines = ["plain words", "two\nlines", "a literal \\n stays", "back\\slash", ""]
    save_texts_gz(RunDir(tmp_path), "corpus.txt.gz", lines)
    assert read_texts_gz(tmp_path / "corpus.txt.gz") == lines


def test_flatten_names_nested_keys_with_dots():
    record = {"seed": 0, "train": {"lr": 0.001, "schedule": {"name": "linear"}}, "logger": {}, "tags": [1, 2]}
    assert flatten(record) == {"seed": 0, "train.lr": 0.001, "train.schedule.name": "linear", "tags": [1, 2]}


def test_ids_are_compressed_and_round_trip(tmp_path: Path):
    ids = np.tile(np.arange(50, dtype=np.int64), (200, 2))  # repetitive: compresses well
    save_ids(RunDir(tmp_path), "ids.npz", ids)
    assert np.array_equal(load_ids(tmp_path / "ids.npz"), ids)
    assert (tmp_path / "ids.npz").stat().st_size < ids.nbytes / 10


def test_a_run_folder_npz_that_is_missing_torn_or_short_is_one_damaged_line(tmp_path: Path):
    """The GMM's mixture, the KDE's points and the LM's synthetic ids are .npz files a resume must read."""
    from collapse_cli.errors import CollapseError
    from collapse_cli.families.gmm.core import load_mixture
    from collapse_cli.rundir import require_run_arrays

    run = RunDir(tmp_path)
    save_ids(run, "ids.npz", np.arange(10))
    whole = (tmp_path / "ids.npz").read_bytes()
    (tmp_path / "torn.npz").write_bytes(whole[: len(whole) // 2])
    cases = {"absent.npz": "missing", "torn.npz": "unreadable (BadZipFile)", "ids.npz": "unreadable (KeyError)"}
    for name, why in cases.items():
        with pytest.raises(CollapseError) as caught:
            require_run_arrays(tmp_path / name, ("weights", "means", "covariances") if name == "ids.npz" else ("ids",))
        assert str(caught.value).startswith(f"{tmp_path / name}: damaged: {why}"), str(caught.value)
    with pytest.raises(CollapseError, match="torn.npz: damaged: unreadable"):
        load_ids(tmp_path / "torn.npz")
    with pytest.raises(CollapseError, match="ids.npz: damaged: unreadable"):
        load_mixture(tmp_path / "ids.npz")  # an archive without the mixture's arrays


def test_finish_generation_keeps_one_line_per_generation(tmp_path: Path):
    run_dir = RunDir(tmp_path)
    run_dir.finish_generation(0, {"generation": 0, "ppl_test": 10.0})
    run_dir.finish_generation(1, {"generation": 1, "ppl_test": float("nan")})
    run_dir.finish_generation(1, {"generation": 1, "ppl_test": 12.0})  # a generation redone after a resume
    rows = read_metrics(tmp_path)
    assert [row["generation"] for row in rows] == [0, 1]
    assert rows[1]["ppl_test"] == 12.0
    assert run_dir.done_generations() == [0, 1]


def test_nan_is_written_as_null(tmp_path: Path):
    run_dir = RunDir(tmp_path)
    run_dir.finish_generation(0, {"generation": 0, "tail_coverage": math.nan})
    assert '"tail_coverage": null' in (tmp_path / "metrics.jsonl").read_text()


def test_atomic_writes_leave_no_temporary_files(tmp_path: Path):
    run_dir = RunDir(tmp_path)
    run_dir.write_json("a/b.json", {"x": 1})
    run_dir.save_array("c.npy", np.arange(3))
    run_dir.set_status("running")
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["b.json", "c.npy", "status.json"]


def test_unfinished_generation_is_discarded(tmp_path: Path):
    run_dir = RunDir(tmp_path)
    run_dir.write_json("gen_000/composition.json", {})
    run_dir.discard_unfinished(0)
    assert not (tmp_path / "gen_000").exists()


def test_disk_full_is_recognised_through_library_wrappers():
    import errno

    from collapse_cli.lifecycle import disk_full

    assert disk_full(OSError(errno.ENOSPC, "No space left on device"))
    # safetensors raises its own type, carrying only the OS message.
    assert disk_full(RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"))
    assert not disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not disk_full(ValueError("bad value"))


def test_a_change_of_state_keeps_how_far_the_run_got(tmp_path: Path):
    run_dir = RunDir(tmp_path)
    run_dir.set_status("running", generations_done=2, generations_total=5)
    run_dir.set_status("interrupted", "Ctrl-C")
    status = run_dir.status()
    assert (status["state"], status["reason"]) == ("interrupted", "Ctrl-C")
    assert (status["generations_done"], status["generations_total"]) == (2, 5)
    run_dir.set_status("running", generations_done=3, generations_total=5)  # given counts win
    assert run_dir.status()["generations_done"] == 3


def test_a_running_status_whose_process_is_gone_reads_stopped(tmp_path: Path):
    RunDir(tmp_path).set_status("running", generations_done=1, generations_total=4)
    status = RunDir(tmp_path).status()
    assert (status["pid"], status["host"]) == (os.getpid(), socket.gethostname())
    assert live_state(status) == "running"  # this test's own process: alive
    gone = gone_pid()
    assert live_state({**status, "pid": gone}) == "stopped"
    # Another machine's process, or a status written before hosts were recorded: not visible, so still running.
    assert live_state({**status, "pid": gone, "host": "another-node"}) == "running"
    assert live_state({key: value for key, value in status.items() if key != "host"} | {"pid": gone}) == "running"
    assert live_state({**status, "pid": gone, "state": "interrupted"}) == "interrupted"
    # A live pid that started at another time is another process that got the number: the run is stopped.
    assert status["started"] is not None  # Linux: /proc gives the start time
    assert live_state({**status, "started": str(int(status["started"]) + 1)}) == "stopped"


def test_a_write_that_fails_leaves_no_temporary_and_the_old_file_whole(tmp_path: Path):
    run_dir = RunDir(tmp_path)
    run_dir.write_json("x.json", {"old": 1})

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.MonkeyPatch.context() as patch, pytest.raises(OSError):
        patch.setattr(os, "fsync", no_space)  # the temporary exists, its bytes do not fit: a full disk
        atomic_write_bytes(tmp_path / "x.json", b'{"new": 2}', sync=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]
    assert run_dir.read_json("x.json") == {"old": 1}


def test_a_resume_removes_the_temporaries_a_killed_process_left(tmp_path: Path):
    run_dir = RunDir(tmp_path)
    left = [tmp_path / ".status.json.tmp123", tmp_path / "gen_002" / ".samples.npy.tmp9", tmp_path / "figures" /
            ".gmm_scatter.png.tmp77"]
    for path in left:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"half")
    (tmp_path / "gen_002" / "model.tmp").mkdir()
    (tmp_path / "gen_002" / "model.tmp" / "weights").write_bytes(b"half")
    kept = [tmp_path / "notes.tmpl", tmp_path / "gen_002" / "samples.npy", tmp_path / "wandb" / ".x.tmp1"]
    for path in kept:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"whole")
    assert sorted(run_dir.remove_temporaries()) == sorted([*left, tmp_path / "gen_002" / "model.tmp"])
    assert all(not path.exists() for path in left) and not (tmp_path / "gen_002" / "model.tmp").exists()
    assert all(path.exists() for path in kept)  # a user's file, a tracker's own folder: not the run's temporaries
