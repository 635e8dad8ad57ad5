"""Causal-LM training on packed fixed-length blocks (no padding, no attention mask)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from collapse_cli.config import TrainConfig
from collapse_cli.experiment import distributed
from collapse_cli.families.base import checked_loss

# How often the GPU path looks at the loss: each look is a host sync.
CHECK_EVERY = 50


# Mean validation NLL per token (nats) of a model after an epoch (1-based): the end-of-epoch hook the family
# passes in. The epoch tells the last one apart, whose weights are the trained model's unless best_valid restores.
Validate = Callable[[torch.nn.Module, int], float]


@dataclass
class TrainStats:
    steps: int
    tokens: int
    loss_first: float
    loss_last: float
    seconds: float
    # Validation NLL of the kept model and the epoch (1-based) it comes from; None without a validation split.
    valid_loss: float | None = None
    kept_epoch: int | None = None


def autocast(device: torch.device):
    """bf16 autocast on CUDA; a no-op context on the CPU."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def inference_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The weights generation and scoring run on: a bf16 copy on CUDA (2x autocast's beam search
    speed, half the memory traffic), the fp32 model itself on the CPU. Training keeps fp32 masters."""
    if device.type != "cuda" or next(model.parameters()).dtype == torch.bfloat16:
        return model  # already what scoring runs on: callers may pass on a copy made upstream
    import copy

    return copy.deepcopy(model).to(torch.bfloat16).eval()


def lr_at(step: int, total_steps: int, warmup_steps: int, schedule: str = "linear", floor: float = 0.0) -> float:
    """The multiplier of the peak learning rate at `step`: linear warm-up, then a linear or cosine
    decay from 1 to `floor` (min_lr / lr) over the remaining steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    remaining = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / remaining)
    shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress
    return floor + (1.0 - floor) * shape


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    # The fused kernel runs the whole update in one launch on CUDA.
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                             betas=(0.9, 0.98), fused=device.type == "cuda")


def compiles(cfg: TrainConfig, device: torch.device) -> bool:
    return cfg.compile if cfg.compile is not None else device.type == "cuda"


def train(model: torch.nn.Module, blocks: np.ndarray, cfg: TrainConfig, seed: int, device: torch.device,
          generation: int, on_step: Callable[[int, int], None] | None = None,
          validate: Validate | None = None) -> TrainStats:
    """Train `model` in place for cfg.epochs over `blocks` ([n, block_size] token ids).

    With `validate`, the model is scored after the last epoch, and after every epoch when
    cfg.select is best_valid: then the epoch with the lowest validation loss is the one kept.
    cfg.batch_size is the global batch: under `nproc=N` every rank takes its share of each batch
    of the same permutation (DDP), so steps, schedule and updates are those of one process.
    """
    data = torch.from_numpy(blocks).to(device)  # the whole set lives on the device
    n_blocks = len(data)
    steps_per_epoch = math.ceil(n_blocks / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    warmup_steps = max(1, int(cfg.warmup_ratio * total_steps))
    optimizer = make_optimizer(model, cfg, device)
    floor = cfg.min_lr / cfg.lr
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_at(step, total_steps, warmup_steps, cfg.schedule, floor))
    generator = torch.Generator().manual_seed(seed)
    model.train()
    # DDP and the compiled module share the model's parameters: training them trains `model`.
    forward = distributed.wrap(model, device)
    forward = torch.compile(forward, dynamic=False) if compiles(cfg, device) else forward
    start, step, losses = time.perf_counter(), 0, []
    window, window_steps = torch.zeros((), device=device), 0
    selection = _Selection(cfg.select == "best_valid", cfg.epochs)
    for epoch in range(1, cfg.epochs + 1):
        order = torch.randperm(n_blocks, generator=generator).to(device)
        for first in range(0, n_blocks, cfg.batch_size):
            rows, weight = distributed.shard_batch(order[first:first + cfg.batch_size])
            batch = data[rows]
            with autocast(device):
                loss = forward(input_ids=batch, labels=batch).loss * weight
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            window += loss.detach()
            step, window_steps = step + 1, window_steps + 1
            if device.type == "cpu" or step % CHECK_EVERY == 0 or step == total_steps:
                # Averaged over ranks, weighted losses make the global batch's loss; every rank checks the same value.
                losses.append(_checked_mean(distributed.mean_over_ranks(window) / window_steps, step, generation))
                window.zero_()
                window_steps = 0
            if on_step is not None:
                on_step(step, total_steps)
        if validate is not None and (selection.every_epoch or epoch == cfg.epochs):
            selection.end_of_epoch(model, epoch, validate(model, epoch))
            model.train()
    model.eval()
    selection.restore(model)
    return TrainStats(steps=step, tokens=n_blocks * blocks.shape[1] * cfg.epochs,
                      loss_first=losses[0], loss_last=losses[-1], seconds=time.perf_counter() - start,
                      valid_loss=selection.best_loss, kept_epoch=selection.best_epoch)


class _Selection:
    """The epoch to keep: the last one, or (best_valid) the one with the lowest validation loss."""

    def __init__(self, every_epoch: bool, epochs: int):
        self.every_epoch, self.epochs = every_epoch, epochs
        self.best_loss: float | None = None
        self.best_epoch: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None

    def end_of_epoch(self, model: torch.nn.Module, epoch: int, valid_loss: float) -> None:
        # NaN never compares lower: a diverged epoch is kept only until any finite one comes.
        if not (self.best_loss is None or math.isnan(self.best_loss) or valid_loss < self.best_loss):
            return
        self.best_loss, self.best_epoch = valid_loss, epoch
        # The last epoch's weights are the model itself: no copy needed.
        self.best_state = None if epoch == self.epochs else {
            name: tensor.detach().clone() for name, tensor in model.state_dict().items()}

    def restore(self, model: torch.nn.Module) -> None:
        if self.best_state is not None:
            model.load_state_dict(self.best_state)


def _checked_mean(mean_loss: torch.Tensor, step: int, generation: int) -> float:
    return checked_loss(float(mean_loss), step, generation)
