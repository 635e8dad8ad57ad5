"""The decoder's KV cache: nothing in it ever moves.

    prompt KV      [layers, prompts, kv heads, prompt_len, head_dim]: once per prompt, shared by its beams
    generated KV   [layers, prompts, kv heads, new_tokens, beams, head_dim]: slot t of physical row r is
                   written once, by the step that feeds row r's token at position t. Position-major,
                   so the live positions of a prompt's rows are one contiguous [live x beams, dim] block
    ancestry       [rows, new_tokens]: which of its prompt's rows (0..beams-1) holds position t of row r's
                   sequence. Beam search reorders this small table instead of the KV.

A step's attention, per prompt and KV head, serves all beams x query heads of that group at once,
in one matmul against the prompt's single KV copy and one against the live generated block
(positions written so far, never more) of all the group's rows; each query keeps, per position,
the score of the row its ancestry names (the others get weight 0). So each byte of KV is read
once per step and GQA's shared heads are never repeated.

The model's own forward runs the step (projections, norms, MLP, rotary) with this attention
plugged in through transformers' AttentionInterface; a custom attention gets no mask from
transformers (its mask builders only know their own kernels), and it needs none.
"""

from __future__ import annotations

import contextlib

import torch

ATTENTION = "collapse_tree"
_active: TreeCache | None = None  # the cache the step now running attends over (set by `attending`)


class TreeCache:
    """Buffers for one chunk shape; a new chunk overwrites the prompt KV and rewrites the generated slots."""

    def __init__(self, config, n_prompts: int, beams: int, prompt_len: int, new_tokens: int,
                 dtype: torch.dtype, device: torch.device):
        heads = config.num_attention_heads
        heads_kv = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        like = {"dtype": dtype, "device": device}
        self.beams, self.prompt_len, self.query_heads = beams, prompt_len, heads
        self.prompt_keys = torch.zeros((config.num_hidden_layers, n_prompts, heads_kv, prompt_len, head_dim), **like)
        self.prompt_values = torch.zeros_like(self.prompt_keys)
        self.keys = torch.zeros((config.num_hidden_layers, n_prompts, heads_kv, new_tokens, beams, head_dim), **like)
        self.values = torch.zeros_like(self.keys)
        self.ancestry = torch.zeros((n_prompts * beams, new_tokens), dtype=torch.long, device=device)
        # Each query's generated weights, placed at the row its ancestry names and zero at the other rows:
        # [prompts, kv heads, queries, new_tokens, beams]. Zeroed once a step; every layer then writes the
        # same (chosen) entries, so the zeros hold for all layers (a per-layer `where` wrote all entries).
        self.spread = torch.zeros((n_prompts, heads_kv, beams * (heads // heads_kv), new_tokens, beams), **like)
        self.slot = 0  # the generated position the running step writes; it attends to slots 0..slot
        self.source = None  # per step: the ancestry as a gather index over the group's rows (see `prepare`)

    def load_prompts(self, keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        for layer, (layer_keys, layer_values) in enumerate(zip(keys, values)):
            self.prompt_keys[layer].copy_(layer_keys)
            self.prompt_values[layer].copy_(layer_values)
        self.ancestry.zero_()

    def prepare(self, slot: int) -> None:
        """Before a step's forward: the index each layer's attention picks generated scores with; spread zeroed."""
        self.slot = slot
        _, n_prompts, heads_kv, _, _ = self.prompt_keys.shape
        beams, live, query_heads_per_kv = self.beams, slot + 1, self.query_heads // heads_kv
        # source[b, 0, (k, g), t, 0] = ancestry[b * beams + k, t], for every query head g of the KV head group.
        source = self.ancestry[:, :live].view(n_prompts, beams, 1, live)
        source = source.expand(n_prompts, beams, query_heads_per_kv, live)
        self.source = source.reshape(n_prompts, 1, beams * query_heads_per_kv, live, 1)
        self.spread[:, :, :, :live].zero_()


def tree_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   attention_mask, scaling: float | None = None, dropout: float = 0.0, **kwargs):
    """One decode step's attention (transformers' attention-function signature). Returns [rows, 1, heads, dim].

    Inside the model the rows are beam-major (row = beam x prompts + prompt; TreeDecoder feeds them so):
    then a [rows, heads x dim] activation, seen as [prompts x heads, beams, dim], is one strided batch
    of matrices (batch stride head_dim, leading dimension prompts x hidden), so the batched matmuls read
    the queries and write the output where the model keeps them, with no reordering copy.
    """
    cache, layer = _active, module.layer_idx
    rows, heads, _, head_dim = query.shape
    _, n_prompts, heads_kv, prompt_len, _ = cache.prompt_keys.shape
    beams, group, live = cache.beams, heads // heads_kv, cache.slot + 1
    queries, batch = beams * group, n_prompts * heads_kv
    scaling = head_dim ** -0.5 if scaling is None else scaling
    # Write this token's key and value into its own row's slot: the cache's only write.
    for new, store in ((key, cache.keys), (value, cache.values)):
        store[layer, :, :, cache.slot] = new.reshape(beams, n_prompts, heads_kv, head_dim).permute(1, 2, 0, 3)
    # Queries of one prompt and KV head: beams x group of them, ordered (beam, head in group). Read where
    # they are when the model scaled them itself (OPT) and has no GQA; else written once, scaled, into a
    # block (GQA's (beam, head) pairs are no single stride).
    grouped = query.reshape(beams, n_prompts, heads_kv, group, head_dim).permute(1, 2, 0, 3, 4)
    if scaling != 1.0:
        batched_q = torch.mul(grouped, scaling, out=query.new_empty(grouped.shape)).view(batch, queries, head_dim)
    else:
        batched_q = grouped.reshape(batch, queries, head_dim)  # a view without GQA, a copy with it
    # The prompt's scores and each query's own generated scores, written side by side into one buffer
    # (bmm and gather write into its slices, as cuBLAS and TensorIterator do in place): no cat after.
    scores = torch.empty((batch, queries, prompt_len + live), dtype=query.dtype, device=query.device)
    prompt_keys = cache.prompt_keys[layer].view(batch, prompt_len, head_dim)
    torch.bmm(batched_q, prompt_keys.transpose(1, 2), out=scores[:, :, :prompt_len])
    live_keys = cache.keys[layer, :, :, :live].view(batch, live * beams, head_dim)
    every_row = torch.bmm(batched_q, live_keys.transpose(1, 2)).view(n_prompts, heads_kv, queries, live, beams)
    source = cache.source.expand(n_prompts, heads_kv, queries, live, 1)
    torch.gather(every_row, -1, source, out=scores[:, :, prompt_len:].view(n_prompts, heads_kv, queries, live, 1))
    # Softmax in the scores' dtype: it accumulates in fp32 inside and writes bf16 weights once, where an
    # fp32 output then a cast wrote and read them twice more (fp32 on the CPU: the very same op).
    weights = scores.softmax(dim=-1)
    # Each query's weight placed at the row its ancestry names (zero at the others): one matmul for all rows.
    spread = cache.spread[:, :, :, :live]
    spread.scatter_(-1, source, weights[:, :, prompt_len:].view(n_prompts, heads_kv, queries, live, 1))
    # The prompt's values, then the generated ones accumulated onto them (beta = 1: no separate add),
    # straight into the model's [rows, 1, heads, dim] layout without GQA; with it, into a block copied once.
    # The sum is rounded once, where two products then an add rounded three times: in fp32 the tokens
    # stayed the same in every case tried, in bf16 they can differ from that older form's (neither is
    # transformers' SDPA summation order, which no exactness test holds bf16 to).
    out = torch.empty((rows, 1, heads, head_dim), dtype=query.dtype, device=query.device)
    in_groups = out.view(beams, n_prompts, heads_kv, group, head_dim).permute(1, 2, 0, 3, 4)
    total = in_groups.view(batch, queries, head_dim) if group == 1 else query.new_empty((batch, queries, head_dim))
    torch.bmm(weights[:, :, :prompt_len], cache.prompt_values[layer].view(batch, prompt_len, head_dim), out=total)
    live_values = cache.values[layer, :, :, :live].view(batch, live * beams, head_dim)
    total.baddbmm_(spread.view(batch, queries, live * beams), live_values)
    if group != 1:
        in_groups.copy_(total.view(in_groups.shape))
    return out, None


def register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION, tree_attention)


@contextlib.contextmanager
def attending(model: torch.nn.Module, cache: TreeCache):
    """The model's forward, while inside, attends over `cache` through `tree_attention`."""
    global _active
    register()
    before, _active = model.config._attn_implementation, cache
    model.config._attn_implementation = ATTENTION
    try:
        yield
    finally:
        model.config._attn_implementation, _active = before, None
