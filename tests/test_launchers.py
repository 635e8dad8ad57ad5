"""Sweeps under real Hydra launchers (issue #13): failures reported, preempted jobs requeued and resumed,
one GPU per job on a multi-GPU box, and the shipped SLURM preset's sbatch script."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from conftest import (
    TINY,
    read_metrics,
    read_status,
    run_collapse,
    run_in_process,
    stable,
    start_collapse,
)

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="the [slurm] extra is not installed")

# A learning rate that passes every config check and makes training diverge at its second step:
# a real failure at run time, in one job of the sweep.
DIVERGES = "train.lr=1e12"
LR_SWEEP = ["train.grad_clip=0", f"train.lr=1e-3,{DIVERGES.split('=')[1]}"]


def assert_names_the_failed_job(code: int, err: str, sweep: Path) -> None:
    assert code == 2, err[-2000:]
    assert "1 of 2 run(s) did not finish" in err
    assert f"{sweep / '1'} (failed: generation 0: training loss became nan" in err
    assert str(sweep / "0") + " " not in err  # the good job is not named
    assert read_status(sweep / "0")["state"] == "finished"
    assert read_status(sweep / "1")["state"] == "failed"


@pytest.mark.slow
def test_basic_launcher_reports_a_failed_job(tmp_path: Path, capsys):
    sweep = tmp_path / "sweep"
    code = run_in_process(["run", "-m", *TINY, *LR_SWEEP, f"hydra.sweep.dir={sweep}"])
    assert_names_the_failed_job(code, capsys.readouterr().err, sweep)


@pytest.mark.slow
def test_submitit_local_sweep_finishes(tmp_path: Path):
    good = run_collapse(["run", "-m", "hydra/launcher=submitit_local", *TINY, "mix=0,1"], cwd=tmp_path)
    assert good.returncode == 0, good.stderr[-2000:]
    # The default sweep folder (a timestamp and the `run_id` resolver) is one folder for both jobs.
    (sweep,) = (tmp_path / "outputs" / "multirun").iterdir()
    assert [read_status(sweep / job)["state"] for job in ("0", "1")] == ["finished", "finished"]


@pytest.mark.slow
def test_submitit_local_reports_a_failed_job(tmp_path: Path):
    """Jobs run in submitit's own processes: their failures reach the parent only through the run folders."""
    sweep = tmp_path / "failing"
    bad = run_collapse(["run", "-m", "hydra/launcher=submitit_local", *TINY, *LR_SWEEP, f"hydra.sweep.dir={sweep}"],
                       cwd=tmp_path)
    assert_names_the_failed_job(bad.returncode, bad.stderr, sweep)


@pytest.mark.slow
def test_relaunching_a_finished_sweep_keeps_its_runs(tmp_path: Path, capsys):
    sweep = tmp_path / "sweep"
    assert run_in_process(["run", "-m", *TINY, "seed=0", f"hydra.sweep.dir={sweep}"]) == 0
    before = (sweep / "0" / "metrics.jsonl").stat().st_mtime_ns
    assert run_in_process(["run", "-m", *TINY, "seed=0", f"hydra.sweep.dir={sweep}"]) == 0
    assert (sweep / "0" / "metrics.jsonl").stat().st_mtime_ns == before


# Four generations, each long enough for a signal to land inside one (as tests/test_resume.py).
WORK = [*TINY, "generations=3", "dataset.train_tokens=16000", "train.epochs=2"]


def wait_for(path: Path, proc, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the sweep ended ({proc.returncode}) before {path} appeared: {proc.stderr.read()}"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


@pytest.mark.parametrize("signum", [signal.SIGUSR2], ids=["sigusr2"])
@pytest.mark.slow
def test_preempted_job_is_requeued_and_continues_its_run(tmp_path: Path, signum: int):
    uninterrupted = tmp_path / "uninterrupted"
    assert run_in_process(["run", *WORK, f"hydra.run.dir={uninterrupted}"]) == 0

    sweep = tmp_path / "sweep"
    proc = start_collapse(["run", "-m", "hydra/launcher=submitit_local", *WORK, f"hydra.sweep.dir={sweep}"],
                          cwd=tmp_path)
    run = sweep / "0"
    wait_for(run / "gen_001" / "composition.json", proc)
    gen0_done = (run / "gen_000" / "DONE").stat().st_mtime_ns
    job_pid = read_status(run)["pid"]  # the job process submitit started, not the sweep's parent
    os.kill(job_pid, signum)  # what submitit's controller and SLURM send before a timeout or preemption
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-3000:]

    logs = "".join(p.read_text() for p in (sweep / ".submitit").rglob("*_log.*"))
    assert "Requeued job" in logs  # submitit requeued it, rather than the run ending
    status = read_status(run)
    assert status["state"] == "finished" and status["pid"] != job_pid  # finished by the requeued process
    assert (run / "gen_000" / "DONE").stat().st_mtime_ns == gen0_done  # continued, not started again
    assert stable(read_metrics(run)) == stable(read_metrics(uninterrupted))
    summary, expected = (json.loads((p / "summary.json").read_text()) for p in (run, uninterrupted))
    summary.pop("wall_time_s"), expected.pop("wall_time_s")
    assert summary == expected


@pytest.fixture
def slurm_on_path(tmp_path: Path, monkeypatch) -> Path:
    """A cluster's two commands, as far as submitting goes: `srun` (submitit looks for it) and an `sbatch` that
    keeps the script it is handed and answers as Slurm does. Returns where the submitted script lands."""
    bin_dir, kept = tmp_path / "bin", tmp_path / "submitted.sh"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" "{kept}"\necho "Submitted batch job 4242"\n')
    for command in ("srun", "sbatch"):
        (bin_dir / command).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return kept


def sbatch_script(tmp_path: Path, submitted: Path, *overrides: str) -> str:
    """The sbatch script the shipped `hydra/launcher=slurm` preset submits, as `sbatch` receives it (slurm_on_path).

    The parameters go from the composed preset to submitit's executor exactly as the Hydra plugin's
    launch() maps them (plain names for the shared keys, `slurm_`-prefixed for the rest).
    """
    import submitit
    from hydra.utils import instantiate
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    from collapse_cli.compose import composing

    with composing() as node:
        cfg = node(["hydra/launcher=slurm", f"hydra.sweep.dir={tmp_path}", *overrides], hydra=True)
    launcher = instantiate(cfg.hydra.launcher)
    params = dict(launcher.params)
    executor = submitit.AutoExecutor(cluster="slurm", folder=params.pop("submitit_folder"),
                                     slurm_max_num_timeout=params.pop("max_num_timeout"))
    shared = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in shared else f"slurm_{k}": v for k, v in params.items()})
    job = executor.submit(print, "a job")
    assert job.job_id == "4242"  # what our sbatch answered: the script went through submitit's own submission
    return submitted.read_text()


def test_slurm_preset_submits_an_sbatch_script(tmp_path: Path, slurm_on_path: Path):
    script = sbatch_script(tmp_path, slurm_on_path, "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=720")
    lines = set(script.splitlines())
    for expected in ("#SBATCH --partition=gpu", "#SBATCH --time=720", "#SBATCH --gpus-per-node=1",
                     "#SBATCH --cpus-per-task=8", "#SBATCH --mem=64GB", "#SBATCH --nodes=1",
                     "#SBATCH --ntasks-per-node=1", "#SBATCH --job-name=collapse",
                     "#SBATCH --signal=USR2@120", "#SBATCH --open-mode=append"):
        assert expected in lines, (expected, script)
    assert any(line.startswith("#SBATCH --output=" + str(tmp_path / ".submitit")) for line in lines), script
    assert script.startswith("#!/bin/bash") and "srun" in script

    # The defaults hold without a partition too (the cluster's default partition).
    default = sbatch_script(tmp_path, slurm_on_path)
    assert not any(line.startswith("#SBATCH --partition") for line in default.splitlines())


@pytest.mark.slow
def test_local_gpus_gives_each_concurrent_job_its_own_gpu(tmp_path: Path):
    """Three jobs on a box with two (declared) GPUs: each sees one GPU, never one another job holds."""
    sweep = tmp_path / "sweep"
    result = run_collapse(["run", "-m", "hydra/launcher=local_gpus", *TINY, "seed=0,1,2", f"hydra.sweep.dir={sweep}"],
                          cwd=tmp_path, env={"COLLAPSE_GPUS": "0,1"})
    assert result.returncode == 0, result.stderr[-2000:]
    held = [json.loads((sweep / str(job) / "gpu.json").read_text()) for job in range(3)]
    assert all(record["CUDA_VISIBLE_DEVICES"] in ("0", "1") for record in held), held  # exactly one id each
    overlapping = [(a, b) for i, a in enumerate(held) for b in held[i + 1:]
                   if a["claimed_at"] < b["released_at"] and b["claimed_at"] < a["released_at"]]
    assert overlapping, held  # jobs did run at the same time
    assert all(a["CUDA_VISIBLE_DEVICES"] != b["CUDA_VISIBLE_DEVICES"] for a, b in overlapping), held
    assert len(overlapping) < 3, held  # never all three at once on two GPUs
