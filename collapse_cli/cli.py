"""`collapse`: the command line. `run` is a real Hydra application; the rest are plain commands."""

from __future__ import annotations

import errno
import itertools
import logging
import re
import secrets
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from collapse_cli.errors import CollapseError

if TYPE_CHECKING:  # omegaconf, hydra, torch: imported by the commands that use them, so `--help` starts fast
    from omegaconf import DictConfig

USAGE = """usage: collapse <command> [args]

commands:
  run [overrides]      train, generate, retrain for N generations (a Hydra app:
                       -m/--multirun, --cfg job, --help, hydra.run.dir=... work as usual)
  resume RUN_DIR [key=value ...]
                       continue an interrupted or failed run from its last finished generation
                       (overrides, e.g. train.lr=1e-4 after a divergence, apply from there on)
  compare PATH...      tables, CSV, plots and a report across run folders and sweeps
  show RUN_DIR         one run: its config in words, metrics by generation, verdict

examples:
  collapse run                                  # builtin language, tiny model, CPU, minutes
  collapse run model=opt125m mix=0.1            # Shumailov et al.'s 10%-real setting
  collapse run -m mix=0,0.1,0.5 seed=0,1,2      # a sweep: 9 runs
  collapse run dry_run=true                     # print the plan, train nothing
"""

# Hydra flags that take a value, so the value is not mistaken for an override.
FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                    "--config-dir", "-cd", "--experimental-rerun"}
# Flags after which Hydra prints and exits: nothing is composed, so nothing is checked.
INFO_FLAGS = {"--help", "-h", "--hydra-help", "--info", "-i", "--shell-completion", "-sc", "--version"}
FLAGS_WITHOUT_VALUE = {"-m", "--multirun", "-r", "--run", "--resolve", *INFO_FLAGS}
INFO_CHOICES = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}  # --info's optional value


def conf_dir() -> str:
    """Installed: collapse_cli/conf; source checkout or editable install: the repository's conf/."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise CollapseError(f"cannot find the Hydra configs next to {here}; reinstall with `pip install .`")


def error_line(message: str) -> int:
    print(f"collapse: error: {message}", file=sys.stderr)
    return 2


def _register() -> None:
    from omegaconf import OmegaConf

    from collapse_cli.config import register_schema

    register_schema()
    if not OmegaConf.has_resolver("run_id"):
        # Appended to Hydra's per-second timestamp so runs started in the same second never share a folder.
        OmegaConf.register_new_resolver("run_id", lambda: secrets.token_hex(3), use_cache=True)
    if not OmegaConf.has_resolver("config_groups"):
        OmegaConf.register_new_resolver("config_groups", config_groups)


def config_groups() -> str:
    """`collapse run --help`'s list of groups: conf/'s folders and their options, one line each. Hydra's own
    list would also show the schema groups in the ConfigStore, which only compose the typed defaults."""
    root = Path(conf_dir())
    folders = sorted({file.parent for file in root.rglob("*.yaml")} - {root})
    return "\n".join(f"{folder.relative_to(root).as_posix()}: "
                     f"{', '.join(sorted(file.stem for file in folder.glob('*.yaml')))}" for folder in folders)


@dataclass(frozen=True)
class RunArgs:
    """A `collapse run` argument list, parsed once."""

    overrides: list[str]  # key=value, in the order given
    flags: list[str]  # Hydra's flags, each with its value
    multirun: bool  # -m/--multirun
    info_only: bool  # --help, --info, ...: Hydra prints and exits, nothing is composed, so nothing is checked

    def hydra_argv(self) -> list[str]:
        """Flags first, then the overrides: Hydra's argparse takes overrides in one run only
        (`collapse run mix=0.1 -m seed=0,1` would leave `seed=0,1` unrecognized)."""
        return self.flags + self.overrides


def parse_run_args(args: list[str]) -> RunArgs:
    """Unknown flags and flags missing their value are one-line errors here, not Hydra's usage text."""
    flags, overrides, rest = [], [], list(args)
    while rest:
        arg = rest.pop(0)
        name = arg.split("=", 1)[0]
        if not arg.startswith("-"):
            overrides.append(arg)
        elif name in FLAGS_WITH_VALUE and "=" not in arg:
            if not rest or rest[0].startswith("-"):
                raise CollapseError(f"collapse run {arg}: the flag needs a value (see `collapse run --help`)")
            flags += [arg, rest.pop(0)]
        elif name in ("--info", "-i") and rest and rest[0] in INFO_CHOICES:
            flags += [arg, rest.pop(0)]
        elif name in FLAGS_WITH_VALUE or name in FLAGS_WITHOUT_VALUE:
            flags.append(arg)
        else:
            raise CollapseError(f"collapse run: unknown flag {arg}; overrides are key=value, and "
                                f"`collapse run --help` lists Hydra's flags")
    # A flag's value never starts with "-", so it is never taken for -m or an info flag.
    return RunArgs(overrides, flags, multirun="-m" in flags or "--multirun" in flags,
                   info_only=any(flag.split("=", 1)[0] in INFO_FLAGS for flag in flags))


def is_hydra_override(override: str) -> bool:
    return override.lstrip("+~").startswith("hydra")


def check_output_folder(key: str, value: str) -> None:
    """The folder Hydra will create, checked before it tries (os.makedirs would raise a traceback)."""
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


def expand_sweeps(overrides: list[str]) -> list[list[str]]:
    """Every job of a basic-sweeper multirun, as plain override lists."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    choices = []
    for override in parsed:
        key = override.get_key_element()
        if override.is_sweep_override():
            choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            choices.append([override.input_line])
    return [list(combo) for combo in itertools.product(*choices)] or [[]]


@dataclass(frozen=True)
class Checked:
    """What preflight found, composing the config before Hydra starts."""

    runs: list  # every job's RunConfig
    sweep_dir: Optional[Path] = None  # multirun: the sweep folder, resolved once (see resolve_sweep_dir)
    by_job_number: bool = True  # is each job's subfolder its job number?


def preflight(overrides: list[str], multirun: bool) -> Checked:
    """Compose and validate every job, and check the output folder, before Hydra starts any job,
    so bad input costs nothing; one composition of Hydra's own config serves the folder check
    and the sweep folder."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from collapse_cli.config import to_run_config

    job_overrides = [o for o in overrides if not is_hydra_override(o)]
    jobs = expand_sweeps(job_overrides) if multirun else [job_overrides]
    with initialize_config_dir(config_dir=conf_dir(), version_base=None):
        runs = [to_run_config(compose(config_name="config", overrides=job)) for job in jobs]
        hydra_overrides = [o for o in overrides if is_hydra_override(o)]
        hydra_cfg = compose(config_name="config", overrides=hydra_overrides, return_hydra_config=True).hydra
    where = "sweep" if multirun else "run"
    check_output_folder(f"hydra.{where}.dir", str(OmegaConf.to_container(hydra_cfg[where], resolve=False)["dir"]))
    return Checked(runs, *resolve_sweep_dir(hydra_cfg)) if multirun else Checked(runs)


def resolve_sweep_dir(hydra_cfg: DictConfig) -> tuple[Path, bool]:
    """(the sweep folder, is its subdir the job number?) from the composed `hydra` node, resolved once,
    here, before Hydra starts.

    Passing the resolved folder back to Hydra as `hydra.sweep.dir=...` keeps it one folder in
    every launcher process (the `run_id` resolver lives in this process only, hydra#861) and
    for a requeued job; and this process knows where to read each job's status afterwards.
    """
    from omegaconf import OmegaConf

    by_job_number = OmegaConf.to_container(hydra_cfg.sweep, resolve=False)["subdir"] == "${hydra.job.num}"
    return Path(str(hydra_cfg.sweep.dir)), by_job_number


def quoted(value: str) -> str:
    """A value as a Hydra override: bare when the grammar allows it, else single-quoted."""
    if re.fullmatch(r"[\w./-]+", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def sweep_problems(sweep_dir: Path, runs: list, by_job_number: bool) -> list[str]:
    """Every job of a finished sweep whose run folder does not say `finished`, read from the folders.

    Launchers that run jobs in other processes (submitit, joblib) never return their failures to
    this process, so the folders are the one record every launcher leaves.
    """
    from collapse_cli.rundir import RunDir, live_state, unwritten_reason

    if by_job_number:
        folders = [sweep_dir / str(num) for num, run in enumerate(runs) if not run.dry_run]
    else:  # a custom hydra.sweep.subdir: every folder that Hydra started a job in
        folders = sorted(p.parent for p in sweep_dir.rglob(".hydra") if (p.parent / "config.yaml").exists())
    problems = []
    for folder in folders:
        status = RunDir(folder).status()
        state = live_state(status)
        if state != "finished":
            never = "no status: the job never started; see the launcher's logs"
            reason = status.get("reason") or unwritten_reason(status) or never
            problems.append(f"{folder} ({state}: {reason})")
    return problems


def hydra_message(err: Exception) -> str:
    """Hydra and OmegaConf errors, cut to their first line and given a fix."""
    full = str(err).strip()
    text = full.splitlines()[0] if full else type(err).__name__
    # The cause says why: "Key 'foo' not in 'RunConfig'", "Value 'abc' ... could not be converted to Float".
    cause = str(err.__cause__).strip().splitlines()[0] if err.__cause__ and str(err.__cause__).strip() else ""
    if type(err).__name__ == "OverrideParseException":
        # The grammar's own words ("LexerNoViableAltException", "extraneous input ')'") come after the fix.
        why = [line for line in full.splitlines() if line.strip() and "^" not in line and "hydra.cc" not in line][-1]
        text = (f"{getattr(err, 'override', '')}: Hydra cannot parse this override ({why.strip()}); quote a value "
                f"with spaces or non-ASCII characters, as key='my value'")
    elif "Could not find" in full and "Available options" in full:
        # "Available options in 'model':\n\tgpt2\n\topt125m ..." up to the search path.
        listing = full.split("Available options", 1)[1].split(":", 1)[1].split("Config search path")[0]
        text = f"{text.rstrip('.')}: use one of {', '.join(listing.split())}"
    elif "Could not override" in text or "not in" in text or "Key '" in text:
        text = f"{text} {cause} (check the key's spelling; `collapse run --cfg job` lists every key)".replace("  ", " ")
    elif "Error merging override" in text and cause:
        text = f"{text.removeprefix('Error merging override ')}: {cause}"
    elif "Ambiguous value" in text:
        text = f"{text} (a comma-separated sweep needs -m/--multirun)"
    key = getattr(err, "full_key", None)  # OmegaConf errors know the key, but say it on a later line
    if key and key not in text:
        text = f"{key}: {text}"
    return text


INTERRUPTED = 130  # the shell's code for a run stopped by SIGINT


class SweepInterrupted(BaseException):
    """Raised out of Hydra's basic launcher (which catches only Exception) to end an in-process sweep."""


class StartupInterrupt:
    """Ctrl-C while libraries load and Hydra composes is noted, not raised: Hydra and OmegaConf turn an
    exception raised inside their composition into an error of their own (a traceback, exit 1). The noted
    Ctrl-C is raised at the next safe point, after preflight or as the task starts, and handled as usual."""

    def __init__(self) -> None:
        self.pending, self.previous = False, None

    def __enter__(self) -> StartupInterrupt:
        self.previous = signal.signal(signal.SIGINT, self._note)
        return self

    def __exit__(self, *exc_info) -> None:
        self._restore()

    def _note(self, signum, frame) -> None:
        self.pending = True

    def _restore(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None

    def check(self) -> None:
        """Raise a noted Ctrl-C now; keep deferring later ones."""
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt

    def release(self) -> None:
        """The run proper starts: Ctrl-C raises again (a no-op in a launcher's job process, which never deferred)."""
        self._restore()
        self.check()


STARTING = StartupInterrupt()


def run_task(cfg: DictConfig) -> None:
    """The Hydra task. Under submitit it runs in the launcher's job process, and again there when the job
    is requeued."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from collapse_cli.config import to_run_config
    from collapse_cli.experiment import gpu_slots
    from collapse_cli.rundir import RESUME_OVERRIDES, RunDir, atomic_write_bytes, writer_here

    STARTING.release()
    _register()  # resolvers registered in the parent do not reach launcher processes (hydra#861)
    hydra_cfg = HydraConfig.get()
    path = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    run_config = to_run_config(cfg)
    writer = None if run_config.dry_run else writer_here(RunDir(path).status())
    if writer is not None:
        if multirun:  # the sweep goes on; its end lists this job among those that did not finish
            logging.getLogger("collapse").error(still_running(path, writer))
            return
        raise SystemExit(error_line(still_running(path, writer)))
    if not run_config.dry_run:
        earlier, cfg = earlier_run(path, cfg)
        if earlier == "finished":
            logging.getLogger("collapse").info(f"{path} already holds this run, finished; nothing to do")
            return
        if earlier is None:  # a new run replaces the folder's: the overrides of that run's resumes go with it
            (path / RESUME_OVERRIDES).unlink(missing_ok=True)
        run_config = to_run_config(cfg)
        run_config.resume = earlier == "unfinished"
        atomic_write_bytes(path / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True).encode())
    with gpu_slots.claim_one(path, run_config.device):
        try:
            code = execute_guarded(run_config, path)
        except Exception:
            if not multirun:
                raise
            # One job's crash must not end the sweep: its status says failed, the sweep's end names it.
            logging.getLogger("collapse").exception(f"{path}: the run crashed")
            code = 1
    if run_config.dry_run:
        _remove_dry_run_folder(path)
    if code and not multirun:
        raise SystemExit(code)
    if code == INTERRUPTED and "BasicLauncher" in str(hydra_cfg.launcher.get("_target_", "")):
        # The basic launcher runs the sweep's jobs one after another in this process: Ctrl-C or SIGTERM
        # stops the sweep, not only the job it hit. (Launchers with a process per job stop each job alone.)
        raise SweepInterrupted(path)


def still_running(path: Path, pid: int) -> str:
    return (f"{path} is still running (process {pid} on this machine); two processes must not write one run "
            f"folder: stop it first (Ctrl-C, or kill {pid})")


def earlier_run(path: Path, cfg: DictConfig) -> tuple[Optional[str], DictConfig]:
    """("finished" or "unfinished", its config) when `path` already holds a run of this job, else (None, cfg).

    A requeued job (preemption, timeout) and a relaunched sweep start the same job again in the same
    folder: an unfinished run there continues from its last finished generation. The job's own
    overrides come again, so the run's config is the job's changed by the overrides of every
    `collapse resume` since: it continues with those. Any other difference makes it another run.
    """
    import yaml
    from omegaconf import OmegaConf

    from collapse_cli.rundir import RunDir

    saved = path / "config.yaml"
    if not (path / "status.json").is_file() or not saved.is_file():
        return None, cfg
    continued = with_resume_overrides(cfg, path)
    try:  # compared as data: a resume writes `lr: 1` where the job's typed config writes `lr: 1.0`
        same = yaml.safe_load(saved.read_text()) == yaml.safe_load(OmegaConf.to_yaml(continued, resolve=True))
    except yaml.YAMLError:  # an edited config.yaml: not a run this job can continue
        same = False
    if not same:
        return None, cfg
    return ("finished" if RunDir(path).status().get("state") == "finished" else "unfinished"), continued


def with_resume_overrides(cfg: DictConfig, path: Path, overrides: Optional[list[str]] = None) -> DictConfig:
    """`cfg` changed by the overrides of the run's earlier resumes, then by `overrides` (later ones win)."""
    from omegaconf import OmegaConf

    from collapse_cli.rundir import resume_overrides

    return OmegaConf.merge(cfg, OmegaConf.from_dotlist([*resume_overrides(path), *(overrides or [])]))


def execute_guarded(run_config, path: Path) -> int:
    """Run the loop (in worker processes when nproc > 1); turn every way it can stop into a status and an exit code."""
    from collapse_cli.experiment import distributed
    from collapse_cli.experiment.loop import execute, execute_rank
    from collapse_cli.experiment.progress import Feedback
    from collapse_cli.rundir import RunDir

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
        print(f"collapse: interrupted; resume with: collapse resume {path}", file=sys.stderr)
        return INTERRUPTED
    except Exception as err:
        if not _disk_full(err):
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


def _disk_full(err: Exception) -> bool:
    """ENOSPC/EDQUOT, also when a library (safetensors, say) wraps it in its own exception type."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return "No space left on device" in str(err) or "Disk quota exceeded" in str(err)


def _remove_dry_run_folder(path: Path) -> None:
    """A dry run trains nothing, so it leaves no run folder behind."""
    import shutil

    if path.exists() and not any(path.glob("gen_*")):
        shutil.rmtree(path, ignore_errors=True)


def run_command(args: list[str]) -> int:
    with STARTING:
        return _run_command(args)


def _run_command(args: list[str]) -> int:
    import hydra

    from collapse_cli.experiment import gpu_slots

    _register()
    checked = Checked(runs=[])
    try:
        parsed = parse_run_args(args)
        argv = parsed.hydra_argv()
        if not parsed.info_only:
            checked = preflight(parsed.overrides, parsed.multirun)
    except CollapseError as err:
        return error_line(str(err))
    except Exception as err:  # Hydra/OmegaConf composition errors
        return error_line(hydra_message(err))
    STARTING.check()
    sweep_dir = checked.sweep_dir
    if sweep_dir is not None:
        argv = [a for a in argv if not a.startswith("hydra.sweep.dir=")] + [f"hydra.sweep.dir={quoted(str(sweep_dir))}"]
        gpu_slots.publish_box_gpus()
    main = hydra.main(version_base=None, config_path=conf_dir(), config_name="config")(run_task)
    saved_argv = sys.argv
    sys.argv = ["collapse run", *argv]
    try:
        main()
    except SweepInterrupted as stop:
        print(f"collapse: the sweep stopped at {stop.args[0]}; run the same command with "
              f"hydra.sweep.dir={quoted(str(sweep_dir))} to finish it (finished runs are kept, the "
              f"interrupted one continues)", file=sys.stderr)
        return INTERRUPTED
    finally:
        sys.argv = saved_argv
    if sweep_dir is not None:
        problems = sweep_problems(sweep_dir, checked.runs, checked.by_job_number)
        if problems:
            return error_line(f"{len(problems)} of {len(checked.runs)} run(s) did not finish: " + "; ".join(problems))
    return 0


def resume_command(args: list[str]) -> int:
    from omegaconf import OmegaConf

    from collapse_cli.config import to_run_config
    from collapse_cli.rundir import RunDir, live_state, unwritten_reason, writer_here

    if not args or any(arg.startswith("-") for arg in args) or any("=" not in arg for arg in args[1:]):
        return error_line("usage: collapse resume RUN_DIR [key=value ...]")
    path, overrides = Path(args[0]), args[1:]
    saved = path / ".hydra" / "config.yaml"
    if not saved.is_file():
        return error_line(f"{path}: not a run folder (no .hydra/config.yaml); give the folder `collapse run` made")
    status = RunDir(path).status()
    if status.get("state") == "finished":
        print(f"collapse: {path} already finished; nothing to resume")
        return 0
    writer = writer_here(status)
    if writer is not None:
        return error_line(still_running(path, writer))
    if live_state(status) == "running":
        # Another machine's process cannot be seen from here: a lost node's run reads the same as a live one.
        print(f"collapse: warning: {path}/status.json says running {unwritten_reason(status)}; resuming, "
              f"so make sure that process has stopped", file=sys.stderr)
    _register()
    try:
        recorded = OmegaConf.load(saved)
    except Exception as err:  # YAML syntax, unreadable file
        recorded = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
    if isinstance(recorded, str) or not OmegaConf.is_dict(recorded):
        why = recorded if isinstance(recorded, str) else "not a mapping of keys"
        return error_line(f"{saved}: not a run configuration ({why}); the file was edited: restore it or start anew")
    try:
        # Overrides fix what stopped the run (a diverging train.lr, say); later generations use them.
        config = with_resume_overrides(recorded, path, overrides)
        run_config = to_run_config(config)
    except CollapseError as err:
        return error_line(str(err))
    except Exception as err:  # OmegaConf: a bad value or type in an override
        return error_line(hydra_message(err))
    if overrides:
        # The folder records the config it now runs with, so a later resume keeps the change.
        from collapse_cli.rundir import RESUME_OVERRIDES, atomic_write_bytes, resume_overrides

        atomic_write_bytes(saved, OmegaConf.to_yaml(config).encode())
        atomic_write_bytes(path / "config.yaml", OmegaConf.to_yaml(config, resolve=True).encode())
        # And what changed it, so that a requeued or relaunched job, which composes the job's own config
        # again, recognises its run (earlier_run) and continues with the change.
        everything = OmegaConf.create([*resume_overrides(path), *overrides])
        atomic_write_bytes(path / RESUME_OVERRIDES, OmegaConf.to_yaml(everything).encode())
    run_config.resume = True
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S",
                        handlers=[logging.StreamHandler(), logging.FileHandler(path / "collapse.log")])
    return execute_guarded(run_config, path)


def _quiet_libraries() -> None:
    """Our own bars and log lines replace the libraries' download and save bars.

    Environment only, which the processes a run starts (nproc ranks, launcher jobs) inherit: importing
    transformers (or torch) here would cost every command, `--help`, `compare` and GMM/VAE runs included,
    a second of start-up. The LM family turns transformers' bars off itself while it loads, converts
    and saves models (families/lm/quiet.py), in whichever process does that, whatever the environment says.
    """
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # matplotlib's first use on a machine logs "generated new fontManager" at INFO, which a run's log shows.
    logging.getLogger("matplotlib.font_manager").setLevel(logging.WARNING)


def prints_only(args: list[str]) -> bool:
    """Help, `run --cfg`/`--info`, compare and show: commands whose whole work is printing."""
    if not args or args[0] in ("-h", "--help", "help", "compare", "show"):
        return True
    try:
        parsed = parse_run_args(args[1:]) if args[0] == "run" else None
    except CollapseError:  # reported as usual when the run starts
        return False
    return parsed is not None and (parsed.info_only or "--cfg" in parsed.flags or "-c" in parsed.flags)


def end_quietly_when_the_reader_leaves() -> None:
    """`collapse --help | head -1`: the process ends as any Unix filter does when its reader leaves,
    not with a BrokenPipeError traceback. Only for commands that just print, and only as the command
    itself (not `main` called in a test's process): a run may write to sockets (trackers, the nproc
    store), where a broken connection must be an error it reports, not a silent death."""
    if hasattr(signal, "SIGPIPE"):  # POSIX only
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)


def main(argv: Optional[list[str]] = None) -> int:
    _quiet_libraries()
    args = sys.argv[1:] if argv is None else list(argv)
    if argv is None and prints_only(args):
        end_quietly_when_the_reader_leaves()
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = args[0], args[1:]
    try:
        if command == "run":
            return run_command(rest)
        if command == "resume":
            return resume_command(rest)
        if command in ("compare", "show"):
            from collapse_cli.report import compare

            return compare.main(rest) if command == "compare" else compare.show_main(rest)
    except CollapseError as err:
        return error_line(str(err))
    except KeyboardInterrupt:
        # A run in progress handles Ctrl-C itself (execute_guarded: status `interrupted`, a resume hint);
        # one that reaches here came while loading libraries or composing the config: nothing has run.
        print(f"collapse: interrupted (Ctrl-C) before `{command}` started any work", file=sys.stderr)
        return INTERRUPTED
    return error_line(f"unknown command {command!r}; commands: run, resume, compare, show (see `collapse --help`)")


if __name__ == "__main__":
    sys.exit(main())
