"""Run folders read back: discovery, loading, and grouping runs that differ only in seed.

Nothing is dropped silently: unfinished runs keep their state and their finished
generations; a file that is there but unreadable is an error naming it.
"""

from __future__ import annotations

import glob
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from collapse_cli.errors import CollapseError
from collapse_cli.liveness import live_state, unwritten_reason
from collapse_cli.report.facts import FamilyFacts, builtin_facts, run_facts
from collapse_cli.rundir import (
    METRICS,
    STATUS,
    SUMMARY,
    damaged,
    flatten,
    read_json_object,
    read_metrics,
    read_yaml,
    resume_overrides,
)

OVERRIDES = Path(".hydra") / "overrides.yaml"
CONFIG_GROUPS = ("model", "dataset", "train", "generate", "metrics", "curate", "logger")  # each a mapping
# Config keys that say how a run was started, not what it computed: never a reason to split a group.
NOT_EXPERIMENT_KEYS = {"seed", "resume", "dry_run", "device", "min_free_disk_mb", "threads"}


@dataclass
class Run:
    path: Path
    name: str  # unique among the runs compared: the path below their common ancestor
    overrides: Optional[list[str]]  # Hydra overrides minus seed and hydra.*; None: no overrides.yaml
    seed: Optional[int]
    status: dict
    summary: Optional[dict]
    rows: list[dict]  # metrics.jsonl, one dict per finished generation
    config: dict
    resumed: list[str] = field(default_factory=list)  # `collapse resume` overrides of experiment keys
    facts: Optional[FamilyFacts] = None  # what its metrics mean: its family.json (report/facts.py run_facts)

    def __post_init__(self):
        if self.facts is None:  # a Run made without its folder's family.json: its family's builtin facts
            self.facts = builtin_facts(self.family) or FamilyFacts(self.family)

    @property
    def state(self) -> str:
        return live_state(self.status)

    @property
    def finished(self) -> bool:
        """Finished, and its files say so: a summary, and the generations it summarises in metrics.jsonl."""
        return self.state == "finished" and self.summary is not None and bool(self.rows)

    def generations(self) -> list[int]:
        return [int(row.get("generation", index)) for index, row in enumerate(self.rows)]

    @property
    def family(self) -> str:
        return config_family(self.config)

    def short_state(self) -> str:
        if self.finished:
            return "finished"
        if self.state == "finished" and self.summary is not None:
            return f"damaged: {METRICS}: no generations in it"
        return {"unknown": "no status.json", "finished": "no summary.json"}.get(self.state, self.state)

    def status_text(self) -> str:
        if self.finished:
            return "finished"
        total = self.status.get("generations_total")
        progress = f"{len(self.rows)}/{total}" if total else str(len(self.rows))
        reason = self.own_resume_hint(self.status.get("reason") or unwritten_reason(self.status))
        if self.state == "stopped":
            reason += f"; `collapse resume {self.path}` continues it"
        return f"{self.short_state()} ({progress} generations done{': ' + reason if reason else ''})"


    def own_resume_hint(self, reason: Optional[str]) -> Optional[str]:
        """A reason's "`collapse resume PATH` continues it" names the folder it was written in; a copy of the
        run (docs/results, another machine's outputs) must not send the reader to resume that path."""
        def hint(match: re.Match) -> str:
            written = Path(match.group(1)).expanduser()
            if written.absolute() == self.path.absolute():
                return match.group(0)
            return f"written in {written}, of which this folder is a copy (resume it where it was made)"
        return re.sub(r"`collapse resume (\S+)` continues it", hint, reason) if reason else reason


def config_family(config: dict) -> str:
    """model.family of a run's config; the LM for folders from before families (or without a config)."""
    model = config.get("model")
    return str(model.get("family", "lm")) if isinstance(model, dict) else "lm"


@dataclass
class Group:
    label: str
    runs: list[Run] = field(default_factory=list)

    def status_text(self) -> str:
        states = Counter(run.short_state() for run in self.runs)
        return ", ".join(f"{count} {state}" for state, count in states.items())

    @property
    def family(self) -> str:  # runs of one group share their config, so their family
        return self.runs[0].family if self.runs else "lm"

    @property
    def facts(self) -> FamilyFacts:  # and their family's facts
        return self.runs[0].facts if self.runs else FamilyFacts(self.family)

    def final_generation(self) -> Optional[int]:
        generations = [g for run in self.runs for g in run.generations()]
        return max(generations) if generations else None



def natural_key(path: Path) -> list:
    """Sweep job 10 after job 9, not after job 1."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def is_run_folder(path: Path) -> bool:
    """Whether `path` holds any file a run writes (a folder in a file's place counts: it is read as damaged)."""
    try:
        return any((path / name).exists() for name in (STATUS, METRICS, OVERRIDES))
    except OSError as err:  # a folder this user may not search
        raise CollapseError(f"{path}: cannot look into it ({err.strerror}); give folders you may read") from None


def find_run_folders(root: Path) -> list[Path]:
    """Run folders at or below root; a run's own subfolders and hidden folders are not searched."""
    if root.is_file() and root.name in (STATUS, METRICS, SUMMARY):
        root = root.parent
    if is_run_folder(root):
        return [root]
    if not root.is_dir():
        return []
    try:
        children = sorted(root.iterdir(), key=natural_key)
    except OSError:  # unreadable: nothing we could compare in it anyway
        return []
    found: list[Path] = []
    for child in children:
        if child.is_dir() and not child.is_symlink() and not child.name.startswith("."):
            found.extend(find_run_folders(child))
    return found


def expand_argument(argument: str) -> list[Path]:
    """The argument itself if it exists, else its glob matches (quoted globs reach us unexpanded)."""
    path = Path(argument).expanduser()
    if path.exists():
        return [path]
    if any(char in argument for char in "*?["):
        return [Path(match) for match in sorted(glob.glob(os.path.expanduser(argument), recursive=True),
                                                  key=natural_key)]
    return []


def discover(arguments: Sequence[str]) -> list[Path]:
    """Every run folder the arguments name, each once; an argument naming none is an error."""
    folders: dict[Path, None] = {}
    for argument in arguments:
        matches = expand_argument(argument)
        if not matches:
            raise CollapseError(f"{argument}: no such file or folder, and no glob match; give run or sweep folders")
        found = [folder for match in matches for folder in find_run_folders(match)]
        if not found:
            raise CollapseError(f"{argument}: no run folders in it (none has status.json, metrics.jsonl or "
                                f".hydra/overrides.yaml); give folders made by `collapse run`")
        folders.update((folder.resolve(), None) for folder in found)
    return list(folders)


def checked_config(path: Path) -> dict:
    """The run's resolved config.yaml (else Hydra's copy): a mapping whose groups are mappings, or {} without one."""
    file = path / "config.yaml" if (path / "config.yaml").exists() else path / ".hydra" / "config.yaml"
    config = read_yaml(file)
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise damaged(file, "not a mapping of config keys")
    for group in CONFIG_GROUPS:
        if not isinstance(config.get(group) or {}, dict):
            raise damaged(file, f"`{group}` holds {config[group]!r}, not a mapping of keys")
    return config


def checked_rows(path: Path) -> list[dict]:
    """metrics.jsonl: one JSON object per line (read_metrics), each with an integer generation (if it names one)."""
    rows, last = read_metrics(path), -1
    for number, row in enumerate(rows, start=1):
        generation = row.get("generation", number - 1)
        if not isinstance(generation, int) or isinstance(generation, bool):
            raise damaged(path / METRICS, f"line {number} is not a metrics object with an integer generation")
        if generation <= last:  # one line per generation, in order (rundir.finish_generation)
            raise damaged(path / METRICS, f"line {number} repeats or goes back to generation {generation}")
        last = generation
    return rows


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


# Hydra's multirun writes each job's overrides with its grammar's escapes ('dataset.seed=${seed}' is
# recorded as 'dataset.seed=$\\{seed\\}'): labels show what the user typed.
HYDRA_ESCAPE = re.compile(r"\\([\\()\[\]{}:=, \t])")


def unescaped(override: str) -> str:
    return HYDRA_ESCAPE.sub(r"\1", override)


def interpolated_keys(overrides: Optional[Sequence[str]]) -> set[str]:
    """Keys an override sets to an interpolation ('dataset.seed=${seed}'): their resolved values differ
    between a group's runs by design, so they are no sign of changed defaults."""
    return {override_key(o) for o in overrides or [] if "${" in o.partition("=")[2]}


def is_label_override(override: str) -> bool:
    """Seeds are what a group averages over; hydra.* only says where and how to write."""
    key = override_key(override)
    return not (key == "seed" or key == "hydra" or key.startswith(("hydra.", "hydra/")))


def resumed_overrides(path: Path) -> list[str]:
    """The run's `collapse resume` overrides that change what it computes (the last one per key).

    A resume that changed train.lr, say, made the later generations another experiment: the run is
    grouped apart from runs that differ from it only in seed, and its label says why.
    """
    last = {override_key(o): o for o in resume_overrides(path)}
    return [o for key, o in last.items()
            if is_label_override(o) and key not in NOT_EXPERIMENT_KEYS and not key.startswith("logger")]


def load_run(path: Path, name: str) -> Run:
    rows = checked_rows(path)
    overrides = read_yaml(path / OVERRIDES)
    listed = overrides if isinstance(overrides, list) else []
    overrides = None if overrides is None else [unescaped(str(o)) for o in listed]
    config = checked_config(path)
    labelled = None if overrides is None else [o for o in overrides if is_label_override(o)]
    return Run(path=path, name=name, overrides=labelled, seed=run_seed(config, overrides or []),
               status=read_json_object(path / STATUS) or {"state": "unknown"}, summary=read_json_object(path / SUMMARY),
               rows=rows, config=config, resumed=resumed_overrides(path), facts=run_facts(path, config_family(config)))


def run_seed(config: dict, overrides: Sequence[str]) -> Optional[int]:
    """The resolved seed from config.yaml; else the seed override; None when neither says."""
    seed = config.get("seed")
    if seed is None:
        seed = next((o.split("=", 1)[1] for o in overrides if override_key(o) == "seed"), None)
    try:
        return None if seed is None else int(seed)
    except (TypeError, ValueError):
        return None


def run_names(paths: Sequence[Path]) -> list[str]:
    """Short unique names: the path below the common ancestor's parent ("sweep/3")."""
    if len(paths) == 1:
        return [paths[0].name]
    common = Path(os.path.commonpath([str(p) for p in paths]))
    return [str(p.relative_to(common.parent)) for p in paths]


def load_runs(folders: Sequence[Path]) -> list[Run]:
    return [load_run(folder, name) for folder, name in zip(folders, run_names(folders))]


def normal_override(override: str) -> str:
    """mix=0, mix=0.0 and +mix=0 are the same setting."""
    key, _, value = override.partition("=")
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        parsed = value
    if isinstance(parsed, (int, float)) and not isinstance(parsed, bool):
        value = repr(float(parsed))
    return f"{key.lstrip('+')}={value}"


def group_key(run: Run) -> tuple:
    if run.overrides is None:  # nothing to match it on: a group of its own
        return ("folder", str(run.path))
    return tuple(sorted(normal_override(o) for o in run.overrides)) + tuple(resumed_labels(run))


def resumed_labels(run: Run) -> list[str]:
    return [f"resumed:{normal_override(o)}" for o in sorted(run.resumed)]


def shared_overrides(runs_by_key: dict[tuple, list[Run]]) -> list[str]:
    """Overrides every group has (in the first run's words); labels leave them out."""
    keyed = [members[0] for key, members in runs_by_key.items() if key[:1] != ("folder",)]
    if len(runs_by_key) < 2 or not keyed:
        return []
    common = set.intersection(*(set(map(normal_override, run.overrides)) for run in keyed))
    return [o for o in keyed[0].overrides if normal_override(o) in common]


def group_label(run: Run, shared: Sequence[str]) -> str:
    if run.overrides is None:
        return f"{run.name} (no overrides.yaml)"
    shared_set = set(map(normal_override, shared))
    own = [o for o in run.overrides if normal_override(o) not in shared_set]
    return " ".join([*own, *resumed_labels(run)]) or "default"


def group_runs(runs: Sequence[Run]) -> tuple[list[Group], list[str]]:
    """Groups of runs that differ only in seed, in discovery order; also the overrides all share."""
    runs_by_key: dict[tuple, list[Run]] = {}
    for run in runs:
        runs_by_key.setdefault(group_key(run), []).append(run)
    shared = shared_overrides(runs_by_key)
    groups = [Group(group_label(members[0], shared), sorted(members, key=lambda r: (r.seed is None, r.seed or 0)))
              for members in runs_by_key.values()]
    return groups, shared


def config_mismatches(group: Group) -> list[str]:
    """Config keys (seed aside) on which runs of one group disagree: same overrides, other defaults."""
    configs = [flatten(run.config) for run in group.runs if run.config]
    keys = sorted({k for c in configs for k in c} - NOT_EXPERIMENT_KEYS - interpolated_keys(group.runs[0].overrides))
    return [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]
