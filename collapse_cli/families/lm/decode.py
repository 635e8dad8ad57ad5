"""The project's own decoder: prompts computed once, a KV cache in which nothing moves, live-length steps.

One decoding chunk (B prompts x beams rows):
    prefill   the B prompts once, through the model's own forward; their KV is kept once per prompt
    step      one token per row: the model's own forward with the tree cache's attention plugged in
              (families/lm/kvcache.py): each row writes its new key and value once, into its own slot,
              and attends to its prompt and to the generated positions written so far through a small
              ancestry table; then the LM head into one logits buffer and the selection
              (families/lm/select.py): greedy, sampling, or beam search with a repetition penalty
              applied to each row's seen ids; sampling can add generate.watermark's green-list bias
              (select.Marker: one scatter-add over the logits) before it draws
Beam search reorders the ancestry table ([rows, new_tokens]), never the KV. Models other than OPT,
GPT-2 and Llama use transformers' dynamic cache (sampling, greedy) and generate() (beam search), as
`describe` says in the run's plan.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Callable

import numpy as np
import torch

from collapse_cli.families.lm.config import GenerateConfig
from collapse_cli.families.lm.fused_mlp import relu_in_gemm
from collapse_cli.families.lm.kvcache import TreeCache, attending
from collapse_cli.families.lm.select import Beams, Mark, Marker, penalize_seen

log = logging.getLogger("collapse")

ARCHITECTURES = ("opt", "gpt2", "llama")


def has_own_decoder(model: torch.nn.Module) -> bool:
    config = model.config
    return config.model_type in ARCHITECTURES and config._attn_implementation in ("sdpa", "eager")


def uses_own_decoder(model: torch.nn.Module, cfg: GenerateConfig) -> bool:
    return cfg.decoder == "own" and has_own_decoder(model)


def uses_cuda_graph(cfg: GenerateConfig, device: torch.device) -> bool:
    return device.type == "cuda" and cfg.cuda_graph


def describe(model: torch.nn.Module, cfg: GenerateConfig, device: torch.device) -> str:
    """One line for the run's plan: which decoder writes the synthetic corpus."""
    if uses_own_decoder(model, cfg):
        graph = ", CUDA graphs" if uses_cuda_graph(cfg, device) else ""
        return f"own tree-cache decoder ({model.config.model_type}{graph})"
    fallback = "transformers generate()" if cfg.num_beams > 1 else "transformers' dynamic KV cache"
    if cfg.decoder == "transformers":
        return f"{fallback} (generate.decoder=transformers)"
    return f"{fallback}: no own decoder for model type {model.config.model_type!r} (only {', '.join(ARCHITECTURES)})"


def attention_backends(device: torch.device):
    """On CUDA, SDPA without cuDNN: cuDNN builds a new plan for every KV length (63% of a step's CPU time)."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def output_cache(output):
    """The KV cache a forward returned: `cache` from transformers 5.24, `past_key_values` before."""
    cache = getattr(output, "cache", None)
    return output.past_key_values if cache is None else cache


def cache_keyword(model: torch.nn.Module) -> str:
    """The name the model's forward takes its cache under: `cache` from 5.24 (the old one warns), else the old one."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class TreeDecoder:
    """A fixed number of prompts x beams rows decoded over a TreeCache (families/lm/kvcache.py).

    A step is the model's forward for one token per row, attending through the tree cache to the
    prompt once per prompt and to the generated positions written so far, then the LM head into
    one logits buffer. On CUDA each step index is captured once as its own graph (its live length
    is part of its shapes) in one memory pool, replayed in capture order for every chunk.
    """

    def __init__(self, model: torch.nn.Module, n_prompts: int, beams: int, new_tokens: int, use_graph: bool):
        parameter = next(model.parameters())
        self.model, self.beams, self.new_tokens = model, beams, new_tokens
        self.rows = n_prompts * beams
        self.head = model.get_output_embeddings()
        self.logits = torch.empty((self.rows, self.head.weight.shape[0]), dtype=parameter.dtype,
                                  device=parameter.device)
        self.tokens = torch.zeros((self.rows, 1), dtype=torch.long, device=parameter.device)  # the step's input
        # The same tokens beam-major, as the model sees them (kvcache.tree_attention says why).
        self.model_tokens = torch.zeros((self.rows, 1), dtype=torch.long, device=parameter.device)
        self.position = torch.zeros((), dtype=torch.long, device=parameter.device)  # where that token sits
        self.n_prompts, self.cache = n_prompts, None
        self.search: Beams | None = None  # beam search's buffers, made once: a captured step reads them
        self.use_graph, self.warm, self.graphs, self.pool = use_graph, False, {}, None

    def prefill(self, prompts: torch.Tensor) -> torch.Tensor:
        """Run the prompts once through the model's own forward; keep their KV once each. Last logits [B, V]."""
        output = self.model(input_ids=prompts, use_cache=True, logits_to_keep=1)
        layers = output_cache(output).layers
        self.reserve(prompts.shape[1]).load_prompts([layer.keys for layer in layers],
                                                    [layer.values for layer in layers])
        return output.logits[:, -1]

    def reserve(self, prompt_len: int) -> TreeCache:
        """The cache, allocated on first use (all of a decoder's chunks have one prompt length)."""
        if self.cache is None:
            self.cache = TreeCache(self.model.config, self.n_prompts, self.beams, prompt_len, self.new_tokens,
                                   self.logits.dtype, self.logits.device)
        return self.cache

    def step(self, tokens: torch.Tensor | None, slot: int,
             then: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """Feed one token per row, written at generated position `slot`; logits [rows, V] (overwritten next step).

        `tokens` None: the ones the previous step's `then` left in the input buffer. `then(logits)`, the
        selection, runs inside the step (in its CUDA graph) and returns the next tokens [rows], which it
        leaves in the input buffer; the step then returns those tokens (a view, overwritten next step).
        """
        if tokens is not None:
            self.tokens.copy_(tokens.view(-1, 1))
        if slot not in self.graphs and self.use_graph and self.warm:
            self._capture(slot, then)
        if slot in self.graphs:
            self.graphs[slot].replay()
        else:  # eager; on CUDA the first step also warms up the kernels the graphs then record
            self._run(slot, then)
            self.warm = True
        return self.logits if then is None else self.tokens.view(-1)

    def _run(self, slot: int, then: Callable[[torch.Tensor], torch.Tensor] | None) -> None:
        """The whole step, as eager code and as what a graph records: one body for both."""
        self.position.fill_(self.cache.prompt_len + slot)
        self._forward(slot)
        if then is not None:
            self.tokens.copy_(then(self.logits).view(-1, 1))

    def _forward(self, slot: int) -> None:
        # Rows are prompt-major here and in the selection (row = prompt x beams + beam), beam-major inside
        # the model: the reorder is of the token ids in, and of the last hidden state out (once a step).
        self.model_tokens.view(self.beams, self.n_prompts).copy_(self.tokens.view(self.n_prompts, self.beams).t())
        with attending(self.model, self.cache), relu_in_gemm(self.model):
            self.cache.prepare(slot)
            # One position for all rows, broadcast: the position embedding (or rotary angle) is made once.
            hidden = self.model.base_model(input_ids=self.model_tokens, use_cache=False,
                                           position_ids=self.position.view(1, 1))
        beam_major = hidden.last_hidden_state[:, -1].view(self.beams, self.n_prompts, -1)
        torch.mm(beam_major.transpose(0, 1).reshape(self.rows, -1), self.head.weight.t(), out=self.logits)
        if self.head.bias is not None:
            self.logits.add_(self.head.bias)

    def _capture(self, slot: int, then: Callable[[torch.Tensor], torch.Tensor] | None) -> None:
        """Record step `slot` (nothing runs while recording); on failure decode eagerly from then on."""
        graph = torch.cuda.CUDAGraph()
        self.pool = self.pool or torch.cuda.graph_pool_handle()
        try:
            with torch.cuda.graph(graph, pool=self.pool):
                self._run(slot, then)
        except RuntimeError as err:  # e.g. a forward that syncs with the host
            log.warning("decoder: CUDA graph capture failed (%s); decoding eagerly", str(err).splitlines()[0][:120])
            self.use_graph = False
            return
        self.graphs[slot] = graph


class DynamicSteps:
    """Fallback for other causal LMs: transformers' growing cache (sampling and greedy only)."""

    def __init__(self, model: torch.nn.Module):
        self.model, self.cache, self.keyword = model, None, cache_keyword(model)

    def prefill(self, prompts: torch.Tensor) -> torch.Tensor:
        output = self.model(input_ids=prompts, use_cache=True)
        self.cache = output_cache(output)
        return output.logits[:, -1]

    def step(self, tokens: torch.Tensor, slot: int) -> torch.Tensor:
        output = self.model(input_ids=tokens.view(-1, 1), use_cache=True, **{self.keyword: self.cache})
        self.cache = output_cache(output)
        return output.logits[:, -1]


def pick_next(logits: torch.Tensor, cfg: GenerateConfig, generator: torch.Generator) -> torch.Tensor:
    """One token per row from next-token logits: greedy, or sampling with temperature, top-k, top-p.

    Passes over [rows, V], each bit-identical to the form it replaced (so a seed draws the same
    tokens): the fp32 widening of bf16 logits (none in fp32), the softmax, the CDF's cumsum: three
    at most for plain sampling. A temperature other than 1 adds one; top-k adds its top-k and the
    cut (two); top-p its sort, softmax, cumsum, cut and the scatter back. A fused kernel (one read
    of the logits) would sum in another order, move the CDF by an ulp and so, now and then, the
    token a uniform lands on: the exact form is kept, as the tests and the default run's figures
    (token for token) require.
    """
    if not cfg.do_sample:
        return logits.argmax(dim=-1)
    logits = logits.float()  # no copy when already fp32 (the CPU's weights)
    if cfg.temperature != 1.0:
        logits = logits / cfg.temperature
    if cfg.top_k > 0:
        kth_best = torch.topk(logits, min(cfg.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(dim=-1)
        mass_before = sorted_probs.cumsum(dim=-1).sub_(sorted_probs)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        sorted_logits.masked_fill_(mass_before >= cfg.top_p, float("-inf"))
        # `order` is a permutation: the scatter writes every entry, so nothing needs filling first.
        logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)
    return sample_categorical(logits.softmax(dim=-1), generator)


def sample_categorical(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One draw per row by inverting the CDF with a single uniform.

    Exact, like torch.multinomial, but one random number per row instead of one per
    vocabulary entry: on the CPU multinomial's exponential draws were 60% of decoding.
    With right=True a token of probability zero (a flat CDF step) is never chosen. The CDF
    sums in fp64 (each fp32 probability widens exactly), in one op with no fp64 copy of probs.
    """
    cdf = probs.cumsum(dim=-1, dtype=torch.float64)
    uniform = torch.rand((len(probs), 1), generator=generator, device=probs.device, dtype=torch.float64)
    drawn = torch.searchsorted(cdf, uniform * cdf[:, -1:], right=True).squeeze(-1)
    return drawn.clamp_max(probs.shape[-1] - 1)


def sample(steps, prompts: torch.Tensor, cfg: GenerateConfig, generator: torch.Generator,
           mark: Mark | None = None) -> torch.Tensor:
    """Greedy decoding or sampling, one token per prompt per step: the new tokens [B, new_tokens].

    `mark(logits, previous)`: the watermark's bias (select.Marker), applied after the repetition
    penalty and before temperature and truncation, where transformers runs a LogitsProcessor.
    """
    prompt_len = prompts.shape[1]
    # Each row's prompt, then its tokens as they come: the repetition penalty's seen ids, a prefix of it.
    sequences = torch.cat([prompts, prompts.new_empty((len(prompts), cfg.new_tokens))], dim=1)
    logits = steps.prefill(prompts)
    for step in range(cfg.new_tokens):
        if cfg.repetition_penalty != 1.0:  # on fp32 logits, as generate() applies it
            logits = penalize_seen(logits.float(), sequences[:, : prompt_len + step], cfg.repetition_penalty)
        if mark is not None:
            logits = mark(logits, sequences[:, prompt_len + step - 1])
        token = pick_next(logits, cfg, generator)  # greedy: argmax of bf16 = argmax of its exact fp32 widening
        sequences[:, prompt_len + step] = token
        if step + 1 < cfg.new_tokens:
            logits = steps.step(token, step)
    return sequences[:, prompt_len:]


def beam_search(decoder: TreeDecoder, prompts: torch.Tensor, cfg: GenerateConfig) -> torch.Tensor:
    """transformers' beam search (length_penalty 1, no early stop, no EOS) on the tree cache: [B, new_tokens].

    Each step scores num_beams x vocab continuations per prompt by accumulated log-probability
    (the repetition penalty applies to log-probabilities, as in generate()), keeps the best
    2 x num_beams in order and continues the first num_beams. With no EOS every hypothesis ends
    at the same length, so the answer is the best beam of the last step. After the prefill, each
    step (forward and selection) is one call: on CUDA one graph replay.
    """
    logits = decoder.prefill(prompts).float().repeat_interleave(cfg.num_beams, dim=0)
    if decoder.search is None:
        decoder.search = Beams(prompts, cfg.num_beams, cfg.new_tokens, decoder.cache.ancestry)
    else:
        decoder.search.start(prompts)
    token = decoder.search.advance(logits, cfg.repetition_penalty, step=0)
    for step in range(1, cfg.new_tokens):
        token = beam_step(decoder, decoder.search, token if step == 1 else None, step, cfg.repetition_penalty)
    return decoder.search.best().clone()


def beam_step(decoder: TreeDecoder, beams: Beams, token: torch.Tensor | None, step: int,
              penalty: float) -> torch.Tensor:
    """One beam iteration: feed the tokens chosen at step-1 (written at slot step-1), choose step's. [rows]

    `token` None: the tokens the previous beam_step left in the decoder's input buffer. This is the
    whole per-step work of beam search, captured as one CUDA graph per step index on CUDA (scripts
    count its ops, bytes and FLOPs by calling it once on meta tensors after `decoder.reserve(prompt_len)`).
    """
    return decoder.step(token, step - 1, then=lambda logits: beams.advance(logits, penalty, step))


def logits_width(model: torch.nn.Module) -> int:
    """The vocabulary the model's logits span (the green lists' V; it may exceed the tokenizer's length)."""
    return model.get_output_embeddings().weight.shape[0]


def generate_fallback(model: torch.nn.Module, prompts: torch.Tensor, cfg: GenerateConfig) -> torch.Tensor:
    """Beam search through transformers' generate(), for models without an own decoder."""
    output = model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=cfg.new_tokens,
                            num_beams=cfg.num_beams, do_sample=False, repetition_penalty=cfg.repetition_penalty,
                            num_return_sequences=1, early_stopping=False, length_penalty=1.0)
    return output[:, prompts.shape[1]:]


class ChunkDecoder:
    """Decodes chunks of up to `chunk_rows` prompts of one length.

    On CUDA a short chunk is padded to `chunk_rows` (its filler rows are dropped), so one
    captured graph serves every chunk; the CPU decodes a short chunk at its own size.
    """

    def __init__(self, model: torch.nn.Module, cfg: GenerateConfig, chunk_rows: int, device: torch.device):
        self.model, self.cfg, self.chunk_rows, self.device = model, cfg, chunk_rows, device
        self.own = uses_own_decoder(model, cfg)
        self.decoders: dict[tuple[int, int], TreeDecoder] = {}  # by prompt count and length
        self.marker = Marker(cfg.watermark, logits_width(model), device) if cfg.watermark.enabled else None

    def _decoder(self, n_prompts: int, prompt_len: int) -> TreeDecoder:
        if (n_prompts, prompt_len) not in self.decoders:
            self.decoders[n_prompts, prompt_len] = TreeDecoder(self.model, n_prompts, self.cfg.num_beams,
                                                               self.cfg.new_tokens,
                                                               use_graph=uses_cuda_graph(self.cfg, self.device))
        return self.decoders[n_prompts, prompt_len]

    def __call__(self, prompts: torch.Tensor, generator: torch.Generator,
                 marked: np.ndarray | None = None) -> torch.Tensor:
        """`marked` [prompts]: the rows the watermark marks (generate.watermark; config refuses it for beams)."""
        n_real = len(prompts)
        if self.device.type == "cuda" and self.own and n_real < self.chunk_rows:
            prompts = torch.cat([prompts, prompts[-1:].expand(self.chunk_rows - n_real, -1)])
        mark = None
        if self.marker is not None:
            marked = np.ones(n_real, dtype=bool) if marked is None else marked
            mark = self.marker.bind(np.pad(marked, (0, len(prompts) - n_real)))  # filler rows: unmarked
        with attention_backends(self.device):
            if not self.own:
                if self.cfg.num_beams > 1:
                    return generate_fallback(self.model, prompts, self.cfg)
                return sample(DynamicSteps(self.model), prompts, self.cfg, generator, mark)
            decoder = self._decoder(len(prompts), prompts.shape[1])
            if self.cfg.num_beams > 1:
                return beam_search(decoder, prompts, self.cfg)[:n_real]
            return sample(decoder, prompts, self.cfg, generator, mark)[:n_real]
