"""Linear regression as a family: rows (x, y) of d + 1 float64 numbers; core.py does the work.

Defaults are Kazdan et al.'s (d = 7, T = 89, sigma = 1). A sample of n rows relabels the fixed design:
row i is (x_{i mod T}, x_{i mod T} w_hat + fresh noise), so n = T (what the loop asks) is the design X
relabelled, as in Gerstgrasser et al. `regime=accumulate mix=1` then trains generation g on the real
labels and every earlier relabelling of the same X: their setting exactly (`+experiment=gerstgrasser_linreg`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from collapse_cli.checks import check_memory, keys_text
from collapse_cli.errors import CollapseError
from collapse_cli.families.base import Family, Progress, RealData
from collapse_cli.families.linreg import core
from collapse_cli.families.linreg.facts import FACTS
from collapse_cli.measure import stats
from collapse_cli.rundir import RunDir, require_run_array

WEIGHTS_FILE = "weights.npy"


@dataclass
class LinregModelConfig:
    """`model=linreg`: ordinary least squares, no intercept (the data has none)."""

    family: str = "linreg"
    name: str = "linreg"


@dataclass
class RegressionDatasetConfig:
    """`dataset=regression`: a fixed Gaussian design, a true w* ~ N(0, I_d) and Gaussian label noise."""

    name: str = "regression"
    dim: int = 7  # d: inputs per row
    n_train: int = 89  # T: design rows; generation 0 fits them, every generation relabels them
    n_test: int = 10000  # held-out real rows (their own design) for test_mse and the rare inputs
    noise_std: float = 1.0  # sigma of the label noise, real and synthetic alike (known, not estimated)
    seed: int = 0  # design, w*, real noise and test rows depend on this seed only


@dataclass
class LinregModel:
    """Mutable holder (the loop deep-copies the base model and fits it in place); None until fitted."""

    weights: Optional[np.ndarray] = None


class LinregFamily(Family):
    name = "linreg"
    model_schema = LinregModelConfig
    dataset_schema = RegressionDatasetConfig
    datasets = ("regression",)
    facts = FACTS
    size_key = "dataset.n_train"
    weighs_rows = True  # weighted least squares
    leading_keys = ("generation", "param_error", "mse_theory", "test_mse", "tail_coverage")

    def __init__(self, cfg: Any, device: Any):
        super().__init__(cfg, device)
        d = cfg.dataset
        self.design = core.gaussian_design(d.n_train, d.dim, [d.seed, 0])
        self.truth = np.random.default_rng([d.seed, 1]).standard_normal(d.dim)
        self.test_x = core.gaussian_design(d.n_test, d.dim, [d.seed, 3])
        self.test_y = core.labels(self.test_x, self.truth, d.noise_std, [d.seed, 4])
        self.rare_x = self.test_x[core.rare_inputs(self.test_x)]

    @classmethod
    def validate(cls, cfg: Any) -> None:
        d = cfg.dataset
        if not 0 <= d.seed < 2**32:
            raise CollapseError(f"dataset.seed={d.seed} must be an integer from 0 to {2**32 - 1}")
        if d.dim < 1:
            raise CollapseError(f"dataset.dim={d.dim} must be at least 1")
        if d.n_train <= d.dim + 1:
            raise CollapseError(f"dataset.n_train={d.n_train} must exceed dataset.dim + 1 = {d.dim + 1} "
                                f"(OLS needs T > d + 1 for a finite expected error)")
        if d.n_test < 1 / core.TAIL_MASS:
            raise CollapseError(f"dataset.n_test={d.n_test} must be at least {round(1 / core.TAIL_MASS)} "
                                f"(its outer {core.TAIL_MASS:.0%} are the rare inputs)")
        if not (math.isfinite(d.noise_std) and d.noise_std > 0):
            raise CollapseError(f"dataset.noise_std={d.noise_std} must be a positive finite number")
        # float64 rows of d inputs and a label; accumulate keeps every generation's rows.
        kept = d.n_train * cfg.generations_held()
        check_memory(8 * (d.dim + 1) * (kept + d.n_test), keys_text("dataset", d, ("dim", "n_train", "n_test")),
                     "lower them")

    def real_data(self, pool_cap: Optional[int]) -> RealData:
        # Rows past T (regime=fresh) cycle through the design again, with noise no earlier row had.
        d = self.cfg.dataset
        x = core.cycled(self.design, pool_cap or d.n_train)
        return RealData(train=core.rows(x, core.labels(x, self.truth, d.noise_std, [d.seed, 2])),
                        test=core.rows(self.test_x, self.test_y))

    def train_cap(self) -> Optional[int]:
        return self.cfg.dataset.n_train

    def build_base_model(self, seed: int) -> LinregModel:
        return LinregModel()

    def fit(self, model: LinregModel, train: np.ndarray, seed: int, generation: int, on_step: Progress,
            row_weights: Optional[np.ndarray] = None) -> dict:
        # Weighted least squares: rows scaled by sqrt(weight) minimise sum_i w_i r_i^2 (train.real_weight).
        scale = np.ones(len(train)) if row_weights is None else np.sqrt(row_weights)
        try:
            model.weights = core.fit_ols(train[:, :-1] * scale[:, None], train[:, -1] * scale)
        except ValueError as error:
            raise CollapseError(f"generation {generation}: {error}; raise dataset.n_train or mix") from None
        on_step(1, 1)
        residual = train[:, -1] - train[:, :-1] @ model.weights
        return {"train_mse": float(np.mean(residual ** 2))}

    def sample(self, model: LinregModel, n: int, seed: int, on_batch: Progress) -> np.ndarray:
        x = core.cycled(self.design, n)
        samples = core.rows(x, core.labels(x, model.weights, self.cfg.dataset.noise_std, seed))
        on_batch(n, n)
        return samples

    def theory(self, generation: int) -> tuple[float, float]:
        """(E||w_g - w*||^2 given this design, the same averaged over Gaussian designs); nan without a closed form."""
        d = self.cfg.dataset
        factor = core.theory_factor(self.cfg.regime, self.cfg.mix, generation) * d.noise_std ** 2
        if self.cfg.train.real_weight != 1 and self.cfg.regime == "accumulate" and generation > 0:
            factor = float("nan")  # real and synthetic labels weighted unequally: the closed form averages them equally
        return factor * core.inverse_gram_trace(self.design), factor * d.dim / (d.n_train - d.dim - 1)

    def measure(self, generation: int, model: LinregModel, reference_model: LinregModel, samples: np.ndarray,
                seed: int, on_progress: Progress) -> tuple[dict, np.ndarray]:
        test_sq = (self.test_y - self.test_x @ model.weights) ** 2
        coverage, coverage_se = core.tail_coverage(model.weights, self.truth, self.rare_x, self.cfg.dataset.noise_std)
        mse_theory, mse_theory_avg = self.theory(generation)
        metrics = {
            "param_error": float(core.param_error(model.weights, self.truth)),
            "mse_theory": mse_theory,
            "mse_theory_avg": mse_theory_avg,
            "test_mse": float(test_sq.mean()),
            "test_mse_se": stats.mean_se(test_sq),
            "tail_coverage": coverage,
            "tail_coverage_se": coverage_se,
            "param_error_to_gen0": float(core.param_error(model.weights, reference_model.weights)),
        }
        on_progress(1, 1)
        # Per-sample score: the synthetic label's squared distance from the true mean.
        return metrics, (samples[:, -1] - samples[:, :-1] @ self.truth) ** 2

    def truth_scores(self, samples: np.ndarray) -> np.ndarray:
        """The label's true log-likelihood N(y; x w*, sigma^2): minus its squared error against x w*, scaled."""
        sigma = self.cfg.dataset.noise_std
        residual = samples[:, -1] - samples[:, :-1] @ self.truth
        return -0.5 * (residual / sigma) ** 2 - math.log(sigma * math.sqrt(2 * math.pi))

    def n_parameters(self, model: LinregModel) -> int:
        return self.cfg.dataset.dim

    def describe(self) -> str:
        d = self.cfg.dataset
        return f"linreg (OLS, d {d.dim}, T {d.n_train} design rows, noise sigma {d.noise_std:g})"

    def save_model(self, model: LinregModel, folder: Path) -> None:
        RunDir(folder).save_array(WEIGHTS_FILE, model.weights)

    def load_model(self, folder: Path) -> LinregModel:
        return LinregModel(require_run_array(Path(folder) / WEIGHTS_FILE))

    def figures(self, run_dir: Path, rows: list[dict]) -> list[Path]:
        """figures/linreg_error.png: the parameter error by generation beside its closed forms."""
        if not rows:
            return []
        return [core.error_figure(rows, Path(run_dir) / "figures" / "linreg_error.png")]


FAMILY = LinregFamily
