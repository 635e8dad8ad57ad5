"""Causal-LM training on packed fixed-length blocks (no attention mask: every row is a whole block).

Every step has the same shapes: the short last batch of an epoch is filled up with rows whose labels
are ignored, so a compiled step is compiled once per run. With train.compile, each decoder layer is
compiled (regional compilation: one small graph serves every layer), and the compiled code is cached on
disk (`keep_compile_cache`), so a later generation or run loads it instead of compiling again.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from collapse_cli import collectives
from collapse_cli.config import TrainConfig
from collapse_cli.families.base import checked_loss
from collapse_cli.families.lm.loss import IGNORE, summed_nll

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


def keep_compile_cache(folder: Path) -> None:
    """Inductor's and Triton's caches under `folder` (a user's own TORCHINDUCTOR_CACHE_DIR wins), so
    compiled kernels outlive /tmp and later processes load them. Call before the process's first compile."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(folder))


def train(model: torch.nn.Module, blocks: np.ndarray, cfg: TrainConfig, seed: int, device: torch.device,
          generation: int, on_step: Callable[[int, int], None] | None = None,
          validate: Validate | None = None, compile_backend: str | Callable = "inductor",
          row_weights: np.ndarray | None = None) -> TrainStats:
    """Train `model` in place for cfg.epochs over `blocks` ([n, block_size] token ids).

    With `validate`, the model is scored after the last epoch, and after every epoch when
    cfg.select is best_valid: then the epoch with the lowest validation loss is the one kept.
    cfg.batch_size is the global batch: under `nproc=N` every rank takes its share of each batch
    of the same permutation (DDP), so steps, schedule and updates are those of one process.
    `compile_backend` is torch.compile's backend when cfg.compile is on (tests count graphs with their own).
    `row_weights` ([n], train.real_weight): each batch's loss is then the weighted mean of its token NLLs.
    """
    data = torch.from_numpy(blocks).to(device)  # the whole set lives on the device
    weights = None if row_weights is None else torch.as_tensor(row_weights, dtype=torch.float32, device=device)
    n_blocks, tokens_per_row = len(data), blocks.shape[1] - 1  # the first token of a block is never predicted
    compiled = compiles(cfg, device)
    steps_per_epoch = math.ceil(n_blocks / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    warmup_steps = max(1, int(cfg.warmup_ratio * total_steps))
    optimizer = make_optimizer(model, cfg, device)
    floor = cfg.min_lr / cfg.lr
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_at(step, total_steps, warmup_steps, cfg.schedule, floor))
    generator = torch.Generator().manual_seed(seed)
    model.train()
    # DDP and the loss module share the model's parameters: training them trains `model`.
    forward = collectives.wrap(_SummedNLL(model), device)
    regions = _CompiledRegions(model if compiled else None, compile_backend)
    start, step, losses = time.perf_counter(), 0, []
    window, window_steps = torch.zeros((), device=device), 0
    selection = _Selection(cfg.select == "best_valid", cfg.epochs)
    for epoch in range(1, cfg.epochs + 1):
        order = torch.randperm(n_blocks, generator=generator).to(device)
        for first in range(0, n_blocks, cfg.batch_size):
            # Filler rows serve only a compiled step's shapes: the eager CPU step does not pay for them.
            batch, labels, n_rows = _batch(data, order, first, cfg.batch_size, fill=compiled)
            # The mean NLL over the global batch's real tokens; DDP's mean over ranks undoes the world size.
            # A division, as the HF loss's mean: one process's loss is then that loss, bit for bit.
            if weights is None:
                per_rank_tokens, weighted = n_rows * tokens_per_row / collectives.world_size(), ()
            else:  # the same rows' weights (filler rows score nothing), over the global batch's weight sum
                global_weight = weights[order[first:first + n_rows]].sum()
                per_rank_tokens = global_weight * (tokens_per_row / collectives.world_size())
                weighted = (_batch(weights[:, None], order, first, cfg.batch_size, fill=compiled)[0][:, 0],)
            with regions.on(), autocast(device):
                loss = forward(batch, labels, *weighted) / per_rank_tokens
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            window += loss.detach()
            step, window_steps = step + 1, window_steps + 1
            if device.type == "cpu" or step % CHECK_EVERY == 0 or step == total_steps:
                # Averaged over ranks, the scaled sums make the global mean loss; every rank checks the same value.
                losses.append(checked_loss(float(collectives.mean_over_ranks(window) / window_steps), step, generation))
                window.zero_()
                window_steps = 0
            if on_step is not None:
                on_step(step, total_steps)
        if validate is not None and (selection.every_epoch or epoch == cfg.epochs):
            selection.end_of_epoch(model, epoch, validate(model, epoch))  # uncompiled: other shapes, no grad
            model.train()
    model.eval()
    selection.restore(model)
    return TrainStats(steps=step, tokens=n_blocks * blocks.shape[1] * cfg.epochs,
                      loss_first=losses[0], loss_last=losses[-1], seconds=time.perf_counter() - start,
                      valid_loss=selection.best_loss, kept_epoch=selection.best_epoch)


def _batch(data: torch.Tensor, order: torch.Tensor, first: int, batch_size: int,
           fill: bool) -> tuple[torch.Tensor, torch.Tensor, int]:
    """This rank's rows of the global batch at `first` of `order`, their labels, and the global batch's real rows.

    With `fill`, a short last batch is filled up to batch_size with rows from the start of the order whose
    labels are all IGNORE: the step keeps its shapes (one compiled graph) and its loss (those rows score
    nothing). Rows are whole blocks under a causal mask, so a filler row never reaches a real one.
    """
    n_rows = min(batch_size, len(order) - first)
    # Positions in the global batch; past the order's end they wrap to its start (the filler rows).
    positions, share = collectives.shard_batch(torch.arange(batch_size if fill else n_rows, device=order.device))
    # share 0: a global batch smaller than the world, whose rows this rank runs without scoring any.
    scored = positions < (n_rows if share > 0 else 0)
    batch = data[order[(first + positions) % len(order)]]
    return batch, batch.masked_fill(~scored[:, None], IGNORE), n_rows


class _SummedNLL(torch.nn.Module):
    """The summed next-token NLL of a batch (chunked: no [tokens, V] logits): the module DDP wraps."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor,
                row_weights: torch.Tensor | None = None) -> torch.Tensor:
        return summed_nll(self.model, input_ids, labels, row_weights)


class _CompiledRegions:
    """torch.compile on each repeated block of the model (its decoder layers), switched on for training steps.

    Compiling one layer's code serves every layer (their weights are the graph's inputs), so the compiler
    sees one layer, not all of them. The compiled call is attached only inside `on()`: validation,
    generation and copies of the model run it uncompiled, at their own shapes, without recompiling.
    Without a repeated block (an unknown architecture) the whole model is the region.
    """

    def __init__(self, model: torch.nn.Module | None, backend: str | Callable = "inductor"):
        self.regions: list[torch.nn.Module] = []  # None: nothing compiled
        if model is not None:
            block_names = set(getattr(model, "_no_split_modules", None) or ())
            self.regions = [m for m in model.modules() if type(m).__name__ in block_names] or [model.base_model]
        # What nn.Module.compile does, kept aside so it can be attached and detached.
        self.compiled = [torch.compile(region._call_impl, backend=backend, dynamic=False) for region in self.regions]

    @contextmanager
    def on(self):
        for region, compiled in zip(self.regions, self.compiled):
            region._compiled_call_impl = compiled
        try:
            yield
        finally:
            for region in self.regions:
                region._compiled_call_impl = None


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

