"""Sample-quality metrics of point sets, one definition each for every point and image family.

Inputs are float arrays [n, d] of one point per row: 2-D families pass raw coordinates, image families
the features of their fixed classifier. Everything here is a pure function (no RNG, no state);
docs/metrics.md gives each definition and its source.

- precision, recall: Kynkäänniemi et al. 2019 (k-NN manifolds: the union of balls around each point
  reaching its k-th nearest neighbour in its own set);
- density, coverage: Naeem et al. 2020 (the real points' balls only, so fake outliers cannot inflate them);
- frechet_distance: the Fréchet (2-Wasserstein) distance between Gaussians fitted to two feature sets (FID's);
- mode_metrics (high_quality, modes_covered): mixtures with known mode centres, a sample within 3 sigma of a
  centre is high quality (Srivastava et al. 2017, VEEGAN; Metz et al. 2017);
- tail_coverage: coverage restricted to the rare real points, with its binomial standard error;
- RealReference: a family's fixed real points prepared once, all of the above from one distance matrix.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy.spatial import cKDTree
from scipy.spatial.distance import cdist

from collapse_cli.measure.stats import binomial_se

NEAREST_K = 5  # Naeem et al.'s k for density and coverage; one k for all four manifold metrics
TAIL_SHARE = 0.1  # the rare real points: the tenth with the largest k-NN radius (the lowest k-NN density)
HIGH_QUALITY_SIGMAS = 3.0  # a high-quality sample lies within 3 sigma of a mode centre
CHUNK_CELLS = 4_000_000  # distance-matrix cells held at once (32 MB of float64)
# Families measure the first MAX_POINTS real test points against the first MAX_POINTS samples (rows are in
# random order, so these are random subsets): the cost per generation stays bounded (one 5,000 x 5,000 matrix).
MAX_POINTS = 5000


def squared_distance_chunks(queries: np.ndarray, points: np.ndarray) -> Iterator[tuple[slice, np.ndarray]]:
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
    """Distance from each point to its k-th nearest neighbour in the same set (itself not counted), [n].
    A k-d tree: in 2-D several times faster than the full distance matrix, and as fast in 64-D."""
    points = _as_points(points)
    if not 1 <= k < len(points):
        raise ValueError(f"k={k} must be from 1 to n - 1 = {len(points) - 1}")
    distances, _ = cKDTree(points).query(points, k + 1)  # column 0 holds the point itself (distance 0)
    return distances[:, k]


@dataclass
class BallRelations:
    """Which points lie in which k-NN balls, from one pass over the fake-by-real distance matrix."""

    in_real_balls: np.ndarray  # [n_fake] int: real balls holding each fake point (precision, density)
    real_covered: np.ndarray  # [n_real] bool: the real point's ball holds a fake point (coverage, tail_coverage)
    real_in_fake: Optional[np.ndarray]  # [n_real] bool: the real point lies in a fake ball (recall); None: not asked


def ball_relations(real: np.ndarray, real_radii: np.ndarray, fake: np.ndarray,
                   fake_radii: Optional[np.ndarray] = None) -> BallRelations:
    """All three relations at the cost of one distance matrix, computed in row chunks (memory stays bounded);
    the fake balls' relation only when `fake_radii` is given."""
    real, fake = _as_points(real), _as_points(fake)
    in_real = np.zeros(len(fake), dtype=np.int64)
    covered = np.zeros(len(real), dtype=bool)
    in_fake = None if fake_radii is None else np.zeros(len(real), dtype=bool)
    real_squared = np.asarray(real_radii, dtype=np.float64) ** 2
    for rows, d2 in squared_distance_chunks(fake, real):
        inside = d2 <= real_squared[None, :]
        in_real[rows] = inside.sum(axis=1)
        covered |= inside.any(axis=0)
        if in_fake is not None:
            in_fake |= (d2 <= fake_radii[rows, None] ** 2).any(axis=0)
    return BallRelations(in_real, covered, in_fake)


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = NEAREST_K) -> tuple[float, float]:
    """(precision: share of fake points inside the real k-NN manifold,
        recall: share of real points inside the fake k-NN manifold). Kynkäänniemi et al. 2019."""
    rel = ball_relations(real, knn_radii(real, k), fake, knn_radii(fake, k))
    return float(np.mean(rel.in_real_balls > 0)), float(np.mean(rel.real_in_fake))


def density_coverage(real: np.ndarray, fake: np.ndarray, k: int = NEAREST_K,
                     radii: Optional[np.ndarray] = None) -> tuple[float, float]:
    """(density: real balls holding each fake point, summed, / (k * n_fake) -- 1 on average when fake ~ real;
        coverage: share of real points whose ball holds a fake point). Naeem et al. 2020.
    `radii`: the real points' knn_radii(real, k) when the caller already has them."""
    rel = ball_relations(real, knn_radii(real, k) if radii is None else radii, fake)
    return float(rel.in_real_balls.sum() / (k * len(rel.in_real_balls))), float(rel.real_covered.mean())


def point_metrics(real: np.ndarray, fake: np.ndarray, k: int = NEAREST_K, radii: Optional[np.ndarray] = None,
                  rare: Optional[np.ndarray] = None) -> dict[str, float]:
    """precision, recall, density, coverage and frechet under their metrics-file keys, from one distance
    matrix; with `rare` (rare_points of real) also tail_coverage and tail_coverage_se.
    `radii`: knn_radii(real, k) when the caller already has them (the real set is fixed across generations)."""
    rel = ball_relations(real, knn_radii(real, k) if radii is None else radii, fake, knn_radii(fake, k))
    out = {"precision": float(np.mean(rel.in_real_balls > 0)), "recall": float(np.mean(rel.real_in_fake)),
           "density": float(rel.in_real_balls.sum() / (k * len(rel.in_real_balls))),
           "coverage": float(rel.real_covered.mean()), "frechet": frechet_distance(real, fake)}
    if rare is not None:
        out["tail_coverage"] = float(rel.real_covered[rare].mean())
        out["tail_coverage_se"] = binomial_se(out["tail_coverage"], len(rare))
    return out


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
    real = _as_points(real)
    radii = knn_radii(real, k) if radii is None else radii
    share = float(ball_relations(real[rare], radii[rare], fake).real_covered.mean())
    return share, binomial_se(share, len(rare))


@dataclass(frozen=True)
class RealReference:
    """A family's fixed real points, prepared once a run: the first MAX_POINTS rows, their k-NN radii and
    the rare ones among them. `measure` scores one generation's samples against them."""

    points: np.ndarray
    radii: np.ndarray
    rare: np.ndarray

    def measure(self, fake: np.ndarray, tail: bool = True) -> dict[str, float]:
        """point_metrics of the first MAX_POINTS fake rows (with tail_coverage unless tail=False);
        {} when there are too few fake points for a k-NN ball."""
        if len(fake) <= NEAREST_K:
            return {}
        return point_metrics(self.points, fake[:MAX_POINTS], radii=self.radii, rare=self.rare if tail else None)


def real_reference(real: np.ndarray) -> Optional[RealReference]:
    """The RealReference of a real test set; None when it has too few points for a k-NN ball (k + 1)."""
    points = _as_points(real)[:MAX_POINTS]
    if len(points) <= NEAREST_K:
        return None
    return RealReference(points, knn_radii(points), rare_points(points))
