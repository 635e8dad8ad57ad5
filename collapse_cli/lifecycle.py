"""A run folder's life around the loop: made once, never shared, refused or moved aside, resumed, ended.

The command line (cli.py) parses argv and composes the configs; this module decides what may happen to the
folders they name: the output folder checked before Hydra makes it, one run per folder (another run there
is refused, or moved aside with overwrite=true), the same job again continues its run, a resume may change
only what its finished generations do not depend on, and every way a run stops becomes a status and an
exit code.
"""

from __future__ import annotations

import errno
import itertools
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from collapse_cli.console import error_line
from collapse_cli.errors import CollapseError

if TYPE_CHECKING:
    from omegaconf import DictConfig

INTERRUPTED = 130  # the shell's code for a run stopped by SIGINT


def check_output_folder(key: str, value: str) -> Path:
    """The folder Hydra will create, checked before it tries (os.makedirs would raise a traceback);
    returns its nearest existing ancestor (or itself)."""
    import os
    import tempfile

    if not value.strip():
        raise CollapseError(f"{key} is empty: give a folder, e.g. {key}=outputs/my_run ({key}=. for this one)")
    literal = value.split("${", 1)[0]  # ${now:...}, ${run_id:}: only the part before them is known yet
    folder = Path(literal or ".").expanduser().absolute()
    if literal != value and not literal.endswith("/"):
        folder = folder.parent  # the interpolation completes the last name
    try:
        existing = next(p for p in (folder, *folder.parents) if p.exists())
    except OSError as err:  # an ancestor that cannot be searched
        raise CollapseError(f"{key}={value}: cannot look into {err.filename} ({err.strerror}); "
                            f"choose another {key}") from None
    if not existing.is_dir():
        raise CollapseError(f"{key}={value}: {existing} is a file, not a folder; choose another {key}")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".collapse-check-", dir=existing))  # can folders be made there?
    except OSError as err:
        raise CollapseError(f"{key}={value}: cannot create a folder in {existing} ({err.strerror}); "
                            f"choose a writable {key}") from None
    return existing


def check_free_disk(key: str, value: str, existing: Path, min_free_mb: int) -> None:
    """A disk already full stops here, before Hydra writes .hydra/ there (its failed write would be a
    traceback and leave an empty config.yaml); the loop checks the same minimum before every generation."""
    import shutil

    free_mb = shutil.disk_usage(existing).free / 2**20
    need_mb = max(min_free_mb, 1)  # Hydra's own files need some
    if free_mb < need_mb:
        raise CollapseError(f"{key}={value}: only {free_mb:.0f} MiB free on the disk of {existing}, below the "
                            f"{need_mb} MiB a run starts with (min_free_disk_mb); free space or choose another {key}")


def job_folder(composed: DictConfig, num: int, sweep_dir: Optional[Path]) -> Optional[Path]:
    """The folder Hydra will run job `num` in (hydra.run.dir, or the sweep folder's subdir for that job);
    None when only the launcher can tell (an interpolation of keys it sets)."""
    import os

    from omegaconf import open_dict, read_write

    node = composed.hydra
    try:
        if sweep_dir is None:
            return Path(os.path.abspath(str(node.run.dir)))
        with read_write(node), open_dict(node):
            node.job.num = num  # what the launcher sets before the subdir is resolved
        return Path(os.path.abspath(sweep_dir / str(node.sweep.subdir)))
    except Exception:  # noqa: BLE001 - any resolution error: the job itself checks its folder (run_task)
        return None


def check_job_folders(folders: list[Optional[Path]], tasks: list[DictConfig], key: str) -> list[Path]:
    """One run per folder: jobs of a sweep that would share one are refused; a folder that holds another
    run is refused, or (overwrite=true) listed to be moved aside. The same run again is fine: a relaunched
    sweep or a requeued job continues it (run_task)."""
    first_job: dict[Path, int] = {}
    for num, folder in enumerate(folders):
        if folder is not None and folder in first_job:
            raise CollapseError(f"jobs {first_job[folder]} and {num} of the sweep would both write {folder}, the "
                                f"later replacing the earlier's run: give hydra.sweep.subdir a value that differs "
                                f"by job (the default ${{hydra.job.num}}, or e.g. seed_${{seed}})")
        if folder is not None:
            first_job[folder] = num
    return [folder for folder, task in zip(folders, tasks) if folder is not None and other_run_to_replace(folder,
                                                                                                      task, key)]


def other_run_to_replace(folder: Path, task: DictConfig, key: str) -> bool:
    """Whether `folder` holds another run that overwrite=true moves aside; refused without it, or while it runs."""
    from collapse_cli.liveness import writer_here
    from collapse_cli.rundir import RunDir

    earlier, _, differences = earlier_run(folder, task)
    if earlier != "other":
        return False
    writer = writer_here(RunDir(folder).status())
    if writer is not None:
        raise CollapseError(still_running(folder, writer))
    if not task.get("overwrite", False):
        raise CollapseError(f"{folder} holds another run ({described(differences)}): give a new {key}, or add "
                            f"overwrite=true to move that run aside to {folder.name}.replaced-<date>-<time> "
                            f"(nothing is deleted)")
    return True


def described(differences: list[str]) -> str:
    return "; ".join(differences[:3]) + (f"; {len(differences) - 3} more" if len(differences) > 3 else "")


def move_aside(folder: Path) -> Path:
    """overwrite=true: the old run goes to a sibling folder, whole (nothing a user made is deleted)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = folder.with_name(f"{folder.name}.replaced-{stamp}")
    for n in itertools.count(2):
        if not aside.exists():
            break
        aside = folder.with_name(f"{folder.name}.replaced-{stamp}-{n}")
    folder.rename(aside)
    return aside


def sweep_problems(sweep_dir: Path, runs: list, by_job_number: bool) -> tuple[list[str], list[str]]:
    """The jobs of a finished sweep whose run folder does not say `finished`, read from the folders: (those
    that failed, stopped or never started; those that stopped as they should, awaiting review).

    Launchers that run jobs in other processes (submitit, joblib) never return their failures to
    this process, so the folders are the one record every launcher leaves.
    """
    from collapse_cli.liveness import live_state, unwritten_reason
    from collapse_cli.rundir import AWAITING_REVIEW, RunDir

    if by_job_number:
        folders = [sweep_dir / str(num) for num, run in enumerate(runs) if not run.dry_run]
    else:  # a custom hydra.sweep.subdir: every folder that Hydra started a job in
        folders = sorted(p.parent for p in sweep_dir.rglob(".hydra") if (p.parent / "config.yaml").exists())
    problems, awaiting = [], []
    for folder in folders:
        status = RunDir(folder).status()
        state = live_state(status)
        if state == AWAITING_REVIEW:
            awaiting.append(str(folder))
        elif state != "finished":
            never = "no status: the job never started; see the launcher's logs"
            reason = status.get("reason") or unwritten_reason(status) or never
            problems.append(f"{folder} ({state}: {reason})")
    return problems, awaiting


def sweep_end(problems: list[str], awaiting: list[str], n_runs: int) -> int:
    """The sweep's last word and exit code: 2 if a run failed; 0 otherwise, also with runs that stopped for
    review (curate=review stops a run by design, and a single run that stops so exits 0 too)."""
    if awaiting:
        print(f"collapse: {len(awaiting)} of {n_runs} run(s) await review: fill the verdicts.csv named in "
              f"each one's status (`collapse show RUN`), then `collapse resume RUN`: {', '.join(awaiting)}",
              file=sys.stderr)
    if problems:
        return error_line(f"{len(problems)} of {n_runs} run(s) did not finish: " + "; ".join(problems))
    return 0


def still_running(path: Path, pid: int) -> str:
    return (f"{path} is still running (process {pid} on this machine); two processes must not write one run "
            f"folder: stop it first (Ctrl-C, or kill {pid})")


# Keys that say how a run was started, not what it is: a requeued `overwrite=true` job is the same run.
NOT_THE_RUN = ("overwrite",)


def earlier_run(path: Path, cfg: DictConfig) -> tuple[Optional[str], DictConfig, list[str]]:
    """What `path` holds for this job: (None, cfg, []) nothing (no config.yaml: no run was started there);
    ("finished" or "unfinished", its config, []) this job's run; ("other", cfg, the differences) another run.

    A requeued job (preemption, timeout) and a relaunched sweep start the same job again in the same
    folder: an unfinished run there continues from its last finished generation. The job's own
    overrides come again, so the run's config is the job's changed by the overrides of every
    `collapse resume` since: it continues with those. Any other difference makes it another run.
    """
    import yaml
    from omegaconf import OmegaConf

    from collapse_cli.rundir import RunDir, flatten

    saved = path / "config.yaml"
    if not saved.is_file():
        return None, cfg, []
    continued = with_resume_overrides(cfg, path)
    try:  # compared as data: a resume writes `lr: 1` where the job's typed config writes `lr: 1.0`
        there = yaml.safe_load(saved.read_text())
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as err:  # an edited or damaged config.yaml
        return "other", cfg, [f"its config.yaml is unreadable: {type(err).__name__}"]
    if not isinstance(there, dict):
        return "other", cfg, ["its config.yaml is not a mapping of keys"]
    here = flatten(yaml.safe_load(OmegaConf.to_yaml(continued, resolve=True)))
    there = flatten(there)
    differences = [f"{key}={here.get(key)} here, {there.get(key)} there" for key in sorted(set(here) | set(there))
                   if key not in NOT_THE_RUN and here.get(key) != there.get(key)]
    if differences:
        return "other", cfg, differences
    return ("finished" if RunDir(path).status().get("state") == "finished" else "unfinished"), continued, []


# Hydra writes a job's .hydra/ files into its folder before the job runs; a copy of the run's own lets a
# job that finds another run there (run_task) put that run's back.
HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")
HYDRA_KEPT = Path(".hydra") / "kept"


def keep_hydra_record(path: Path) -> None:
    import shutil

    (path / HYDRA_KEPT).mkdir(parents=True, exist_ok=True)
    for name in HYDRA_FILES:
        if (path / ".hydra" / name).is_file():
            shutil.copyfile(path / ".hydra" / name, path / HYDRA_KEPT / name)


def restore_hydra_record(path: Path) -> None:
    import shutil

    for name in HYDRA_FILES:
        if (path / HYDRA_KEPT / name).is_file():
            shutil.copyfile(path / HYDRA_KEPT / name, path / ".hydra" / name)


def with_resume_overrides(cfg: DictConfig, path: Path, overrides: Optional[list[str]] = None) -> DictConfig:
    """`cfg` changed by the overrides of the run's earlier resumes, then by `overrides` (later ones win)."""
    from omegaconf import OmegaConf

    from collapse_cli.rundir import resume_overrides

    return OmegaConf.merge(cfg, OmegaConf.from_dotlist([*resume_overrides(path), *(overrides or [])]))


# What `collapse resume RUN_DIR key=value` may change (README "Reliability"): how the rest of the run trains,
# how long it goes on, where it runs and what it keeps, never what its finished generations were made of
# or measured with. A key ending in "." stands for every key under it.
RESUME_MAY_CHANGE = ("train.", "generations", "device", "nproc", "threads", "checkpoints", "min_free_disk_mb",
                     "logger.", "generate.batch_size", "generate.decoder", "generate.cuda_graph",
                     "metrics.eval_batch_size", "model.cache_dir")
# train.* keys that are not how one generation trains: the chain of models, the rows of the real data.
RESUME_KEEPS = ("train.init", "train.block_size")


def check_resume_changes(path: Path, before: DictConfig, after: DictConfig, overrides: list[str]) -> None:
    """Refuse a resume override that would change what the run's finished generations mean; the line names
    the overrides as given (`model=vae`), else the keys they changed through an interpolation."""
    from omegaconf import OmegaConf

    from collapse_cli.rundir import RunDir, flatten

    done = len(RunDir(path).done_generations())
    if not done:  # nothing finished yet: nothing a change could contradict
        return
    old, new = (flatten(OmegaConf.to_container(c, resolve=True)) for c in (before, after))
    changed = [key for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]
    refused = [key for key in changed if key in RESUME_KEEPS or not any(
        key.startswith(allowed) if allowed.endswith(".") else key == allowed for allowed in RESUME_MAY_CHANGE)]
    if refused:
        given = [o for o in overrides if any(k == o.split("=", 1)[0] or k.startswith(o.split("=", 1)[0] + ".")
                                             for k in refused)]
        named = given or [f"{key}={new.get(key)}" for key in refused]
        raise CollapseError(f"collapse resume {path}: {', '.join(named[:3])} "
                            f"would change what its {done} finished generation(s) are; a resume may change "
                            f"train.* (not train.init or train.block_size), generations, device, nproc, threads, "
                            f"checkpoints, logger.* and batch sizes; for another setting start a new run")
    if new["generations"] < done - 1:
        raise CollapseError(f"collapse resume {path}: generations={new['generations']}, but generations 0-{done - 1} "
                            f"are finished; a resume can only go on from there (generations={done - 1} or more)")


def execute_guarded(run_config, path: Path, says_interrupt: bool = True) -> int:
    """Run the loop (in worker processes when nproc > 1); turn every way it can stop into a status and an exit code.
    `says_interrupt` False: an in-process sweep says the one line for a Ctrl-C itself (how to finish the sweep)."""
    from collapse_cli.environment import apply_threads
    from collapse_cli.experiment import distributed
    from collapse_cli.experiment.loop import execute, execute_rank
    from collapse_cli.experiment.progress import Feedback
    from collapse_cli.rundir import RunDir

    apply_threads(run_config.threads)
    run_dir = RunDir(path)

    def mark(state: str, reason: str) -> None:
        # On a full disk even the status write can fail; the message to the user still goes out.
        if not run_config.dry_run and path.exists():
            try:
                run_dir.set_status(state, reason=reason)
            except OSError:
                pass

    class Terminated(KeyboardInterrupt):
        """SIGTERM (a scheduler's preemption, `kill`) handled like Ctrl-C: a resumable, interrupted run."""

    def on_sigterm(signum, frame):
        raise Terminated()

    previous_handler = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        if (run_config.nproc > 1 or run_config.nnodes > 1) and not run_config.dry_run:
            distributed.launch(execute_rank, run_config, path)
        else:
            execute(run_config, path, Feedback())
        return 0
    except CollapseError as err:
        # Messages that tell how to resume name the folder as RUN_DIR; only this level knows it.
        message = str(err).replace("RUN_DIR", str(path))
        mark("failed", message)
        return error_line(message)
    except SystemExit as err:
        # submitit's preemption/timeout handler (SIGUSR2) checkpoints and requeues the job by exiting
        # from inside the loop; the requeued job finds this folder and continues it.
        mark("interrupted", f"preempted or timed out (exit {err.code}); the launcher requeues the job, "
                            f"which continues here; or `collapse resume {path}`")
        raise
    except KeyboardInterrupt as err:
        how = "terminated (SIGTERM)" if isinstance(err, Terminated) else "interrupted by the user (Ctrl-C)"
        mark("interrupted", f"{how}; `collapse resume {path}` continues it")
        if says_interrupt:
            print(f"collapse: interrupted; resume with: collapse resume {path}", file=sys.stderr)
        return INTERRUPTED
    except Exception as err:
        if not disk_full(err):
            mark("failed", f"{type(err).__name__}: {err}")
            raise
        reason = f"{path}: the disk is full (no space left on device); free space, then `collapse resume {path}`"
        mark("failed", reason)
        return error_line(reason)
    except BaseException as err:
        mark("failed", f"{type(err).__name__}: {err}")
        raise
    finally:
        signal.signal(signal.SIGTERM, previous_handler)


def disk_full(err: Exception) -> bool:
    """ENOSPC/EDQUOT, also when a library (safetensors, say) wraps it in its own exception type."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return "No space left on device" in str(err) or "Disk quota exceeded" in str(err)


def remove_dry_run_folder(path: Path) -> None:
    """A dry run trains nothing, so it leaves no run folder behind."""
    import shutil

    if path.exists() and not any(path.glob("gen_*")):
        shutil.rmtree(path, ignore_errors=True)
