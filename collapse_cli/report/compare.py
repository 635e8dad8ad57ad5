"""`collapse compare` and `collapse show`: the command lines over report/ (runs, stats, tables, export).

compare: find runs under the given paths, group them by their Hydra overrides
(seed aside), aggregate every metric per group and generation (mean, std, 95%
t-interval over seeds), print a table, and with --out write a tidy CSV, plots
and a self-contained HTML report. show: one run in words, by generation.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from collapse_cli import environment
from collapse_cli.console import make_console
from collapse_cli.errors import CollapseError
from collapse_cli.report.export import write_outputs
from collapse_cli.report.runs import Group, discover, group_runs, load_runs
from collapse_cli.report.stats import GroupStats, by_family, choose_metrics, report_defaults
from collapse_cli.report.tables import (
    TextTable,
    config_words,
    final_table,
    generation_tables,
    paired_table,
    run_table,
    runs_table,
    verdict_table,
    verdict_text,
    warnings,
)


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
    shared_line = f"every run also has: {' '.join(shared)}" if shared else ""
    intro = [f"{len(runs)} run(s) in {len(groups)} group(s) from {' '.join(options.paths)}", shared_line]
    families = by_family(groups)
    if len(families) > 1:
        label_by_family(families)
    # Each family apart: its own headline keys, tables and plots (an LM's 5 generations and a GMM's 2,000
    # on one axis would hide the LM, and tail_coverage means another thing in each family).
    aggregated = [GroupStats.of(members, choose_metrics(options.metrics, [r for g in members for r in g.runs]),
                                label_family=len(families) > 1) for members in families.values()]
    finals = [table for stats in aggregated for table in (final_table(stats), paired_table(stats)) if table]
    by_generation = [table for stats in aggregated for table in generation_tables(stats)]
    verdicts = verdict_table(groups)
    notes = warnings(groups)
    console = make_console()
    print_all(console, intro, [*(by_generation if options.by_generation else finals), verdicts], notes)
    if options.out:
        tables = [runs_table(groups), *finals, *by_generation, verdicts]
        written = write_outputs(options.out, "collapse compare", intro, tables, notes, aggregated, shared_line)
        console.print(f"wrote {len(written)} files to {options.out} (open {options.out / 'report.html'})")
    return 0


def label_by_family(families: dict[str, list[Group]]) -> None:
    """Labels of runs of several families: the family, then the overrides that tell its groups apart
    ("gmm: mix=0"), not the ones every group of the family shares (model=gmm dataset=gaussian)."""
    for family, members in families.items():
        words = [group.label.split(" ") for group in members]
        common = set.intersection(*map(set, words)) if len(members) > 1 else set()
        for group, own in zip(members, words):
            group.label = f"{family}: {' '.join(w for w in own if w not in common) or 'default'}"


def print_all(console, intro: Sequence[str], tables: Sequence[TextTable], notes: Sequence[str]) -> None:
    for line in filter(None, intro):
        console.print(line, highlight=False)
    for table in tables:
        console.print(table.to_rich())
    for note in notes:
        console.print(f"[yellow]warning[/]: {note}", highlight=False)


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
    defaults = (*report_defaults([run]), *run.facts.table_keys)  # the family's report keys, then its log line's
    metrics = choose_metrics(options.metrics, [run], defaults) if run.rows else []
    described = config_words(run.config)
    if run.resumed:  # the keys a `collapse resume` changed: later generations ran with these
        described.append(("resumed", "with " + " ".join(run.resumed)))
    described += environment_words(run.path)
    words = TextTable("configuration", ["", ""], [list(pair) for pair in described])
    intro = [f"run {run.path}", f"status: {run.status_text()}", f"early warning: {verdict_text(run)}"]
    # The run as a group of one: its table and, with --out, its plots read the same statistics.
    aggregated = GroupStats.of([Group(" ".join(run.overrides or []) or "default", [run])], metrics)
    tables = [words, run_table(run, aggregated.by_group[0])]
    console = make_console()
    console.print(f"[bold]{run.path}[/]", highlight=False)
    width = max(12, *(len(key) + 1 for key, _ in described))
    for key, text in [*described, ("status", run.status_text())]:
        console.print(f"  [bold]{key:<{width}}[/]{text}", highlight=False)
    console.print(tables[1].to_rich())
    console.print(f"[bold]early warning[/]: {verdict_text(run)}", highlight=False)
    if options.out:
        written = write_outputs(options.out, f"collapse show {run.name}", intro, tables, [], [aggregated], "")
        console.print(f"wrote {len(written)} files to {options.out}")
    return 0


def environment_words(path: Path) -> list[tuple[str, str]]:
    """environment.json in words: one line per process that computed generations (start, resumes)."""
    entries = environment.read(path)
    if entries is None:
        return [("environment", f"unknown: {environment.FILE} cannot be read (damaged)")]
    if not entries:
        return [("environment", "not recorded (a run from before environment.json)")]
    if len(entries) == 1:
        return [("environment", environment.words(entries[0]))]
    return [(f"env gen {e.get('first_generation')}+", environment.words(e)) for e in entries]
