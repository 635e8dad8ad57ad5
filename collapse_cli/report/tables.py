"""Tables as strings, for the terminal (rich) and the HTML report: final values, generations, verdicts,
and one run's configuration in words."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

from collapse_cli.config import describe_mix
from collapse_cli.console import fmt
from collapse_cli.report.runs import Group, Run, config_mismatches
from collapse_cli.report.stats import GroupStats, Stat, StatsByMetric, number


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


def final_table(aggregated: GroupStats) -> TextTable:
    """Each group at its last generation: mean ± 95% CI over seeds, and the change from generation 0."""
    rows, metrics = [], aggregated.metrics
    for group, stats in aggregated.pairs():
        final = group.final_generation()
        reached = sum(1 for run in group.runs if final in run.generations())
        seeds = str(reached) if reached == len(group.runs) else f"{reached} of {len(group.runs)}"
        rows.append([group.label, seeds, group.status_text(), fmt(final),
                     *(stat_cell(stats[m].get(final), stats[m].get(0)) for m in metrics)])
    return TextTable("final generation: mean ± 95% CI over seeds (change from generation 0)",
                     ["group", "seeds", "status", "generation", *metrics], rows)


def generation_tables(aggregated: GroupStats) -> list[TextTable]:
    """One table per metric: a row per generation, a column per group."""
    tables = []
    for metric in aggregated.metrics:
        stats = [by_metric[metric] for by_metric in aggregated.by_group]
        generations = sorted({g for by_gen in stats for g in by_gen})
        rows = [[str(g), *(stat_cell(by_gen.get(g), by_gen.get(0)) for by_gen in stats)] for g in generations]
        headers = ["generation", *(f"{group.label} (n={len(group.runs)})" for group in aggregated.groups)]
        tables.append(TextTable(f"{metric} by generation: mean ± 95% CI (change from generation 0)", headers, rows))
    return tables


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
    """The likelihood metric a verdict's first_ppl_gen is about; verdicts from before families were the LM's."""
    return str(warning.get("headline") or "test perplexity")


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
                         fmt(warning.get("first_ppl_gen")) or never, verdict_text(run)])
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
    return lines


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
                ("regime", regime_words(config.get("regime"), config.get("mix"))),
                ("generations", f"{generations} after generation 0"), ("seed", str(config.get("seed")))]
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
    """Every generation of one run; `stats` is its statistics by metric (GroupStats of its one-run group)."""
    metrics = list(stats)
    rows = [[str(g), *(stat_cell(stats[m].get(g), stats[m].get(0)) for m in metrics)] for g in run.generations()]
    return TextTable("metrics by generation (change from generation 0)", ["generation", *metrics], rows)
