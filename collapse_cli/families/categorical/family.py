"""A categorical distribution as a family: int64 rows [n, 1] of outcome ids; core.py does the work.

Real data: N draws from Zipf(exponent) over K outcomes. Each generation's model is p_hat, the
outcome shares of its training rows; its samples are N draws from p_hat. survivors_theory is the
exact Wright-Fisher expectation for the loops where one holds (docs/metrics.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from collapse_cli.checks import check_count, check_memory, keys_text
from collapse_cli.errors import CollapseError
from collapse_cli.families.base import Family, Progress, RealData
from collapse_cli.families.categorical import core
from collapse_cli.families.categorical.facts import FACTS
from collapse_cli.families.plots import chosen_generations
from collapse_cli.measure import stats
from collapse_cli.rundir import RunDir, gen_name, require_run_array

PROBS_FILE = "probs.npy"
MAX_THEORY_N = 4000  # the Wright-Fisher matrix is (N + 1)^2 float64: 128 MB at N = 4000


@dataclass
class CategoricalModelConfig:
    """`model=categorical`: the maximum-likelihood estimate p_hat = counts / N (no smoothing)."""

    family: str = "categorical"
    name: str = "categorical"
    figure_generations: int = 6  # generations drawn in figures/categorical_rank_frequency.png


@dataclass
class ZipfDatasetConfig:
    """`dataset=zipf`: draws from p_i proportional to i^-exponent over n_outcomes outcomes."""

    name: str = "zipf"
    n_outcomes: int = 100  # K
    exponent: float = 1.1  # s: larger is a steeper head and a thinner tail
    n_train: int = 1000  # N: real draws generation 0 counts, and draws every generation samples
    n_test: int = 10000  # held-out real draws for test_covered
    seed: int = 0  # the real draws depend on this seed only, so a seed sweep shares them


@dataclass
class CategoricalModel:
    """Mutable holder (the loop deep-copies the base model and fits it in place); None until fitted."""

    probs: Optional[np.ndarray] = None


class CategoricalFamily(Family):
    name = "categorical"
    model_schema = CategoricalModelConfig
    dataset_schema = ZipfDatasetConfig
    datasets = ("zipf",)
    facts = FACTS
    size_key = "dataset.n_train"
    weighs_rows = True  # weighted counts
    leading_keys = ("generation", "survivors", "survivors_theory", "tail_coverage", "test_covered", "tv_truth")

    def __init__(self, cfg: Any, device: Any):
        super().__init__(cfg, device)
        d = cfg.dataset
        self.truth = core.zipf(d.n_outcomes, d.exponent)
        self.rare = core.rare_outcomes(self.truth)
        self.test: Optional[np.ndarray] = None
        self.survivors_theory = np.full(cfg.generations + 1, np.nan)
        self.survivors_theory_avg = np.full(cfg.generations + 1, np.nan)

    @classmethod
    def validate(cls, cfg: Any) -> None:
        d = cfg.dataset
        if not 0 <= d.seed < 2**32:
            raise CollapseError(f"dataset.seed={d.seed} must be an integer from 0 to {2**32 - 1}")
        counts = {f"dataset.{key}": getattr(d, key) for key in ("n_outcomes", "n_train", "n_test")}
        counts["model.figure_generations"] = cfg.model.figure_generations
        for key, value in counts.items():
            if value < 1:
                raise CollapseError(f"{key}={value} must be at least 1")
        check_count("model.figure_generations", cfg.model.figure_generations)
        # survivors_theory's Wright-Fisher chain: an (N+1) x (N+1) transition matrix and K x (N+1) start laws,
        # float64; beside them the draws (int64 rows), all generations' under accumulate.
        n, kept = d.n_train + 1, d.n_train * cfg.generations_held()
        check_memory(8 * (n * n + d.n_outcomes * n + kept + d.n_test),
                     keys_text("dataset", d, ("n_outcomes", "n_train", "n_test")), "lower them")
        if not (math.isfinite(d.exponent) and d.exponent >= 0):
            raise CollapseError(f"dataset.exponent={d.exponent} must be a finite number >= 0 (0: uniform)")

    def _rows(self, probs: np.ndarray, n: int, seed: int | list[int]) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return core.rows_from_counts(core.draw_counts(probs, n, rng), rng)

    def real_data(self, pool_cap: Optional[int]) -> RealData:
        d = self.cfg.dataset
        return RealData(train=self._rows(self.truth, pool_cap or d.n_train, [d.seed, 0]),
                        test=self._rows(self.truth, d.n_test, [d.seed, 1]))

    def train_cap(self) -> Optional[int]:
        return self.cfg.dataset.n_train

    def prepare(self, real: RealData, n_train: int) -> None:
        self.test = real.test
        real_counts = np.bincount(real.train[:n_train, 0], minlength=len(self.truth))
        given, averaged = self._theory(real_counts)
        self.survivors_theory[: len(given)], self.survivors_theory_avg[: len(averaged)] = given, averaged

    def _theory(self, real_counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Expected survivors by generation where a closed form holds (docs/metrics.md); shorter arrays end early."""
        cfg, n = self.cfg, int(real_counts.sum())
        if n > MAX_THEORY_N:
            return np.empty(0), np.empty(0)
        wright_fisher = cfg.regime == "replace" and cfg.mix == 0.0
        given, averaged = core.expected_survivors(real_counts, self.truth, cfg.generations if wright_fisher else 0)
        if wright_fisher:
            return given, averaged
        # All real draws kept in every training set: the real support survives, no more, no less.
        if cfg.mix == 1.0 and cfg.regime in ("replace", "accumulate"):
            return np.repeat(given, cfg.generations + 1), np.repeat(averaged, cfg.generations + 1)
        return given, averaged  # generation 0 only

    def build_base_model(self, seed: int) -> CategoricalModel:
        return CategoricalModel()

    def fit(self, model: CategoricalModel, train: np.ndarray, seed: int, generation: int,
            on_step: Progress, row_weights: Optional[np.ndarray] = None) -> dict:
        model.probs = core.estimate(train, len(self.truth), row_weights)
        on_step(1, 1)
        return {}

    def sample(self, model: CategoricalModel, n: int, seed: int, on_batch: Progress) -> np.ndarray:
        samples = self._rows(model.probs, n, seed)
        on_batch(n, n)
        return samples

    def measure(self, generation: int, model: CategoricalModel, reference_model: CategoricalModel,
                samples: np.ndarray, seed: int, on_progress: Progress) -> tuple[dict, np.ndarray]:
        p_hat = model.probs
        covered = p_hat[self.test[:, 0]] > 0
        coverage, coverage_se = core.tail_coverage(p_hat, self.rare)
        metrics = {
            "survivors": int(np.count_nonzero(p_hat)),
            "survivors_theory": float(self.survivors_theory[generation]),
            "survivors_theory_avg": float(self.survivors_theory_avg[generation]),
            "tail_coverage": coverage,
            "tail_coverage_se": coverage_se,
            "test_covered": float(covered.mean()),
            "test_covered_se": stats.binomial_se(float(covered.mean()), len(covered)),
            "tv_truth": core.tv_distance(self.truth, p_hat),
            "kl_model_truth": core.kl_model_truth(p_hat, self.truth),
            "sample_outcomes": int(len(np.unique(samples[:, 0]))),
        }
        on_progress(1, 1)
        return metrics, -np.log(self.truth[samples[:, 0]])  # each draw's surprisal under the truth

    def truth_scores(self, samples: np.ndarray) -> np.ndarray:
        return np.log(self.truth[samples[:, 0]])

    def n_parameters(self, model: CategoricalModel) -> int:
        return len(self.truth) - 1

    def describe(self) -> str:
        d = self.cfg.dataset
        return f"categorical (p_hat = counts / N over K {d.n_outcomes} outcomes, real Zipf exponent {d.exponent:g})"

    def save_model(self, model: CategoricalModel, folder: Path) -> None:
        RunDir(folder).save_array(PROBS_FILE, model.probs)

    def load_model(self, folder: Path) -> CategoricalModel:
        return CategoricalModel(require_run_array(Path(folder) / PROBS_FILE))

    def figures(self, run_dir: Path, rows: list[dict]) -> list[Path]:
        """figures/categorical_rank_frequency.png (chosen generations), figures/categorical_survivors.png."""
        if not rows:
            return []
        chosen = chosen_generations(int(rows[-1]["generation"]), self.cfg.model.figure_generations)
        freqs = {g: core.estimate(self.load_samples(Path(run_dir) / gen_name(g)), len(self.truth)) for g in chosen}
        figures = Path(run_dir) / "figures"
        return [core.rank_frequency_figure(self.truth, freqs, figures / "categorical_rank_frequency.png"),
                core.survivors_figure(rows, figures / "categorical_survivors.png")]


FAMILY = CategoricalFamily
