"""Next-token NLL from the final hidden states, a chunk of tokens at a time.

A plain forward makes [tokens, V] logits and the loss an fp32 copy of them: at batch 128 x 64 tokens
with OPT's 50k vocabulary that is about 10 GB a step. Here lm_head runs on one chunk of tokens at a
time and only each token's NLL is kept; under autograd each chunk's gradients are computed right there in
the forward pass (`_FusedChunks`), so no logits are kept or recomputed. Memory stays at one chunk's logits
whatever the batch.
A batch that fits in one chunk (the default CPU run's) keeps its logits for backward: no recomputation.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

# Logits held at once: 2^26 fp32 values (256 MB), 1,334 tokens of OPT's vocabulary: GEMMs big enough to keep
# a GPU busy (a chunk's matmul is about 100 GFLOP for OPT-125m), 40x less than a batch of 128 x 64 tokens.
CHUNK_ELEMENTS = 1 << 26
IGNORE = -100  # label of a token that is not scored (the rows padding a short last batch)

# Config keys of heads that scale or cap the logits after lm_head (Gemma, Cohere, Granite, ...): such a
# model is scored through its own forward, which knows its transform.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier")


def _linear_head(model: torch.nn.Module) -> torch.nn.Linear | None:
    """lm_head when logits are exactly lm_head(final hidden state), else None."""
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear) or getattr(model, "base_model", model) is model:
        return None
    if any(getattr(model.config, key, None) not in (None, 1, 1.0) for key in _LOGIT_TRANSFORMS):
        return None
    return head


def chunk_tokens(vocab_size: int) -> int:
    return max(1, CHUNK_ELEMENTS // vocab_size)


def logit_chunks(model: torch.nn.Module, input_ids: torch.Tensor) -> Iterator[tuple[slice, torch.Tensor]]:
    """(tokens, fp32 logits) for every chunk of the positions that predict tokens 1..L-1, flattened row-major.

    For scoring without gradients (evaluation); training uses `summed_nll`."""
    head = _linear_head(model)
    if head is None:
        logits = model(input_ids=input_ids).logits[:, :-1]
        yield slice(0, logits.shape[0] * logits.shape[1]), logits.reshape(-1, logits.shape[-1]).float()
        return
    hidden = _final_hidden(model, input_ids)[:, :-1].reshape(-1, head.in_features)
    step = chunk_tokens(head.out_features)
    for first in range(0, hidden.shape[0], step):
        tokens = slice(first, first + step)
        yield tokens, F.linear(hidden[tokens], head.weight, head.bias).float()


def summed_nll(model: torch.nn.Module, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
               row_weights: torch.Tensor | None = None) -> torch.Tensor:
    """fp32 sum of the NLL of every token given the ones before it, positions labelled IGNORE left out;
    with `row_weights` ([b] floats, train.real_weight) each row's tokens count that many times.

    The HF loss's layout and reduction (labels shifted left with IGNORE appended; cross_entropy's own sum),
    so sum / scored tokens is the HF loss and its gradients bit for bit when the batch is one chunk.
    Several chunks get their gradients in the forward pass (`_FusedChunks`): no chunk's logits are kept."""
    labels = input_ids if labels is None else labels
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE).reshape(-1)
    weights = None if row_weights is None else row_weights.float()[:, None].expand(labels.shape).reshape(-1)
    head = _linear_head(model)
    if head is None:
        logits = model(input_ids=input_ids).logits
        return _ce_sum(logits.reshape(-1, logits.shape[-1]), targets, weights)
    hidden = _final_hidden(model, input_ids).reshape(-1, head.in_features)
    step = chunk_tokens(head.out_features)
    if step >= hidden.shape[0]:  # one chunk: its logits are the whole batch's anyway, so backward keeps them
        return _chunk_sum(hidden, head.weight, head.bias, targets, weights)
    if not torch.is_grad_enabled():
        return sum(_chunk_sum(hidden[first:first + step], head.weight, head.bias, targets[first:first + step],
                              None if weights is None else weights[first:first + step])
                   for first in range(0, hidden.shape[0], step))
    return _FusedChunks.apply(hidden, head.weight, head.bias, targets, step, weights)


class _FusedChunks(torch.autograd.Function):
    """lm_head + cross-entropy summed over chunks of tokens, each chunk's gradients computed in the forward
    pass (Liger's fused linear cross-entropy): no logits are kept, and none are recomputed in backward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, step, token_weights=None):
        total = hidden.new_zeros((), dtype=torch.float32)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(weight, dtype=torch.float32)
        grad_bias = None if bias is None else torch.zeros_like(bias, dtype=torch.float32)
        for first in range(0, hidden.shape[0], step):
            chunk, chunk_targets = hidden[first:first + step], targets[first:first + step]
            chunk_weights = None if token_weights is None else token_weights[first:first + step]
            logits = F.linear(chunk, weight, bias).float()
            total += _ce_sum(logits, chunk_targets, chunk_weights)
            # d(sum of NLL)/d(logits) = softmax - one-hot on scored rows, 0 on ignored ones (times the row weight).
            scored = (chunk_targets != IGNORE).float()
            if chunk_weights is not None:
                scored = scored * chunk_weights
            grad_logits = torch.softmax(logits, dim=-1)
            grad_logits[torch.arange(len(chunk), device=chunk.device), chunk_targets.clamp_min(0)] -= 1
            grad_logits = (grad_logits * scored[:, None]).to(chunk.dtype)
            grad_hidden[first:first + step] = grad_logits @ weight.to(chunk.dtype)
            grad_weight += (grad_logits.t() @ chunk).float()
            if grad_bias is not None:
                grad_bias += grad_logits.float().sum(0)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        weight_dtype, bias_dtype = ctx.dtypes
        return (grad_hidden * grad_total.to(grad_hidden.dtype), (grad_weight * grad_total).to(weight_dtype),
                None if grad_bias is None else (grad_bias * grad_total).to(bias_dtype), None, None, None)


def _final_hidden(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """The final hidden states, [b, L, H]: what lm_head turns into logits."""
    return model.base_model(input_ids=input_ids, use_cache=False).last_hidden_state


def _chunk_sum(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
               targets: torch.Tensor, token_weights: torch.Tensor | None = None) -> torch.Tensor:
    return _ce_sum(F.linear(hidden, weight, bias), targets, token_weights)


def _ce_sum(logits: torch.Tensor, targets: torch.Tensor, token_weights: torch.Tensor | None = None) -> torch.Tensor:
    # In fp32 as the HF loss does (bf16 logits under autocast); cross_entropy fuses log-softmax and gather.
    if token_weights is None:
        return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE, reduction="sum")
    per_token = F.cross_entropy(logits.float(), targets, ignore_index=IGNORE, reduction="none")
    return (per_token * token_weights).sum()
