"""Experiment trackers (`logger=[tensorboard,mlflow,wandb]`): a copy of each run in the tools researchers watch.

    start(cfg, path, first)    record the run's environment (environment.py), then open (or, on resume,
                               reopen) one tracker run per chosen logger and log that environment to it
      .log_generation(metrics) one step per finished generation (step = generation)
      .finish(summary)         the summary, the early-warning verdict, on request the plots
    leaving the `with` block   closes every tracker run: finished, failed or interrupted

The run folder stays the source of truth: trackers only copy what the loop has already written.
A tracker that fails (package missing, server unreachable, disk full) prints one warning line
and is dropped for the rest of the run; nothing it does can stop or fail the run.
Each tracker's run id lives in <run>/trackers.json, so `collapse resume` reopens the same run
and logs exactly the generations it has not seen.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Optional

from collapse_cli import environment
from collapse_cli.config import MlflowConfig, TensorBoardConfig, WandbConfig
from collapse_cli.ranks import is_main
from collapse_cli.report.facts import run_facts
from collapse_cli.rundir import RunDir, flatten, read_metrics, to_json

if TYPE_CHECKING:
    from collapse_cli.config import RunConfig

log = logging.getLogger("collapse")

STATE_FILE = "trackers.json"
# Config sections that describe the tracking or the invocation, not the experiment.
NOT_HYPERPARAMETERS = ("logger", "resume", "dry_run")


# ---------------------------------------------------------------------------
# What every tracker gets: the run's identity, hyperparameters and tags
# ---------------------------------------------------------------------------

@dataclass
class RunInfo:
    path: Path  # the run folder
    name: str  # <stamp> for a single run, <sweep stamp>/<job> for a sweep's job
    group: Optional[str]  # the sweep folder's name, so a tracker can group a sweep's runs
    tags: dict[str, str]  # overrides that vary across the sweep (all overrides for a single run)
    config: dict[str, Any]  # the resolved config, nested, without the tracking sections
    first_generation: int = 0  # the first generation this process runs: above 0 on a resume
    environment: dict[str, Any] = field(default_factory=dict)  # this process's entry of environment.json
    headline: tuple[str, ...] = ()  # the family's headline metrics, from the run folder's family.json

    def params(self) -> dict[str, str]:
        """The config flattened to dotted keys with string values (MLflow params, TensorBoard hparams)."""
        return {key: str(value) for key, value in flatten(self.config).items()}


def _plain(value: Any) -> Any:
    """Enums as their values, recursively: what YAML, JSON and the trackers' configs understand."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value.value if isinstance(value, Enum) else value


def _read_overrides(path: Path) -> list[str]:
    from omegaconf import OmegaConf

    if not path.is_file():
        return []
    loaded = OmegaConf.load(path)
    items = OmegaConf.to_container(loaded.hydra.overrides.task) if "hydra" in loaded else OmegaConf.to_container(loaded)
    return [str(item) for item in items or []]


def _key_value(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def run_tags(path: Path) -> dict[str, str]:
    """Tags from Hydra's record of the job's overrides, limited to the keys the sweep varies.

    A sweep job's folder sits in the sweep folder, whose multirun.yaml holds the sweep as typed
    (`mix=0,0.5 seed=0,1`); the keys swept there are the ones that tell its runs apart.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    job = dict(_key_value(o) for o in _read_overrides(path / ".hydra" / "overrides.yaml"))
    job = {k: v for k, v in job.items() if not k.startswith(("hydra", "logger"))}
    swept = OverridesParser.create().parse_overrides(_read_overrides(path.parent / "multirun.yaml"))
    swept_keys = {o.get_key_element().lstrip("+~") for o in swept if o.is_sweep_override()}
    return {k: v for k, v in job.items() if k in swept_keys} if swept_keys & job.keys() else job


def run_info(cfg: RunConfig, path: Path, first_generation: int = 0) -> RunInfo:
    path = path.resolve()
    in_sweep = (path.parent / "multirun.yaml").is_file()
    config = _plain({k: v for k, v in asdict(cfg).items() if k not in NOT_HYPERPARAMETERS})
    return RunInfo(path=path, name=f"{path.parent.name}/{path.name}" if in_sweep else path.name,
                   group=path.parent.name if in_sweep else None, tags=run_tags(path), config=config,
                   first_generation=first_generation, headline=run_facts(path, cfg.model.family).headline)


def _numbers(values: dict) -> dict[str, float]:
    """The finite numeric entries (metrics.jsonl writes the others as null, or they are text)."""
    return {k: float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def summary_numbers(summary: dict) -> dict[str, float]:
    """summary.json's numbers, the verdict's generations included, as `summary/<key>`."""
    return {f"summary/{k}": v for k, v in _numbers(flatten(summary)).items()}


# ---------------------------------------------------------------------------
# The trackers: each opens or reopens its run, logs steps, a summary, images, and closes
# ---------------------------------------------------------------------------

class MissingPackage(Exception):
    """An optional tracker package is not installed; the message is the install command."""


class TensorBoardTracker:
    name, extra, package = "tensorboard", "tensorboard", "tensorboard"

    def __init__(self, cfg: TensorBoardConfig):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise MissingPackage() from err
        self.writer_class = SummaryWriter

    def start(self, info: RunInfo, previous: Optional[dict]) -> dict:
        # A resumed run writes a further event file into the same folder; TensorBoard reads them as one run.
        self.writer = self.writer_class(log_dir=str(info.path / "tensorboard"))
        if previous is None:
            from torch.utils.tensorboard.summary import hparams

            # The HParams dashboard shows, per run, the last value of these scalar tags.
            for summary in hparams(info.params(), dict.fromkeys(info.headline, float("nan"))):
                self.writer._get_file_writer().add_summary(summary)
            self.writer.add_text("run_dir", str(info.path))
            self.writer.add_text("tags", " ".join(f"{k}={v}" for k, v in info.tags.items()) or "(none)")
        changed, state = note_resume(info, previous)
        for tag, text in changed.items():  # the hparams stay as the run began: a changed value is text beside them
            self.writer.add_text(tag, text, global_step=info.first_generation)
        return state

    def log_environment(self, info: RunInfo) -> None:
        self.writer.add_text("environment", f"```\n{to_json(info.environment)}\n```",
                             global_step=info.first_generation)

    def log_generation(self, generation: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, global_step=generation)
        self.writer.flush()

    def log_summary(self, summary: dict, last_generation: int, plots: list[Path]) -> None:
        from matplotlib.image import imread

        for key, value in summary_numbers(summary).items():
            self.writer.add_scalar(key, value, global_step=last_generation)
        self.writer.add_text("summary/early_warning", summary["early_warning"]["text"], global_step=last_generation)
        self.writer.add_text("summary/json", f"```\n{to_json(summary)}\n```", global_step=last_generation)
        for plot in plots:
            self.writer.add_image(f"plots/{plot.stem}", imread(plot)[..., :3], global_step=last_generation,
                                  dataformats="HWC")

    def close(self, state: str) -> None:
        self.writer.close()


class MlflowTracker:
    name, extra, package = "mlflow", "mlflow", "mlflow-skinny"
    STATUS: ClassVar[dict[str, str]] = {"finished": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}

    def __init__(self, cfg: MlflowConfig):
        # Read by MLflow at each request: one bounded attempt instead of its default 7 retries with backoff
        # (minutes against an unreachable server). The file store is what offline-first means here;
        # MLflow 3 refuses it unless this is set.
        os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(cfg.timeout_s)
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        try:
            from mlflow import MlflowClient
        except ImportError as err:
            raise MissingPackage() from err
        self.cfg, self.client_class = cfg, MlflowClient

    def start(self, info: RunInfo, previous: Optional[dict]) -> dict:
        from mlflow.entities import Param

        if previous is not None:
            # The store the run was opened in, even if the default would now point elsewhere.
            self.uri, self.run_id = previous["tracking_uri"], previous["run_id"]
            self.client = self.client_class(tracking_uri=self.uri)
            self.client.update_run(self.run_id, status="RUNNING")
            self._log_resume_changes(info)
            return previous
        self.uri = default_tracking_uri(self.cfg.tracking_uri, info.path)
        self.client = self.client_class(tracking_uri=self.uri)
        tags = {**info.tags, "collapse.run_dir": str(info.path)}
        if info.group:
            tags["collapse.sweep"] = info.group
        run = self.client.create_run(self._experiment_id(), run_name=info.name, tags=tags)
        self.run_id = run.info.run_id
        params = [Param(k, v) for k, v in info.params().items()]
        for start in range(0, len(params), 100):  # the REST API takes at most 100 params a request
            self.client.log_batch(self.run_id, params=params[start:start + 100])
        return {"tracking_uri": self.uri, "run_id": self.run_id}

    def _log_resume_changes(self, info: RunInfo) -> None:
        """Values a resume override changed, as tags `resumed.<key>`: MLflow refuses to change a logged param."""
        from mlflow.entities import RunTag

        logged = self.client.get_run(self.run_id).data
        changed = resume_changes(logged.params, logged.tags, info.params(), info.first_generation)
        if changed:
            self.client.log_batch(self.run_id, tags=[RunTag(key, value) for key, value in changed.items()])

    def log_environment(self, info: RunInfo) -> None:
        """The entry as an artifact per start or resume, its versions as tags (the latest process's)."""
        from mlflow.entities import RunTag

        self.client.log_text(self.run_id, to_json(info.environment),
                             f"environment/from_generation_{info.first_generation}.json")
        tags = [RunTag(f"collapse.env.{k}", str(v)[:500]) for k, v in info.environment.items() if v is not None]
        self.client.log_batch(self.run_id, tags=tags)

    def _experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.cfg.experiment)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(self.cfg.experiment)
        except Exception:  # another job of the sweep created it a moment ago
            found = self.client.get_experiment_by_name(self.cfg.experiment)
            if found is None:
                raise
            return found.experiment_id

    def log_generation(self, generation: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, generation) for k, v in metrics.items()])

    def log_summary(self, summary: dict, last_generation: int, plots: list[Path]) -> None:
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, last_generation) for k, v in summary_numbers(summary).items()]
        self.client.log_batch(self.run_id, metrics=metrics,
                              tags=[RunTag("collapse.early_warning", summary["early_warning"]["text"])])
        self.client.log_text(self.run_id, to_json(summary), "summary.json")
        for plot in plots:
            self.client.log_artifact(self.run_id, str(plot), "plots")

    def close(self, state: str) -> None:
        self.client.set_terminated(self.run_id, status=self.STATUS[state])


def resume_changes(params: dict[str, str], tags: dict[str, str], now: dict[str, str], first: int) -> dict[str, str]:
    """The tags `resumed.<key>: <value> (generation <first> on)` for the params a resume sets to a value that
    differs from the one in force: the logged param's, or the one an earlier resume's tag noted."""
    changed = {}
    for key, value in now.items():
        noted = tags.get(f"resumed.{key}")
        in_force = noted.rsplit(" (generation ", 1)[0] if noted is not None else params.get(key, value)
        if value != in_force:
            changed[f"resumed.{key}"] = f"{value} (generation {first} on)"
    return changed


def note_resume(info: RunInfo, previous: Optional[dict]) -> tuple[dict[str, str], dict]:
    """resume_changes for a tracker whose store is not read back (TensorBoard's event files, offline W&B):
    the `resumed.<key>` texts of this resume, and the tracker's trackers.json state that makes them:
    the params of the run's start, kept once, and every change noted since."""
    if previous is None:
        return {}, {"params": info.params()}
    noted = previous.get("resumed", {})
    changed = resume_changes(previous.get("params", {}), noted, info.params(), info.first_generation)
    return changed, {"resumed": {**noted, **changed}}


def default_tracking_uri(uri: Optional[str], run_path: Path) -> str:
    """null: a file store beside the run folder; a bare path: made absolute, so a resume finds it from anywhere."""
    if uri is None:
        return (run_path.parent / "mlruns").resolve().as_uri()
    if "://" not in uri and not uri.startswith(("file:", "databricks", "sqlite:")):
        return Path(uri).expanduser().resolve().as_uri()
    return uri


class WandbTracker:
    name, extra, package = "wandb", "wandb", "wandb"

    def __init__(self, cfg: WandbConfig):
        try:
            import wandb
        except ImportError as err:
            raise MissingPackage() from err
        self.cfg, self.wandb = cfg, wandb

    def start(self, info: RunInfo, previous: Optional[dict]) -> dict:
        # create_new: runs of one process (an in-process sweep) never share or finish each other's run;
        # console off: our output is not captured and replayed; silent: no banner lines.
        settings = self.wandb.Settings(silent=True, console="off", reinit="create_new", save_code=False,
                                       disable_git=True, x_disable_stats=True)
        self.run = self.wandb.init(
            dir=str(info.path), mode=self.cfg.mode.value, project=self.cfg.project, entity=self.cfg.entity,
            name=info.name, group=info.group, tags=[f"{k}={v}"[:64] for k, v in info.tags.items()],
            config={**info.config, "run_dir": str(info.path)}, notes=str(info.path),
            id=previous["id"] if previous else None, resume="allow" if previous else None, settings=settings)
        changed, state = note_resume(info, previous)
        if changed:  # beside the config's current value, the run's page says what a resume changed, and from when
            self.run.summary.update(changed)
        return {"id": self.run.id, **state}

    def log_environment(self, info: RunInfo) -> None:
        self.run.summary.update({f"environment/from_generation_{info.first_generation}": info.environment})

    def log_generation(self, generation: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=generation)

    def log_summary(self, summary: dict, last_generation: int, plots: list[Path]) -> None:
        self.run.summary.update({**summary_numbers(summary), "early_warning": summary["early_warning"]["text"]})
        if plots:
            self.run.log({f"plots/{p.stem}": self.wandb.Image(str(p)) for p in plots}, step=last_generation)

    def close(self, state: str) -> None:
        self.run.finish(exit_code=0 if state == "finished" else 1)


TRACKERS = {"tensorboard": TensorBoardTracker, "mlflow": MlflowTracker, "wandb": WandbTracker}


# ---------------------------------------------------------------------------
# The session: every call guarded, every failure one warning line, progress in trackers.json
# ---------------------------------------------------------------------------

@dataclass
class Session:
    run_dir: RunDir
    trackers: list = field(default_factory=list)
    state: dict = field(default_factory=dict)  # trackers.json: per tracker its ids and `logged_through`
    plots: bool = False

    def _guard(self, tracker, doing: str, call, *args) -> None:
        """Run one tracker call; on any failure warn once and drop the tracker: the run goes on."""
        try:
            call(*args)
        except Exception as err:  # whatever a tracker library raises, the run must not stop for it
            self.trackers.remove(tracker)
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            log.warning(f"collapse: warning: logger {tracker.name} failed while {doing} ({type(err).__name__}: "
                        f"{reason}); it is off for the rest of this run, whose folder keeps every result")

    def _start(self, tracker, info: RunInfo, previous: Optional[dict]) -> None:
        self._save(tracker, **tracker.start(info, previous))
        tracker.log_environment(info)

    def _save(self, tracker, **changes) -> None:
        self.state.setdefault(tracker.name, {}).update(changes)
        self.run_dir.write_json(STATE_FILE, self.state)

    def log_generation(self, metrics: dict) -> None:
        generation = int(metrics["generation"])
        numbers = {k: v for k, v in _numbers(metrics).items() if k != "generation"}  # the step says it
        for tracker in list(self.trackers):
            if self.state.get(tracker.name, {}).get("logged_through", -1) < generation:
                self._guard(tracker, f"logging generation {generation}", self._log_step, tracker, generation, numbers)

    def _log_step(self, tracker, generation: int, numbers: dict[str, float]) -> None:
        tracker.log_generation(generation, numbers)
        self._save(tracker, logged_through=generation)

    def finish(self, summary: dict) -> None:
        last = int(summary["generations"])
        plots = self._plots() if self.plots and self.trackers else []
        for tracker in list(self.trackers):
            self._guard(tracker, "logging the summary", tracker.log_summary, summary, last, plots)
        self._close("finished")

    def _plots(self) -> list[Path]:
        """`collapse compare`'s figures for this run, written to a temporary folder the trackers copy from."""
        try:
            from collapse_cli.report.export import write_plots
            from collapse_cli.report.runs import group_runs, load_runs
            from collapse_cli.report.stats import GroupStats, choose_metrics

            runs = load_runs([self.run_dir.path])
            groups, _ = group_runs(runs)
            self._plot_dir = tempfile.TemporaryDirectory(prefix="collapse-plots-")
            images = write_plots(Path(self._plot_dir.name), [GroupStats.of(groups, choose_metrics(None, runs))], "")
            return [Path(self._plot_dir.name) / image.file for image in images]
        except Exception as err:
            log.warning(f"collapse: warning: logger.plots: making the plots failed ({type(err).__name__}: {err}); "
                        f"the trackers get the summary without them")
            return []

    def _close(self, state: str) -> None:
        for tracker in list(self.trackers):
            self._guard(tracker, "closing its run", tracker.close, state)
        self.trackers.clear()
        if getattr(self, "_plot_dir", None) is not None:
            self._plot_dir.cleanup()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, kind, error, traceback) -> bool:
        if kind is not None:
            self._close("interrupted" if issubclass(kind, KeyboardInterrupt) else "failed")
        self._close("finished")  # no-op after finish(); closes the runs if the block ended early
        return False


def start(cfg: RunConfig, path: Path, first_generation: int) -> Session:
    """Open every chosen tracker (reopen it on resume) and log the finished generations it has not seen."""
    chosen = [name for name in TRACKERS if getattr(cfg.logger, name) is not None]
    run_dir = RunDir(path)
    session = Session(run_dir, plots=cfg.logger.plots)
    if not is_main():  # under nproc=N, rank 0 alone records and logs the run
        return session
    entry = environment.record(path, first_generation)
    if not chosen:
        return session
    try:
        session.state = run_dir.read_json(STATE_FILE) if (path / STATE_FILE).is_file() else {}
        info = run_info(cfg, path, first_generation)
        info.environment = entry
    except Exception as err:  # an edited trackers.json or Hydra record: no tracking, but the run goes on
        log.warning(f"collapse: warning: logger: cannot read this run's tracking records ({type(err).__name__}: "
                    f"{err}); no tracker logs this run, whose folder keeps every result")
        return session
    for name in chosen:
        tracker = _open(name, getattr(cfg.logger, name))
        if tracker is None:
            continue
        session.trackers.append(tracker)
        previous = session.state.get(name) if cfg.resume else None
        session._guard(tracker, "starting its run", session._start, tracker, info, previous)
    # A run killed between a generation's DONE marker and its logging: those steps are logged now.
    for metrics in read_metrics(path) if first_generation else []:
        session.log_generation(metrics)
    return session


def _open(name: str, cfg: Any):
    try:
        return TRACKERS[name](cfg)
    except MissingPackage:
        tracker = TRACKERS[name]
        log.warning(f"collapse: warning: logger={name} needs the {tracker.package} package: "
                    f"pip install \".[{tracker.extra}]\" in the collapse source folder (or pip install "
                    f"{tracker.package}); this run goes on without it")
        return None
