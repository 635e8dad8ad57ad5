"""Choosing the next tokens from a step's logits without [rows, vocab] bookkeeping.

The repetition penalty touches only the ids a row has seen (its prompt and its history, an id
list), never a [rows, vocab] mask. Beam search takes, per row, the best 2 x beams unseen ids by
logit (log-probabilities order as logits do within a row) plus the penalized seen ids, then one
top-k per prompt over those few candidates: the same choice as transformers' top-k over
[prompts, beams x vocab] penalized log-probabilities.

Every buffer of beam search has a fixed shape and lives as long as its decoder, so a whole beam
step (forward and selection) is captured in one CUDA graph: no host sync, no shape that depends
on the data, and the step index is the only thing that varies (each step has its own graph).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from collapse_cli.families.lm.lse_kernel import row_logsumexp
from collapse_cli.families.lm.watermark import GreenLists, WatermarkConfig

# Beam search keeps 2 * num_beams candidates per prompt, as transformers does, so tie order matches it.
CANDIDATES_PER_BEAM = 2


class Beams:
    """The state of beam search over a chunk, in buffers a captured step reads and writes in place.

    sequences [rows, prompt_len + new_tokens]  each row's prompt, then its generated tokens so far
                                               (reordered with the beams; the rest not yet written)
    repeated  [rows, prompt_len + new_tokens]  entry j repeats an id earlier in the row: the penalty
                                               applies once per id, so no per-step sort or dedup
    ancestry  [rows, new_tokens]               the cache's table (families/lm/kvcache.py), reordered alike
    """

    def __init__(self, prompts: torch.Tensor, beams: int, new_tokens: int, ancestry: torch.Tensor):
        (n_prompts, self.prompt_len), device = prompts.shape, prompts.device
        self.beams, self.ancestry = beams, ancestry
        self.running = torch.zeros((n_prompts, beams), device=device)
        self.sequences = torch.zeros((n_prompts * beams, self.prompt_len + new_tokens), dtype=torch.long,
                                     device=device)
        self.repeated = torch.zeros(self.sequences.shape, dtype=torch.bool, device=device)
        rows = torch.arange(n_prompts * beams, device=device)
        self.own_beam = rows % beams  # each row's index within its prompt
        self.first_row = rows - self.own_beam  # the row of its prompt's beam 0
        self.start(prompts)

    def start(self, prompts: torch.Tensor) -> None:
        """Load a chunk's prompts into the same buffers (a captured step keeps reading these addresses)."""
        # Only beam 0 is alive at the start, so the first step picks num_beams distinct tokens.
        self.running.fill_(-1e9)
        self.running[:, 0] = 0.0
        prompt_ids = self.sequences[:, : self.prompt_len]
        prompt_ids.copy_(prompts.repeat_interleave(self.beams, dim=0))
        self.repeated[:, : self.prompt_len].copy_(repeats_earlier(prompts).repeat_interleave(self.beams, dim=0))

    def advance(self, logits: torch.Tensor, penalty: float, step: int) -> torch.Tensor:
        """Score the continuations of every beam, keep the best `beams` per prompt; the tokens chosen [rows].

        `logits` [rows, V], fp32 or the model's bf16 (read as they are: bf16 widens to fp32 exactly, as
        generate()'s .float() does), is overwritten (seen ids set to -inf).
        """
        n_prompts, beams = self.running.shape
        count, seen_end = min(CANDIDATES_PER_BEAM * beams, logits.shape[1]), self.prompt_len + step
        lse = row_logsumexp(logits)
        seen = (self.sequences[:, :seen_end], self.repeated[:, :seen_end]) if penalty != 1.0 else None
        ids, log_probs = best_unseen(logits, seen, penalty, lse, count)
        scores = (log_probs.view(n_prompts, beams, -1) + self.running[:, :, None]).view(n_prompts, -1)
        best, index = torch.topk(scores, CANDIDATES_PER_BEAM * beams, dim=1)
        best, index = best[:, :beams], index[:, :beams]
        token = ids.view(n_prompts, -1).gather(1, index).view(-1)
        source = (index // ids.shape[1]).view(-1) + self.first_row
        unseen = (index % ids.shape[1] < count).view(-1)  # a top-k candidate, not one of the seen ids
        self.running.copy_(best)
        for history in (self.ancestry[:, :step], self.sequences[:, self.prompt_len:seen_end],
                        self.repeated[:, self.prompt_len:seen_end]):
            history.copy_(history.index_select(0, source))
        self.ancestry[:, step] = self.own_beam  # this row writes the new position itself, at the next step
        self.sequences[:, seen_end] = token
        self.repeated[:, seen_end] = ~unseen
        return token

    def best(self) -> torch.Tensor:
        """[prompts, new_tokens]: beam 0's sequence (topk sorts, so it holds the best score)."""
        return self.sequences[:: self.beams, self.prompt_len:]


def repeats_earlier(ids: torch.Tensor) -> torch.Tensor:
    """[rows, length] bool: ids[r, j] equals some ids[r, i], i < j (once per chunk: [rows, length, length])."""
    same = ids[:, :, None] == ids[:, None, :]
    earlier = torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool, device=ids.device).tril(-1)
    return (same & earlier).any(dim=2)


def best_unseen(logits: torch.Tensor, seen: tuple[torch.Tensor, torch.Tensor] | None, penalty: float,
                lse: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidate ids and their (penalized) log-probabilities, [rows, count (+ seen)].

    `seen`: each row's seen ids and which of them repeat an earlier one. A seen id competes once,
    with CTRL's penalty applied to its log-probability (as transformers applies it in beam search);
    every other id competes by logit.
    """
    if seen is None:
        top, ids = torch.topk(logits, count, dim=-1)
        return ids, top.float() - lse
    seen_ids, repeated = seen
    seen_log_probs = penalize(logits.gather(1, seen_ids).float() - lse, penalty).masked_fill(repeated, float("-inf"))
    logits.scatter_(1, seen_ids, float("-inf"))
    top, ids = torch.topk(logits, count, dim=-1)
    return torch.cat([ids, seen_ids], dim=1), torch.cat([top.float() - lse, seen_log_probs], dim=1)


def penalize(scores: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's repetition penalty, as transformers applies it: shrink a score toward lower probability."""
    return torch.where(scores < 0, scores * penalty, scores / penalty)


def penalize_seen(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Sampling and greedy: the penalty on the logits of the seen ids, in place (a repeated id gets it once)."""
    return logits.scatter_(1, seen, penalize(logits.gather(1, seen), penalty))


Mark = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Marker:
    """The watermark's bias on a step's logits (families/lm/watermark.py defines the green lists).

    Per step: each row's green ids [rows, G] from its previous token (a gather of V shifts and one
    broadcast subtract and modulo over [rows, G] ids), then one scatter-add of delta into the logits
    at those ids: the only op over the logits, and it touches G = gamma x V of a row's entries.
    """

    def __init__(self, cfg: WatermarkConfig, vocab: int, device: torch.device):
        lists = GreenLists.build(cfg.key, cfg.gamma, vocab)
        self.lists = GreenLists(*(torch.from_numpy(table).to(device) for table in
                                  (lists.base_ids, lists.base, lists.shift)))
        self.delta, self.device = cfg.delta, device

    def bind(self, marked: np.ndarray) -> Mark:
        """The mark for one chunk: `marked` [rows] says which rows get the bias (the others get 0)."""
        row_delta = torch.from_numpy(marked.astype(np.float32) * np.float32(self.delta)).to(self.device)[:, None]

        def mark(logits: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
            """fp32 logits [rows, V] with delta added at each row's green ids (in place when already fp32)."""
            ids = self.lists.green_ids(previous)
            return logits.float().scatter_add_(1, ids, row_delta.expand(-1, ids.shape[1]))

        return mark
