"""The Fréchet distance between two sets of points (FID's formula, Heusel et al. 2017), in any feature space.

Each set is summarised by its mean and covariance, and the distance is the 2-Wasserstein distance
between the two Gaussians:  |mu_a - mu_b|^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2)).
Image families measure it in the features of one fixed classifier trained on real digits
(families/digits.features); 2-D point families in the raw coordinates. It is biased upwards for
finite sets (two samples of the same distribution are not at 0), so it is compared across
generations at equal set sizes, with the real-vs-real value as its floor.
"""

from __future__ import annotations

import numpy as np


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The symmetric square root of a covariance (eigenvalues below zero by round-off taken as zero)."""
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Squared 2-Wasserstein distance between Gaussians fitted to rows of `a` [n, d] and `b` [m, d] (float64)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mean_gap = a.mean(axis=0) - b.mean(axis=0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    # tr (C_a C_b)^(1/2) = tr (S C_b S)^(1/2) with S = C_a^(1/2): a symmetric PSD matrix, so eigvalsh holds
    # even for the singular covariance of a collapsed set, where sqrtm of the product warns and drifts.
    root_a = _psd_sqrt(cov_a)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0.0, None)).sum()
    return max(float(mean_gap @ mean_gap + np.trace(cov_a) + np.trace(cov_b) - 2.0 * cross), 0.0)
