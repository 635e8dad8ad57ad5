"""Statistics every family's metrics share: standard errors, and the early-warning verdict built on them.

Pure numpy and the standard library (no torch, no global state): randomness only enters through an
explicit ``seed``. Undefined values (too few items) are ``nan``, never 0. docs/metrics.md gives the rule.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np


def as_floats(values: Iterable[float]) -> np.ndarray:
    """Any iterable (generators included) as a 1-D float64 array."""
    array = values if isinstance(values, np.ndarray) else list(values)
    return np.asarray(array, dtype=np.float64).ravel()


def bootstrap_se(per_item_values: Iterable[float], seed: int, n_boot: int = 200) -> float:
    """Bootstrap standard error of the mean (resampling items with replacement)."""
    values = as_floats(per_item_values)
    if values.size < 2 or n_boot < 2:
        return float("nan")
    rng = np.random.default_rng(seed)
    # Chunked so 200 x 100k items never materialises a 20M index matrix at once.
    chunks = [min(50, n_boot - start) for start in range(0, n_boot, 50)]
    means = np.concatenate([
        values[rng.integers(0, values.size, size=(rows, values.size))].mean(axis=1)
        for rows in chunks
    ])
    return float(np.std(means, ddof=1))


def mean_se(per_item_values: Iterable[float]) -> float:
    """Standard error of a mean: std (ddof = 1) / sqrt(n); nan with fewer than two items."""
    values = as_floats(per_item_values)
    return float(values.std(ddof=1) / math.sqrt(values.size)) if values.size >= 2 else float("nan")


def binomial_se(share: float, n: int) -> float:
    """sqrt(p (1 - p) / n): standard error of a share p of n items; nan when n is 0 or p is nan."""
    return math.sqrt(max(share * (1 - share), 0.0) / n) if n and not math.isnan(share) else float("nan")


# --------------------------------------------------------------------------
# Early warning: does tail loss show before the likelihood headline moves?
# --------------------------------------------------------------------------


def first_departure(
    values_by_generation: Sequence[float], noise_by_generation: Sequence[float], z: float = 2.0
) -> int | None:
    """First g >= 1 with |v_g - v_0| > z * sqrt(se_0^2 + se_g^2); None if none.

    Generations whose value or noise is nan are skipped (no evidence either way).
    """
    if len(values_by_generation) == 0:
        return None
    base, base_se = values_by_generation[0], noise_by_generation[0]
    for g in range(1, len(values_by_generation)):
        diff = abs(values_by_generation[g] - base)
        band = z * math.sqrt(base_se**2 + noise_by_generation[g] ** 2)
        if not (math.isnan(diff) or math.isnan(band)) and diff > band:
            return g
    return None


def _verdict_text(tail_gen: int | None, ppl_gen: int | None, headline: str = "test perplexity") -> str:
    """One sentence; `headline` names the likelihood metric in lower case ("test perplexity", "test NLL")."""
    capital = headline[:1].upper() + headline[1:]
    if tail_gen is None and ppl_gen is None:
        return f"Neither tail coverage nor {headline} departed from generation 0 beyond noise."
    if ppl_gen is None:
        return f"Tail coverage departed at generation {tail_gen}; {headline} never did."
    if tail_gen is None:
        return f"{capital} departed at generation {ppl_gen}; tail coverage never did."
    if tail_gen == ppl_gen:
        return f"Tail coverage and {headline} departed together at generation {tail_gen}."
    first, second, lead = (
        ("Tail coverage", headline, ppl_gen - tail_gen) if tail_gen < ppl_gen
        else (capital, "tail coverage", tail_gen - ppl_gen)
    )
    return (f"{first} departed at generation {min(tail_gen, ppl_gen)}, {lead} generation(s) "
            f"before {second} (generation {max(tail_gen, ppl_gen)}).")


def early_warning_verdict(
    tail_series: Sequence[float], tail_noise: Sequence[float],
    ppl_series: Sequence[float], ppl_noise: Sequence[float], z: float = 2.0,
    headline: str = "test perplexity",
) -> dict:
    """first_tail_gen, first_likelihood_gen, gap (= likelihood - tail; None if either is None), headline, text.

    ppl_series is the family's likelihood headline (LM: ppl_test; GMM, VAE: nll_test), named
    `headline` in the text. Summaries written before the key's rename call it `first_ppl_gen`.
    """
    tail_gen = first_departure(tail_series, tail_noise, z)
    ppl_gen = first_departure(ppl_series, ppl_noise, z)
    gap = None if tail_gen is None or ppl_gen is None else ppl_gen - tail_gen
    return {"first_tail_gen": tail_gen, "first_likelihood_gen": ppl_gen, "gap": gap, "headline": headline,
            "text": _verdict_text(tail_gen, ppl_gen, headline)}
