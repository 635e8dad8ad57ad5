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

import itertools  # noqa: E402
import logging  # noqa: E402
import re  # noqa: E402
from dataclasses import dataclass, field, replace  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING, Optional  # noqa: E402

from collapse_cli import __version__  # noqa: E402
from collapse_cli.console import error_line  # noqa: E402
from collapse_cli.errors import CollapseError  # noqa: E402
from collapse_cli.lifecycle import (  # noqa: E402
    INTERRUPTED,
    check_free_disk,
    check_job_folders,
    check_output_folder,
    check_resume_changes,
    described,
    earlier_run,
    execute_guarded,
    job_folder,
    keep_hydra_record,
    move_aside,
    remove_dry_run_folder,
    restore_hydra_record,
    still_running,
    sweep_end,
    sweep_problems,
    with_resume_overrides,
)

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
    from omegaconf import OmegaConf

    from collapse_cli.compose import composing, to_run_config

    check_launcher(overrides, multirun)
    job_overrides = [o for o in overrides if not is_hydra_override(o)]
    hydra_overrides = [o for o in overrides if is_hydra_override(o)]
    jobs = expand_sweeps(job_overrides) if multirun else [job_overrides]
    with composing() as node:
        # Each job with Hydra's config too: a folder may depend on the job's keys (hydra.sweep.subdir=seed_${seed}).
        composed = [node([*hydra_overrides, *job], hydra=True) for job in jobs]
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


class SweepInterrupted(BaseException):
    """Raised out of Hydra's basic launcher (which catches only Exception) to end an in-process sweep."""


def run_task(cfg: DictConfig) -> None:
    """The Hydra task. Under submitit it runs in the launcher's job process, and again there when the job
    is requeued."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from collapse_cli.atomic import atomic_write_bytes
    from collapse_cli.compose import register, to_run_config
    from collapse_cli.experiment import gpu_slots
    from collapse_cli.experiment.review import awaiting_line
    from collapse_cli.liveness import writer_here
    from collapse_cli.rundir import RESUME_OVERRIDES, RunDir

    STARTING.release()
    register()  # resolvers registered in the parent do not reach launcher processes (hydra#861)
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
        waiting = awaiting_line(path) if earlier == "unfinished" else None
        if waiting is not None:  # stopped for its reviewer, the verdicts not in: the run stays as it was
            restore_hydra_record(path)
            if multirun:  # the sweep goes on; its end lists this run among those awaiting review
                logging.getLogger("collapse").info(f"{path}: {waiting}")
                return
            raise SystemExit(error_line(f"{path} is {waiting}"))
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
        remove_dry_run_folder(path)
    if code and not multirun:
        raise SystemExit(code)
    if code == INTERRUPTED and "BasicLauncher" in str(hydra_cfg.launcher.get("_target_", "")):
        # The basic launcher runs the sweep's jobs one after another in this process: Ctrl-C or SIGTERM
        # stops the sweep, not only the job it hit. (Launchers with a process per job stop each job alone.)
        raise SweepInterrupted(path)


def run_command(args: list[str]) -> int:
    with STARTING:
        return _run_command(args)


def _run_command(args: list[str]) -> int:
    import os

    import hydra

    from collapse_cli import environment
    from collapse_cli.compose import conf_dir, family_options, register
    from collapse_cli.experiment import gpu_slots

    register()
    checked = Checked(runs=[])
    try:
        parsed = parse_run_args(args)
        # model.family=pkg.mod:Class with no model= option: the family's schemas become the options (compose.py).
        parsed = replace(parsed, overrides=[*parsed.overrides, *family_options(parsed.overrides)])
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
        return sweep_end(*sweep_problems(sweep_dir, checked.runs, checked.by_job_number), len(checked.runs))
    return 0


def resume_command(args: list[str]) -> int:
    from omegaconf import OmegaConf

    from collapse_cli.compose import register, to_run_config
    from collapse_cli.liveness import live_state, unwritten_reason, writer_here
    from collapse_cli.rundir import RunDir, check_resumable, read_run_text

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
    register()
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
        from collapse_cli.atomic import atomic_write_bytes
        from collapse_cli.rundir import RESUME_OVERRIDES, resume_overrides

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
    from collapse_cli.compose import conf_dir

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
