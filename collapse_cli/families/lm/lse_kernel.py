"""Each row's log-sum-exp of the logits in one pass: a Triton kernel on CUDA, torch elsewhere.

Beam search needs log-probabilities only for its few candidates, so it needs, per row, one
number: log sum exp(logits). torch.logsumexp makes four passes over [rows, vocab] (max,
subtract, exp, sum) and, for bf16 logits, an fp32 copy first. The kernel reads the logits once,
in their own dtype, keeping a running max and sum per lane in fp32 (an online softmax), so the
selection's only passes over [rows, vocab] are this read and one top-k.
"""

from __future__ import annotations

import torch

try:  # Triton ships with CUDA builds of torch; a CPU install may lack it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None

BLOCK = 1024


# One op to torch (a custom op): the same single read of [rows, V] to whoever counts ops on meta tensors.
@torch.library.custom_op("collapse::row_logsumexp", mutates_args=())
def row_logsumexp(logits: torch.Tensor) -> torch.Tensor:
    """[rows, V] in any float dtype -> [rows, 1] fp32."""
    if logits.is_cuda and triton is not None:
        return triton_row_logsumexp(logits)
    return torch.logsumexp(logits.float(), dim=-1, keepdim=True)


@row_logsumexp.register_fake
def _(logits: torch.Tensor) -> torch.Tensor:
    return logits.new_empty((logits.shape[0], 1), dtype=torch.float32)


def triton_row_logsumexp(logits: torch.Tensor) -> torch.Tensor:
    """The kernel's answer; on a CPU tensor it runs only under TRITON_INTERPRET=1 (the tests' reference check)."""
    assert logits.dim() == 2 and logits.stride(1) == 1
    out = torch.empty((logits.shape[0], 1), dtype=torch.float32, device=logits.device)
    _row_logsumexp[(logits.shape[0],)](logits, out, logits.shape[1], logits.stride(0), BLOCK=BLOCK)
    return out


if triton is not None:

    @triton.jit
    def _row_logsumexp(logits, out, vocab, row_stride, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        start_of_row = logits + row * row_stride
        lane_max = tl.full([BLOCK], float("-inf"), tl.float32)
        lane_sum = tl.zeros([BLOCK], tl.float32)
        for start in range(0, vocab, BLOCK):
            columns = start + tl.arange(0, BLOCK)
            x = tl.load(start_of_row + columns, mask=columns < vocab, other=float("-inf")).to(tl.float32)
            new_max = tl.maximum(lane_max, x)
            # A lane that has seen only -inf (the padding past the vocabulary) keeps sum 0, not exp(nan).
            alive = new_max > float("-inf")
            lane_sum = tl.where(alive, lane_sum * tl.exp(lane_max - new_max) + tl.exp(x - new_max), 0.0)
            lane_max = new_max
        row_max = tl.max(lane_max, axis=0)
        total = tl.sum(tl.where(lane_max > float("-inf"), lane_sum * tl.exp(lane_max - row_max), 0.0), axis=0)
        tl.store(out + row, tl.log(total) + row_max)
