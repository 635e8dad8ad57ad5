"""The shared point metrics (measure/points.py) against hand-computed values; the 2-D toy sets (toy2d.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import linalg

from collapse_cli.errors import CollapseError
from collapse_cli.families import toy2d
from collapse_cli.measure import points as P


def on_x_axis(*xs: float) -> np.ndarray:
    return np.array([[x, 0.0] for x in xs])


# Real points 0, 1, 10, 11, 20, 21 on a line: each one's nearest neighbour is 1 away (k = 1 radii all 1).
REAL = on_x_axis(0, 1, 10, 11, 20, 21)
# Fake points 0.5, 5, 10.2: nearest-fake distances 4.5, 4.5, 5.2.
FAKE = on_x_axis(0.5, 5, 10.2)


def test_knn_radii_count_the_kth_neighbour_not_the_point_itself():
    np.testing.assert_allclose(P.knn_radii(REAL, 1), [1, 1, 1, 1, 1, 1])
    np.testing.assert_allclose(P.knn_radii(REAL, 2), [10, 9, 9, 9, 9, 10])
    np.testing.assert_allclose(P.knn_radii(FAKE, 1), [4.5, 4.5, 5.2])
    with pytest.raises(ValueError, match="k=6"):
        P.knn_radii(REAL, 6)


def test_precision_and_recall_by_hand():
    precision, recall = P.precision_recall(REAL, FAKE, k=1)
    # 0.5 and 10.2 lie within 1 of a real point, 5 does not.
    assert precision == pytest.approx(2 / 3)
    # Fake balls [-4, 5], [0.5, 9.5], [5, 15.4] hold the real 0, 1, 10, 11 but not 20, 21.
    assert recall == pytest.approx(4 / 6)


def test_density_and_coverage_by_hand():
    density, coverage = P.density_coverage(REAL, FAKE, k=1)
    # 0.5 lies in the balls of 0 and 1, 10.2 in those of 10 and 11, 5 in none: 4 / (k * 3).
    assert density == pytest.approx(4 / 3)
    assert coverage == pytest.approx(4 / 6)  # the balls of 20 and 21 hold no fake point
    # The caller's own radii give the same answer.
    assert P.density_coverage(REAL, FAKE, 1, radii=P.knn_radii(REAL, 1)) == (density, coverage)


def test_a_set_against_itself_is_perfect_and_chunking_changes_nothing(monkeypatch):
    x = np.random.default_rng(0).standard_normal((300, 2))
    assert P.precision_recall(x, x) == (1.0, 1.0)
    density, coverage = P.density_coverage(x, x)
    assert coverage == 1.0 and density >= 1.0  # each point lies in its own ball and its k neighbours'
    y = np.random.default_rng(1).standard_normal((200, 2)) * 1.5
    whole = P.point_metrics(x, y)
    monkeypatch.setattr(P, "CHUNK_CELLS", 7)  # a handful of rows at a time
    assert P.point_metrics(x, y) == whole


def test_a_collapsed_fake_set_has_precision_but_no_recall():
    x = np.random.default_rng(0).standard_normal((500, 2))
    collapsed = 0.01 * np.random.default_rng(1).standard_normal((500, 2))  # everything at the centre
    m = P.point_metrics(x, collapsed)
    assert m["precision"] == 1.0 and m["recall"] < 0.05 and m["coverage"] < 0.1


def test_frechet_distance_by_hand():
    a = np.array([[0.0, 0], [2, 0], [0, 2], [2, 2]])  # mean (1, 1), covariance (4/3) I (ddof 1)
    b = 2 * (a - 1) + np.array([4.0, 1])  # mean (4, 1), covariance (16/3) I
    # 3^2 + tr(4/3 I + 16/3 I - 2 (64/9)^(1/2) I) = 9 + 2 (4/3 + 16/3 - 16/3)
    assert P.frechet_distance(a, b) == pytest.approx(9 + 8 / 3, rel=1e-12)
    assert P.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-12)


def test_frechet_of_non_commuting_covariances_matches_the_matrix_square_root():
    cov_a, cov_b = np.diag([1.0, 4.0]), np.array([[2.0, 1.0], [1.0, 2.0]])
    mean_a, mean_b = np.array([0.0, 1.0]), np.array([1.0, -1.0])
    expected = 5 + np.trace(cov_a + cov_b - 2 * linalg.sqrtm(cov_a @ cov_b).real)
    assert P.frechet_from_moments(mean_a, cov_a, mean_b, cov_b) == pytest.approx(expected, rel=1e-10)
    assert P.frechet_from_moments(mean_b, cov_b, mean_a, cov_a) == pytest.approx(expected, rel=1e-10)


def test_mode_metrics_by_hand():
    centres = np.array([[0.0, 0], [10, 0]])
    samples = np.array([[0, 2.9], [0, 3.1], [10, 0.5], [5, 0]])
    # Within 3 sigma = 3: the first (mode 0) and the third (mode 1).
    assert P.mode_metrics(samples, centres, sigma=1.0) == {"high_quality": 0.5, "modes_covered": 2}
    assert P.mode_metrics(samples, centres, sigma=1.0, min_count=2)["modes_covered"] == 0
    assert P.mode_metrics(samples, centres, sigma=1.5)["high_quality"] == 0.75  # 3.1 <= 4.5 < 5


def test_tail_coverage_by_hand():
    real = on_x_axis(0, 1, 10, 11, 20, 23)  # k = 1 radii 1, 1, 1, 1, 3, 3
    rare = P.rare_points(real, k=1, share=1 / 3)
    np.testing.assert_array_equal(rare, [4, 5])
    share, se = P.tail_coverage(real, on_x_axis(0.5, 19.5), rare, k=1)
    assert share == 0.5  # 19.5 lies in 20's ball (radius 3), nothing within 3 of 23
    assert se == pytest.approx(math.sqrt(0.25 / 2))
    assert P.tail_coverage(real, on_x_axis(0.5, 21.5), rare, k=1) == (1.0, 0.0)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="non-empty"):
        P.frechet_distance(np.zeros(3), np.zeros((3, 1)))


# --- the toy sets --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", toy2d.TOY_NAMES)
def test_each_toy_is_seeded_float32_and_two_dimensional(name: str):
    points = toy2d.make_toy(name, 500, None, seed=3)
    assert points.shape == (500, 2) and points.dtype == np.float32
    np.testing.assert_array_equal(points, toy2d.make_toy(name, 500, None, seed=3))
    assert not np.array_equal(points, toy2d.make_toy(name, 500, None, seed=4))


def test_noiseless_toys_lie_on_their_curves():
    moons = toy2d.make_toy("moons", 400, 0.0, 0).astype(np.float64)
    upper, lower = np.linalg.norm(moons, axis=1), np.linalg.norm(moons - [1, 0.5], axis=1)
    assert np.all(np.isclose(upper, 1, atol=1e-6) | np.isclose(lower, 1, atol=1e-6))
    radii = np.linalg.norm(toy2d.make_toy("circles", 400, 0.0, 0), axis=1)
    assert np.all(np.isclose(radii, 1, atol=1e-6) | np.isclose(radii, 0.5, atol=1e-6))
    roll = np.linalg.norm(toy2d.make_toy("swiss_roll", 400, 0.0, 0), axis=1)  # r = 0.1 t, t in [1.5 pi, 4.5 pi]
    assert roll.min() >= 0.15 * np.pi - 1e-6 and roll.max() <= 0.45 * np.pi + 1e-6


@pytest.mark.parametrize("name", ["ring8", "blobs"])
def test_mixtures_sit_on_their_known_centres(name: str):
    centres = toy2d.mode_centres(name)
    sigma = toy2d.noise_of(name, None)
    points = toy2d.make_toy(name, 4000, None, seed=0)
    m = P.mode_metrics(points, centres, sigma)
    assert m["modes_covered"] == len(centres)
    assert m["high_quality"] == pytest.approx(1 - math.exp(-4.5), abs=0.01)  # 2-D: P(|z| <= 3) = 1 - e^(-9/2)
    nearest, _ = P.nearest_mode(points, centres)
    counts = np.bincount(nearest, minlength=len(centres))
    assert counts.min() > 0.8 * len(points) / len(centres)  # equal weights


def test_the_ring_has_eight_modes_on_radius_two_and_curves_have_none():
    ring = toy2d.mode_centres("ring8")
    assert ring.shape == (8, 2)
    np.testing.assert_allclose(np.linalg.norm(ring, axis=1), 2.0)
    assert toy2d.mode_centres("moons") is None and toy2d.mode_centres("swiss_roll") is None


def test_real_data_splits_train_and_test_by_the_dataset_seed():
    d = toy2d.Toy2DDatasetConfig(name="ring8", n_train=100, n_test=50, seed=7)
    real = toy2d.real_data(d, None)
    assert real.train.shape == (100, 2) and real.test.shape == (50, 2)
    assert not np.array_equal(real.train[:50], real.test)
    np.testing.assert_array_equal(toy2d.real_data(d, 300).train.shape, (300, 2))
    np.testing.assert_array_equal(toy2d.real_data(d, None).test, real.test)


@pytest.mark.parametrize("key, value, says", [
    ("name", "spiral", "dataset.name='spiral'"), ("noise", -0.1, "dataset.noise=-0.1"),
    ("noise", float("nan"), "dataset.noise=nan"), ("n_train", 1, "dataset.n_train=1"),
    ("n_test", 10**9, "dataset.n_test=1000000000"), ("seed", -1, "dataset.seed=-1")])
def test_bad_dataset_keys_are_named(key: str, value, says: str):
    d = toy2d.Toy2DDatasetConfig(**{key: value})
    with pytest.raises(CollapseError, match=says.replace(".", r"\.").replace("(", r"\(")):
        toy2d.validate(d)
