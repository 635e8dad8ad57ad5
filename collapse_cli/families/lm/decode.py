"""The project's own decoder: one preallocated KV cache, prompts computed once, fixed-shape steps.

One decoding batch:
    prefill   the B prompts once, through the model's own forward
    expand    their KV into a transformers StaticCache of B*beams rows and prompt+new_tokens positions
    step      one token per row: the model's forward on that cache under a full-length boolean mask,
              so every step has the same shapes (CUDA replays it as a graph), then the selection:
              greedy, sampling, or 5-beam search with a repetition penalty
Beam search reorders only the generated positions written so far: the prompt's KV, identical in a
prompt's beams, never moves. The repetition-penalty state is a boolean [rows, vocab] mask
updated in place. Models other than OPT, GPT-2 and Llama use transformers' dynamic cache
(sampling, greedy) and generate() (beam search), as `describe` says in the run's plan.
"""

from __future__ import annotations

import contextlib
import logging

import torch

from collapse_cli.config import GenerateConfig

log = logging.getLogger("collapse")

ARCHITECTURES = ("opt", "gpt2", "llama")
# Beam search keeps 2 * num_beams candidates per prompt, as transformers does, so tie order matches it.
CANDIDATES_PER_BEAM = 2


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
        return f"own static-cache decoder ({model.config.model_type}{graph})"
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


class StaticDecoder:
    """A fixed number of rows decoded over a StaticCache of prompt_len + new_tokens positions."""

    def __init__(self, model: torch.nn.Module, rows: int, prompt_len: int, new_tokens: int, use_graph: bool):
        from transformers import StaticCache

        parameter = next(model.parameters())
        self.model, self.rows, self.prompt_len = model, rows, prompt_len
        self.cache = StaticCache(config=model.config, max_cache_len=prompt_len + new_tokens)
        self.tokens = torch.zeros((rows, 1), dtype=torch.long, device=parameter.device)  # the next step's input
        self.position = torch.zeros((), dtype=torch.long, device=parameter.device)  # where that token sits
        self.key_positions = torch.arange(prompt_len + new_tokens, device=parameter.device)
        # Eager attention adds its mask; SDPA takes a boolean one (True: attend).
        self.additive = model.config._attn_implementation == "eager"
        mask_dtype = parameter.dtype if self.additive else torch.bool
        self.mask_row = torch.zeros(prompt_len + new_tokens, dtype=mask_dtype, device=parameter.device)
        self.mask = self.mask_row.view(1, 1, 1, -1).expand(rows, 1, 1, -1)
        self.use_graph, self.graph, self.logits = use_graph, None, None

    def prefill(self, prompts: torch.Tensor, repeat: int) -> torch.Tensor:
        """Run the prompts once; copy their KV into the cache, each row `repeat` times. Last logits [B, V]."""
        assert len(prompts) * repeat == self.rows and prompts.shape[1] == self.prompt_len
        output = self.model(input_ids=prompts, use_cache=True, logits_to_keep=1)
        for layer, prompt_layer in zip(self.cache.layers, output.past_key_values.layers):
            keys = prompt_layer.keys.repeat_interleave(repeat, dim=0)
            values = prompt_layer.values.repeat_interleave(repeat, dim=0)
            if not layer.is_initialized:
                layer.lazy_initialization(keys, values)
            layer.keys[:, :, : self.prompt_len].copy_(keys)
            layer.values[:, :, : self.prompt_len].copy_(values)
            layer.cumulative_length.fill_(self.prompt_len)
        self.position.fill_(self.prompt_len)
        return output.logits[:, -1]

    def _forward(self) -> torch.Tensor:
        allowed = self.key_positions <= self.position
        if self.additive:
            self.mask_row.copy_((~allowed).to(self.mask_row.dtype) * torch.finfo(self.mask_row.dtype).min)
        else:
            self.mask_row.copy_(allowed)
        output = self.model(input_ids=self.tokens, attention_mask=self.mask,
                            position_ids=self.position.view(1, 1).expand(self.rows, 1),
                            past_key_values=self.cache, use_cache=True)
        self.position.add_(1)
        return output.logits[:, -1]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row; next-token logits [rows, V] (a buffer the next step overwrites)."""
        self.tokens.copy_(tokens.view(-1, 1))
        if self.graph is not None:
            self.graph.replay()
            return self.logits
        if self.use_graph and self.logits is not None and self._capture():
            self.graph.replay()
            return self.logits
        # Eager; on CUDA the first step also warms up the kernels the graph then records.
        self.logits = self._forward()
        return self.logits

    def _capture(self) -> bool:
        """Record one step (nothing runs while recording); False, and eager from then on, if it cannot be."""
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.logits = self._forward()
        except RuntimeError as err:  # e.g. a forward that syncs with the host
            log.warning("decoder: CUDA graph capture failed (%s); decoding eagerly", str(err).splitlines()[0][:120])
            self.use_graph = False
            return False
        self.graph = graph
        return True

    def reorder_generated(self, source_rows: torch.Tensor, written: int) -> None:
        """Beam search: row i of the generated span becomes row source_rows[i]; the prompt span stays.

        Only the `written` positions that hold keys yet move: the rest are masked until a step writes them.
        That halves the bytes moved over a decode, and the reorder is the step's biggest memory traffic.
        """
        if written == 0:
            return
        end = self.prompt_len + written
        for layer in self.cache.layers:
            for cached in (layer.keys, layer.values):
                generated = cached[:, :, self.prompt_len:end]
                generated.copy_(generated.index_select(0, source_rows))


class DynamicSteps:
    """Fallback for other causal LMs: transformers' growing cache (sampling and greedy only)."""

    def __init__(self, model: torch.nn.Module):
        self.model, self.cache = model, None

    def prefill(self, prompts: torch.Tensor, repeat: int) -> torch.Tensor:
        assert repeat == 1
        output = self.model(input_ids=prompts, use_cache=True)
        self.cache = output.past_key_values
        return output.logits[:, -1]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        output = self.model(input_ids=tokens.view(-1, 1), past_key_values=self.cache, use_cache=True)
        self.cache = output.past_key_values
        return output.logits[:, -1]


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
    """CTRL's repetition penalty (as in transformers): shrink the scores of tokens already present."""
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def prompt_mask(prompts: torch.Tensor, vocab_size: int) -> torch.Tensor:
    return torch.zeros((len(prompts), vocab_size), dtype=torch.bool, device=prompts.device).scatter_(1, prompts, True)


def sample(steps, prompts: torch.Tensor, cfg: GenerateConfig, generator: torch.Generator) -> torch.Tensor:
    """Greedy decoding or sampling, one token per prompt per step: the new tokens [B, new_tokens]."""
    new_tokens = torch.empty((len(prompts), cfg.new_tokens), dtype=torch.long, device=prompts.device)
    logits = steps.prefill(prompts, repeat=1).float()
    seen = prompt_mask(prompts, logits.shape[-1]) if cfg.repetition_penalty != 1.0 else None
    for step in range(cfg.new_tokens):
        if seen is not None:
            logits = penalize_repeats(logits, seen, cfg.repetition_penalty)
        token = pick_next(logits, cfg, generator)
        new_tokens[:, step] = token
        if seen is not None:
            seen.scatter_(1, token[:, None], True)
        if step + 1 < cfg.new_tokens:
            logits = steps.step(token).float()
    return new_tokens


def beam_search(decoder: StaticDecoder, prompts: torch.Tensor, cfg: GenerateConfig) -> torch.Tensor:
    """transformers' beam search (length_penalty 1, no early stop, no EOS), on a static cache: [B, new_tokens].

    Each step scores num_beams x vocab continuations per prompt by accumulated log-probability
    (the repetition penalty applies to log-probabilities, as in generate()), keeps the best
    2 x num_beams in order and continues the first num_beams. With no EOS every hypothesis ends
    at the same length, so the answer is the best beam of the last step.
    """
    n_prompts, beams, device = len(prompts), cfg.num_beams, prompts.device
    logits = decoder.prefill(prompts, repeat=beams).float().repeat_interleave(beams, dim=0)
    vocab = logits.shape[-1]
    # Only beam 0 is alive at the start, so the first step picks num_beams distinct tokens.
    running = torch.zeros((n_prompts, beams), device=device)
    running[:, 1:] = -1e9
    seen = prompt_mask(prompts, vocab).repeat_interleave(beams, dim=0) if cfg.repetition_penalty != 1.0 else None
    history = torch.zeros((n_prompts * beams, cfg.new_tokens), dtype=torch.long, device=device)
    row_base = (torch.arange(n_prompts, device=device) * beams)[:, None]
    for step in range(cfg.new_tokens):
        log_probs = torch.log_softmax(logits, dim=-1)
        if seen is not None:
            log_probs = penalize_repeats(log_probs, seen, cfg.repetition_penalty)
        scores = (log_probs.view(n_prompts, beams, vocab) + running[:, :, None]).view(n_prompts, beams * vocab)
        best, index = torch.topk(scores, CANDIDATES_PER_BEAM * beams, dim=1)
        best, index = best[:, :beams], index[:, :beams]
        source = (index // vocab + row_base).view(-1)
        token = (index % vocab).view(-1)
        running.copy_(best)
        history.copy_(history.index_select(0, source))
        history[:, step] = token
        if step + 1 == cfg.new_tokens:
            break
        if seen is not None:
            seen.copy_(seen.index_select(0, source))
            seen.scatter_(1, token[:, None], True)
        decoder.reorder_generated(source, written=step)  # steps 0..step-1 wrote positions P..P+step-1
        logits = decoder.step(token).float()
    # topk sorts, so beam 0 of each prompt holds the best score.
    return history.view(n_prompts, beams, -1)[:, 0]


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
        self.decoders: dict[int, StaticDecoder] = {}  # by prompt count

    def _decoder(self, n_prompts: int, prompt_len: int) -> StaticDecoder:
        if n_prompts not in self.decoders:
            self.decoders[n_prompts] = StaticDecoder(self.model, n_prompts * self.cfg.num_beams, prompt_len,
                                                     self.cfg.new_tokens,
                                                     use_graph=uses_cuda_graph(self.cfg, self.device))
        return self.decoders[n_prompts]

    def __call__(self, prompts: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        with attention_backends(self.device):
            if not self.own:
                if self.cfg.num_beams > 1:
                    return generate_fallback(self.model, prompts, self.cfg)
                return sample(DynamicSteps(self.model), prompts, self.cfg, generator)
            n_real = len(prompts)
            if self.device.type == "cuda" and n_real < self.chunk_rows:
                prompts = torch.cat([prompts, prompts[-1:].expand(self.chunk_rows - n_real, -1)])
            decoder = self._decoder(len(prompts), prompts.shape[1])
            if self.cfg.num_beams > 1:
                return beam_search(decoder, prompts, self.cfg)[:n_real]
            return sample(decoder, prompts, self.cfg, generator)[:n_real]
