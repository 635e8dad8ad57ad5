"""model=diffusion: samplers and the DDPM bound against Gaussian closed forms; runs, kill -9 and resume, bad keys."""

from __future__ import annotations

import math
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from collapse_cli.families.diffusion import core

DIGITS = ["model=diffusion", "dataset=digits", "dataset.max_train=200", "train.epochs=3", "model.hidden=32",
          "model.sample_steps=4"]
RING = ["model=diffusion", "dataset=toy2d", "dataset.name=ring8", "dataset.n_train=300", "dataset.n_test=300",
        "train.epochs=3", "model.hidden=32", "model.objective=ddpm", "model.timesteps=10"]


class ExactGaussian(nn.Module):
    """The exact predictions for data ~ N(0, I): x_t ~ N(0, I) at every DDPM step, so E[eps | x_t] =
    sqrt(1 - alpha_bar_t) x_t; and for the flow x_t = (1-t) z + t x, E[x - z | x_t] = (2t - 1) x_t / ((1-t)^2 + t^2)."""

    def __init__(self, dim: int, schedule: core.Schedule | None = None):
        super().__init__()
        self.dim, self.schedule = dim, schedule

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.schedule is None:
            return ((2 * t - 1) / ((1 - t) ** 2 + t ** 2))[:, None] * x
        index = torch.round(t * self.schedule.steps).long() - 1  # step_times' inverse
        bar = self.schedule.alpha_bars[index].float()[:, None]
        return (1 - bar).sqrt() * x


@pytest.mark.parametrize("objective", list(core.Objective))
def test_both_samplers_with_the_exact_field_draw_the_data_distribution(objective):
    """Noise in, N(0, I) out: checks each sampler's direction of time and its step arithmetic."""
    schedule = core.Schedule.linear(100)
    model = ExactGaussian(3, schedule if objective == core.Objective.ddpm else None)
    rows = core.sample_rows(model, objective, schedule, 20_000, 200, seed=1, device=torch.device("cpu"))
    assert rows.shape == (20_000, 3) and rows.dtype == np.float32
    np.testing.assert_allclose(rows.mean(axis=0), 0.0, atol=0.03)
    np.testing.assert_allclose(rows.std(axis=0), 1.0, atol=0.03)  # a wrong time convention shrinks or blows up


def test_the_ddpm_bound_is_the_true_nll_when_the_reverse_process_is_exact():
    """For N(0, I) data every marginal is N(0, I) and the true reverse step is N(E[x_{t-1}|x_t], beta_t): the
    sampler's own variance. The model's chain is then the forward chain reversed, so -ELBO = -log p(x0) in
    expectation: the mean bound matches the closed form within its error, and a worse field lies above it."""
    schedule = core.Schedule.linear(100)
    x0 = torch.as_tensor(np.random.default_rng(0).standard_normal((4000, 2)), dtype=torch.float32)
    true_nll = 0.5 * (x0.pow(2).sum(1) + 2 * math.log(2 * math.pi))
    exact = ExactGaussian(2, schedule)
    gap = (core.negative_elbo(exact, schedule, x0, torch.Generator().manual_seed(2)) - true_nll).double()
    se = float(gap.std() / math.sqrt(len(gap)))
    assert abs(float(gap.mean())) < 3 * se < 0.1

    class Damped(ExactGaussian):
        def forward(self, x, t):
            return 0.8 * super().forward(x, t)

    worse = core.negative_elbo(Damped(2, schedule), schedule, x0, torch.Generator().manual_seed(2)) - true_nll
    assert float(worse.mean()) > 10 * se


def test_the_bound_in_data_units_adds_the_scalings_jacobian():
    schedule, model = core.Schedule.linear(10), core.build_denoiser(2, 16, 1, seed=0)
    rows = np.random.default_rng(1).standard_normal((50, 2)).astype(np.float32)
    unit = core.Scaling(np.zeros(2, dtype=np.float32), 1.0)
    scaled = core.Scaling(np.array([3.0, -1.0], dtype=np.float32), 0.25)
    on_unit = core.nll_bound(model, schedule, rows, unit, seed=3, device=torch.device("cpu"))
    moved = rows * 0.25 + np.array([3.0, -1.0], dtype=np.float32)  # the same points in data 4x narrower
    on_scaled = core.nll_bound(model, schedule, moved, scaled, seed=3, device=torch.device("cpu"))
    np.testing.assert_allclose(on_scaled, on_unit + 2 * math.log(0.25), rtol=1e-4, atol=1e-3)


def test_training_is_seeded_lowers_the_loss_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    rows = np.random.default_rng(0).standard_normal((256, 2)).astype(np.float32) * 0.3 + 1.0
    losses = []
    for _ in range(2):
        model = core.build_denoiser(2, 32, 1, seed=4)
        with torch.no_grad():
            before = float(core.loss_terms(model, core.Objective.flow, core.Schedule.linear(10),
                                           torch.as_tensor(rows), torch.Generator().manual_seed(0)).mean())
        stats = core.train_denoiser(model, rows, core.Objective.flow, core.Schedule.linear(10), 20, 64, 3e-3, 5,
                                    torch.device("cpu"))
        losses.append(stats["train_loss_last"])
    assert losses[0] == losses[1] < before
    assert torch.equal(state, torch.random.get_rng_state())


# --- whole runs --------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("args, extra", [(DIGITS, ("class_entropy", "class_share_max")),
                                         (RING, ("nll_test", "nll_test_se", "modes_covered", "high_quality"))])
def test_a_run_measures_every_generation_and_draws_its_figures(tmp_path, args, extra):
    from conftest import is_finite_number, read_metrics, run_in_process

    run = tmp_path / "run"
    assert run_in_process(["run", *args, "generations=2", f"hydra.run.dir={run}"]) == 0
    rows = read_metrics(run)
    assert [row["generation"] for row in rows] == [0, 1, 2]
    for key in ("frechet", "frechet_se", "frechet_floor", "precision", "recall", "density", "coverage",
                "tail_coverage", "tail_coverage_se", "train_loss_last", *extra):
        assert all(is_finite_number(row[key]) for row in rows), key
    assert rows[0]["frechet"] > rows[0]["frechet_floor"] > 0  # three epochs: nowhere near the real data yet
    figures = sorted(p.name for p in (run / "figures").glob("diffusion_*.png"))
    assert figures == ["diffusion_real.png", *(f"diffusion_samples_gen_{g:03d}.png" for g in range(3))]
    samples = np.load(run / "gen_002" / "samples.npy")
    assert samples.dtype == np.float32 and samples.shape[1] == (64 if "dataset=digits" in args else 2)


@pytest.mark.slow
@pytest.mark.parametrize("write", ["samples", "model"])
def test_a_kill_then_resume_ends_as_an_uninterrupted_run(tmp_path, write):
    """kill -9 (COLLAPSE_KILL_AT) right after a write of generation 1, fine-tuning the previous model (which the
    resume must read back); the resumed run's metrics and files are those of an uninterrupted run."""
    from conftest import read_metrics, read_status, run_in_process, stable
    from test_integrity import VARYING, files_of, killed_in_a_fork

    args = [*DIGITS, "generations=2", "train.init=previous", "checkpoints=none"]
    whole, run = tmp_path / "whole", tmp_path / "run"
    assert run_in_process(["run", *args, f"hydra.run.dir={whole}"]) == 0
    assert killed_in_a_fork(["run", *args, f"hydra.run.dir={run}"], f"{write}:1") == -signal.SIGKILL
    assert read_status(run)["state"] == "running"
    assert run_in_process(["resume", str(run)]) == 0
    assert stable(read_metrics(run)) == stable(read_metrics(whole))
    assert files_of(run, skip=VARYING) == files_of(whole, skip=VARYING)


@pytest.mark.parametrize("override, key", [
    ("model.hidden=0", "model.hidden"), ("model.timesteps=1", "model.timesteps"),
    ("model.sample_steps=0", "model.sample_steps"), ("model.objective=sde", "model.objective"),
    ("dataset.test_fraction=0.999", "dataset.test_fraction"), ("dataset.seed=-1", "dataset.seed"),
    ("dataset.n_train=50", "dataset.n_train"),  # a toy2d key under dataset=digits would do nothing
    ("dataset.max_train=0", "dataset.max_train")])
def test_bad_keys_exit_2_with_one_line_naming_the_key(tmp_path, capsys, override, key):
    from conftest import run_in_process
    from test_integrity import one_line

    objective = ["model.objective=ddpm"] if key == "model.timesteps" else []
    assert run_in_process(["run", *DIGITS, *objective, override, f"hydra.run.dir={tmp_path / 'run'}"]) == 2
    assert key in one_line(capsys.readouterr().err)
    assert not Path(tmp_path / "run").exists()


def test_a_digits_key_added_to_a_toy_is_refused_though_the_schema_holds_it(tmp_path, capsys):
    """`+key` gets past Hydra; the family's one dataset schema holds both groups' keys, and refuses the other's."""
    from conftest import run_in_process
    from test_integrity import one_line

    assert run_in_process(["run", *RING, "+dataset.max_train=10", f"hydra.run.dir={tmp_path / 'run'}"]) == 2
    assert "dataset.max_train=10 is read by dataset=digits only" in one_line(capsys.readouterr().err)


@pytest.mark.slow
def test_bertrand_diffusion_fine_tunes_and_sweeps_the_real_share_in_one_override(tmp_path, capsys):
    from conftest import run_in_process

    from collapse_cli.compose import compose as composed

    paper = composed(["+experiment=bertrand_diffusion"])
    assert (paper.model.family, paper.dataset.name, paper.train.init, paper.generations) == (
        "diffusion", "digits", "previous", 5)
    assert run_in_process(["run", "-m", "+experiment=bertrand_diffusion", "dry_run=true",
                           f"hydra.sweep.dir={tmp_path / 'sweep'}"]) == 0
    plans = [line for line in capsys.readouterr().out.splitlines() if "each generation trains on" in line]
    shares = [line.split("trains on ")[1].split(" real")[0] for line in plans]
    assert shares == ["100%", "67%", "50%", "0%"]  # lambda 0, 0.5, 1 and fully synthetic (mix = 1 / (1 + lambda))


@pytest.mark.parametrize("lr, epochs, message", [
    ("1e6", 5, r"training loss became (nan|inf) at step [2-5] \(diverged\)"),
    ("1e20", 1, r"the trained model samples nan or inf")])  # one step: its loss was finite
def test_a_diverging_fit_stops_with_one_line_naming_the_generation(lr, epochs, message):
    """A loss gone nan stops at its step; weights the last step broke (a finite loss) stop at the sample probe."""
    from collapse_cli.compose import compose
    from collapse_cli.errors import CollapseError
    from collapse_cli.families.diffusion.family import DiffusionFamily

    cfg = compose([*DIGITS, f"train.lr={lr}", f"train.epochs={epochs}", "train.batch_size=200"])
    family = DiffusionFamily(cfg, torch.device("cpu"))
    real = family.real_data(200)
    with pytest.raises(CollapseError, match=rf"^generation 1: {message}"):
        family.fit(family.build_base_model(0), real.train, seed=0, generation=1, on_step=lambda done, total: None)
