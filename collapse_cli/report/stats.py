"""Statistics over the seeds of a group: mean, standard deviation and 95% t-interval per generation."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Optional

from collapse_cli.errors import CollapseError
from collapse_cli.report.facts import FamilyFacts, ratio_parts
from collapse_cli.report.runs import Group, Run

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


def row_value(row: dict, metric: str) -> Optional[float]:
    """A metric of one generation; for "<measured>/<theory>", the run's measured value over its own closed
    form (each seed's theory is its expectation given that seed's data, so the ratio's mean is 1 on theory)."""
    pair = ratio_parts(metric)
    if pair is None:
        return number(row.get(metric))
    measured, theory = (number(row.get(key)) for key in pair)
    return None if measured is None or not theory else measured / theory


def values_by_generation(runs: Iterable[Run], metric: str) -> dict[int, list[float]]:
    values: dict[int, list[float]] = {}
    for run in runs:
        for generation, row in zip(run.generations(), run.rows):
            value = row_value(row, metric)
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
    label_family: bool = False  # one of several families compared: titles and files name it

    @classmethod
    def of(cls, groups: Sequence[Group], metrics: Sequence[str], label_family: bool = False) -> GroupStats:
        """Statistics of `metrics`, and of the closed forms of those the facts pair with one (plots draw them)."""
        theory = [groups[0].facts.theory[m] for m in metrics if groups and m in groups[0].facts.theory]
        computed = list(dict.fromkeys([*metrics, *theory]))
        return cls(groups, metrics, [stats_by_metric(group.runs, computed) for group in groups], label_family)

    @property
    def family(self) -> str:
        """The groups' model family (compare aggregates each family apart)."""
        return self.groups[0].family if self.groups else "lm"

    @property
    def facts(self) -> FamilyFacts:
        """What the groups' run folders say their metrics mean (family.json)."""
        return self.groups[0].facts if self.groups else FamilyFacts(self.family)

    def theory(self, metric: str) -> Optional[str]:
        """The closed-form key paired with `metric`, where the runs have it."""
        key = self.facts.theory.get(metric)
        return key if key and any(stats.get(key) for stats in self.by_group) else None

    def pairs(self) -> Iterable[tuple[Group, StatsByMetric]]:
        return zip(self.groups, self.by_group)


def available_metrics(runs: Sequence[Run]) -> list[str]:
    """Numeric keys of the runs' rows, then "<measured>/<theory>" for each theory pair of their facts."""
    seen: dict[str, None] = {}
    for run in runs:
        for row in run.rows:
            seen.update((k, None) for k, v in row.items() if k != "generation" and number(v) is not None)
    ratios = [key for facts in facts_of(runs) for key in facts.ratio_keys(list(seen))]
    return list(dict.fromkeys([*seen, *ratios]))


def report_defaults(runs: Sequence[Run]) -> list[str]:
    """The keys show and compare pick without --metrics: each family's report keys (its facts), then the
    measured/closed-form ratios of its theory pairs."""
    return [key for facts in facts_of(runs) for key in (*facts.compare_keys, *facts.ratios)]


def facts_of(runs: Iterable[Run]) -> list[FamilyFacts]:
    """Each family's facts once, in order of first appearance (the first run's, for runs of one family)."""
    by_family: dict[str, FamilyFacts] = {}
    for run in runs:
        by_family.setdefault(run.family, run.facts)
    return list(by_family.values())


def choose_metrics(option: Optional[str], runs: Sequence[Run], defaults: Sequence[str] = ()) -> list[str]:
    """--metrics a,b,seq_ppl_q* (shell-style patterns allowed); by default the headline ones present
    (`defaults`, else those the runs' facts name)."""
    from fnmatch import fnmatchcase

    available = available_metrics(runs)
    if not option:
        defaults = defaults or report_defaults(runs)
        return list(dict.fromkeys(m for m in defaults if m in available)) or available[:4]
    chosen: dict[str, None] = {}
    for item in (part.strip() for part in option.split(",") if part.strip()):
        matches = [m for m in available if fnmatchcase(m, item)]
        if not matches:
            raise CollapseError(f"--metrics: no run has {item!r}; available: {', '.join(available[:30])}"
                                + (" …" if len(available) > 30 else ""))
        chosen.update((m, None) for m in matches)
    return list(chosen)


def by_family(groups: Sequence[Group]) -> dict[str, list[Group]]:
    """Groups by model family, in order of first appearance: each family's metrics mean its own things."""
    families: dict[str, list[Group]] = {}
    for group in groups:
        families.setdefault(group.family, []).append(group)
    return families


# Rows of a condensed table: generation 0, then 1-1.5-2-3-5-7 per decade, and always the last.
MANTISSAS = (1, 1.5, 2, 3, 5, 7)
CONDENSE_ABOVE = 30


def condensed(generations: Sequence[int], limit: int = CONDENSE_ABOVE) -> list[int]:
    """All generations up to `limit` of them; beyond, log-spaced ones (0,1,2,3,5,7,10,15,20,...,last):
    early generations change fastest, and a 2,000-generation table stays a screen long."""
    present = sorted(set(generations))
    if len(present) <= limit:
        return present
    last, marks, decade = present[-1], {present[0], present[-1]}, 1
    while decade <= last:
        marks.update(int(m * decade) for m in MANTISSAS)
        decade *= 10
    keep = set(present)
    return sorted(g for g in marks if g in keep)


@dataclass(frozen=True)
class Paired:
    """`other` minus `reference`, seed by seed, at the last generation every shared-seed run has."""

    reference: Group
    other: Group
    seeds: list[int]
    generation: int
    by_metric: dict[str, Stat]  # the per-seed differences' mean, std and 95% t-interval


def rows_by_generation(run: Run) -> dict[int, dict]:
    return dict(zip(run.generations(), run.rows))


def paired_difference(reference: Group, other: Group, metrics: Sequence[str]) -> Optional[Paired]:
    """Seeds shared by both groups give paired runs (the same seed draws the same data and initialisation),
    so their difference varies far less than two independent means; None with fewer than two shared seeds."""
    ref = {r.seed: rows_by_generation(r) for r in reference.runs if r.seed is not None}
    oth = {r.seed: rows_by_generation(r) for r in other.runs if r.seed is not None}
    seeds = sorted(ref.keys() & oth.keys())
    if len(seeds) < 2:
        return None
    common = set.intersection(*(set(rows[s]) for s in seeds for rows in (ref, oth)))
    if not common:
        return None
    generation = max(common)
    by_metric = {}
    for metric in metrics:
        pairs = [(row_value(oth[s][generation], metric), row_value(ref[s][generation], metric)) for s in seeds]
        differences = [b - a for b, a in pairs if a is not None and b is not None]
        if differences:
            by_metric[metric] = describe(generation, differences)
    return Paired(reference, other, seeds, generation, by_metric)


def paired_differences(groups: Sequence[Group], metrics: Sequence[str]) -> list[Paired]:
    """Every group against the first (the reference) of its family, where they share seeds."""
    return [p for p in (paired_difference(groups[0], other, metrics) for other in groups[1:]) if p is not None]
