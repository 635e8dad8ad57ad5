"""Curation between a generation's samples and later training sets, for every family.

    family.curate (the family's own filters: the LM's text filters; others keep every sample)
      -> curate.method on what they kept:
           none      nothing more
           verifier  keep the best-scored curate.keep of them (Feng et al. 2024), optionally through
                     a noisy verifier (curate.noise)
           tail      draw as many rows, with replacement, with weights density^(-1/temperature)
                     capped at curate.cap times the mean weight: rare samples come back more often
           review    a reviewer's verdicts (experiment/review.py): the run stops until they are in

A sample's score is a log-likelihood (higher: more plausible), by curate.score:
    truth  Family.truth_scores: the true distribution's (GMM density, linreg's true labels, the
           categorical p, the builtin language's transitions; the VAE: the digits classifier's confidence)
    model  Family.model_scores: measure's per-sample scores (LM and VAE: under the generation-0 model)
    auto   truth where the family knows it, else model
Weights are realised by resampling (indices with repeats), so every family's fit takes them unchanged.
Report keys are defined in docs/metrics.md ("Curation").
"""

from __future__ import annotations

from typing import Any

import numpy as np

from collapse_cli.errors import CollapseError
from collapse_cli.experiment import review
from collapse_cli.families.base import Curated, Family


def curate(family: Family, cfg: Any, samples: np.ndarray, scores: np.ndarray, seed: int, last: bool) -> Curated:
    """The rows of `samples` that enter later training sets (repeats allowed) and the report. `last`: the run's
    last generation, whose samples no generation trains on (review offers them to nobody)."""
    filtered = family.curate(samples, scores, seed)
    if cfg.method == "none" or (cfg.method == "review" and last):
        return filtered
    if cfg.method == "review":
        return review.awaiting(filtered)
    kept = filtered.indices
    quality = sample_scores(family, cfg.score, samples[kept], np.asarray(scores)[kept])
    rng = np.random.default_rng([seed, 1])  # a stream of its own: the family's filters drew from `seed`
    if cfg.method == "verifier":
        chosen, report = verify(quality, cfg.keep, cfg.noise, rng)
    else:
        chosen, report = tail_resample(quality, cfg.temperature, cfg.cap, rng)
    indices = kept[chosen]
    report.update(curate_kept=len(indices), curate_kept_distinct=len(np.unique(indices)))
    return Curated(indices.astype(np.int64), {**filtered.report, **report})


def sample_scores(family: Family, score: str, samples: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Each sample's log-likelihood by curate.score (see the module docstring), float64 [n], finite."""
    truth = family.truth_scores(samples) if score in ("auto", "truth") else None
    if score == "truth" and truth is None:
        raise CollapseError(f"curate.score=truth: model.family={family.name} with dataset={family.cfg.dataset.name} "
                            f"knows no true distribution; use curate.score=model (or auto)")
    quality = np.asarray(truth if truth is not None else family.model_scores(measured), dtype=np.float64)
    if quality.shape != (len(samples),) or not np.isfinite(quality).all():
        raise CollapseError(f"curate.score={score}: model.family={family.name} gave {quality.shape} scores, not one "
                            f"finite score per sample; use another curate.score")
    return quality


def verify(quality: np.ndarray, keep: float, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """The positions of the round(keep * n) best (noisy) scores, in sample order, and the report.

    The verifier sees quality + noise * std(quality) * z, z ~ N(0, 1): noise 0 is a perfect verifier,
    and a large noise a random subsample. `curate_verifier_agreement` is the share of the kept rows a
    perfect verifier would also keep."""
    n = len(quality)
    n_keep = max(1, int(round(keep * n)))
    seen = quality + noise * quality.std() * rng.standard_normal(n) if noise > 0 else quality
    chosen = np.sort(np.argsort(-seen, kind="stable")[:n_keep])
    perfect = np.argsort(-quality, kind="stable")[:n_keep]
    agreement = len(np.intersect1d(chosen, perfect)) / n_keep
    return chosen, {"curate_verifier_agreement": agreement,
                    "curate_score_mean": float(quality.mean()), "curate_score_kept_mean": float(quality[chosen].mean())}


def tail_weights(quality: np.ndarray, temperature: float, cap: float) -> np.ndarray:
    """density^(-1/temperature) = exp(-quality / temperature), scaled to mean 1, then capped at `cap`."""
    log_w = -quality / temperature
    weights = np.exp(log_w - log_w.max())  # in (0, 1]: no overflow however far apart the scores are
    return np.minimum(weights / weights.mean(), cap)


def effective_sample_size(weights: np.ndarray) -> float:
    """Kish's effective sample size (sum w)^2 / sum w^2: n for equal weights, 1 for one weight alone."""
    return float(weights.sum() ** 2 / np.square(weights).sum())


def tail_resample(quality: np.ndarray, temperature: float, cap: float,
                  rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """n positions drawn with replacement, P proportional to tail_weights, and the report."""
    n = len(quality)
    weights = tail_weights(quality, temperature, cap)
    chosen = np.sort(rng.choice(n, size=n, replace=True, p=weights / weights.sum()))
    ess = effective_sample_size(weights)
    return chosen, {"curate_ess": ess, "curate_ess_fraction": ess / n,
                    "curate_capped_fraction": float(np.mean(weights >= cap)),
                    "curate_score_mean": float(quality.mean()), "curate_score_kept_mean": float(quality[chosen].mean())}
