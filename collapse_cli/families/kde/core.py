"""Gaussian kernel density estimates collapsing on their own samples (Kazdan et al. 2024, the KDE experiment).

A KDE of points x_1..x_n with bandwidth h is p(x) = (1/n) sum_i N(x; x_i, h^2 I): isotropic kernels, as
scikit-learn's KernelDensity. Sampling picks a point uniformly and adds N(0, h^2 I) noise, so a sample's
covariance is the points' own (ddof 0) plus h^2 I: each generation spreads by h^2 while resampling
loses points -- the two forces of KDE collapse. With a fixed h and N points a generation, the expected
per-axis variance of replace's training sets follows v_{g+1} = (1 - 1/N)(v_g + h^2) (tests check it).

Pure functions: randomness only through an explicit `seed`; samples are float32 like the toy sets.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np
from scipy.spatial.distance import cdist

from collapse_cli.checks import StrEnum  # StrEnum: 3.10 too
from collapse_cli.families import plots
from collapse_cli.families.toy2d import SAMPLE_DTYPE
from collapse_cli.measure.points import squared_distance_chunks


class BandwidthRule(StrEnum):
    """How h is chosen from a generation's training points (n points, d dimensions, s their per-axis std)."""

    scott = "scott"  # h = s n^(-1/(d+4))
    silverman = "silverman"  # h = s (n (d+2) / 4)^(-1/(d+4))
    fixed = "fixed"  # h = model.bandwidth, every generation (Kazdan et al.'s setting)
    cv = "cv"  # h maximising the leave-one-out likelihood (cv_bandwidth): follows thin, multimodal sets


CV_POINTS = 500  # leave-one-out likelihood on a seeded subset of this many points (a 500 x 500 matrix)
CV_GRID = np.geomspace(0.02, 2.0, 16)  # candidate h as multiples of Scott's rule on that subset


def pooled_std(points: np.ndarray) -> float:
    """sqrt(mean per-axis variance, ddof 1): the one scale an isotropic kernel's rule of thumb reads."""
    return float(np.sqrt(np.mean(np.var(points, axis=0, ddof=1))))


def logsumexp_rows(a: np.ndarray) -> np.ndarray:
    """log sum exp along axis 1, shifted by each row's maximum: scipy's logsumexp does the same in ~30x
    the time at these sizes (its array-API checks), which would dominate a generation."""
    top = a.max(axis=1, keepdims=True)
    return np.log(np.exp(a - top).sum(axis=1)) + top[:, 0]


def loo_log_likelihoods(points: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Mean leave-one-out log-likelihood for each h of `grid`: each point scored by the KDE of the others."""
    n, d = points.shape
    d2 = cdist(points, points, "sqeuclidean")
    np.fill_diagonal(d2, np.inf)  # a point never scores itself
    return np.array([np.mean(logsumexp_rows(-d2 / (2 * h * h))) - math.log(n - 1)
                     - 0.5 * d * math.log(2 * math.pi * h * h) for h in grid])


def cv_bandwidth(points: np.ndarray, seed: int) -> float:
    """Likelihood cross-validation: the h of CV_GRID (times Scott's rule) with the best leave-one-out
    likelihood on a seeded subset of CV_POINTS points, scaled to all n points by the rate
    (m / n)^(1/(d+4)) that the rules of thumb share."""
    n, d = points.shape
    m = min(n, CV_POINTS)
    subset = points[np.random.default_rng(seed).choice(n, size=m, replace=False)]
    grid = bandwidth(subset, BandwidthRule.scott, 0.0) * CV_GRID
    best = grid[int(np.argmax(loo_log_likelihoods(subset, grid)))]
    return float(best * (m / n) ** (1 / (d + 4)))


def bandwidth(points: np.ndarray, rule: BandwidthRule, fixed: float, seed: int = 0) -> float:
    """h for these training points under `rule` (`fixed` is returned as is for rule=fixed; `seed` picks
    rule=cv's subset)."""
    n, d = points.shape
    if rule == BandwidthRule.fixed:
        return float(fixed)
    if rule == BandwidthRule.cv:
        return cv_bandwidth(points, seed)
    factor = n ** (-1 / (d + 4)) if rule == BandwidthRule.scott else (n * (d + 2) / 4) ** (-1 / (d + 4))
    return pooled_std(points) * factor


def log_density(points: np.ndarray, h: float, x: np.ndarray) -> np.ndarray:
    """log p(x) [m] of the KDE of `points` [n, d] with bandwidth h, by row chunks of x (memory stays bounded)."""
    n, d = points.shape
    out = np.empty(len(x))
    norm = math.log(n) + 0.5 * d * math.log(2 * math.pi * h * h)
    for rows, d2 in squared_distance_chunks(np.asarray(x, dtype=np.float64), points):
        out[rows] = logsumexp_rows(-d2 / (2 * h * h)) - norm
    return out


def sample(points: np.ndarray, h: float, n: int, seed: int) -> np.ndarray:
    """n float32 draws: a uniformly chosen point plus N(0, h^2 I) noise."""
    rng = np.random.default_rng(seed)
    chosen = points[rng.integers(len(points), size=n)]
    return (chosen + h * rng.standard_normal(chosen.shape)).astype(SAMPLE_DTYPE)


def variance_theory(v0: float, h: float, n: int, generations: int) -> np.ndarray:
    """E[per-axis population variance] of replace's training sets, g = 0..generations, with fixed h and
    N = n draws a generation: v_{g+1} = a (v_g + h^2), a = 1 - 1/n (the ddof-0 variance of n draws is
    biased by a; a draw from the KDE has variance v_g + h^2)."""
    a = 1 - 1 / n
    out = np.empty(generations + 1)
    out[0] = v0
    for g in range(generations):
        out[g + 1] = a * (out[g] + h * h)
    return out


def scatter_figure(real: np.ndarray, samples_by_generation: dict[int, np.ndarray], centres: Optional[np.ndarray],
                   title: str, path: Path) -> Path:
    """Chosen generations' samples over the real test points (grey), with the known mode centres if any."""
    low, high = real.min(axis=0), real.max(axis=0)
    pad = 0.25 * (high - low).max()
    span = high - low + 2 * pad
    height = 3 * span[1] / span[0] + 1.4  # panels as tall as the data's aspect, plus titles and the legend
    fig, panels = plots.generation_panels(samples_by_generation, height, low - pad, high + pad)
    for ax, points in panels:
        ax.scatter(real[:, 0], real[:, 1], s=2, color="0.75", label="real test points")
        ax.scatter(points[:, 0], points[:, 1], s=2, alpha=0.6, color="tab:blue", label="the generation's samples")
        if centres is not None:
            ax.scatter(centres[:, 0], centres[:, 1], s=30, marker="x", color="tab:red", label="mode centres")
    handles, labels = panels[0][0].get_legend_handles_labels()
    return plots.save_with_legend_below(fig, handles, labels, title, path)


def curves_figure(rows: list[dict], path: Path) -> Path:
    """Test NLL (left) and the shared sample-quality shares (right) by generation."""
    plt = plots.pyplot()
    generations = [row["generation"] for row in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    left.plot(generations, [row["nll_test"] for row in rows], lw=1)
    left.set_xlabel("generation", fontsize=8)
    left.set_ylabel("mean NLL of the real test points, nats", fontsize=8)
    left.set_title("KDE: test NLL", fontsize=9)
    left.tick_params(labelsize=7)
    for key in ("precision", "recall", "coverage", "tail_coverage"):
        right.plot(generations, [row[key] for row in rows], lw=1, label=key)
    return plots.finish(fig, right, path, plots.GENERATION, "share", "KDE: sample quality (k-NN manifolds)")
