"""Model-side measurements: token log-losses of a model on fixed blocks of text."""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from collapse_cli.train import autocast

OnBatch = Optional[Callable[[int, int], None]]


def _batches(n: int, batch_size: int):
    for first in range(0, n, batch_size):
        yield first, min(first + batch_size, n)


def _log_probs(model: torch.nn.Module, batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """float32 log-softmax of the next-token logits, shape [b, L-1, V]."""
    with autocast(device):
        logits = model(input_ids=batch).logits[:, :-1]
    return F.log_softmax(logits.float(), dim=-1)


@torch.inference_mode()
def token_nll(model: torch.nn.Module, blocks: np.ndarray, batch_size: int, device: torch.device,
              on_batch: OnBatch = None) -> np.ndarray:
    """NLL (nats) of every token given the tokens before it in its block: shape [n, L-1].

    Blocks are scored independently, with no context from the block before, which is
    how Shumailov et al. evaluate: the first token of each block is never predicted.
    """
    model.eval()
    nll = np.empty((len(blocks), blocks.shape[1] - 1), dtype=np.float32)
    for first, last in _batches(len(blocks), batch_size):
        batch = torch.from_numpy(blocks[first:last]).to(device)
        log_probs = _log_probs(model, batch, device)
        gold = batch[:, 1:].unsqueeze(-1)
        nll[first:last] = (-log_probs.gather(-1, gold).squeeze(-1)).cpu().numpy()
        if on_batch is not None:
            on_batch(last, len(blocks))
    return nll


def sliding_windows(stream_length: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, end, first_scored) windows that score every token once.

    Each window after the first scores only its last `stride` tokens, so every
    scored token sees at least `window - stride` tokens of context.
    """
    spans, scored_up_to = [], 1  # token 0 has no context and is never scored
    for start in range(0, stream_length, stride):
        end = min(start + window, stream_length)
        if end > scored_up_to:
            spans.append((start, end, scored_up_to))
            scored_up_to = end
        if end == stream_length:
            break
    return spans


@torch.inference_mode()
def sliding_nll(model: torch.nn.Module, stream: np.ndarray, window: int, stride: int, batch_size: int,
                device: torch.device) -> tuple[float, int]:
    """Sum of NLL (nats) and count of tokens scored by a strided sliding window over one stream."""
    model.eval()
    total, count = 0.0, 0
    spans = sliding_windows(len(stream), window, stride)
    full = [s for s in spans if s[1] - s[0] == window]
    ragged = [s for s in spans if s[1] - s[0] != window]
    # Full-length windows batch together; a short tail window (at most one) runs alone.
    for group in [full[i:i + batch_size] for i in range(0, len(full), batch_size)] + [[s] for s in ragged]:
        batch = torch.from_numpy(np.stack([stream[s:e] for s, e, _ in group])).to(device)
        log_probs = _log_probs(model, batch, device)
        token_nlls = -log_probs.gather(-1, batch[:, 1:].unsqueeze(-1)).squeeze(-1)
        for row, (start, _, first_scored) in enumerate(group):
            # Position j of token_nlls predicts stream[start + j + 1].
            scored = token_nlls[row, first_scored - start - 1:]
            total += float(scored.sum())
            count += scored.numel()
    return total, count


@torch.inference_mode()
def truth_divergence(model: torch.nn.Module, blocks: np.ndarray, transition: np.ndarray, batch_size: int,
                     device: torch.device) -> tuple[float, float]:
    """Mean cross-entropy H(p, q) and true entropy H(p), in nats/token, against known truth.

    `transition[prev]` is the exact next-token law of the builtin language, so at
    every position both sums run over the whole vocabulary instead of a sample.
    """
    model.eval()
    true_probs = torch.from_numpy(transition.astype(np.float32)).to(device)
    row_entropy = -(true_probs * torch.log(true_probs.clamp_min(1e-30))).sum(-1)
    ce_sum, h_sum, n_positions = 0.0, 0.0, 0
    for first, last in _batches(len(blocks), batch_size):
        batch = torch.from_numpy(blocks[first:last]).to(device)
        log_probs = _log_probs(model, batch, device)[..., : true_probs.shape[1]]
        prev = batch[:, :-1]
        ce_sum += float(-(true_probs[prev] * log_probs).sum())
        h_sum += float(row_entropy[prev].sum())
        n_positions += prev.numel()
    return ce_sum / n_positions, h_sum / n_positions
