"""The shared digits module's instrument: the classifier's features and the Fréchet distance against closed forms."""

from __future__ import annotations

import numpy as np
import pytest

from collapse_cli.families import digits as digit_data
from collapse_cli.measure.frechet import frechet_distance


def _with_moments(mean: np.ndarray, cov: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n points whose sample mean and (ddof 1) covariance are exactly `mean` and `cov`."""
    raw = np.random.default_rng(seed).standard_normal((n, len(mean)))
    raw -= raw.mean(axis=0)
    whitened = raw @ np.linalg.inv(np.linalg.cholesky(np.atleast_2d(np.cov(raw, rowvar=False)))).T
    return mean + whitened @ np.linalg.cholesky(cov).T


def test_frechet_distance_is_the_gaussian_w2_closed_form():
    # 1-D: (m_a - m_b)^2 + (s_a - s_b)^2 = (0 - 2)^2 + (1 - 2)^2 = 5
    a = _with_moments(np.zeros(1), np.eye(1), 500, 0)
    b = _with_moments(np.array([2.0]), np.array([[4.0]]), 300, 1)
    assert frechet_distance(a, b) == pytest.approx(5.0, rel=1e-9)
    # Commuting (diagonal) covariances: |dm|^2 + sum (sqrt(l_a) - sqrt(l_b))^2
    cov_a, cov_b = np.diag([1.0, 9.0, 0.25]), np.diag([4.0, 1.0, 0.25])
    mean_b = np.array([1.0, -1.0, 0.5])
    a, b = _with_moments(np.zeros(3), cov_a, 400, 2), _with_moments(mean_b, cov_b, 400, 3)
    expected = mean_b @ mean_b + (1 - 2) ** 2 + (3 - 1) ** 2 + 0.0
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-8)


def test_frechet_distance_of_a_collapsed_set_is_finite():
    """All samples one image (a fully collapsed generation): a zero covariance, still a finite distance."""
    a = _with_moments(np.zeros(2), np.diag([1.0, 4.0]), 200, 4)
    point = np.tile([[3.0, 4.0]], (50, 1))
    assert frechet_distance(a, point) == pytest.approx(25.0 + 1.0 + 4.0, rel=1e-6)


def test_features_are_the_classifiers_logits_and_see_collapse():
    split = digit_data.load_digits_split(0.2, seed=0)
    classifier = digit_data.train_classifier(split.train, split.train_labels, seed=0)
    logits = digit_data.features(classifier, split.test)
    assert logits.shape == (len(split.test), 10) and logits.dtype == np.float64
    np.testing.assert_array_equal(logits.argmax(axis=1), classifier.predict(split.test))
    floor = digit_data.frechet_to_real(classifier, split.train, split.test)
    ones = split.train[split.train_labels == 1]
    # Real test digits sit far closer to the real training digits than a set holding one class only.
    assert floor * 10 < digit_data.frechet_to_real(classifier, split.train, ones)
