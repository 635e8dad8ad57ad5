"""Killed, interrupted and finished runs (issue #6): `collapse resume` continues from the last finished
generation and ends with exactly the metrics of an uninterrupted run of the same config and seed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    TINY,
    gone_pid,
    read_metrics,
    read_status,
    run_collapse,
    run_in_process,
    stable,
    start_collapse,
)

from collapse_cli.families.lm.corpus_files import load_ids
from collapse_cli.rundir import RunDir

pytestmark = pytest.mark.slow  # every test here runs, kills or resumes real runs

# Four generations (0..3), each long enough (~0.4 s on one core) for a kill to land inside a stage.
WORK = [*TINY, "generations=3", "dataset.train_tokens=16000", "train.epochs=2"]
GENERATIONS = 4


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    assert run_in_process(["run", *WORK, f"hydra.run.dir={run}"]) == 0
    return run


def signal_when(proc, marker: Path, signum: int, timeout: float = 600) -> None:
    """Send `signum` the moment `marker` exists, so the signal lands in the stage that follows it."""
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"the run ended ({proc.returncode}) before {marker} appeared: {proc.stderr.read()[-2000:]}")
        assert time.monotonic() < deadline, f"{marker} never appeared"
        time.sleep(0.005)
    proc.send_signal(signum)


def assert_same_as(run: Path, reference: Path) -> None:
    rows = read_metrics(run)
    assert [row["generation"] for row in rows] == list(range(GENERATIONS))  # one line per generation
    expected = stable(read_metrics(reference))
    differences = [(row["generation"], key, row.get(key), want.get(key))
                   for row, want in zip(stable(rows), expected) for key in set(row) | set(want)
                   if row.get(key) != want.get(key)]
    assert not differences, differences
    for g in range(GENERATIONS):
        name = f"gen_{g:03d}/synthetic_ids.npz"
        assert np.array_equal(load_ids(run / name), load_ids(reference / name)), name
    assert (run / "family.json").read_bytes() == (reference / "family.json").read_bytes()
    summary, expected = (json.loads((p / "summary.json").read_text()) for p in (run, reference))
    summary.pop("wall_time_s"), expected.pop("wall_time_s")
    assert summary == expected
    assert read_status(run)["state"] == "finished"


# Files written just before the stage the kill should interrupt.
KILL_POINTS = {
    "gen0-training": "gen_000/train_origin.npy",
    "after-gen0-done": "gen_000/DONE",
    "gen1-training": "gen_001/composition.json",
    "gen2-saving-corpus": "gen_002/synthetic_ids.npz",
}


@pytest.mark.parametrize("marker", KILL_POINTS.values(), ids=KILL_POINTS.keys())
def test_kill_9_then_resume_matches_an_uninterrupted_run(tmp_path: Path, marker: str, uninterrupted: Path,
                                                          capsys):
    run = tmp_path / "run"
    proc = start_collapse(["run", *WORK, f"hydra.run.dir={run}"], cwd=tmp_path)
    signal_when(proc, run / marker, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    # A killed run cannot say so: its status still reads running, and it never finished. (The kill lands
    # in the stage after the marker, unless the machine is so loaded that it comes a stage or two later.)
    assert read_status(run)["state"] == "running"
    done = sorted(p.parent.name for p in run.glob("gen_*/DONE"))
    assert len(done) < GENERATIONS and not (run / "summary.json").exists(), done
    # ...but its process is gone, which `show` and `compare` say.
    assert run_in_process(["show", str(run)]) == 0
    assert "stopped (" in capsys.readouterr().out

    assert run_in_process(["resume", str(run)]) == 0
    assert_same_as(run, uninterrupted)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupt_marks_the_run_interrupted_and_resumable(tmp_path: Path, signum: int, uninterrupted: Path):
    run = tmp_path / "run"
    proc = start_collapse(["run", *WORK, f"hydra.run.dir={run}"], cwd=tmp_path)
    signal_when(proc, run / "gen_001/composition.json", signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and f"collapse resume {run}" in err
    status = read_status(run)
    assert status["state"] == "interrupted" and "collapse resume" in status["reason"]

    assert run_in_process(["resume", str(run)]) == 0
    assert_same_as(run, uninterrupted)


def test_resume_refuses_a_run_whose_process_still_runs_here(tmp_path: Path, uninterrupted: Path, capsys):
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    (run / "summary.json").unlink()
    RunDir(run).set_status("running")  # written by this test's process, which is alive
    before = (run / "metrics.jsonl").read_text()
    assert run_in_process(["resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"is still running (process {os.getpid()} on this machine)" in err and len(err.splitlines()) == 1
    assert (run / "metrics.jsonl").read_text() == before and read_status(run)["state"] == "running"

    # Nor does the job start again into that folder (a relaunched command, a requeued job).
    with pytest.raises(SystemExit) as stop:
        run_in_process(["run", *WORK, f"hydra.run.dir={run}"])
    assert stop.value.code == 2 and "is still running" in capsys.readouterr().err
    assert (run / "metrics.jsonl").read_text() == before

    # A status from another machine cannot be checked: the resume goes ahead and says what it assumed.
    RunDir(run).write_json("status.json", {**read_status(run), "host": "another-node"})
    assert run_in_process(["resume", str(run)]) == 0
    assert "says running on another-node" in capsys.readouterr().err
    assert_same_as(run, uninterrupted)


def test_resume_of_a_finished_run_says_so(uninterrupted: Path, capsys):
    before = (uninterrupted / "metrics.jsonl").read_text()
    assert run_in_process(["resume", str(uninterrupted)]) == 0
    assert "already finished" in capsys.readouterr().out
    assert (uninterrupted / "metrics.jsonl").read_text() == before


def test_resume_after_a_kill_while_finishing(tmp_path: Path, uninterrupted: Path):
    """Every generation done, then killed before `finished` was written (summary, cleanup): resume only finishes."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    (run / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text().splitlines()[0] + "\n")
    (run / "summary.json").unlink()
    status = read_status(run)
    # As a killed run leaves it: running, by a process that is gone.
    (run / "status.json").write_text(json.dumps({**status, "state": "running", "pid": gone_pid()}))
    # checkpoints=none: the reference model is already gone, and no generation needs it.
    assert not (run / "reference").exists()

    assert run_in_process(["resume", str(run)]) == 0
    assert_same_as(run, uninterrupted)


# Dropout draws its masks from torch's global RNG, which no generator is passed to: the run seeds it per stage.
DROPOUT = [*WORK, "model.dropout=0.1"]


@pytest.fixture(scope="module")
def with_dropout(tmp_path_factory) -> Path:
    import torch

    torch.manual_seed(1)  # whatever state the process is in, the run's masks must not depend on it
    run = tmp_path_factory.mktemp("dropout") / "run"
    assert run_in_process(["run", *DROPOUT, f"hydra.run.dir={run}"]) == 0
    return run


def test_dropout_runs_repeat_whatever_the_global_rng_held(tmp_path: Path, with_dropout: Path, uninterrupted: Path):
    import torch

    torch.manual_seed(2)
    torch.rand(1000)
    state = torch.get_rng_state()
    run = tmp_path / "run"
    assert run_in_process(["run", *DROPOUT, f"hydra.run.dir={run}"]) == 0
    assert_same_as(run, with_dropout)
    assert torch.equal(torch.get_rng_state(), state)  # and the run leaves the process's own stream as it was
    # The masks are really drawn: without dropout, training (so every later figure) differs.
    assert stable(read_metrics(with_dropout))[0]["train_loss_last"] != stable(read_metrics(uninterrupted))[0][
        "train_loss_last"]


def test_kill_9_then_resume_with_dropout_matches_an_uninterrupted_run(tmp_path: Path, with_dropout: Path):
    run = tmp_path / "run"
    proc = start_collapse(["run", *DROPOUT, f"hydra.run.dir={run}"], cwd=tmp_path)
    signal_when(proc, run / KILL_POINTS["after-gen0-done"], signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert run_in_process(["resume", str(run)]) == 0  # this process's RNG is not the killed one's
    assert_same_as(run, with_dropout)


def test_a_relaunch_after_a_resume_with_an_override_continues_the_run(tmp_path: Path):
    """A requeued job runs the job's own overrides again: the folder's `collapse resume` overrides still apply."""
    run, launch = tmp_path / "run", ["run", *WORK, f"hydra.run.dir={tmp_path / 'run'}"]
    proc = start_collapse(launch, cwd=tmp_path)
    signal_when(proc, run / "gen_001/composition.json", signal.SIGTERM)
    assert proc.wait(timeout=60) == 130
    # The user fixes what stopped it, and this resume is preempted in turn.
    proc = start_collapse(["resume", str(run), "train.lr=1e-3"], cwd=tmp_path)
    signal_when(proc, run / "gen_002/composition.json", signal.SIGTERM)
    assert proc.wait(timeout=60) == 130
    done = {p: p.stat().st_mtime_ns for p in run.glob("gen_*/DONE")}
    assert sorted(p.parent.name for p in done) == ["gen_000", "gen_001"]

    assert run_in_process(launch) == 0  # the requeue: the same command, the same folder
    assert read_status(run)["state"] == "finished"
    assert {p: p.stat().st_mtime_ns for p in done} == done  # continued: no finished generation was redone
    assert [row["generation"] for row in read_metrics(run)] == list(range(GENERATIONS))
    assert "lr: 0.001" in (run / "config.yaml").read_text()
    assert run_in_process(["resume", str(run)]) == 0  # and a resume finds it finished, with the override

    finished = (run / "metrics.jsonl").stat().st_mtime_ns
    assert run_in_process(launch) == 0  # a relaunch of the finished run leaves it as it is
    assert (run / "metrics.jsonl").stat().st_mtime_ns == finished


def test_a_relaunch_with_other_overrides_is_refused_and_overwrite_moves_the_old_run_aside(tmp_path: Path, capsys):
    run = tmp_path / "run"
    launch = ["run", *TINY, f"hydra.run.dir={run}"]
    assert run_collapse([*launch, "train.lr=1e6"], cwd=tmp_path).returncode == 2  # diverges: failed
    assert run_in_process(["resume", str(run), "train.lr=2e-3"]) == 0
    capsys.readouterr()
    before = files_of(run)
    assert run_in_process([*launch, "seed=5"]) == 2  # another job in that folder: refused, nothing written
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and f"{run} holds another run (seed=5 here, 0 there)" in err, err
    assert "hydra.run.dir" in err and "overwrite=true" in err
    assert files_of(run) == before  # .hydra/ too: the refusal comes before Hydra writes anything

    assert run_in_process([*launch, "seed=5", "overwrite=true"]) == 0  # said explicitly: the old run moves aside
    (aside,) = tmp_path.glob("run.replaced-*")
    assert files_of(aside) == before
    assert f"the run that was in {run} is now in {aside}" in capsys.readouterr().err
    config = (run / "config.yaml").read_text()
    assert "seed: 5" in config and "lr: 0.003" in config  # the model's default, not the old run's override
    assert not (run / "resume_overrides.yaml").exists() and read_status(run)["state"] == "finished"
    assert run_in_process(["resume", str(aside)]) == 0  # the old run is whole where it went: still a run
    assert "already finished" in capsys.readouterr().out


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_ctrl_c_stops_an_in_process_sweep_and_the_same_command_finishes_it(tmp_path: Path):
    sweep = tmp_path / "sweep"
    args = ["run", "-m", *TINY, "seed=0,1,2", f"hydra.sweep.dir={sweep}"]
    proc = start_collapse(args, cwd=tmp_path)
    signal_when(proc, sweep / "0" / "gen_001/composition.json", signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "the sweep stopped" in err
    # One line says it: the sweep's (how to finish it), not the job's as well (issue #21).
    assert [line for line in err.splitlines() if line.startswith("collapse:")] == [
        line for line in err.splitlines() if "the sweep stopped" in line]
    # The basic launcher runs jobs one after another: the jobs after the interrupted one never start.
    assert read_status(sweep / "0")["state"] == "interrupted"
    assert not (sweep / "1").exists() and not (sweep / "2").exists()

    assert run_in_process(args) == 0
    assert [read_status(sweep / str(job))["state"] for job in range(3)] == ["finished"] * 3


def test_a_sweep_skips_a_job_whose_folder_another_live_process_writes(tmp_path: Path, capsys):
    sweep = tmp_path / "sweep"
    RunDir(sweep / "1").set_status("running")  # job 1's folder, written by this (live) test process
    assert run_in_process(["run", "-m", *TINY, "seed=0,1", f"hydra.sweep.dir={sweep}"]) == 2
    err = capsys.readouterr().err
    assert "1 of 2 run(s) did not finish" in err
    assert f"{sweep / '1'} (running: process {os.getpid()} on " in err and "still writes it" in err
    assert read_status(sweep / "0")["state"] == "finished"
    assert not (sweep / "1" / "metrics.jsonl").exists()  # nothing of the job was written there
