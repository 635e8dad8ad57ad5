"""The own decoder against transformers' generate(): tiny OPT, GPT-2 and Llama built from configs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    OPTConfig,
    OPTForCausalLM,
)

from collapse_cli.families.lm import select
from collapse_cli.families.lm import train as train_module
from collapse_cli.families.lm.config import GenerateConfig
from collapse_cli.families.lm.decode import ChunkDecoder, describe, has_own_decoder
from collapse_cli.families.lm.generate import generate, n_chunks
from collapse_cli.families.lm.models import loop_generation_config

CPU = torch.device("cpu")
VOCAB = 96
SHUMAILOV = {"do_sample": False, "num_beams": 5, "repetition_penalty": 3.0}


def build(kind: str, attention: str = "sdpa", seed: int = 0) -> torch.nn.Module:
    common = {"vocab_size": VOCAB, "bos_token_id": 1, "eos_token_id": 1, "pad_token_id": 0}
    configs = {
        "opt": lambda: OPTForCausalLM(OPTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, ffn_dim=64,
                                                max_position_embeddings=64, word_embed_proj_dim=32, **common)),
        "gpt2": lambda: GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=64, **common)),
        "llama": lambda: LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                      num_attention_heads=4, num_key_value_heads=2,
                                                      max_position_embeddings=64, **common)),
        "gpt_neox": lambda: GPTNeoXForCausalLM(GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                             num_attention_heads=2, max_position_embeddings=64,
                                                             **common)),
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = configs[kind]()
    model.config._attn_implementation = attention
    return loop_generation_config(model).eval()  # as the loop's models: no EOS stop


def prompts(n: int = 24, length: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(2, VOCAB, size=(n, length))


def reference(model, prompt_ids: np.ndarray, new_tokens: int, **kwargs) -> np.ndarray:
    with torch.inference_mode():
        out = model.generate(input_ids=torch.from_numpy(prompt_ids),
                             attention_mask=torch.ones(prompt_ids.shape, dtype=torch.long),
                             max_new_tokens=new_tokens, length_penalty=1.0, early_stopping=False, **kwargs)
    return out[:, prompt_ids.shape[1]:].numpy()


def beam_score(model, prompt: np.ndarray, continuation: np.ndarray, penalty: float) -> float:
    """Beam search's accumulated score of one continuation: penalized log-probabilities, teacher-forced."""
    ids = torch.from_numpy(np.concatenate([prompt, continuation]))[None]
    with torch.inference_mode():
        log_probs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    total = 0.0
    for step, token in enumerate(continuation):
        position = len(prompt) + step - 1
        value = float(log_probs[position, token])
        total += value * penalty if token in ids[0, : position + 1] else value
    return total


def assert_same_or_tied(model, prompt_ids, ours, theirs, penalty):
    """Every row equal; a row may differ only where both continuations score the same within 1e-5
    (a near-tie that a different summation order can flip)."""
    for row in np.flatnonzero((ours != theirs).any(axis=1)):
        ours_score = beam_score(model, prompt_ids[row], ours[row], penalty)
        theirs_score = beam_score(model, prompt_ids[row], theirs[row], penalty)
        assert abs(ours_score - theirs_score) < 1e-5, (row, ours_score, theirs_score)


@pytest.mark.parametrize("kind", ["opt", "gpt2", "llama"])
@pytest.mark.parametrize("seed", [0, 1])
def test_beam_search_equals_transformers_generate(kind, seed):
    model = build(kind, seed=seed)
    prompt_ids = prompts(seed=seed)
    # batch_size 40: chunks of 8 prompts, so the last chunk and the chunk loop are exercised.
    ours = generate(model, prompt_ids, GenerateConfig(**SHUMAILOV, new_tokens=16, batch_size=40), seed=0, device=CPU)
    theirs = reference(model, prompt_ids, 16, num_beams=5, repetition_penalty=3.0, num_return_sequences=1)
    assert ours.shape == (24, 16)
    assert_same_or_tied(model, prompt_ids, ours, theirs, 3.0)


@pytest.mark.parametrize("kind", ["opt", "gpt2", "llama"])
def test_greedy_equals_transformers_generate(kind):
    model, prompt_ids = build(kind), prompts()
    cfg = GenerateConfig(do_sample=False, new_tokens=16, batch_size=10)
    ours = generate(model, prompt_ids, cfg, seed=0, device=CPU)
    assert np.array_equal(ours, reference(model, prompt_ids, 16, do_sample=False))


def test_eager_attention_gets_an_additive_mask():
    model, prompt_ids = build("llama", attention="eager"), prompts(n=10)
    ours = generate(model, prompt_ids, GenerateConfig(**SHUMAILOV, new_tokens=12, batch_size=25), seed=0, device=CPU)
    theirs = reference(model, prompt_ids, 12, num_beams=5, repetition_penalty=3.0, num_return_sequences=1)
    assert_same_or_tied(model, prompt_ids, ours, theirs, 3.0)


def test_beam_score_helper_agrees_with_generate():
    # The near-tie check is only as good as its score: it must equal generate()'s own sequence score
    # (length_penalty 1: the sum divided by the number of new tokens).
    model, prompt_ids = build("opt"), prompts(n=3)
    with torch.inference_mode():
        out = model.generate(input_ids=torch.from_numpy(prompt_ids), max_new_tokens=10, num_beams=5,
                             repetition_penalty=3.0, length_penalty=1.0, early_stopping=False,
                             return_dict_in_generate=True, output_scores=True)
    for row in range(3):
        score = beam_score(model, prompt_ids[row], out.sequences[row, 6:].numpy(), 3.0)
        assert abs(score / 10 - float(out.sequences_scores[row])) < 1e-5


def test_other_architectures_fall_back_to_generate():
    model, prompt_ids = build("gpt_neox"), prompts(n=6)
    assert not has_own_decoder(model) and has_own_decoder(build("llama"))
    beams = GenerateConfig(**SHUMAILOV, new_tokens=8, batch_size=15)
    assert "generate()" in describe(model, beams, CPU) and "gpt_neox" in describe(model, beams, CPU)
    assert describe(build("opt"), beams, CPU) == "own tree-cache decoder (opt)"
    ours = generate(model, prompt_ids, beams, seed=0, device=CPU)
    assert np.array_equal(ours, reference(model, prompt_ids, 8, num_beams=5, repetition_penalty=3.0))
    greedy = generate(model, prompt_ids, GenerateConfig(do_sample=False, new_tokens=8), seed=0, device=CPU)
    assert np.array_equal(greedy, reference(model, prompt_ids, 8, do_sample=False))


def test_decoder_transformers_runs_generate_itself_with_the_same_tokens():
    """generate.decoder=transformers: the cross-check, and the way out on a model or GPU the own decoder has not met."""
    model, prompt_ids = build("llama"), prompts(n=6)
    own = GenerateConfig(**SHUMAILOV, new_tokens=8, batch_size=15)
    theirs = GenerateConfig(**SHUMAILOV, new_tokens=8, batch_size=15, decoder="transformers")
    assert describe(model, theirs, CPU) == "transformers generate() (generate.decoder=transformers)"
    assert not ChunkDecoder(model, theirs, 3, CPU).own and ChunkDecoder(model, own, 3, CPU).own
    assert np.array_equal(generate(model, prompt_ids, theirs, seed=0, device=CPU),
                          generate(model, prompt_ids, own, seed=0, device=CPU))
    sampled = GenerateConfig(do_sample=True, new_tokens=8, batch_size=6, decoder="transformers")
    assert describe(model, sampled, CPU) == "transformers' dynamic KV cache (generate.decoder=transformers)"
    # Sampling draws from the chunk's own seeded stream whichever decoder steps the model: the same tokens.
    assert np.array_equal(generate(model, prompt_ids, sampled, seed=3, device=CPU),
                          generate(model, prompt_ids, GenerateConfig(do_sample=True, new_tokens=8, batch_size=6),
                                   seed=3, device=CPU))


@pytest.mark.parametrize("cfg", [GenerateConfig(do_sample=True, new_tokens=8, batch_size=5),
                                 GenerateConfig(**SHUMAILOV, new_tokens=8, batch_size=10)], ids=["sample", "beam"])
def test_chunks_reassemble_the_corpus(cfg):
    """The contract with a sharded run: any split of the chunks, put back in order, is the whole corpus."""
    model, prompt_ids = build("opt"), prompts(n=23)
    whole = generate(model, prompt_ids, cfg, seed=7, device=CPU)
    count = n_chunks(len(prompt_ids), cfg)
    assert count >= 5
    rank0 = generate(model, prompt_ids, cfg, seed=7, device=CPU, chunks=range(0, count, 2))
    rank1 = generate(model, prompt_ids, cfg, seed=7, device=CPU, chunks=range(1, count, 2))
    size = -(-len(prompt_ids) // count)
    rebuilt = np.empty_like(whole)
    for piece, ranks in ((rank0, range(0, count, 2)), (rank1, range(1, count, 2))):
        offset = 0
        for k in ranks:
            rows = len(prompt_ids[k * size:(k + 1) * size])
            rebuilt[k * size:k * size + rows] = piece[offset:offset + rows]
            offset += rows
        assert offset == len(piece)
    assert np.array_equal(rebuilt, whole)
    reversed_order = generate(model, prompt_ids, cfg, seed=7, device=CPU, chunks=reversed(range(count)))
    assert np.array_equal(reversed_order[: len(prompt_ids) - (count - 1) * size], whole[(count - 1) * size:])


def test_chunks_out_of_range_are_refused():
    with pytest.raises(ValueError, match="out of range"):
        generate(build("opt"), prompts(n=4), GenerateConfig(new_tokens=4, batch_size=2), seed=0, device=CPU, chunks=[2])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", ["opt", "gpt2", "llama"])
def test_bf16_decoder_on_cuda_matches_generate(kind):
    """bf16 weights, CUDA graph replay: the same tokens as generate() on the same bf16 model,
    except where two beams' scores are within bf16 noise of each other."""
    cuda = torch.device("cuda")
    model, prompt_ids = build(kind), prompts(n=40)
    cfg = GenerateConfig(**SHUMAILOV, new_tokens=16, batch_size=50)  # chunks of 10: the last one is padded
    ours = generate(model.to(cuda), prompt_ids, cfg, seed=0, device=cuda)
    bf16 = model.to(torch.bfloat16)
    with torch.inference_mode():
        theirs = bf16.generate(input_ids=torch.from_numpy(prompt_ids).to(cuda), max_new_tokens=16, num_beams=5,
                               repetition_penalty=3.0, length_penalty=1.0, early_stopping=False)[:, 6:].cpu().numpy()
    model = model.float().cpu()
    for row in np.flatnonzero((ours != theirs).any(axis=1)):
        # Scored by the fp32 model: a differing beam is one of about equal quality, never a worse one.
        ours_score = beam_score(model, prompt_ids[row], ours[row], 3.0)
        theirs_score = beam_score(model, prompt_ids[row], theirs[row], 3.0)
        assert ours_score >= theirs_score - 0.01 * abs(theirs_score), (row, ours_score, theirs_score)
    greedy = GenerateConfig(do_sample=False, new_tokens=16, batch_size=16)
    ours = generate(model.to(cuda), prompt_ids, greedy, seed=0, device=cuda)
    with torch.inference_mode():
        theirs = model.to(torch.bfloat16).generate(input_ids=torch.from_numpy(prompt_ids).to(cuda), max_new_tokens=16,
                                                   do_sample=False)[:, 6:].cpu().numpy()
    assert (ours == theirs).all(axis=1).mean() >= 0.9  # argmax flips where two logits tie within bf16 rounding


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", ["opt", "llama"])
def test_cuda_graphs_replay_what_eager_steps_compute(kind):
    """One graph per step index, captured in the first chunks and replayed in later ones: the same tokens as eager."""
    cuda = torch.device("cuda")
    model, prompt_ids = build(kind).to(cuda), prompts(n=12)
    for cfg in (GenerateConfig(**SHUMAILOV, new_tokens=12, batch_size=20),
                GenerateConfig(do_sample=True, new_tokens=12, batch_size=4)):
        eager = generate(model, prompt_ids, replace(cfg, cuda_graph=False), seed=1, device=cuda)
        assert np.array_equal(generate(model, prompt_ids, cfg, seed=1, device=cuda), eager)
        decode = ChunkDecoder(model, cfg, 4, cuda)
        with torch.inference_mode():
            for chunk in range(3):
                decode(torch.from_numpy(prompt_ids[4 * chunk:4 * chunk + 4]).to(cuda),
                       torch.Generator(cuda).manual_seed(0))
        (decoder,) = decode.decoders.values()
        # Every step index: slot 0 ran eagerly in the first chunk (the warm-up) and was captured in the second.
        assert sorted(decoder.graphs) == list(range(cfg.new_tokens - 1))
    # A beam step is one graph replay, its selection included: once captured, the Python selection runs
    # only for step 0 (on the prefill's logits), and the tokens are still those of the eager decoder.
    cfg = GenerateConfig(**SHUMAILOV, new_tokens=12, batch_size=20)
    decode, calls = ChunkDecoder(model, cfg, 4, cuda), []
    advance = select.Beams.advance
    with torch.inference_mode():
        for chunk in range(2):  # the first chunk warms up and captures
            decode(torch.from_numpy(prompt_ids[4 * chunk:4 * chunk + 4]).to(cuda), None)
        select.Beams.advance = lambda self, *args, **kwargs: calls.append(kwargs.get("step")) or advance(self, *args,
                                                                                                            **kwargs)
        try:
            last = decode(torch.from_numpy(prompt_ids[8:12]).to(cuda), None).cpu().numpy()
        finally:
            select.Beams.advance = advance
    assert calls == [0]
    eager = generate(model, prompt_ids, replace(cfg, cuda_graph=False), seed=1, device=cuda)
    assert np.array_equal(last, eager[8:12])


def test_inference_weights_are_a_bf16_copy_for_cuda_made_once():
    # The bf16 conversion itself runs on any device: no GPU is needed to check it.
    model, cuda = build("opt", seed=0), torch.device("cuda")
    copy = train_module.inference_model(model, cuda)
    assert copy is not model and next(copy.parameters()).dtype == torch.bfloat16
    assert next(model.parameters()).dtype == torch.float32  # training keeps its fp32 masters
    assert train_module.inference_model(copy, cuda) is copy  # already bf16: no second copy
    assert train_module.inference_model(model, torch.device("cpu")) is model


# --- the tree cache: nothing moves, only written slots are read, chunk size free -------------------
def decode_with_probe(model, prompt_ids: np.ndarray, cfg: GenerateConfig, before_step=None):
    """Beam search through the decoder's own pieces, calling before_step(decoder, slot) before each step."""
    from collapse_cli.families.lm import decode as decode_module

    decoder = decode_module.TreeDecoder(model, len(prompt_ids), cfg.num_beams, cfg.new_tokens, use_graph=False)
    step = decoder.step

    def probed(tokens, slot, then=None):
        if before_step is not None:
            before_step(decoder, slot)
        return step(tokens, slot, then)

    decoder.step = probed
    with torch.inference_mode():
        return decode_module.beam_search(decoder, torch.from_numpy(prompt_ids), cfg).numpy(), decoder


@pytest.mark.parametrize("kind", ["opt", "llama"])
def test_unwritten_slots_are_never_read(kind):
    """Live length: NaN in every generated slot not yet written changes nothing (a masked read would spread it)."""
    model, prompt_ids = build(kind), prompts(n=6)
    cfg = GenerateConfig(**SHUMAILOV, new_tokens=10)

    def poison_the_future(decoder, slot):
        for store in (decoder.cache.keys, decoder.cache.values):
            store[:, :, :, slot:] = float("nan")

    poisoned, _ = decode_with_probe(model, prompt_ids, cfg, poison_the_future)
    clean, _ = decode_with_probe(model, prompt_ids, cfg)
    assert np.array_equal(poisoned, clean)
    assert np.array_equal(clean, generate(model, prompt_ids, cfg, seed=0, device=CPU))


def test_kv_is_written_once_and_never_moves():
    """Each generated slot is written by its step and then stays bit-identical; the prompt KV never changes."""
    model, prompt_ids = build("llama"), prompts(n=5)
    cfg = GenerateConfig(**SHUMAILOV, new_tokens=9)
    snapshots = []

    def snapshot(decoder, slot):
        cache = decoder.cache
        snapshots.append((slot, cache.keys.clone(), cache.values.clone(), cache.prompt_keys.clone()))

    _, decoder = decode_with_probe(model, prompt_ids, cfg, snapshot)
    cache = decoder.cache
    # GQA: the cache holds the 2 shared KV heads, never the 4 query heads repeated.
    assert cache.prompt_keys.shape[2] == cache.keys.shape[2] == model.config.num_key_value_heads
    assert cache.prompt_keys.shape[1] == len(prompt_ids)  # one prompt copy per prompt, not per beam
    for slot, keys, values, prompt_keys in snapshots:
        # Slots written before this step (0..slot-1) are as the end of decoding left them.
        assert torch.equal(keys[:, :, :, :slot], cache.keys[:, :, :, :slot])
        assert torch.equal(values[:, :, :, :slot], cache.values[:, :, :, :slot])
        assert torch.equal(prompt_keys, cache.prompt_keys)
    # Beam search did reorder: some row's history runs through a row other than its own.
    own = torch.arange(cfg.num_beams).repeat(len(prompt_ids))[:, None]
    assert (cache.ancestry[:, : cfg.new_tokens - 1] != own).any()


@pytest.mark.parametrize("kind", ["opt", "gpt2", "llama"])
def test_step_logits_equal_the_models_own(kind):
    """Teacher-forced through the tree cache, every step's logits equal the model's full forward (fp32)."""
    from collapse_cli.families.lm.decode import TreeDecoder

    model, prompt_ids = build(kind), torch.from_numpy(prompts(n=4))
    continuation = torch.from_numpy(prompts(n=4, length=8, seed=5))
    with torch.inference_mode():
        full = model(input_ids=torch.cat([prompt_ids, continuation], dim=1)).logits
        decoder = TreeDecoder(model, len(prompt_ids), 1, 8, use_graph=False)
        first = decoder.prefill(prompt_ids)
        assert torch.allclose(first, full[:, 5], atol=1e-5)
        for slot in range(7):
            logits = decoder.step(continuation[:, slot], slot)
            assert torch.allclose(logits, full[:, 6 + slot], atol=1e-5, rtol=1e-5), slot


def test_beam_corpus_does_not_depend_on_chunk_size():
    """Beam search draws no random numbers: chunks of 1, 4 or all 13 prompts give the same corpus."""
    model, prompt_ids = build("gpt2"), prompts(n=13)
    corpora = [generate(model, prompt_ids, GenerateConfig(**SHUMAILOV, new_tokens=10, batch_size=rows), seed=0,
                        device=CPU) for rows in (5, 20, 65)]
    assert np.array_equal(corpora[0], corpora[1]) and np.array_equal(corpora[1], corpora[2])


def test_decoding_prints_no_warning(capfd):
    """transformers 5.24 warns when a cache is passed as `past_key_values`: the decoders pass it by the current name."""
    import warnings

    for kind in ("opt", "gpt_neox"):  # the own decoder, and the dynamic-cache fallback
        model, prompt_ids = build(kind), prompts(n=4)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            generate(model, prompt_ids, GenerateConfig(do_sample=True, new_tokens=6), seed=0, device=CPU)
            generate(model, prompt_ids, GenerateConfig(**SHUMAILOV, new_tokens=6) if kind == "opt" else
                     GenerateConfig(do_sample=False, new_tokens=6), seed=0, device=CPU)
    captured = capfd.readouterr()
    assert "past_key_values" not in captured.err + captured.out
    assert captured.err == ""


KERNEL_CHECK = """
import torch
from collapse_cli.families.lm.lse_kernel import triton_row_logsumexp
generator = torch.Generator().manual_seed(0)
for dtype in (torch.float32, torch.bfloat16):
    logits = (torch.randn((6, 2500), generator=generator) * 8).to(dtype)  # 2500: a short last block
    logits[0, :7] = float("-inf")  # seen ids masked out, as beam search does after its own lse
    logits[1] = -1e4  # a flat row far from zero
    ours = triton_row_logsumexp(logits)
    reference = torch.logsumexp(logits.float(), dim=-1, keepdim=True)
    assert ours.dtype == torch.float32 and ours.shape == (6, 1)
    assert torch.allclose(ours, reference, rtol=1e-6, atol=1e-5), (dtype, (ours - reference).abs().max())
# Beam search with the kernel as its log-sum-exp: the same corpus.
import numpy as np
from test_decode import SHUMAILOV, build, prompts
from collapse_cli.families.lm.config import GenerateConfig
from collapse_cli.families.lm import select
from collapse_cli.families.lm.generate import generate
model, prompt_ids, cfg = build("opt"), prompts(n=6), GenerateConfig(**SHUMAILOV, new_tokens=8)
torch_path = generate(model, prompt_ids, cfg, seed=0, device=torch.device("cpu"))
select.row_logsumexp = triton_row_logsumexp
assert np.array_equal(generate(model, prompt_ids, cfg, seed=0, device=torch.device("cpu")), torch_path)
print("ok")
"""


@pytest.mark.slow
def test_triton_logsumexp_kernel_matches_torch():
    """The one-pass kernel against torch.logsumexp, run by Triton's interpreter on the CPU (CUDA runs it natively)."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton", reason="Triton is absent from CPU-only torch installs; CUDA ones ship it")
    result = subprocess.run([sys.executable, "-c", KERNEL_CHECK], capture_output=True, text=True, timeout=600,
                            cwd=Path(__file__).parent, env={**os.environ, "TRITON_INTERPRET": "1"})
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


@pytest.mark.parametrize("new_tokens, prompt_len, beams, penalty", [(1, 6, 5, 3.0), (2, 6, 5, 3.0), (6, 1, 5, 3.0),
                                                                      (8, 6, 2, 1.0)],
                         ids=["one-token", "two-tokens", "bos-prompt", "2-beams-no-penalty"])
def test_beam_search_edges_equal_generate(new_tokens, prompt_len, beams, penalty):
    """The first step alone, one-token prompts (prompt=bos), and other beam counts without a penalty."""
    model, prompt_ids = build("llama"), prompts(n=7, length=prompt_len)
    cfg = GenerateConfig(do_sample=False, num_beams=beams, repetition_penalty=penalty, new_tokens=new_tokens)
    ours = generate(model, prompt_ids, cfg, seed=0, device=CPU)
    theirs = reference(model, prompt_ids, new_tokens, num_beams=beams, repetition_penalty=penalty)
    assert_same_or_tied(model, prompt_ids, ours, theirs, penalty)


def test_repeats_earlier_flags_every_later_copy_of_an_id():
    ids = torch.tensor([[5, 7, 5, 5, 9, 7], [1, 2, 3, 4, 5, 6]])
    expected = [[False, False, True, True, False, True], [False] * 6]
    assert select.repeats_earlier(ids).tolist() == expected


@pytest.mark.parametrize("kind", ["opt", "llama"])
def test_repetitive_prompts_get_the_penalty_once_per_id(kind):
    """Prompts of 4 distinct ids in 10 tokens, 3 beams over 20 steps, a peaked model (LM head x 30) that repeats
    itself despite the penalty: ids repeat within the prompt, between prompt and history and within the
    history; each id is penalized once, as generate() does."""
    model = build(kind)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(30)
    prompt_ids = np.random.default_rng(3).integers(2, 6, size=(8, 10))
    cfg = GenerateConfig(do_sample=False, num_beams=3, repetition_penalty=1.5, new_tokens=20, batch_size=12)
    ours = generate(model, prompt_ids, cfg, seed=0, device=CPU)
    assert_same_or_tied(model, prompt_ids, ours, reference(model, prompt_ids, 20, num_beams=3,
                                                            repetition_penalty=1.5), 1.5)
    # The history repeats ids, the prompt's among them: the flags, not a sort, keep one competitor per id.
    assert sum(len(set(row)) < len(row) for row in ours) >= 4
    assert sum(bool(set(row) & set(prompt)) for row, prompt in zip(ours, prompt_ids)) >= 4


def test_beam_state_is_made_once_and_reloaded_per_chunk():
    """The buffers a captured step reads keep their addresses from chunk to chunk; each chunk starts afresh."""
    model, prompt_ids = build("gpt2"), prompts(n=12)
    cfg = GenerateConfig(**SHUMAILOV, new_tokens=8, batch_size=20)
    decode = ChunkDecoder(model, cfg, 4, CPU)
    with torch.inference_mode():
        first = decode(torch.from_numpy(prompt_ids[:4]), None)
        (decoder,) = decode.decoders.values()
        buffers = [t.data_ptr() for t in (decoder.search.sequences, decoder.search.repeated, decoder.search.running)]
        later = [decode(torch.from_numpy(prompt_ids[4 * k:4 * k + 4]), None) for k in (1, 2, 0)]
    assert [t.data_ptr() for t in (decoder.search.sequences, decoder.search.repeated,
                                   decoder.search.running)] == buffers
    assert torch.equal(later[2], first)  # chunk 0 again, after two others: nothing carried over
    assert np.array_equal(torch.cat(later[:2]).numpy(), generate(model, prompt_ids[4:], cfg, seed=0, device=CPU))
