"""The categorical family (model=categorical): Wright-Fisher extinction, checked exactly and by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import read_metrics, run_in_process
from test_linreg import kill_and_resume, within_99

from collapse_cli.families.categorical import core
from collapse_cli.families.categorical.family import CategoricalFamily

CATEGORICAL = ["model=categorical", "dataset=zipf"]


def prepared(compose, *overrides: str) -> CategoricalFamily:
    family = CategoricalFamily(compose([*CATEGORICAL, *overrides]), None)
    real = family.real_data(None)
    family.prepare(real, len(real.train))
    return family


def test_zipf_and_the_rare_outcomes():
    p = core.zipf(4, 1.0)
    np.testing.assert_allclose(p, np.array([1, 1 / 2, 1 / 3, 1 / 4]) / (25 / 12))
    rare = core.rare_outcomes(core.zipf(100, 1.1))
    truth = core.zipf(100, 1.1)
    assert truth[rare].sum() <= core.TAIL_MASS < truth[rare].sum() + truth[rare.min() - 1]
    assert rare.tolist() == list(range(rare.min(), 100))  # the lightest outcomes, contiguous in rank


def test_one_generation_survival_is_the_binomial_closed_form():
    """P(X_1 > 0 | X_0 = j) = 1 - (1 - j/N)^N, and the average over X_0 ~ Bin(N, p) at g = 0 is 1 - (1-p)^N."""
    n, truth = 30, core.zipf(12, 1.3)
    real_counts = np.array([10, 7, 4, 3, 2, 1, 1, 1, 1, 0, 0, 0])
    given, averaged = core.expected_survivors(real_counts, truth, 3)
    assert given[0] == 9 and given[1] == pytest.approx(np.sum(1 - (1 - real_counts / n) ** n))
    assert averaged[0] == pytest.approx(np.sum(1 - (1 - truth) ** n))
    np.testing.assert_allclose(core.wright_fisher_matrix(n).sum(axis=1), 1.0)
    assert np.all(np.diff(given) <= 0) and np.all(np.diff(averaged) <= 0)  # extinction only


def simulated_survivors(start_counts: np.ndarray, generations: int, seed: int) -> np.ndarray:
    """Survivors [generations + 1, chains]: each generation N draws from the previous counts / N."""
    rng = np.random.default_rng(seed)
    n = int(start_counts[0].sum())
    counts, out = start_counts, np.empty((generations + 1, len(start_counts)))
    for g in range(generations + 1):
        out[g] = np.count_nonzero(counts, axis=1)
        counts = core.draw_counts(counts / n, n, rng)
    return out


def test_mean_survivors_over_chains_match_wright_fisher_given_the_real_counts(compose):
    """2,000 chains from the family's own real draws, 200 generations: the mean within its 99% CI of
    survivors_theory at every checked generation, and the fitted estimate is the counts' share."""
    family = prepared(compose, "generations=200")
    real_counts = np.bincount(family.real_data(None).train[:, 0], minlength=len(family.truth))
    rows = core.rows_from_counts(real_counts, np.random.default_rng(0))
    np.testing.assert_array_equal(core.estimate(rows, len(real_counts)), real_counts / real_counts.sum())
    survivors = simulated_survivors(np.tile(real_counts, (2000, 1)), 200, seed=5)
    assert np.all(survivors[0] == family.survivors_theory[0])  # generation 0: the real support, exactly
    for g in (1, 5, 20, 80, 200):
        assert within_99(survivors[g], family.survivors_theory[g]), g
    # A chain that ignored the coupling's marginals (say, survivors halving) would be far outside.
    assert not within_99(survivors[20], family.survivors_theory[20] * 0.9)


def test_mean_survivors_over_real_samples_match_the_averaged_form():
    truth, n = core.zipf(100, 1.1), 1000
    rng = np.random.default_rng(3)
    starts = core.draw_counts(np.tile(truth, (2000, 1)), n, rng)
    survivors = simulated_survivors(starts, 60, seed=4)
    _, averaged = core.expected_survivors(starts[0], truth, 60)
    for g in (0, 10, 60):
        assert within_99(survivors[g], averaged[g]), g


def test_tail_coverage_and_divergences_on_constructed_estimates():
    truth = core.zipf(100, 1.1)
    rare = core.rare_outcomes(truth)
    assert core.tail_coverage(truth, rare) == (1.0, 0.0)
    half_dead = truth.copy()
    half_dead[rare[: len(rare) // 2]] = 0
    share, se = core.tail_coverage(half_dead / half_dead.sum(), rare)
    assert share == pytest.approx((len(rare) - len(rare) // 2) / len(rare))
    assert se == pytest.approx(math.sqrt(share * (1 - share) / len(rare)))
    assert core.tv_distance(truth, truth) == 0.0 and core.kl_model_truth(truth, truth) == pytest.approx(0.0)
    point = np.eye(100)[0]
    assert core.tv_distance(truth, point) == pytest.approx(1 - truth[0])
    assert core.kl_model_truth(point, truth) == pytest.approx(-math.log(truth[0]))


@pytest.mark.slow
def test_a_run_logs_theory_beside_survivors_and_draws_its_figures(compose, tmp_path):
    run_dir = tmp_path / "run"
    assert run_in_process(["run", *CATEGORICAL, "generations=40", f"hydra.run.dir={run_dir}"]) == 0
    rows = read_metrics(run_dir)
    family = prepared(compose, "generations=40")
    assert [row["survivors_theory"] for row in rows] == pytest.approx(family.survivors_theory.tolist(), rel=1e-12)
    assert rows[0]["survivors"] == rows[0]["survivors_theory"]  # generation 0 counts the real draws
    assert all(b["survivors"] <= a["survivors"] for a, b in zip(rows, rows[1:]))  # no outcome comes back
    assert rows[-1]["tail_coverage"] < rows[0]["tail_coverage"]
    for name in ("categorical_rank_frequency.png", "categorical_survivors.png"):
        assert (run_dir / "figures" / name).stat().st_size > 5000


@pytest.mark.slow
def test_kill_9_then_resume_gives_identical_metrics(tmp_path):
    whole, resumed = kill_and_resume(tmp_path, [*CATEGORICAL, "generations=600"], "gen_020/DONE")
    assert resumed == whole and len(whole) == 601


def test_accumulating_all_real_draws_keeps_the_real_support(compose):
    family = prepared(compose, "regime=accumulate", "mix=1", "generations=5")
    assert np.all(family.survivors_theory == family.survivors_theory[0])
    assert np.all(np.isnan(prepared(compose, "regime=replace", "mix=0.5", "generations=5").survivors_theory[1:]))


@pytest.mark.parametrize("override, key", [("dataset.exponent=nan", "dataset.exponent"),
                                           ("dataset.exponent=-1", "dataset.exponent"),
                                           ("dataset.n_outcomes=0", "dataset.n_outcomes"),
                                           ("dataset.n_train=0", "dataset.n_train"),
                                           ("model.figure_generations=0", "model.figure_generations"),
                                           ("dataset.seed=-1", "dataset.seed")])
def test_bad_keys_exit_2_with_one_line_naming_the_key(tmp_path, capsys, override, key):
    assert run_in_process(["run", *CATEGORICAL, override, f"hydra.run.dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and key in err[0] and "Traceback" not in err[0]


@pytest.mark.slow  # starts `collapse run` in-process
def test_dry_run_writes_nothing(tmp_path):
    assert run_in_process(["run", *CATEGORICAL, "dry_run=true", f"hydra.run.dir={tmp_path / 'run'}"]) == 0
    assert not (tmp_path / "run" / "gen_000").exists()
