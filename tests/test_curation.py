"""Family-agnostic curation (experiment/curation.py) and train.real_weight (issue #25, items 2, 3 and 5):
the verifier and tail steps against their closed forms, each family's truth scores, the refusals, and
weighted fits (OLS, counts, the LM's token loss) against their definitions."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, read_metrics, read_status, run_in_process
from test_train import VOCAB, opt, seeded

from collapse_cli.errors import CollapseError
from collapse_cli.experiment import curation
from collapse_cli.families import toy2d
from collapse_cli.families.base import get_family
from collapse_cli.families.categorical import core as categorical_core
from collapse_cli.families.gmm import core as gmm_core
from collapse_cli.families.lm import loss
from collapse_cli.families.lm.family import IMPOSSIBLE, true_log_likelihood

GMM = ["model=gmm", "dataset=gaussian", "dataset.n_train=400", "dataset.n_test=300"]
LINREG = ["model=linreg", "dataset=regression"]


# --- the verifier ---------------------------------------------------------------------------------------

def test_a_perfect_verifier_keeps_exactly_the_best_scores_in_sample_order():
    quality = np.random.default_rng(0).standard_normal(1001)
    chosen, report = curation.verify(quality, 0.3, 0.0, np.random.default_rng(1))
    assert len(chosen) == round(0.3 * 1001) and np.all(np.diff(chosen) > 0)
    assert quality[chosen].min() > np.delete(quality, chosen).max()
    assert report["curate_verifier_agreement"] == 1.0
    assert report["curate_score_kept_mean"] > report["curate_score_mean"]


@pytest.mark.parametrize("noise", [0.5, 1.0, 3.0])
def test_a_noisy_verifier_agrees_with_the_perfect_one_as_the_bivariate_normal_says(noise: float):
    """Keeping the top half of x + noise * z (x, z standard normal): the kept share a perfect verifier also
    keeps is P(both above their medians) / 0.5 = 1/2 + arcsin(rho) / pi, rho = 1 / sqrt(1 + noise^2)."""
    n = 200_000
    quality = np.random.default_rng(2).standard_normal(n)
    _, report = curation.verify(quality, 0.5, noise, np.random.default_rng(3))
    expected = 0.5 + math.asin(1 / math.sqrt(1 + noise**2)) / math.pi
    assert abs(report["curate_verifier_agreement"] - expected) < 0.005, (report, expected)


# --- tail-focused resampling ----------------------------------------------------------------------------

def test_tail_weights_are_inverse_density_scaled_to_mean_one_and_capped():
    quality = np.log(np.array([0.5, 0.25, 0.125, 0.125]))  # densities
    weights = curation.tail_weights(quality, 1.0, cap=100.0)
    np.testing.assert_allclose(weights, np.array([2, 4, 8, 8]) / 5.5)  # 1/p over its mean
    capped = curation.tail_weights(quality, 1.0, cap=1.2)
    np.testing.assert_allclose(capped, np.minimum(np.array([2, 4, 8, 8]) / 5.5, 1.2))
    flat = curation.tail_weights(quality, 1e9, cap=10.0)  # an infinite temperature: every sample alike
    np.testing.assert_allclose(flat, 1.0, atol=1e-8)
    squared = curation.tail_weights(quality, 0.5, cap=1e9)  # temperature 1/2: p^-2
    np.testing.assert_allclose(squared, np.array([4, 16, 64, 64]) / 37)


def test_effective_sample_size_is_kish():
    assert curation.effective_sample_size(np.ones(50)) == pytest.approx(50)
    assert curation.effective_sample_size(np.array([1.0, 0, 0, 0])) == pytest.approx(1)
    assert curation.effective_sample_size(np.array([1.0, 3.0])) == pytest.approx(16 / 10)


def test_tail_resampling_draws_rows_in_proportion_to_their_weights():
    """Half the samples three times rarer (density 1/3 of the others): with temperature 1 they carry 3/4 of
    the weight, so 3/4 of the draws."""
    n = 20_000
    quality = np.where(np.arange(n) < n // 2, 0.0, -math.log(3))
    chosen, report = curation.tail_resample(quality, 1.0, 10.0, np.random.default_rng(4))
    assert len(chosen) == n
    share_rare = np.mean(chosen >= n // 2)
    assert abs(share_rare - 0.75) < 4 * math.sqrt(0.75 * 0.25 / n)
    # Weights 0.5 and 1.5 in equal numbers: Kish's ESS is n * 1 / 1.25.
    assert report["curate_ess"] == pytest.approx(n / 1.25) and report["curate_ess_fraction"] == pytest.approx(0.8)
    assert report["curate_capped_fraction"] == 0.0


# --- what each family scores by -------------------------------------------------------------------------

def test_the_builtin_languages_true_log_likelihood_is_the_mean_transition_log_probability():
    transition = np.array([[0.5, 0.5, 0.0], [0.1, 0.0, 0.9], [1.0, 0.0, 0.0]])
    blocks = np.array([[0, 1, 2, 0], [1, 1, 0, 0], [0, 7, 0, 0]])  # row 2: an id outside the language
    got = true_log_likelihood(transition, blocks)
    np.testing.assert_allclose(got[0], np.mean(np.log([0.5, 0.9, 1.0])))
    np.testing.assert_allclose(got[1], np.mean(np.log([IMPOSSIBLE, 0.1, 0.5])))
    np.testing.assert_allclose(got[2], np.mean(np.log([IMPOSSIBLE, IMPOSSIBLE, 0.5])))


def composed(overrides: list[str]):
    from collapse_cli.compose import compose

    return compose(overrides)


def test_each_family_knows_its_truth_where_it_has_one():
    gmm = get_family("gmm")(composed(GMM), "cpu")
    points = np.array([[0.0, 0.0], [3.0, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(gmm.truth_scores(points), [-math.log(2 * math.pi), -math.log(2 * math.pi) - 4.5])

    linreg = get_family("linreg")(composed(LINREG), "cpu")
    x = np.eye(7)[:2]
    rows = np.column_stack([x, x @ linreg.truth + np.array([0.0, 2.0])])
    np.testing.assert_allclose(linreg.truth_scores(rows), np.array([0.0, -2.0]) - 0.5 * math.log(2 * math.pi))

    categorical = get_family("categorical")(composed(["model=categorical", "dataset=zipf"]), "cpu")
    np.testing.assert_allclose(categorical.truth_scores(np.array([[0], [5]])), np.log(categorical.truth[[0, 5]]))
    assert gmm.model_scores(np.array([2.0])) == -2.0  # measure's NLLs, as log-likelihoods


@pytest.mark.parametrize("name,std", [("ring8", 0.02), ("blobs", 0.3), ("ring8", 0.5)])
def test_the_toy_mixtures_true_density_is_the_mean_of_their_gaussians(name: str, std: float):
    from scipy.stats import multivariate_normal

    points = toy2d.make_toy(name, 50, std, seed=3)
    centres = toy2d.mode_centres(name)
    expected = np.log(np.mean([multivariate_normal(c, std**2 * np.eye(2)).pdf(points) for c in centres], axis=0))
    np.testing.assert_allclose(toy2d.true_log_density(name, std, points), expected, rtol=1e-9)
    # A density: it integrates to 1 over the plane (a grid fine enough for the widest of these modes).
    axis = np.linspace(-4, 4, 401)  # spacing 0.02: a fifteenth of the narrowest std integrated here
    grid = np.stack(np.meshgrid(axis, axis), axis=-1).reshape(-1, 2)
    if std >= 0.3:
        total = np.exp(toy2d.true_log_density(name, std, grid)).sum() * (axis[1] - axis[0]) ** 2
        assert abs(total - 1) < 1e-3


def test_toys_without_a_closed_form_density_have_no_truth():
    for name in ("moons", "circles", "swiss_roll"):
        assert toy2d.true_log_density(name, None, np.zeros((3, 2))) is None
    assert toy2d.true_log_density("ring8", 0.0, np.zeros((3, 2))) is None  # noise 0: points, not a density


@pytest.mark.parametrize("model", ["kde", "diffusion", "gan"])
def test_the_point_families_score_the_toy_mixtures_by_their_truth(model: str):
    ring = get_family(model)(composed([f"model={model}", "dataset=toy2d", "dataset.name=ring8"]), "cpu")
    points = np.array([[2.0, 0.0], [0.0, 0.0]], dtype=np.float32)  # on a mode; in the empty centre
    scores = ring.truth_scores(points)
    np.testing.assert_allclose(scores, toy2d.true_log_density("ring8", None, points))
    assert scores[0] > scores[1]
    moons = get_family(model)(composed([f"model={model}", "dataset=toy2d", "dataset.name=moons"]), "cpu")
    assert moons.truth_scores(points) is None  # auto: the generation-0 model scores them, as before
    measured = np.array([1.0, 2.0])  # measure's per-sample scores (an NLL; the GAN's critic logits as they are)
    np.testing.assert_array_equal(curation.sample_scores(moons, "auto", points, measured), moons.model_scores(measured))


@pytest.mark.parametrize("model", ["diffusion", "gan"])
def test_the_image_families_score_digits_by_the_classifiers_confidence(model: str):
    family = get_family(model)(composed([f"model={model}", "dataset=digits", "dataset.max_train=200"]), "cpu")
    real = family.real_data(family.train_cap())
    family.prepare(real, len(real.train))
    images = np.concatenate([real.test[:5], np.full((1, real.test.shape[1]), 0.5, dtype=real.test.dtype)])
    scores = family.truth_scores(images)
    np.testing.assert_allclose(scores, np.log(family.real.classifier.predict_proba(images).max(axis=1)))
    assert (scores <= 0).all() and scores[:5].mean() > scores[5]  # real digits are surer than a grey square


def test_curate_score_truth_without_a_truth_names_the_fix():
    family = get_family("gmm")(composed(GMM), "cpu")
    family.truth_scores = lambda samples: None  # a family that knows no truth
    with pytest.raises(CollapseError, match="curate.score=truth: model.family=gmm .* use curate.score=model"):
        curation.sample_scores(family, "truth", np.zeros((3, 2)), np.zeros(3))
    np.testing.assert_array_equal(curation.sample_scores(family, "auto", np.zeros((3, 2)), np.arange(3.0)),
                                  [0.0, -1.0, -2.0])  # auto falls back to the model's scores


# --- config ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("override,needle", [
    ("curate.keep=0", "curate.keep=0.0 must be in (0, 1]"),
    ("curate.keep=1.5", "curate.keep=1.5 must be in (0, 1]"),
    ("curate.noise=-1", "curate.noise=-1.0 must be >= 0"),
    ("curate.temperature=0", "curate.temperature=0.0 must be positive"),
    ("curate.cap=0.5", "curate.cap=0.5 must be >= 1"),
    ("train.real_weight=0", "train.real_weight=0.0 must be positive"),
    ("curate.method=best", "curate.method"),
])
def test_bad_curation_values_are_one_line_naming_the_key(override: str, needle: str):
    with pytest.raises(Exception) as caught:
        composed([*GMM, "curate=verifier", override])
    assert needle in str(caught.value) and "\n" not in str(caught.value).strip()


@pytest.mark.parametrize("family", [["model=gmm", "dataset=gaussian"], ["model=vae", "dataset=digits"]])
def test_families_without_a_per_row_loss_refuse_a_real_weight(family: list[str]):
    with pytest.raises(CollapseError, match=r"train.real_weight=0.6: model.family=\w+ fits without a per-row loss "
                                            r"weight; use train.real_weight=1"):
        composed([*family, "mix=0.5", "train.real_weight=0.6"])


def test_the_generic_methods_serve_every_family_while_text_filters_stay_the_lms():
    for family in (GMM, LINREG, ["model=vae", "dataset=digits"], ["model=categorical", "dataset=zipf"]):
        assert composed([*family, "curate=verifier"]).curate.method == "verifier"
        assert composed([*family, "curate=tail"]).curate.method == "tail"
    with pytest.raises(CollapseError, match="curate filters text sequences"):
        composed([*GMM, "curate=quality"])


# --- weighted fits ----------------------------------------------------------------------------------------

def test_linreg_real_weight_is_weighted_least_squares():
    family = get_family("linreg")(composed([*LINREG, "mix=0.5", "train.real_weight=0.25"]), "cpu")
    rng = np.random.default_rng(5)
    rows = np.column_stack([rng.standard_normal((40, 7)), rng.standard_normal(40)])
    weights = np.where(np.arange(40) < 20, 0.25, 1.0)
    model = family.build_base_model(0)
    family.fit(model, rows, 0, 1, lambda done, total: None, row_weights=weights)
    x, y, w = rows[:, :-1], rows[:, -1], np.diag(weights)
    np.testing.assert_allclose(model.weights, np.linalg.solve(x.T @ w @ x, x.T @ w @ y), rtol=1e-10)


def test_linreg_has_no_closed_form_once_real_and_synthetic_labels_weigh_differently():
    equal = get_family("linreg")(composed([*LINREG, "regime=accumulate", "mix=1"]), "cpu")
    weighted = get_family("linreg")(composed([*LINREG, "regime=accumulate", "mix=1", "train.real_weight=0.5"]), "cpu")
    assert math.isfinite(equal.theory(3)[0]) and all(math.isnan(value) for value in weighted.theory(3))
    assert weighted.theory(0) == equal.theory(0)  # generation 0 fits real labels alone


def test_categorical_real_weight_is_weighted_counts():
    rows = np.array([[0], [0], [1], [2]])
    np.testing.assert_allclose(categorical_core.estimate(rows, 3, np.array([0.5, 0.5, 1.0, 2.0])), [0.25, 0.25, 0.5])
    np.testing.assert_allclose(categorical_core.estimate(rows, 3), [0.5, 0.25, 0.25])


@pytest.mark.parametrize("chunks", [7, 10_000])
def test_the_lm_token_loss_weights_each_row(chunks: int, monkeypatch):
    """summed_nll with row weights is the weighted sum of each row's own summed NLL, in value and gradient,
    on the one-chunk path and on the fused path of many chunks."""
    monkeypatch.setattr(loss, "CHUNK_ELEMENTS", VOCAB * chunks)
    ids = torch.randint(0, VOCAB, (3, 16), generator=torch.Generator().manual_seed(1))
    row_weights = torch.tensor([0.618, 1.0, 2.5])
    model = seeded(opt)
    weighted = loss.summed_nll(model, ids, row_weights=row_weights)
    weighted.backward()
    got = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    with monkeypatch.context() as one_chunk:
        one_chunk.setattr(loss, "CHUNK_ELEMENTS", VOCAB * 10_000)
        expected = sum(w * loss.summed_nll(model, ids[i:i + 1]) for i, w in enumerate(row_weights.tolist()))
    expected.backward()
    torch.testing.assert_close(weighted, expected, rtol=1e-5, atol=0)
    for name, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(got[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


# --- through the real loop --------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_gmm_run_with_a_perfect_verifier_trains_on_the_most_plausible_points(tmp_path: Path):
    run = tmp_path / "run"
    assert run_in_process(["run", *GMM, "generations=2", "curate=verifier", "curate.keep=0.25",
                           f"hydra.run.dir={run}"]) == 0
    family = get_family("gmm")(composed(GMM), "cpu")
    for g in range(3):
        samples = np.load(run / f"gen_00{g}" / "samples.npy")
        kept = np.load(run / f"gen_00{g}" / "curated_index.npy")
        assert len(kept) == 100 and len(np.unique(kept)) == 100
        density = gmm_core.log_density(family.truth, samples)
        assert density[kept].min() >= np.delete(density, kept).max()
    rows = read_metrics(run)
    assert all(row["curate_kept"] == 100 and row["curate_verifier_agreement"] == 1.0 for row in rows)
    # Generation 1 trains on generation 0's kept points only (drawn with replacement up to N).
    origin = np.load(run / "gen_001" / "train_origin.npy")
    assert set(origin[:, 1]) <= set(np.load(run / "gen_000" / "curated_index.npy").tolist())


@pytest.mark.slow
def test_an_lm_run_with_tail_curation_and_a_real_weight_reports_its_effective_sample_size(tmp_path: Path):
    run = tmp_path / "run"
    assert run_in_process(["run", *TINY, "mix=0.5", "train.real_weight=0.618", "curate=tail",
                           "curate.temperature=2", f"hydra.run.dir={run}"]) == 0
    assert read_status(run)["state"] == "finished"
    rows = read_metrics(run)
    n = rows[0]["curate_kept"]
    kept = np.load(run / "gen_000" / "curated_index.npy")
    assert len(kept) == n and rows[0]["curate_kept_distinct"] == len(np.unique(kept)) < n
    assert 0 < rows[0]["curate_ess"] <= n and rows[0]["curate_ess_fraction"] == pytest.approx(rows[0]["curate_ess"] / n)
    # Rare under the builtin language's truth: the drawn rows' mean log-likelihood lies below the samples'.
    assert rows[0]["curate_score_kept_mean"] < rows[0]["curate_score_mean"]


@pytest.mark.parametrize("name,family,generations", [("mitigations_gmm", "gmm", 100),
                                                     ("mitigations_linreg", "linreg", 20), ("mitigations_lm", "lm", 3)])
def test_the_mitigation_presets_compare_the_methods_on_a_fully_synthetic_loop(name: str, family: str,
                                                                               generations: int):
    for method in ("none", "verifier", "tail"):
        cfg = composed([f"+experiment={name}", f"curate={method}"])
        assert (cfg.model.family, cfg.mix, cfg.generations, cfg.curate.method) == (family, 0.0, generations, method)
