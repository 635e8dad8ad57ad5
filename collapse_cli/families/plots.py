"""Matplotlib plumbing the families' figures share: a headless pyplot, one way to label and save a plot, and
which generations a figure of chosen generations draws."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend (runs have no display); imported only when drawing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


GENERATION = "generation"  # the x label of a per-generation curve


def chosen_generations(last: int, count: int = 6) -> list[int]:
    """About `count` generations to draw, log-spaced from 0 to `last` (0, 1, ..., last), no repeats."""
    if last <= 0:
        return [0]
    spaced = np.unique(np.round(np.geomspace(1, last + 1, count - 1)).astype(int) - 1)
    return sorted({0, last, *(int(g) for g in spaced)})


def generation_panels(samples_by_generation: dict[int, np.ndarray], height: float, low: Sequence[float],
                      high: Sequence[float]) -> tuple[Any, list[tuple[Any, np.ndarray]]]:
    """A row of equal-aspect 2-D panels, one per chosen generation (in order), each on the data window
    [low, high] and labelled: (the figure, [(panel, that generation's samples)]) for the caller to draw into."""
    plt = pyplot()
    generations = sorted(samples_by_generation)
    fig, axes = plt.subplots(1, len(generations), figsize=(3 * len(generations), height), squeeze=False)
    for ax, generation in zip(axes[0], generations):
        ax.set_xlim(low[0], high[0])  # fixed before drawing: one window for every generation, however it spreads
        ax.set_ylim(low[1], high[1])
        ax.set_aspect("equal")
        ax.set_title(f"generation {generation} ({len(samples_by_generation[generation])} points)", fontsize=9)
        ax.set_xlabel("x₁ (data units)", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel("x₂ (data units)", fontsize=8)
    return fig, [(ax, samples_by_generation[generation]) for ax, generation in zip(axes[0], generations)]


def save_with_legend_below(fig: Any, handles: list, labels: list[str], title: str, path: Path,
                           legend_inches: float = 0.35) -> Path:
    """One legend row under the panels, in a band `legend_inches` tall that the panels' axis labels stay
    above (a band set as a share of the height overlapped them on short figures), the title above; saved."""
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    return save(fig, path, rect=(0, legend_inches / fig.get_figheight(), 1, 1))


def finish(fig: Any, ax: Any, path: Path, xlabel: str, ylabel: str, title: str) -> Path:
    """Label one axes (small type, legend), write the PNG at `path` (folders made) and free the figure."""
    ax.set_xlabel(xlabel, fontsize=8)
    if xlabel == GENERATION:  # generations are whole numbers: no tick at 0.5
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.tick_params(which="both", labelsize=7)  # log axes label minor ticks too
    ax.legend(fontsize=7)
    return save(fig, path)


def save(fig: Any, path: Path, rect: tuple = (0, 0, 1, 1), dpi: int = 110) -> Path:
    """Lay the figure out within `rect` (room left for a legend outside it), write the PNG at `path` (folders
    made) and free the figure: the one tail of every family's figure."""
    fig.tight_layout(rect=rect)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path
