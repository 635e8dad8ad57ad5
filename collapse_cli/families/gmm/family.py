"""The Gaussian mixture as a family: float32 points [n, dim] in, float32 points out (core.py does the work).

Defaults are the paper's data and model: 1,000 points from one 2-D standard normal, 2 full-covariance
components; its EM settings (tol 1e-5, max_iter 2000) are `+experiment=shumailov_gmm` (see GMMModelConfig).
What a generation writes stays small: samples.npy (n x dim float32) and metrics; the per-sample
scores (NLL under the true density) are recomputable from it and not saved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from collapse_cli.checks import StrEnum, check_count, check_memory, check_seed, keys_text  # StrEnum: 3.10 too
from collapse_cli.errors import CollapseError
from collapse_cli.families.base import Family, Progress, RealData
from collapse_cli.families.gmm import core
from collapse_cli.families.gmm.facts import FACTS
from collapse_cli.families.plots import chosen_generations
from collapse_cli.families.toy2d import PointFiles
from collapse_cli.measure import points as P
from collapse_cli.measure import stats
from collapse_cli.rundir import gen_name

MIXTURE_FILE = "mixture.npz"
MAX_FIGURE_GENERATIONS = 100  # panels of one figure row
MAX_COORDINATE = 1e15


class Variance(StrEnum):
    """How each component's covariance is estimated from its points."""

    mle = "mle"  # maximum likelihood (divide by n_k, ddof 0): what EM computes
    unbiased = "unbiased"  # divide by n_k - 1 (ddof 1): the estimator of Shumailov et al.'s theorem


@dataclass
class GMMModelConfig:
    """`model=gmm`: the fitted mixture and its EM settings."""

    family: str = "gmm"
    name: str = "gmm"
    n_components: int = 2
    # scikit-learn's defaults. The authors' notebook uses tol 1e-5 and max_iter 2000
    # (+experiment=shumailov_gmm); the defaults stay so that earlier runs' metrics stay
    # bit-identical (conf/model/gmm.yaml says more).
    tol: float = 1e-3
    max_iter: int = 100
    variance: Variance = Variance.mle
    n_init: int = 1
    reg_covar: float = 1e-6
    figure_generations: int = 6  # generations drawn in figures/gmm_scatter.png, log-spaced from 0 to the last


@dataclass
class GaussianDatasetConfig:
    """`dataset=gaussian`: points drawn from a known true mixture (null means/covariances: one standard normal)."""

    name: str = "gaussian"
    dim: int = 2
    n_train: int = 1000  # N: real points generation 0 fits, and points every generation samples
    n_test: int = 1000  # held-out real points for nll_test and the tail threshold
    weights: list[float] = field(default_factory=lambda: [1.0])
    means: Optional[list[list[float]]] = None
    covariances: Optional[list[list[list[float]]]] = None
    seed: int = 0  # the real data depends on this seed only, so a seed sweep shares it


@dataclass
class GMMModel:
    """Mutable holder (the loop deep-copies the base model and fits it in place); None until fitted."""

    mixture: Optional[core.Mixture] = None


def true_mixture(d: GaussianDatasetConfig) -> core.Mixture:
    """The dataset's true distribution; CollapseError naming the key when it is not a valid mixture."""
    k = len(d.weights)
    means = d.means if d.means is not None else [[0.0] * d.dim] * k
    covariances = d.covariances if d.covariances is not None else [np.eye(d.dim).tolist()] * k
    try:
        truth = core.make_mixture(d.weights, means, covariances)
    except ValueError as error:
        raise CollapseError(f"dataset.weights/means/covariances: {error}; fix them in conf/dataset/gaussian.yaml "
                            f"or on the command line") from None
    if truth.dim != d.dim:
        raise CollapseError(f"dataset.dim={d.dim} but dataset.means have dimension {truth.dim}: make them agree")
    reach = np.abs(truth.means).max() + 10 * np.sqrt(np.linalg.eigvalsh(truth.covariances).max())
    if not reach < MAX_COORDINATE:  # samples are float32, and EM squares them in float64
        raise CollapseError(f"dataset.means/covariances put points as far as {reach:.3g} from 0, beyond "
                            f"{MAX_COORDINATE:g}; scale them down")
    return truth


def _data_seed(seed: int, part: int) -> int:
    return int(np.random.SeedSequence([seed, part]).generate_state(1)[0])


class GMMFamily(PointFiles, Family):
    name = "gmm"
    model_schema = GMMModelConfig
    dataset_schema = GaussianDatasetConfig
    datasets = ("gaussian",)
    facts = FACTS
    # EM reads no train key; model.lr was only there for train.lr's sake (runs before it went hold it).
    retired_keys = ("model.lr",)
    size_key = "dataset.n_train"
    leading_keys = ("generation", "nll_test", "tail_coverage", "component_std", "l2sq_to_gen0")

    def __init__(self, cfg: Any, device: Any):
        super().__init__(cfg, device)
        self.truth = true_mixture(cfg.dataset)
        self.test: Optional[np.ndarray] = None
        self.reference: Optional[P.RealReference] = None
        self.threshold = float("nan")

    @classmethod
    def validate(cls, cfg: Any) -> None:
        m, d = cfg.model, cfg.dataset
        check_seed("dataset.seed", d.seed)
        for key in ("n_components", "max_iter", "n_init", "figure_generations"):
            if getattr(m, key) < 1:
                raise CollapseError(f"model.{key}={getattr(m, key)} must be at least 1")
        for key in ("max_iter", "n_init"):  # EM iterations and restarts: time per generation
            check_count(f"model.{key}", getattr(m, key))
        check_count("model.figure_generations", m.figure_generations, MAX_FIGURE_GENERATIONS)
        for key in ("tol", "reg_covar"):
            if not getattr(m, key) > 0:
                raise CollapseError(f"model.{key}={getattr(m, key)} must be positive")
        for key in ("dim", "n_test"):
            if getattr(d, key) < 1:
                raise CollapseError(f"dataset.{key}={getattr(d, key)} must be at least 1")
        if d.n_train < m.n_components:
            raise CollapseError(f"dataset.n_train={d.n_train} must be at least model.n_components={m.n_components}")
        # float64 points (the accumulate regime keeps every generation's), responsibilities, covariances.
        kept = d.n_train * cfg.generations_held()
        components = max(m.n_components, len(d.weights))
        check_memory(8 * ((kept + d.n_test) * (d.dim + components) + components * d.dim**2),
                     keys_text("dataset", d, ("n_train", "n_test", "dim")) + f" with {components} components",
                     "lower them")
        true_mixture(d)

    def real_data(self, pool_cap: Optional[int]) -> RealData:
        d = self.cfg.dataset
        n_pool = pool_cap or d.n_train
        return RealData(train=core.sample(self.truth, n_pool, _data_seed(d.seed, 0)),
                        test=core.sample(self.truth, d.n_test, _data_seed(d.seed, 1)))

    def train_cap(self) -> Optional[int]:
        return self.cfg.dataset.n_train

    def prepare(self, real: RealData, n_train: int) -> None:
        self.test = real.test
        self.threshold = core.rare_threshold(self.truth, real.test)
        self.reference = P.real_reference(real.test)

    def build_base_model(self, seed: int) -> GMMModel:
        return GMMModel()

    def fit(self, model: GMMModel, train: np.ndarray, seed: int, generation: int, on_step: Progress) -> dict:
        m = self.cfg.model
        if not np.isfinite(train).all():  # the GMM's nan guard: EM would stop in sklearn with a traceback
            raise CollapseError(f"generation {generation}: the training points hold nan or inf (the previous fit "
                                f"diverged); raise model.reg_covar and start the run again")
        try:
            model.mixture, stats = core.fit(train, m.n_components, seed, m.tol, m.max_iter, m.n_init, m.reg_covar,
                                            unbiased=m.variance == Variance.unbiased)
        except ValueError as error:  # sklearn: "ill-defined empirical covariance ... increase reg_covar"
            raise CollapseError(f"generation {generation}: the EM fit failed ({str(error).split('.')[0]}); "
                                f"raise model.reg_covar (now {m.reg_covar:g}) or lower model.n_components") from None
        on_step(1, 1)
        return stats

    def sample(self, model: GMMModel, n: int, seed: int, on_batch: Progress) -> np.ndarray:
        samples = core.sample(model.mixture, n, seed)
        on_batch(n, n)
        return samples

    def measure(self, generation: int, model: GMMModel, reference_model: GMMModel, samples: np.ndarray, seed: int,
                on_progress: Progress) -> tuple[dict, np.ndarray]:
        fitted = model.mixture
        test_nll = core.nll(fitted, self.test)
        # The samples' true log-density, once: the three tail figures and the per-sample scores all read it.
        true_log_p = core.log_density(self.truth, samples)
        l2sq_to_gen0 = core.l2_squared(reference_model.mixture, fitted)
        metrics = {
            "nll_test": float(test_nll.mean()),
            "nll_test_se": stats.mean_se(test_nll),
            "tail_coverage": core.tail_coverage(true_log_p, self.threshold),
            "tail_coverage_se": core.tail_coverage_se(true_log_p, self.threshold),
            "tail_mass_ratio": core.tail_mass_ratio(true_log_p, self.threshold),
            "component_std": core.component_std(fitted),
            # The paper plots the squared distance (its L2_of_gmms); l2_to_gen0 is its square root.
            "l2sq_to_gen0": l2sq_to_gen0,
            "l2_to_gen0": float(np.sqrt(l2sq_to_gen0)),
            "l2_to_truth": core.l2_distance(self.truth, fitted),
            "sample_std": float(np.sqrt(np.trace(np.atleast_2d(np.cov(samples.T))) / samples.shape[1])),
        }
        if self.reference is not None:  # the shared point metrics; tail_coverage stays the true density's
            metrics.update(self.reference.measure(samples, tail=False))
        if len(fitted.weights) == 1 and len(self.truth.weights) == 1:  # Kazdan et al.'s multivariate Gaussian
            metrics.update(core.single_gaussian_metrics(self.truth, fitted))
            metrics.update(self.single_gaussian_theory(generation))
        on_progress(1, 1)
        return metrics, -true_log_p  # core.nll under the truth

    def single_gaussian_theory(self, generation: int) -> dict[str, float]:
        """The closed forms where they hold (replace, mix 0: each fit sees only the previous fit's N samples);
        NaN for the other loops, whose pools mix real and earlier data."""
        cfg = self.cfg
        theory = core.single_gaussian_replace_theory(self.truth, cfg.dataset.n_train, generation + 1,
                                                     unbiased=cfg.model.variance == Variance.unbiased)
        if (cfg.regime == "replace" and cfg.mix == 0.0) or generation == 0:
            return theory
        return {key: float("nan") for key in theory}

    def truth_scores(self, samples: np.ndarray) -> np.ndarray:
        return core.log_density(self.truth, samples)

    def n_parameters(self, model: GMMModel) -> int:
        k, d = self.cfg.model.n_components, self.cfg.dataset.dim
        return k * (d + d * (d + 1) // 2) + k - 1

    def describe(self) -> str:
        m = self.cfg.model
        return (f"gmm ({m.n_components} full-covariance components, {m.variance} covariances, "
                f"dim {self.cfg.dataset.dim}, EM tol {m.tol:g}, max_iter {m.max_iter})")

    def save_model(self, model: GMMModel, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        core.save_mixture(model.mixture, folder / MIXTURE_FILE)

    def load_model(self, folder: Path) -> GMMModel:
        return GMMModel(core.load_mixture(folder / MIXTURE_FILE))

    def figures(self, run_dir: Path, rows: list[dict]) -> list[Path]:
        """figures/gmm_scatter.png (chosen generations over the true contours), figures/gmm_std_l2.png."""
        if not rows:
            return []
        chosen = chosen_generations(int(rows[-1]["generation"]), self.cfg.model.figure_generations)
        samples = {g: self.load_samples(Path(run_dir) / gen_name(g)) for g in chosen}
        scatter = core.scatter_figure(self.truth, samples, Path(run_dir) / "figures" / "gmm_scatter.png")
        return [scatter, core.curves_figure(rows, Path(run_dir) / "figures" / "gmm_std_l2.png")]


FAMILY = GMMFamily
