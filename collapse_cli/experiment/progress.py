"""What the user sees while a run works: the plan, progress bars with ETA, tables."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

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
from collapse_cli.report.tables import decimals, number_text

log = logging.getLogger("collapse")

# Off a terminal (a batch job's log), a stage reports at most this often instead of drawing a bar.
LOG_EVERY_S = 60.0


class Feedback:
    def __init__(self, console: Console | None = None, log_every_s: float = LOG_EVERY_S):
        self.console = console or make_console()
        self.log_every_s = log_every_s
        self.last_generation: int | None = None  # the run's last generation, from show_plan
        # (time, generation) of the first generation line: the run's ETA counts from there, as a stage's
        # does from its first item (generation 0 and a resume's first generation carry one-off costs).
        self.first_line: tuple[float, int] | None = None

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Callable[[int, int], None]]:
        """A progress bar on a terminal, occasional log lines elsewhere; the yielded callback takes (done, total)."""
        if self.console.quiet:  # the other ranks of an nproc run: rank 0 reports
            yield lambda done, new_total: None
        elif self.console.is_terminal:
            with self._bar(description, total) as update:
                yield update
        else:
            lines = StageLines(description, self.log_every_s)
            yield lines.update
            lines.close()

    @contextmanager
    def _bar(self, description: str, total: int) -> Iterator[Callable[[int, int], None]]:
        columns = (TextColumn("{task.description:<18}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
        with Progress(*columns, console=self.console, transient=True) as progress:
            task_id = progress.add_task(description, total=total)

            def update(done: int, new_total: int) -> None:
                progress.update(task_id, completed=done, total=new_total)

            yield update

    def show_plan(self, cfg, device, model: str, n_params: int, rows: list[dict], mix_words: str,
                  decoder: str = "", precision: str = "") -> None:
        """`precision`: the family's describe_precision() (the LM on CUDA: bf16); empty says nothing."""
        self.console.print(f"[bold]collapse run[/]: model {model} ({n_params / 1e6:.2f}M parameters) "
                           f"on {device.type}{f' ({precision})' if precision else ''}, dataset {cfg.dataset.name}, "
                           f"regime {cfg.regime}, seed {cfg.seed}")
        self.last_generation = cfg.generations
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
        return " ".join(parts) + self.run_eta(int(metrics["generation"]), time.monotonic())

    def run_eta(self, generation: int, now: float) -> str:
        """'; run eta 3m05s (gen 12 of 2,000)': the rest of the run at the rate since the first generation line."""
        if self.first_line is None:
            self.first_line = (now, generation)
        since, first = self.first_line
        last = self.last_generation
        if last is None or not first < generation < last or now <= since:
            return ""
        return f"; run eta {duration((last - generation) * (now - since) / (generation - first))} " \
               f"(gen {generation:,} of {last:,})"

    def show_summary(self, run_dir, summary: dict, keys: tuple[str, ...]) -> None:
        from collapse_cli.rundir import read_metrics

        rows = read_metrics(run_dir.path)
        table = Table(title=f"metrics by generation — {run_dir.path}")
        keys = [k for k in ("generation", *keys, "wall_time_s") if any(k in row for row in rows)]
        for key in keys:
            table.add_column(key, justify="right")
        # One number of decimals per float column, as `collapse show` prints them ("1.0000" beside "0.8600").
        places = {k: decimals([row[k] for row in rows if isinstance(row.get(k), float)]) for k in keys}
        for row in _spread(rows):
            table.add_row(*(number_text(row[k], places[k]) if isinstance(row.get(k), float)
                            else fmt(row.get(k), blank="—") for k in keys))
        self.console.print(table)
        verdict = summary.get("early_warning", {}).get("text")
        if verdict:
            self.console.print(f"[bold]early warning[/]: {verdict}")


class StageLines:
    """A stage's progress as log lines, for batch jobs where a bar is noise and a silent hour is worse:
    nothing for a stage shorter than `every_s`, else a line every `every_s` and one when it ends."""

    def __init__(self, description: str, every_s: float):
        self.description, self.every_s = description, every_s
        self.started = self.last_line = time.monotonic()
        self.lines = 0
        # (time, done) at the first report: the ETA's rate starts there, because the first item carries the
        # one-off costs (torch.compile made the first step 102 s of a 112 s stage on an H100).
        self.first: tuple[float, int] | None = None

    def update(self, done: int, total: int) -> None:
        now = time.monotonic()
        if self.first is None:
            self.first = (now, done)
        if now - self.last_line < self.every_s:
            return
        self.last_line, self.lines = now, self.lines + 1
        log.info(f"{self.description}: {done}/{total}, {duration(now - self.started)} elapsed"
                 f"{self._eta(now, done, total)}")

    def _eta(self, now: float, done: int, total: int) -> str:
        since, done_then = self.first
        if not done_then < done < total or now <= since:
            return ""
        return f", eta {duration((total - done) * (now - since) / (done - done_then))}"

    def close(self) -> None:
        if self.lines:
            log.info(f"{self.description}: done in {duration(time.monotonic() - self.started)}")


def duration(seconds: float) -> str:
    """4s, 3m05s, 2h07m: the precision a log reader needs."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _spread(rows: list[dict]) -> list[dict]:
    """Up to 30 rows; beyond, log-spaced ones as `collapse show` picks them: a 2,000-generation run
    gets a readable table whose early generations, where most changes, are all there."""
    from collapse_cli.report.stats import condensed

    shown = set(condensed(range(len(rows))))
    return [row for index, row in enumerate(rows) if index in shown]
