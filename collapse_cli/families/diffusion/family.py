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
import torch

from collapse_cli.checks import check_count, check_memory, keys_text
from collapse_cli.errors import CollapseError
from collapse_cli.families import digits, toy2d
from collapse_cli.families.base import Family, Progress, RealData, checked_probe
from collapse_cli.families.diffusion import core
from collapse_cli.families.diffusion.facts import FACTS
from collapse_cli.families.plots import pyplot, save
from collapse_cli.measure import points, stats
from collapse_cli.rundir import RunDir, gen_name

MODEL_FILE = "denoiser.pt"
SCORES_FILE = "scores.npy"
DIGITS = "digits"
BOOTSTRAP_RESAMPLES = 20


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
class DiffusionDatasetConfig:
    """`dataset=digits` or `dataset=toy2d`: one schema holds both groups' keys, since this family reads either.

    digits reads test_fraction and max_train; toy2d reads n_train, n_test and noise (name: the toy);
    validate refuses a key of the other group set away from its default.
    """

    name: str = DIGITS  # digits, or a toy: moons | circles | blobs | swiss_roll | ring8
    test_fraction: float = 0.2
    max_train: Optional[int] = None
    n_train: int = 1000
    n_test: int = 1000
    noise: Optional[float] = None
    seed: int = 0


DIGITS_KEYS, TOY_KEYS = ("test_fraction", "max_train"), ("n_train", "n_test", "noise")


def _as_digits(d: DiffusionDatasetConfig) -> digits.DigitsDatasetConfig:
    return digits.DigitsDatasetConfig(d.name, d.test_fraction, d.max_train, d.seed)


def _as_toy(d: DiffusionDatasetConfig) -> toy2d.Toy2DDatasetConfig:
    return toy2d.Toy2DDatasetConfig(d.name, d.n_train, d.n_test, d.noise, d.seed)


def _check_dataset(d: DiffusionDatasetConfig) -> None:
    """The group's own checks, and no key of the other group moved from its default (it would do nothing)."""
    defaults = DiffusionDatasetConfig()
    ignored = TOY_KEYS if d.name == DIGITS else DIGITS_KEYS
    for key in ignored:
        if getattr(d, key) != getattr(defaults, key):
            group = "toy2d" if d.name == DIGITS else DIGITS
            raise CollapseError(f"dataset.{key}={getattr(d, key)} is read by dataset={group} only; drop it with "
                                f"dataset.name={d.name}")
    if d.name == DIGITS:
        digits.check_dataset(_as_digits(d))
    else:
        toy2d.validate(_as_toy(d))


class DiffusionFamily(toy2d.PointFiles, Family):
    name = "diffusion"
    model_schema = DiffusionModelConfig
    dataset_schema = DiffusionDatasetConfig
    datasets = (DIGITS, *toy2d.TOY_NAMES)
    # The Fréchet distance (with its bootstrap error) heads the family under both objectives: flow has no
    # likelihood (docs/metrics.md), so it is what the early-warning verdict sets tail coverage against (facts.py).
    facts = FACTS
    reads = ("train.epochs", "train.lr", "train.batch_size", "train.init")  # Adam on the denoising loss
    leading_keys = ("generation", "frechet", "tail_coverage", "nll_test", "precision", "recall")

    def __init__(self, cfg: Any, device: Any):
        super().__init__(cfg, device)
        self.is_digits = cfg.dataset.name == DIGITS
        self.schedule = core.Schedule.linear(cfg.model.timesteps)
        self.test: Optional[np.ndarray] = None
        self.scaling: Optional[core.Scaling] = None
        self.split: Optional[digits.Digits] = None  # digits: the real split, labels included
        self.classifier = None
        self.reference: Optional[points.RealReference] = None  # the real test rows' features, radii, rare ones
        self.frechet_floor = float("nan")

    @classmethod
    def validate(cls, cfg: Any) -> None:
        m = cfg.model
        _check_dataset(cfg.dataset)
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
    def _dim(self) -> int:
        return digits.PIXELS if self.is_digits else 2

    def real_data(self, pool_cap: Optional[int]) -> RealData:
        d = self.cfg.dataset
        if self.is_digits:
            split = digits.load_digits_split(d.test_fraction, d.seed)
            self.split = split
            real = RealData(train=split.train if pool_cap is None else split.train[:pool_cap], test=split.test)
            # Pixels 0..1 onto -1..1, the range DDPM's sampler clips its x0 estimate to.
            self.scaling = core.Scaling(np.full(digits.PIXELS, 0.5, dtype=np.float32), 0.5, 0.0, 1.0)
        else:
            real = toy2d.real_data(_as_toy(d), pool_cap)
            # Standardised by the real pool (a function of the dataset config only: a resume finds the same map).
            self.scaling = core.Scaling(real.train.mean(axis=0), float(real.train.std()))
        self.test = real.test
        return real

    def train_cap(self) -> Optional[int]:
        return self.cfg.dataset.max_train if self.is_digits else self.cfg.dataset.n_train

    def prepare(self, real: RealData, n_train: int) -> None:
        if self.is_digits:  # the classifier sees every real training digit, whatever N: a measuring instrument
            split = self.split
            self.classifier = digits.train_classifier(split.train, split.train_labels, self.cfg.dataset.seed)
        test_features = self._features(self.test)
        self.reference = points.real_reference(test_features)
        # Two real sets are not at distance 0 either: the floor the samples' distance is read against.
        self.frechet_floor = points.frechet_distance(test_features, self._features(real.train[:n_train]))

    def _features(self, rows: np.ndarray) -> np.ndarray:
        """Where distances are measured: the classifier's logits (digits), the coordinates themselves (2-D)."""
        return digits.features(self.classifier, rows) if self.is_digits else np.asarray(rows, dtype=np.float64)

    # --- models ---------------------------------------------------------------------------
    def build_base_model(self, seed: int) -> core.Denoiser:
        m = self.cfg.model
        return core.build_denoiser(self._dim(), m.hidden, m.blocks, seed).to(self.device)

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
        real, features = self.reference.points, self._features(samples)
        metrics = self.reference.measure(features)
        metrics.update(frechet_floor=self.frechet_floor, frechet_se=frechet_se(real, features, seed))
        if self.cfg.model.objective == core.Objective.ddpm:
            with digits.one_thread():
                nll = core.nll_bound(model, self.schedule, self.test, self.scaling, seed, self.device)
            metrics.update(nll_test=float(nll.mean()), nll_test_se=stats.mean_se(nll))
        metrics.update(self._classes(samples) if self.is_digits else self._modes(samples))
        on_progress(1, 1)
        # Per-sample scores: each sample's distance to the nearest real test row, in the features above.
        return metrics, digits.nearest_distances(features, real)

    def _classes(self, samples: np.ndarray) -> dict:
        shares = digits.class_shares(self.classifier.predict(samples))
        return {"class_share_max": float(shares.max()), "class_top": int(shares.argmax()),
                "class_entropy": digits.share_entropy(shares)}

    def _modes(self, samples: np.ndarray) -> dict:
        d = self.cfg.dataset
        centres = toy2d.mode_centres(d.name)
        return {} if centres is None else points.mode_metrics(samples, centres, toy2d.noise_of(d.name, d.noise))

    def n_parameters(self, model: core.Denoiser) -> int:
        return sum(p.numel() for p in model.parameters())

    def describe(self) -> str:
        m = self.cfg.model
        steps = f"T={m.timesteps}" if m.objective == core.Objective.ddpm else f"{m.sample_steps} Euler steps"
        return f"diffusion ({m.objective}, MLP {m.hidden} x {m.blocks} blocks, {steps}) on {self.cfg.dataset.name}"

    # --- files ----------------------------------------------------------------------------
    def save_samples(self, folder: Path, samples: np.ndarray, scores: np.ndarray) -> None:
        super().save_samples(folder, samples, scores)  # toy2d.PointFiles: float32 rows, digits as points
        RunDir(folder).save_array(SCORES_FILE, scores.astype(np.float32))

    def save_model(self, model: core.Denoiser, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), folder / MODEL_FILE)

    def load_model(self, folder: Path) -> core.Denoiser:
        model = self.build_base_model(0)
        model.load_state_dict(torch.load(folder / MODEL_FILE, map_location=self.device, weights_only=True))
        return model.eval()

    # --- figures --------------------------------------------------------------------------
    def figures(self, run_dir: Path, rows: list[dict]) -> list[Path]:
        """figures/diffusion_real.png and figures/diffusion_samples_gen_NNN.png: digit grids or 2-D scatters."""
        figures = Path(run_dir) / "figures"
        draw = self._grid if self.is_digits else self._scatter
        paths = [draw(self.test, figures / "diffusion_real.png", "diffusion: real test data")]
        for row in rows:
            g = int(row["generation"])
            samples = self.load_samples(Path(run_dir) / gen_name(g))
            title = f"diffusion generation {g} ({self.cfg.model.objective}, mix {self.cfg.mix}): " \
                    f"Fréchet {row.get('frechet', float('nan')):.3g}"
            paths.append(draw(samples, figures / f"diffusion_samples_{gen_name(g)}.png", title))
        return paths

    def _grid(self, images: np.ndarray, path: Path, title: str) -> Path:
        return digits.grid_figure(images, path, title + " (first 60)")

    def _scatter(self, rows: np.ndarray, path: Path, title: str) -> Path:
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(4.2, 4.2))
        if rows is not self.test:
            ax.scatter(rows[:, 0], rows[:, 1], s=3, c="C0", label="samples")
        # The real points on top, small: sharp modes (ring8) stay visible under a cloud of samples.
        ax.scatter(self.test[:, 0], self.test[:, 1], s=1, c="C1", alpha=0.6, label="real test")
        ax.set_aspect("equal")
        ax.set_title(title, fontsize=8)
        ax.legend(fontsize=7, loc="upper right")
        return save(fig, path)

    def truth_scores(self, samples: np.ndarray) -> Optional[np.ndarray]:
        """The curation truth (curate.score=auto/truth): digits, the classifier's log-confidence, as the VAE's;
        the mixtures blobs and ring8, their true log-density; None for the other toys (the generation-0 model)."""
        d = self.cfg.dataset
        return digits.log_confidence(self.classifier, samples) if self.is_digits else (
            toy2d.true_log_density(d.name, d.noise, samples))


def frechet_se(real: np.ndarray, fake: np.ndarray, seed: int, resamples: int = BOOTSTRAP_RESAMPLES) -> float:
    """The Fréchet distance's sampling error: its std over bootstrap resamples of the fake rows (real held fixed)."""
    rng = np.random.default_rng(seed)
    draws = [points.frechet_distance(real, fake[rng.integers(len(fake), size=len(fake))]) for _ in range(resamples)]
    return float(np.std(draws, ddof=1))


FAMILY = DiffusionFamily
