"""Decoding: greedy and sampling against transformers' generate(), the sampler's law, and what each preset decodes."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from transformers import OPTConfig, OPTForCausalLM

from collapse_cli.families.lm.config import GenerateConfig
from collapse_cli.families.lm.decode import pick_next, sample_categorical
from collapse_cli.families.lm.generate import generate
from collapse_cli.families.lm.models import loop_generation_config

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model():
    config = OPTConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, ffn_dim=64,
                       max_position_embeddings=64, word_embed_proj_dim=32, pad_token_id=0, bos_token_id=1,
                       eos_token_id=1)
    torch.manual_seed(0)
    return loop_generation_config(OPTForCausalLM(config).eval())


@pytest.fixture(scope="module")
def prompts():
    return np.random.default_rng(0).integers(2, 50, size=(12, 5))


def test_sample_categorical_follows_the_probabilities():
    probs = torch.tensor([[0.1, 0.0, 0.6, 0.3]]).repeat(100_000, 1)
    drawn = sample_categorical(probs, torch.Generator().manual_seed(0)).numpy()
    shares = np.bincount(drawn, minlength=4) / len(drawn)
    assert shares[1] == 0.0  # a zero-probability token is never drawn
    assert np.allclose(shares, [0.1, 0.0, 0.6, 0.3], atol=0.01)


def test_greedy_loop_equals_transformers_generate(model, prompts):
    cfg = GenerateConfig(do_sample=False, new_tokens=10, batch_size=5)
    ours = generate(model, prompts, cfg, seed=0, device=CPU)
    with torch.inference_mode():
        theirs = model.generate(input_ids=torch.from_numpy(prompts),
                                attention_mask=torch.ones(prompts.shape, dtype=torch.long),
                                max_new_tokens=10, do_sample=False)[:, prompts.shape[1]:].numpy()
    assert ours.shape == (12, 10)
    assert np.array_equal(ours, theirs)


def test_repetition_penalty_matches_transformers(model, prompts):
    cfg = GenerateConfig(do_sample=False, new_tokens=10, repetition_penalty=1.5)
    ours = generate(model, prompts, cfg, seed=0, device=CPU)
    with torch.inference_mode():
        theirs = model.generate(input_ids=torch.from_numpy(prompts),
                                attention_mask=torch.ones(prompts.shape, dtype=torch.long),
                                max_new_tokens=10, do_sample=False,
                                repetition_penalty=1.5)[:, prompts.shape[1]:].numpy()
    assert np.array_equal(ours, theirs)


def test_top_k_one_is_greedy(model, prompts):
    greedy = generate(model, prompts, GenerateConfig(do_sample=False, new_tokens=8), seed=0, device=CPU)
    top1 = generate(model, prompts, GenerateConfig(do_sample=True, top_k=1, new_tokens=8), seed=5, device=CPU)
    assert np.array_equal(greedy, top1)


def test_sampling_is_seeded(model, prompts):
    cfg = GenerateConfig(do_sample=True, new_tokens=8, batch_size=64)
    first, again = (generate(model, prompts, cfg, seed=3, device=CPU) for _ in range(2))
    other = generate(model, prompts, cfg, seed=4, device=CPU)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_top_p_keeps_only_the_nucleus():
    # Probabilities 0.5, 0.3, 0.15, 0.05: the 0.7-nucleus is the first two tokens.
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(20_000, 1)
    drawn = pick_next(logits, GenerateConfig(do_sample=True, top_p=0.7), torch.Generator().manual_seed(0)).numpy()
    shares = np.bincount(drawn, minlength=4) / len(drawn)
    assert shares[2] == shares[3] == 0.0
    assert abs(shares[0] - 0.5 / 0.8) < 0.015


def test_top_k_and_temperature():
    logits = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]])).repeat(20_000, 1)
    generator = torch.Generator().manual_seed(0)
    top2 = pick_next(logits, GenerateConfig(do_sample=True, top_k=2), generator).numpy()
    assert set(np.unique(top2)) == {0, 1}
    cold = pick_next(logits, GenerateConfig(do_sample=True, temperature=0.25), generator).numpy()
    # p^(1/T) with T = 0.25: 0.4^4 / (0.4^4 + 0.3^4 + 0.2^4 + 0.1^4) = 0.0256 / 0.0354 = 0.723
    assert abs(np.mean(cold == 0) - 0.723) < 0.015


# --- what each preset decodes (conf/generate/*.yaml) ---------------------------------------------


def preset(name: str, new_tokens: int = 12) -> GenerateConfig:
    """conf/generate/NAME.yaml as `collapse run generate=NAME` composes it, with shorter prompts and outputs."""
    from collapse_cli.compose import compose

    return replace(compose([f"generate={name}"]).generate, new_tokens=new_tokens, prompt_tokens=5)


def next_token_logits(model, prompts: np.ndarray, continuation: np.ndarray) -> torch.Tensor:
    """Teacher-forced: the logits each new token was chosen from, [n, new_tokens, V]."""
    ids = torch.from_numpy(np.concatenate([prompts, continuation], axis=1))
    with torch.inference_mode():
        logits = model(input_ids=ids).logits
    return logits[:, prompts.shape[1] - 1:-1]


def ranks(logits: torch.Tensor, tokens: np.ndarray) -> np.ndarray:
    """0 for the most likely token, 1 for the next, ..."""
    chosen = logits.gather(-1, torch.from_numpy(tokens)[..., None])
    return (logits > chosen).sum(-1).numpy()


def test_greedy_preset_takes_the_argmax_every_step(model, prompts):
    tokens = generate(model, prompts, preset("greedy"), seed=0, device=CPU)
    assert (ranks(next_token_logits(model, prompts, tokens), tokens) == 0).all()


def test_top_k_preset_never_leaves_the_top_50(model, prompts):
    tokens = generate(model, prompts, preset("top_k", new_tokens=40), seed=1, device=CPU)
    token_ranks = ranks(next_token_logits(model, prompts, tokens), tokens)
    assert token_ranks.max() < 50
    assert (token_ranks > 0).mean() > 0.5  # it samples: not greedy


def test_top_p_preset_stays_in_the_nucleus(model, prompts):
    tokens = generate(model, prompts, preset("top_p", new_tokens=40), seed=2, device=CPU)
    probs = next_token_logits(model, prompts, tokens).softmax(-1)
    chosen = probs.gather(-1, torch.from_numpy(tokens)[..., None])
    # Mass of the tokens strictly more likely than the one drawn: below 0.9, or it was outside the nucleus.
    mass_before = (probs * (probs > chosen)).sum(-1)
    assert (mass_before < 0.9).all()
    assert (mass_before > 0).float().mean() > 0.5


def test_sample_preset_is_untruncated(model, prompts):
    tokens = generate(model, prompts, preset("sample", new_tokens=40), seed=3, device=CPU)
    logits = next_token_logits(model, prompts, tokens)
    mass_before = (logits.softmax(-1) * (logits > logits.gather(-1, torch.from_numpy(tokens)[..., None]))).sum(-1)
    # Ancestral sampling reaches the tail that top_p=0.9 cuts.
    assert (mass_before >= 0.9).any()



def reference_pick(logits: torch.Tensor, cfg: GenerateConfig, generator: torch.Generator) -> torch.Tensor:
    """The sampler as first written (every pass explicit): pick_next must draw the very same tokens."""
    logits = logits.float() / cfg.temperature
    if cfg.top_k > 0:
        kth_best = torch.topk(logits, min(cfg.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        mass_before = sorted_logits.softmax(dim=-1).cumsum(dim=-1) - sorted_logits.softmax(dim=-1)
        sorted_logits = sorted_logits.masked_fill(mass_before >= cfg.top_p, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    cdf = logits.softmax(dim=-1).double().cumsum(dim=-1)
    uniform = torch.rand((len(logits), 1), generator=generator, dtype=torch.float64)
    return torch.searchsorted(cdf, uniform * cdf[:, -1:], right=True).squeeze(-1).clamp_max(logits.shape[-1] - 1)


@pytest.mark.parametrize("settings", [{}, {"temperature": 0.7}, {"top_k": 7}, {"top_p": 0.8},
                                      {"temperature": 1.3, "top_k": 20, "top_p": 0.9}],
                         ids=["plain", "temperature", "top_k", "top_p", "all"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sampler_draws_the_tokens_of_its_first_form(settings, dtype):
    """Fewer passes, the same arithmetic: for one seed, the same token in every row (bf16 logits with many ties)."""
    logits = (torch.randn((4000, 300), generator=torch.Generator().manual_seed(1)) * 3).to(dtype)
    cfg = GenerateConfig(do_sample=True, **settings)
    ours = pick_next(logits.clone(), cfg, torch.Generator().manual_seed(2))
    assert torch.equal(ours, reference_pick(logits, cfg, torch.Generator().manual_seed(2)))
