"""Synthetic corpora: each prompt yields one sequence of exactly `new_tokens` tokens.

Prompts are decoded in fixed-size chunks, and chunk k draws its random numbers from a
stream seeded by (seed, k) alone. The chunk size depends only on the config, so the corpus
does not depend on how many processes share the chunks, nor in which order they run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch

from collapse_cli import collectives
from collapse_cli.families.lm.config import GenerateConfig
from collapse_cli.families.lm.decode import ChunkDecoder
from collapse_cli.families.lm.watermark import marked_rows


def prompts_for(real_train: np.ndarray, cfg: GenerateConfig, bos_id: int) -> np.ndarray:
    """One prompt per real training block, so the corpus has as many sequences as the real set."""
    if cfg.prompt == "bos":
        return np.full((len(real_train), 1), bos_id, dtype=np.int64)
    return np.ascontiguousarray(real_train[:, : cfg.prompt_tokens])


def chunk_prompts(cfg: GenerateConfig) -> int:
    """Prompts per chunk: beam search keeps num_beams rows per prompt, so its chunks hold fewer prompts."""
    return max(1, cfg.batch_size // cfg.num_beams)


def n_chunks(n_prompts: int, cfg: GenerateConfig) -> int:
    return -(-n_prompts // chunk_prompts(cfg))


def chunk_seed(seed: int, chunk: int) -> int:
    return int(np.random.SeedSequence([seed, chunk]).generate_state(1)[0])


def watermarked(cfg: GenerateConfig, n_prompts: int, seed: int) -> np.ndarray | None:
    """bool [n_prompts]: the rows generate.watermark marks with this seed (None: the watermark is off).

    The family asks for the same rows to score detection; a function of the config and seed alone,
    so every rank of nproc=N marks the same rows."""
    return marked_rows(n_prompts, cfg.watermark.unmarked_share, seed) if cfg.watermark.enabled else None


@torch.inference_mode()
def generate(model: torch.nn.Module, prompts: np.ndarray, cfg: GenerateConfig, seed: int, device: torch.device,
             on_batch: Callable[[int, int], None] | None = None,
             chunks: Iterable[int] | None = None) -> np.ndarray:
    """Continue prompts; return the new tokens only, shape [n_prompts, new_tokens].

    chunks: None decodes every chunk (under `nproc=N`, rank r decodes chunks r, r+N, ... and every
    rank gets them all back in chunk order: the corpus of a single process); otherwise only the
    rows of the chunks listed, concatenated in that order. `model` decodes as given: callers pass the
    weights sampling runs on (LMFamily.for_inference: a bf16 copy on CUDA).
    """
    model.eval()
    size, total_chunks = chunk_prompts(cfg), n_chunks(len(prompts), cfg)
    order = list(collectives.my_items(total_chunks) if chunks is None else chunks)
    bad = [k for k in order if not 0 <= k < total_chunks]
    if bad:
        raise ValueError(f"chunks {bad} out of range: {len(prompts)} prompts make {total_chunks} chunks")
    decode = ChunkDecoder(model, cfg, size, device)
    marked = watermarked(cfg, len(prompts), seed)
    total = sum(min(size, len(prompts) - k * size) for k in order)
    pieces, done = [], 0
    for k in order:
        chunk = torch.from_numpy(prompts[k * size:(k + 1) * size]).to(device)
        generator = torch.Generator(device).manual_seed(chunk_seed(seed, k))
        chunk_marked = None if marked is None else marked[k * size:(k + 1) * size]
        pieces.append(decode(chunk, generator, chunk_marked).cpu().numpy())
        done += len(chunk)
        if on_batch is not None:
            on_batch(done, total)
    if chunks is None:
        pieces = collectives.gather_items(pieces, total_chunks)
    return np.concatenate([np.empty((0, cfg.new_tokens), dtype=np.int64), *pieces])
