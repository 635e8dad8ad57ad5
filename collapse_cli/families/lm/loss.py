"""Next-token NLL from the final hidden states, a chunk of tokens at a time.

A plain forward makes [tokens, V] logits and the loss an fp32 copy of them: at batch 128 x 64 tokens
with OPT's 50k vocabulary that is about 10 GB a step. Here lm_head runs on one chunk of tokens at a
time and only each token's NLL is kept; under autograd every chunk is checkpointed, so backward
recomputes its logits instead of keeping them. Memory stays at one chunk's logits whatever the batch.
A batch that fits in one chunk (the default CPU run's) keeps its logits for backward: no recomputation.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

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


def summed_nll(model: torch.nn.Module, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """fp32 sum of the NLL of every token given the ones before it, positions labelled IGNORE left out.

    The HF loss's layout and reduction (labels shifted left with IGNORE appended; cross_entropy's own sum),
    so sum / scored tokens is the HF loss and its gradients bit for bit when the batch is one chunk.
    Several chunks are checkpointed: backward recomputes each chunk's logits instead of keeping them."""
    labels = input_ids if labels is None else labels
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE).reshape(-1)
    head = _linear_head(model)
    if head is None:
        logits = model(input_ids=input_ids).logits
        return _ce_sum(logits.reshape(-1, logits.shape[-1]), targets)
    hidden = _final_hidden(model, input_ids).reshape(-1, head.in_features)
    step = chunk_tokens(head.out_features)
    if step >= hidden.shape[0]:  # one chunk: its logits are the whole batch's anyway, so backward keeps them
        return _chunk_sum(hidden, head.weight, head.bias, targets)
    total = hidden.new_zeros((), dtype=torch.float32)
    for first in range(0, hidden.shape[0], step):
        args = (hidden[first:first + step], head.weight, head.bias, targets[first:first + step])
        total = total + (checkpoint(_chunk_sum, *args, use_reentrant=False) if torch.is_grad_enabled()
                         else _chunk_sum(*args))
    return total


def _final_hidden(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """The final hidden states, [b, L, H]: what lm_head turns into logits."""
    return model.base_model(input_ids=input_ids, use_cache=False).last_hidden_state


def _chunk_sum(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
               targets: torch.Tensor) -> torch.Tensor:
    return _ce_sum(F.linear(hidden, weight, bias), targets)


def _ce_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # In fp32 as the HF loss does (bf16 logits under autocast); cross_entropy fuses log-softmax and gather.
    return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE, reduction="sum")
