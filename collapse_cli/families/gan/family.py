"""The GAN as a family: 2-D toy points [n, 2] or 8x8 digits [n, 64] (float32) in, generator samples out.

MAD's setting in miniature (Alemohammad et al. 2024): each generation trains a fresh GAN (core.py) on
its mix and samples N rows, optionally biased toward quality by model.truncation (the latent's scale).

A GAN has no likelihood: there is no nll_test. Its headline is the Fréchet distance of its samples to
the real test rows (raw coordinates on 2-D, the fixed digit classifier's logits on digits), with a
bootstrap standard error, and the early-warning verdict sets tail coverage against it. Beside it:
precision/recall, density/coverage, modes covered and the high-quality share on mixtures with known
modes (ring8, blobs), class shares and their entropy on digits (measure/points.py, families/digits.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from collapse_cli.checks import check_count, check_memory, keys_text
from collapse_cli.errors import CollapseError
from collapse_cli.families import digits, toy2d
from collapse_cli.families.base import Family, Progress, RealData
from collapse_cli.families.gan import core
from collapse_cli.families.gan.facts import FACTS
from collapse_cli.families.plots import pyplot, save
from collapse_cli.measure import points
from collapse_cli.rundir import RunDir, damaged, gen_name, read_run_array

MODEL_FILE = "gan.pt"
SCORES_FILE = "scores.npy"
DIGITS = "digits"
FRECHET_BOOTSTRAP = 20  # resamples of the samples behind frechet_se


@dataclass
class GANModelConfig:
    """`model=gan`: MLP generator and discriminator, and the latent scale at sampling."""

    family: str = "gan"
    name: str = "gan"
    latent: int = 16
    hidden: int = 128
    # Scale psi of the latent at sampling, z = psi * eps (StyleGAN's truncation, MAD's sampling bias):
    # 1 samples as trained; below 1 favours quality (precision) over diversity (recall).
    truncation: float = 1.0
    # The defaults of train.epochs, train.batch_size and train.lr (Adam) for this model; override train.*.
    epochs: int = 200
    batch_size: int = 128
    lr: float = 1e-3


@dataclass
class GANDatasetConfig:
    """`dataset=toy2d` (name: the toy) or `dataset=digits`: one schema holds both groups' keys.

    toy2d reads n_train, n_test and noise; digits reads test_fraction and max_train; validate refuses a
    key of the other group set away from its default (it would do nothing).
    """

    name: str = "ring8"  # a toy (moons | circles | blobs | swiss_roll | ring8) or digits
    n_train: int = 1000
    n_test: int = 1000
    noise: Optional[float] = None
    test_fraction: float = 0.2
    max_train: Optional[int] = None
    seed: int = 0


DIGITS_KEYS, TOY_KEYS = ("test_fraction", "max_train"), ("n_train", "n_test", "noise")


def _as_toy(d: GANDatasetConfig) -> toy2d.Toy2DDatasetConfig:
    return toy2d.Toy2DDatasetConfig(d.name, d.n_train, d.n_test, d.noise, d.seed)


def _as_digits(d: GANDatasetConfig) -> digits.DigitsDatasetConfig:
    return digits.DigitsDatasetConfig(d.name, d.test_fraction, d.max_train, d.seed)


def check_dataset(d: GANDatasetConfig) -> None:
    """The group's own checks, and no key of the other group moved from its default."""
    defaults, is_digits = GANDatasetConfig(), d.name == DIGITS
    for key in TOY_KEYS if is_digits else DIGITS_KEYS:
        if getattr(d, key) != getattr(defaults, key):
            group = "toy2d" if is_digits else DIGITS
            raise CollapseError(f"dataset.{key}={getattr(d, key)} is read by dataset={group} only; drop it with "
                                f"dataset.name={d.name}")
    if is_digits:
        digits.check_dataset(_as_digits(d))
    else:
        toy2d.validate(_as_toy(d))


def frechet_se(real_features: np.ndarray, features: np.ndarray, seed: int, n_resamples: int = FRECHET_BOOTSTRAP
               ) -> float:
    """Bootstrap standard error of the Fréchet distance over the samples (the real reference held fixed):
    the noise band the early-warning verdict reads it against."""
    rng = np.random.default_rng(seed)
    values = [points.frechet_distance(real_features, features[rng.integers(len(features), size=len(features))])
              for _ in range(n_resamples)]
    return float(np.std(values, ddof=1))


class GANFamily(Family):
    name = "gan"
    model_schema = GANModelConfig
    dataset_schema = GANDatasetConfig
    datasets = (DIGITS, *toy2d.TOY_NAMES)
    # No likelihood: the Fréchet distance to the real test rows is the headline the verdict reads (facts.py).
    facts = FACTS
    reads = ("train.epochs", "train.lr", "train.batch_size")  # Adam on both players
    leading_keys = ("generation", "frechet", "tail_coverage", "precision", "recall")

    def __init__(self, cfg: Any, device: Any):
        super().__init__(cfg, device)
        self.is_digits = cfg.dataset.name == DIGITS
        self.test: Optional[np.ndarray] = None
        self.split: Optional[digits.Digits] = None
        self.classifier = None
        self.reference: Optional[dict] = None  # the real test rows' features, rare rows, radii, Fréchet floor

    @classmethod
    def validate(cls, cfg: Any) -> None:
        m = cfg.model
        check_dataset(cfg.dataset)
        for key in ("latent", "hidden"):
            if getattr(m, key) < 1:
                raise CollapseError(f"model.{key}={getattr(m, key)} must be at least 1")
        if not (math.isfinite(m.truncation) and m.truncation > 0):
            raise CollapseError(f"model.truncation={m.truncation} must be a positive number (1: no sampling bias; "
                                f"below 1 trades diversity for quality)")
        # fp32 weights, gradients and Adam's moments (16 bytes each) of two MLPs.
        check_memory(16 * m.hidden * (2 * m.hidden + m.latent + 2 * digits.PIXELS + 1),
                     keys_text("model", m, ("hidden", "latent")), "lower them (the defaults: hidden 128, latent 16)")
        check_count("model.latent", m.latent)

    # --- data -----------------------------------------------------------------------------
    def _dim(self) -> int:
        return digits.PIXELS if self.is_digits else 2

    def real_data(self, pool_cap: Optional[int]) -> RealData:
        d = self.cfg.dataset
        if self.is_digits:
            self.split = digits.load_digits_split(d.test_fraction, d.seed)
            real = RealData(train=self.split.train if pool_cap is None else self.split.train[:pool_cap],
                            test=self.split.test)
        else:
            real = toy2d.real_data(_as_toy(d), pool_cap)
        self.test = real.test
        return real

    def train_cap(self) -> Optional[int]:
        return self.cfg.dataset.max_train if self.is_digits else self.cfg.dataset.n_train

    def prepare(self, real: RealData, n_train: int) -> None:
        if self.is_digits:  # the classifier sees every real training digit, whatever N: a measuring instrument
            self.classifier = digits.train_classifier(self.split.train, self.split.train_labels, self.cfg.dataset.seed)
        test_features = self._features(self.test)
        self.reference = {
            "features": test_features,
            "rare": points.rare_points(test_features),
            "radii": points.knn_radii(test_features),
            # Two real sets are not at distance 0 either: the floor the samples' distance is read against.
            "frechet_floor": points.frechet_distance(test_features, self._features(real.train[:n_train])),
        }

    def _features(self, rows: np.ndarray) -> np.ndarray:
        """Where distances are measured: the classifier's logits (digits), the coordinates themselves (2-D)."""
        return digits.features(self.classifier, rows) if self.is_digits else np.asarray(rows, dtype=np.float64)

    # --- models ---------------------------------------------------------------------------
    def build_base_model(self, seed: int) -> core.GAN:
        m = self.cfg.model
        return core.build_gan(self._dim(), m.latent, m.hidden, self.is_digits, seed).to(self.device)

    def fit(self, model: core.GAN, train: np.ndarray, seed: int, generation: int, on_step: Progress) -> dict:
        t = self.cfg.train
        with digits.one_thread():
            stats = core.train_gan(model, train, t.epochs, t.batch_size, t.lr, seed, on_step, generation)
            # The last step's update can leave weights that sample nan after its loss was finite.
            if not np.isfinite(core.sample(model, 16, seed)).all():
                raise CollapseError(f"generation {generation}: the trained generator samples nan or inf (its last "
                                    f"training step diverged); lower the learning rate and resume: collapse resume "
                                    f"RUN_DIR train.lr=<lower>")
        return stats

    def sample(self, model: core.GAN, n: int, seed: int, on_batch: Progress) -> np.ndarray:
        with digits.one_thread():
            rows = core.sample(model, n, seed, self.cfg.model.truncation)
        on_batch(n, n)
        return rows

    # --- measuring ------------------------------------------------------------------------
    def measure(self, generation: int, model: core.GAN, reference_model: core.GAN, samples: np.ndarray,
                seed: int, on_progress: Progress) -> tuple[dict, np.ndarray]:
        ref = self.reference
        features = self._features(samples)
        metrics = points.point_metrics(ref["features"], features)
        tail, tail_se = points.tail_coverage(ref["features"], features, ref["rare"], radii=ref["radii"])
        metrics.update(frechet_se=frechet_se(ref["features"], features, seed), frechet_floor=ref["frechet_floor"],
                       tail_coverage=tail, tail_coverage_se=tail_se)
        metrics.update(self._classes(samples) if self.is_digits else self._modes(samples))
        on_progress(1, 1)
        # Per-sample scores: the generation-0 discriminator's logit, how real each sample looked at the start.
        with digits.one_thread():
            return metrics, core.critic_logits(reference_model, samples)

    def _classes(self, samples: np.ndarray) -> dict:
        shares = digits.class_shares(self.classifier.predict(samples))
        return {"class_share_max": float(shares.max()), "class_top": int(shares.argmax()),
                "class_entropy": digits.share_entropy(shares)}

    def _modes(self, samples: np.ndarray) -> dict:
        d = self.cfg.dataset
        centres = toy2d.mode_centres(d.name)
        return {} if centres is None else points.mode_metrics(samples, centres, toy2d.noise_of(d.name, d.noise))

    def n_parameters(self, model: core.GAN) -> int:
        return sum(p.numel() for p in model.parameters())

    def describe(self) -> str:
        m = self.cfg.model
        return f"gan (MLP generator and discriminator {m.hidden}, latent {m.latent}) on {self.cfg.dataset.name}"

    def describe_sampling(self, model: Any) -> str:
        return f"z = {self.cfg.model.truncation:g} x N(0, I)"

    # --- files ----------------------------------------------------------------------------
    def save_samples(self, folder: Path, samples: np.ndarray, scores: np.ndarray) -> None:
        files = RunDir(folder)
        files.save_array(self.samples_file, samples.astype(np.float32))
        files.save_array(SCORES_FILE, scores.astype(np.float32))

    def load_samples(self, folder: Path) -> np.ndarray:
        samples = read_run_array(folder / self.samples_file)
        if samples is None:
            raise damaged(folder / self.samples_file, "missing")
        return samples

    def save_model(self, model: core.GAN, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), folder / MODEL_FILE)

    def load_model(self, folder: Path) -> core.GAN:
        model = self.build_base_model(0)
        model.load_state_dict(torch.load(folder / MODEL_FILE, map_location=self.device, weights_only=True))
        return model.eval()

    # --- figures --------------------------------------------------------------------------
    def figures(self, run_dir: Path, rows: list[dict]) -> list[Path]:
        """figures/gan_real.png and figures/gan_samples_gen_NNN.png: digit grids or 2-D scatters."""
        figures = Path(run_dir) / "figures"
        draw = self._grid if self.is_digits else self._scatter
        paths = [draw(self.test, figures / "gan_real.png", "GAN: real test data")]
        for row in rows:
            g = int(row["generation"])
            samples = self.load_samples(Path(run_dir) / gen_name(g))
            detail = (f"modes {row['modes_covered']}, high quality {row['high_quality']:.2f}"
                      if "modes_covered" in row else f"recall {row.get('recall', float('nan')):.2f}")
            title = (f"GAN generation {g} (truncation {self.cfg.model.truncation:g}, mix {self.cfg.mix:g})\n"
                     f"Fréchet {row.get('frechet', float('nan')):.3g}, {detail}")
            paths.append(draw(samples, figures / f"gan_samples_{gen_name(g)}.png", title))
        return paths

    def _grid(self, images: np.ndarray, path: Path, title: str) -> Path:
        return digits.grid_figure(images, path, title + " (first 60)")

    def _scatter(self, rows: np.ndarray, path: Path, title: str) -> Path:
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(4.4, 4.4))
        ax.scatter(self.test[:, 0], self.test[:, 1], s=3, c="0.75", label="real test")
        if rows is not self.test:
            ax.scatter(rows[:, 0], rows[:, 1], s=3, c="C3", alpha=0.6, label="GAN samples")
        centres = toy2d.mode_centres(self.cfg.dataset.name)
        if centres is not None:
            ax.scatter(centres[:, 0], centres[:, 1], marker="+", s=60, c="k", label="mode centres")
        ax.set_aspect("equal")
        ax.set_title(title, fontsize=7)
        ax.legend(fontsize=6, loc="upper right")
        return save(fig, path)

    def truth_scores(self, samples: np.ndarray) -> Optional[np.ndarray]:
        """The curation truth (curate.score=auto/truth): digits, the classifier's log-confidence, as the VAE's;
        the mixtures blobs and ring8, their true log-density; None for the other toys (the generation-0 model)."""
        d = self.cfg.dataset
        return digits.log_confidence(self.classifier, samples) if self.is_digits else (
            toy2d.true_log_density(d.name, d.noise, samples))


FAMILY = GANFamily
