"""Matplotlib plumbing the families' figures share: a headless pyplot, one way to label and save a plot, and
which generations a figure of chosen generations draws."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend (runs have no display); imported only when drawing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def chosen_generations(last: int, count: int = 6) -> list[int]:
    """About `count` generations to draw, log-spaced from 0 to `last` (0, 1, ..., last), no repeats."""
    if last <= 0:
        return [0]
    spaced = np.unique(np.round(np.geomspace(1, last + 1, count - 1)).astype(int) - 1)
    return sorted({0, last, *(int(g) for g in spaced)})


def finish(fig: Any, ax: Any, path: Path, xlabel: str, ylabel: str, title: str) -> Path:
    """Label one axes (small type, legend), write the PNG at `path` (folders made) and free the figure."""
    ax.set_xlabel(xlabel, fontsize=8)
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
