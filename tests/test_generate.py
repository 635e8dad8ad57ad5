"""Decoding: our KV-cached loop against transformers' generate(), and the sampler's law."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import OPTConfig, OPTForCausalLM

from collapse_cli.config import GenerateConfig
from collapse_cli.families.lm.generate import (
    generate,
    generation_kwargs,
    pick_next,
    sample_categorical,
)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model():
    config = OPTConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, ffn_dim=64,
                       max_position_embeddings=64, word_embed_proj_dim=32, pad_token_id=0, bos_token_id=1,
                       eos_token_id=1)
    torch.manual_seed(0)
    built = OPTForCausalLM(config).eval()
    built.generation_config.eos_token_id = None
    return built


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
                                **generation_kwargs(cfg))[:, prompts.shape[1]:].numpy()
    assert ours.shape == (12, 10)
    assert np.array_equal(ours, theirs)


def test_repetition_penalty_matches_transformers(model, prompts):
    cfg = GenerateConfig(do_sample=False, new_tokens=10, repetition_penalty=1.5)
    ours = generate(model, prompts, cfg, seed=0, device=CPU)
    with torch.inference_mode():
        theirs = model.generate(input_ids=torch.from_numpy(prompts),
                                attention_mask=torch.ones(prompts.shape, dtype=torch.long),
                                **generation_kwargs(cfg))[:, prompts.shape[1]:].numpy()
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
