"""No run is ever silently overwritten, mixed or lost (issue #21, section 1): one run per folder, sweeps
whose jobs would share a folder, resumes that would change finished generations, a kill between any two
writes of a generation, a full disk, and generation numbers past int16."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, read_metrics, read_status, run_collapse, run_in_process, stable, start_collapse

from collapse_cli.experiment import compose as composition
from collapse_cli.killpoint import ENV, WRITES
from collapse_cli.rundir import RunDir

GMM = ["model=gmm", "dataset=gaussian", "dataset.n_train=300", "dataset.n_test=300"]
VAE = ["model=vae", "dataset=digits", "model.epochs=2", "model.hidden=32", "model.latent=4", "model.nll_samples=4"]


def files_of(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not any(part in skip for part in p.relative_to(folder).parts)}


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("collapse: error: ") and "Traceback" not in err, err
    return lines[0]


# --- one run per folder -------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_second_run_into_a_folder_that_holds_another_is_refused_whole(tmp_path: Path, capsys):
    """The issue's case: generations=5 seed=1, then generations=2 seed=2 into the same folder."""
    run = tmp_path / "X"
    first = ["run", *GMM, "generations=5", "seed=1", f"hydra.run.dir={run}"]
    assert run_in_process(first) == 0
    capsys.readouterr()
    before = files_of(run)
    for other, difference in ((["generations=2", "seed=2"], "generations=2 here, 5 there; seed=2 here, 1 there"),
                              (["dry_run=true"], "dry_run=True here, False there")):  # it would rewrite .hydra/
        assert run_in_process(["run", *GMM, "generations=5", "seed=1", *other, f"hydra.run.dir={run}"]) == 2
        line = one_line(capsys.readouterr().err)
        assert f"{run} holds another run ({difference})" in line, line
        assert "give a new hydra.run.dir, or add overwrite=true" in line
        assert files_of(run) == before
    # The same run again: nothing to do, nothing of the run touched (a relaunched sweep, a requeued job).
    assert run_in_process(first) == 0
    assert "already holds this run, finished; nothing to do" in capsys.readouterr().out
    kept = (".hydra", "collapse.log")  # Hydra rewrites the job's .hydra/ and appends to its log
    assert files_of(run, skip=kept) == {k: v for k, v in before.items() if not k.startswith(kept)}


@pytest.mark.slow
def test_an_unfinished_run_of_another_config_is_refused_too(tmp_path: Path, capsys):
    run = tmp_path / "run"
    killed = run_collapse(["run", *GMM, "generations=6", f"hydra.run.dir={run}"], cwd=tmp_path,
                          env={ENV: "DONE:2"})
    assert killed.returncode == -signal.SIGKILL
    before = files_of(run)
    assert run_in_process(["run", *GMM, "generations=6", "mix=0.5", f"hydra.run.dir={run}"]) == 2
    assert "mix=0.5 here, 0.0 there" in one_line(capsys.readouterr().err)
    assert files_of(run) == before
    # overwrite=true is not part of the run: the same job with it continues the killed run, moving nothing.
    assert run_in_process(["run", *GMM, "generations=6", "overwrite=true", f"hydra.run.dir={run}"]) == 0
    assert not list(tmp_path.glob("run.replaced-*")) and read_status(run)["state"] == "finished"
    assert all(files_of(run)[f"gen_00{g}/samples.npy"] == before[f"gen_00{g}/samples.npy"] for g in range(3))


@pytest.mark.slow
def test_a_sweep_whose_jobs_share_a_folder_is_refused_before_any_job_starts(tmp_path: Path, capsys):
    sweep = tmp_path / "sweep"
    args = ["run", "-m", *GMM, "generations=2", "seed=0,1", f"hydra.sweep.dir={sweep}"]
    assert run_in_process([*args, "hydra.sweep.subdir=same"]) == 2
    line = one_line(capsys.readouterr().err)
    assert f"jobs 0 and 1 of the sweep would both write {sweep / 'same'}" in line and "hydra.sweep.subdir" in line
    assert not sweep.exists()
    # A subdir made of the job's own keys is known before the jobs start, and differs: the sweep runs.
    assert run_in_process([*args, "hydra.sweep.subdir=seed_${seed}"]) == 0
    assert [read_status(sweep / f"seed_{s}")["state"] for s in (0, 1)] == ["finished"] * 2
    # Relaunched with another value, job 1 would meet seed 1's run: refused before job 0 runs again.
    before = files_of(sweep)
    assert run_in_process(["run", "-m", *GMM, "generations=2", "seed=0,2", f"hydra.sweep.dir={sweep}",
                           "hydra.sweep.subdir=seed_${hydra.job.num}"]) == 2
    assert f"{sweep / 'seed_1'} holds another run (seed=2 here, 1 there)" in one_line(capsys.readouterr().err)
    assert files_of(sweep) == before


# --- what a resume may change -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def killed_at_gen_3(tmp_path_factory) -> Path:
    """A GMM run of generations 0-6 killed once generation 3 was done: 4 finished generations."""
    root = tmp_path_factory.mktemp("killed")
    killed = run_collapse(["run", *GMM, "generations=6", f"hydra.run.dir={root / 'run'}"], cwd=root,
                          env={ENV: "metrics_jsonl:3"})
    assert killed.returncode == -signal.SIGKILL
    return root / "run"


@pytest.mark.slow
@pytest.mark.parametrize("override,needle", [
    ("generations=1", "generations=1, but generations 0-3 are finished"),
    ("generations=2", "generations=2, but generations 0-3 are finished"),
    ("seed=3", "seed=3 would change what its 4 finished generation(s) are"),
    ("mix=0.5", "mix=0.5 would change"),
    ("regime=fresh mix=0.1", "regime=fresh, mix=0.1 would change"),
    ("model=vae", "model=vae would change"),  # named as given, not by the keys it changes
    ("dataset.n_train=500", "dataset.n_train=500 would change"),
    ("model.n_components=3", "model.n_components=3 would change"),
    ("train.init=previous", "train.init=previous would change"),
    ("overwrite=true", "overwrite=true would change"),
])
def test_a_resume_that_would_change_finished_generations_is_refused(tmp_path: Path, killed_at_gen_3: Path,
                                                                      override: str, needle: str, capsys):
    run = tmp_path / "run"
    import shutil

    shutil.copytree(killed_at_gen_3, run)
    before = files_of(run)
    assert run_in_process(["resume", str(run), *override.split()]) == 2
    assert needle in one_line(capsys.readouterr().err)
    assert files_of(run) == before


@pytest.mark.slow
def test_a_resume_may_fix_training_and_change_the_length(tmp_path: Path, killed_at_gen_3: Path):
    import shutil

    shortened, run = tmp_path / "shortened", tmp_path / "run"
    for copy in (shortened, run):
        shutil.copytree(killed_at_gen_3, copy)
    # Down to the last finished generation: nothing to redo, the run just finishes there.
    assert run_in_process(["resume", str(shortened), "generations=3"]) == 0
    assert [row["generation"] for row in read_metrics(shortened)] == [0, 1, 2, 3]
    assert json.loads((shortened / "summary.json").read_text())["generations"] == 3
    assert read_status(shortened)["generations_done"] == read_status(shortened)["generations_total"] == 4
    # Up, with another learning rate from here on (a diverged run's fix).
    assert run_in_process(["resume", str(run), "generations=8", "train.lr=0.5", "checkpoints=last"]) == 0
    assert [row["generation"] for row in read_metrics(run)] == list(range(9))
    assert (run / "resume_overrides.yaml").read_text().split() == ["-", "generations=8", "-", "train.lr=0.5", "-",
                                                                   "checkpoints=last"]


# --- a kill between any two writes --------------------------------------------------------------------

# Each run has generations 0-2; generation 1 is the middle one, where a previous model exists to delete.
KILL_RUNS = {
    "lm-previous-none": [*TINY, "generations=2", "train.init=previous", "checkpoints=none"],
    "lm-base-last": [*TINY, "generations=2", "checkpoints=last"],
    "gmm-previous-last": [*GMM, "generations=2", "train.init=previous", "checkpoints=last"],
    "gmm-base-all": [*GMM, "generations=2", "checkpoints=all"],
    # The GMM's EM starts afresh whatever model it is given; the VAE, like the LM, trains on from the previous one.
    "vae-previous-none": [*VAE, "generations=2", "train.init=previous", "checkpoints=none"],
}
LAST = 2
ONCE_AT_THE_END = ("summary", "figures", "reference_delete")


def kill_cases() -> list:
    cases = []
    for name, args in KILL_RUNS.items():
        keeps_models = "checkpoints=none" not in args or "train.init=previous" in args
        deletes_previous = "checkpoints=last" in args or ("checkpoints=none" in args and "train.init=previous" in args)
        for write in WRITES:
            if (write == "model" and not keeps_models) or (write == "previous_model_delete" and not deletes_previous):
                continue
            # The reference is saved by generation 0; status after the first generation a process runs.
            generation = 0 if write in ("reference", "status") else LAST if write in ONCE_AT_THE_END else 1
            cases.append(pytest.param(name, write, generation, id=f"{name}-{write}:{generation}"))
    return cases


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("uninterrupted")
    for name, args in KILL_RUNS.items():
        assert run_in_process(["run", *args, f"hydra.run.dir={root / name}"]) == 0
    return {name: root / name for name in KILL_RUNS}


def killed_in_a_fork(args: list[str], kill_at: str) -> int:
    """The exit code of `collapse ARGS` run with COLLAPSE_KILL_AT=kill_at in a fork of this process: a
    process of its own (the kill ends it alone), without the seconds of a new interpreter's imports."""
    import multiprocessing

    child = multiprocessing.get_context("fork").Process(target=_run_with_kill_at, args=(args, kill_at))
    child.start()
    child.join(timeout=600)
    return child.exitcode


def _run_with_kill_at(args: list[str], kill_at: str) -> None:
    os.environ[ENV] = kill_at
    os._exit(run_in_process(args))  # not through pytest's exit handlers, which belong to the parent


# Files whose bytes depend on the machine's clock or the folder's path; everything else must be identical.
# Files whose bytes record when or how often a process ran: environment.json gains an entry per start and resume.
VARYING = (".hydra", "collapse.log", "status.json", "metrics.json", "metrics.jsonl", "summary.json", "figures",
           "environment.json")


@pytest.mark.slow
@pytest.mark.parametrize("name,write,generation", kill_cases())
def test_a_kill_at_every_write_then_resume_ends_as_an_uninterrupted_run(tmp_path: Path, name: str, write: str,
                                                                           generation: int, uninterrupted):
    run, reference = tmp_path / "run", uninterrupted[name]
    killed = killed_in_a_fork(["run", *KILL_RUNS[name], f"hydra.run.dir={run}"], f"{write}:{generation}")
    assert killed == -signal.SIGKILL  # the write happened, and the kill
    assert read_status(run)["state"] == "running"

    assert run_in_process(["resume", str(run)]) == 0
    assert read_status(run)["state"] == "finished"
    assert stable(read_metrics(run)) == stable(read_metrics(reference))
    summary, expected = (json.loads((p / "summary.json").read_text()) for p in (run, reference))
    assert {**summary, "wall_time_s": 0} == {**expected, "wall_time_s": 0}
    # The same files (no stale model, no temporary), and the same bytes in samples, provenance and models.
    assert sorted(files_of(run)) == sorted(files_of(reference))
    assert files_of(run, skip=VARYING) == files_of(reference, skip=VARYING)


# --- a full disk ----------------------------------------------------------------------------------------

def test_a_status_write_that_meets_a_full_disk_still_records_the_end(tmp_path: Path, monkeypatch):
    run = RunDir(tmp_path / "run")
    run.set_status("running", generations_done=3, generations_total=9)
    assert (run.path / "status.json").stat().st_size == 4096  # room kept for the last word

    def no_space(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", no_space)  # no new file gets its name: as on a full disk
    run.set_status("failed", reason="the disk is full")
    monkeypatch.undo()
    status = run.status()
    assert status["state"] == "failed" and status["reason"] == "the disk is full"
    assert status["generations_done"] == 3 and status["pid"] == os.getpid()
    assert [p.name for p in run.path.iterdir()] == ["status.json"]  # no temporary left behind


@pytest.fixture
def small_disk(tmp_path: Path):
    """A real 8 MiB file system (tmpfs), which a test can fill."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(disk: Path) -> Path:
    """Take every free byte of `disk`."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as handle:
        for chunk in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    handle.write(b"\0" * chunk)
            except OSError as err:
                assert err.errno == errno.ENOSPC
    return filler


@pytest.mark.slow
def test_a_full_disk_reads_as_failed_and_a_resume_finishes_clean(tmp_path: Path, small_disk: Path, capsys):
    args = [*GMM, "generations=120", "min_free_disk_mb=0"]
    reference = tmp_path / "reference"
    assert run_in_process(["run", *args, f"hydra.run.dir={reference}"]) == 0
    run = small_disk / "run"
    proc = start_collapse(["run", *args, f"hydra.run.dir={run}"], cwd=tmp_path)
    deadline = time.monotonic() + 300
    while not (run / "gen_005" / "DONE").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-2000:]
        time.sleep(0.005)
    filler = fill(small_disk)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "the disk is full" in err.strip().splitlines()[-1], err[-2000:]
    status = read_status(run)
    assert status["state"] == "failed" and "the disk is full" in status["reason"], status
    assert run_in_process(["show", str(run)]) == 0
    shown = capsys.readouterr().out
    assert "failed" in shown and "killed" not in shown and "stopped" not in shown

    filler.unlink()
    # What a process killed in the middle of a write leaves: resume removes those too.
    (run / "gen_001" / ".samples.npy.tmp99999").write_bytes(b"half")
    (run / "reference.tmp").mkdir()
    assert run_in_process(["resume", str(run)]) == 0
    assert read_status(run)["state"] == "finished"
    assert stable(read_metrics(run)) == stable(read_metrics(reference))
    assert not [p for p in run.rglob("*") if ".tmp" in p.name]


# --- generation numbers past int16 --------------------------------------------------------------------

def test_generation_numbers_past_int16_keep_their_origin():
    from collapse_cli.experiment.loop import _provenance

    g = 40_000  # up to MAX_GENERATIONS (100,000): an int16 origin wrapped past 32,767
    training_set = composition.compose(g, "replace", 0.2, 50, {g - 1: 50}, seed=0)
    assert training_set.counts() == {"real": 10, f"gen_{g - 1}": 40}
    synthetic = training_set.origin == g - 1
    samples = {g - 1: np.arange(100.0).reshape(50, 2)}
    rows = training_set.rows(np.zeros((50, 2)), samples)
    assert np.array_equal(rows[synthetic], samples[g - 1][training_set.index[synthetic]])
    provenance = _provenance(training_set, {g - 1: np.arange(50)[::-1]})  # what train_origin.npy holds
    assert set(provenance[:, 0]) == {composition.REAL, g - 1}
    assert np.array_equal(provenance[synthetic, 1], 49 - training_set.index[synthetic])


@pytest.mark.slow
def test_a_dry_run_of_40000_generations_plans_them(tmp_path: Path, capsys):
    assert run_in_process(["run", *GMM, "generations=40000", "dry_run=true", f"hydra.run.dir={tmp_path / 'r'}"]) == 0
    out = capsys.readouterr().out
    assert "40000" in out and not (tmp_path / "r").exists()
