"""Linear regression collapsing on its own labels (Gerstgrasser et al. 2024; Kazdan et al. 2024).

A fixed Gaussian design X (T x d, rows iid N(0, I_d)) and a true weight vector w*. Generation 0's
labels are X w* + eps, eps ~ N(0, sigma^2 I); each generation fits OLS, and the next generation's
labels are X w_hat + fresh noise of the same, known sigma. A row is (x, y): d + 1 float64 numbers.

Functions take labels as [n] or [n, chains]: the family runs one chain, the closed-form tests run
thousands at once through the same code. Randomness enters only through an explicit seed.

Closed forms (docs/metrics.md derives them). With z_j = X^+ eps_j ~ N(0, sigma^2 (X'X)^-1), the
fitted error e_g = w_g - w* of generation g (g + 1 fits so far) is a sum of z's, so
    E ||e_g||^2 = sigma^2 tr((X'X)^-1) c_g          (given the design; `mse_theory`)
    E_X tr((X'X)^-1) = d / (T - d - 1)              (inverse Wishart; `mse_theory_avg`)
    c_g = g + 1                    replace, mix=0     (each fit adds one independent z)
    c_g = sum_{i=1}^{g+1} 1 / i^2  accumulate, mix=1  (each fit averages all earlier labels)
    c_g = 1                        replace or fresh with mix=1 (real labels only)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from collapse_cli.families import plots
from collapse_cli.measure.stats import binomial_se

TAIL_MASS = 0.05  # the rare inputs: the test design's outer 5% by norm
BAND_Z = 1.6448536269514722  # a prediction "covers" a rare input within the true labels' central 90%
Seed = int | Sequence[int]  # anything numpy's SeedSequence takes: [dataset.seed, part] keeps streams apart


def gaussian_design(n: int, d: int, seed: Seed) -> np.ndarray:
    """n rows iid N(0, I_d), float64."""
    return np.random.default_rng(seed).standard_normal((n, d))


def labels(design: np.ndarray, weights: np.ndarray, noise_std: float, seed: Seed) -> np.ndarray:
    """design @ weights + N(0, noise_std^2) noise; weights [d] gives [n], weights [d, chains] gives [n, chains]."""
    mean = design @ weights
    return mean + noise_std * np.random.default_rng(seed).standard_normal(mean.shape)


def cycled(design: np.ndarray, n: int) -> np.ndarray:
    """n design rows, cycling through the T rows in order: n = T is the design itself, as the papers relabel it."""
    return design[np.arange(n) % len(design)]


def rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Samples as the loop stores them: [n, d + 1], inputs then label."""
    return np.column_stack([x, y])


def fit_ols(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares weights [d] (or [d, chains] for y [n, chains]); ValueError when X'X is singular."""
    weights, _, rank, _ = np.linalg.lstsq(x, y, rcond=None)
    if rank < x.shape[1]:
        raise ValueError(f"the {len(x)} training rows span fewer than d={x.shape[1]} dimensions")
    return weights


def param_error(weights: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """||w_hat - w*||^2, one value per chain."""
    diff = weights - (truth if weights.ndim == 1 else truth[:, None])
    return np.sum(diff * diff, axis=0)


def theory_factor(regime: str, mix: float, generation: int) -> float:
    """c_g with E||w_g - w*||^2 = sigma^2 tr((X'X)^-1) c_g; nan where no closed form holds (docs/metrics.md).

    Exact only when every source in the training set is a full copy of the design (mix 0 or 1):
    a random subset of rows (0 < mix < 1, accumulate_subsample) weights the sources unequally.
    """
    if generation == 0 or (mix == 1.0 and regime in ("replace", "fresh")):  # a fit of real labels only
        return 1.0
    if mix == 0.0 and regime == "replace":
        return float(generation + 1)
    if mix == 1.0 and regime == "accumulate":
        return float(np.sum(1.0 / np.arange(1, generation + 2) ** 2))
    return float("nan")


def inverse_gram_trace(design: np.ndarray) -> float:
    """tr((X'X)^-1): the design's share of the OLS error (E over designs: d / (T - d - 1))."""
    return float(np.trace(np.linalg.inv(design.T @ design)))


def rare_inputs(test_x: np.ndarray) -> np.ndarray:
    """Indices of the rare test inputs: the outer TAIL_MASS of the test design by norm (high leverage)."""
    norms = np.linalg.norm(test_x, axis=1)
    return np.flatnonzero(norms >= np.quantile(norms, 1 - TAIL_MASS))


def tail_coverage(weights: np.ndarray, truth: np.ndarray, rare_x: np.ndarray, noise_std: float) -> tuple[float, float]:
    """(share of rare inputs whose prediction lies within BAND_Z sigma of the true mean, its binomial s.e.)."""
    covered = np.abs(rare_x @ (weights - truth)) <= BAND_Z * noise_std
    share = float(covered.mean())
    return share, binomial_se(share, len(covered))


def error_figure(rows: list[dict], path: Path) -> Path:
    """||w_hat - w*||^2 by generation beside the closed forms (given this design and over designs)."""
    fig, ax = plots.pyplot().subplots(figsize=(5, 3.4))
    generations = [row["generation"] for row in rows]
    ax.plot(generations, [row["param_error"] for row in rows], lw=1, label="measured ||w_hat - w*||^2")
    for key, style, label in (("mse_theory", "--", "closed form, this design"),
                              ("mse_theory_avg", ":", "closed form, over designs")):
        values = [np.nan if row.get(key) is None else row[key] for row in rows]
        if np.isfinite(values).any():
            ax.plot(generations, values, style, color="k", lw=1, label=label)
    ax.set_yscale("log")
    return plots.finish(fig, ax, path, plots.GENERATION, "||w_hat - w*||^2 (log scale)",
                        "linear regression: parameter error vs theory")
