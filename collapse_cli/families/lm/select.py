"""Choosing the next tokens from a step's logits without [rows, vocab] bookkeeping.

The repetition penalty touches only the ids a row has seen (its prompt and its history, an id
list), never a [rows, vocab] mask. Beam search takes, per row, the best 2 x beams unseen ids by
logit (log-probabilities order as logits do within a row) plus the penalized seen ids, then one
top-k per prompt over those few candidates: the same choice as transformers' top-k over
[prompts, beams x vocab] penalized log-probabilities.
"""

from __future__ import annotations

import torch

from collapse_cli.families.lm.lse_kernel import row_logsumexp

# Beam search keeps 2 * num_beams candidates per prompt, as transformers does, so tie order matches it.
CANDIDATES_PER_BEAM = 2


class Beams:
    """The state of beam search over a chunk: running scores and the tokens each physical slot holds.

    The history of row r is read through the ancestry table the cache attends with (shared, so
    one reorder of that small table moves both the attention's view and the history).
    """

    def __init__(self, prompts: torch.Tensor, beams: int, new_tokens: int, ancestry: torch.Tensor):
        n_prompts, device = len(prompts), prompts.device
        self.prompts, self.beams, self.ancestry = prompts, beams, ancestry
        # Only beam 0 is alive at the start, so the first step picks num_beams distinct tokens.
        self.running = torch.zeros((n_prompts, beams), device=device)
        self.running[:, 1:] = -1e9
        self.slot_tokens = torch.zeros((n_prompts * beams, new_tokens), dtype=torch.long, device=device)
        rows = torch.arange(n_prompts * beams, device=device)
        self.own_beam = rows % beams  # each row's index within its prompt
        self.first_row = rows - self.own_beam  # the row of its prompt's beam 0

    def history(self, length: int) -> torch.Tensor:
        """[rows, length]: the tokens of each row's sequence at generated positions 0..length-1."""
        holder = self.first_row[:, None] + self.ancestry[:, :length]
        return self.slot_tokens[:, :length].gather(0, holder) if length else self.slot_tokens[:, :0]

    def seen(self, step: int) -> torch.Tensor:
        """[rows, prompt_len + step]: every id a row has seen, its prompt's and its own, duplicates kept."""
        prompt_ids = self.prompts.repeat_interleave(self.beams, dim=0)
        return torch.cat([prompt_ids, self.history(step)], dim=1)

    def advance(self, logits: torch.Tensor, penalty: float, step: int) -> torch.Tensor:
        """Score the continuations of every beam, keep the best `beams` per prompt; the tokens chosen [rows].

        `logits` [rows, V], fp32 or the model's bf16 (read as they are: bf16 widens to fp32 exactly, as
        generate()'s .float() does), is overwritten (seen ids set to -inf).
        """
        n_prompts, beams = self.running.shape
        lse = row_logsumexp(logits)
        ids, log_probs = best_unseen(logits, self.seen(step) if penalty != 1.0 else None, penalty, lse,
                                     min(CANDIDATES_PER_BEAM * beams, logits.shape[1]))
        scores = (log_probs.view(n_prompts, beams, -1) + self.running[:, :, None]).view(n_prompts, -1)
        best, index = torch.topk(scores, CANDIDATES_PER_BEAM * beams, dim=1)
        best, index = best[:, :beams], index[:, :beams]
        token = ids.view(n_prompts, -1).gather(1, index).view(-1)
        source = (index // ids.shape[1]).view(-1) + self.first_row
        self.running.copy_(best)
        self.ancestry.copy_(self.ancestry.index_select(0, source))
        self.ancestry[:, step] = self.own_beam  # this row writes the new position itself, at the next step
        self.slot_tokens[:, step] = token
        return token

    def best(self) -> torch.Tensor:
        """[prompts, new_tokens]: beam 0's sequence (topk sorts, so it holds the best score)."""
        return self.history(self.slot_tokens.shape[1])[:: self.beams]


def best_unseen(logits: torch.Tensor, seen: torch.Tensor | None, penalty: float, lse: torch.Tensor,
                count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidate ids and their (penalized) log-probabilities, [rows, count (+ seen)].

    A seen id appears once among the candidates, with CTRL's penalty applied to its log-probability
    (as transformers applies it in beam search); every other id competes by logit.
    """
    if seen is None:
        top, ids = torch.topk(logits, count, dim=-1)
        return ids, top.float() - lse
    seen, _ = seen.sort(dim=1)
    repeated = torch.zeros_like(seen, dtype=torch.bool)
    repeated[:, 1:] = seen[:, 1:] == seen[:, :-1]
    seen_log_probs = penalize(logits.gather(1, seen).float() - lse, penalty).masked_fill(repeated, float("-inf"))
    logits.scatter_(1, seen, float("-inf"))
    top, ids = torch.topk(logits, count, dim=-1)
    return torch.cat([ids, seen], dim=1), torch.cat([top.float() - lse, seen_log_probs], dim=1)


def penalize(scores: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's repetition penalty, as transformers applies it: shrink a score toward lower probability."""
    return torch.where(scores < 0, scores * penalty, scores / penalty)


def penalize_seen(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Sampling and greedy: the penalty on the logits of the seen ids, in place (a repeated id gets it once)."""
    return logits.scatter_(1, seen, penalize(logits.gather(1, seen), penalty))
