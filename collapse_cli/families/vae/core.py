"""VAEs collapsing on their own samples (Shumailov et al. 2024, the VAE experiment), on 8x8 digits.

The paper trains a convolutional VAE (latent 20) on MNIST. Offline there is no MNIST, so this
family uses scikit-learn's digits set instead (1,797 8x8 grey images, shipped in the wheel and
loaded with no network) as a stand-in for MNIST; pixels are scaled from 0..16 to [0, 1].

The model is a small MLP VAE (64 -> hidden -> latent 20 -> hidden -> 64): on 64 pixels an MLP
trains in seconds on a CPU, where convolutions buy nothing. Likelihood (model.pixel_std):
a Gaussian N(mean, pixel_std^2) per pixel by default, a density on R^64, so NLLs can be negative;
or Bernoulli per grey level (binary cross-entropy with the intensity as target), as MNIST VAEs
customarily do. On these grey 8x8 digits the Bernoulli VAE ignores most of its latent and
collapses to one class within three generations; pixel_std=0.2 keeps generation 0 diverse.
Samples are the decoder's means (pixel probabilities) at z ~ N(0, I), as the paper's notebook
decodes them, so images stay grey and the next generation trains on them like real digits.

Every function that draws random numbers takes an explicit seed and uses its own
torch.Generator (weights are initialised inside torch.random.fork_rng), so global RNG state is
never read or changed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from collapse_cli.families.base import checked_loss
from collapse_cli.families.plots import pyplot, save

PIXELS = 64  # 8 x 8
N_CLASSES = 10
TAIL_MASS = 0.05  # the rare real digits: the lowest-density 5% under the generation-0 model


@contextmanager
def one_thread() -> Iterator[None]:
    """torch's intra-op threads set to one inside the block, and put back after it.

    A run's numbers then do not depend on how many cores the machine has. On these 64-pixel
    MLPs one thread loses nothing: on the shared 2-core CPU a default run took 3-8 s a
    generation with one thread and 23-142 s with two, with bit-identical metrics.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------


@dataclass
class Digits:
    """Real digits split once: images [n, 64] float32 in [0, 1], labels [n] int64."""

    train: np.ndarray
    train_labels: np.ndarray
    test: np.ndarray
    test_labels: np.ndarray


N_DIGITS = 1797  # sklearn's digits set


def split_sizes(test_fraction: float) -> tuple[int, int]:
    """(training, test) image counts of load_digits_split, known before loading (validation reads them)."""
    n_test = int(round(test_fraction * N_DIGITS))
    return N_DIGITS - n_test, n_test


def load_digits_split(test_fraction: float, seed: int) -> Digits:
    """sklearn's 1,797 digits (a stand-in for MNIST), shuffled by `seed`, the last test_fraction held out."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.data / 16.0).astype(np.float32)
    labels = bunch.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(images))
    n_test = split_sizes(test_fraction)[1]
    train, test = order[n_test:], order[:n_test]
    return Digits(images[train], labels[train], images[test], labels[test])


# --------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------


class VAE(nn.Module):
    """MLP encoder q(z|x) = N(mu, diag sigma^2); decoder mean sigmoid(logits(z)) per pixel.

    pixel_std None: p(x|z) = Bernoulli(mean) per grey level; a number s: N(mean, s^2) per pixel.
    """

    def __init__(self, latent: int = 20, hidden: int = 256, pixel_std: Optional[float] = None):
        super().__init__()
        self.latent = latent
        self.pixel_std = pixel_std
        self.encoder = nn.Sequential(nn.Linear(PIXELS, hidden), nn.ReLU(), nn.Linear(hidden, hidden // 2), nn.ReLU())
        self.to_stats = nn.Linear(hidden // 2, 2 * latent)
        self.decoder = nn.Sequential(nn.Linear(latent, hidden // 2), nn.ReLU(), nn.Linear(hidden // 2, hidden),
                                     nn.ReLU(), nn.Linear(hidden, PIXELS))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, log variance) of q(z|x)."""
        mu, log_var = self.to_stats(self.encoder(x)).chunk(2, dim=-1)
        return mu, log_var.clamp(-12.0, 8.0)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def reconstruction_nll(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """-log p(x|z) summed over pixels (nats), broadcasting logits [..., n, 64] against x [n, 64]."""
        if self.pixel_std is None:
            return F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
        squared = (x - torch.sigmoid(logits)).pow(2) / (2 * self.pixel_std ** 2)
        return (squared + math.log(self.pixel_std) + 0.5 * math.log(2 * math.pi)).sum(-1)


def build_vae(latent: int, hidden: int, pixel_std: Optional[float], seed: int) -> VAE:
    """A fresh VAE whose initial weights depend on `seed` only."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return VAE(latent, hidden, pixel_std)


def negative_elbo(model: VAE, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per-row -ELBO in nats: -log p(x|z) at one z ~ q(z|x) + KL(q(z|x) || N(0, I))."""
    mu, log_var = model.encode(x)
    eps = torch.randn(mu.shape, generator=generator, device=mu.device)
    z = mu + eps * torch.exp(0.5 * log_var)
    reconstruction = model.reconstruction_nll(model.decode_logits(z), x)
    kl = 0.5 * (mu.pow(2) + log_var.exp() - 1.0 - log_var).sum(-1)
    return reconstruction + kl


def epoch_batches(data: torch.Tensor, batch_size: int, generator: torch.Generator,
                  source: Optional[VAE] = None) -> Iterator[torch.Tensor]:
    """One epoch's minibatches: ceil(len(data) / batch_size) of them, the last one shorter.

    source None: `data` shuffled by `generator`. A model: each batch is freshly decoded from
    `source` at z ~ N(0, I) (decode_prior), so an epoch shows new images every batch; this is
    how the paper's notebook trains a generation on its parent (`data` then only sets the sizes).
    """
    if source is None:
        order = torch.randperm(len(data), generator=generator)
        for start in range(0, len(data), batch_size):
            yield data[order[start:start + batch_size]]
        return
    for start in range(0, len(data), batch_size):
        yield decode_prior(source, min(batch_size, len(data) - start), generator)


def train_vae(model: VAE, images: np.ndarray, epochs: int, batch_size: int, lr: float, seed: int,
              on_step: Optional[Callable[[int, int], None]] = None, weight_decay: float = 0.0,
              source: Optional[VAE] = None, generation: int = 0) -> dict:
    """Adam on the mean -ELBO over minibatches (epoch_batches: of `images`, or decoded from `source`).

    Returns the last epoch's mean loss (nats/image). One generator, seeded by `seed`, draws the
    shuffles, the fresh latents and the reparameterisation noise, in that order. A nan or inf loss
    stops with CollapseError naming `generation` and the step (families/base.checked_loss).
    """
    generator = torch.Generator().manual_seed(seed)
    data = torch.as_tensor(images, dtype=torch.float32)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    n_batches = math.ceil(len(data) / batch_size)
    total_steps, epoch_loss = epochs * n_batches, float("nan")
    model.train()
    for epoch in range(epochs):
        loss_sum = 0.0
        for step, batch in enumerate(epoch_batches(data, batch_size, generator, source)):
            loss = negative_elbo(model, batch, generator).mean()
            value = checked_loss(float(loss.detach()), epoch * n_batches + step + 1, generation)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += value * len(batch)
            if on_step is not None:
                on_step(epoch * n_batches + step + 1, total_steps)
        epoch_loss = loss_sum / len(data)
    model.eval()
    return {"train_loss_last": epoch_loss}


@torch.no_grad()
def decode_prior(model: VAE, n: int, generator: torch.Generator) -> torch.Tensor:
    """n images [n, 64]: decoder means sigmoid(logits(z)) at z ~ N(0, I) drawn from `generator`."""
    z = torch.randn((n, model.latent), generator=generator)
    return torch.sigmoid(model.decode_logits(z))


def sample_images(model: VAE, n: int, seed: int) -> np.ndarray:
    """n images [n, 64] float32: decoder means at z ~ N(0, I) (no pixel noise)."""
    return decode_prior(model, n, torch.Generator().manual_seed(seed)).numpy().astype(np.float32)


# --------------------------------------------------------------------------
# Likelihood bounds
# --------------------------------------------------------------------------


@torch.no_grad()
def elbo_nll(model: VAE, images: np.ndarray, seed: int) -> np.ndarray:
    """Per-image -ELBO (nats), one posterior draw: an upper bound on -log p(x)."""
    generator = torch.Generator().manual_seed(seed)
    return negative_elbo(model, torch.as_tensor(images), generator).numpy().astype(np.float64)


@torch.no_grad()
def importance_weighted_nll(model: VAE, images: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Per-image -log (1/K sum_k p(x, z_k) / q(z_k | x)), z_k ~ q(z|x) (Burda et al. 2016), in nats.

    An upper bound on -log p(x) that tightens as K grows; K = 1 is the -ELBO.
    """
    generator = torch.Generator().manual_seed(seed)
    x = torch.as_tensor(images)
    mu, log_var = model.encode(x)
    std = torch.exp(0.5 * log_var)
    eps = torch.randn((k, *mu.shape), generator=generator)
    z = mu + eps * std  # [K, n, latent]
    log_q = (-0.5 * (eps.pow(2) + log_var + math.log(2 * math.pi))).sum(-1)
    log_prior = (-0.5 * (z.pow(2) + math.log(2 * math.pi))).sum(-1)
    log_weights = -model.reconstruction_nll(model.decode_logits(z), x) + log_prior - log_q
    return (math.log(k) - torch.logsumexp(log_weights, dim=0)).numpy().astype(np.float64)


# --------------------------------------------------------------------------
# The paper's figure and the tails
# --------------------------------------------------------------------------


@torch.no_grad()
def latent_spread(reference: VAE, images: np.ndarray) -> float:
    """sqrt(mean over latent dimensions of Var_images[mu_d(x)]) under the generation-0 encoder.

    The paper's figure: how widely the original encoder's posterior means spread over a
    descendant's samples. It falls as samples crowd onto fewer, more typical images.
    """
    mu, _ = reference.encode(torch.as_tensor(images))
    return float(torch.sqrt(mu.double().var(dim=0, unbiased=False).mean()))


@torch.no_grad()
def flat_latent_std(reference: VAE, images: np.ndarray, n_images: int = 100) -> float:
    """The paper notebook's statistic: std of the generation-0 encoder's means on `n_images` images.

    The notebook encodes 100 decoded images with the original VAE's encoder and takes np.std of
    all 100 x latent means flattened together (ddof 0): unlike latent_spread it also counts how
    far apart the latent dimensions' averages lie. Printed there as 0.67 -> 0.43 over gens 1-5.
    """
    mu, _ = reference.encode(torch.as_tensor(images[:n_images]))
    return float(mu.double().flatten().std(unbiased=False))


def nearest_distances(queries: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Euclidean distance from every query row to its nearest row of `points` (pixel space)."""
    q, p = np.asarray(queries, dtype=np.float64), np.asarray(points, dtype=np.float64)
    squared = (q * q).sum(1)[:, None] - 2 * q @ p.T + (p * p).sum(1)[None, :]
    return np.sqrt(np.maximum(squared.min(axis=1), 0.0))


@torch.no_grad()
def reconstruct(model: VAE, images: np.ndarray) -> np.ndarray:
    """Decoder means at the encoder means: the model's own best rendering of each image."""
    mu, _ = model.encode(torch.as_tensor(images))
    return torch.sigmoid(model.decode_logits(mu)).numpy()


@dataclass
class RareDigits:
    """The rare part of the real test digits and, per digit, the distance a synthetic image must come within."""

    images: np.ndarray  # the lowest-density TAIL_MASS of the real test digits under the gen-0 model
    radii: np.ndarray  # pixel distance from each to its generation-0 reconstruction


def rare_digits(reference: VAE, test_images: np.ndarray, nll_gen0: np.ndarray,
                tail_mass: float = TAIL_MASS) -> RareDigits:
    """The real test digits with the highest generation-0 NLL (at least one) and their match radii.

    The radius is the generation-0 model's own reconstruction error of that digit: decoder means
    are smoother than real digits, so a fixed real-to-real distance would count nothing as
    covered even at generation 0; "as close as the original model could draw it" scales with that.
    """
    n_rare = max(1, int(round(tail_mass * len(test_images))))
    rarest = np.argsort(-np.asarray(nll_gen0), kind="stable")[:n_rare]
    images = test_images[rarest]
    radii = np.sqrt(((reconstruct(reference, images) - images) ** 2).sum(axis=1))
    return RareDigits(images, radii.astype(np.float64))


def tail_coverage(rare: RareDigits, samples: np.ndarray) -> float:
    """Share of the rare real digits with a synthetic image within their radius (pixel distance)."""
    if len(samples) == 0:
        return 0.0
    return float(np.mean(nearest_distances(rare.images, samples) <= rare.radii))


# --------------------------------------------------------------------------
# Class shares from a classifier trained on real digits
# --------------------------------------------------------------------------


def train_classifier(images: np.ndarray, labels: np.ndarray, seed: int):
    """Multinomial logistic regression on real digits (deterministic lbfgs; `seed` for completeness)."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    classifier = LogisticRegression(max_iter=2000, C=1.0, random_state=seed)
    with threadpool_limits(limits=1):
        return classifier.fit(images, labels)


def class_shares(predicted: np.ndarray, n_classes: int = N_CLASSES) -> np.ndarray:
    """Fraction of samples given to each class [n_classes] (nan when there are no samples)."""
    counts = np.bincount(np.asarray(predicted, dtype=np.int64), minlength=n_classes).astype(np.float64)
    return counts / counts.sum() if counts.sum() else np.full(n_classes, np.nan)


def share_entropy(shares: np.ndarray) -> float:
    """Entropy of the class shares in nats: ln 10 = 2.303 for balanced digits, 0 for one class."""
    positive = shares[shares > 0]
    return float(-(positive * np.log(positive)).sum()) + 0.0  # + 0.0: no "-0" for a single class


# --------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------


def grid_figure(images: np.ndarray, path: Path, title: str, columns: int = 10, rows: int = 6) -> Path:
    """The first rows x columns images as one grey grid PNG."""
    plt = pyplot()

    shown = np.asarray(images[:rows * columns]).reshape(-1, 8, 8)
    canvas = np.zeros((rows * 9 + 1, columns * 9 + 1), dtype=np.float32)  # white gaps under gray_r
    for i, image in enumerate(shown):
        r, c = divmod(i, columns)
        canvas[1 + r * 9:1 + r * 9 + 8, 1 + c * 9:1 + c * 9 + 8] = image
    fig, ax = plt.subplots(figsize=(columns * 0.5, rows * 0.5 + 0.4))
    ax.imshow(canvas, cmap="gray_r", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    return save(fig, path, dpi=100)
