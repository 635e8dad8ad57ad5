"""Files of `collapse compare --out` and `collapse show --out`: tidy CSVs, PNG plots, one self-contained report.html."""

from __future__ import annotations

import base64
import csv
import html
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from collapse_cli.console import fmt
from collapse_cli.errors import CollapseError
from collapse_cli.report.facts import ratio_parts
from collapse_cli.report.runs import Group, natural_key
from collapse_cli.report.stats import GroupStats, number
from collapse_cli.report.tables import TextTable, verdict_text
from collapse_cli.rundir import gen_name, read_run_array


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


def metric_series(aggregated: GroupStats, metric: str):
    """A line and band per group that has the metric, from the statistics the tables show. The band is
    the 95% CI over seeds; a group of one seed gets ±1.96 × its run's own standard error (`*_se`) instead."""
    from collapse_cli.report.plots import Band, Series

    series = []
    for group, by_metric in aggregated.pairs():
        stats = list(by_metric[metric].values())  # in generation order
        if not stats:
            continue
        generations, mean = [s.generation for s in stats], [s.mean for s in stats]
        low, high, band = [s.low for s in stats], [s.high for s in stats], Band.seeds
        se = aggregated.facts.se_key(metric)
        if len(group.runs) == 1 and se:
            by_generation = dict(zip(group.runs[0].generations(), group.runs[0].rows))
            errors = [number(by_generation[g].get(se)) for g in generations]
            errors = [float("nan") if e is None else 1.96 * e for e in errors]
            low, high = [m - e for m, e in zip(mean, errors)], [m + e for m, e in zip(mean, errors)]
            band = Band.run_se if any(math.isfinite(e) for e in errors) else Band.seeds
        series.append(Series(group.label, generations, mean, low, high, len(group.runs), band))
    return series


def seq_ppl_by_generation(group: Group) -> dict[int, np.ndarray]:
    """Each finished generation's per-sequence perplexities, pooled over the group's seeds."""
    pooled: dict[int, list[np.ndarray]] = {}
    for run in group.runs:
        for generation in run.generations():
            array = read_run_array(run.path / gen_name(generation) / "seq_ppl.npy")
            if array is not None:
                pooled.setdefault(generation, []).append(array)
    return {g: np.concatenate(arrays) for g, arrays in sorted(pooled.items())}


def real_seq_ppl(group: Group) -> Optional[np.ndarray]:
    """The real test blocks' perplexities under each run's generation-0 model, pooled over seeds."""
    found = (read_run_array(run.path / "reference_test_seq_ppl.npy") for run in group.runs)
    arrays = [array for array in found if array is not None]
    return np.concatenate(arrays) if arrays else None


@dataclass
class Image:
    kind: str  # "metric" | "run_figure" | "seq_ppl_hist"
    title: str
    file: str  # written to --out (metric, seq_ppl_hist), or the run's own file (run_figure)
    png: bytes


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_figures(groups: Sequence[Group]) -> tuple[list[Image], list[str]]:
    """The PNGs each run wrote into RUN/figures/ (a family's scatter plots, sample grids), and a
    warning for every file there that is not a PNG image."""
    images, notes = [], []
    for group in groups:
        for run in group.runs:
            for file in sorted((run.path / "figures").glob("*.png"), key=natural_key):
                try:
                    png = file.read_bytes()
                except OSError as err:
                    raise CollapseError(f"{file}: cannot read it ({err.strerror}); fix or remove it") from err
                if png.startswith(PNG_SIGNATURE):
                    images.append(Image("run_figure", f"{run.name}: {file.stem}", str(file), png))
                else:
                    notes.append(f"{file}: not a PNG image; left out of the report")
    return images, notes


def write_plots(out: Path, families: Sequence[GroupStats], note: str) -> list[Image]:
    """A figure per family and metric (each family on its own generation axis), then the LM's histograms."""
    from collapse_cli.report import plots

    images = []
    for aggregated in families:
        family = aggregated.family
        prefix = f"{family}_" if aggregated.label_family else ""
        for metric in aggregated.metrics:
            series = metric_series(aggregated, metric)
            if series:
                file = f"metric_{prefix}{slug(metric)}.png"
                family_note = "\n".join(filter(None, [f"{family} family" if prefix else "", note]))
                theory = aggregated.theory(metric)
                closed_form = metric_series(aggregated, theory) if theory else []
                figure = plots.metric_figure(aggregated.facts.metric(metric), series, family_note, closed_form,
                                             1.0 if ratio_parts(metric) else None)
                png = plots.write_png(figure, out / file, "metric", metric)
                title = aggregated.facts.metric(metric).title
                images.append(Image("metric", f"{family}: {title}" if prefix else title, file, png))
    groups = [group for aggregated in families for group in aggregated.groups]
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
                  ("run_figure", "figures the runs wrote (RUN/figures/*.png)"),
                  ("seq_ppl_hist", "per-sequence perplexity of synthetic data under the generation-0 model "
                                   "(Shumailov et al. 2024, Fig. 1 style)"))


def image_html(image: Image) -> str:
    data = base64.b64encode(image.png).decode("ascii")
    return (f"<figure><img alt='{html.escape(image.title)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{html.escape(image.title)} ({html.escape(image.file)})</figcaption></figure>")


def write_outputs(out: Path, title: str, intro: Sequence[str], tables: Sequence[TextTable], notes: Sequence[str],
                  families: Sequence[GroupStats], note: str) -> list[Path]:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CollapseError(f"--out {out}: cannot create the folder ({err.strerror}); choose a writable path") from err
    groups = [group for aggregated in families for group in aggregated.groups]
    write_metrics_csv(out / "metrics.csv", groups)
    write_runs_csv(out / "runs.csv", groups)
    images = write_plots(out, families, note)
    figures, figure_notes = run_figures(groups)
    report = report_html(title, intro, tables, [*notes, *figure_notes], [*images, *figures])
    (out / "report.html").write_text(report, encoding="utf-8")
    return [out / "metrics.csv", out / "runs.csv", *(out / i.file for i in images), out / "report.html"]
