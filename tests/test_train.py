"""Training's loss and step: the chunked next-token loss is the HF loss, a padded last batch is the unpadded
one, and a compiled run compiles one graph, the short last batch included."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from collapse_cli.config import TrainConfig
from collapse_cli.families.lm import evaluate, loss, train

VOCAB = 97


def opt(tied: bool = True) -> torch.nn.Module:
    from transformers import OPTConfig, OPTForCausalLM

    return OPTForCausalLM(OPTConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                    ffn_dim=64, max_position_embeddings=64, word_embed_proj_dim=32,
                                    pad_token_id=0, bos_token_id=1, eos_token_id=1, tie_word_embeddings=tied,
                                    dropout=0.0, attention_dropout=0.0))


def gpt2() -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                      bos_token_id=1, eos_token_id=1, resid_pdrop=0.0, embd_pdrop=0.0,
                                      attn_pdrop=0.0))


def llama(tied: bool) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
                                        tie_word_embeddings=tied, bos_token_id=1, eos_token_id=1, pad_token_id=0))


def opt_with_head_bias() -> torch.nn.Module:
    model = opt(tied=False)
    model.lm_head = torch.nn.Linear(32, VOCAB, bias=True)  # the HF forward applies it as it is
    return model


MODELS = {"opt": opt, "gpt2": gpt2, "llama": lambda: llama(tied=False), "llama-tied": lambda: llama(tied=True),
          "opt-head-bias": opt_with_head_bias}


def seeded(make, seed: int = 0) -> torch.nn.Module:
    """In train mode, as training runs it; dropout is 0 in every config above, so forwards are deterministic."""
    torch.manual_seed(seed)
    return make().train()


@pytest.fixture
def small_chunks(monkeypatch):
    """7 tokens of logits a chunk: a [3, 16] batch makes 7 chunks, the last one short."""
    monkeypatch.setattr(loss, "CHUNK_ELEMENTS", VOCAB * 7)


@pytest.fixture(params=["7-token chunks", "one chunk"])
def chunking(request, monkeypatch):
    """Both paths of summed_nll: checkpointed chunks, and one chunk whose logits backward keeps."""
    if request.param == "7-token chunks":
        monkeypatch.setattr(loss, "CHUNK_ELEMENTS", VOCAB * 7)
    return request.param


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", MODELS)
def test_chunked_loss_and_gradients_are_the_hf_loss(name, chunking):
    model = seeded(MODELS[name])
    ids = torch.randint(0, VOCAB, (3, 16), generator=torch.Generator().manual_seed(1))
    hf_loss = model(input_ids=ids, labels=ids).loss
    hf_loss.backward()
    expected = grads(model)
    model.zero_grad(set_to_none=True)
    chunked = loss.summed_nll(model, ids) / (3 * 15)
    chunked.backward()
    assert loss._linear_head(model) is not None  # the chunked path ran, not the fallback
    # One chunk is the HF loss's own computation: bit for bit. Chunks sum in another order: fp32 rounding.
    # So does a head with a bias (addmm on [tokens, H] against HF's matmul-and-add on [b, L, H]).
    exact = chunking == "one chunk" and name != "opt-head-bias"
    torch.testing.assert_close(chunked, hf_loss, rtol=0 if exact else 1e-6, atol=0)
    got = grads(model)
    assert got.keys() == expected.keys()
    for key in expected:  # tied heads: the embedding's gradient holds both uses
        torch.testing.assert_close(got[key], expected[key], rtol=0 if exact else 1e-5, atol=0 if exact else 1e-6,
                                   msg=key)


def test_backward_keeps_no_chunk_of_logits(small_chunks):
    """Every tensor autograd keeps outside the checkpointed chunks: none is logits (a last dimension of V)."""
    model = seeded(opt)
    ids = torch.randint(0, VOCAB, (3, 16), generator=torch.Generator().manual_seed(1))
    kept = []

    def pack(tensor):
        kept.append(tuple(tensor.shape))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        total = loss.summed_nll(model, ids)
    total.backward()  # the recomputation runs and the gradients arrive
    assert (VOCAB, 32) in kept  # the head's weight: what is kept is seen
    assert not [shape for shape in kept if shape[-1] == VOCAB] and model.lm_head.weight.grad is not None


def test_ignored_rows_score_nothing(small_chunks):
    model = seeded(opt)
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(2))
    labels = ids.clone()
    labels[1] = loss.IGNORE
    with torch.no_grad():
        both, first_only = loss.summed_nll(model, ids, labels), loss.summed_nll(model, ids[:1])
        unlabelled = loss.summed_nll(model, ids, torch.full_like(ids, loss.IGNORE))
    torch.testing.assert_close(both, first_only, rtol=1e-6, atol=0)
    assert unlabelled == 0 and both > 0


def test_a_head_that_scales_its_logits_goes_through_the_models_own_forward():
    model = seeded(opt)
    assert loss._linear_head(model) is not None
    model.config.logit_scale = 0.5
    assert loss._linear_head(model) is None


@pytest.mark.parametrize("name", ["opt", "llama"])
def test_evaluation_scores_are_those_of_the_full_logits(name, small_chunks):
    model = seeded(MODELS[name]).eval()
    blocks = np.random.default_rng(3).integers(0, VOCAB, (5, 12))
    with torch.no_grad():
        logits = model(input_ids=torch.from_numpy(blocks)).logits[:, :-1].float()
    targets = torch.from_numpy(blocks[:, 1:])
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1), reduction="none")
    # A true law over the first 90 ids, as the builtin language's (its vocabulary is the model's, less specials).
    transition = np.random.default_rng(4).dirichlet(np.ones(90), size=VOCAB).astype(np.float32)
    nll, ce, entropy = evaluate.score_blocks(model, blocks, 2, torch.device("cpu"), transition)
    torch.testing.assert_close(torch.from_numpy(nll), expected.view(5, 11), rtol=1e-6, atol=1e-6)
    probs, prev = torch.from_numpy(transition), targets.new_tensor(blocks[:, :-1])
    expected_ce = -(probs[prev] * torch.log_softmax(logits[..., :90], dim=-1)).sum() / nll.size
    expected_h = -(probs * probs.log()).sum(-1)[prev].sum() / nll.size
    assert ce == pytest.approx(float(expected_ce), rel=1e-6) and entropy == pytest.approx(float(expected_h), rel=1e-6)


def step_loss(model: torch.nn.Module, data: torch.Tensor, order: torch.Tensor, first: int, batch_size: int,
              fill: bool) -> tuple[torch.Tensor, int]:
    batch, labels, n_rows = train._batch(data, order, first, batch_size, fill)
    value = train._SummedNLL(model)(batch, labels) / (n_rows * (data.shape[1] - 1))
    model.zero_grad(set_to_none=True)
    value.backward()
    return value.detach(), len(batch)


def test_a_filled_last_batch_has_the_unfilled_loss_and_gradients():
    model = seeded(opt)
    data = torch.from_numpy(np.random.default_rng(5).integers(0, VOCAB, (10, 12)))
    order = torch.randperm(10, generator=torch.Generator().manual_seed(6))
    plain, plain_rows = step_loss(model, data, order, 8, 4, fill=False)
    plain_grads = grads(model)
    filled, filled_rows = step_loss(model, data, order, 8, 4, fill=True)
    assert (plain_rows, filled_rows) == (2, 4)
    torch.testing.assert_close(filled, plain, rtol=1e-6, atol=0)
    for key, value in grads(model).items():
        torch.testing.assert_close(value, plain_grads[key], rtol=1e-5, atol=1e-7, msg=key)


def test_a_batch_larger_than_the_data_repeats_rows_that_score_nothing():
    data = torch.arange(30).view(3, 10)
    batch, labels, n_rows = train._batch(data, torch.tensor([2, 0, 1]), 0, 8, fill=True)
    assert n_rows == 3 and batch[:, 0].tolist() == [20, 0, 10, 20, 0, 10, 20, 0]
    assert torch.all(labels[:3] == batch[:3]) and torch.all(labels[3:] == loss.IGNORE)


class CountingBackend:
    """A torch.compile backend that runs the captured graph eagerly and counts the graphs it is given."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, graph_module, example_inputs):
        self.graphs += 1
        return graph_module.forward


@pytest.mark.slow  # torch.compile traces and compiles a graph, as the compile-time script test does
def test_a_compiled_run_compiles_one_graph_the_short_last_batch_included():
    torch._dynamo.reset()
    backend = CountingBackend()
    blocks = np.random.default_rng(7).integers(0, VOCAB, (10, 12))  # batches of 4, 4 and a short 2
    cfg = TrainConfig(epochs=2, batch_size=4, lr=1e-3, compile=True)
    compiled = seeded(opt)
    eager = seeded(opt)
    assert train._CompiledRegions(compiled).regions == list(compiled.model.decoder.layers)
    stats = train.train(compiled, blocks, cfg, 0, torch.device("cpu"), 0, compile_backend=backend)
    # One graph: one decoder layer's, serving both layers, all six steps, and the filled last batches.
    assert backend.graphs == 1 and stats.steps == 6
    assert all(layer._compiled_call_impl is None for layer in compiled.model.decoder.layers)
    # A later generation (a new model) reuses it.
    train.train(seeded(opt, seed=1), blocks, cfg, 0, torch.device("cpu"), 1, compile_backend=backend)
    assert backend.graphs == 1
    # The same training as the eager, unfilled steps, to fp32 rounding.
    plain = train.train(eager, blocks, TrainConfig(epochs=2, batch_size=4, lr=1e-3, compile=False), 0,
                        torch.device("cpu"), 0)
    assert stats.loss_last == pytest.approx(plain.loss_last, rel=1e-5)
    for (key, value), other in zip(compiled.state_dict().items(), eager.state_dict().values()):
        torch.testing.assert_close(value, other, rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["regional", "whole"])
def test_compile_time_script_compiles_one_graph(mode):
    script = Path(__file__).resolve().parents[1] / "scripts" / "compile_time.py"
    done = subprocess.run([sys.executable, str(script), "--mode", mode, "--backend", "eager", "--layers", "2",
                           "--hidden", "64", "--vocab", "300", "--batch", "4", "--steps", "5"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["graphs"] == 1 and result["steps"] == 5 and result["steady_tok_s"] > 0
