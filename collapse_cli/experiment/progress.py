"""What the user sees while a run works: the plan, progress bars with ETA, tables."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from collapse_cli.console import fmt, make_console

# The end-of-run table shows at most this many generations (evenly spread, first and last kept).
TABLE_ROWS = 25


class Feedback:
    def __init__(self, console: Console | None = None):
        self.console = console or make_console()

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Callable[[int, int], None]]:
        """A progress bar; the yielded callback takes (done, total)."""
        columns = (TextColumn("{task.description:<18}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
        # Bars only on a terminal: in a log file they are noise.
        with Progress(*columns, console=self.console, transient=True, disable=not self.console.is_terminal) as progress:
            task_id = progress.add_task(description, total=total)

            def update(done: int, new_total: int) -> None:
                progress.update(task_id, completed=done, total=new_total)

            yield update

    def show_plan(self, cfg, device, model: str, n_params: int, rows: list[dict], mix_words: str,
                  decoder: str = "") -> None:
        self.console.print(f"[bold]collapse run[/]: model {model} ({n_params / 1e6:.2f}M parameters) "
                           f"on {device.type}{' (bf16)' if device.type == 'cuda' else ''}, dataset {cfg.dataset.name}, "
                           f"regime {cfg.regime}, seed {cfg.seed}")
        self.console.print(f"{cfg.generations} recursive generations after generation 0; {mix_words}")
        if decoder:
            self.console.print(f"decoder: {decoder}")
        table = Table(title="plan: training set of each generation")
        columns = list(rows[0])
        for column in columns:
            table.add_column(column, justify="right")
        for row in _spread(rows):
            table.add_row(*(fmt(row[c], blank="—") for c in columns))
        self.console.print(table)

    def generation_line(self, metrics: dict, keys: tuple[str, ...]) -> str:
        """One log line per generation: `keys` (the family's table_keys) and the wall time."""
        parts = [f"gen {metrics['generation']}:"]
        for key in (*keys, "wall_time_s"):
            if key in metrics:
                parts.append(f"{key}={fmt(metrics[key], blank='—')}")
        return " ".join(parts)

    def show_summary(self, run_dir, summary: dict, keys: tuple[str, ...]) -> None:
        from collapse_cli.rundir import read_metrics

        rows = read_metrics(run_dir.path)
        table = Table(title=f"metrics by generation — {run_dir.path}")
        keys = [k for k in ("generation", *keys, "wall_time_s") if any(k in row for row in rows)]
        for key in keys:
            table.add_column(key, justify="right")
        for row in _spread(rows):
            table.add_row(*(fmt(row.get(k), blank="—") for k in keys))
        self.console.print(table)
        verdict = summary.get("early_warning", {}).get("text")
        if verdict:
            self.console.print(f"[bold]early warning[/]: {verdict}")


def _spread(rows: list[dict]) -> list[dict]:
    """At most TABLE_ROWS rows, evenly spread: a 2,000-generation run gets a readable table."""
    if len(rows) <= TABLE_ROWS:
        return rows
    picks = np.unique(np.linspace(0, len(rows) - 1, TABLE_ROWS).round().astype(int))
    return [rows[i] for i in picks]
