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

from collapse_cli.checks import check_count, check_memory, keys_text
from collapse_cli.errors import CollapseError
from collapse_cli.families import digits, toy2d, toy_or_digits
from collapse_cli.families.base import Family, Progress, RealData
from collapse_cli.families.gan import core
from collapse_cli.families.gan.facts import FACTS
from collapse_cli.families.torch_files import TorchStateFiles


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
class GANDatasetConfig(toy_or_digits.ToyOrDigitsDatasetConfig):
    """`dataset=toy2d` (name: the toy; ring8 by default) or `dataset=digits`: toy_or_digits.ToyOrDigitsDatasetConfig."""

    name: str = "ring8"


class GANFamily(TorchStateFiles, toy2d.PointFiles, Family):
    name = "gan"
    model_schema = GANModelConfig
    dataset_schema = GANDatasetConfig
    datasets = toy_or_digits.NAMES
    # No likelihood: the Fréchet distance to the real test rows is the headline the verdict reads (facts.py).
    facts = FACTS
    size_key = "dataset.max_train"  # named when regime=fresh runs short: only the digits' pool can (toys draw afresh)
    reads = ("train.epochs", "train.lr", "train.batch_size")  # Adam on both players
    leading_keys = ("generation", "frechet", "tail_coverage", "precision", "recall")
    scores_file = "scores.npy"
    model_file = "gan.pt"  # TorchStateFiles: the weights' file in a saved model's folder

    def __init__(self, cfg: Any, device: Any):
        super().__init__(cfg, device)
        self.real = toy_or_digits.RealSet(cfg.dataset)

    @classmethod
    def validate(cls, cfg: Any) -> None:
        m = cfg.model
        toy_or_digits.check_dataset(cfg.dataset)
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
    def real_data(self, pool_cap: Optional[int]) -> RealData:
        return self.real.real_data(pool_cap)

    def train_cap(self) -> Optional[int]:
        return toy_or_digits.train_cap(self.cfg.dataset)

    def prepare(self, real: RealData, n_train: int) -> None:
        self.real.prepare(real, n_train)

    # --- models ---------------------------------------------------------------------------
    def build_base_model(self, seed: int) -> core.GAN:
        m, dim = self.cfg.model, toy_or_digits.dim(self.cfg.dataset)
        return core.build_gan(dim, m.latent, m.hidden, self.real.is_digits, seed).to(self.device)

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
        metrics = self.real.measure(samples, self.real.features(samples), seed)
        on_progress(1, 1)
        # Per-sample scores: the generation-0 discriminator's logit, how real each sample looked at the start.
        with digits.one_thread():
            return metrics, core.critic_logits(reference_model, samples)

    def model_scores(self, scores: np.ndarray) -> np.ndarray:
        """measure's scores are the generation-0 critic's logits, log-odds that a sample is real: already
        higher for the more plausible, so curation reads them as they are (not negated as an NLL would be)."""
        return np.asarray(scores, dtype=np.float64)

    def describe(self) -> str:
        m = self.cfg.model
        return f"gan (MLP generator and discriminator {m.hidden}, latent {m.latent}) on {self.cfg.dataset.name}"

    def describe_sampling(self, model: Any) -> str:
        return f"z = {self.cfg.model.truncation:g} x N(0, I)"

    # --- figures --------------------------------------------------------------------------
    def figures(self, run_dir: Path, rows: list[dict]) -> list[Path]:
        """figures/gan_real.png and figures/gan_samples_gen_NNN.png: digit grids or 2-D scatters."""
        def title_of(g: int, row: dict) -> str:
            detail = (f"modes {row['modes_covered']}, high quality {row['high_quality']:.2f}"
                      if "modes_covered" in row else f"recall {row.get('recall', float('nan')):.2f}")
            return (f"GAN generation {g} (truncation {self.cfg.model.truncation:g}, mix {self.cfg.mix:g})\n"
                    f"Fréchet {row.get('frechet', float('nan')):.3g}, {detail}")

        return self.real.figures(run_dir, rows, "gan", "GAN", self.load_samples, title_of)

    def truth_scores(self, samples: np.ndarray) -> Optional[np.ndarray]:
        """The toy's or the digits' truth (toy_or_digits.RealSet.truth_scores)."""
        return self.real.truth_scores(samples)


FAMILY = GANFamily
