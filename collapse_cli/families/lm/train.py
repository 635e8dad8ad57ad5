"""Causal-LM training on packed fixed-length blocks (no padding, no attention mask)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from collapse_cli.config import TrainConfig
from collapse_cli.errors import CollapseError

# How often the GPU path looks at the loss: each look is a host sync.
CHECK_EVERY = 50


@dataclass
class TrainStats:
    steps: int
    tokens: int
    loss_first: float
    loss_last: float
    seconds: float


def autocast(device: torch.device):
    """bf16 autocast on CUDA; a no-op context on the CPU."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def inference_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The weights generation and scoring run on: a bf16 copy on CUDA (2x autocast's beam search
    speed, half the memory traffic), the fp32 model itself on the CPU. Training keeps fp32 masters."""
    if device.type != "cuda":
        return model
    import copy

    return copy.deepcopy(model).to(torch.bfloat16).eval()


def lr_at(step: int, total_steps: int, warmup_steps: int) -> float:
    """Linear warm-up, then linear decay to zero: the multiplier of the peak learning rate."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    remaining = max(1, total_steps - warmup_steps)
    return max(0.0, (total_steps - step) / remaining)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    # The fused kernel runs the whole update in one launch on CUDA.
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                             betas=(0.9, 0.98), fused=device.type == "cuda")


def compiles(cfg: TrainConfig, device: torch.device) -> bool:
    return cfg.compile if cfg.compile is not None else device.type == "cuda"


def train(model: torch.nn.Module, blocks: np.ndarray, cfg: TrainConfig, seed: int, device: torch.device,
          generation: int, on_step: Callable[[int, int], None] | None = None) -> TrainStats:
    """Train `model` in place for cfg.epochs over `blocks` ([n, block_size] token ids)."""
    data = torch.from_numpy(blocks).to(device)  # the whole set lives on the device
    n_blocks = len(data)
    steps_per_epoch = math.ceil(n_blocks / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    warmup_steps = max(1, int(cfg.warmup_ratio * total_steps))
    optimizer = make_optimizer(model, cfg, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_at(step, total_steps, warmup_steps))
    generator = torch.Generator().manual_seed(seed)
    model.train()
    # The compiled module shares the model's parameters: training it trains `model`.
    forward = torch.compile(model, dynamic=False) if compiles(cfg, device) else model
    start, step, losses = time.perf_counter(), 0, []
    window, window_steps = torch.zeros((), device=device), 0
    for _ in range(cfg.epochs):
        order = torch.randperm(n_blocks, generator=generator).to(device)
        for first in range(0, n_blocks, cfg.batch_size):
            batch = data[order[first:first + cfg.batch_size]]
            with autocast(device):
                loss = forward(input_ids=batch, labels=batch).loss
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            window += loss.detach()
            step, window_steps = step + 1, window_steps + 1
            if device.type == "cpu" or step % CHECK_EVERY == 0 or step == total_steps:
                losses.append(_checked_mean(window / window_steps, step, generation))
                window.zero_()
                window_steps = 0
            if on_step is not None:
                on_step(step, total_steps)
    model.eval()
    return TrainStats(steps=step, tokens=n_blocks * blocks.shape[1] * cfg.epochs,
                      loss_first=losses[0], loss_last=losses[-1], seconds=time.perf_counter() - start)


def _checked_mean(mean_loss: torch.Tensor, step: int, generation: int) -> float:
    value = float(mean_loss)
    if not math.isfinite(value):
        raise CollapseError(
            f"generation {generation}: training loss became {value} at step {step} "
            f"(diverged); lower the learning rate and resume: collapse resume RUN_DIR train.lr=<lower>")
    return value
