"""Model-side measurements: token log-losses of a model on fixed blocks of text."""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from collapse_cli import collectives
from collapse_cli.families.lm.loss import logit_chunks
from collapse_cli.families.lm.train import autocast

OnBatch = Optional[Callable[[int, int], None]]


def _batches(n: int, batch_size: int):
    for first in range(0, n, batch_size):
        yield first, min(first + batch_size, n)


def _score_batch(model: torch.nn.Module, batch: torch.Tensor, device: torch.device,
                 truth: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, float, float]:
    """NLL of tokens 1..L-1 of each row, [b, L-1] fp32, and with the true law the sums of H(p, q) and H(p)
    over those positions. The logits exist one chunk of tokens at a time (loss.logit_chunks)."""
    targets, prev = batch[:, 1:].reshape(-1), batch[:, :-1].reshape(-1)
    nll = torch.empty(targets.shape, dtype=torch.float32, device=batch.device)
    ce_sum = h_sum = 0.0
    with autocast(device):
        for tokens, logits in logit_chunks(model, batch):
            nll[tokens] = F.cross_entropy(logits, targets[tokens], reduction="none")
            if truth is not None:
                true_probs = truth[0][prev[tokens]]
                ce_sum += float(-(true_probs * F.log_softmax(logits[:, : true_probs.shape[1]], dim=-1)).sum())
    if truth is not None:
        h_sum = float(truth[1][prev].sum())
    return nll.view(len(batch), -1), ce_sum, h_sum


def token_nll(model: torch.nn.Module, blocks: np.ndarray, batch_size: int, device: torch.device,
              on_batch: OnBatch = None) -> np.ndarray:
    """NLL (nats) of every token given the tokens before it in its block: shape [n, L-1].

    Blocks are scored independently, with no context from the block before, which is
    how Shumailov et al. evaluate: the first token of each block is never predicted.
    """
    return score_blocks(model, blocks, batch_size, device, None, on_batch)[0]


@torch.inference_mode()
def score_blocks(model: torch.nn.Module, blocks: np.ndarray, batch_size: int, device: torch.device,
                 transition: np.ndarray | None = None, on_batch: OnBatch = None) -> tuple[np.ndarray, float, float]:
    """Per-token NLL as `token_nll`, plus, when the true law is known, H(p, q) and H(p).

    `transition[prev]` is the exact next-token law of the builtin language, so the
    cross-entropy and entropy sums run over the whole vocabulary at every position
    (nats/token, averaged over positions); both are nan without a transition. One
    forward pass serves both, since they score the same test blocks. `model` runs as given: callers pass
    the weights scoring runs on (LMFamily.for_inference: a bf16 copy on CUDA).
    """
    model.eval()
    truth = None
    if transition is not None:
        true_probs = torch.from_numpy(transition.astype(np.float32)).to(device)
        truth = (true_probs, -(true_probs * torch.log(true_probs.clamp_min(1e-30))).sum(-1))
    batches = list(_batches(len(blocks), batch_size))
    scored = []  # (nll, ce sum, entropy sum) of each batch of this rank: batches r, r+N, ... under nproc=N
    for k in collectives.my_items(len(batches)):
        first, last = batches[k]
        batch = torch.from_numpy(blocks[first:last]).to(device)
        nll, ce_sum, h_sum = _score_batch(model, batch, device, truth)
        scored.append((nll.cpu().numpy(), ce_sum, h_sum))
        if on_batch is not None:
            on_batch(last, len(blocks))
    scored = collectives.gather_items(scored, len(batches))  # every batch, in order, on every rank
    nll = np.concatenate([np.empty((0, blocks.shape[1] - 1), dtype=np.float32)] + [b[0] for b in scored])
    if truth is None:
        return nll, float("nan"), float("nan")
    return nll, sum(b[1] for b in scored) / nll.size, sum(b[2] for b in scored) / nll.size


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
    spans = sliding_windows(len(stream), window, stride)
    full = [s for s in spans if s[1] - s[0] == window]
    ragged = [s for s in spans if s[1] - s[0] != window]
    # Full-length windows batch together; a short tail window (at most one) runs alone.
    groups = [full[i:i + batch_size] for i in range(0, len(full), batch_size)] + [[s] for s in ragged]
    window_sums = []  # per group of this rank (r, r+N, ... under nproc=N): each window's (NLL sum, tokens)
    for k in collectives.my_items(len(groups)):
        batch = torch.from_numpy(np.stack([stream[s:e] for s, e, _ in groups[k]])).to(device)
        token_nlls = _score_batch(model, batch, device, None)[0]
        # Position j of token_nlls predicts stream[start + j + 1].
        scored = [token_nlls[row, first_scored - start - 1:] for row, (start, _, first_scored) in enumerate(groups[k])]
        window_sums.append([(float(tokens.sum()), tokens.numel()) for tokens in scored])
    total, count = 0.0, 0
    for group_sums in collectives.gather_items(window_sums, len(groups)):  # in window order: one process's sum
        for nll_sum, n_tokens in group_sums:
            total, count = total + nll_sum, count + n_tokens
    return total, count
