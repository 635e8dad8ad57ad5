"""Small diffusion models (DDPM, or flow matching) with an MLP denoiser, on rows of numbers: 8x8 digits or 2-D points.

Bertrand et al. (ICLR 2024, "On the stability of iterative retraining of generative models on their own
data") retrain DDPM/EDM and flow-matching models on a mix of real data and their own samples. Here the
same two objectives run on vectors small enough for a CPU:
- ddpm (Ho et al. 2020): predict the noise eps added at one of T discrete steps (linear betas, scaled
  to T as in Nichol & Dhariwal 2021); ancestral sampling with reverse variance beta_t over all T steps;
- flow (conditional flow matching with straight paths, Lipman et al. 2023 / Liu et al. 2023): predict
  the velocity x_data - x_noise at x_t = (1 - t) x_noise + t x_data; Euler steps from t = 0 to 1.
Rows are standardised by a fixed affine map (Scaling) before the model sees them; likelihoods are
converted back to the data's units with its Jacobian.

Every function that draws random numbers takes an explicit seed and its own torch.Generator (weights
are initialised inside torch.random.fork_rng), so global RNG state is never read or changed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import nn

from collapse_cli.checks import StrEnum
from collapse_cli.families.base import checked_loss

TIME_FEATURES = 32  # sinusoidal features of t: 16 frequencies, sin and cos
BETA_START, BETA_END = 1e-4, 0.02  # Ho et al.'s schedule for T = 1000, stretched to T steps


class Objective(StrEnum):
    ddpm = "ddpm"
    flow = "flow"


@dataclass(frozen=True)
class Scaling:
    """x_model = (x - centre) / scale, one scalar scale for all coordinates (its Jacobian is scale^-dim)."""

    centre: np.ndarray  # [dim]
    scale: float
    low: Optional[float] = None  # bounds of the data in its own units (digits: 0 and 1): samples are clipped
    high: Optional[float] = None

    def to_model(self, rows: np.ndarray) -> np.ndarray:
        return ((np.asarray(rows, dtype=np.float32) - self.centre) / self.scale).astype(np.float32)

    def to_data(self, rows: np.ndarray) -> np.ndarray:
        data = np.asarray(rows, dtype=np.float32) * self.scale + self.centre
        return data if self.low is None else np.clip(data, self.low, self.high)

    def log_jacobian(self, dim: int) -> float:
        """log |d x_model / d x| summed over `dim` coordinates: -dim log scale."""
        return -dim * math.log(self.scale)


# --------------------------------------------------------------------------
# The denoiser
# --------------------------------------------------------------------------


def time_features(t: torch.Tensor) -> torch.Tensor:
    """[n] times in [0, 1] -> [n, TIME_FEATURES] sines and cosines at frequencies 1 .. 1000 (geometric)."""
    frequencies = torch.exp(torch.linspace(0.0, math.log(1000.0), TIME_FEATURES // 2, device=t.device))
    angles = t[:, None] * frequencies[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


class Denoiser(nn.Module):
    """A residual MLP f(x_t, t) -> [n, dim]: the noise (ddpm) or the velocity (flow), t in [0, 1]."""

    def __init__(self, dim: int, hidden: int, blocks: int):
        super().__init__()
        self.dim = dim
        self.inp = nn.Linear(dim, hidden)
        self.time = nn.Sequential(nn.Linear(TIME_FEATURES, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.blocks = nn.ModuleList(nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                                  nn.Linear(hidden, hidden)) for _ in range(blocks))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        time = self.time(time_features(t))
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h + time)  # the time enters every block: one embedding added is easy to ignore deep in
        return self.out(h)


def build_denoiser(dim: int, hidden: int, blocks: int, seed: int) -> Denoiser:
    """A fresh denoiser whose initial weights depend on `seed` only."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Denoiser(dim, hidden, blocks)


# --------------------------------------------------------------------------
# The DDPM noise schedule
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """DDPM's T steps, index i = t - 1 for t = 1 .. T: betas, alphas, cumulative products (float64)."""

    betas: torch.Tensor

    @classmethod
    def linear(cls, steps: int) -> Schedule:
        stretch = 1000.0 / steps  # the same total noise as Ho et al.'s 1000 steps
        return cls(torch.linspace(BETA_START * stretch, min(BETA_END * stretch, 0.999), steps, dtype=torch.float64))

    @property
    def steps(self) -> int:
        return len(self.betas)

    @property
    def alpha_bars(self) -> torch.Tensor:
        return torch.cumprod(1.0 - self.betas, dim=0)

    def at(self, index: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(beta_t, alpha_bar_t, alpha_bar_{t-1}) at step indices [n] as float32 [n, 1] columns (alpha_bar_0 = 1)."""
        bars = self.alpha_bars
        previous = torch.cat([torch.ones(1, dtype=bars.dtype), bars[:-1]])
        pick = index.cpu()
        return tuple(v[pick].float().to(device)[:, None] for v in (self.betas, bars, previous))


def step_times(index: torch.Tensor, steps: int) -> torch.Tensor:
    """The denoiser's time input of DDPM step index i (t = i + 1 of T): (i + 1) / T in (0, 1]."""
    return (index.float() + 1.0) / steps


# --------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------


def loss_terms(model: Denoiser, objective: Objective, schedule: Schedule, x0: torch.Tensor,
               generator: torch.Generator) -> torch.Tensor:
    """Per-row squared error of the prediction [n]: DDPM's simple loss, or flow matching's."""
    n, device = len(x0), x0.device
    noise = torch.randn(x0.shape, generator=generator, device=device)
    if objective == Objective.ddpm:
        index = torch.randint(schedule.steps, (n,), generator=generator, device=device)
        _, bar, _ = schedule.at(index, device)
        x_t = bar.sqrt() * x0 + (1.0 - bar).sqrt() * noise
        return (model(x_t, step_times(index, schedule.steps)) - noise).pow(2).mean(dim=1)
    t = torch.rand((n,), generator=generator, device=device)
    x_t = (1.0 - t[:, None]) * noise + t[:, None] * x0
    return (model(x_t, t) - (x0 - noise)).pow(2).mean(dim=1)


def train_denoiser(model: Denoiser, rows: np.ndarray, objective: Objective, schedule: Schedule, epochs: int,
                   batch_size: int, lr: float, seed: int, device: torch.device,
                   on_step: Optional[Callable[[int, int], None]] = None, weight_decay: float = 0.0,
                   generation: int = 0) -> dict:
    """Adam on the mean loss over shuffled minibatches of `rows` (already scaled); the last epoch's mean loss.

    One generator, seeded by `seed`, draws the shuffles, the steps and the noise. A nan or inf loss stops
    with CollapseError naming `generation` and the step (families/base.checked_loss).
    """
    generator = torch.Generator(device=device).manual_seed(seed)
    data = torch.as_tensor(rows, dtype=torch.float32, device=device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    n_batches = math.ceil(len(data) / batch_size)
    total, epoch_loss = epochs * n_batches, float("nan")
    model.train()
    for epoch in range(epochs):
        order, loss_sum = torch.randperm(len(data), generator=generator, device=device), 0.0
        for step in range(n_batches):
            batch = data[order[step * batch_size:(step + 1) * batch_size]]
            loss = loss_terms(model, objective, schedule, batch, generator).mean()
            done = epoch * n_batches + step + 1
            loss_sum += checked_loss(float(loss.detach()), done, generation) * len(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if on_step is not None:
                on_step(done, total)
        epoch_loss = loss_sum / len(data)
    model.eval()
    return {"train_loss_last": epoch_loss}


# --------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------


def _ddpm_mean(model: Denoiser, schedule: Schedule, x_t: torch.Tensor, index: torch.Tensor,
               clip: Optional[float]) -> torch.Tensor:
    """The reverse step's mean mu_theta(x_t, t): the posterior mean of q(x_{t-1} | x_t, x0_hat).

    clip: |x0_hat| capped there before it enters the mean (bounded data only, as Ho et al.'s sampler);
    None: the unclipped mean, which the likelihood bound reads.
    """
    beta, bar, previous = schedule.at(index, x_t.device)
    eps = model(x_t, step_times(index, schedule.steps))
    x0 = (x_t - (1.0 - bar).sqrt() * eps) / bar.sqrt()
    if clip is not None:
        x0 = x0.clamp(-clip, clip)
    return (previous.sqrt() * beta * x0 + (1.0 - beta).sqrt() * (1.0 - previous) * x_t) / (1.0 - bar)


@torch.no_grad()
def sample_rows(model: Denoiser, objective: Objective, schedule: Schedule, n: int, sample_steps: int, seed: int,
                device: torch.device, clip: Optional[float] = None) -> np.ndarray:
    """n rows [n, dim] float32 in the model's units: DDPM's ancestral chain over all T steps, or
    `sample_steps` Euler steps of the flow (the final rows clipped to +-clip when given)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn((n, model.dim), generator=generator, device=device)
    if objective == Objective.ddpm:
        for i in reversed(range(schedule.steps)):
            index = torch.full((n,), i, dtype=torch.long, device=device)
            mean = _ddpm_mean(model, schedule, x, index, clip)
            beta = schedule.at(index[:1], device)[0]
            x = mean + beta.sqrt() * torch.randn(x.shape, generator=generator, device=device) if i > 0 else mean
    else:
        dt = 1.0 / sample_steps
        for k in range(sample_steps):
            x = x + dt * model(x, torch.full((n,), k * dt, device=device))
        if clip is not None:
            x = x.clamp(-clip, clip)
    return x.cpu().numpy().astype(np.float32)


# --------------------------------------------------------------------------
# DDPM's likelihood bound
# --------------------------------------------------------------------------


@torch.no_grad()
def negative_elbo(model: Denoiser, schedule: Schedule, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per-row -ELBO of a DDPM (Ho et al. 2020, eq. 5) in nats, in the model's units, one x_t draw per step:

    KL(q(x_T|x0) || N(0, I)) + sum_{t>=2} KL(q(x_{t-1}|x_t, x0) || p(x_{t-1}|x_t)) - log N(x0; mu(x_1), beta_1),
    with p's variance beta_t, as the sampler draws. A bound on a continuous density: it may be negative.
    """
    n, dim, device = len(x0), x0.shape[1], x0.device
    bars = schedule.alpha_bars
    last = float(bars[-1])
    total = 0.5 * (last * x0.pow(2) + (1.0 - last) - 1.0 - math.log(1.0 - last)).sum(dim=1)
    for i in range(schedule.steps):
        index = torch.full((n,), i, dtype=torch.long, device=device)
        beta, bar, previous = schedule.at(index, device)
        x_t = bar.sqrt() * x0 + (1.0 - bar).sqrt() * torch.randn(x0.shape, generator=generator, device=device)
        mean = _ddpm_mean(model, schedule, x_t, index, clip=None)
        variance = float(schedule.betas[i])
        if i == 0:
            total = total + 0.5 * ((x0 - mean).pow(2) / variance + math.log(2 * math.pi * variance)).sum(dim=1)
            continue
        posterior_mean = (previous.sqrt() * beta * x0 + (1.0 - beta).sqrt() * (1.0 - previous) * x_t) / (1.0 - bar)
        posterior_variance = variance * float((1.0 - bars[i - 1]) / (1.0 - bars[i]))
        total = total + 0.5 * (dim * (math.log(variance / posterior_variance) + posterior_variance / variance - 1.0)
                               + (posterior_mean - mean).pow(2).sum(dim=1) / variance)
    return total


def nll_bound(model: Denoiser, schedule: Schedule, rows: np.ndarray, scaling: Scaling, seed: int,
              device: torch.device) -> np.ndarray:
    """Per-row -ELBO in nats of the density in the data's own units (the scaling's Jacobian added), float64."""
    generator = torch.Generator(device=device).manual_seed(seed)
    x0 = torch.as_tensor(scaling.to_model(rows), device=device)
    nll = negative_elbo(model, schedule, x0, generator).double().cpu().numpy()
    return nll - scaling.log_jacobian(x0.shape[1])
