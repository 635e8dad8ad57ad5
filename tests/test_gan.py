"""The GAN: seeded training and sampling, its losses by hand, the truncation knob, the family's config,
metrics and files, the MAD preset, and a killed run that resumes to the uninterrupted run's numbers."""

from __future__ import annotations

import json
import math
import signal

import numpy as np
import pytest
import torch
from torch import nn

from collapse_cli.errors import CollapseError
from collapse_cli.experiment import curation
from collapse_cli.families import toy2d
from collapse_cli.families.gan import core
from collapse_cli.families.gan.family import GANFamily
from collapse_cli.families.toy_or_digits import frechet_se
from collapse_cli.measure import points

RING = ["model=gan", "dataset=toy2d", "dataset.name=ring8"]


@pytest.fixture(scope="module")
def ring() -> np.ndarray:
    return toy2d.make_toy("ring8", 1000, None, seed=0)


@pytest.fixture(scope="module")
def trained(ring) -> core.GAN:
    """A GAN trained on the ring for 1,600 steps (seconds on one CPU thread)."""
    model = core.build_gan(2, 16, 128, squash=False, seed=1)
    with torch.random.fork_rng(devices=[]):
        core.train_gan(model, ring, epochs=200, batch_size=128, lr=1e-3, seed=2)
    return model


def _config(*overrides: str):
    from collapse_cli.compose import compose

    return compose(list(overrides))


# --- core ---------------------------------------------------------------------------------------------


def test_build_train_and_sample_are_seeded_and_leave_global_rng_alone(ring):
    state = torch.random.get_rng_state()
    first, again = (core.build_gan(2, 4, 16, squash=False, seed=5) for _ in range(2))
    for a, b in zip(first.parameters(), again.parameters()):
        torch.testing.assert_close(a, b)
    stats = [core.train_gan(m, ring[:200], epochs=3, batch_size=64, lr=1e-3, seed=7) for m in (first, again)]
    assert stats[0] == stats[1] and all(math.isfinite(v) for v in stats[0].values())
    samples = core.sample(first, 300, seed=3)
    np.testing.assert_array_equal(samples, core.sample(again, 300, seed=3))  # same seeds, same samples
    assert samples.dtype == np.float32 and samples.shape == (300, 2)
    assert not np.array_equal(samples, core.sample(first, 300, seed=4))
    other = core.build_gan(2, 4, 16, squash=False, seed=5)
    core.train_gan(other, ring[:200], epochs=3, batch_size=64, lr=1e-3, seed=8)
    assert not np.array_equal(samples, core.sample(other, 300, seed=3))  # the training seed matters
    assert torch.equal(state, torch.random.get_rng_state())


def test_samples_are_the_generator_at_scaled_latents_and_pixels_stay_in_range():
    model = core.build_gan(64, 6, 16, squash=True, seed=0)
    eps = torch.randn((50, 6), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        expected = model.generator(0.5 * eps).numpy()
    np.testing.assert_allclose(core.sample(model, 50, seed=9, truncation=0.5), expected, rtol=1e-6)
    images = core.sample(model, 50, seed=9)
    assert images.min() >= 0 and images.max() <= 1
    assert core.sample(model, 0, seed=9).shape == (0, 64)


def test_losses_by_hand_at_a_constant_critic():
    """A discriminator that answers logit b everywhere: D loss -log s(b) - log(1 - s(b)), G loss -log s(b)."""
    model = core.build_gan(2, 2, 4, squash=False, seed=0)
    last = model.discriminator[-1]
    assert isinstance(last, nn.Linear)
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(0.7)
    x = torch.randn(5, 2)
    sigmoid = 1 / (1 + math.exp(-0.7))
    assert core.discriminator_loss(model, x, x).item() == pytest.approx(-math.log(sigmoid) - math.log(1 - sigmoid))
    assert core.generator_loss(model, x).item() == pytest.approx(-math.log(sigmoid))  # non-saturating
    np.testing.assert_allclose(core.critic_logits(model, x.numpy()), np.full(5, 0.7), rtol=1e-6)


@pytest.mark.slow  # its fixture trains a GAN to convergence: ~5 s
def test_training_finds_the_ring_and_truncation_narrows_the_samples(ring, trained):
    real = toy2d.make_toy("ring8", 1000, None, seed=1)
    centres, sigma = toy2d.mode_centres("ring8"), toy2d.noise_of("ring8", None)
    untrained = core.build_gan(2, 16, 128, squash=False, seed=1)
    before = points.mode_metrics(core.sample(untrained, 1000, 0), centres, sigma)
    after = points.mode_metrics(core.sample(trained, 1000, 0), centres, sigma)
    assert before["high_quality"] < 0.05 and after["high_quality"] > 0.15 and after["modes_covered"] >= 7
    plain, biased = core.sample(trained, 1000, 0), core.sample(trained, 1000, 0, truncation=0.3)
    # Latents nearer 0 reach less of the ring: diversity (recall) falls. On a ring the latent's centre maps
    # between modes as often as onto one, so quality need not rise (docs/metrics.md, the GAN section).
    assert points.precision_recall(real, biased)[1] < points.precision_recall(real, plain)[1] - 0.05


def test_frechet_se_is_a_bootstrap_over_the_samples():
    rng = np.random.default_rng(0)
    real = rng.standard_normal((500, 2))
    se_small, se_large = (frechet_se(real, rng.standard_normal((n, 2)), seed=1) for n in (50, 2000))
    assert se_large < se_small  # more samples, less noise
    assert frechet_se(real, np.ones((40, 2)), seed=0) == 0.0  # every resample the same point set


# --- the family ---------------------------------------------------------------------------------------


def test_the_mad_preset_is_the_fully_synthetic_loop_with_a_sampling_bias():
    paper = _config("+experiment=mad_gan")
    assert (paper.model.family, paper.dataset.name, paper.regime, paper.mix) == ("gan", "ring8", "replace", 0.0)
    assert paper.model.truncation == 0.8 and paper.generations == 5
    fresh = _config("+experiment=mad_gan", "regime=fresh", "mix=0.5")
    assert (fresh.regime, fresh.mix) == ("fresh", 0.5)
    digits = _config("model=gan", "dataset=digits")
    assert digits.dataset.name == "digits" and digits.train.epochs == 200


@pytest.mark.parametrize("overrides, message", [
    ((*RING, "model.truncation=0"), "model.truncation=0.0 must be a positive number"),
    ((*RING, "model.truncation=nan"), "model.truncation=nan"),
    ((*RING, "model.hidden=0"), "model.hidden=0 must be at least 1"),
    ((*RING, "+dataset.test_fraction=0.3"), "dataset.test_fraction=0.3 is read by dataset=digits only"),
    (("model=gan", "dataset=digits", "+dataset.n_train=50"), "dataset.n_train=50 is read by dataset=toy2d only"),
    (("model=gan", "dataset=digits", "dataset.test_fraction=0.999"), "dataset.test_fraction=0.999 leaves"),
    ((*RING, "dataset.n_train=1"), "dataset.n_train=1 must be at least 6"),  # the k-NN metrics need k + 1
    # The dataset options a user types: the toys are dataset.name values of one option, dataset=toy2d.
    (("model=gan", "dataset=gaussian"),
     r"model.family=gan reads dataset=digits or dataset=toy2d dataset.name=moons\|circles\|blobs\|swiss_roll\|ring8, "
     "not dataset=gaussian;"),
    ((*RING, "+model.unknown=1"), "model.unknown: no such key"),
])
def test_bad_keys_are_refused_with_one_line_naming_them(overrides, message):
    with pytest.raises(CollapseError, match=f"^{message}"):
        _config(*overrides)


def test_measure_on_real_rows_covers_every_mode_and_has_no_likelihood(ring):
    cfg = _config(*RING)
    family = GANFamily(cfg, torch.device("cpu"))
    real = family.real_data(None)
    family.prepare(real, len(real.train))
    model = family.build_base_model(0)
    metrics, scores = family.measure(0, model, model, real.train, seed=0, on_progress=lambda d, t: None)
    assert metrics["modes_covered"] == 8 and metrics["high_quality"] > 0.95
    assert metrics["frechet"] == pytest.approx(metrics["frechet_floor"]) and metrics["frechet_se"] > 0
    assert metrics["recall"] > 0.9 and metrics["tail_coverage"] > 0.9 and metrics["tail_coverage_se"] < 0.05
    assert "nll_test" not in metrics and scores.shape == (len(real.train),)
    one_mode = np.repeat(real.train[:1], 500, axis=0)  # every sample on one mode
    collapsed, _ = family.measure(1, model, model, one_mode, seed=0, on_progress=lambda d, t: None)
    assert collapsed["modes_covered"] == 1 and collapsed["recall"] < 0.2 and collapsed["frechet"] > 1


def test_digit_samples_get_class_shares_and_classifier_features():
    cfg = _config("model=gan", "dataset=digits")
    family = GANFamily(cfg, torch.device("cpu"))
    real = family.real_data(None)
    family.prepare(real, len(real.train))
    model = family.build_base_model(0)
    metrics, _ = family.measure(0, model, model, real.test, seed=0, on_progress=lambda d, t: None)
    assert metrics["class_entropy"] > 2.2 and metrics["frechet"] < 1e-9 and "modes_covered" not in metrics
    ones = real.train[family.real.split.train_labels == 1]
    only_ones, _ = family.measure(0, model, model, ones, seed=0, on_progress=lambda d, t: None)
    assert only_ones["class_top"] == 1 and only_ones["class_entropy"] < 0.5 and only_ones["frechet"] > 10


@pytest.mark.slow  # `trained` fits a GAN (2 s): a training run
def test_curation_keeps_what_the_generation_0_critic_finds_most_real(ring, trained):
    """The GAN's scores are critic logits (higher: more real), so curate.method=verifier keeps the samples
    on the ring over those far off it, and tail curation draws the off-ring ones more often."""
    family = GANFamily(_config(*RING), torch.device("cpu"))
    off_ring = np.zeros((50, 2), dtype=np.float32)  # the ring's centre: no real point near
    samples = np.concatenate([ring[:50], off_ring])
    logits = core.critic_logits(trained, samples)
    quality = curation.sample_scores(family, "model", samples, logits)
    chosen, _ = curation.verify(quality, keep=0.5, noise=0.0, rng=np.random.default_rng(0))
    assert np.mean(chosen < 50) > 0.8  # mostly the ring's own points
    weights = curation.tail_weights(quality, temperature=1.0, cap=1e9)
    assert weights[50:].mean() > weights[:50].mean()


def test_a_diverging_gan_stops_with_one_line_naming_the_generation(ring):
    family = GANFamily(_config(*RING, "train.lr=1e20", "train.epochs=2"), torch.device("cpu"))
    with pytest.raises(CollapseError, match=r"^generation 2: (training loss became|the trained generator samples)"):
        family.fit(family.build_base_model(0), ring, seed=0, generation=2, on_step=lambda done, total: None)


# --- whole runs ---------------------------------------------------------------------------------------

SMALL = [*RING, "generations=2", "train.epochs=3", "model.hidden=16", "dataset.n_train=200", "dataset.n_test=200"]


@pytest.mark.slow
def test_a_run_writes_its_figures_and_a_likelihood_free_verdict(tmp_path):
    from conftest import read_metrics, run_in_process

    run = tmp_path / "run"
    assert run_in_process(["run", *SMALL, f"hydra.run.dir={run}"]) == 0
    rows = read_metrics(run)
    assert [row["generation"] for row in rows] == [0, 1, 2]
    assert all({"frechet", "frechet_se", "precision", "recall", "modes_covered", "tail_coverage"} <= set(row)
               for row in rows)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["early_warning"]["headline"] == "Fréchet distance"
    figures = sorted(p.name for p in (run / "figures").iterdir())
    assert figures == ["gan_real.png", *(f"gan_samples_gen_00{g}.png" for g in range(3))]
    digits = tmp_path / "digits"
    assert run_in_process(["run", "model=gan", "dataset=digits", "generations=1", "train.epochs=1",
                           "model.hidden=16", "dataset.max_train=200", f"hydra.run.dir={digits}"]) == 0
    assert {"class_entropy", "frechet"} <= set(read_metrics(digits)[-1])
    assert (digits / "figures" / "gan_samples_gen_001.png").stat().st_size > 2000


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", ["samples:1", "DONE:1"])
def test_a_killed_run_resumes_to_the_uninterrupted_runs_metrics(tmp_path, kill_at):
    from conftest import read_metrics, read_status, run_in_process, stable
    from test_integrity import VARYING, files_of, killed_in_a_fork

    args = [*SMALL, "train.init=previous", "checkpoints=none"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert run_in_process(["run", *args, f"hydra.run.dir={whole}"]) == 0
    assert killed_in_a_fork(["run", *args, f"hydra.run.dir={killed}"], kill_at) == -signal.SIGKILL
    assert read_status(killed)["state"] == "running"
    assert run_in_process(["resume", str(killed)]) == 0
    assert stable(read_metrics(killed)) == stable(read_metrics(whole))
    assert files_of(killed, skip=VARYING) == files_of(whole, skip=VARYING)


@pytest.mark.slow  # `trained` fits a GAN (2 s): a training run
def test_a_saved_model_loads_back_exactly_and_a_damaged_file_is_one_line(tmp_path, trained):
    family = GANFamily(_config(*RING), torch.device("cpu"))
    family.save_model(trained, tmp_path / "model")
    loaded = family.load_model(tmp_path / "model")
    np.testing.assert_array_equal(core.sample(loaded, 64, seed=3), core.sample(trained, 64, seed=3))
    (tmp_path / "model" / "gan.pt").write_bytes(b"torn")
    with pytest.raises(CollapseError, match=r"gan\.pt: damaged: unreadable \(\w+\); fix or remove that run$"):
        family.load_model(tmp_path / "model")
    (tmp_path / "model" / "gan.pt").unlink()
    with pytest.raises(CollapseError, match=r"gan\.pt: damaged"):
        family.load_model(tmp_path / "model")
    torch.save({"other": torch.zeros(2)}, tmp_path / "model" / "gan.pt")  # a state dict of another model
    with pytest.raises(CollapseError, match=r"gan\.pt: damaged: not this model's weights"):
        family.load_model(tmp_path / "model")
