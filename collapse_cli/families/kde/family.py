"""The kernel density estimate as a family: float32 points [n, 2] of a 2-D toy set in and out (core.py does the work).

Kazdan et al. 2024 (KoyejoLab's Collapse-or-Thrive, fit_kdes): each generation fits a Gaussian KDE to its
training points and samples N points from it. A model is its training points and its bandwidth, saved
exactly (float64), so a resumed run scores and samples as an uninterrupted one.
Metrics: nll_test (the KDE's NLL of the real test points), the shared point metrics of measure/points.py
against the real test points, and, for toys with known modes (blobs, ring8), high_quality and modes_covered.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from collapse_cli.checks import check_count, check_memory, keys_text
from collapse_cli.errors import CollapseError
from collapse_cli.families import toy2d
from collapse_cli.families.base import Family, Progress, RealData
from collapse_cli.families.kde import core
from collapse_cli.families.kde.core import BandwidthRule
from collapse_cli.families.kde.facts import FACTS
from collapse_cli.families.plots import chosen_generations
from collapse_cli.measure import points as P
from collapse_cli.measure import stats
from collapse_cli.rundir import gen_name, require_run_arrays

KDE_FILE = "kde.npz"
MAX_FIGURE_GENERATIONS = 100  # panels of one figure row


@dataclass
class KDEModelConfig:
    """`model=kde`: a Gaussian KDE with an isotropic bandwidth, chosen afresh each generation."""

    family: str = "kde"
    name: str = "kde"
    bandwidth_rule: BandwidthRule = BandwidthRule.cv
    bandwidth: float = 0.1  # h when bandwidth_rule=fixed (data units)
    figure_generations: int = 6  # generations drawn in figures/kde_scatter.png, log-spaced from 0 to the last


@dataclass
class KDEModel:
    """Mutable holder (the loop deep-copies the base model and fits it in place); points None until fitted."""

    points: Optional[np.ndarray] = None  # float64 [n, 2]: the training points the kernels sit on
    h: float = float("nan")


class KDEFamily(toy2d.PointFiles, Family):
    name = "kde"
    model_schema = KDEModelConfig
    dataset_schema = toy2d.Toy2DDatasetConfig
    datasets = toy2d.TOY_NAMES
    facts = FACTS
    size_key = "dataset.n_train"  # the KDE fits its points exactly: it reads no train key
    leading_keys = ("generation", "nll_test", "tail_coverage", "precision", "recall", "coverage")

    def __init__(self, cfg: Any, device: Any):
        super().__init__(cfg, device)
        self.centres = toy2d.mode_centres(cfg.dataset.name)
        self.test: Optional[np.ndarray] = None
        self.reference: Optional[P.RealReference] = None

    @classmethod
    def validate(cls, cfg: Any) -> None:
        m, d = cfg.model, cfg.dataset
        toy2d.validate(d)
        if not (math.isfinite(m.bandwidth) and m.bandwidth > 0):
            raise CollapseError(f"model.bandwidth={m.bandwidth} must be a positive number (data units)")
        if m.figure_generations < 1:
            raise CollapseError(f"model.figure_generations={m.figure_generations} must be at least 1")
        check_count("model.figure_generations", m.figure_generations, MAX_FIGURE_GENERATIONS)
        # float64 kernel centres: the accumulate regime keeps every generation's points.
        kept = d.n_train * cfg.generations_held()
        check_memory(8 * 2 * (kept + d.n_test), keys_text("dataset", d, ("n_train", "n_test"))
                     + f" over {cfg.generations} generations", "lower them")

    def real_data(self, pool_cap: Optional[int]) -> RealData:
        return toy2d.real_data(self.cfg.dataset, pool_cap)

    def train_cap(self) -> Optional[int]:
        return self.cfg.dataset.n_train

    def prepare(self, real: RealData, n_train: int) -> None:
        self.test = real.test.astype(np.float64)
        self.reference = P.real_reference(self.test)  # never None: toy2d.validate asks for enough test points

    def build_base_model(self, seed: int) -> KDEModel:
        return KDEModel()

    def fit(self, model: KDEModel, train: np.ndarray, seed: int, generation: int, on_step: Progress) -> dict:
        m = self.cfg.model
        points = train.astype(np.float64)
        h = core.bandwidth(points, m.bandwidth_rule, m.bandwidth, seed)
        if not (np.isfinite(points).all() and h > 0):  # the rules' spread is 0 when every point is one point
            raise CollapseError(f"generation {generation}: the training points give bandwidth {h:g} (no spread, "
                                f"or nan); use model.bandwidth_rule=fixed and start the run again")
        model.points, model.h = points, h
        on_step(1, 1)
        return {"bandwidth": h}

    def sample(self, model: KDEModel, n: int, seed: int, on_batch: Progress) -> np.ndarray:
        samples = core.sample(model.points, model.h, n, seed)
        on_batch(n, n)
        return samples

    def measure(self, generation: int, model: KDEModel, reference_model: KDEModel, samples: np.ndarray, seed: int,
                on_progress: Progress) -> tuple[dict, np.ndarray]:
        test_nll = -core.log_density(model.points, model.h, self.test)
        metrics = {
            "nll_test": float(test_nll.mean()),
            "nll_test_se": stats.mean_se(test_nll),
            **self.reference.measure(samples),
            "bandwidth": model.h,
            "sample_std": core.pooled_std(samples.astype(np.float64)),
        }
        if self.centres is not None:
            metrics.update(P.mode_metrics(samples, self.centres, toy2d.noise_of(self.cfg.dataset.name,
                                                                                 self.cfg.dataset.noise)))
        on_progress(1, 1)
        # Each sample's NLL under generation 0's KDE: how far from the real data's estimate it has drifted.
        return metrics, -core.log_density(reference_model.points, reference_model.h, samples)

    def n_parameters(self, model: KDEModel) -> int:
        return 0 if model.points is None else model.points.size + 1  # the kernel centres and h

    def describe(self) -> str:
        m, d = self.cfg.model, self.cfg.dataset
        rule = f"fixed bandwidth {m.bandwidth:g}" if m.bandwidth_rule == BandwidthRule.fixed else (
            f"{m.bandwidth_rule} bandwidth rule")
        return f"kde (Gaussian kernels, {rule}, dataset {d.name}, noise {toy2d.noise_of(d.name, d.noise):g})"

    def save_model(self, model: KDEModel, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / KDE_FILE, points=model.points, h=np.float64(model.h))

    def load_model(self, folder: Path) -> KDEModel:
        saved = require_run_arrays(Path(folder) / KDE_FILE, ("points", "h"))
        return KDEModel(saved["points"], float(saved["h"]))

    def figures(self, run_dir: Path, rows: list[dict]) -> list[Path]:
        """figures/kde_scatter.png (chosen generations over the real test points), figures/kde_curves.png."""
        if not rows:
            return []
        chosen = chosen_generations(int(rows[-1]["generation"]), self.cfg.model.figure_generations)
        samples = {g: self.load_samples(Path(run_dir) / gen_name(g)) for g in chosen}
        d, figures = self.cfg.dataset, Path(run_dir) / "figures"
        title = f"KDE on {d.name} ({self.cfg.regime}, mix {self.cfg.mix:g}): samples of chosen generations"
        return [core.scatter_figure(self.test, samples, self.centres, title, figures / "kde_scatter.png"),
                core.curves_figure(rows, figures / "kde_curves.png")]

    def truth_scores(self, samples: np.ndarray) -> Optional[np.ndarray]:
        """The curation truth (curate.score=auto/truth): the true log-density of the mixtures blobs and ring8;
        None for the other toys, which the generation-0 model then scores."""
        return toy2d.true_log_density(self.cfg.dataset.name, self.cfg.dataset.noise, samples)


FAMILY = KDEFamily
