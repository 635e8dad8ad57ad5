"""Sample-quality metrics of point sets, one definition each for every point and image family.

Inputs are float arrays [n, d] of one point per row: 2-D families pass raw coordinates, image families
the features of their fixed classifier. Everything here is a pure function (no RNG, no state);
docs/metrics.md gives each definition and its source.

- precision, recall: Kynkäänniemi et al. 2019 (k-NN manifolds: the union of balls around each point
  reaching its k-th nearest neighbour in its own set);
- density, coverage: Naeem et al. 2020 (the real manifold only, robust to real outliers);
- frechet_distance: the Fréchet (2-Wasserstein) distance between Gaussians fitted to two feature sets (FID's);
- modes_covered, high_quality_share: mixtures with known mode centres, a sample within 3 sigma of a
  centre is high quality (Srivastava et al. 2017, VEEGAN; Metz et al. 2017);
- tail_coverage: coverage restricted to the rare real points, with its binomial standard error.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Optional

import numpy as np
from scipy.spatial.distance import cdist

from collapse_cli.measure.metrics import binomial_se

NEAREST_K = 5  # Naeem et al.'s k for density and coverage; one k for all four manifold metrics
TAIL_SHARE = 0.1  # the rare real points: the tenth with the largest k-NN radius (the lowest k-NN density)
HIGH_QUALITY_SIGMAS = 3.0  # a high-quality sample lies within 3 sigma of a mode centre
CHUNK_CELLS = 4_000_000  # distance-matrix cells held at once (32 MB of float64)


def _squared_distance_chunks(queries: np.ndarray, points: np.ndarray) -> Iterator[tuple[slice, np.ndarray]]:
    """(rows, squared distances [rows, len(points)]) over row chunks of `queries`: memory stays bounded."""
    step = max(1, CHUNK_CELLS // max(1, len(points)))
    for start in range(0, len(queries), step):
        rows = slice(start, min(start + step, len(queries)))
        yield rows, cdist(queries[rows], points, "sqeuclidean")


def _as_points(x: np.ndarray) -> np.ndarray:
    points = np.asarray(x, dtype=np.float64)
    if points.ndim != 2 or len(points) == 0:
        raise ValueError(f"points must be a non-empty [n, d] array, got shape {points.shape}")
    return points


def knn_radii(points: np.ndarray, k: int = NEAREST_K) -> np.ndarray:
    """Distance from each point to its k-th nearest neighbour in the same set (itself not counted), [n]."""
    points = _as_points(points)
    if not 1 <= k < len(points):
        raise ValueError(f"k={k} must be from 1 to n - 1 = {len(points) - 1}")
    radii = np.empty(len(points))
    for rows, d2 in _squared_distance_chunks(points, points):
        radii[rows] = np.partition(d2, k, axis=1)[:, k]  # index 0 holds the point itself (distance 0)
    return np.sqrt(radii)


def _inside_counts(queries: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(for each query, how many balls B(centre, radius) hold it [len(queries)];
        for each ball, whether any query lies in it [len(centres)])."""
    counts = np.zeros(len(queries), dtype=np.int64)
    hit = np.zeros(len(centres), dtype=bool)
    squared = radii**2
    for rows, d2 in _squared_distance_chunks(queries, centres):
        inside = d2 <= squared[None, :]
        counts[rows] = inside.sum(axis=1)
        hit |= inside.any(axis=0)
    return counts, hit


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = NEAREST_K) -> tuple[float, float]:
    """(precision: share of fake points inside the real k-NN manifold,
        recall: share of real points inside the fake k-NN manifold). Kynkäänniemi et al. 2019."""
    real, fake = _as_points(real), _as_points(fake)
    in_real, _ = _inside_counts(fake, real, knn_radii(real, k))
    in_fake, _ = _inside_counts(real, fake, knn_radii(fake, k))
    return float(np.mean(in_real > 0)), float(np.mean(in_fake > 0))


def density_coverage(real: np.ndarray, fake: np.ndarray, k: int = NEAREST_K,
                     radii: Optional[np.ndarray] = None) -> tuple[float, float]:
    """(density: real balls holding each fake point, summed, / (k * n_fake) -- 1 on average when fake ~ real;
        coverage: share of real points whose ball holds a fake point). Naeem et al. 2020.
    `radii`: the real points' knn_radii(real, k) when the caller already has them."""
    real, fake = _as_points(real), _as_points(fake)
    counts, hit = _inside_counts(fake, real, knn_radii(real, k) if radii is None else radii)
    return float(counts.sum() / (k * len(fake))), float(hit.mean())


def point_metrics(real: np.ndarray, fake: np.ndarray, k: int = NEAREST_K) -> dict[str, float]:
    """The four manifold metrics and the Fréchet distance under their metrics-file keys."""
    precision, recall = precision_recall(real, fake, k)
    density, coverage = density_coverage(real, fake, k)
    return {"precision": precision, "recall": recall, "density": density, "coverage": coverage,
            "frechet": frechet_distance(real, fake)}


def frechet_from_moments(mean_a: np.ndarray, cov_a: np.ndarray, mean_b: np.ndarray, cov_b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)): the squared 2-Wasserstein distance of two Gaussians.

    tr (S_a S_b)^(1/2) is the sum of square roots of the eigenvalues of S_a^(1/2) S_b S_a^(1/2), a symmetric
    PSD matrix: eigvalsh on it is stable where a general matrix square root (scipy's sqrtm) can go complex."""
    cov_a, cov_b = np.atleast_2d(cov_a), np.atleast_2d(cov_b)
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0, None)).sum()
    gap = np.asarray(mean_a, dtype=np.float64) - np.asarray(mean_b, dtype=np.float64)
    return float(max(gap @ gap + np.trace(cov_a) + np.trace(cov_b) - 2 * cross, 0.0))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The Fréchet distance between Gaussians fitted to two feature sets (means, covariances with ddof 1: FID's)."""
    a, b = _as_points(a), _as_points(b)
    return frechet_from_moments(a.mean(axis=0), np.cov(a.T), b.mean(axis=0), np.cov(b.T))


def nearest_mode(samples: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index of each sample's nearest centre [n], its distance to it [n])."""
    d2 = cdist(_as_points(samples), _as_points(centres), "sqeuclidean")
    nearest = d2.argmin(axis=1)
    return nearest, np.sqrt(d2[np.arange(len(d2)), nearest])


def mode_metrics(samples: np.ndarray, centres: np.ndarray, sigma: float, min_count: int = 1) -> dict[str, float]:
    """For a mixture with known centres and per-mode std sigma: `high_quality` is the share of samples within
    HIGH_QUALITY_SIGMAS * sigma of their nearest centre; `modes_covered` counts the centres with at least
    `min_count` high-quality samples (VEEGAN's reading: a mode is captured when samples land on it)."""
    nearest, distance = nearest_mode(samples, centres)
    good = distance <= HIGH_QUALITY_SIGMAS * sigma
    per_mode = np.bincount(nearest[good], minlength=len(centres))
    return {"high_quality": float(good.mean()), "modes_covered": int(np.sum(per_mode >= min_count))}


def rare_points(real: np.ndarray, k: int = NEAREST_K, share: float = TAIL_SHARE) -> np.ndarray:
    """Indices (sorted) of the `share` of real points with the largest k-NN radius -- the lowest k-NN density
    estimate, which needs no model, so GANs and diffusion models have a tail as well-defined as a KDE's."""
    radii = knn_radii(real, k)
    n_rare = max(1, int(round(share * len(radii))))
    return np.sort(np.argsort(-radii, kind="stable")[:n_rare])


def tail_coverage(real: np.ndarray, fake: np.ndarray, rare: np.ndarray, k: int = NEAREST_K,
                  radii: Optional[np.ndarray] = None) -> tuple[float, float]:
    """(share of the rare real points whose k-NN ball holds a fake point, its binomial standard error):
    Naeem's coverage restricted to the tail. `radii`: knn_radii(real, k) when the caller has them."""
    real, fake = _as_points(real), _as_points(fake)
    radii = knn_radii(real, k) if radii is None else radii
    _, hit = _inside_counts(fake, real[rare], radii[rare])
    share = float(hit.mean())
    return share, binomial_se(share, len(rare))
