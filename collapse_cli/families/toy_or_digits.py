"""What the families that read either a 2-D toy set or the 8x8 digits share (diffusion, GAN).

- One dataset schema holding both groups' keys (ToyOrDigitsDatasetConfig: `dataset=toy2d dataset.name=<toy>`
  or `dataset=digits`), its checks (a key of the other group moved from its default is refused: it would do
  nothing) and the real rows (real_data).
- The measuring instrument (RealSet): the real test rows in a fixed feature space (digits: the logits of one
  classifier trained once on the real training digits, families/digits.py; 2-D: the raw coordinates), and
  per generation the shared point metrics of measure/points.py, the Fréchet distance's bootstrap error and
  its real-vs-real floor, and class shares (digits) or modes (toys with known centres).
- The figures: the real test rows and each generation's samples, as digit grids or 2-D scatters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from collapse_cli.errors import CollapseError
from collapse_cli.families import digits, toy2d
from collapse_cli.families.base import RealData
from collapse_cli.families.plots import pyplot, save
from collapse_cli.measure import points
from collapse_cli.rundir import gen_name

DIGITS = "digits"
NAMES: tuple[str, ...] = (DIGITS, *toy2d.TOY_NAMES)  # the dataset.name values these families read
DIGITS_KEYS, TOY_KEYS = ("test_fraction", "max_train"), ("n_train", "n_test", "noise")
FRECHET_BOOTSTRAP = 20  # resamples of the samples behind frechet_se


@dataclass
class ToyOrDigitsDatasetConfig:
    """`dataset=digits` or `dataset=toy2d`: one schema holds both groups' keys, since these families read either.

    digits reads test_fraction and max_train; toy2d reads n_train, n_test and noise (name: the toy).
    A family subclasses it to set its default `name`.
    """

    name: str = DIGITS  # digits, or a toy: moons | circles | blobs | swiss_roll | ring8
    test_fraction: float = 0.2
    max_train: Optional[int] = None
    n_train: int = 1000
    n_test: int = 1000
    noise: Optional[float] = None
    seed: int = 0


def as_digits(d: ToyOrDigitsDatasetConfig) -> digits.DigitsDatasetConfig:
    return digits.DigitsDatasetConfig(d.name, d.test_fraction, d.max_train, d.seed)


def as_toy(d: ToyOrDigitsDatasetConfig) -> toy2d.Toy2DDatasetConfig:
    return toy2d.Toy2DDatasetConfig(d.name, d.n_train, d.n_test, d.noise, d.seed)


def check_dataset(d: ToyOrDigitsDatasetConfig) -> None:
    """The group's own checks, and no key of the other group moved from its default (it would do nothing)."""
    defaults, is_digits = type(d)(), d.name == DIGITS
    for key in TOY_KEYS if is_digits else DIGITS_KEYS:
        if getattr(d, key) != getattr(defaults, key):
            group = "toy2d" if is_digits else DIGITS
            raise CollapseError(f"dataset.{key}={getattr(d, key)} is read by dataset={group} only; drop it with "
                                f"dataset.name={d.name}")
    if is_digits:
        digits.check_dataset(as_digits(d))
    else:
        toy2d.validate(as_toy(d))


def train_cap(d: ToyOrDigitsDatasetConfig) -> Optional[int]:
    """N from the config: dataset.max_train (digits; None: all) or dataset.n_train (a toy)."""
    return d.max_train if d.name == DIGITS else d.n_train


def dim(d: ToyOrDigitsDatasetConfig) -> int:
    """Numbers in one row: 64 pixels or 2 coordinates."""
    return digits.PIXELS if d.name == DIGITS else 2


def frechet_se(real_features: np.ndarray, features: np.ndarray, seed: int, n_resamples: int = FRECHET_BOOTSTRAP
               ) -> float:
    """Bootstrap standard error of the Fréchet distance over the samples (the real reference held fixed):
    the noise band the early-warning verdict reads it against."""
    rng = np.random.default_rng(seed)
    values = [points.frechet_distance(real_features, features[rng.integers(len(features), size=len(features))])
              for _ in range(n_resamples)]
    return float(np.std(values, ddof=1))


class RealSet:
    """The run's real rows and what each generation is measured against; built by real_data, then prepare."""

    def __init__(self, d: ToyOrDigitsDatasetConfig):
        self.dataset = d
        self.is_digits = d.name == DIGITS
        self.test: Optional[np.ndarray] = None
        self.split: Optional[digits.Digits] = None  # digits: the real split, labels included
        self.classifier = None
        self.reference: Optional[points.RealReference] = None  # the real test rows' features, radii, rare ones
        self.frechet_floor = float("nan")

    def real_data(self, pool_cap: Optional[int]) -> RealData:
        d = self.dataset
        if self.is_digits:
            self.split = digits.load_digits_split(d.test_fraction, d.seed)
            real = RealData(train=self.split.train if pool_cap is None else self.split.train[:pool_cap],
                            test=self.split.test)
        else:
            real = toy2d.real_data(as_toy(d), pool_cap)
        self.test = real.test
        return real

    def prepare(self, real: RealData, n_train: int) -> None:
        if self.is_digits:  # the classifier sees every real training digit, whatever N: a measuring instrument
            self.classifier = digits.train_classifier(self.split.train, self.split.train_labels, self.dataset.seed)
        test_features = self.features(self.test)
        self.reference = points.real_reference(test_features)
        # Two real sets are not at distance 0 either: the floor the samples' distance is read against.
        self.frechet_floor = points.frechet_distance(test_features, self.features(real.train[:n_train]))

    def features(self, rows: np.ndarray) -> np.ndarray:
        """Where distances are measured: the classifier's logits (digits), the coordinates themselves (2-D)."""
        return digits.features(self.classifier, rows) if self.is_digits else np.asarray(rows, dtype=np.float64)

    def truth_scores(self, samples: np.ndarray) -> Optional[np.ndarray]:
        """The curation truth (curate.score=auto/truth): digits, the classifier's log-confidence, as the VAE's;
        the mixtures blobs and ring8, their true log-density; None for the other toys (the generation-0 model)."""
        if self.is_digits:
            return digits.log_confidence(self.classifier, samples)
        return toy2d.true_log_density(self.dataset.name, self.dataset.noise, samples)

    def measure(self, samples: np.ndarray, features: np.ndarray, seed: int) -> dict:
        """The metrics every such family reports of one generation's samples (`features`: self.features(samples))."""
        metrics = self.reference.measure(features)
        metrics.update(frechet_floor=self.frechet_floor, frechet_se=frechet_se(self.reference.points, features, seed))
        metrics.update(self._classes(samples) if self.is_digits else self._modes(samples))
        return metrics

    def _classes(self, samples: np.ndarray) -> dict:
        shares = digits.class_shares(self.classifier.predict(samples))
        return {"class_share_max": float(shares.max()), "class_top": int(shares.argmax()),
                "class_entropy": digits.share_entropy(shares)}

    def _modes(self, samples: np.ndarray) -> dict:
        d = self.dataset
        centres = toy2d.mode_centres(d.name)
        return {} if centres is None else points.mode_metrics(samples, centres, toy2d.noise_of(d.name, d.noise))

    # --- figures --------------------------------------------------------------------------
    def figures(self, run_dir: Path, rows: list[dict], prefix: str, label: str,
                load_samples: Callable[[Path], np.ndarray], title_of: Callable[[int, dict], str]) -> list[Path]:
        """figures/<prefix>_real.png and figures/<prefix>_samples_gen_NNN.png: digit grids or 2-D scatters.
        `title_of(generation, metrics row)` titles a generation's figure; `label` names the samples."""
        figures = Path(run_dir) / "figures"
        paths = [self._draw(None, figures / f"{prefix}_real.png", f"{label}: real test data", label)]
        for row in rows:
            g = int(row["generation"])
            samples = load_samples(Path(run_dir) / gen_name(g))
            paths.append(self._draw(samples, figures / f"{prefix}_samples_{gen_name(g)}.png", title_of(g, row), label))
        return paths

    def _draw(self, samples: Optional[np.ndarray], path: Path, title: str, label: str) -> Path:
        if self.is_digits:
            return digits.grid_figure(self.test if samples is None else samples, path, title + " (first 60)")
        return scatter_figure(self.test, samples, toy2d.mode_centres(self.dataset.name), path, title, label)


def scatter_figure(real: np.ndarray, samples: Optional[np.ndarray], centres: Optional[np.ndarray], path: Path,
                   title: str, label: str) -> Path:
    """One generation's samples (none: the real rows alone) over the real test rows, with known mode centres."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.4, 4.4))
    if centres is not None:  # beneath the points: a mode's marker never hides whether samples reach it
        ax.scatter(centres[:, 0], centres[:, 1], marker="+", s=60, c="0.5", label="mode centres")
    if samples is not None:
        ax.scatter(samples[:, 0], samples[:, 1], s=3, c="C0", alpha=0.6, label=f"{label} samples")
    # The real points on top, small: sharp modes (ring8) stay visible under a cloud of samples.
    ax.scatter(real[:, 0], real[:, 1], s=1, c="C1", alpha=0.6, label="real test")
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=7)
    ax.legend(fontsize=6, loc="upper right")
    return save(fig, path)
