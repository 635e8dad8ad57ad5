"""Tables as strings, for the terminal (rich) and the HTML report: final values, generations, verdicts,
and one run's configuration in words."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

from collapse_cli import environment
from collapse_cli.config import describe_mix
from collapse_cli.console import fmt
from collapse_cli.report.facts import MetricFacts
from collapse_cli.report.runs import Group, Run, config_mismatches
from collapse_cli.report.stats import GroupStats, Stat, StatsByMetric, condensed, number, paired_differences


def change_text(value: float, base: Optional[float], facts: MetricFacts) -> str:
    """Change from generation 0, marked worse or better where the metric has a direction.

    A percentage only where both values are positive (a share of a negative or zero base has no meaning:
    −15.4 → 11.7 is not "−176%"); else the signed difference.
    """
    if base is None or not math.isfinite(base) or not math.isfinite(value):
        return ""
    change = value - base
    if base > 0 and value >= 0:
        percent = 100 * (value / base - 1)
        text = f"{percent:+.0f}%" if abs(percent) >= 10 else f"{percent:+.1f}%"
    else:
        text = f"Δ {change:+.3g}"
    verdict = facts.worse(change)
    return f"({text}{'' if verdict is None else ', worse' if verdict else ', better'})"


def decimals(values: Sequence[float], digits: int = 4) -> Optional[int]:
    """One number of decimals for a column: enough for `digits` significant digits of its smallest value,
    but at most one more than its largest needs (a column of times from 0.05 to 7 s needs no 6 decimals);
    None where some value needs scientific notation (fmt decides then)."""
    finite = [abs(v) for v in values if math.isfinite(v) and v != 0]
    if any(not 1e-3 <= v < 1e6 for v in finite):
        return None
    needed = [0 if v == int(v) and v >= 10 ** (digits - 1) else digits - 1 - math.floor(math.log10(v))
              for v in finite]
    return max(0, min(max(needed), min(needed) + 1)) if needed else 0


def number_text(value: float, places: Optional[int]) -> str:
    return fmt(value) if places is None or not math.isfinite(value) else f"{value:.{places}f}"


def stat_cell(stat: Optional[Stat], base: Optional[Stat], facts: MetricFacts, places: Optional[int] = None) -> str:
    """'124.0 ± 3.1 (+58%, worse)'; without ± for one seed, without the change at generation 0."""
    if stat is None:
        return ""
    text = number_text(stat.mean, places) + (f" ± {fmt(stat.ci, 2)}" if math.isfinite(stat.ci) else "")
    if base is not None and base.generation != stat.generation:
        text += " " + change_text(stat.mean, base.mean, facts)
    return text.strip()


def column(stats: Sequence[Optional[Stat]], bases: Sequence[Optional[Stat]], facts: MetricFacts) -> list[str]:
    """A column's cells, its means in one precision."""
    places = decimals([s.mean for s in stats if s is not None])
    return [stat_cell(stat, base, facts, places) for stat, base in zip(stats, bases)]


def header(metric: str, facts: MetricFacts) -> str:
    """The key, with its direction: 'ppl_test ↓' when lower is better."""
    return metric + {True: " ↑", False: " ↓", None: ""}[facts.higher_is_better]


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


def final_table(aggregated: GroupStats) -> TextTable:
    """Each group at its last generation: mean ± 95% CI over seeds, and the change from generation 0."""
    facts = [aggregated.facts.metric(m) for m in aggregated.metrics]
    finals = [group.final_generation() for group in aggregated.groups]
    columns = [column([stats[m].get(final) for (_, stats), final in zip(aggregated.pairs(), finals)],
                      [stats[m].get(0) for stats in aggregated.by_group], f)
               for m, f in zip(aggregated.metrics, facts)]
    rows = []
    for index, (group, final) in enumerate(zip(aggregated.groups, finals)):
        reached = sum(1 for run in group.runs if final in run.generations())
        seeds = str(reached) if reached == len(group.runs) else f"{reached} of {len(group.runs)}"
        rows.append([group.label, seeds, group.status_text(), fmt(final), *(cells[index] for cells in columns)])
    return TextTable(f"{family_title(aggregated)}final generation: mean ± 95% CI over seeds (change from generation 0; "
                     "↑/↓: higher/lower is better)",
                     ["group", "seeds", "status", "generation", *map(header, aggregated.metrics, facts)], rows)


def family_title(aggregated: GroupStats) -> str:
    return f"{aggregated.family} family — " if aggregated.label_family else ""


def condensed_note(shown: Sequence[int], generations: Sequence[int]) -> str:
    if len(shown) == len(generations):
        return ""
    return f"; {len(shown)} of {len(generations)} generations, log-spaced (every one is in metrics.csv)"


def generation_tables(aggregated: GroupStats) -> list[TextTable]:
    """One table per metric: a row per generation (log-spaced past 30), a column per group."""
    tables = []
    for metric in aggregated.metrics:
        facts = aggregated.facts.metric(metric)
        stats = [by_metric[metric] for by_metric in aggregated.by_group]
        generations = sorted({g for by_gen in stats for g in by_gen})
        shown = condensed(generations)
        columns = [column([by_gen.get(g) for g in shown], [by_gen.get(0)] * len(shown), facts) for by_gen in stats]
        rows = [[str(g), *(cells[i] for cells in columns)] for i, g in enumerate(shown)]
        headers = ["generation", *(f"{group.label} (n={len(group.runs)})" for group in aggregated.groups)]
        tables.append(TextTable(f"{family_title(aggregated)}{header(metric, facts)} by generation: mean ± 95% CI "
                                f"(change from generation 0{condensed_note(shown, generations)})", headers, rows))
    return tables


def paired_table(aggregated: GroupStats) -> Optional[TextTable]:
    """Per-seed differences of each group from the family's first group, where they share seeds."""
    paired = paired_differences(aggregated.groups, aggregated.metrics)
    if not paired:
        return None
    facts = [aggregated.facts.metric(m) for m in aggregated.metrics]
    rows = [[p.other.label, p.reference.label, ",".join(map(str, p.seeds)), str(p.generation),
             *(paired_cell(p.by_metric.get(m), f) for m, f in zip(aggregated.metrics, facts))] for p in paired]
    return TextTable(f"{family_title(aggregated)}paired difference (group − reference), seed by seed: "
                     "mean ± 95% t-CI over shared seeds",
                     ["group", "reference", "shared seeds", "generation", *map(header, aggregated.metrics, facts)],
                     rows)


def paired_cell(stat: Optional[Stat], facts: MetricFacts) -> str:
    """'+12.3 ± 4.1 (worse)': 'worse' only when the whole interval lies on the worse side of 0."""
    if stat is None:
        return ""
    text = f"{'+' if stat.mean > 0 else ''}{fmt(stat.mean)} ± {fmt(stat.ci, 2)}"
    if math.isfinite(stat.ci) and (stat.low > 0 or stat.high < 0):
        verdict = facts.worse(stat.mean)
        text += " (CI excludes 0" + ("" if verdict is None else ": worse" if verdict else ": better") + ")"
    return text


def early_warning(run: Run) -> dict:
    """summary.json's verdict; {} when the run has none (unfinished, damaged, or an edited summary)."""
    warning = (run.summary or {}).get("early_warning") if run.finished else None
    return warning if isinstance(warning, dict) else {}


def verdict_text(run: Run) -> str:
    warning = early_warning(run)
    if warning.get("text"):
        return str(warning["text"])
    if not run.finished:
        return f"no verdict: {run.short_state()}" if run.state == "finished" else "no verdict: the run has not finished"
    return "no verdict in summary.json"


def verdict_headline(warning: dict) -> str:
    """The likelihood metric a verdict's first_likelihood_gen is about; verdicts from before families were the LM's."""
    return str(warning.get("headline") or "test perplexity")


def first_likelihood_gen(warning: dict):
    """The likelihood headline's first departure; summaries from before its rename call it first_ppl_gen."""
    return warning.get("first_likelihood_gen", warning.get("first_ppl_gen"))


def verdict_table(groups: Sequence[Group]) -> TextTable:
    rows, headlines = [], set()
    for group in groups:
        for run in group.runs:
            warning = early_warning(run)
            if warning:
                headlines.add(verdict_headline(warning))
            # In a verdict, a missing generation means the metric never departed.
            never = "never" if warning else ""
            rows.append([group.label, fmt(run.seed), fmt(warning.get("first_tail_gen")) or never,
                         fmt(first_likelihood_gen(warning)) or never, verdict_text(run)])
    # Runs of several families in one table: the verdict text of each row names its own headline.
    headline = headlines.pop() if len(headlines) == 1 else "likelihood" if headlines else "test perplexity"
    return TextTable("early warning: first generation departing from generation 0 beyond noise",
                     ["group", "seed", "tail coverage", headline, "verdict"], rows)


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
    return lines + environment_notes(groups)


def environment_notes(groups: Sequence[Group]) -> list[str]:
    """Library versions or hardware that differ between the compared runs (environment.json), by group:
    such runs agree within seed noise, not bit for bit, so a small difference may be the machine's."""
    seen: dict[str, dict[str, list[str]]] = {}  # key -> value -> groups computed with it
    unreadable = []
    for group in groups:
        for run in group.runs:
            entries = environment.read(run.path)
            if entries is None:
                unreadable.append(str(run.path))
            for entry in entries or []:
                for key, value in environment.identity(entry).items():
                    holders = seen.setdefault(key, {}).setdefault(str(value), [])
                    if group.label not in holders:
                        holders.append(group.label)
    notes = [f"{environment.FILE} cannot be read (damaged) in {', '.join(unreadable[:3])}"
             f"{' and others' if len(unreadable) > 3 else ''}: where those runs were computed is unknown"
             ] if unreadable else []
    differing = {key: values for key, values in seen.items() if len(values) > 1}
    if not differing:
        return notes
    words = "; ".join(f"{key} " + " / ".join(f"{value} ({', '.join(labels)})" for value, labels in values.items())
                      for key, values in list(differing.items())[:6])
    return notes + [f"the runs were computed in different environments: {words}. Same machine and versions give "
                    "identical runs; across them expect differences within seed noise (`collapse show RUN` prints a "
                    "run's)"]


# One run in words (`collapse show`)

MIX_WORDS = {0.0: "fully synthetic after generation 0", 1.0: "real data only (control)"}


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


def regime_words(regime, mix) -> str:
    """The loop's own description of the regime (config.describe_mix), when the config is readable."""
    value = number(mix)
    words = describe_mix(str(regime), value) if value is not None else ""
    return f"{regime}: {words}" if words else str(regime)


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


# Config keys a family never reads (present for the shared schema): `show` leaves them out. null keys
# (dataset.means: null, a standard normal) are left out too: the family's default stands in.
UNREAD_KEYS = {"gmm": ("lr", "epochs", "batch_size", "train")}


def config_words(config: dict) -> list[tuple[str, str]]:
    if not config:
        return [("config", "no config.yaml in the run folder")]
    train, generations = config.get("train") or {}, config.get("generations")
    model = config.get("model") or {}
    family = model.get("family", "lm")
    if family != "lm":  # decoding and token blocks are the LM's; other families list the keys they read
        unread = UNREAD_KEYS.get(family, ())

        def keys(node: dict) -> str:
            return ", ".join(f"{k} {v}" for k, v in node.items()
                             if k not in ("family", "name", *unread) and v is not None)
        words = [("model", f"{family}: {keys(model)}"),
                 ("dataset", f"{(config.get('dataset') or {}).get('name')}: {keys(config.get('dataset') or {})}"),
                 ("mix", mix_words(config.get("mix"))),
                 ("regime", regime_words(config.get("regime"), config.get("mix"))),
                 ("generations", f"{generations} after generation 0"), ("seed", str(config.get("seed")))]
        if "train" not in unread:
            words.append(("training", f"{train.get('epochs')} epoch(s), lr {train.get('lr')}, "
                                      f"batch {train.get('batch_size')}"))
        return words
    return [("model", model_words(model)),
            ("dataset", dataset_words(config.get("dataset") or {})),
            ("mix", mix_words(config.get("mix"))),
            ("regime", regime_words(config.get("regime"), config.get("mix"))),
            ("generations", f"{generations} after generation 0"),
            ("seed", str(config.get("seed"))),
            ("decoding", decoding_words(config.get("generate") or {})),
            ("training", training_words(train)),
            ("metrics", str((config.get("metrics") or {}).get("level")))]


def training_words(train: dict) -> str:
    # .get defaults: folders written before schedule/min_lr/select existed trained as these say.
    floor = f" to {train['min_lr']}" if train.get("min_lr") else ""
    kept = "the best-validation epoch" if train.get("select") == "best_valid" else "the last epoch"
    return (f"{train.get('epochs')} epoch(s), lr {train.get('lr')} ({train.get('schedule', 'linear')} decay{floor}), "
            f"batch {train.get('batch_size')}, blocks of {train.get('block_size')} tokens, init {train.get('init')}; "
            f"keeps {kept}")


def run_table(run: Run, stats: StatsByMetric) -> TextTable:
    """One run by generation (log-spaced past 30); `stats` is its statistics by metric (its one-run group's)."""
    metrics, generations = list(stats), run.generations()
    shown = condensed(generations)
    facts = [run.facts.metric(m) for m in metrics]
    columns = [column([stats[m].get(g) for g in shown], [stats[m].get(0)] * len(shown), f)
               for m, f in zip(metrics, facts)]
    rows = [[str(g), *(cells[i] for cells in columns)] for i, g in enumerate(shown)]
    return TextTable(f"metrics by generation (change from generation 0{condensed_note(shown, generations)})",
                     ["generation", *map(header, metrics, facts)], rows)
