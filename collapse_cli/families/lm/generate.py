"""Synthetic corpora: each prompt yields one sequence of exactly `new_tokens` tokens."""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import numpy as np
import torch

from collapse_cli.config import GenerateConfig
from collapse_cli.families.lm.train import autocast


def prompts_for(real_train: np.ndarray, cfg: GenerateConfig, bos_id: int) -> np.ndarray:
    """One prompt per real training block, so the corpus has as many sequences as the real set."""
    if cfg.prompt == "bos":
        return np.full((len(real_train), 1), bos_id, dtype=np.int64)
    return np.ascontiguousarray(real_train[:, : cfg.prompt_tokens])


def generation_kwargs(cfg: GenerateConfig) -> dict:
    """The arguments `model.generate` receives for a preset; tested against the presets."""
    # No EOS stopping (models.py clears eos_token_id), so every sequence is exactly new_tokens long.
    kwargs = dict(max_new_tokens=cfg.new_tokens, num_beams=cfg.num_beams,
                  do_sample=cfg.do_sample, repetition_penalty=cfg.repetition_penalty)
    if cfg.do_sample:
        kwargs.update(temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p)
    if cfg.num_beams > 1:
        kwargs.update(num_return_sequences=1, early_stopping=False, length_penalty=1.0)
    return kwargs


def pick_next(logits: torch.Tensor, cfg: GenerateConfig, generator: torch.Generator) -> torch.Tensor:
    """One token per row from next-token logits: greedy, or sampling with temperature, top-k, top-p."""
    if not cfg.do_sample:
        return logits.argmax(dim=-1)
    logits = logits.float() / cfg.temperature
    if cfg.top_k > 0:
        kth_best = torch.topk(logits, min(cfg.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        mass_before = sorted_logits.softmax(dim=-1).cumsum(dim=-1) - sorted_logits.softmax(dim=-1)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        sorted_logits = sorted_logits.masked_fill(mass_before >= cfg.top_p, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return sample_categorical(logits.softmax(dim=-1), generator)


def sample_categorical(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One draw per row by inverting the CDF with a single uniform.

    Exact, like torch.multinomial, but one random number per row instead of one per
    vocabulary entry: on the CPU multinomial's exponential draws were 60% of decoding.
    With right=True a token of probability zero (a flat CDF step) is never chosen.
    """
    cdf = probs.double().cumsum(dim=-1)
    uniform = torch.rand((len(probs), 1), generator=generator, device=probs.device, dtype=torch.float64)
    drawn = torch.searchsorted(cdf, uniform * cdf[:, -1:], right=True).squeeze(-1)
    return drawn.clamp_max(probs.shape[-1] - 1)


def penalize_repeats(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's repetition penalty (as in transformers): shrink the logits of tokens already present."""
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def decode_batch(model: torch.nn.Module, batch: torch.Tensor, cfg: GenerateConfig,
                 generator: torch.Generator) -> torch.Tensor:
    """KV-cached decoding without generate()'s per-step machinery; prompts are unpadded."""
    new_tokens = torch.empty((len(batch), cfg.new_tokens), dtype=torch.long, device=batch.device)
    # Only the last position's logits are needed: skip the LM head over the whole prompt.
    output = model(input_ids=batch, use_cache=True, logits_to_keep=1)
    seen = None
    if cfg.repetition_penalty != 1.0:
        seen = torch.zeros((len(batch), output.logits.shape[-1]), dtype=torch.bool, device=batch.device)
        seen.scatter_(1, batch, True)
    for step in range(cfg.new_tokens):
        logits = output.logits[:, -1]
        if seen is not None:
            logits = penalize_repeats(logits, seen, cfg.repetition_penalty)
        token = pick_next(logits, cfg, generator)
        new_tokens[:, step] = token
        if seen is not None:
            seen.scatter_(1, token[:, None], True)
        if step + 1 < cfg.new_tokens:
            output = model(input_ids=token[:, None], past_key_values=output.past_key_values, use_cache=True)
    return new_tokens


@torch.inference_mode()
def generate(model: torch.nn.Module, prompts: np.ndarray, cfg: GenerateConfig, seed: int,
             device: torch.device, on_batch: Optional[Callable[[int, int], None]] = None) -> np.ndarray:
    """Continue every prompt; return the new tokens only, shape [n_prompts, new_tokens].

    Sampling and greedy decoding run our own KV-cached loop with a seeded generator;
    beam search goes through transformers' generate(), which is deterministic.
    """
    model.eval()
    kwargs = generation_kwargs(cfg)
    # Beam search keeps num_beams hypotheses per prompt: shrink the batch to hold memory steady.
    batch_size = max(1, cfg.batch_size // cfg.num_beams)
    out = np.empty((len(prompts), cfg.new_tokens), dtype=np.int64)
    generator = torch.Generator(device).manual_seed(seed)
    for first in range(0, len(prompts), batch_size):
        batch = torch.from_numpy(prompts[first:first + batch_size]).to(device)
        with autocast(device):
            if cfg.num_beams == 1:
                new_tokens = decode_batch(model, batch, cfg, generator)
            else:
                new_tokens = model.generate(input_ids=batch, attention_mask=torch.ones_like(batch),
                                            **kwargs)[:, batch.shape[1]:]
        out[first:first + len(batch)] = new_tokens.cpu().numpy()
        if on_batch is not None:
            on_batch(min(first + batch_size, len(prompts)), len(prompts))
    return out
