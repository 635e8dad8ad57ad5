"""Figures for `collapse compare` and `collapse show`: metric curves and Shumailov-style histograms.

Figures are built with matplotlib's object API on an Agg canvas (no pyplot), so
nothing here touches global backend state. Every saved PNG carries a JSON
"Description" text chunk counting what was actually drawn (lines, CI bands,
histogram outlines), read back from the figure itself, so a test can check a
plot against the data without trusting the code that asked for it.
"""

from __future__ import annotations

import io
import json
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Optional

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import (
    FuncFormatter,
    LogLocator,
    MaxNLocator,
    NullFormatter,
    NullLocator,
)

from collapse_cli.report.facts import MetricFacts

DPI = 100
GROUP_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
                 "#7f7f7f", "#bcbd22")
# Past ten groups colours repeat, so the line style changes with each round of colours.
LINE_STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")
# Groups are nudged this far apart along x (in generations), so identical curves stay visible.
DODGE = 0.04

# Markers on each point only while a curve has this few: more would merge into a thick blob.
MARKERS_UP_TO = 30
# Generations spanning this many (0 to the last) are drawn on a symlog x-axis: linear to 1, log beyond.
LOG_X_FROM = 50


class Band(Enum):
    seeds = "95% CI over seeds"
    run_se = "±1.96 × the run's own standard error (one seed)"


@dataclass
class Series:
    """One group's curve: mean over seeds per generation, with the CI band's edges (nan: no band)."""

    label: str
    generations: Sequence[int]
    mean: Sequence[float]
    low: Sequence[float]
    high: Sequence[float]
    n_seeds: int
    band: Band = Band.seeds


def group_style(index: int) -> dict:
    """The same group gets the same colour and line style in every figure."""
    return {"color": GROUP_COLOURS[index % len(GROUP_COLOURS)], "marker": MARKERS[index % len(MARKERS)],
            "linestyle": LINE_STYLES[(index // len(GROUP_COLOURS)) % len(LINE_STYLES)]}


def dodge(index: int, n_groups: int) -> float:
    """x offset of a group's curve: DODGE apart, all within ±0.15 so points stay by their tick."""
    if n_groups < 2:
        return 0.0
    return (index - (n_groups - 1) / 2) * min(DODGE, 0.3 / (n_groups - 1))


def new_figure(legend_rows: int = 1) -> Figure:
    # Taller with a longer legend below, so the plot area keeps its size.
    figure = Figure(figsize=(7.0, 4.2 + 0.2 * legend_rows), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def wrap(text: str, width: int, max_lines: int = 3) -> str:
    """Fit long group labels and notes into the figure: wrapped, then cut with an ellipsis."""
    return textwrap.fill(text, width=width, max_lines=max_lines, placeholder=" …")


def legend_layout(labels: Sequence[str]) -> tuple[list[str], int, int]:
    """(wrapped labels, columns, rows of text) for a legend below the plot."""
    longest = max((len(label) for label in labels), default=0)
    columns = 1 if longest > 45 else 2 if longest > 25 else 3
    columns = max(1, min(columns, len(labels)))
    wrapped = [wrap(label, 90 // columns) for label in labels]
    rows_per_entry = max((w.count("\n") + 1 for w in wrapped), default=1)
    return wrapped, columns, -(-len(labels) // columns) * rows_per_entry


def add_titles(figure: Figure, axes, title: str, note: str) -> None:
    figure.suptitle(wrap(title, 70, 2), x=0.01, ha="left", fontsize=12)
    if note:  # each line of the note wrapped on its own, so a long label cannot push the rest out
        text = "\n".join(wrap(line, 100, 2) for line in note.splitlines())
        axes.set_title(text, fontsize=8, loc="left", color="#444444")


def add_legend(figure: Figure, axes, title: str, columns: int) -> None:
    """Below the plot, outside it, so it never hides a line however many groups there are."""
    handles, labels = axes.get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncol=columns, title=title, fontsize=8,
                  title_fontsize=8, frameon=False)


def metric_figure(facts: MetricFacts, series: Sequence[Series], note: str = "",
                  closed_form: Sequence[Series] = (), reference: Optional[float] = None) -> Figure:
    """One metric against generation: a line per group, with its band (95% CI over 2+ seeds, or a
    one-seed run's own standard error) where it has one; title and unit from the metric's facts.
    `closed_form`: each group's theory curve (its mean over seeds), dashed in the group's colour;
    `reference`: a value the metric has on theory (a measured/closed-form ratio's 1), dotted in black."""
    labels, columns, rows = legend_layout([f"{s.label} (n={s.n_seeds})" for s in series]
                                          + [f"{s.label}: closed form" for s in closed_form])
    figure = new_figure(rows)
    axes = figure.add_subplot()
    bands = set()
    floor = log_floor([*series, *closed_form])  # None: a linear y-axis
    for index, (curve, label) in enumerate(zip(series, labels)):
        style = group_style(index)
        if len(curve.generations) > MARKERS_UP_TO:
            style["marker"] = None
        x = np.asarray(curve.generations, float) + dodge(index, len(series))
        axes.plot(x, curve.mean, markersize=5, linewidth=2 if style["marker"] else 1.2, label=label, **style)
        low, high = np.asarray(curve.low, float), np.asarray(curve.high, float)
        if floor is not None:  # a band reaching 0 or below runs along the bottom edge of a log axis
            low = np.where(low > floor, low, floor)
        if np.isfinite(low).any():
            axes.fill_between(x, low, high, color=style["color"], alpha=0.18, linewidth=0)
            bands.add(curve.band)
    colours = {curve.label: group_style(index)["color"] for index, curve in enumerate(series)}
    for curve, label in zip(closed_form, labels[len(series):]):
        axes.plot(curve.generations, curve.mean, linestyle="--", linewidth=1.4,
                  color=colours.get(curve.label, "black"), label=label)
    if reference is not None:
        axes.axhline(reference, color="black", linestyle=":", linewidth=1.2, label=f"closed form ({reference:g})")
    add_titles(figure, axes, facts.title, note)
    last = max((max(curve.generations) for curve in series if len(curve.generations)), default=0)
    generation_axis(axes, last)
    if floor is not None:
        axes.set_yscale("log")
        axes.set_ylim(bottom=floor)
        plain_log_axis(axes.yaxis, floor, axes.get_ylim()[1])
    axes.set_ylabel(wrap(facts.unit + (" (log scale)" if floor is not None else ""), 45, 2))
    axes.grid(alpha=0.3)
    nudged = "; groups nudged apart along x" if len(series) > 1 and last < LOG_X_FROM else ""
    band_text = "; band: " + " or ".join(b.value for b in Band if b in bands) if bands else ""
    dashed = "; dashed: closed form" if closed_form else ""
    add_legend(figure, axes, f"group (n = seeds); line: mean{band_text}{dashed}{nudged}", columns)
    return figure


WIDE_SPAN = 30  # max / min of the plotted means from which a linear axis flattens the small curves


def log_floor(curves: Sequence[Series]) -> Optional[float]:
    """The bottom of a log y-axis, or None for a linear one. Log where every mean (measured and closed
    form) is positive and they span WIDE_SPAN or more: linear regression's replace arm reaches 8.6 where
    accumulate stays at 0.14, and on a linear axis accumulate (and whether it sits on its closed form)
    is a flat line at the bottom. The bottom sits below every mean and positive band edge."""
    means = np.concatenate([np.asarray(c.mean, float) for c in curves]) if curves else np.array([])
    means = means[np.isfinite(means)]
    if means.size == 0 or (means <= 0).any() or means.max() / means.min() < WIDE_SPAN:
        return None
    lows = np.concatenate([np.asarray(c.low, float) for c in curves])
    lows = lows[np.isfinite(lows) & (lows > 0)]
    return float(min(means.min(), lows.min() if lows.size else np.inf)) / 1.5


def generation_axis(axes, last: int) -> None:
    """Integer generations; past LOG_X_FROM a symlog axis, so generation 0 stays on it and the early
    generations, where most change happens, are not squeezed into the left edge."""
    if last >= LOG_X_FROM:
        axes.set_xscale("symlog", linthresh=1, linscale=0.5)
        axes.set_xlim(left=0)
        axes.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        axes.set_xlabel("generation (log scale past 1)")
    else:
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlabel("generation")


def log_axis_keeping_zero(axes, values: np.ndarray) -> None:
    """A log y-axis for positive curves; symlog when a value is 0 (l2_to_gen0 at generation 0), linear
    below the smallest positive value, so that point stays on the plot instead of dropping off it."""
    finite = np.asarray(values, float)[np.isfinite(values)]
    positive = finite[finite > 0]
    if positive.size == 0 or (finite < 0).any():
        return  # nothing a log scale could show: linear
    low, high = float(positive.min()), float(positive.max())
    if (finite == 0).any():
        axes.set_yscale("symlog", linthresh=10 ** np.floor(np.log10(low)), linscale=0.3)
        axes.set_ylim(bottom=0)
        if high / low < 100:  # the log part spans under two decades: a few evenly spread labels
            axes.yaxis.set_major_locator(MaxNLocator(nbins=6))
        axes.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
    else:
        axes.set_yscale("log")
        plain_log_axis(axes.yaxis, low, high)


def log_bins(samples: Sequence[np.ndarray]) -> np.ndarray:
    """Equal-width bins in log space spanning every sample, so all generations share edges.

    About sqrt(n) bins for the smallest sample (8 to 50): enough to show shape, few
    enough that a small corpus does not turn into noise.
    """
    low = min(float(s.min()) for s in samples)
    high = max(float(s.max()) for s in samples)
    if high <= low * 1.01:  # all equal: widen, or there would be no bin to put them in
        low, high = low / 1.05, high * 1.05
    n_bins = int(np.clip(np.sqrt(min(s.size for s in samples)), 8, 50))
    return np.geomspace(low, high, n_bins + 1)


def positive_finite(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, np.float64).ravel()
    return values[np.isfinite(values) & (values > 0)]


def plain_log_axis(axis, low: float, high: float) -> None:
    """Log scale with plain-number ticks; within one decade, evenly spread ones that cannot overlap."""
    axis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    if high / low < 10:
        axis.set_major_locator(MaxNLocator(nbins=6))
        axis.set_minor_locator(NullLocator())
    elif high / low < 1000:  # 1, 2, 5 steps: a few labels per decade, none crowded
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_minor_formatter(NullFormatter())


def histogram_figure(label: str, seq_ppl_by_generation: dict[int, np.ndarray], n_runs: int,
                     real_seq_ppl: Optional[np.ndarray] = None) -> Optional[Figure]:
    """Shumailov et al.'s Fig. 1 view: per-sequence perplexity under generation 0, one outline per generation.

    The y-axis is the share of sequences per bin on equal log-width bins, so the
    outline shapes are densities in log-perplexity and generations of different
    sizes compare directly. None when no generation has a usable value. `real_seq_ppl`, the real
    test text under the same model, is drawn dashed in black as the reference.
    """
    kept = {g: positive_finite(v) for g, v in sorted(seq_ppl_by_generation.items())}
    dropped = sum(np.asarray(v).size for v in seq_ppl_by_generation.values()) - sum(v.size for v in kept.values())
    kept = {g: v for g, v in kept.items() if v.size}
    if not kept:
        return None
    real = positive_finite(real_seq_ppl) if real_seq_ppl is not None else np.empty(0)
    edges = log_bins(list(kept.values()) + ([real] if real.size else []))
    labels, columns, rows = legend_layout([f"gen {g}" for g in kept])
    n_entries = len(kept) + bool(real.size)
    columns = min(n_entries, 6)  # short labels: up to six side by side
    rows = -(-n_entries // columns)
    figure = new_figure(rows)
    axes = figure.add_subplot()
    for colour, values, text in zip(histogram_colours(len(kept)), kept.values(), labels):
        counts, _ = np.histogram(values, bins=edges)
        axes.stairs(counts / values.size, edges, color=colour, linewidth=1.8, label=text)
    if real.size:
        counts, _ = np.histogram(real, bins=edges)
        axes.stairs(counts / real.size, edges, color="black", linestyle="--", linewidth=1.4, label="real test text")
    axes.set_xscale("log")
    plain_log_axis(axes.xaxis, edges[0], edges[-1])
    sizes = sorted({v.size for v in kept.values()})
    note = (f"group: {label}\npooled over {n_runs} run(s): {'/'.join(map(str, sizes))} sequences per generation"
            + (f"; {dropped} non-finite value(s) left out" if dropped else ""))
    add_titles(figure, axes, "Synthetic sequences' perplexity under the generation-0 model", note)
    axes.set_xlabel("per-sequence perplexity under the generation-0 model (log scale)")
    axes.set_ylabel("share of sequences per bin")
    axes.grid(alpha=0.3)
    add_legend(figure, axes, "synthetic data written by generation", columns)
    return figure


def histogram_colours(n: int) -> list:
    """Dark (generation 0) to bright (last), stopping short of viridis' pale yellow."""
    from matplotlib import colormaps

    return [colormaps["viridis"](x) for x in np.linspace(0.0, 0.85, n)] if n > 1 else [colormaps["viridis"](0.0)]


def figure_contents(figure: Figure) -> dict:
    """What the figure really shows: labelled lines, CI bands and histogram outlines over all axes."""
    lines = bands = outlines = 0
    for axes in figure.axes:
        lines += sum(1 for line in axes.get_lines()
                     if isinstance(line, Line2D) and not line.get_label().startswith("_"))
        bands += sum(1 for collection in axes.collections if isinstance(collection, PolyCollection))
        outlines += sum(1 for patch in axes.patches if not patch.get_label().startswith("_"))
    return {"lines": lines, "bands": bands, "histograms": outlines}


def png_bytes(figure: Figure, kind: str, subject: str) -> bytes:
    """Render to PNG; the Description chunk records kind, subject and figure_contents()."""
    description = json.dumps({"kind": kind, "subject": subject, **figure_contents(figure)})
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Description": description, "Software": "collapse"})
    return buffer.getvalue()


def write_png(figure: Figure, path: Path, kind: str, subject: str) -> bytes:
    payload = png_bytes(figure, kind, subject)
    Path(path).write_bytes(payload)
    return payload


def read_png_description(path: Path) -> dict:
    """The JSON Description chunk of a PNG written by write_png (PIL ships with matplotlib)."""
    from PIL import Image

    with Image.open(path) as image:
        return json.loads(image.text["Description"])
