"""Gaussian mixtures collapsing on their own samples (Shumailov et al. 2024, the GMM experiment).

Real data is drawn from a known "true" mixture (the paper: 1,000 points from one 2-D standard
normal, like make_blobs(centers=[[0, 0]], cluster_std=1)). Each generation fits a
scikit-learn GaussianMixture (the paper: 2 full-covariance components, EM tolerance 1e-5 and up to
2,000 iterations in the authors' notebook) to its training rows and draws the next generation's rows from the fit.

Everything here is a pure function of its arguments: randomness enters only through an
explicit `seed`; a mixture is the plain `Mixture` record, so the true distribution, fitted
models and saved files share one type and every metric reads it the same way.
Samples are float32 throughout, so what a generation writes to disk is exactly what the next
one trains on (a resumed run matches an uninterrupted one).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from scipy import special
from scipy.special import logsumexp

from collapse_cli.families.plots import generation_panels, pyplot, save, save_with_legend_below
from collapse_cli.measure.stats import binomial_se
from collapse_cli.rundir import require_run_arrays

SAMPLE_DTYPE = np.float32
TAIL_MASS = 0.05  # the rare region holds the true distribution's outer 5%


@dataclass(frozen=True)
class Mixture:
    """A Gaussian mixture density: weights [k], means [k, d], covariances [k, d, d] (float64)."""

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def as_arrays(self) -> dict[str, np.ndarray]:
        return {"weights": self.weights, "means": self.means, "covariances": self.covariances}


def make_mixture(weights: Sequence[float], means: Sequence[Sequence[float]],
                 covariances: Sequence[Sequence[Sequence[float]]]) -> Mixture:
    """A Mixture from nested lists (e.g. config values), checked: ValueError names what is wrong."""
    w = np.asarray(weights, dtype=np.float64)
    mu = np.asarray(means, dtype=np.float64)
    cov = np.asarray(covariances, dtype=np.float64)
    k = len(w)
    if w.ndim != 1 or k == 0 or np.any(w < 0) or not np.isclose(w.sum(), 1.0):
        raise ValueError("weights must be k >= 1 non-negative numbers summing to 1")
    if mu.ndim != 2 or mu.shape[0] != k:
        raise ValueError(f"means must be a list of {k} points (one per weight), all of one dimension")
    d = mu.shape[1]
    if cov.shape != (k, d, d):
        raise ValueError(f"covariances must be {k} matrices of {d}x{d} (one per weight)")
    if not np.allclose(cov, cov.transpose(0, 2, 1)) or np.any(np.linalg.eigvalsh(cov) <= 0):
        raise ValueError("covariances must be symmetric positive definite")
    return Mixture(w, mu, cov)


def standard_normal(dim: int = 2) -> Mixture:
    """The paper's true distribution: one standard normal in `dim` dimensions."""
    return Mixture(np.ones(1), np.zeros((1, dim)), np.eye(dim)[None])


# --------------------------------------------------------------------------
# Sampling and fitting
# --------------------------------------------------------------------------


def sample(mixture: Mixture, n: int, seed: int) -> np.ndarray:
    """n rows [n, d] float32 from `mixture`: multinomial component counts, then L z + mu, shuffled."""
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, mixture.weights)
    parts = []
    for count, mean, cov in zip(counts, mixture.means, mixture.covariances):
        z = rng.standard_normal((count, mixture.dim))
        parts.append(mean + z @ np.linalg.cholesky(cov).T)
    rows = np.concatenate(parts)[rng.permutation(n)]
    return rows.astype(SAMPLE_DTYPE)


@functools.cache
def thread_pools():
    """The process's BLAS/OpenMP pools, found once (sklearn imported first, so its OpenMP is among them).

    threadpool_limits() searches the loaded libraries on every call: 26 ms a fit on the busy
    2-core CPU, several times the fit; a kept controller's limit() costs 0.02 ms.
    """
    import sklearn.mixture  # noqa: F401  loads the OpenMP runtime that k-means uses
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def fit(rows: np.ndarray, n_components: int, seed: int, tol: float = 1e-3, max_iter: int = 100,
        n_init: int = 1, reg_covar: float = 1e-6, unbiased: bool = False) -> tuple[Mixture, dict]:
    """Fit a full-covariance GaussianMixture (k-means init, seeded) to rows; (mixture, fit stats).

    EM's covariances are maximum-likelihood estimates (divided by n_k). unbiased=True rescales
    each by n_k / (n_k - 1) (unbiased_covariances): for one component, the ddof=1 sample
    covariance of Shumailov et al.'s single-Gaussian theorem.
    BLAS/OpenMP threads are limited to one: on a 1,000 x 2 problem the k-means initialisation's
    thread pool costs ~100x the fit itself when the CPU is shared (measured: 219 vs 2.7 ms/fit).
    """
    from sklearn.mixture import GaussianMixture

    model = GaussianMixture(n_components=n_components, covariance_type="full", tol=tol, max_iter=max_iter,
                            n_init=n_init, reg_covar=reg_covar, random_state=seed)
    with thread_pools().limit(limits=1):
        model.fit(np.asarray(rows, dtype=np.float64))
    mixture = Mixture(model.weights_.copy(), model.means_.copy(), model.covariances_.copy())
    if unbiased:
        mixture = unbiased_covariances(mixture, len(rows), reg_covar)
        train_nll = float(nll(mixture, rows).mean())
    else:
        train_nll = float(-model.score(rows))  # sklearn's own figure: the default run's metrics stay bit-identical
    stats = {"fit_iterations": int(model.n_iter_), "fit_converged": bool(model.converged_), "train_nll": train_nll}
    return mixture, stats


def unbiased_covariances(mixture: Mixture, n_rows: int, reg_covar: float) -> Mixture:
    """The EM (maximum-likelihood) covariances rescaled to the unbiased frequency-weighted estimator.

    Component k holds n_k = w_k * n_rows points (the sum of its responsibilities); its ML covariance
    divides the weighted scatter by n_k, the unbiased one by n_k - 1. The reg_covar ridge EM added
    is not data: it is taken off before the rescale and put back after. A component holding at most
    one point has no unbiased estimate; it keeps its ML covariance.
    """
    counts = mixture.weights * n_rows
    factors = np.where(counts > 1, counts / np.maximum(counts - 1, 1e-12), 1.0)
    ridge = reg_covar * np.eye(mixture.dim)
    covariances = (mixture.covariances - ridge) * factors[:, None, None] + ridge
    return Mixture(mixture.weights, mixture.means, covariances)


# --------------------------------------------------------------------------
# Densities and metrics
# --------------------------------------------------------------------------


def log_gaussian(x: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """log N(x; mean, cov) per row of x [n, d], through a Cholesky factor."""
    chol = np.linalg.cholesky(cov)
    z = np.linalg.solve(chol, (np.asarray(x, dtype=np.float64) - mean).T)  # [d, n]
    log_det = 2.0 * np.log(np.diag(chol)).sum()
    return -0.5 * (len(mean) * np.log(2 * np.pi) + log_det + (z * z).sum(axis=0))


def log_density(mixture: Mixture, x: np.ndarray) -> np.ndarray:
    """log p(x) per row, in nats."""
    per_component = [np.log(w) + log_gaussian(x, m, c) if w > 0 else np.full(len(x), -np.inf)
                     for w, m, c in zip(mixture.weights, mixture.means, mixture.covariances)]
    return logsumexp(np.stack(per_component), axis=0)


def nll(mixture: Mixture, x: np.ndarray) -> np.ndarray:
    """Per-row negative log-likelihood -log p(x) in nats (nll_test is its mean on real test rows)."""
    return -log_density(mixture, x)


def component_std(mixture: Mixture) -> float:
    """Weight-averaged per-component standard deviation: sum_k w_k sqrt(trace(S_k) / d).

    sqrt(trace/d) is the root of the mean covariance eigenvalue, i.e. the per-axis std of an
    isotropic Gaussian with the same total variance: 1 for the standard normal, and it falls
    toward 0 as the components collapse onto points.
    """
    d = mixture.dim
    per_component = np.sqrt(np.trace(mixture.covariances, axis1=1, axis2=2) / d)
    return float(np.dot(mixture.weights, per_component))


def _cross_overlaps(p: Mixture, q: Mixture) -> float:
    """integral p(x) q(x) dx = sum_ij wp_i wq_j N(mu_i; mu_j, S_i + S_j)."""
    total = 0.0
    for wi, mi, ci in zip(p.weights, p.means, p.covariances):
        for wj, mj, cj in zip(q.weights, q.means, q.covariances):
            total += wi * wj * float(np.exp(log_gaussian(mi[None], mj, ci + cj)[0]))
    return total


def l2_squared(p: Mixture, q: Mixture) -> float:
    """integral (p - q)^2 dx in closed form: the quantity the paper plots (its L2_of_gmms).

    integral (p-q)^2 = <p,p> - 2 <p,q> + <q,q>, each a sum of Gaussian overlap integrals;
    round-off can make the sum slightly negative when p == q, hence the clip at 0.
    """
    return max(_cross_overlaps(p, p) - 2 * _cross_overlaps(p, q) + _cross_overlaps(q, q), 0.0)


def l2_distance(p: Mixture, q: Mixture) -> float:
    """The L2 distance between two mixture densities, sqrt(integral (p - q)^2 dx)."""
    return float(np.sqrt(l2_squared(p, q)))


def rare_threshold(truth: Mixture, real_test: np.ndarray, tail_mass: float = TAIL_MASS) -> float:
    """The true log-density below which the rarest `tail_mass` of the real test rows lie.

    For one Gaussian, {log p < threshold} is exactly the outside of a Mahalanobis ball: the
    outer 5% by radius. For a general mixture it is the lowest-density 5%.
    """
    return float(np.quantile(log_density(truth, real_test), tail_mass))


def tail_share(true_log_p: np.ndarray, threshold: float) -> float:
    """Share of samples in the true rare region {log p_true < threshold}; nan without samples.

    The tail metrics take the samples' true log-densities (log_density(truth, samples)), not the
    samples: the family computes them once per generation and every tail figure reads them.
    """
    if len(true_log_p) == 0:
        return float("nan")
    return float(np.mean(true_log_p < threshold))


def tail_mass_ratio(true_log_p: np.ndarray, threshold: float, tail_mass: float = TAIL_MASS) -> float:
    """tail_share / tail_mass: 1, the samples keep the true tails; 0, none left there; > 1, heavier tails."""
    return tail_share(true_log_p, threshold) / tail_mass


def tail_coverage(true_log_p: np.ndarray, threshold: float, tail_mass: float = TAIL_MASS) -> float:
    """min(1, tail_mass_ratio): the share of the true distribution's rare 5% that the samples still fill."""
    return min(1.0, tail_mass_ratio(true_log_p, threshold, tail_mass))


def tail_coverage_se(true_log_p: np.ndarray, threshold: float, tail_mass: float = TAIL_MASS) -> float:
    """Binomial standard error of the samples' tail share, scaled by 1 / tail_mass like tail_coverage.

    The threshold is fixed for the run, so only the sampling of the generation's points is noise.
    Where the cap at 1 binds the metric moves less than this: the error is then conservative.
    """
    if len(true_log_p) == 0:
        return float("nan")
    return binomial_se(tail_share(true_log_p, threshold), len(true_log_p)) / tail_mass


# --------------------------------------------------------------------------
# Files and figures
# --------------------------------------------------------------------------


def single_gaussian_metrics(truth: Mixture, fitted: Mixture) -> dict[str, float]:
    """Kazdan et al.'s figures of a one-component fit to a one-Gaussian truth: the mean's squared error
    and the fitted covariance's determinant and trace relative to the truth's."""
    gap = fitted.means[0] - truth.means[0]
    log_det_ratio = np.linalg.slogdet(fitted.covariances[0])[1] - np.linalg.slogdet(truth.covariances[0])[1]
    return {"mean_sq_error": float(gap @ gap), "cov_det_ratio": float(np.exp(log_det_ratio)),
            "cov_log_det_ratio": float(log_det_ratio),
            "cov_trace_ratio": float(np.trace(fitted.covariances[0]) / np.trace(truth.covariances[0]))}


def single_gaussian_replace_theory(truth: Mixture, n: int, fits: int, unbiased: bool) -> dict[str, float]:
    """Expectations of single_gaussian_metrics after `fits` fits (generation g: fits = g + 1) of replace
    with mix 0, N = n points a fit, the truth N(mu, S) in d dimensions. With c = n (ML) or n - 1 (unbiased)
    and a = (n - 1) / c: c S_hat ~ Wishart(S_prev, n - 1), whose determinant is det(S_prev) times
    independent chi-squares with n - 1, ..., n - d degrees of freedom (Bartlett), so
        E det ratio   = (prod_{i=1..d} (n - i) / c)^fits,   E trace ratio = a^fits,
        E log det ratio = fits * sum_{i=1..d} (digamma((n - i) / 2) + log(2 / c))   (E log chi2_k),
        E ||mu_hat - mu||^2 = (tr S / n) sum_{j<fits} a^j   (each mean adds N(0, S_prev / n)).
    The determinant's expectation sits far above its typical value (a product of chi-squares is
    skewed): one run follows the log form, the mean of many runs the other.
    docs/metrics.md derives them; the reg_covar ridge (1e-6) is left out."""
    d, c = truth.dim, n - 1 if unbiased else n
    a = (n - 1) / c
    det_factor = float(np.prod((n - np.arange(1, d + 1)) / c))
    log_det_step = float(np.sum(special.digamma((n - np.arange(1, d + 1)) / 2) + math.log(2 / c)))
    return {"cov_det_ratio_theory": det_factor ** fits, "cov_log_det_ratio_theory": log_det_step * fits,
            "cov_trace_ratio_theory": a ** fits,
            "mean_sq_error_theory": float(np.trace(truth.covariances[0]) / n * sum(a ** j for j in range(fits)))}


def save_mixture(mixture: Mixture, path: Path) -> None:
    np.savez(path, **mixture.as_arrays())


def load_mixture(path: Path) -> Mixture:
    arrays = require_run_arrays(path, ("weights", "means", "covariances"))
    return Mixture(arrays["weights"], arrays["means"], arrays["covariances"])


def scatter_figure(truth: Mixture, samples_by_generation: dict[int, np.ndarray], path: Path,
                   extent: Optional[float] = None) -> Path:
    """Samples of chosen generations (first two coordinates) over the true density's contours."""
    if truth.dim == 1:
        return histogram_figure(truth, samples_by_generation, path)
    centre = truth.means[:, :2].mean(axis=0)
    spread = extent or 4.0 * float(np.sqrt(np.max(np.linalg.eigvalsh(truth.covariances[:, :2, :2])))) + float(
        np.abs(truth.means[:, :2] - centre).max())
    axis_x = np.linspace(centre[0] - spread, centre[0] + spread, 200)
    axis_y = np.linspace(centre[1] - spread, centre[1] + spread, 200)
    grid_x, grid_y = np.meshgrid(axis_x, axis_y)
    grid = np.column_stack([grid_x.ravel(), grid_y.ravel()])
    marginal = Mixture(truth.weights, truth.means[:, :2], truth.covariances[:, :2, :2])
    density = np.exp(log_density(marginal, grid)).reshape(grid_x.shape)
    fig, panels = generation_panels(samples_by_generation, 3.7, (axis_x[0], axis_y[0]), (axis_x[-1], axis_y[-1]))
    for ax, points in panels:
        ax.contour(grid_x, grid_y, density, levels=6, colors="0.6", linewidths=0.7)
        ax.scatter(points[:, 0], points[:, 1], s=2, alpha=0.5, color="tab:blue")
    from matplotlib.lines import Line2D

    # Proxy handles: a contour set and a 2-pixel scatter make no readable legend entries of their own.
    return save_with_legend_below(
        fig, [Line2D([], [], color="0.6", lw=0.7), Line2D([], [], color="tab:blue", marker="o", lw=0, ms=3)],
        ["true density, 6 contour levels", "the generation's samples"],
        "Gaussian mixture: samples of chosen generations over the true density's contours"
        + (" (first two coordinates)" if truth.dim > 2 else ""), path)


def histogram_figure(truth: Mixture, samples_by_generation: dict[int, np.ndarray], path: Path) -> Path:
    """dataset.dim=1 (Shumailov's single-Gaussian setting): each chosen generation's samples as a density
    histogram under the true density's curve, on one x range so the narrowing shows."""
    plt = pyplot()

    generations = sorted(samples_by_generation)
    spread = 4.0 * float(np.sqrt(truth.covariances.max())) + float(np.abs(truth.means - truth.means.mean()).max())
    axis_x = np.linspace(float(truth.means.mean()) - spread, float(truth.means.mean()) + spread, 400)
    true_density = np.exp(log_density(truth, axis_x[:, None]))
    fig, axes = plt.subplots(1, len(generations), figsize=(3 * len(generations), 3.2), squeeze=False, sharey=True)
    for ax, generation in zip(axes[0], generations):
        ax.hist(samples_by_generation[generation][:, 0], bins=40, range=(axis_x[0], axis_x[-1]), density=True,
                color="tab:blue", alpha=0.6, label="samples")
        ax.plot(axis_x, true_density, color="0.3", lw=1, label="true density")
        ax.set_title(f"generation {generation}", fontsize=9)
        ax.set_xlabel("x (data units)", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel("density", fontsize=8)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("1-D Gaussian mixture: samples of chosen generations (histogram) under the true density",
                 fontsize=10)
    return save(fig, path)



def curves_figure(rows: list[dict], path: Path) -> Path:
    """The paper's two curves by generation: component_std and l2sq_to_gen0, both on log scales."""
    plt = pyplot()

    from collapse_cli.families.gmm.facts import FACTS
    from collapse_cli.report.plots import generation_axis, log_axis_keeping_zero

    generations = [row["generation"] for row in rows]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key in zip(axes, ("component_std", "l2sq_to_gen0")):
        values = np.array([np.nan if row.get(key) is None else row[key] for row in rows], dtype=float)
        ax.plot(generations, values, lw=1, marker="o" if len(rows) <= 30 else None, ms=3, color="tab:blue")
        log_axis_keeping_zero(ax, values)  # l2sq_to_gen0 is 0 at generation 0: a plain log axis drops it
        generation_axis(ax, int(generations[-1]) if generations else 0)
        facts = FACTS.metric(key)
        ax.set_title(f"{key}: {facts.title}", fontsize=9, wrap=True)
        ax.set_ylabel(facts.unit + " (log scale)", fontsize=8)
        ax.xaxis.label.set_fontsize(8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle("Gaussian mixture by generation (one run; the paper's two curves)", fontsize=10)
    return save(fig, path)
