"""VAEs collapsing on their own samples (Shumailov et al. 2024, the VAE experiment), on 8x8 digits.

The paper trains a convolutional VAE (latent 20) on MNIST. Offline there is no MNIST, so this
family uses scikit-learn's digits set instead (1,797 8x8 grey images, shipped in the wheel and
loaded with no network, families/digits.py) as a stand-in for MNIST.

The model is a small MLP VAE (64 -> hidden -> latent 20 -> hidden -> 64): on 64 pixels an MLP
trains in seconds on a CPU, where convolutions buy nothing. Likelihood (model.pixel_std):
a Gaussian N(mean, pixel_std^2) per pixel by default, a density on R^64, so NLLs can be negative;
or Bernoulli per grey level (binary cross-entropy with the intensity as target), as MNIST VAEs
customarily do. On these grey 8x8 digits the Bernoulli VAE ignores most of its latent and
collapses to one class within three generations; pixel_std=0.2 keeps generation 0 diverse.
Samples are the decoder's means (pixel probabilities) at z ~ N(0, I), as the paper's notebook
decodes them, so images stay grey and the next generation trains on them like real digits.
The data, the classifier, the tail test and the grid figure are shared with the other image
families (families/digits.py).

Every function that draws random numbers takes an explicit seed and uses its own
torch.Generator (weights are initialised inside torch.random.fork_rng), so global RNG state is
never read or changed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Optional

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from collapse_cli.families.base import checked_loss
from collapse_cli.families.digits import PIXELS, TAIL_MASS, RareDigits

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


@torch.no_grad()
def reconstruct(model: VAE, images: np.ndarray) -> np.ndarray:
    """Decoder means at the encoder means: the model's own best rendering of each image."""
    mu, _ = model.encode(torch.as_tensor(images))
    return torch.sigmoid(model.decode_logits(mu)).numpy()


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
