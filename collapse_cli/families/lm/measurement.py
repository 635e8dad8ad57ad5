"""What each generation of the LM is measured on (its metrics line), computed from models and corpora.

`measure` runs once per generation and returns the flat metrics line; `extinction_summary`
runs once per run over the saved corpora (the early warning is Family.summarize's). Formulas live in corpus_metrics.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Optional

import numpy as np
import torch

from collapse_cli.config import RunConfig
from collapse_cli.families.lm import corpus_metrics as M
from collapse_cli.families.lm.builtin import BuiltinLanguage
from collapse_cli.families.lm.corpus_files import load_ids
from collapse_cli.families.lm.evaluate import score_blocks, sliding_nll, token_nll
from collapse_cli.measure import stats
from collapse_cli.rundir import RunDir, gen_name

# Keys first in every metrics line, in this order; the rest follow alphabetically.
LEADING_KEYS = ("generation", "ppl_test", "ppl_test_sliding", "tail_coverage", "ce_truth", "entropy_truth",
                "kl_truth", "train_blocks", "train_tokens", "train_tokens_seen", "train_real_blocks",
                "train_synthetic_blocks", "generated_tokens",
                "wall_time_s", "train_time_s", "generate_time_s", "eval_time_s")


def _counts(blocks: np.ndarray, vocab_size: int) -> dict[int, int]:
    return _nonzero(np.bincount(blocks.ravel(), minlength=vocab_size))


def _nonzero(dense_counts: np.ndarray) -> dict[int, int]:
    """{token id: count} for the ids that occur: the Counter-like form metrics.py takes."""
    return {int(i): int(dense_counts[i]) for i in np.flatnonzero(dense_counts)}


@dataclass(frozen=True)
class Reference:
    """The real data every generation is compared with, computed once per run.

    Frozen: `measure` returns a completed copy (generation 0's test perplexities, the real
    words) instead of filling in the one it was given, so the caller decides what to keep.
    """

    real_train: np.ndarray  # the N blocks generation 0 trains on
    test: np.ndarray
    train_counts: dict[int, int]
    token_decile: np.ndarray  # training-frequency decile of every token id
    language: Optional[BuiltinLanguage]
    test_seq_ppl: Optional[np.ndarray] = None  # per-block perplexity of real test text under generation 0
    real_words: Optional[list[list[str]]] = None  # the real training blocks as whitespace words

    @classmethod
    def build(cls, real_train: np.ndarray, test: np.ndarray, vocab_size: int,
              language: Optional[BuiltinLanguage]) -> Reference:
        dense_counts = np.bincount(real_train.ravel(), minlength=vocab_size)
        return cls(real_train=real_train, test=test, train_counts=_nonzero(dense_counts),
                   token_decile=M.frequency_deciles(dense_counts), language=language)


def _mean_ppl_se(block_nll: np.ndarray, seed: int, n_boot: int) -> float:
    """Standard error of ppl_test from a bootstrap over test blocks (delta method on exp)."""
    per_block = block_nll.mean(axis=1)
    return float(math.exp(per_block.mean()) * stats.bootstrap_se(per_block, seed, n_boot))


def eval_batch_size(cfg: RunConfig, device: torch.device) -> int:
    """Blocks per evaluation forward pass: on the CPU, logits that stay in cache beat bigger batches."""
    if cfg.metrics.eval_batch_size is not None:
        return cfg.metrics.eval_batch_size
    return 256 if device.type == "cuda" else 32


def model_metrics(model: torch.nn.Module, ref: Reference, cfg: RunConfig, device: torch.device,
                  seed: int) -> tuple[dict, np.ndarray]:
    """Metrics of the generation's model (its inference weights) on real test text; also returns its per-token NLL."""
    batch, block = eval_batch_size(cfg, device), ref.test.shape[1]
    transition = ref.language.transition if ref.language is not None else None
    test_nll, ce, entropy = score_blocks(model, ref.test, batch, device, transition)
    stride = max(1, int(block * cfg.metrics.sliding_stride))
    sliding_sum, sliding_count = sliding_nll(model, ref.test.reshape(-1), block, stride, batch, device)
    out = {"ppl_test": M.perplexity(float(test_nll.sum(dtype=np.float64)), test_nll.size),
           "ppl_test_se": _mean_ppl_se(test_nll, seed, cfg.metrics.bootstrap),
           "ppl_test_sliding": M.perplexity(sliding_sum, sliding_count)}
    if transition is not None:
        out.update(ce_truth=ce, entropy_truth=entropy, kl_truth=ce - entropy)
    if cfg.metrics.level == "full":
        deciles = M.bucket_perplexity(test_nll.ravel(), ref.test[:, 1:].ravel(), ref.token_decile)
        out.update({f"tail_ppl_d{i}": value for i, value in enumerate(deciles)})
    return out, test_nll


def tail_metrics(seq_ppl: np.ndarray, real_seq_ppl: np.ndarray) -> dict:
    """Shumailov et al.'s view: synthetic sequences scored by the frozen generation-0 model."""
    out = {f"seq_ppl_{k}": v for k, v in M.quantiles(seq_ppl).items()}
    below, above = M.tail_fractions(seq_ppl, real_seq_ppl)
    out.update(seq_ppl_frac_below_real_q05=below, seq_ppl_frac_above_real_q95=above,
               seq_ppl_w1_log=M.wasserstein1(np.log(seq_ppl), np.log(real_seq_ppl)))
    return out


def corpus_metrics(synthetic: np.ndarray, texts: list[str], ref: Reference, cfg: RunConfig, seed: int) -> dict:
    synth_counts = _counts(synthetic, max(ref.token_decile.shape[0], int(synthetic.max()) + 1))
    tail_types = [t for t, c in ref.train_counts.items() if c <= 5]
    coverage = M.tail_coverage(ref.train_counts, synth_counts)
    out = {"tail_coverage": coverage, "tail_coverage_se": stats.binomial_se(coverage, len(tail_types))}
    if cfg.metrics.level == "full":
        out.update(M.corpus_profile(list(ref.real_train), list(synthetic), unit="tok"))
        out.update(M.corpus_profile(ref.real_words, [text.split() for text in texts], unit="word"))
        out["self_bleu4_tok"] = M.self_bleu(list(synthetic), cfg.metrics.self_bleu_sample, seed)
        out["compression_ratio"] = M.compression_ratio("\n".join(texts))
    return out


def measure(generation: int, model: torch.nn.Module, reference_model: torch.nn.Module, synthetic: np.ndarray,
            texts: list[str], ref: Reference, cfg: RunConfig, device: torch.device, tokenizer_decode: Callable,
            seed: int, on_progress: Callable[[int, int], None]) -> tuple[dict, np.ndarray, Reference]:
    """Every metric of one generation, the per-sequence perplexities under generation 0, and `ref`
    completed with what later generations reuse (`ref` itself is left as it was).

    `seed` draws the metric subsamples (bootstrap, self-BLEU); the loop derives it per run and generation."""
    batch = eval_batch_size(cfg, device)
    out, test_nll = model_metrics(model, ref, cfg, device, seed)
    on_progress(1, 3)
    if ref.test_seq_ppl is None:
        # Generation 0 is the reference model; on a resume, score the real test text again.
        ref_test_nll = test_nll if generation == 0 else token_nll(reference_model, ref.test, batch, device)
        ref = replace(ref, test_seq_ppl=np.exp(ref_test_nll.mean(axis=1)))
    if cfg.metrics.level == "full" and ref.real_words is None:
        ref = replace(ref, real_words=[text.split() for text in tokenizer_decode(ref.real_train)])
    seq_ppl = np.exp(token_nll(reference_model, synthetic, batch, device).mean(axis=1))
    out.update(tail_metrics(seq_ppl, ref.test_seq_ppl))
    on_progress(2, 3)
    out.update(corpus_metrics(synthetic, texts, ref, cfg, seed))
    on_progress(3, 3)
    return out, seq_ppl, ref


def extinction_summary(run_dir: RunDir, ref: Reference, n_generations: int) -> dict:
    """First generation whose corpus lacks each real token type; saved per type, summarised per bucket."""
    type_sets = [set(np.unique(load_ids(run_dir.path / gen_name(g) / "synthetic_ids.npz")).tolist())
                 for g in range(n_generations)]
    extinction = M.extinction_generation(list(ref.train_counts), type_sets)
    table = np.array([[t, ref.train_counts[t], -1 if e is None else e] for t, e in extinction.items()], dtype=np.int64)
    run_dir.save_array("extinction_tok.npy", table)
    return M.median_extinction_by_bucket(extinction, ref.train_counts, censor_at=n_generations)
