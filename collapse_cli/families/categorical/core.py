"""A discrete distribution collapsing on its own samples: Zipf over K outcomes, refitted by counting.

Each generation estimates p_hat = counts / N from its N training draws and samples N draws from p_hat.
An outcome once unseen has p_hat = 0 and never returns: the long tail goes extinct. Per outcome the
count is marginally a neutral Wright-Fisher chain, X_{g+1} | X_g ~ Binomial(N, X_g / N), so the
expected number of survivors is a sum of one-outcome absorption probabilities (docs/metrics.md):
    E survivors_g = sum_i P(X_g^(i) > 0) = sum_i (1 - h_g[X_0^(i)]),  h_g = M^g e_0,
    M[j, k] = Binomial(k; N, j / N),  h_g[j] = P(X_g = 0 | X_0 = j).
The multinomial couples the outcomes, but an expectation of a sum needs only the marginals.

Functions take counts as [K] or [chains, K]: the family runs one chain, the tests thousands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from scipy import stats

from collapse_cli.families import plots
from collapse_cli.measure.stats import binomial_se

SAMPLE_DTYPE = np.int64
TAIL_MASS = 0.1  # the rare outcomes: the least likely ones, together holding 10% of the true mass


def zipf(n_outcomes: int, exponent: float) -> np.ndarray:
    """p_i proportional to i^-exponent, i = 1..K (rank 1 the most likely)."""
    weights = np.arange(1, n_outcomes + 1, dtype=np.float64) ** -exponent
    return weights / weights.sum()


def draw_counts(probs: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Counts of n draws from probs ([K] -> [K]; [chains, K] -> [chains, K], one multinomial a row)."""
    return rng.multinomial(n, probs)


def rows_from_counts(counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The draws themselves, int64 [n, 1] in random order (so any subset of rows is a random subsample)."""
    outcomes = np.repeat(np.arange(len(counts)), counts)
    return rng.permutation(outcomes).astype(SAMPLE_DTYPE)[:, None]


def estimate(rows: np.ndarray, n_outcomes: int, weights: Optional[np.ndarray] = None) -> np.ndarray:
    """p_hat: each outcome's share of the rows (the maximum-likelihood estimate), of their weights if given."""
    if weights is None:
        return np.bincount(rows[:, 0], minlength=n_outcomes) / len(rows)
    return np.bincount(rows[:, 0], weights=weights, minlength=n_outcomes) / weights.sum()


def wright_fisher_matrix(n: int) -> np.ndarray:
    """M[j, k] = P(k copies next generation | j now) = Binomial(k; n, j / n), [n + 1, n + 1]."""
    states = np.arange(n + 1)
    return stats.binom.pmf(states[None, :], n, states[:, None] / n)


def expected_survivors(real_counts: np.ndarray, probs: np.ndarray, generations: int) -> tuple[np.ndarray, np.ndarray]:
    """E survivors_g for g = 0..generations: given generation 0's real counts X_0 ([K], summing to N),
    and averaged over real samples (X_0^(i) ~ Binomial(N, p_i)). O(N^2) a generation, O(N^2) memory.

    h[j] = P(X_g = 0 | X_0 = j) starts as the indicator of j = 0 and steps h <- M h.
    """
    n = int(real_counts.sum())
    matrix = wright_fisher_matrix(n)
    start = stats.binom.pmf(np.arange(n + 1)[None, :], n, probs[:, None])  # [K, N + 1]
    extinct = np.eye(1, n + 1)[0]
    given, averaged = np.empty(generations + 1), np.empty(generations + 1)
    for g in range(generations + 1):
        given[g] = np.sum(1.0 - extinct[real_counts])
        averaged[g] = np.sum(1.0 - start @ extinct)
        extinct = matrix @ extinct
    return given, averaged


def rare_outcomes(probs: np.ndarray) -> np.ndarray:
    """Indices of the least likely outcomes that together hold TAIL_MASS of the mass (at least one)."""
    order = np.argsort(probs, kind="stable")
    cumulative = np.cumsum(probs[order])
    return np.sort(order[: max(1, int(np.searchsorted(cumulative, TAIL_MASS, side="right")))])


def tail_coverage(p_hat: np.ndarray, rare: np.ndarray) -> tuple[float, float]:
    """(share of the rare outcomes p_hat still gives mass to, its binomial s.e. over the rare outcomes)."""
    share = float(np.mean(p_hat[rare] > 0))
    return share, binomial_se(share, len(rare))


def tv_distance(p: np.ndarray, q: np.ndarray) -> float:
    return float(0.5 * np.abs(p - q).sum())


def kl_model_truth(p_hat: np.ndarray, truth: np.ndarray) -> float:
    """KL(p_hat || p): finite as outcomes die (KL(p || p_hat) is infinite from the first extinction)."""
    kept = p_hat > 0
    return float(np.sum(p_hat[kept] * np.log(p_hat[kept] / truth[kept])))


def rank_frequency_figure(truth: np.ndarray, freqs_by_generation: dict[int, np.ndarray], path: Path) -> Path:
    """Frequency against rank (log-log), the truth and each chosen generation's samples."""
    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ranks = np.arange(1, len(truth) + 1)
    ax.plot(ranks, truth, color="k", lw=1.5, label="truth (Zipf)")
    colours = plt.cm.viridis(np.linspace(0, 0.9, len(freqs_by_generation)))
    for colour, (generation, freqs) in zip(colours, sorted(freqs_by_generation.items())):
        ordered = np.sort(freqs)[::-1]
        alive = ordered > 0
        ax.plot(ranks[alive], ordered[alive], ".-", ms=2, lw=0.8, color=colour,
                label=f"generation {generation} ({int(alive.sum())} outcomes)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    return plots.finish(fig, ax, path, "rank (log scale)", "frequency in the generation's samples (log scale)",
                        "rank-frequency by generation")


def survivors_figure(rows: list[dict], path: Path) -> Path:
    """Surviving outcomes by generation beside the Wright-Fisher expectation."""
    fig, ax = plots.pyplot().subplots(figsize=(5, 3.4))
    generations = [row["generation"] for row in rows]
    ax.plot(generations, [row["survivors"] for row in rows], lw=1, label="measured")
    theory = [np.nan if row.get("survivors_theory") is None else row["survivors_theory"] for row in rows]
    if np.isfinite(theory).any():
        ax.plot(generations, theory, "--", color="k", lw=1, label="Wright-Fisher expectation")
    return plots.finish(fig, ax, path, plots.GENERATION, "outcomes with p_hat > 0", "surviving outcomes vs theory")
