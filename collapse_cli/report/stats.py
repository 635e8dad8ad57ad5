"""Statistics over the seeds of a group: mean, standard deviation and 95% t-interval per generation."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Optional

from collapse_cli.errors import CollapseError
from collapse_cli.report.runs import Group, Run

# Headline metrics of every family, those a run lacks skipped: the LM's, then the GMM's and VAE's (docs/metrics.md).
FAMILY_METRICS = ("nll_test", "component_std", "l2sq_to_gen0", "l2_to_gen0", "latent_spread", "latent_std_flat",
                  "class_share_max")
DEFAULT_METRICS = ("ppl_test", "tail_coverage", "seq_ppl_q50", "kl_truth", *FAMILY_METRICS)
# Two-sided 95% Student t quantiles, t_{0.975, df} for df = 1..30.
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)



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


# One group's statistics: metric -> generation -> Stat, generations in order.
StatsByMetric = dict[str, dict[int, Stat]]


def stats_by_metric(runs: Sequence[Run], metrics: Sequence[str]) -> StatsByMetric:
    """Per metric, the statistic over `runs` of each generation (in generation order)."""
    return {m: {s.generation: s for s in aggregate(runs, m)} for m in metrics}


@dataclass(frozen=True)
class GroupStats:
    """Every group's statistics, aggregated once: the tables, the plots and report.html all read these."""

    groups: Sequence[Group]
    metrics: Sequence[str]
    by_group: list[StatsByMetric]  # groups[i]'s at by_group[i]

    @classmethod
    def of(cls, groups: Sequence[Group], metrics: Sequence[str]) -> GroupStats:
        return cls(groups, metrics, [stats_by_metric(group.runs, metrics) for group in groups])

    def pairs(self) -> Iterable[tuple[Group, StatsByMetric]]:
        return zip(self.groups, self.by_group)


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
