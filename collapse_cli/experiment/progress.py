"""What the user sees while a run works: the plan, progress bars with ETA, tables."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

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

# The columns of the end-of-run table, in order; missing keys are skipped.
TABLE_KEYS = ("generation", "ppl_test", "tail_coverage", "seq_ppl_q50", "seq_ppl_q99", "kl_truth",
              "distinct2_tok", "train_loss_last", "wall_time_s")


def fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class Feedback:
    def __init__(self, console: Console | None = None):
        self.console = console or Console()
        if not self.console.is_terminal:
            # Logs and CI: wide enough that tables keep their full column names.
            self.console.width = max(self.console.width, 160)

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

    def show_plan(self, cfg, device, n_params: int, rows: list[dict], mix_words: str, decoder: str = "") -> None:
        model = cfg.model.path or cfg.model.name
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
        for row in rows:
            table.add_row(*(fmt(row[c]) for c in columns))
        self.console.print(table)

    def generation_line(self, metrics: dict) -> str:
        parts = [f"gen {metrics['generation']}:"]
        for key in TABLE_KEYS[1:]:
            if key in metrics:
                parts.append(f"{key}={fmt(metrics[key])}")
        return " ".join(parts)

    def show_summary(self, run_dir, summary: dict) -> None:
        from collapse_cli.experiment.rundir import read_metrics

        rows = read_metrics(run_dir.path)
        table = Table(title=f"metrics by generation — {run_dir.path}")
        keys = [k for k in TABLE_KEYS if any(k in row for row in rows)]
        for key in keys:
            table.add_column(key, justify="right")
        for row in rows:
            table.add_row(*(fmt(row.get(k)) for k in keys))
        self.console.print(table)
        verdict = summary.get("early_warning", {}).get("text")
        if verdict:
            self.console.print(f"[bold]early warning[/]: {verdict}")
