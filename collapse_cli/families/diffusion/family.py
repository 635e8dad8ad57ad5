"""Diffusion models as a family: rows in (8x8 digits [n, 64] in [0, 1], or 2-D points [n, 2]), samples out (core.py).

Bertrand et al. (ICLR 2024) retrain a diffusion or flow-matching model on real data mixed with its own
samples; here `mix` is the share of real rows in each later generation's training set and
`train.init=previous` fine-tunes the previous generation's weights, as their retraining does
(+experiment=bertrand_diffusion). Each generation is measured against the held-out real rows: a DDPM
likelihood bound, the Fréchet distance and the k-NN manifold metrics (measure/points.py) in a fixed
feature space (digits: the logits of one classifier trained once on real digits, families/digits.py;
2-D: the raw coordinates), the rare real rows covered, and class shares (digits) or modes (ring8, blobs).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from collapse_cli.checks import check_count, check_memory, keys_text
from collapse_cli.errors import CollapseError
from collapse_cli.families import digits, toy2d, toy_or_digits
from collapse_cli.families.base import Family, Progress, RealData, checked_probe
from collapse_cli.families.diffusion import core
from collapse_cli.families.diffusion.facts import FACTS
from collapse_cli.families.torch_files import TorchStateFiles
from collapse_cli.measure import stats


@dataclass
class DiffusionModelConfig:
    """`model=diffusion`: an MLP denoiser, its objective and how each generation trains and samples it."""

    family: str = "diffusion"
    name: str = "diffusion"
    objective: core.Objective = core.Objective.flow
    hidden: int = 128
    blocks: int = 2  # residual blocks of two hidden layers each
    timesteps: int = 100  # DDPM's T: noise levels trained, and steps of its ancestral sampler
    sample_steps: int = 20  # flow: Euler steps from noise to data (ddpm samples all T steps)
    # The defaults of train.epochs, train.batch_size and train.lr for this model (conf/config.yaml
    # interpolates them); the family reads train.*, so `train.epochs=5` overrides as for every family.
    epochs: int = 120
    batch_size: int = 128
    lr: float = 2e-3


@dataclass
class DiffusionDatasetConfig(toy_or_digits.ToyOrDigitsDatasetConfig):
    """`dataset=digits` (the default) or `dataset=toy2d`: toy_or_digits.ToyOrDigitsDatasetConfig."""


class DiffusionFamily(TorchStateFiles, toy2d.PointFiles, Family):
    name = "diffusion"
    model_schema = DiffusionModelConfig
    dataset_schema = DiffusionDatasetConfig
    datasets = toy_or_digits.NAMES
    # The Fréchet distance (with its bootstrap error) heads the family under both objectives: flow has no
    # likelihood (docs/metrics.md), so it is what the early-warning verdict sets tail coverage against (facts.py).
    facts = FACTS
    size_key = "dataset.max_train"  # named when regime=fresh runs short: only the digits' pool can (toys draw afresh)
    reads = ("train.epochs", "train.lr", "train.batch_size", "train.init")  # Adam on the denoising loss
    leading_keys = ("generation", "frechet", "tail_coverage", "nll_test", "precision", "recall")
    scores_file = "scores.npy"
    model_file = "denoiser.pt"  # TorchStateFiles: the weights' file in a saved model's folder

    def __init__(self, cfg: Any, device: Any):
        super().__init__(cfg, device)
        self.real = toy_or_digits.RealSet(cfg.dataset)
        self.schedule = core.Schedule.linear(cfg.model.timesteps)
        self.scaling: Optional[core.Scaling] = None

    @classmethod
    def validate(cls, cfg: Any) -> None:
        m = cfg.model
        toy_or_digits.check_dataset(cfg.dataset)
        for key in ("hidden", "blocks", "timesteps", "sample_steps"):
            if getattr(m, key) < 1:
                raise CollapseError(f"model.{key}={getattr(m, key)} must be at least 1")
        for key in ("timesteps", "sample_steps"):
            check_count(f"model.{key}", getattr(m, key))
        if m.timesteps < 2 and m.objective == core.Objective.ddpm:
            raise CollapseError(f"model.timesteps={m.timesteps}: a DDPM needs at least 2 noise levels "
                                f"(the default: 100)")
        # fp32 weights, gradients and Adam's moments (16 bytes each).
        check_memory(16 * m.hidden * m.hidden * (2 * m.blocks + 2), keys_text("model", m, ("hidden", "blocks")),
                     "lower them (the defaults: hidden 128, blocks 2)")

    # --- data -----------------------------------------------------------------------------
    def real_data(self, pool_cap: Optional[int]) -> RealData:
        real = self.real.real_data(pool_cap)
        if self.real.is_digits:  # pixels 0..1 onto -1..1, the range DDPM's sampler clips its x0 estimate to
            self.scaling = core.Scaling(np.full(digits.PIXELS, 0.5, dtype=np.float32), 0.5, 0.0, 1.0)
        else:  # standardised by the real pool (a function of the dataset config only: a resume finds the same map)
            self.scaling = core.Scaling(real.train.mean(axis=0), float(real.train.std()))
        return real

    def train_cap(self) -> Optional[int]:
        return toy_or_digits.train_cap(self.cfg.dataset)

    def prepare(self, real: RealData, n_train: int) -> None:
        self.real.prepare(real, n_train)

    # --- models ---------------------------------------------------------------------------
    def build_base_model(self, seed: int) -> core.Denoiser:
        m = self.cfg.model
        return core.build_denoiser(toy_or_digits.dim(self.cfg.dataset), m.hidden, m.blocks, seed).to(self.device)

    def _clip(self) -> Optional[float]:
        return 1.0 if self.scaling.low is not None else None

    def _sample(self, model: core.Denoiser, n: int, seed: int) -> np.ndarray:
        m = self.cfg.model
        rows = core.sample_rows(model, m.objective, self.schedule, n, m.sample_steps, seed, self.device, self._clip())
        return self.scaling.to_data(rows)

    def fit(self, model: core.Denoiser, train: np.ndarray, seed: int, generation: int, on_step: Progress) -> dict:
        t = self.cfg.train
        with digits.one_thread():
            stats = core.train_denoiser(model, self.scaling.to_model(train), self.cfg.model.objective, self.schedule,
                                        t.epochs, t.batch_size, t.lr, seed, self.device, on_step, t.weight_decay,
                                        generation)
            checked_probe(self._sample(model, 16, seed), generation, "samples")
        return stats

    def sample(self, model: core.Denoiser, n: int, seed: int, on_batch: Progress) -> np.ndarray:
        with digits.one_thread():
            rows = self._sample(model, n, seed)
        on_batch(n, n)
        return rows

    # --- measuring ------------------------------------------------------------------------
    def measure(self, generation: int, model: core.Denoiser, reference_model: core.Denoiser, samples: np.ndarray,
                seed: int, on_progress: Progress) -> tuple[dict, np.ndarray]:
        features = self.real.features(samples)
        metrics = self.real.measure(samples, features, seed)
        if self.cfg.model.objective == core.Objective.ddpm:
            with digits.one_thread():
                nll = core.nll_bound(model, self.schedule, self.real.test, self.scaling, seed, self.device)
            metrics.update(nll_test=float(nll.mean()), nll_test_se=stats.mean_se(nll))
        on_progress(1, 1)
        # Per-sample scores: each sample's distance to the nearest real test row, in the features above.
        return metrics, digits.nearest_distances(features, self.real.reference.points)

    def describe(self) -> str:
        m = self.cfg.model
        steps = f"T={m.timesteps}" if m.objective == core.Objective.ddpm else f"{m.sample_steps} Euler steps"
        return f"diffusion ({m.objective}, MLP {m.hidden} x {m.blocks} blocks, {steps}) on {self.cfg.dataset.name}"

    # --- figures --------------------------------------------------------------------------
    def figures(self, run_dir: Path, rows: list[dict]) -> list[Path]:
        """figures/diffusion_real.png and figures/diffusion_samples_gen_NNN.png: digit grids or 2-D scatters."""
        def title_of(g: int, row: dict) -> str:
            return (f"diffusion generation {g} ({self.cfg.model.objective}, mix {self.cfg.mix}): "
                    f"Fréchet {row.get('frechet', float('nan')):.3g}")

        return self.real.figures(run_dir, rows, "diffusion", "diffusion", self.load_samples, title_of)

    def truth_scores(self, samples: np.ndarray) -> Optional[np.ndarray]:
        """The toy's or the digits' truth (toy_or_digits.RealSet.truth_scores)."""
        return self.real.truth_scores(samples)


FAMILY = DiffusionFamily
