"""What a run's metrics mean to a reader: each family's facts, and the metric facts every family shares.

A family declares its facts (`FamilyFacts`: unit, headline and table keys, the likelihood key the verdict
uses, each metric's title, unit and direction, and closed-form theory pairs) in a plain data module,
`collapse_cli/families/<name>/facts.py`, that imports nothing but this module. The loop writes them into
the run folder as `family.json` when the run starts; `collapse show`, `compare`, the plots, the HTML report
and the trackers read them from there (`run_facts`), so the report lists no family by hand.

A run folder from before family.json falls back on the facts module of the family its config names, loaded
by file path: the facts are data, and loading them runs no family code (no torch, no family package).
"""

from __future__ import annotations

import functools
import importlib.util
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Optional

FACTS_FILE = "family.json"
FACTS_VERSION = 1
# A measured/closed-form ratio is shown as the key "<measured>/<theory>".
RATIO = "/"


class Better(str, Enum):
    higher = "higher"
    lower = "lower"
    neither = "neither"  # a size, a time, a diagnostic


@dataclass(frozen=True)
class MetricFacts:
    title: str
    unit: str  # the y-axis label: what the number is, in which unit
    better: Better = Better.neither

    @property
    def higher_is_better(self) -> Optional[bool]:
        return None if self.better is Better.neither else self.better is Better.higher

    def worse(self, change: float) -> Optional[bool]:
        """Whether a change of this sign is a change for the worse; None when the metric has no direction."""
        if self.higher_is_better is None or change == 0:
            return None
        return (change < 0) == self.higher_is_better

    def to_dict(self) -> dict:
        return {"title": self.title, "unit": self.unit, "better": self.better.value}


LOWER, HIGHER, NEUTRAL = Better.lower, Better.higher, Better.neither

# What a key means in every family that writes it; a family's own entry of the same key wins.
SHARED: dict[str, MetricFacts] = {
    "tail_coverage": MetricFacts("Tail coverage", "share of the real tail kept", HIGHER),
    "tail_coverage_se": MetricFacts("Standard error of tail coverage", "share (binomial SE)"),
    "train_loss_last": MetricFacts("Final training loss", "loss on the training mix"),
    "disk_bytes": MetricFacts("Disk use per generation", "bytes"),
    # measure/points.py: the point and image families' manifold metrics (docs/metrics.md).
    "precision": MetricFacts("Precision: samples inside the real k-NN manifold", "share of samples", HIGHER),
    "recall": MetricFacts("Recall: real points inside the samples' k-NN manifold", "share of real points", HIGHER),
    "density": MetricFacts("Density: real k-NN balls per sample (Naeem et al.)", "mean count / k (real: ~1)"),
    "coverage": MetricFacts("Coverage: real points with a sample in their k-NN ball", "share of real points", HIGHER),
    "frechet": MetricFacts("Fréchet distance to the real test data", "squared distance of Gaussian fits", LOWER),
    "frechet_se": MetricFacts("Standard error of the Fréchet distance", "bootstrap SE"),
    "modes_covered": MetricFacts("Known modes with a high-quality sample", "modes", HIGHER),
    "high_quality": MetricFacts("Samples within 3 sigma of a known mode", "share of samples", HIGHER),
}


def template_match(template: str, key: str) -> Optional[int]:
    """The number a key fills into a template's `{n}` ("seq_ppl_q{n}" and "seq_ppl_q95" give 95), else None."""
    if "{n}" not in template:
        return None
    pattern = "".join(r"(\d+)" if part == "{n}" else re.escape(part) for part in re.split(r"(\{n\})", template))
    found = re.fullmatch(pattern, key)
    return int(found.group(1)) if found else None


def lookup(table: Mapping[str, MetricFacts], key: str) -> Optional[MetricFacts]:
    """`key`'s entry in `table`, exact or through a `{n}` template (its title and unit filled with the number)."""
    if key in table:
        return table[key]
    for template, facts in table.items():
        n = template_match(template, key)
        if n is not None:
            return MetricFacts(facts.title.format(n=n), facts.unit.format(n=n), facts.better)
    return None


def ratio_parts(key: str) -> Optional[tuple[str, str]]:
    """(measured, theory) of a ratio key "<measured>/<theory>"; None for a plain key."""
    measured, slash, theory = key.partition(RATIO)
    return (measured, theory) if slash and measured and theory else None


@dataclass(frozen=True)
class FamilyFacts:
    """What a family's runs say of themselves; see docs/families.md, section "Facts"."""

    family: str
    unit: str = "samples"  # what one row is called: train_<unit> in metrics and the plan
    headline: tuple[str, ...] = ("nll_test", "tail_coverage")  # best first; firsts and lasts go to summary.json
    summary_keys: tuple[str, ...] = ()  # further metrics whose first and last values go into summary.json
    table_keys: tuple[str, ...] = ("nll_test", "tail_coverage")  # each generation's log line, the end table
    report_keys: tuple[str, ...] = ()  # what show/compare plot and tabulate by default; empty: table_keys
    # The likelihood headline the early-warning verdict sets tail_coverage against: key, its SE key, its name.
    likelihood_key: str = "nll_test"
    likelihood_se_key: str = "nll_test_se"
    likelihood_name: str = "test NLL"
    metrics: Mapping[str, MetricFacts] = field(default_factory=dict)  # keys may hold `{n}` (seq_ppl_q{n})
    theory: Mapping[str, str] = field(default_factory=dict)  # measured key -> its closed-form key

    @property
    def compare_keys(self) -> tuple[str, ...]:
        return self.report_keys or self.table_keys

    def metric(self, key: str) -> MetricFacts:
        """The facts of a metrics.jsonl key as this family writes it; a key nobody described is shown as it is."""
        found = lookup(self.metrics, key) or lookup(SHARED, key)
        if found:
            return found
        pair = ratio_parts(key)
        if pair:
            return MetricFacts(f"{self.metric(pair[0]).title}: measured / closed form ({pair[1]})",
                               "ratio (1: on the closed form)")
        if key.endswith("_se") and (lookup(self.metrics, key[:-3]) or lookup(SHARED, key[:-3])):
            base = self.metric(key[:-3])
            return MetricFacts(f"Standard error of: {base.title}", f"{base.unit} (standard error)")
        if key.endswith("_time_s"):
            return MetricFacts(key[:-2].replace("_", " ").capitalize(), "seconds")
        return MetricFacts(key, key)

    def se_key(self, key: str) -> Optional[str]:
        """The metrics.jsonl key holding a run's own standard error of `key`, where the loop writes one."""
        return {self.likelihood_key: self.likelihood_se_key, "tail_coverage": "tail_coverage_se"}.get(key)

    @property
    def ratios(self) -> list[str]:
        """"<measured>/<theory>" for each theory pair: the report's measured/closed-form ratio keys."""
        return [f"{m}{RATIO}{t}" for m, t in self.theory.items()]

    def ratio_keys(self, available: Sequence[str]) -> list[str]:
        """The ratio keys whose two keys are both `available`."""
        return [key for key in self.ratios if set(ratio_parts(key)) <= set(available)]

    def to_dict(self) -> dict:
        return {"version": FACTS_VERSION, "family": self.family, "unit": self.unit,
                "headline": list(self.headline), "summary_keys": list(self.summary_keys),
                "table_keys": list(self.table_keys), "report_keys": list(self.report_keys),
                "likelihood": {"key": self.likelihood_key, "se_key": self.likelihood_se_key,
                               "name": self.likelihood_name},
                "metrics": {k: v.to_dict() for k, v in self.metrics.items()}, "theory": dict(self.theory)}

    @classmethod
    def from_dict(cls, data: object) -> FamilyFacts:
        """The facts family.json holds; ValueError naming the first entry that is not what it should be."""
        data = _mapping(data, "the file")
        likelihood = _mapping(data.get("likelihood", {}), "likelihood")
        metrics = {str(k): _metric(k, v) for k, v in _mapping(data.get("metrics", {}), "metrics").items()}
        theory = _mapping(data.get("theory", {}), "theory")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in theory.items()):
            raise ValueError("theory: not a mapping of measured key to closed-form key")
        return cls(family=_text(data, "family"), unit=_text(data, "unit", "samples"),
                   headline=_keys(data, "headline"), summary_keys=_keys(data, "summary_keys"),
                   table_keys=_keys(data, "table_keys"), report_keys=_keys(data, "report_keys"),
                   likelihood_key=_text(likelihood, "key", "nll_test"),
                   likelihood_se_key=_text(likelihood, "se_key", "nll_test_se"),
                   likelihood_name=_text(likelihood, "name", "test NLL"), metrics=metrics, theory=dict(theory))


def _mapping(value: object, where: str) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: not a mapping")
    return value


def _text(data: dict, key: str, default: Optional[str] = None) -> str:
    value = data.get(key, default)
    if not isinstance(value, str):
        raise ValueError(f"{key}: not a string")
    return value


def _keys(data: dict, key: str) -> tuple[str, ...]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(k, str) for k in value):
        raise ValueError(f"{key}: not a list of metric keys")
    return tuple(value)


def _metric(key: object, value: object) -> MetricFacts:
    entry = _mapping(value, f"metrics.{key}")
    try:
        better = Better(entry.get("better", "neither"))
    except ValueError:
        raise ValueError(f"metrics.{key}.better: {entry.get('better')!r}, not higher, lower or neither") from None
    return MetricFacts(_text(entry, "title"), _text(entry, "unit"), better)


# --- reading them back ----------------------------------------------------------------------

FAMILIES = Path(__file__).resolve().parent.parent / "families"
FAMILY_NAME = re.compile(r"[a-z_][a-z0-9_]*")


@functools.cache  # once per family, however many old folders are read
def builtin_facts(family: str) -> Optional[FamilyFacts]:
    """FACTS of collapse_cli/families/<family>/facts.py, loaded by path (no family package, no torch);
    None when no builtin family of that name declares facts."""
    path = FAMILIES / family / "facts.py"
    if not FAMILY_NAME.fullmatch(family) or not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location(f"collapse_facts_{family}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.FACTS


def read_facts_file(path: Path) -> Optional[FamilyFacts]:
    """A run folder's family.json; None when it has none; a damaged one is a one-line error naming it."""
    from collapse_cli.rundir import damaged, read_json_object

    data = read_json_object(path)
    if data is None:
        return None
    try:
        return FamilyFacts.from_dict(data)
    except ValueError as err:
        raise damaged(path, str(err)) from None


def run_facts(run_dir: Path, family: str) -> FamilyFacts:
    """What the run says of itself (family.json); for a folder from before it, the builtin facts of the
    family its config names; else the defaults every family starts from."""
    return read_facts_file(Path(run_dir) / FACTS_FILE) or builtin_facts(family) or FamilyFacts(family)
