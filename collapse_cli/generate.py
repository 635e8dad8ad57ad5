"""Synthetic corpora: each prompt yields one sequence of exactly `new_tokens` tokens."""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

from collapse_cli.config import GenerateConfig
from collapse_cli.train import autocast


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


@torch.inference_mode()
def generate(model: torch.nn.Module, prompts: np.ndarray, cfg: GenerateConfig, seed: int,
             device: torch.device, on_batch: Optional[Callable[[int, int], None]] = None) -> np.ndarray:
    """Continue every prompt; return the new tokens only, shape [n_prompts, new_tokens]."""
    model.eval()
    kwargs = generation_kwargs(cfg)
    # Beam search keeps num_beams hypotheses per prompt: shrink the batch to hold memory steady.
    batch_size = max(1, cfg.batch_size // cfg.num_beams)
    out = np.empty((len(prompts), cfg.new_tokens), dtype=np.int64)
    for first in range(0, len(prompts), batch_size):
        batch = torch.from_numpy(prompts[first:first + batch_size]).to(device)
        # generate() samples from the global RNG; fork it so that seeding stays local.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), autocast(device):
            torch.manual_seed(seed + first)
            tokens = model.generate(input_ids=batch, attention_mask=torch.ones_like(batch), **kwargs)
        out[first:first + len(batch)] = tokens[:, batch.shape[1]:].cpu().numpy()
        if on_batch is not None:
            on_batch(min(first + batch_size, len(prompts)), len(prompts))
    return out
