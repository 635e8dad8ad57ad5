"""A small GAN: MLP generator and discriminator, the non-saturating loss, Adam (Goodfellow et al. 2014).

The setting of Alemohammad et al. (2024, "Self-consuming generative models go MAD") in miniature: a
GAN trained on points or 8x8 digits, retrained on its own samples. A GAN drops modes inside one
training run (mode collapse); a loop on its samples compounds what each run dropped.

Sampling bias (MAD's quality-for-diversity knob, StyleGAN's truncation): at sampling the latent is
z = psi * eps with eps ~ N(0, I); psi < 1 draws nearer the latent mode, where the generator's
samples are most typical (higher precision, lower recall). Training always draws eps ~ N(0, I).

Every function that draws random numbers takes an explicit seed and uses its own CPU
torch.Generator (weights are initialised inside torch.random.fork_rng), so global RNG state is
never read or changed; latents are drawn on the CPU and moved to the model's device, so a seed
draws the same latents on every device.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Optional

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from collapse_cli.families.base import checked_loss

# Adam's betas for GANs (Radford et al. 2015): a short first-moment memory keeps the two players' updates responsive.
BETAS = (0.5, 0.999)
SAMPLE_BATCH = 8192  # rows per generator pass at sampling: bounded memory for any N


class GAN(nn.Module):
    """Generator latent -> hidden -> hidden -> dim; discriminator dim -> hidden -> hidden -> 1 logit.

    squash: a sigmoid on the generator's output (pixels in [0, 1]); otherwise raw coordinates.
    """

    def __init__(self, dim: int, latent: int, hidden: int, squash: bool):
        super().__init__()
        self.dim, self.latent, self.squash = dim, latent, squash
        last: list[nn.Module] = [nn.Sigmoid()] if squash else []
        self.generator = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                       nn.Linear(hidden, dim), *last)
        self.discriminator = nn.Sequential(nn.Linear(dim, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden),
                                           nn.LeakyReLU(0.2), nn.Linear(hidden, 1))

    def critic(self, x: torch.Tensor) -> torch.Tensor:
        """The discriminator's logit per row [n]: log D(x) / (1 - D(x))."""
        return self.discriminator(x).squeeze(-1)


def build_gan(dim: int, latent: int, hidden: int, squash: bool, seed: int) -> GAN:
    """A fresh GAN whose initial weights depend on `seed` only."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GAN(dim, latent, hidden, squash)


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def latents(n: int, latent: int, scale: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """z = scale * eps, eps ~ N(0, I) [n, latent], drawn on the CPU by `generator` and moved to `device`."""
    return (scale * torch.randn((n, latent), generator=generator)).to(device)


def discriminator_loss(model: GAN, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """-log D(real) - log(1 - D(fake)), batch means; softplus(-l) = -log sigmoid(l) without overflow."""
    return F.softplus(-model.critic(real)).mean() + F.softplus(model.critic(fake)).mean()


def generator_loss(model: GAN, fake: torch.Tensor) -> torch.Tensor:
    """The non-saturating loss -log D(G(z)): strong gradients while D rejects the fakes (Goodfellow et al.)."""
    return F.softplus(-model.critic(fake)).mean()


def train_gan(model: GAN, rows: np.ndarray, epochs: int, batch_size: int, lr: float, seed: int,
              on_step: Optional[Callable[[int, int], None]] = None, generation: int = 0) -> dict:
    """Alternating Adam steps (one discriminator, one generator) over shuffled minibatches of `rows`.

    One generator, seeded by `seed`, draws each epoch's shuffle and every batch's latents, in that
    order. Returns the last epoch's mean losses (nats). A nan or inf loss stops with CollapseError
    naming `generation` and the step (families/base.checked_loss).
    """
    generator = torch.Generator().manual_seed(seed)
    device = device_of(model)
    data = torch.as_tensor(rows, dtype=torch.float32).to(device)
    opt_d = torch.optim.Adam(model.discriminator.parameters(), lr=lr, betas=BETAS)
    opt_g = torch.optim.Adam(model.generator.parameters(), lr=lr, betas=BETAS)
    n_batches = math.ceil(len(data) / batch_size)
    d_last = g_last = float("nan")
    model.train()
    for epoch in range(epochs):
        d_sum = g_sum = 0.0
        order = torch.randperm(len(data), generator=generator).to(device)
        for step in range(n_batches):
            done = epoch * n_batches + step + 1
            real = data[order[step * batch_size:(step + 1) * batch_size]]
            fake = model.generator(latents(len(real), model.latent, 1.0, generator, device))
            d_loss = discriminator_loss(model, real, fake.detach())
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            g_loss = generator_loss(model, fake)
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
            # One host sync for both values; the check is the README's nan/inf stop for every family.
            d_value, g_value = torch.stack([d_loss.detach(), g_loss.detach()]).tolist()
            d_sum += checked_loss(d_value, done, generation) * len(real)
            g_sum += checked_loss(g_value, done, generation) * len(real)
            if on_step is not None:
                on_step(done, epochs * n_batches)
        d_last, g_last = d_sum / len(data), g_sum / len(data)
    model.eval()
    return {"d_loss_last": d_last, "g_loss_last": g_last}


@torch.no_grad()
def sample(model: GAN, n: int, seed: int, truncation: float = 1.0) -> np.ndarray:
    """n samples [n, dim] float32: G(truncation * eps), eps ~ N(0, I) drawn by a generator seeded by `seed`."""
    generator = torch.Generator().manual_seed(seed)
    device = device_of(model)
    parts = [model.generator(latents(min(SAMPLE_BATCH, n - start), model.latent, truncation, generator, device))
             for start in range(0, n, SAMPLE_BATCH)]
    if not parts:
        return np.zeros((0, model.dim), dtype=np.float32)
    return torch.cat(parts).float().cpu().numpy()


@torch.no_grad()
def critic_logits(model: GAN, rows: np.ndarray) -> np.ndarray:
    """The discriminator's logit of every row [n] float64 (how real the critic finds it)."""
    device = device_of(model)
    x = torch.as_tensor(rows, dtype=torch.float32)
    parts = [model.critic(x[start:start + SAMPLE_BATCH].to(device)).double().cpu()
             for start in range(0, len(x), SAMPLE_BATCH)]
    return torch.cat(parts).numpy() if parts else np.zeros(0)
