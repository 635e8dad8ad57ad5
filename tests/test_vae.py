"""The VAE core: digits split, likelihood bounds, latent spread, tails and class shares by hand."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from collapse_cli.families import digits as digit_data
from collapse_cli.families.vae import core


@pytest.fixture(scope="module")
def digits() -> digit_data.Digits:
    return digit_data.load_digits_split(0.2, seed=0)


@pytest.fixture(scope="module")
def trained(digits) -> core.VAE:
    """A briefly trained Gaussian-likelihood VAE (a few seconds on a CPU)."""
    model = core.build_vae(latent=8, hidden=64, pixel_std=0.2, seed=1)
    core.train_vae(model, digits.train, epochs=8, batch_size=128, lr=3e-3, seed=2)
    return model


def test_digits_split_is_seeded_scaled_and_disjoint(digits):
    assert digits.train.shape == (1438, 64) and digits.test.shape == (359, 64)
    assert digits.train.dtype == np.float32 and digits.train.min() == 0.0 and digits.train.max() == 1.0
    again, other = digit_data.load_digits_split(0.2, seed=0), digit_data.load_digits_split(0.2, seed=1)
    np.testing.assert_array_equal(again.test, digits.test)
    assert not np.array_equal(other.test, digits.test)
    from sklearn.datasets import load_digits

    labels = np.sort(np.concatenate([digits.train_labels, digits.test_labels]))
    np.testing.assert_array_equal(labels, np.sort(load_digits().target))  # a partition of all 1,797
    assert set(np.unique(digits.test_labels)) == set(range(10))


def test_reconstruction_nll_by_hand():
    gaussian = core.VAE(latent=2, hidden=8, pixel_std=0.5)
    x = torch.full((1, 64), 0.25)
    logits = torch.zeros((1, 64))  # mean 0.5 everywhere
    per_pixel = (0.25 ** 2) / (2 * 0.25) + math.log(0.5) + 0.5 * math.log(2 * math.pi)
    assert gaussian.reconstruction_nll(logits, x).item() == pytest.approx(64 * per_pixel, rel=1e-6)
    bernoulli = core.VAE(latent=2, hidden=8, pixel_std=None)
    assert bernoulli.reconstruction_nll(logits, x).item() == pytest.approx(64 * math.log(2), rel=1e-6)


def test_build_and_sampling_are_seeded_and_leave_global_rng_alone():
    state = torch.random.get_rng_state()
    first, again = core.build_vae(4, 16, 0.2, seed=5), core.build_vae(4, 16, 0.2, seed=5)
    for a, b in zip(first.parameters(), again.parameters()):
        torch.testing.assert_close(a, b)
    images = core.sample_images(first, 10, seed=3)
    np.testing.assert_array_equal(images, core.sample_images(first, 10, seed=3))
    assert images.dtype == np.float32 and images.shape == (10, 64) and 0 <= images.min() and images.max() <= 1
    assert torch.equal(state, torch.random.get_rng_state())


def test_training_lowers_the_bound_and_iw_is_tighter(digits, trained):
    untrained = core.build_vae(latent=8, hidden=64, pixel_std=0.2, seed=1)
    assert core.elbo_nll(trained, digits.test, 0).mean() < core.elbo_nll(untrained, digits.test, 0).mean() - 20
    elbo = np.mean([core.elbo_nll(trained, digits.test, s).mean() for s in range(8)])
    iw = core.importance_weighted_nll(trained, digits.test, 64, 0).mean()
    assert iw < elbo  # the K=64 bound is tighter than the averaged K=1 bound
    np.testing.assert_allclose(core.importance_weighted_nll(trained, digits.test, 64, 0),
                               core.importance_weighted_nll(trained, digits.test, 64, 0))


def test_latent_spread_is_the_rms_std_of_encoder_means(trained, digits):
    with torch.no_grad():
        mu, _ = trained.encode(torch.as_tensor(digits.test))
    expected = math.sqrt(np.mean(np.var(mu.numpy().astype(np.float64), axis=0)))
    assert core.latent_spread(trained, digits.test) == pytest.approx(expected, rel=1e-5)
    assert core.latent_spread(trained, np.repeat(digits.test[:1], 50, axis=0)) == pytest.approx(0.0, abs=1e-6)


def test_nearest_distances_by_hand():
    queries = np.array([[0.0, 0.0], [3.0, 4.0]])
    points = np.array([[0.0, 1.0], [6.0, 8.0], [3.0, 4.5]])
    np.testing.assert_allclose(digit_data.nearest_distances(queries, points), [1.0, 0.5])


def test_tail_coverage_on_constructed_rare_digits():
    rare = digit_data.RareDigits(images=np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]]),
                           radii=np.array([1.0, 1.0, 0.5, 2.0]))
    samples = np.array([[0.5, 0.0], [10.0, 0.9], [0.0, 9.0], [50.0, 50.0]])
    # within radius: digit 0 (0.5 <= 1), digit 1 (0.9 <= 1); not digit 2 (1.0 > 0.5) nor digit 3 (far)
    assert digit_data.tail_coverage(rare, samples) == pytest.approx(0.5)
    assert digit_data.tail_coverage(rare, rare.images) == 1.0
    assert digit_data.tail_coverage(rare, np.zeros((0, 2))) == 0.0


def test_rare_digits_are_the_highest_nll_and_radii_are_reconstruction_errors(trained, digits):
    nll = np.arange(len(digits.test), dtype=np.float64)  # the last rows are the "rarest"
    rare = core.rare_digits(trained, digits.test, nll)
    n_rare = round(0.05 * len(digits.test))
    np.testing.assert_array_equal(rare.images, digits.test[::-1][:n_rare])
    expected = np.linalg.norm(core.reconstruct(trained, rare.images) - rare.images, axis=1)
    np.testing.assert_allclose(rare.radii, expected, rtol=1e-5)
    assert len(core.rare_digits(trained, digits.test[:3], nll[:3]).images) == 1  # at least one


def test_class_shares_and_entropy_by_hand():
    shares = digit_data.class_shares(np.array([0, 0, 1, 3]), n_classes=4)
    np.testing.assert_allclose(shares, [0.5, 0.25, 0.0, 0.25])
    assert digit_data.share_entropy(shares) == pytest.approx(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))
    assert digit_data.share_entropy(np.full(10, 0.1)) == pytest.approx(math.log(10))
    assert digit_data.share_entropy(np.array([1.0, 0.0])) == 0.0
    assert np.isnan(digit_data.class_shares(np.array([], dtype=np.int64))).all()


def test_classifier_reads_real_digits(digits):
    classifier = digit_data.train_classifier(digits.train, digits.train_labels, seed=0)
    assert classifier.score(digits.test, digits.test_labels) > 0.9


def test_grid_figure(tmp_path, digits):
    path = digit_data.grid_figure(digits.test, tmp_path / "figures" / "grid.png", "real")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 2000


def _vae_config(compose, *overrides: str):
    return compose(["model=vae", "dataset=digits", *overrides])


@pytest.mark.parametrize("overrides, epochs, batch_size",
                         [((), 30, 128), (("train.epochs=2", "train.batch_size=50"), 2, 50)])
def test_the_vae_trains_with_train_keys_whose_defaults_the_model_names(compose, digits, overrides, epochs,
                                                                       batch_size):
    from collapse_cli.families.vae.family import VAEFamily

    cfg = _vae_config(compose, *overrides)
    family = VAEFamily(cfg, torch.device("cpu"))
    totals = []
    model = family.build_base_model(seed=0)
    family.fit(model, digits.train[:100], seed=0, generation=0, on_step=lambda step, total: totals.append(total))
    assert totals[-1] == epochs * math.ceil(100 / batch_size)


def test_latent_std_flat_is_the_notebooks_statistic(trained, digits):
    """np.std of the 100 x latent encoder means flattened (ddof 0), as VAE_experiments.ipynb prints it."""
    with torch.no_grad():
        mu, _ = trained.encode(torch.as_tensor(digits.test[:100]))
    expected = float(np.std(mu.numpy().astype(np.float64).ravel()))
    assert core.flat_latent_std(trained, digits.test) == pytest.approx(expected, rel=1e-9)
    # Flattening adds the spread of the dimensions' averages: never below latent_spread on the same images.
    assert core.flat_latent_std(trained, digits.test) >= core.latent_spread(trained, digits.test[:100])
    assert core.flat_latent_std(trained, digits.test) != core.flat_latent_std(trained, digits.test[100:])


def test_fresh_batches_are_new_decodes_every_batch_and_fixed_ones_a_shuffle(trained, digits):
    data = torch.as_tensor(digits.train[:300])
    fixed = list(core.epoch_batches(data, 128, torch.Generator().manual_seed(3)))
    order = torch.randperm(300, generator=torch.Generator().manual_seed(3))
    assert [len(b) for b in fixed] == [128, 128, 44]
    assert torch.equal(torch.cat(fixed), data[order])  # what train_vae always drew: the default run is unchanged
    fresh = list(core.epoch_batches(data, 128, torch.Generator().manual_seed(3), source=trained))
    assert [len(b) for b in fresh] == [128, 128, 44]
    again = list(core.epoch_batches(data, 128, torch.Generator().manual_seed(3), source=trained))
    assert all(torch.equal(a, b) for a, b in zip(fresh, again))  # seeded by the generator alone
    assert not torch.equal(fresh[0], fresh[1][:128])  # a new draw every batch
    # Each batch is decoder means at z ~ N(0, I): the prior draw, decoded.
    z = torch.randn((128, trained.latent), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(fresh[0], torch.sigmoid(trained.decode_logits(z)))


def test_one_thread_is_restored_after_the_block():
    before = torch.get_num_threads()
    with digit_data.one_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_shumailov_vae_is_the_notebooks_training_and_fresh_needs_a_fully_synthetic_loop(compose):
    from collapse_cli.errors import CollapseError
    from collapse_cli.families.vae.family import TrainData

    paper = _vae_config(compose, "+experiment=shumailov_vae")
    assert paper.model.train_data == TrainData.fresh and paper.model.latent == 20
    assert (paper.train.batch_size, paper.train.lr, paper.train.weight_decay) == (256, 1e-3, 1e-5 / 256)
    assert (paper.mix, paper.regime, paper.generations) == (0.0, "replace", 5)
    assert _vae_config(compose).model.train_data == TrainData.fixed
    for mix in ("0.1", "1.0"):
        with pytest.raises(CollapseError, match=f"model.train_data=fresh .* not mix={mix}: set mix=0"):
            _vae_config(compose, "+experiment=shumailov_vae", f"mix={mix}")


FRESH = ["+experiment=shumailov_vae", "generations=3", "train.epochs=40", "dataset.max_train=256",
         "model.hidden=64", "model.nll_samples=4"]


@pytest.mark.slow
def test_a_fresh_run_killed_after_a_generation_resumes_from_the_saved_decoder(tmp_path):
    """Generation g trains on batches decoded from generation g-1's model; after a kill, from the sampler.pt
    beside g-1's samples. The resumed run's metrics equal an uninterrupted run's."""
    import signal

    from conftest import read_metrics, run_in_process, stable, start_collapse
    from test_resume import signal_when

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert run_in_process(["run", *FRESH, f"hydra.run.dir={whole}"]) == 0
    assert all((whole / f"gen_{g:03d}" / "sampler.pt").is_file() for g in range(4))
    proc = start_collapse(["run", *FRESH, f"hydra.run.dir={killed}"], cwd=tmp_path)
    signal_when(proc, killed / "gen_001" / "DONE", signal.SIGKILL)
    proc.wait(timeout=120)
    assert not (killed / "gen_003" / "DONE").exists()  # generation 3 still needs gen_002's or gen_001's decoder
    assert run_in_process(["resume", str(killed)]) == 0
    assert stable(read_metrics(killed)) == stable(read_metrics(whole))
    rows = read_metrics(whole)
    assert all(0 < row["latent_std_flat"] for row in rows)

def test_a_diverging_vae_stops_with_one_line_naming_the_generation_and_step(compose, digits):
    """The README's promise for every family: a nan/inf loss stops the run with one line (families/base.py)."""
    from collapse_cli.errors import CollapseError
    from collapse_cli.families.vae.family import VAEFamily

    family = VAEFamily(_vae_config(compose, "train.lr=1e6", "train.epochs=1"), torch.device("cpu"))
    with pytest.raises(CollapseError, match=r"^generation 2: training loss became (nan|inf) at step \d+ "
                                            r"\(diverged\); lower the learning rate .* train.lr=<lower>$"):
        family.fit(family.build_base_model(0), digits.train, seed=0, generation=2, on_step=lambda done, total: None)


def test_weights_broken_by_the_last_step_are_caught_before_sampling(compose, digits):
    """One step at lr 1e20 (Adam moves each weight by ~lr): its loss was finite, what the model decodes is not."""
    from collapse_cli.errors import CollapseError
    from collapse_cli.families.vae.family import VAEFamily

    family = VAEFamily(_vae_config(compose, "train.lr=1e20", "train.epochs=1", "train.batch_size=128"),
                       torch.device("cpu"))
    with pytest.raises(CollapseError, match=r"^generation 1: the trained model decodes nan or inf"):
        family.fit(family.build_base_model(0), digits.train[:100], seed=0, generation=1,
                   on_step=lambda done, total: None)


def test_the_range_of_test_fractions_the_message_gives_is_accepted_and_its_surroundings_refused():
    """The message rounds its range inwards (to 3 decimals), so its own bounds always work."""
    from collapse_cli.errors import CollapseError
    from collapse_cli.families.digits import MIN_TEST_IMAGES, MIN_TRAIN_IMAGES, check_split

    with pytest.raises(CollapseError) as caught:
        check_split(0.9999)
    low, high = map(float, re.search(r"from ([\d.]+) to ([\d.]+)", str(caught.value)).groups())
    for fraction in (low, 0.2, high):
        check_split(fraction)
        n_train, n_test = digit_data.split_sizes(fraction)
        assert n_train >= MIN_TRAIN_IMAGES and n_test >= MIN_TEST_IMAGES and n_train + n_test == 1797
    for fraction in (low - 0.002, high + 0.002, 0.0001):
        with pytest.raises(CollapseError, match=rf"dataset.test_fraction={fraction} leaves"):
            check_split(fraction)
    split = digit_data.load_digits_split(0.2, seed=0)
    assert digit_data.split_sizes(0.2) == (len(split.train), len(split.test))


def test_the_vae_reports_the_frechet_distance_in_the_classifiers_logits(compose, digits):
    from collapse_cli.families.vae.family import VAEFamily
    from collapse_cli.measure.points import frechet_distance

    cfg = _vae_config(compose, "model.hidden=32", "model.latent=4", "model.nll_samples=4")
    family = VAEFamily(cfg, torch.device("cpu"))
    real = family.real_data(None)
    family.prepare(real, len(real.train))
    model = family.build_base_model(seed=0)
    samples = family.sample(model, 300, seed=1, on_batch=lambda done, total: None)
    metrics, _ = family.measure(0, model, model, samples, seed=2, on_progress=lambda done, total: None)
    features = digit_data.features(family.classifier, digits.test), digit_data.features(family.classifier, samples)
    real_floor = frechet_distance(features[0], digit_data.features(family.classifier, digits.train))
    assert metrics["frechet"] == frechet_distance(*features) > 10 * real_floor  # an untrained VAE: far from real
