"""The VAE as a family: 8x8 digit images [n, 64] float32 in [0, 1] in, decoded images out (core.py).

sklearn's digits stand in for the paper's MNIST (no network here). Each generation trains a fresh
VAE on its mix, decodes N images from the prior, and is measured against the real test digits and
the generation-0 model (latent spread, rare digits). Runs on the CPU: the model is tiny.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from collapse_cli.checks import StrEnum, check_memory, keys_text  # StrEnum: with its Python 3.10 fallback
from collapse_cli.errors import CollapseError
from collapse_cli.families import digits
from collapse_cli.families.base import Family, Progress, RealData, checked_probe
from collapse_cli.families.torch_files import TorchStateFiles
from collapse_cli.families.vae import core
from collapse_cli.families.vae.facts import FACTS
from collapse_cli.measure import stats
from collapse_cli.rundir import gen_name

# train_data=fresh: the decoder that drew a generation's samples, saved beside them, since the next
# generation decodes its batches from it (also after a resume, when no model is in memory).
SAMPLER_FILE = "sampler.pt"


class Likelihood(StrEnum):
    gaussian = "gaussian"
    bernoulli = "bernoulli"


class TrainData(StrEnum):
    """What a later generation's minibatches hold."""

    fixed = "fixed"  # the rows the loop composed (mix: real rows and saved samples), reshuffled every epoch
    fresh = "fresh"  # new images decoded from the previous generation's model for every batch (the paper's notebook)


@dataclass
class VAEModelConfig:
    """`model=vae`: an MLP VAE and how each generation trains it."""

    family: str = "vae"
    name: str = "vae"
    latent: int = 20  # as in the paper
    hidden: int = 256
    likelihood: Likelihood = Likelihood.gaussian
    pixel_std: float = 0.2  # the Gaussian likelihood's per-pixel std (ignored by bernoulli)
    # The defaults of train.epochs, train.batch_size and train.lr for this model (conf/config.yaml
    # interpolates them); the VAE reads train.*, so `train.epochs=5` overrides as for every family.
    epochs: int = 30
    batch_size: int = 128
    lr: float = 2e-3
    nll_samples: int = 64  # K of the importance-weighted nll_test bound
    train_data: TrainData = TrainData.fixed


@dataclass(frozen=True)
class ReferenceFigures:
    """What the generation-0 model says about the fixed real test digits: the same every generation."""

    rare: digits.RareDigits
    latent_spread_real: float  # latent_spread of the real test digits, the scale the samples' spread is read on


class VAEFamily(TorchStateFiles, Family):
    name = "vae"
    model_schema = VAEModelConfig
    dataset_schema = digits.DigitsDatasetConfig
    datasets = ("digits",)
    facts = FACTS
    reads = ("train.epochs", "train.lr", "train.batch_size", "train.weight_decay")  # Adam's, in core.train_vae
    size_key = "dataset.max_train"
    samples_file = "samples.npy"
    scores_file = "scores.npy"
    model_file = "vae.pt"  # TorchStateFiles: the weights' file in a saved model's folder
    leading_keys = ("generation", "nll_test", "tail_coverage", "latent_spread", "latent_std_flat",
                    "class_share_max")

    def __init__(self, cfg: Any, device: Any):
        super().__init__(cfg, device)
        self.digits: Optional[digits.Digits] = None
        self.classifier = None
        self._gen0: Optional[ReferenceFigures] = None  # the reference model's figures: see _reference_figures
        # train_data=fresh: the last generation's sampling model (in memory), or the folder of the last
        # generation whose samples were read back (a resume reads them in order, so: the parent's).
        self._sampler: Optional[core.VAE] = None
        self._sampler_folder: Optional[Path] = None

    @classmethod
    def validate(cls, cfg: Any) -> None:
        m, d = cfg.model, cfg.dataset
        digits.check_dataset(d)
        for key in ("latent", "hidden", "nll_samples"):
            if getattr(m, key) < 1:
                raise CollapseError(f"model.{key}={getattr(m, key)} must be at least 1")
        if not m.pixel_std > 0:
            raise CollapseError(f"model.pixel_std={m.pixel_std} must be positive")
        # With mix=0 only regime=replace passes the shared checks, so mix is the one key to name.
        if m.train_data == TrainData.fresh and cfg.mix != 0:
            raise CollapseError(f"model.train_data=fresh trains each generation on its parent's decoder alone (the "
                                f"paper's notebook), so it needs mix=0, not mix={cfg.mix}: set mix=0, or "
                                f"model.train_data=fixed")
        # fp32 weights, gradients and Adam's moments (16 bytes each); nll_test's K decoder passes over the test digits.
        weights = m.hidden * (2 * digits.PIXELS + m.hidden) + 1.5 * m.latent * m.hidden
        check_memory(16 * weights, keys_text("model", m, ("hidden", "latent")),
                     "lower them (the defaults: hidden 256, latent 20)")
        n_test = digits.split_sizes(d.test_fraction)[1]
        check_memory(4 * m.nll_samples * n_test * (1.5 * m.hidden + digits.PIXELS + m.latent),
                     f"model.nll_samples={m.nll_samples} (decoder passes over {n_test} test digits)",
                     "lower it (the default: 64)")

    def _pixel_std(self) -> Optional[float]:
        return self.cfg.model.pixel_std if self.cfg.model.likelihood == Likelihood.gaussian else None

    def real_data(self, pool_cap: Optional[int]) -> RealData:
        self.digits = digits.load_digits_split(self.cfg.dataset.test_fraction, self.cfg.dataset.seed)
        train = self.digits.train if pool_cap is None else self.digits.train[:pool_cap]
        return RealData(train=train, test=self.digits.test, info={"train_labels": self.digits.train_labels})

    def train_cap(self) -> Optional[int]:
        return self.cfg.dataset.max_train

    def prepare(self, real: RealData, n_train: int) -> None:
        # The classifier sees every real training digit, whatever N: it is a measuring instrument.
        self.classifier = digits.train_classifier(self.digits.train, self.digits.train_labels, self.cfg.dataset.seed)

    def build_base_model(self, seed: int) -> core.VAE:
        m = self.cfg.model
        return core.build_vae(m.latent, m.hidden, self._pixel_std(), seed)

    def fit(self, model: core.VAE, train: np.ndarray, seed: int, generation: int, on_step: Progress) -> dict:
        t = self.cfg.train
        fresh = self.cfg.model.train_data == TrainData.fresh and generation > 0
        source = self._parent(generation) if fresh else None
        with digits.one_thread():
            stats = core.train_vae(model, train, t.epochs, t.batch_size, t.lr, seed, on_step, t.weight_decay, source,
                                   generation)
            # The last step's update can leave weights that decode nan after its loss was finite (lr 1e20, one
            # step): a probe of 64 images stops that here rather than in sklearn's classifier.
            checked_probe(core.sample_images(model, 64, seed), generation, "decodes")
        return stats

    def _parent(self, generation: int) -> core.VAE:
        """The model that sampled generation - 1: in memory, or read back beside its samples on a resume."""
        if self._sampler is not None:
            return self._sampler
        folder = self._sampler_folder
        if folder is None or folder.name != gen_name(generation - 1) or not (folder / SAMPLER_FILE).is_file():
            where = folder / SAMPLER_FILE if folder is not None else gen_name(generation - 1)
            raise CollapseError(f"{where}: generation {generation - 1}'s decoder, which model.train_data=fresh "
                                f"trains generation {generation} on, is missing; start the run again")
        self._sampler = self.build_base_model(0)
        self._sampler.decoder.load_state_dict(torch.load(folder / SAMPLER_FILE, map_location="cpu",
                                                         weights_only=True))
        return self._sampler.eval()

    def sample(self, model: core.VAE, n: int, seed: int, on_batch: Progress) -> np.ndarray:
        with digits.one_thread():
            images = core.sample_images(model, n, seed)
        self._sampler = model if self.cfg.model.train_data == TrainData.fresh else None
        on_batch(n, n)
        return images

    def _reference_figures(self, reference: core.VAE) -> ReferenceFigures:
        """The reference model's view of the real test digits, made at the first measure of this run.

        A run (and a resume) builds its family once and has one reference model throughout. Seeded by the
        dataset, so a resume, which reloads the reference, rebuilds the same figures.
        """
        if self._gen0 is None:
            test = self.digits.test
            nll_gen0 = core.importance_weighted_nll(reference, test, self.cfg.model.nll_samples,
                                                    self.cfg.dataset.seed)
            self._gen0 = ReferenceFigures(core.rare_digits(reference, test, nll_gen0),
                                          core.latent_spread(reference, test))
        return self._gen0

    def measure(self, generation: int, model: core.VAE, reference_model: core.VAE, samples: np.ndarray,
                seed: int, on_progress: Progress) -> tuple[dict, np.ndarray]:
        with digits.one_thread():
            return self._measure(model, reference_model, samples, seed, on_progress)

    def _measure(self, model: core.VAE, reference_model: core.VAE, samples: np.ndarray, seed: int,
                 on_progress: Progress) -> tuple[dict, np.ndarray]:
        test = self.digits.test
        shares = digits.class_shares(self.classifier.predict(samples))
        test_nll = core.importance_weighted_nll(model, test, self.cfg.model.nll_samples, seed)
        gen0 = self._reference_figures(reference_model)
        tail_coverage = digits.tail_coverage(gen0.rare, samples)
        metrics = {
            "nll_test": float(test_nll.mean()),
            "nll_test_se": stats.mean_se(test_nll),
            "elbo_nll_test": float(core.elbo_nll(model, test, seed).mean()),
            "tail_coverage": tail_coverage,
            # A share of the few rare digits: its binomial error dominates the sampling noise.
            "tail_coverage_se": stats.binomial_se(tail_coverage, len(gen0.rare.images)),
            "latent_spread": core.latent_spread(reference_model, samples),
            "latent_spread_real": gen0.latent_spread_real,
            "latent_std_flat": core.flat_latent_std(reference_model, samples),
            "class_share_max": float(shares.max()),
            "class_top": int(shares.argmax()),
            "class_entropy": digits.share_entropy(shares),
            # The distance to the real test digits in the classifier's logits (measure/points.py), as the
            # diffusion and GAN families report it on the same digits.
            "frechet": digits.frechet_to_real(self.classifier, test, samples),
        }
        on_progress(1, 1)
        # Per-sample scores: each image's -ELBO under the generation-0 model (how typical it looked at the start).
        return metrics, core.elbo_nll(reference_model, samples, seed)

    def truth_scores(self, samples: np.ndarray) -> np.ndarray:
        """The digits classifier's log-confidence in its class (the stand-in for a truth digits lack)."""
        return digits.log_confidence(self.classifier, samples)

    def review_cells(self, samples: np.ndarray) -> list[str]:
        """Each image as an 8x8 SVG of grey squares (no image library needed to view or write it)."""
        side = int(round(math.sqrt(samples.shape[1])))
        return [image_svg(row.reshape(side, side)) for row in np.clip(samples, 0.0, 1.0)]

    def describe(self) -> str:
        m = self.cfg.model
        return f"vae (MLP {m.hidden}, latent {m.latent}, {m.likelihood} likelihood, {m.train_data} training images)"

    def save_samples(self, folder: Path, samples: np.ndarray, scores: np.ndarray) -> None:
        super().save_samples(folder, samples, scores)
        if self._sampler is not None:
            tmp = folder / (SAMPLER_FILE + ".tmp")  # renamed into place: never half-written
            torch.save(self._sampler.decoder.state_dict(), tmp)
            tmp.replace(folder / SAMPLER_FILE)

    def load_samples(self, folder: Path) -> np.ndarray:
        self._sampler, self._sampler_folder = None, Path(folder)
        return super().load_samples(folder)

    def figures(self, run_dir: Path, rows: list[dict]) -> list[Path]:
        """figures/vae_real.png and figures/vae_samples_gen_NNN.png: a sample grid per generation."""
        figures = Path(run_dir) / "figures"
        real_title = "VAE: real test digits (first 60, 8×8)"
        paths = [digits.grid_figure(self.digits.test, figures / "vae_real.png", real_title)]
        for row in rows:
            g = int(row["generation"])
            images = self.load_samples(Path(run_dir) / gen_name(g))
            title = (f"VAE generation {g}: first 60 decoded samples (latent spread "
                     f"{row.get('latent_spread', float('nan')):.3f})")
            paths.append(digits.grid_figure(images, figures / f"vae_samples_{gen_name(g)}.png", title))
        return paths


def image_svg(image: np.ndarray, pixel: int = 6) -> str:
    """A greyscale image in [0, 1] (1: ink, drawn dark) as an inline SVG."""
    rows, cols = image.shape
    squares = "".join(f"<rect x='{c * pixel}' y='{r * pixel}' width='{pixel}' height='{pixel}' "
                      f"fill='rgb({v},{v},{v})'/>" for r in range(rows) for c in range(cols)
                      for v in [int(round(255 * (1 - image[r, c])))])
    return f"<svg width='{cols * pixel}' height='{rows * pixel}'>{squares}</svg>"


FAMILY = VAEFamily
