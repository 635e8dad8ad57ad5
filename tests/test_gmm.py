"""The Gaussian-mixture core: metrics against hand-computed values, seeded sampling, collapse."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import read_metrics, run_in_process
from omegaconf import OmegaConf
from scipy import special, stats
from test_linreg import within_99

from collapse_cli.compose import compose as composed
from collapse_cli.compose import to_run_config
from collapse_cli.families import plots
from collapse_cli.families.gmm import core
from collapse_cli.families.gmm.family import GMMFamily, GMMModel
from collapse_cli.measure import points as P


def one_d(mean: float, var: float) -> core.Mixture:
    return core.Mixture(np.ones(1), np.array([[mean]]), np.array([[[var]]]))


def grid_l2(p: core.Mixture, q: core.Mixture, half_width: float, points: int) -> float:
    """sqrt(integral (p - q)^2) by a Riemann sum on a regular grid (1-D or 2-D)."""
    axis = np.linspace(-half_width, half_width, points)
    step = axis[1] - axis[0]
    if p.dim == 1:
        grid = axis[:, None]
    else:
        xx, yy = np.meshgrid(axis, axis)
        grid = np.column_stack([xx.ravel(), yy.ravel()])
    diff = np.exp(core.log_density(p, grid)) - np.exp(core.log_density(q, grid))
    return math.sqrt((diff ** 2).sum() * step ** p.dim)


def test_l2_of_two_1d_gaussians_matches_the_hand_formula():
    # Equal variances s^2, means 0 and m: integral (p-q)^2 = 2 (1 - exp(-m^2 / 4s^2)) / (2 s sqrt(pi)).
    s, m = 0.7, 1.3
    expected = math.sqrt(2 * (1 - math.exp(-m * m / (4 * s * s))) / (2 * s * math.sqrt(math.pi)))
    assert core.l2_distance(one_d(0, s * s), one_d(m, s * s)) == pytest.approx(expected, rel=1e-12)
    assert core.l2_distance(one_d(0, 1), one_d(0, 1)) == pytest.approx(0.0, abs=1e-7)


def test_l2_of_2d_mixtures_matches_numeric_integration():
    p = core.make_mixture([0.3, 0.7], [[0, 0], [1.5, -0.5]], [[[1, 0.3], [0.3, 0.5]], [[0.4, 0], [0, 0.8]]])
    q = core.make_mixture([1.0], [[0.2, 0.1]], [[[0.6, -0.1], [-0.1, 0.9]]])
    assert core.l2_distance(p, q) == pytest.approx(grid_l2(p, q, 8.0, 801), rel=1e-4)
    assert core.l2_distance(p, q) == pytest.approx(core.l2_distance(q, p), rel=1e-12)
    # A narrower copy is further from the truth: the paper's L2 grows as the std collapses.
    narrow = core.Mixture(q.weights, q.means, q.covariances * 0.1)
    assert core.l2_distance(q, narrow) > core.l2_distance(q, core.Mixture(q.weights, q.means, q.covariances * 0.5))


def test_component_std_of_known_covariances():
    single = core.make_mixture([1.0], [[0, 0]], [[[4, 0], [0, 1]]])
    assert core.component_std(single) == pytest.approx(math.sqrt(2.5))  # sqrt(mean eigenvalue)
    rotated = core.make_mixture([1.0], [[0, 0]], [[[2.5, 1.5], [1.5, 2.5]]])  # eigenvalues 4 and 1
    assert core.component_std(rotated) == pytest.approx(math.sqrt(2.5))
    two = core.make_mixture([0.25, 0.75], [[0, 0], [5, 5]], [np.eye(2), 9 * np.eye(2)])
    assert core.component_std(two) == pytest.approx(0.25 * 1 + 0.75 * 3)
    assert core.component_std(core.standard_normal(3)) == pytest.approx(1.0)


def test_nll_of_the_standard_normal_by_hand():
    truth = core.standard_normal(2)
    points = np.array([[0.0, 0.0], [1.0, 2.0]])
    expected = [math.log(2 * math.pi), math.log(2 * math.pi) + 0.5 * 5]
    np.testing.assert_allclose(core.nll(truth, points), expected, rtol=1e-12)
    # A two-component mixture: -log(0.5 N(x; 0, 1) + 0.5 N(x; 2, 1)) in 1-D at x = 1.
    mix = core.make_mixture([0.5, 0.5], [[0.0], [2.0]], [[[1.0]], [[1.0]]])
    assert core.nll(mix, np.array([[1.0]]))[0] == pytest.approx(0.5 * math.log(2 * math.pi) + 0.5)


def test_sample_is_seeded_float32_and_follows_the_mixture():
    mix = core.make_mixture([0.2, 0.8], [[-3, 0], [2, 1]], [[[1, 0], [0, 1]], [[0.5, 0.2], [0.2, 0.3]]])
    first, again, other = core.sample(mix, 20000, 7), core.sample(mix, 20000, 7), core.sample(mix, 20000, 8)
    assert first.dtype == np.float32 and first.shape == (20000, 2)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    left = first[first[:, 0] < -0.5]
    assert len(left) / len(first) == pytest.approx(0.2, abs=0.01)
    np.testing.assert_allclose(np.cov(first[first[:, 0] >= -0.5].T), mix.covariances[1], atol=0.03)


def test_fit_recovers_separated_components_and_is_seeded():
    truth = core.make_mixture([0.5, 0.5], [[-4, 0], [4, 0]], [np.eye(2), 0.25 * np.eye(2)])
    rows = core.sample(truth, 4000, 1)
    fitted, stats = core.fit(rows, 2, seed=3)
    order = np.argsort(fitted.means[:, 0])
    np.testing.assert_allclose(fitted.means[order], truth.means, atol=0.1)
    np.testing.assert_allclose(fitted.weights[order], truth.weights, atol=0.03)
    assert stats["fit_converged"] and stats["train_nll"] == pytest.approx(core.nll(fitted, rows).mean(), rel=1e-6)
    refit, _ = core.fit(rows, 2, seed=3)
    np.testing.assert_array_equal(refit.means, fitted.means)


def test_rare_threshold_is_the_outer_5_percent_by_radius_for_one_gaussian():
    truth = core.standard_normal(2)
    threshold = core.rare_threshold(truth, core.sample(truth, 200000, 0))
    radius_95 = math.sqrt(-2 * math.log(0.05))  # chi-square with 2 dof: P(r > R) = exp(-R^2 / 2)
    assert threshold == pytest.approx(-math.log(2 * math.pi) - radius_95 ** 2 / 2, abs=0.03)


def test_tail_coverage_on_constructed_samples():
    truth = core.standard_normal(2)
    threshold = -math.log(2 * math.pi) - 3.0 ** 2 / 2  # the rare region: radius > 3
    inside, outside = np.array([[0.5, 0.0]]), np.array([[0.0, 3.5]])

    def true_log_p(n_inside: int, n_outside: int) -> np.ndarray:
        rows = np.concatenate([np.repeat(inside, n_inside, 0), np.repeat(outside, n_outside, 0)])
        return core.log_density(truth, rows)

    assert core.tail_share(true_log_p(95, 5), threshold) == pytest.approx(0.05)
    assert core.tail_mass_ratio(true_log_p(95, 5), threshold) == pytest.approx(1.0)
    assert core.tail_coverage(true_log_p(98, 2), threshold) == pytest.approx(0.4)
    assert core.tail_mass_ratio(true_log_p(90, 10), threshold) == pytest.approx(2.0)
    assert core.tail_coverage(true_log_p(90, 10), threshold) == 1.0
    assert core.tail_coverage(true_log_p(100, 0), threshold) == 0.0
    assert math.isnan(core.tail_mass_ratio(np.zeros(0), threshold))
    # Binomial s.e. of the tail share, on the coverage scale: sqrt(0.02 * 0.98 / 100) / 0.05 = 0.28
    assert core.tail_coverage_se(true_log_p(98, 2), threshold) == pytest.approx(0.28)
    assert core.tail_coverage_se(true_log_p(100, 0), threshold) == 0.0
    assert math.isnan(core.tail_coverage_se(np.zeros(0), threshold))


def test_tail_coverage_falls_as_the_samples_narrow():
    truth = core.standard_normal(2)
    threshold = core.rare_threshold(truth, core.sample(truth, 1000, 1))
    same = core.tail_coverage(core.log_density(truth, core.sample(truth, 20000, 2)), threshold)
    narrower = core.tail_coverage(core.log_density(truth, 0.7 * core.sample(truth, 20000, 2)), threshold)
    assert same > 0.8 and narrower < 0.3


@pytest.mark.slow  # 200 generations of fit and sample, twice: ~3 s
def test_the_loop_collapses_without_real_data_and_not_with_it():
    """200 generations of fit + sample at the paper's settings: the std falls at mix=0, not at mix=1."""
    truth = core.standard_normal(2)
    real = core.sample(truth, 1000, 0)
    stds = {}
    for share_real in (0.0, 1.0):
        rows = real
        for generation in range(200):
            fitted, _ = core.fit(rows, 2, seed=generation)
            synthetic = core.sample(fitted, 1000, 1000 + generation)
            rows = real if share_real == 1.0 else synthetic
        stds[share_real] = core.component_std(fitted)
    assert stds[0.0] < 0.7 * stds[1.0]
    assert stds[1.0] > 0.8


def test_mixture_files_and_checks(tmp_path):
    mix = core.make_mixture([0.4, 0.6], [[0, 1], [2, 3]], [np.eye(2), 2 * np.eye(2)])
    core.save_mixture(mix, tmp_path / "m.npz")
    back = core.load_mixture(tmp_path / "m.npz")
    for name, array in mix.as_arrays().items():
        np.testing.assert_array_equal(getattr(back, name), array)
    with pytest.raises(ValueError, match="summing to 1"):
        core.make_mixture([0.5, 0.6], [[0, 0], [1, 1]], [np.eye(2), np.eye(2)])
    with pytest.raises(ValueError, match="2x2"):
        core.make_mixture([1.0], [[0, 0]], [np.eye(3)])
    with pytest.raises(ValueError, match="positive definite"):
        core.make_mixture([1.0], [[0, 0]], [[[1, 2], [2, 1]]])


def test_chosen_generations_and_scatter_figure(tmp_path):
    assert plots.chosen_generations(0) == [0]
    picks = plots.chosen_generations(2000)
    assert picks[0] == 0 and picks[-1] == 2000 and len(picks) <= 6 and picks == sorted(set(picks))
    assert plots.chosen_generations(3, count=6) == [0, 1, 2, 3]
    truth = core.standard_normal(2)
    path = core.scatter_figure(truth, {0: core.sample(truth, 300, 0), 5: 0.3 * core.sample(truth, 300, 1)},
                               tmp_path / "figures" / "scatter.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_a_run_recorded_with_the_retired_model_lr_still_resumes_its_config():
    """Runs before the GMM stopped carrying `model.lr: 1.0` (for train.lr's sake) hold it in .hydra/config.yaml."""
    recorded = OmegaConf.create({"model": {"family": "gmm", "lr": 1.0}, "dataset": {"name": "gaussian"},
                                 "train": {"lr": "${oc.select:model.lr,1e-3}"}})
    cfg = to_run_config(recorded)
    assert not hasattr(cfg.model, "lr") and cfg.model.n_components == 2


def test_the_gmm_family_summarizes_a_tail_first_verdict_against_test_nll():
    cfg = to_run_config(OmegaConf.create({"model": {"family": "gmm"}, "dataset": {"name": "gaussian"},
                                            "train": {"lr": 1e-3}}))
    # tail_coverage band 2 * sqrt(2) * 0.1 = 0.283: departs at g2 (diff 0.5); nll_test band 0.141: at g3 (0.3).
    rows = [{"generation": g, "tail_coverage": tail, "tail_coverage_se": 0.1, "nll_test": nll, "nll_test_se": 0.05,
             "component_std": 0.9 - 0.1 * g, "l2sq_to_gen0": 0.01 * g}
            for g, (tail, nll) in enumerate([(1.0, 2.84), (0.9, 2.85), (0.5, 2.94), (0.2, 3.14)])]
    summary = GMMFamily(cfg, None).summarize(None, rows)
    assert (summary["nll_test_first"], summary["tail_coverage_last"]) == (2.84, 0.2)
    # The paper's own figures, first and last.
    assert (summary["component_std_first"], summary["l2sq_to_gen0_last"]) == (0.9, 0.03)
    assert summary["early_warning"] == {
        "first_tail_gen": 2, "first_likelihood_gen": 3, "gap": 1, "headline": "test NLL",
        "text": "Tail coverage departed at generation 2, 1 generation(s) before test NLL (generation 3)."}


@pytest.mark.slow
def test_a_gmm_run_writes_the_standard_errors_and_an_early_warning(tmp_path):
    """30 generations fully synthetic: the verdict compares tail coverage with test NLL, its text names it.

    200 points per generation (not 1,000) so the tails thin out within 30 generations, beyond their noise.
    """
    run_dir = tmp_path / "run"
    code = run_in_process(["run", "model=gmm", "dataset=gaussian", "generations=30", "dataset.n_train=200",
                           f"hydra.run.dir={run_dir}"])
    assert code == 0
    rows = read_metrics(run_dir)
    assert len(rows) == 31
    for row in rows:
        assert row["nll_test_se"] > 0 and math.isfinite(row["nll_test_se"])
        assert row["tail_coverage_se"] >= 0 and math.isfinite(row["tail_coverage_se"])
    warning = json.loads((run_dir / "summary.json").read_text())["early_warning"]
    assert isinstance(warning["first_tail_gen"], int) and 1 <= warning["first_tail_gen"] <= 30
    assert warning["headline"] == "test NLL" and "test NLL" in warning["text"].replace("Test NLL", "test NLL")


def test_l2_squared_is_the_papers_quantity_and_l2_distance_its_root():
    p, q = one_d(0.0, 1.0), one_d(1.0, 2.0)
    # integral (p - q)^2 for 1-D Gaussians: 1/(2 sqrt(pi) s_p) + 1/(2 sqrt(pi) s_q) - 2 N(0; 1, 3).
    expected = 1 / (2 * math.sqrt(math.pi)) + 1 / (2 * math.sqrt(2 * math.pi)) - 2 * math.exp(
        -1 / 6) / math.sqrt(6 * math.pi)
    assert core.l2_squared(p, q) == pytest.approx(expected, rel=1e-12)
    assert core.l2_distance(p, q) == math.sqrt(core.l2_squared(p, q))
    assert core.l2_squared(p, p) == 0.0


def test_unbiased_covariances_are_the_ddof_1_estimate_and_mle_the_ddof_0():
    rows = core.sample(core.standard_normal(2), 12, seed=4)
    data = rows.astype(np.float64)
    for unbiased, ddof in ((False, 0), (True, 1)):
        fitted, stats_ = core.fit(rows, 1, seed=0, reg_covar=1e-6, unbiased=unbiased)
        np.testing.assert_allclose(fitted.covariances[0], np.cov(data.T, ddof=ddof) + 1e-6 * np.eye(2), rtol=1e-9)
        assert stats_["train_nll"] == pytest.approx(core.nll(fitted, rows).mean(), rel=1e-6)  # sklearn: float32
    # Two components: each covariance scaled by n_k / (n_k - 1), n_k = w_k n; means and weights untouched.
    mle, _ = core.fit(core.sample(core.standard_normal(2), 40, seed=5), 2, seed=1)
    rescaled = core.unbiased_covariances(mle, 40, 1e-6)
    for k, n_k in enumerate(mle.weights * 40):
        np.testing.assert_allclose(rescaled.covariances[k] - 1e-6 * np.eye(2),
                                   (mle.covariances[k] - 1e-6 * np.eye(2)) * n_k / (n_k - 1), rtol=1e-12)
    np.testing.assert_array_equal(rescaled.means, mle.means)


def log_variance_steps(compose, variance: str, m: int, chains: int, steps: int) -> np.ndarray:
    """log(sigma_g^2 / sigma_{g-1}^2) of every fit -> sample step, through the family's own fit and sample.

    A 1-D, one-component run (Shumailov et al.'s single-Gaussian setting) with M = dataset.n_train
    points a generation, composed by Hydra; every chain starts from the true N(0, 1).
    """
    cfg = compose(["model=gmm", "dataset=gaussian", "dataset.dim=1", "model.n_components=1",
                    f"dataset.n_train={m}", f"model.variance={variance}"])
    family = GMMFamily(cfg, None)
    ignore = lambda done, total: None  # noqa: E731  (progress callbacks)
    increments = []
    for chain in range(chains):
        parent = GMMModel(family.truth)
        for step in range(steps):
            rows = family.sample(parent, m, seed=chain * 1000 + step, on_batch=ignore)
            child = family.build_base_model(chain)
            family.fit(child, rows, seed=step, generation=step + 1, on_step=ignore)
            increments.append(math.log(child.mixture.covariances[0, 0, 0] / parent.mixture.covariances[0, 0, 0]))
            parent = child
    return np.array(increments)


@pytest.mark.parametrize("variance", ["unbiased", "mle"])
def test_log_variance_falls_per_generation_by_the_closed_form(compose, variance):
    """E[log sigma_{g+1}^2 - log sigma_g^2] = psi((M-1)/2) - log((M-1)/2) for the unbiased fit
    (sigma^2 chi^2_{M-1} / (M-1)), plus log((M-1)/M) for the MLE: checked within a 99% CI from the
    sample variance of 600 steps, and the other estimator's value lies outside it."""
    m = 5
    closed = {"unbiased": special.digamma((m - 1) / 2) - math.log((m - 1) / 2)}
    closed["mle"] = closed["unbiased"] + math.log((m - 1) / m)
    increments = log_variance_steps(compose, variance, m, chains=200, steps=3)
    half_width = stats.t.ppf(0.995, len(increments) - 1) * increments.std(ddof=1) / math.sqrt(len(increments))
    assert abs(increments.mean() - closed[variance]) < half_width
    other = "mle" if variance == "unbiased" else "unbiased"
    assert abs(increments.mean() - closed[other]) > half_width
    # The per-step spread is the closed form's too: Var log chi^2_{M-1} = psi'((M-1)/2).
    assert increments.var(ddof=1) == pytest.approx(special.polygamma(1, (m - 1) / 2), rel=0.2)


def test_shumailov_gmm_is_the_notebooks_setting_and_the_default_is_sklearns(compose):
    paper, default = compose(["+experiment=shumailov_gmm"]), compose(["model=gmm", "dataset=gaussian"])
    assert (paper.model.tol, paper.model.max_iter, paper.model.n_components) == (1e-5, 2000, 2)
    assert (paper.mix, paper.generations, paper.dataset.n_train, paper.dataset.dim) == (0.0, 2000, 1000, 2)
    assert (default.model.tol, default.model.max_iter, default.model.variance) == (1e-3, 100, "mle")

def _gmm_family(compose, *overrides: str) -> GMMFamily:
    return GMMFamily(compose(["model=gmm", "dataset=gaussian", *overrides]), None)


def test_a_fit_that_cannot_go_on_stops_with_one_line_naming_the_generation(compose):
    """The GMM's nan guard: non-finite points, and an EM fit sklearn gives up on, are one line."""
    from collapse_cli.errors import CollapseError

    family = _gmm_family(compose, "model.reg_covar=1e-300")
    line = np.random.default_rng(0).standard_normal(50).astype(np.float32)
    rows = np.stack([line, line], axis=1)  # points on a line: a 2-D covariance with no inverse
    with pytest.raises(CollapseError, match=r"^generation 3: the EM fit failed \(.*\); raise model.reg_covar"):
        family.fit(family.build_base_model(0), rows, seed=0, generation=3, on_step=lambda done, total: None)
    rows[0, 0] = np.nan
    with pytest.raises(CollapseError, match=r"^generation 4: the training points hold nan or inf"):
        family.fit(family.build_base_model(0), rows, seed=0, generation=4, on_step=lambda done, total: None)


@pytest.mark.slow
def test_a_one_dimensional_run_finishes_with_a_histogram_per_generation(tmp_path):
    """dataset.dim=1, Shumailov's single-Gaussian setting: every generation, then the 1-D figure."""
    import matplotlib.image

    run_dir = tmp_path / "run"
    code = run_in_process(["run", "model=gmm", "dataset=gaussian", "dataset.dim=1", "generations=4",
                           "dataset.n_train=200", f"hydra.run.dir={run_dir}"])
    assert code == 0
    assert json.loads((run_dir / "status.json").read_text())["state"] == "finished"
    rows = read_metrics(run_dir)
    assert len(rows) == 5 and all(math.isfinite(row["component_std"]) for row in rows)
    figure = matplotlib.image.imread(run_dir / "figures" / "gmm_scatter.png")
    # One panel per chosen generation (0, 1, 2, 4, as plots.chosen_generations picks), side by side.
    assert plots.chosen_generations(4) == [0, 1, 2, 4] and figure.shape[1] > 3 * figure.shape[0]


def test_the_1d_figure_draws_the_samples_it_is_given(tmp_path):
    """Histograms of the samples: narrower samples give a taller peak, so the two images differ."""
    truth = core.standard_normal(1)
    wide = {0: core.sample(truth, 500, seed=0)}
    narrow = {0: (0.2 * wide[0]).astype(np.float32)}
    first = core.scatter_figure(truth, wide, tmp_path / "wide.png").read_bytes()
    second = core.scatter_figure(truth, narrow, tmp_path / "narrow.png").read_bytes()
    assert first[:8] == b"\x89PNG\r\n\x1a\n" and first != second


def test_the_shared_point_metrics_score_samples_against_the_real_test_points():
    family = GMMFamily(composed(["model=gmm", "dataset=gaussian", "dataset.n_test=500"]), None)
    real = family.real_data(None)
    family.prepare(real, len(real.train))
    model = GMMModel(family.truth)
    samples = family.sample(model, 800, seed=3, on_batch=lambda *a: None)
    metrics, _ = family.measure(0, model, model, samples, 0, lambda *a: None)
    expected = P.point_metrics(real.test, samples)  # no tail: the GMM's tail_coverage is the true density's
    assert {key: metrics[key] for key in expected} == expected
    assert metrics["tail_coverage"] == core.tail_coverage(core.log_density(family.truth, samples), family.threshold)
    assert metrics["precision"] > 0.9 and metrics["recall"] > 0.9  # samples of the truth itself


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.slow  # 1600 EM fits: ~2.5 s; test_log_variance_falls... keeps a closed form quick
def test_replace_follows_the_single_gaussian_closed_forms(unbiased):
    # Chains of the family's own fit and sample (one component), replace with mix 0: the mean over chains
    # of each of Kazdan et al.'s three figures lies within its 99% CI of the closed form.
    dim, n, fits, chains = 3, 20, 4, 400
    truth = core.make_mixture([1.0], [[0.0] * dim], [np.diag([1.0, 2.0, 0.5])])
    figures = {key: np.empty(chains) for key in ("mean_sq_error", "cov_det_ratio", "cov_log_det_ratio",
                                                 "cov_trace_ratio")}
    for chain in range(chains):
        rows = core.sample(truth, n, seed=chain)
        for fit in range(fits):
            fitted, _ = core.fit(rows, 1, seed=fit, unbiased=unbiased)
            rows = core.sample(fitted, n, seed=10_000 * (fit + 1) + chain)
        for key, value in core.single_gaussian_metrics(truth, fitted).items():
            figures[key][chain] = value
    theory = core.single_gaussian_replace_theory(truth, n, fits, unbiased)
    for key, values in figures.items():
        assert within_99(values, theory[f"{key}_theory"]), (key, values.mean(), theory[f"{key}_theory"])
    # The forms are not trivially near the truth: the determinant has shrunk by a third or more.
    assert theory["cov_det_ratio_theory"] < (0.8 if unbiased else 0.6)


def test_kazdan_gaussian_is_one_component_in_ten_dimensions_and_reports_theory_under_replace():
    cfg = composed(["+experiment=kazdan_gaussian"])
    assert (cfg.model.n_components, cfg.dataset.dim, cfg.dataset.n_train, cfg.generations) == (1, 10, 100, 99)
    assert (cfg.regime, cfg.mix) == ("accumulate", 1.0)
    family = GMMFamily(composed(["+experiment=kazdan_gaussian", "regime=replace", "mix=0"]), None)
    theory = family.single_gaussian_theory(9)
    assert theory["cov_trace_ratio_theory"] == pytest.approx(0.99 ** 10)
    assert theory["cov_det_ratio_theory"] == pytest.approx(np.prod(1 - np.arange(1, 11) / 100) ** 10)
    assert theory["mean_sq_error_theory"] == pytest.approx(10 / 100 * sum(0.99 ** j for j in range(10)))
    assert theory["cov_log_det_ratio_theory"] == pytest.approx(
        10 * sum(special.digamma((100 - i) / 2) + math.log(2 / 100) for i in range(1, 11)))
    accumulate = GMMFamily(cfg, None).single_gaussian_theory(9)
    assert all(math.isnan(value) for value in accumulate.values())
