"""`collapse compare` and `collapse show`: read finished (and unfinished) run folders back.

compare: find runs under the given paths, group them by their Hydra overrides
(seed aside), aggregate every metric per group and generation (mean, std, 95%
t-interval over seeds), print a table, and with --out write a tidy CSV, plots
and a self-contained HTML report. show: one run in words, by generation.

Nothing is dropped silently: unfinished runs are listed with their state and
their finished generations still count; metrics a run lacks stay blank.
"""

from __future__ import annotations

import argparse
import base64
import csv
import glob
import html
import json
import math
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import yaml

from collapse_cli.errors import CollapseError
from collapse_cli.experiment.rundir import (
    METRICS,
    STATUS,
    SUMMARY,
    RunDir,
    gen_name,
    read_metrics,
)

# Headline metrics of every family, those a run lacks skipped: the LM's, then the GMM's and VAE's (docs/metrics.md).
FAMILY_METRICS = ("nll_test", "component_std", "l2_to_gen0", "latent_spread", "class_share_max")
DEFAULT_METRICS = ("ppl_test", "tail_coverage", "seq_ppl_q50", "kl_truth", *FAMILY_METRICS)
SHOW_METRICS = ("ppl_test", "tail_coverage", "seq_ppl_q50", "seq_ppl_q99", "kl_truth", *FAMILY_METRICS,
                "train_loss_last")
OVERRIDES = Path(".hydra") / "overrides.yaml"
# Config keys that say how a run was started, not what it computed: never a reason to split a group.
NOT_EXPERIMENT_KEYS = {"seed", "resume", "dry_run", "device", "min_free_disk_mb"}
# Two-sided 95% Student t quantiles, t_{0.975, df} for df = 1..30.
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


# ---------------------------------------------------------------------------
# Runs and groups
# ---------------------------------------------------------------------------

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

    @property
    def state(self) -> str:
        return str(self.status.get("state", "unknown"))

    @property
    def finished(self) -> bool:
        return self.state == "finished" and self.summary is not None

    def generations(self) -> list[int]:
        return [int(row.get("generation", index)) for index, row in enumerate(self.rows)]

    def short_state(self) -> str:
        if self.finished:
            return "finished"
        return {"unknown": "no status.json", "finished": "no summary.json"}.get(self.state, self.state)

    def status_text(self) -> str:
        if self.finished:
            return "finished"
        total = self.status.get("generations_total")
        progress = f"{len(self.rows)}/{total}" if total else str(len(self.rows))
        reason = self.status.get("reason")
        return f"{self.short_state()} ({progress} generations done{': ' + reason if reason else ''})"


@dataclass
class Group:
    label: str
    runs: list[Run] = field(default_factory=list)

    def status_text(self) -> str:
        states = Counter(run.short_state() for run in self.runs)
        return ", ".join(f"{count} {state}" for state, count in states.items())

    def final_generation(self) -> Optional[int]:
        generations = [g for run in self.runs for g in run.generations()]
        return max(generations) if generations else None


# ---------------------------------------------------------------------------
# Discovery
# ---------------------------------------------------------------------------

def natural_key(path: Path) -> list:
    """Sweep job 10 after job 9, not after job 1."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def is_run_folder(path: Path) -> bool:
    return (path / STATUS).is_file() or (path / METRICS).is_file() or (path / OVERRIDES).is_file()


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


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------

def read_yaml(path: Path):
    if not path.is_file():
        return None
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise CollapseError(f"{path}: not valid YAML ({str(err).splitlines()[0]}); fix or remove that run") from err


def read_json_file(path: Path) -> Optional[dict]:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CollapseError(f"{path}: not valid JSON ({err}); fix or remove that run") from err


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def is_label_override(override: str) -> bool:
    """Seeds are what a group averages over; hydra.* only says where and how to write."""
    key = override_key(override)
    return not (key == "seed" or key == "hydra" or key.startswith(("hydra.", "hydra/")))


def load_run(path: Path, name: str) -> Run:
    try:
        rows = read_metrics(path)
    except ValueError as err:  # json.JSONDecodeError
        raise CollapseError(f"{path / METRICS}: not valid JSON lines ({err}); fix or remove that run") from err
    overrides = read_yaml(path / OVERRIDES)
    overrides = None if overrides is None else [str(o) for o in (overrides if isinstance(overrides, list) else [])]
    config = read_yaml(path / "config.yaml") or read_yaml(path / ".hydra" / "config.yaml")
    config = config if isinstance(config, dict) else {}
    labelled = None if overrides is None else [o for o in overrides if is_label_override(o)]
    return Run(path=path, name=name, overrides=labelled, seed=run_seed(config, overrides or []),
               status=RunDir(path).status(), summary=read_json_file(path / SUMMARY),
               rows=[row for row in rows if isinstance(row, dict)], config=config)


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


# ---------------------------------------------------------------------------
# Grouping
# ---------------------------------------------------------------------------

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
    return tuple(sorted(normal_override(o) for o in run.overrides))


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
    return " ".join(o for o in run.overrides if normal_override(o) not in shared_set) or "default"


def group_runs(runs: Sequence[Run]) -> tuple[list[Group], list[str]]:
    """Groups of runs that differ only in seed, in discovery order; also the overrides all share."""
    runs_by_key: dict[tuple, list[Run]] = {}
    for run in runs:
        runs_by_key.setdefault(group_key(run), []).append(run)
    shared = shared_overrides(runs_by_key)
    groups = [Group(group_label(members[0], shared), sorted(members, key=lambda r: (r.seed is None, r.seed or 0)))
              for members in runs_by_key.values()]
    return groups, shared


def flatten(config: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_mismatches(group: Group) -> list[str]:
    """Config keys (seed aside) on which runs of one group disagree: same overrides, other defaults."""
    configs = [flatten(run.config) for run in group.runs if run.config]
    keys = sorted({k for c in configs for k in c} - NOT_EXPERIMENT_KEYS)
    return [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]


# ---------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------

def t_critical(df: int) -> float:
    """t_{0.975, df}: the table up to 30, then a Cornish-Fisher expansion (error < 1e-3)."""
    if df < 1:
        return float("nan")
    if df <= len(T_975):
        return T_975[df - 1]
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


@dataclass(frozen=True)
class Stat:
    generation: int
    n: int
    mean: float
    std: float  # sample standard deviation (ddof=1); nan for one seed
    ci: float  # half-width of the 95% t-interval of the mean; nan for one seed

    @property
    def low(self) -> float:
        return self.mean - self.ci

    @property
    def high(self) -> float:
        return self.mean + self.ci


def number(value) -> Optional[float]:
    """A metric value as float; None for null, text and booleans."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def describe(generation: int, values: Sequence[float]) -> Stat:
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2 or not all(math.isfinite(v) for v in values):
        return Stat(generation, n, mean, float("nan"), float("nan"))
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    return Stat(generation, n, mean, std, t_critical(n - 1) * std / math.sqrt(n))


def values_by_generation(runs: Iterable[Run], metric: str) -> dict[int, list[float]]:
    values: dict[int, list[float]] = {}
    for run in runs:
        for generation, row in zip(run.generations(), run.rows):
            value = number(row.get(metric))
            if value is not None:
                values.setdefault(generation, []).append(value)
    return values


def aggregate(runs: Iterable[Run], metric: str) -> list[Stat]:
    """Mean, std and 95% CI over seeds for each generation that has the metric."""
    return [describe(g, v) for g, v in sorted(values_by_generation(runs, metric).items())]


def available_metrics(runs: Iterable[Run]) -> list[str]:
    seen: dict[str, None] = {}
    for run in runs:
        for row in run.rows:
            seen.update((k, None) for k, v in row.items() if k != "generation" and number(v) is not None)
    return list(seen)


def choose_metrics(option: Optional[str], runs: Sequence[Run], defaults: Sequence[str] = DEFAULT_METRICS) -> list[str]:
    """--metrics a,b,seq_ppl_q* (shell-style patterns allowed); by default the headline ones present."""
    from fnmatch import fnmatchcase

    available = available_metrics(runs)
    if not option:
        return [m for m in defaults if m in available] or available[:4]
    chosen: dict[str, None] = {}
    for item in (part.strip() for part in option.split(",") if part.strip()):
        matches = [m for m in available if fnmatchcase(m, item)]
        if not matches:
            raise CollapseError(f"--metrics: no run has {item!r}; available: {', '.join(available[:30])}"
                                + (" …" if len(available) > 30 else ""))
        chosen.update((m, None) for m in matches)
    return list(chosen)


# ---------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------

def fmt(value: Optional[float], digits: int = 4) -> str:
    """`digits` significant digits, in plain notation unless the number is very large or small."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and math.isfinite(value):
        value = float(f"{value:.{digits}g}")  # round first: 9.99999 is "10", not "10.000"
    if isinstance(value, int) or (math.isfinite(value) and value == int(value) and abs(value) < 1e6):
        return str(int(value))
    if not math.isfinite(value) or not 1e-3 <= abs(value) < 1e6:
        return f"{value:.{digits}g}"
    return f"{value:.{max(0, digits - 1 - math.floor(math.log10(abs(value))))}f}"


def change_text(value: float, base: Optional[float]) -> str:
    """Change from generation 0: a percentage, or the difference when generation 0 is zero."""
    if base is None or not math.isfinite(base) or not math.isfinite(value):
        return ""
    if base == 0:
        return f"(Δ {value - base:+.3g})"
    percent = 100 * (value / base - 1)
    return f"({percent:+.0f}%)" if abs(percent) >= 10 else f"({percent:+.1f}%)"


def stat_cell(stat: Optional[Stat], base: Optional[Stat]) -> str:
    """'124 ± 3.1 (+58%)'; without ± for one seed, without the change at generation 0."""
    if stat is None:
        return ""
    text = fmt(stat.mean) + (f" ± {fmt(stat.ci, 2)}" if math.isfinite(stat.ci) else "")
    if base is not None and base.generation != stat.generation:
        text += " " + change_text(stat.mean, base.mean)
    return text.strip()


@dataclass
class TextTable:
    """A table as strings, rendered both to the terminal (rich) and into the HTML report."""

    title: str
    headers: list[str]
    rows: list[list[str]]

    def to_rich(self):
        from rich.table import Table

        table = Table(title=self.title, title_justify="left")
        for index, header in enumerate(self.headers):
            table.add_column(header, justify="left" if index == 0 else "right", overflow="fold")
        for row in self.rows:
            table.add_row(*row)
        return table

    def to_html(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.headers)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in self.rows)
        return f"<h3>{html.escape(self.title)}</h3><table><tr>{head}</tr>{body}</table>"


def stats_by_metric(group: Group, metrics: Sequence[str]) -> dict[str, dict[int, Stat]]:
    return {m: {s.generation: s for s in aggregate(group.runs, m)} for m in metrics}


def final_table(groups: Sequence[Group], metrics: Sequence[str]) -> TextTable:
    """Each group at its last generation: mean ± 95% CI over seeds, and the change from generation 0."""
    rows = []
    for group in groups:
        stats, final = stats_by_metric(group, metrics), group.final_generation()
        reached = sum(1 for run in group.runs if final in run.generations())
        seeds = str(reached) if reached == len(group.runs) else f"{reached} of {len(group.runs)}"
        rows.append([group.label, seeds, group.status_text(), fmt(final),
                     *(stat_cell(stats[m].get(final), stats[m].get(0)) for m in metrics)])
    return TextTable("final generation: mean ± 95% CI over seeds (change from generation 0)",
                     ["group", "seeds", "status", "generation", *metrics], rows)


def generation_tables(groups: Sequence[Group], metrics: Sequence[str]) -> list[TextTable]:
    """One table per metric: a row per generation, a column per group."""
    tables = []
    for metric in metrics:
        stats = [{s.generation: s for s in aggregate(group.runs, metric)} for group in groups]
        generations = sorted({g for by_gen in stats for g in by_gen})
        rows = [[str(g), *(stat_cell(by_gen.get(g), by_gen.get(0)) for by_gen in stats)] for g in generations]
        headers = ["generation", *(f"{group.label} (n={len(group.runs)})" for group in groups)]
        tables.append(TextTable(f"{metric} by generation: mean ± 95% CI (change from generation 0)", headers, rows))
    return tables


def verdict_text(run: Run) -> str:
    warning = (run.summary or {}).get("early_warning") or {}
    if warning.get("text"):
        return str(warning["text"])
    return "no verdict: the run has not finished" if not run.finished else "no verdict in summary.json"


def verdict_table(groups: Sequence[Group]) -> TextTable:
    rows = []
    for group in groups:
        for run in group.runs:
            warning = (run.summary or {}).get("early_warning") or {}
            # In a verdict, a missing generation means the metric never departed.
            never = "never" if warning else ""
            rows.append([group.label, fmt(run.seed), fmt(warning.get("first_tail_gen")) or never,
                         fmt(warning.get("first_ppl_gen")) or never, verdict_text(run)])
    return TextTable("early warning: first generation departing from generation 0 beyond noise",
                     ["group", "seed", "tail coverage", "test perplexity", "verdict"], rows)


def runs_table(groups: Sequence[Group]) -> TextTable:
    rows = [[group.label, run.name, fmt(run.seed), run.status_text()] for group in groups for run in group.runs]
    return TextTable("groups and their runs", ["group", "run", "seed", "status"], rows)


def warnings(groups: Sequence[Group]) -> list[str]:
    """Unfinished runs (their finished generations still count) and groups whose configs disagree."""
    lines = [f"unfinished: {run.path} — {run.status_text()}; "
             + (f"its {len(run.rows)} finished generation(s) are included" if run.rows else "nothing to include yet")
             for group in groups for run in group.runs if not run.finished]
    for group in groups:
        keys = config_mismatches(group)
        if keys:
            lines.append(f"group {group.label!r}: same overrides but config.yaml differs in {', '.join(keys[:6])} "
                         "(defaults changed between runs?); its seeds may not be comparable")
    return lines


# ---------------------------------------------------------------------------
# Files: CSV, plots, report
# ---------------------------------------------------------------------------

def write_metrics_csv(path: Path, groups: Sequence[Group]) -> None:
    """Tidy: one row per run x generation x metric, values exactly as in metrics.jsonl (null: blank)."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["run", "group", "seed", "generation", "metric", "value"])
        for group in groups:
            for run in group.runs:
                for generation, row in zip(run.generations(), run.rows):
                    for metric, value in row.items():
                        if metric != "generation" and (value is None or number(value) is not None):
                            # repr(float) round-trips exactly; ints stay ints.
                            writer.writerow([run.name, group.label, fmt(run.seed), generation, metric,
                                             "" if value is None else value])


def write_runs_csv(path: Path, groups: Sequence[Group]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["run", "group", "seed", "state", "generations_done", "generations_total", "overrides",
                         "path", "verdict"])
        for group in groups:
            for run in group.runs:
                writer.writerow([run.name, group.label, fmt(run.seed), run.state, len(run.rows),
                                 run.status.get("generations_total", ""), " ".join(run.overrides or []),
                                 str(run.path), verdict_text(run)])


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text.replace("=", "")).strip("_")[:60] or "group"


def metric_series(groups: Sequence[Group], metric: str):
    from collapse_cli.report.plots import Series

    series = []
    for group in groups:
        stats = aggregate(group.runs, metric)
        if stats:
            series.append(Series(group.label, [s.generation for s in stats], [s.mean for s in stats],
                                 [s.low for s in stats], [s.high for s in stats], len(group.runs)))
    return series


def seq_ppl_by_generation(group: Group) -> dict[int, np.ndarray]:
    """Each finished generation's per-sequence perplexities, pooled over the group's seeds."""
    pooled: dict[int, list[np.ndarray]] = {}
    for run in group.runs:
        for generation in run.generations():
            file = run.path / gen_name(generation) / "seq_ppl.npy"
            if file.is_file():
                pooled.setdefault(generation, []).append(np.load(file))
    return {g: np.concatenate(arrays) for g, arrays in sorted(pooled.items())}


def real_seq_ppl(group: Group) -> Optional[np.ndarray]:
    """The real test blocks' perplexities under each run's generation-0 model, pooled over seeds."""
    arrays = [np.load(file) for file in (run.path / "reference_test_seq_ppl.npy" for run in group.runs) if file.is_file()]
    return np.concatenate(arrays) if arrays else None


@dataclass
class Image:
    kind: str  # "metric" | "seq_ppl_hist"
    title: str
    file: str
    png: bytes


def write_plots(out: Path, groups: Sequence[Group], metrics: Sequence[str], note: str) -> list[Image]:
    from collapse_cli.report import plots

    images = []
    for metric in metrics:
        series = metric_series(groups, metric)
        if series:
            file = f"metric_{slug(metric)}.png"
            png = plots.write_png(plots.metric_figure(metric, series, note), out / file, "metric", metric)
            images.append(Image("metric", plots.metric_text(metric)[0], file, png))
    for index, group in enumerate(groups, start=1):
        figure = plots.histogram_figure(group.label, seq_ppl_by_generation(group), len(group.runs), real_seq_ppl(group))
        if figure is not None:
            file = f"seq_ppl_hist_{index}_{slug(group.label)}.png"
            images.append(Image("seq_ppl_hist", f"per-sequence perplexity — {group.label}", file,
                                plots.write_png(figure, out / file, "seq_ppl_hist", group.label)))
    return images


REPORT_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}.warn{color:#a35200}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}code{background:#f3f3f3;padding:0 .2em}"""


def report_html(title: str, intro: Sequence[str], tables: Sequence[TextTable], notes: Sequence[str],
                images: Sequence[Image]) -> str:
    """One self-contained page: the PNGs are embedded as base64 data URLs."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{REPORT_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    parts += [f"<p>{html.escape(line)}</p>" for line in filter(None, intro)]
    parts.append(f"<p>made {time.strftime('%Y-%m-%d %H:%M:%S')}; the numbers behind every table and plot "
                 "are in metrics.csv next to this file</p>")
    if notes:
        parts.append("<h3>warnings</h3><ul>" + "".join(f"<li class='warn'>{html.escape(n)}</li>" for n in notes)
                     + "</ul>")
    parts += [table.to_html() for table in tables]
    for kind, heading in IMAGE_SECTIONS:
        section = [image for image in images if image.kind == kind]
        parts += [f"<h2>{html.escape(heading)}</h2>"] if section else []
        parts += [image_html(image) for image in section]
    parts.append("</body></html>")
    return "\n".join(parts)


IMAGE_SECTIONS = (("metric", "metrics by generation"),
                  ("seq_ppl_hist", "per-sequence perplexity of synthetic data under the generation-0 model "
                                   "(Shumailov et al. 2024, Fig. 1 style)"))


def image_html(image: Image) -> str:
    data = base64.b64encode(image.png).decode("ascii")
    return (f"<figure><img alt='{html.escape(image.title)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{html.escape(image.title)} ({html.escape(image.file)})</figcaption></figure>")


def write_outputs(out: Path, title: str, intro: Sequence[str], tables: Sequence[TextTable], notes: Sequence[str],
                  groups: Sequence[Group], metrics: Sequence[str], note: str) -> list[Path]:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CollapseError(f"--out {out}: cannot create the folder ({err.strerror}); choose a writable path") from err
    write_metrics_csv(out / "metrics.csv", groups)
    write_runs_csv(out / "runs.csv", groups)
    images = write_plots(out, groups, metrics, note)
    (out / "report.html").write_text(report_html(title, intro, tables, notes, images), encoding="utf-8")
    return [out / "metrics.csv", out / "runs.csv", *(out / i.file for i in images), out / "report.html"]


# ---------------------------------------------------------------------------
# collapse compare
# ---------------------------------------------------------------------------

def make_console():
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 160)  # logs and pipes: keep whole column names
    return console


class Parser(argparse.ArgumentParser):
    """argparse that reports bad usage as the CLI's one-line error (exit 2), not usage + message."""

    def error(self, message: str):
        raise CollapseError(f"{self.prog}: {message}; see `{self.prog} --help`")


def compare_parser() -> Parser:
    parser = Parser(prog="collapse compare", description=(
        "Compare run folders and sweeps: runs that differ only in seed form a group; every metric is "
        "averaged over seeds per generation with a 95% t-interval."))
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="run folders, sweep folders or globs ('outputs/multirun/*')")
    parser.add_argument("--metrics", help="comma-separated metrics.jsonl keys or patterns, e.g. ppl_test,seq_ppl_q*")
    parser.add_argument("--by-generation", action="store_true", help="a table per metric with every generation")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="write metrics.csv, runs.csv, PNG plots and report.html here")
    return parser


def main(args: list[str]) -> int:
    options = compare_parser().parse_args(args)
    runs = load_runs(discover(options.paths))
    groups, shared = group_runs(runs)
    metrics = choose_metrics(options.metrics, runs)
    shared_line = f"every run also has: {' '.join(shared)}" if shared else ""
    intro = [f"{len(runs)} run(s) in {len(groups)} group(s) from {' '.join(options.paths)}", shared_line]
    final, verdicts = final_table(groups, metrics), verdict_table(groups)
    by_generation = generation_tables(groups, metrics)
    notes = warnings(groups)
    console = make_console()
    print_all(console, intro, [*(by_generation if options.by_generation else [final]), verdicts], notes)
    if options.out:
        tables = [runs_table(groups), final, *by_generation, verdicts]
        written = write_outputs(options.out, "collapse compare", intro, tables, notes, groups, metrics, shared_line)
        console.print(f"wrote {len(written)} files to {options.out} (open {options.out / 'report.html'})")
    return 0


def print_all(console, intro: Sequence[str], tables: Sequence[TextTable], notes: Sequence[str]) -> None:
    for line in filter(None, intro):
        console.print(line, highlight=False)
    for table in tables:
        console.print(table.to_rich())
    for note in notes:
        console.print(f"[yellow]warning[/]: {note}", highlight=False)


# ---------------------------------------------------------------------------
# collapse show
# ---------------------------------------------------------------------------

MIX_WORDS = {0.0: "fully synthetic after generation 0", 1.0: "real data only (control)"}
REGIME_WORDS = {"replace": "each generation trains on the previous generation's output",
                "accumulate": "every synthetic corpus so far is kept and the training set grows",
                "accumulate_subsample": "the accumulated pool, subsampled to the original size",
                "fresh": "the real share is fresh real data no earlier generation saw"}


def model_words(model: dict) -> str:
    if model.get("name") == "tiny":
        return (f"tiny OPT-architecture decoder trained from scratch: hidden {model.get('hidden_size')}, "
                f"{model.get('num_layers')} layer(s), {model.get('num_heads')} head(s), ffn {model.get('ffn_dim')}")
    return f"{model.get('name')} (pretrained{', from ' + str(model['path']) if model.get('path') else ''})"


def dataset_words(data: dict) -> str:
    name = data.get("name")
    if name == "builtin":
        return (f"builtin Zipf-Markov language of {data.get('vocab_words')} words (seed {data.get('seed')}): "
                f"{data.get('train_tokens')} train / {data.get('test_tokens')} test tokens")
    files = ", ".join(f"{k}={data[k]}" for k in ("train", "valid", "test") if data.get(k))
    return f"{name}" + (f" from {files}" if files else f" ({data.get('hf_path')})" if data.get("hf_path") else "")


def mix_words(mix) -> str:
    value = number(mix)
    if value is None:
        return "?"
    return f"{value:g}: " + MIX_WORDS.get(value, f"{value:.0%} real data in every later generation's training set")


def decoding_words(gen: dict) -> str:
    if gen.get("num_beams", 1) > 1:
        how = f"beam search, {gen['num_beams']} beams"
    elif gen.get("do_sample"):
        how = f"sampling at temperature {gen.get('temperature')}"
        how += f", top-k {gen['top_k']}" if gen.get("top_k") else ""
        how += f", top-p {gen['top_p']}" if gen.get("top_p", 1.0) < 1.0 else ""
    else:
        how = "greedy"
    if gen.get("repetition_penalty", 1.0) != 1.0:
        how += f", repetition penalty {gen['repetition_penalty']}"
    return (f"{gen.get('preset')}: {how}; prompts of {gen.get('prompt_tokens')} {gen.get('prompt')} tokens, "
            f"{gen.get('new_tokens')} new tokens")


def config_words(config: dict) -> list[tuple[str, str]]:
    if not config:
        return [("config", "no config.yaml in the run folder")]
    train, generations = config.get("train") or {}, config.get("generations")
    model = config.get("model") or {}
    if model.get("family", "lm") != "lm":  # decoding and token blocks are the LM's; other families list their keys
        def keys(node: dict) -> str:
            return ", ".join(f"{k} {v}" for k, v in node.items() if k not in ("family", "name"))
        return [("model", f"{model.get('family')}: {keys(model)}"),
                ("dataset", f"{(config.get('dataset') or {}).get('name')}: {keys(config.get('dataset') or {})}"),
                ("mix", mix_words(config.get("mix"))),
                ("regime", f"{config.get('regime')}: {REGIME_WORDS.get(config.get('regime'), '')}".rstrip(": ")),
                ("generations", f"{generations} after generation 0"), ("seed", str(config.get("seed")))]
    return [("model", model_words(model)),
            ("dataset", dataset_words(config.get("dataset") or {})),
            ("mix", mix_words(config.get("mix"))),
            ("regime", f"{config.get('regime')}: {REGIME_WORDS.get(config.get('regime'), '')}".rstrip(": ")),
            ("generations", f"{generations} after generation 0"),
            ("seed", str(config.get("seed"))),
            ("decoding", decoding_words(config.get("generate") or {})),
            ("training", f"{train.get('epochs')} epoch(s), lr {train.get('lr')}, batch {train.get('batch_size')}, "
                         f"blocks of {train.get('block_size')} tokens, init {train.get('init')}"),
            ("metrics", str((config.get("metrics") or {}).get("level")))]


def run_table(run: Run, metrics: Sequence[str]) -> TextTable:
    stats = {m: {s.generation: s for s in aggregate([run], m)} for m in metrics}
    rows = [[str(g), *(stat_cell(stats[m].get(g), stats[m].get(0)) for m in metrics)] for g in run.generations()]
    return TextTable("metrics by generation (change from generation 0)", ["generation", *metrics], rows)


def show_parser() -> Parser:
    parser = Parser(prog="collapse show", description="One run: config in words, status, "
                                     "metrics by generation, early-warning verdict.")
    parser.add_argument("run", metavar="RUN_DIR", help="a run folder made by `collapse run`")
    parser.add_argument("--metrics", help="comma-separated metrics.jsonl keys or patterns")
    parser.add_argument("--out", type=Path, metavar="DIR", help="also write metrics.csv, plots and report.html here")
    return parser


def single_run_folder(argument: str) -> Path:
    folders = discover([argument])
    if len(folders) > 1:
        raise CollapseError(f"{argument}: holds {len(folders)} runs; `collapse show` takes one (e.g. {folders[0]}), "
                            f"`collapse compare {argument}` takes them all")
    return folders[0]


def show_main(args: list[str]) -> int:
    options = show_parser().parse_args(args)
    run = load_runs([single_run_folder(options.run)])[0]
    metrics = choose_metrics(options.metrics, [run], SHOW_METRICS) if run.rows else []
    words = TextTable("configuration", ["", ""], [list(pair) for pair in config_words(run.config)])
    intro = [f"run {run.path}", f"status: {run.status_text()}", f"early warning: {verdict_text(run)}"]
    tables = [words, run_table(run, metrics)]
    console = make_console()
    console.print(f"[bold]{run.path}[/]", highlight=False)
    for key, text in config_words(run.config):
        console.print(f"  [bold]{key:<12}[/]{text}", highlight=False)
    console.print(f"  [bold]{'status':<12}[/]{run.status_text()}", highlight=False)
    console.print(tables[1].to_rich())
    console.print(f"[bold]early warning[/]: {verdict_text(run)}", highlight=False)
    if options.out:
        group = Group(" ".join(run.overrides or []) or "default", [run])
        written = write_outputs(options.out, f"collapse show {run.name}", intro, tables, [], [group], metrics, "")
        console.print(f"wrote {len(written)} files to {options.out}")
    return 0
