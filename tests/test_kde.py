"""The KDE family (model=kde, dataset=toy2d): the density against scikit-learn's, sampling against its moments,
replace's variance law with a fixed bandwidth, a real run with its figures, kill -9 at every write, bad keys."""

from __future__ import annotations

import json
import math
import signal

import numpy as np
import pytest
from conftest import read_metrics, read_status, run_in_process, stable
from test_integrity import LAST, ONCE_AT_THE_END, VARYING, files_of, killed_in_a_fork
from test_linreg import within_99

from collapse_cli.compose import compose as composed
from collapse_cli.families import toy2d
from collapse_cli.families.kde import core
from collapse_cli.families.kde.core import BandwidthRule
from collapse_cli.families.kde.family import KDEFamily
from collapse_cli.killpoint import WRITES
from collapse_cli.measure import points as P

KDE = ["model=kde", "dataset=toy2d"]
SMALL = [*KDE, "dataset.name=ring8", "dataset.n_train=200", "dataset.n_test=200"]


def test_log_density_is_scikit_learns_kernel_density():
    from sklearn.neighbors import KernelDensity

    points = np.random.default_rng(0).standard_normal((300, 2))
    x = np.random.default_rng(1).standard_normal((50, 2)) * 2
    expected = KernelDensity(kernel="gaussian", bandwidth=0.3).fit(points).score_samples(x)
    np.testing.assert_allclose(core.log_density(points, 0.3, x), expected, rtol=1e-8)  # sklearn sums over a tree


def test_bandwidth_rules_by_hand():
    points = np.array([[0.0, 0], [2, 0], [0, 2], [2, 2]])  # per-axis variance (ddof 1) 4/3
    s = math.sqrt(4 / 3)
    assert core.bandwidth(points, BandwidthRule.scott, 9.0) == pytest.approx(s * 4 ** (-1 / 6))
    assert core.bandwidth(points, BandwidthRule.silverman, 9.0) == pytest.approx(s * (4 * 4 / 4) ** (-1 / 6))
    assert core.bandwidth(points, BandwidthRule.fixed, 9.0) == 9.0


def test_the_leave_one_out_likelihood_by_hand():
    points = np.array([[0.0], [1.5]])  # each point scored by the other alone: log N(1.5; 0, h^2)
    h = 0.7
    expected = -1.5**2 / (2 * h * h) - 0.5 * math.log(2 * math.pi * h * h)
    assert core.loo_log_likelihoods(points, np.array([h]))[0] == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(core.logsumexp_rows(np.array([[0.0, -np.inf], [-1000.0, -1000.0]])),
                               [0.0, -1000.0 + math.log(2)])


def test_cross_validation_follows_the_ring_where_the_rules_of_thumb_smear_it():
    ring = toy2d.make_toy("ring8", 1000, None, seed=0).astype(np.float64)
    scott = core.bandwidth(ring, BandwidthRule.scott, 0.0)
    cv = core.bandwidth(ring, BandwidthRule.cv, 0.0, seed=5)
    assert cv == core.bandwidth(ring, BandwidthRule.cv, 0.0, seed=5)  # seeded
    assert scott > 0.4 and 0.005 < cv < 0.05  # each mode's std is 0.02
    # The chosen h scores the held-out real points better than Scott's.
    test = toy2d.make_toy("ring8", 500, None, seed=1)
    assert core.log_density(ring, cv, test).mean() > core.log_density(ring, scott, test).mean() + 2


def test_a_sample_has_the_points_mean_and_their_covariance_plus_h_squared():
    points = np.array([[0.0, 0], [3, 1], [-1, 2]])
    h, n = 0.5, 200_000
    draws = core.sample(points, h, n, seed=4).astype(np.float64)
    assert draws.dtype == np.float64 and core.sample(points, h, 5, 4).dtype == np.float32
    expected_cov = np.cov(points.T, ddof=0) + h * h * np.eye(2)
    np.testing.assert_allclose(draws.mean(axis=0), points.mean(axis=0), atol=4 * math.sqrt(expected_cov.max() / n))
    np.testing.assert_allclose(np.cov(draws.T), expected_cov, atol=0.03)
    np.testing.assert_array_equal(core.sample(points, h, 10, 4), core.sample(points, h, 10, 4))


def test_replace_with_a_fixed_bandwidth_follows_the_variance_law():
    n, h, generations, chains = 40, 0.3, 6, 2000
    start = toy2d.make_toy("blobs", n, None, seed=0).astype(np.float64)
    v0 = float(np.mean(np.var(start, axis=0)))
    finals = np.empty(chains)
    for chain in range(chains):
        points = start
        for g in range(generations):
            points = core.sample(points, h, n, seed=chain * 100 + g).astype(np.float64)
        finals[chain] = np.mean(np.var(points, axis=0))
    theory = core.variance_theory(v0, h, n, generations)
    assert theory[1] == pytest.approx((1 - 1 / n) * (v0 + h * h))
    assert within_99(finals, theory[-1])
    assert not within_99(finals, v0)  # the law is not the trivial one: the spread really moves


def prepared(*overrides: str) -> KDEFamily:
    family = KDEFamily(composed([*KDE, *overrides]), None)
    real = family.real_data(None)
    family.prepare(real, len(real.train))
    return family


def test_generation_0_fitted_on_the_test_points_scores_them_as_itself():
    family = prepared("dataset.name=ring8", "dataset.n_test=400")
    model = family.build_base_model(0)
    family.fit(model, family.test.astype(np.float32), seed=0, generation=0, on_step=lambda *a: None)
    samples = family.test.astype(np.float32)
    metrics, scores = family.measure(0, model, model, samples, 0, lambda *a: None)
    assert metrics["precision"] == metrics["recall"] == metrics["coverage"] == metrics["tail_coverage"] == 1.0
    assert metrics["frechet"] == pytest.approx(0.0, abs=1e-9)
    assert metrics["modes_covered"] == 8 and metrics["high_quality"] > 0.97  # 1 - exp(-4.5) = 0.989
    assert metrics["nll_test"] == pytest.approx(float(np.mean(scores)))
    assert metrics["tail_coverage_se"] == 0.0 and len(family.reference.rare) == 40


@pytest.mark.slow
def test_a_run_measures_every_generation_and_draws_its_figures(tmp_path):
    run_dir = tmp_path / "run"
    assert run_in_process(["run", *KDE, "generations=3", f"hydra.run.dir={run_dir}"]) == 0
    rows = read_metrics(run_dir)
    assert [row["generation"] for row in rows] == [0, 1, 2, 3]
    family = prepared()
    real = family.real_data(None)
    h0 = rows[0]["bandwidth"]  # the default rule, cv: one of its grid's values, scaled from 500 points to 1,000
    scott = core.bandwidth(real.train.astype(np.float64), BandwidthRule.scott, 0.1)
    assert 0.02 * scott * 0.8 < h0 < 0.5 * scott
    assert rows[0]["nll_test"] == pytest.approx(-core.log_density(real.train.astype(np.float64), h0,
                                                                  family.test).mean())
    samples = np.load(run_dir / "gen_001" / "samples.npy")
    assert rows[1]["precision"] == P.precision_recall(family.test, samples)[0]
    assert rows[3]["nll_test"] > rows[0]["nll_test"]  # replace, mix 0: the estimate spreads away from the data
    assert "modes_covered" not in rows[0]  # moons have no known centres
    summary = json.loads((run_dir / "summary.json").read_text())
    assert "early_warning" in summary and "precision_last" in summary
    for name in ("kde_scatter.png", "kde_curves.png"):
        assert (run_dir / "figures" / name).stat().st_size > 5000


KILL_ARGS = [*SMALL, "generations=2", "regime=accumulate", "mix=1", "checkpoints=all"]


@pytest.fixture(scope="module")
def uninterrupted_kde(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "kde"
    assert run_in_process(["run", *KILL_ARGS, f"hydra.run.dir={run_dir}"]) == 0
    return run_dir


def kde_kill_cases() -> list:
    # checkpoints=all deletes no previous model; the reference is saved by generation 0, status after generation 1.
    return [pytest.param(write, 0 if write in ("reference", "status") else LAST if write in ONCE_AT_THE_END else 1,
                         id=write) for write in WRITES if write != "previous_model_delete"]


@pytest.mark.slow
@pytest.mark.parametrize("write, generation", kde_kill_cases())
def test_a_kill_9_at_every_write_then_resume_ends_as_an_uninterrupted_run(tmp_path, write, generation,
                                                                          uninterrupted_kde):
    run = tmp_path / "run"
    assert killed_in_a_fork(["run", *KILL_ARGS, f"hydra.run.dir={run}"], f"{write}:{generation}") == -signal.SIGKILL
    assert run_in_process(["resume", str(run)]) == 0
    assert read_status(run)["state"] == "finished"
    assert stable(read_metrics(run)) == stable(read_metrics(uninterrupted_kde))
    assert sorted(files_of(run)) == sorted(files_of(uninterrupted_kde))
    assert files_of(run, skip=VARYING) == files_of(uninterrupted_kde, skip=VARYING)


@pytest.mark.parametrize("override, key", [
    ("model.bandwidth=0", "model.bandwidth"), ("model.bandwidth=nan", "model.bandwidth"),
    ("model.bandwidth_rule=gauss", "bandwidth_rule"), ("model.figure_generations=0", "model.figure_generations"),
    ("dataset.name=spiral", "spiral"), ("dataset.noise=-1", "dataset.noise"), ("dataset.n_train=1", "dataset.n_train"),
    ("dataset.n_test=0", "dataset.n_test"), ("dataset.seed=-1", "dataset.seed"), ("+dataset.radius=3", "radius"),
    # names the option a user types: the toys are dataset.name values of dataset=toy2d
    ("dataset=gaussian",
     "reads dataset=toy2d dataset.name=moons|circles|blobs|swiss_roll|ring8, not dataset=gaussian")])
def test_bad_keys_exit_2_with_one_line_naming_the_key(tmp_path, capsys, override, key):
    assert run_in_process(["run", *KDE, override, f"hydra.run.dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and key in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # starts `collapse run` in-process
def test_dry_run_writes_nothing(tmp_path):
    assert run_in_process(["run", *KDE, "dry_run=true", f"hydra.run.dir={tmp_path / 'run'}"]) == 0
    assert not (tmp_path / "run" / "gen_000").exists()
