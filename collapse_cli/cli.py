"""`collapse`: the command line. `run` is a real Hydra application; the rest are plain commands."""

from __future__ import annotations

import signal
import sys


class StartupInterrupt:
    """Ctrl-C while libraries load and Hydra composes is noted, not raised: a KeyboardInterrupt inside an
    import is a traceback, and Hydra and OmegaConf turn one raised inside their composition into an error
    of their own (exit 1). The noted Ctrl-C is raised at the next safe point (`check`, `release`) and
    handled as usual: one line, exit 130."""

    def __init__(self) -> None:
        self.pending, self.previous = False, None

    def defer(self) -> StartupInterrupt:
        if self.previous is None:  # already deferring (since the module was imported): keep the first handler
            self.previous = signal.signal(signal.SIGINT, self._note)
        return self

    __enter__ = defer

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
        """The work proper starts: Ctrl-C raises again (a no-op in a launcher's job process, which never deferred)."""
        self._restore()
        self.check()


STARTING = StartupInterrupt()
if __name__ == "__main__" or sys.argv[0].endswith(("/collapse", "\\collapse.exe")):
    # The `collapse` command itself (not a test or a library importing this module): defer Ctrl-C from
    # here on, before this module's own imports, so one at any moment of start-up is one line, not a traceback.
    STARTING.defer()

import errno  # noqa: E402
import itertools  # noqa: E402
import logging  # noqa: E402
import re  # noqa: E402
import secrets  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING, Optional  # noqa: E402

from collapse_cli import __version__  # noqa: E402
from collapse_cli.errors import CollapseError  # noqa: E402

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
  --version            the version (and git commit of a source checkout)

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
        # `--cfg job` prints values, not `${oc.select:model.epochs,3}`: a reader wants what the run would use.
        resolve = ["--resolve"] if {"--cfg", "-c"} & set(self.flags) and "--resolve" not in self.flags else []
        return self.flags + resolve + self.overrides


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


# Launchers of the [slurm] extra (hydra-submitit-launcher), by their `hydra/launcher=` names.
SUBMITIT_LAUNCHERS = {"slurm": True, "submitit_slurm": True, "local_gpus": False, "submitit_local": False}


def check_launcher(overrides: list[str], multirun: bool) -> None:
    """A launcher that cannot start here is one line before anything runs: without the extra Hydra cannot
    find its config (even for a single run, which composes it), and off a cluster a sweep's submitit raises
    'Could not detect srun'."""
    import importlib.util
    import shutil

    for override in overrides:
        key, _, name = override.partition("=")
        if key.lstrip("+~") != "hydra/launcher" or name not in SUBMITIT_LAUNCHERS:
            continue
        try:
            installed = importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is not None
        except ImportError:
            installed = False
        if not installed:
            raise CollapseError(f'hydra/launcher={name} needs the slurm extra: pip install ".[slurm]" in the '
                                f"collapse source folder (it installs hydra-submitit-launcher and submitit)")
        if multirun and SUBMITIT_LAUNCHERS[name] and shutil.which("srun") is None:
            raise CollapseError(f"hydra/launcher={name}: no `srun` on this machine, so it is no SLURM cluster node; "
                                f"start the sweep on the cluster's login node, or drop hydra/launcher to run here")


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
    replaced: list[Path] = field(default_factory=list)  # folders whose other run `overwrite=true` moves aside


def preflight(overrides: list[str], multirun: bool) -> Checked:
    """Compose and validate every job, and check the output folders, before Hydra starts any job
    (or writes its .hydra/ into a folder), so bad input costs nothing and no run is overwritten."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from collapse_cli.config import to_run_config

    check_launcher(overrides, multirun)
    job_overrides = [o for o in overrides if not is_hydra_override(o)]
    hydra_overrides = [o for o in overrides if is_hydra_override(o)]
    jobs = expand_sweeps(job_overrides) if multirun else [job_overrides]
    with initialize_config_dir(config_dir=conf_dir(), version_base=None):
        # Each job with Hydra's config too: a folder may depend on the job's keys (hydra.sweep.subdir=seed_${seed}).
        composed = [compose(config_name="config", overrides=[*hydra_overrides, *job], return_hydra_config=True)
                    for job in jobs]
    tasks = [task_config(job) for job in composed]
    runs = [to_run_config(task) for task in tasks]
    hydra_cfg = composed[0].hydra
    where = "sweep" if multirun else "run"
    key = f"hydra.{where}.dir"
    folder = str(OmegaConf.to_container(hydra_cfg[where], resolve=False)["dir"])
    existing = check_output_folder(key, folder)
    if not all(run.dry_run for run in runs):  # a dry run writes nothing it keeps
        check_free_disk(key, folder, existing, max(run.min_free_disk_mb for run in runs))
    sweep_dir, by_job_number = resolve_sweep_dir(hydra_cfg) if multirun else (None, True)
    folders = [job_folder(job, num, sweep_dir) for num, job in enumerate(composed)]
    return Checked(runs, sweep_dir, by_job_number, check_job_folders(folders, tasks, key))


def task_config(composed: DictConfig) -> DictConfig:
    """A job's config as its task receives it: Hydra's own node removed (as hydra.core.utils.run_job does)."""
    import copy

    from omegaconf import open_dict, read_write

    task = copy.deepcopy(composed)
    with read_write(task), open_dict(task):
        del task["hydra"]
    return task


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
    from collapse_cli.rundir import RunDir, writer_here

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
    try:
        writer = None if run_config.dry_run else writer_here(RunDir(path).status())
    except CollapseError as err:  # a damaged status.json in the job's folder: one line, as below
        if multirun:
            logging.getLogger("collapse").error(str(err))
            return
        raise SystemExit(error_line(str(err))) from None
    if writer is not None:
        if multirun:  # the sweep goes on; its end lists this job among those that did not finish
            logging.getLogger("collapse").error(still_running(path, writer))
            return
        raise SystemExit(error_line(still_running(path, writer)))
    if not run_config.dry_run:
        earlier, cfg, differences = earlier_run(path, cfg)
        if earlier == "other":  # one preflight could not foresee (another process started it since)
            restore_hydra_record(path)
            raise SystemExit(error_line(f"{path} holds another run ({described(differences)}), started after "
                                        f"this command began; give this job another folder"))
        if earlier == "finished":
            logging.getLogger("collapse").info(f"{path} already holds this run, finished; nothing to do")
            return
        if earlier is None:  # a new run replaces the folder's: the overrides of that run's resumes go with it
            (path / RESUME_OVERRIDES).unlink(missing_ok=True)
        run_config = to_run_config(cfg)
        run_config.resume = earlier == "unfinished"
        atomic_write_bytes(path / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True).encode())
        keep_hydra_record(path)
    with gpu_slots.claim_one(path, run_config.device):
        try:
            in_sweep = multirun and "BasicLauncher" in str(hydra_cfg.launcher.get("_target_", ""))
            code = execute_guarded(run_config, path, says_interrupt=not in_sweep)
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
    import os

    import hydra

    from collapse_cli import environment
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
    for folder in checked.replaced:
        try:
            aside = move_aside(folder)
        except OSError as err:
            return error_line(f"overwrite=true: cannot move the run in {folder} aside ({err.strerror}); move or "
                              f"remove it yourself, or give a new hydra.run.dir")
        print(f"collapse: overwrite=true: the run that was in {folder} is now in {aside}", file=sys.stderr)
    sweep_dir = checked.sweep_dir
    if sweep_dir is not None:
        argv = [a for a in argv if not a.startswith("hydra.sweep.dir=")] + [f"hydra.sweep.dir={quoted(str(sweep_dir))}"]
        gpu_slots.publish_box_gpus()
        os.environ[environment.SWEEP_JOBS] = str(len(checked.runs))  # threads=auto divides the cores among them
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
    from collapse_cli.rundir import RunDir, check_resumable, live_state, read_run_text, unwritten_reason, writer_here

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
    check_resumable(path)
    try:  # a run stopped for review: its verdicts first, so a missing or bad file changes nothing
        from collapse_cli.experiment.review import check_verdicts

        check_verdicts(path)
    except CollapseError as err:
        return error_line(str(err))
    writer = writer_here(status)
    if writer is not None:
        return error_line(still_running(path, writer))
    if live_state(status) == "running":
        # Another machine's process cannot be seen from here: a lost node's run reads the same as a live one.
        print(f"collapse: warning: {path}/status.json says running {unwritten_reason(status)}; resuming, "
              f"so make sure that process has stopped", file=sys.stderr)
    _register()
    text = read_run_text(saved)  # a folder, unreadable or not UTF-8: the one-line "damaged" error
    if not text.strip():
        return error_line(f"{saved}: empty: Hydra could not write the run's config (a full disk?), so the run never "
                          f"started; start it again with `collapse run`")
    try:
        recorded = OmegaConf.create(text)
    except Exception as err:  # YAML syntax
        recorded = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
    if isinstance(recorded, str) or not OmegaConf.is_dict(recorded):
        why = recorded if isinstance(recorded, str) else "not a mapping of keys"
        return error_line(f"{saved}: not a run configuration ({why}); the file was edited: restore it or start anew")
    try:
        for override in overrides:
            check_resume_override(override, recorded)
        # Overrides fix what stopped the run (a diverging train.lr, say); later generations use them.
        config = with_resume_overrides(recorded, path, overrides)
        check_resume_changes(path, with_resume_overrides(recorded, path), config, overrides)
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
    done = len(RunDir(path).done_generations())  # the loop restarts at the first generation not done
    logging.getLogger("collapse").info(f"resuming {path} at generation {done:,} of {run_config.generations:,} "
                                       f"(generations 0 to {done - 1:,} are done and kept)" if done else
                                       f"resuming {path} from generation 0 of {run_config.generations:,}")
    return execute_guarded(run_config, path)


def check_resume_override(override: str, recorded: DictConfig) -> None:
    """A resume changes keys of the recorded run (train.lr=1e-4); it cannot pick another group option
    (model=vae) or family: those make another run, and would otherwise surface as a baffling type error.
    Checked before the overrides are merged, so also before any generation is finished, where
    check_resume_changes (values against finished generations) has nothing to hold them to."""
    key, _, value = override.partition("=")
    key = key.lstrip("+~")
    groups = {folder.name for folder in Path(conf_dir()).iterdir() if folder.is_dir()}
    recorded_family = str(recorded.get("model", {}).get("family", "lm"))
    if key.split("/")[0] in groups and "." not in key or key == "model.family" and value != recorded_family:
        raise CollapseError(f"{override} would change what the recorded run is (model.family={recorded_family}): "
                            f"a resume changes keys, such as train.lr=1e-4, never a group option or the family; "
                            f"start another run with `collapse run {override} ...`")


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
    command, rest = (args[0], args[1:]) if args else ("help", [])
    try:
        if command != "run":  # `run` defers Ctrl-C until its config is composed (run_command)
            STARTING.release()  # a Ctrl-C noted while this module loaded is raised here
        if command in ("-h", "--help", "help"):
            print(USAGE)
            return 0
        if command in ("--version", "-V"):
            from collapse_cli.environment import git_commit, package_version

            commit = git_commit()
            print(f"collapse {package_version('collapse') or __version__}" + (f" (git {commit})" if commit else ""))
            return 0
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
