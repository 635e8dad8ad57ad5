"""Linear regression (model=linreg): the closed forms, checked exactly and against simulation, and real runs."""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path

import numpy as np
import pytest
from conftest import read_metrics, run_in_process, stable, start_collapse
from scipy import stats

from collapse_cli.families.linreg import core
from collapse_cli.families.linreg.family import LinregFamily

LINREG = ["model=linreg", "dataset=regression"]


def family_of(compose, *overrides: str) -> LinregFamily:
    return LinregFamily(compose([*LINREG, *overrides]), None)


def coefficient_factor(regime: str, generations: int) -> np.ndarray:
    """c_g from the explicit recursion e_g = sum_j A[g, j] z_j (z_0: real noise, z_{k+1}: corpus k's noise).

    An independent route to the closed forms: E||e_g||^2 = sigma^2 tr((X'X)^-1) sum_j A[g, j]^2.
    """
    a = np.zeros((generations + 1, generations + 1))
    a[0, 0] = 1.0
    for g in range(1, generations + 1):
        if regime == "replace":  # OLS on corpus g-1's labels X w_{g-1} + noise_g
            a[g] = a[g - 1]
            a[g, g] += 1.0
        else:  # accumulate, mix=1: the average of the real fit and every corpus's fit
            a[g, 0] = 1.0
            a[g] += a[:g].sum(axis=0)
            a[g, 1:g + 1] += 1.0
            a[g] /= g + 1
    return (a ** 2).sum(axis=1)


@pytest.mark.parametrize("regime", ["replace", "accumulate"])
def test_theory_factor_is_the_coefficient_recursion(regime):
    mix = 0.0 if regime == "replace" else 1.0
    expected = coefficient_factor(regime, 60)
    got = [core.theory_factor(regime, mix, g) for g in range(61)]
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_kazdans_defaults_give_the_papers_numbers():
    # d = 7, T = 89, sigma^2 = 1, n = 100 fits (the tool's generation 99).
    over_designs = 7 / (89 - 7 - 1)
    assert core.theory_factor("replace", 0.0, 99) * over_designs == pytest.approx(8.642, abs=5e-4)
    accumulate = core.theory_factor("accumulate", 1.0, 99) * over_designs
    assert accumulate == pytest.approx(0.1413, abs=5e-5) and accumulate < math.pi ** 2 / 6 * over_designs
    assert math.isnan(core.theory_factor("accumulate_subsample", 1.0, 3))
    assert core.theory_factor("accumulate_subsample", 0.5, 0) == 1.0  # generation 0 fits real labels in every loop
    assert math.isnan(core.theory_factor("replace", 0.5, 3)) and core.theory_factor("fresh", 1.0, 7) == 1.0


def test_inverse_gram_trace_averages_to_d_over_t_minus_d_minus_1():
    traces = np.array([core.inverse_gram_trace(core.gaussian_design(89, 7, seed)) for seed in range(4000)])
    half_width = stats.norm.ppf(0.995) * traces.std(ddof=1) / math.sqrt(len(traces))
    assert abs(traces.mean() - 7 / 81) < half_width


def simulate(family: LinregFamily, regime: str, generations: int, chains: int, seed: int) -> np.ndarray:
    """||w_g - w*||^2 [generations + 1, chains]: the family's design, labels and OLS, many chains at once.

    replace: generation g fits the previous fit's relabelled design; accumulate (mix=1): the real labels and
    every relabelling so far, stacked, as the loop's pool is.
    """
    x, sigma, truth = family.design, family.cfg.dataset.noise_std, family.truth
    weights = np.repeat(truth[:, None], chains, axis=1)
    stacked: list[np.ndarray] = []
    errors = np.empty((generations + 1, chains))
    for g in range(generations + 1):
        y = core.labels(x, weights, sigma, [seed, g])  # real labels at g = 0, then the previous fit's
        stacked = [y] if regime == "replace" else [*stacked, y]
        weights = core.fit_ols(core.cycled(x, len(x) * len(stacked)), np.concatenate(stacked))
        errors[g] = core.param_error(weights, truth)
    return errors


@pytest.mark.parametrize("regime, generations, chains, checked", [("replace", 2000, 400, (0, 9, 99, 999, 2000)),
                                                                  ("accumulate", 40, 1000, (0, 1, 9, 40))])
@pytest.mark.slow  # chains of 2000 generations: ~1.3 s; the replace law given generation 0 stays quick
def test_the_mean_error_over_chains_matches_the_closed_form(compose, regime, generations, chains, checked):
    """Within its 99% CI at every checked generation, given the design (what mse_theory logs); the other
    regime's closed form lies outside it once they part."""
    family = family_of(compose, f"regime={regime}", f"mix={0.0 if regime == 'replace' else 1.0}")
    errors = simulate(family, regime, generations, chains, seed=11)
    trace = core.inverse_gram_trace(family.design)
    other = "accumulate" if regime == "replace" else "replace"
    for g in checked:
        half_width = stats.t.ppf(0.995, errors.shape[1] - 1) * errors[g].std(ddof=1) / math.sqrt(errors.shape[1])
        assert abs(errors[g].mean() - family.theory(g)[0]) < half_width, g
        assert family.theory(g)[0] == pytest.approx(trace * core.theory_factor(regime, family.cfg.mix, g))
        if g >= 9:
            assert abs(errors[g].mean() - trace * core.theory_factor(other, 1.0 - family.cfg.mix, g)) > half_width


def test_tail_coverage_counts_rare_predictions_inside_the_noise_band(compose):
    family = family_of(compose)
    rare = core.rare_inputs(family.test_x)
    assert len(rare) == pytest.approx(0.05 * len(family.test_x), abs=1)
    norms = np.linalg.norm(family.test_x, axis=1)
    assert norms[rare].min() >= np.quantile(norms, 0.95)
    assert core.tail_coverage(family.truth, family.truth, family.rare_x, 1.0) == (1.0, 0.0)
    far = family.truth + 100.0
    assert core.tail_coverage(far, family.truth, family.rare_x, 1.0)[0] == 0.0
    # Along e_1 by 1: a rare input is covered when |x_1| <= 1.645.
    shifted = family.truth + np.eye(len(family.truth))[0]
    share, se = core.tail_coverage(shifted, family.truth, family.rare_x, 1.0)
    expected = float(np.mean(np.abs(family.rare_x[:, 0]) <= core.BAND_Z))
    assert share == expected and se == pytest.approx(math.sqrt(expected * (1 - expected) / len(family.rare_x)))


@pytest.mark.slow
def test_an_accumulate_run_refits_the_papers_pool(compose, tmp_path):
    """Generation 1 of accumulate, mix=1 trains on the real labels and generation 0's relabelling of the same
    design: its weights are the mean of the two OLS fits; mse_theory is the closed form; the figure is written."""
    run_dir = tmp_path / "run"
    assert run_in_process(["run", *LINREG, "regime=accumulate", "mix=1", "generations=4", "checkpoints=all",
                           f"hydra.run.dir={run_dir}"]) == 0
    family = family_of(compose, "regime=accumulate", "mix=1")
    real = family.real_data(None).train
    gen0 = np.load(run_dir / "gen_000" / "samples.npy")
    np.testing.assert_array_equal(gen0[:, :-1], family.design)  # the same design, relabelled
    w1 = np.load(run_dir / "gen_001" / "model" / "weights.npy")
    np.testing.assert_allclose(w1, (core.fit_ols(family.design, real[:, -1]) + core.fit_ols(family.design, gen0[:, -1]))
                               / 2, rtol=1e-10)
    rows = read_metrics(run_dir)
    assert [row["train_rows"] for row in rows] == [89 * (g + 1) for g in range(5)]
    for row in rows:
        assert row["mse_theory"] == pytest.approx(family.theory(row["generation"])[0], rel=1e-12)
        assert row["tail_coverage_se"] >= 0 and row["test_mse_se"] > 0
    assert (run_dir / "figures" / "linreg_error.png").stat().st_size > 5000
    assert "early_warning" in json.loads((run_dir / "summary.json").read_text())


def kill_and_resume(tmp_path: Path, args: list[str], marker: str) -> tuple[list[dict], list[dict]]:
    """(an uninterrupted run's metrics, a run SIGKILLed once `marker` exists and then resumed)."""
    from test_resume import signal_when

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert run_in_process(["run", *args, f"hydra.run.dir={whole}"]) == 0
    proc = start_collapse(["run", *args, f"hydra.run.dir={killed}"], cwd=tmp_path)
    signal_when(proc, killed / marker, signal.SIGKILL)
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert run_in_process(["resume", str(killed)]) == 0
    return stable(read_metrics(whole)), stable(read_metrics(killed))


@pytest.mark.slow
def test_kill_9_then_resume_gives_identical_metrics(tmp_path):
    whole, resumed = kill_and_resume(tmp_path, [*LINREG, "generations=600"], "gen_020/DONE")
    assert resumed == whole and len(whole) == 601


@pytest.mark.parametrize("override, key", [("dataset.n_train=8", "dataset.n_train"),
                                           ("dataset.noise_std=nan", "dataset.noise_std"),
                                           ("dataset.noise_std=inf", "dataset.noise_std"),
                                           ("dataset.noise_std=0", "dataset.noise_std"),
                                           ("dataset.dim=0", "dataset.dim"), ("dataset.n_test=10", "dataset.n_test"),
                                           ("dataset.seed=-1", "dataset.seed")])
def test_bad_keys_exit_2_with_one_line_naming_the_key(tmp_path, capsys, override, key):
    assert run_in_process(["run", *LINREG, override, f"hydra.run.dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and key in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "run" / "gen_000").exists()


@pytest.mark.slow  # starts `collapse run` in-process
def test_dry_run_writes_nothing(tmp_path):
    assert run_in_process(["run", *LINREG, "dry_run=true", f"hydra.run.dir={tmp_path / 'run'}"]) == 0
    assert not (tmp_path / "run" / "gen_000").exists()


def test_gerstgrasser_linreg_is_the_papers_setting(compose):
    paper = compose(["+experiment=gerstgrasser_linreg"])
    assert (paper.dataset.dim, paper.dataset.n_train, paper.dataset.noise_std) == (7, 89, 1.0)
    assert (paper.regime, paper.mix, paper.generations) == ("accumulate", 1.0, 99)
    replace = compose(["+experiment=gerstgrasser_linreg", "regime=replace", "mix=0"])
    assert LinregFamily(replace, None).theory(99)[1] == pytest.approx(8.642, abs=5e-4)


def test_the_familys_own_fit_and_sample_follow_the_replace_law_given_generation_0(compose):
    """Through LinregFamily.fit / .sample with the loop's stage seeds, 300 run seeds sharing the design and
    the real labels (a `seed=` sweep): E||e_g||^2 = ||e_0||^2 + g sigma^2 tr((X'X)^-1), within its 99% CI."""
    from collapse_cli.experiment.seeds import stage_seed

    family = family_of(compose, "regime=replace")
    ignore = lambda done, total: None  # noqa: E731  (progress callbacks)
    real = family.real_data(None).train
    generations, errors = 8, []
    for run_seed in range(300):
        rows, chain = real, []
        for g in range(generations + 1):
            model = family.build_base_model(run_seed)
            family.fit(model, rows, stage_seed(run_seed, g, "train"), g, ignore)
            chain.append(float(core.param_error(model.weights, family.truth)))
            rows = family.sample(model, len(real), stage_seed(run_seed, g, "generate"), ignore)
        errors.append(chain)
    errors = np.array(errors)
    assert np.all(errors[:, 0] == errors[0, 0])  # generation 0 is the shared real fit
    expected = errors[0, 0] + generations * core.inverse_gram_trace(family.design)
    assert within_99(errors[:, generations], expected)


def within_99(values: np.ndarray, expected: float) -> bool:
    half_width = stats.t.ppf(0.995, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return abs(values.mean() - expected) < half_width
