"""Roofline of one beam-decode step and one training step, counted without a GPU.

The project's own code runs on tensors that hold no data (the meta device for decoding, FakeTensorMode
for training), under a TorchDispatchMode that records every aten op it launches: the bytes it reads
and writes (from shapes, dtypes and strides: a broadcast dimension is read once) and its FLOPs (matrix
multiplies and attention). Nothing is allocated, so the default shape costs what a tiny one does.

Decoding: `ChunkDecoder(model, cfg, chunk_prompts, device)(prompts, generator)` from families/lm/decode.py,
the call generate() makes for each chunk, on the OPT-125m shape (transformers' OPTConfig defaults, bf16
weights), 1,024 prompts x 5 beams = 5,120 rows, 64-token prompts, 64 new tokens, repetition penalty 3.
A forward pre-hook on the input embedding splits the trace: call 0 is the prompts' prefill, call s >= 1
the step that feeds the token chosen at step s-1. A step's ops run from its embedding call to the next
(its layers, then its selection and any cache reorder); figures per row and step average the
new_tokens - 1 such steps. On the meta device the decoder takes its non-CUDA path (no CUDA graph; a
Triton kernel's torch reference), so what is counted is that path's ops. Gates (tests/test_roofline.py)
read these classes of ops in the steps:
    kv cache     a storage that an op writes KV-shaped data into in place ([.., kv_heads, L, head_dim] or
                 [.., L, kv_heads, head_dim])
    kv_write     writing freshly computed keys or values into a cache (the step's new position)
    kv_copy      a copy, gather, cat or index op that reads a cache (or a copy of one): a beam reorder
    attention    scaled_dot_product_attention, an op whose name holds "attention", or a matrix multiply
                 that reads a cache. A step reads unwritten slots when its attention reads more cache
                 bytes than all kv_writes so far wrote (each written slot read once a step is the most)
    vocab        an op that touches a tensor of at least prompts x V elements whose last dim is a multiple
                 of V (logits, log-probs, scores over beams x V, a [rows, V] mask) and moves at least
                 prompts x V bytes (a gather of a few ids per row is no pass); the LM head's GEMM (class
                 lm_head) counts as one more pass over [rows, V]
Training: collapse_cli.families.lm.train.train on FakeTensorMode CPU tensors, bf16 autocast (the CPU
autocast policy stands in for the CUDA one that train() enables on CUDA only: matmuls and attention in
bf16 either way), fp32 master weights, eager (train.compile=false). One step is the difference between
train() over two batches and over one, so set-up and the optimizer's first-step state are left out.
Eager counting is an upper bound on the bytes of a compiled step (inductor fuses elementwise ops), and
the optimizer is the CPU's (per-parameter ops; CUDA's fused AdamW reads and writes the same tensors once).

Floors: time = max(bytes / bandwidth, FLOPs / bf16 dense peak); H100 SXM 3.35 TB/s, H200 4.8 TB/s,
989 TFLOP/s both. Beam search writes one token per prompt per step, so its tok/s counts prompts, not rows.

    python scripts/roofline.py                  # table
    python scripts/roofline.py --json           # one JSON object
    python scripts/roofline.py --prompts 64 --new-tokens 8 --json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from unittest import mock

import numpy as np
import torch
import torch.utils.flop_counter as flop_counter
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode

DEVICES = {"h100": {"bandwidth": 3.35e12, "flops": 989e12}, "h200": {"bandwidth": 4.8e12, "flops": 989e12}}
aten = torch.ops.aten
# Ops that launch nothing: allocation without a fill, and shape queries.
NO_LAUNCH = {aten.empty.memory_format, aten.empty_strided.default, aten.empty_like.default,
             aten._local_scalar_dense.default}
# Ops that write only what they are given (their destination's other elements are neither read nor written).
WRITE_ONLY_DEST = {"copy_", "fill_", "zero_", "index_copy_", "index_put_", "scatter_", "_index_put_impl_",
                   "index_fill_", "masked_scatter_", "_foreach_copy_"}
# Ops that read only the slice of their first input that their output holds.
GATHERS = {"index_select", "gather", "embedding", "index", "take"}
MOVES = {"copy_", "index_select", "index_copy_", "index_copy", "gather", "index", "index_put_", "index_put",
         "_index_put_impl_", "clone", "contiguous", "cat", "repeat_interleave", "_to_copy", "scatter", "scatter_",
         "take", "stack", "expand_copy", "narrow_copy", "slice_scatter", "select_scatter", "roll", "_unsafe_index"}
GEMMS = {"linear", "mm", "addmm", "addmm_", "_addmm_activation", "bmm", "baddbmm", "baddbmm_", "matmul"}


@dataclass(frozen=True)
class Shape:
    """The workload: model dims (OPTConfig's defaults are facebook/opt-125m) and the decode/training sizes."""

    hidden: int = 768
    layers: int = 12
    heads: int = 12
    ffn: int = 3072
    vocab: int = 50272
    prompts: int = 1024
    beams: int = 5
    prompt_len: int = 64
    new_tokens: int = 64
    repetition_penalty: float = 3.0
    train_batch: int = 128
    block: int = 64

    @property
    def rows(self) -> int:
        return self.prompts * self.beams

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


@dataclass
class Op:
    name: str
    phase: int
    read: int
    written: int
    flops: int
    kind: str
    kv_bytes: int = 0  # bytes an attention op reads from KV caches, or a kv_write writes into one
    span: tuple | None = None  # (start, end) marks from the Recorder's clock, when it has one

    @property
    def bytes(self) -> int:
        return self.read + self.written


@dataclass
class Trace:
    ops: list[Op] = field(default_factory=list)
    phase: int = 0
    in_optimizer: bool = False


def tensors_in(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in tensors_in(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in tensors_in(item)]
    return []


def unique_bytes(tensor: torch.Tensor) -> int:
    """Bytes of the distinct elements a tensor covers: a stride-0 (broadcast) dimension is read once."""
    elements = 1
    for size, stride in zip(tensor.shape, tensor.stride()):
        if stride != 0:
            elements *= size
    return elements * tensor.element_size()


def storage_key(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage()._cdata


def op_base(func) -> str:
    return func._schema.name.split("::")[-1]


def is_alias(func, inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> bool:
    """A view, or an op that hands back its input (dropout in eval, contiguous on a contiguous tensor)."""
    if func._schema.is_mutable or not outputs:
        return False
    held = {storage_key(t) for t in inputs}
    return all(storage_key(t) in held for t in outputs)


def op_bytes(func, args, kwargs, outputs: list[torch.Tensor]) -> tuple[int, int]:
    """(bytes read, bytes written) of one op."""
    base = op_base(func)
    # An out= argument is written, not read.
    out_names = {argument.name for argument in func._schema.arguments if argument.is_out}
    inputs = tensors_in(args) + tensors_in({k: v for k, v in kwargs.items() if k not in out_names})
    if base in WRITE_ONLY_DEST and inputs:
        destination, sources = inputs[0], inputs[1:]
        if base in ("copy_", "fill_", "zero_", "index_fill_"):
            written = unique_bytes(destination)
        else:  # index_copy_/index_put_/scatter_: as many elements as the index or values carry
            largest = max((t.numel() for t in sources), default=0)
            written = largest * destination.element_size()
        return sum(unique_bytes(t) for t in sources), written
    written = sum(unique_bytes(t) for t in outputs)
    if base in GATHERS and inputs:
        # embedding(weight, ids) reads the weight rows the output holds; index_select(x, dim, ids) likewise.
        table, rest = (inputs[0], inputs[1:])
        gathered = sum(t.numel() for t in outputs) * table.element_size()
        return gathered + sum(unique_bytes(t) for t in rest), written
    return sum(unique_bytes(t) for t in inputs), written


def op_flops(func, args, kwargs, out) -> int:
    """FLOPs of matrix multiplies and attention (torch's flop_counter formulas, plus the composites it lacks)."""
    base = op_base(func)
    packet = func.overloadpacket
    if base.endswith("_") and hasattr(aten, base[:-1]):  # in place (baddbmm_): the FLOPs of its out-of-place form
        packet = getattr(aten, base[:-1])
    if packet in flop_counter.flop_registry:
        return int(flop_counter.flop_registry[packet](*args, **(kwargs or {}), out_val=out))
    if base == "linear":
        x, weight = args[0], args[1]
        return 2 * (x.numel() // x.shape[-1]) * weight.shape[0] * weight.shape[1]
    if base == "_addmm_activation":  # addmm with its activation in the epilogue: (bias, x, weight^T)
        x, weight_t = args[1], args[2]
        return 2 * x.shape[0] * x.shape[1] * weight_t.shape[1]
    if base == "matmul":
        return 2 * out.numel() * args[0].shape[-1]
    if "attention" in base:
        # QK^T and PV: 2 matmuls forward, 4 backward (dV, dP, dQ, dK).
        q, k = query_and_key(func, args)
        return (8 if "backward" in base else 4) * (q.numel() // q.shape[-1]) * k.shape[-2] * q.shape[-1]
    return 0


def query_and_key(func, args) -> tuple[torch.Tensor, torch.Tensor]:
    """An attention op's query and key: its first two tensors (after grad_out in a backward op)."""
    tensors = tensors_in(args)
    first = 1 if "backward" in op_base(func) else 0
    return tensors[first], tensors[first + 1]


class Classifier:
    """Sorts ops into the roofline's classes from their tensors' shapes and where their data came from.

    A KV cache is any storage an op writes KV-shaped data into in place. An op that reads a cache (or
    what was copied out of one) is attention when it is a matrix multiply (or SDPA, or named *attention*),
    and a kv_copy when it moves data (a beam reorder, a prompt's KV repeated per beam). Writing freshly
    projected keys or values into a cache is a kv_write (the step's one new position).
    """

    def __init__(self, shape: Shape, kv_heads: int):
        self.shape, self.kv_heads = shape, kv_heads
        # Weak references: on a GPU, holding every reorder's copy alive would fill its memory; and a freed
        # storage whose address a new one takes must not pass for a cache.
        self.caches: dict[int, StorageWeakRef] = {}
        self.from_cache: dict[int, StorageWeakRef] = {}

    def is_kv(self, tensor: torch.Tensor) -> bool:
        """KV-shaped: [.., kv_heads, L, head_dim] or [.., L, kv_heads, head_dim]."""
        dims = tuple(tensor.shape)
        return len(dims) >= 4 and dims[-1] == self.shape.head_dim and self.kv_heads in (dims[-3], dims[-2])

    def over_vocab(self, tensor: torch.Tensor) -> bool:
        vocab = self.shape.vocab
        return (tensor.dim() >= 1 and tensor.shape[-1] > 0 and tensor.shape[-1] % vocab == 0
                and tensor.numel() >= self.shape.prompts * vocab)

    def cached(self, tensor: torch.Tensor) -> bool:
        key = storage_key(tensor)
        return any(key in held and not held[key].expired() for held in (self.caches, self.from_cache))

    def in_cache(self, tensor: torch.Tensor) -> bool:
        key = storage_key(tensor)
        return key in self.caches and not self.caches[key].expired()

    def kv_read(self, inputs: list[torch.Tensor]) -> int:
        """Bytes an op reads from KV caches and their copies."""
        return sum(unique_bytes(t) for t in inputs if self.cached(t))

    def kv_class(self, func, inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> str | None:
        base = op_base(func)
        if base not in MOVES:
            return None
        in_place = func._schema.is_mutable and inputs
        destination, sources = (inputs[0], inputs[1:]) if in_place else (None, inputs)
        copies = any(self.cached(t) for t in sources)
        if destination is not None and (self.is_kv(destination) or self.in_cache(destination)):
            self.caches[storage_key(destination)] = StorageWeakRef(destination.untyped_storage())
            return "kv_copy" if copies else "kv_write"
        if copies:
            for tensor in outputs:
                self.from_cache[storage_key(tensor)] = StorageWeakRef(tensor.untyped_storage())
            return "kv_copy"
        return None

    def __call__(self, func, inputs: list[torch.Tensor], outputs: list[torch.Tensor], moved: int) -> str:
        """`moved`: the op's bytes read and written. A pass over [rows, V] moves at least a byte per entry of
        [prompts, V]; a gather or scatter of a few ids per row touches a vocab-sized tensor but is no pass."""
        base = op_base(func)
        if "attention" in base or (base in GEMMS and any(self.cached(t) for t in inputs)):
            return "attention"
        kv = self.kv_class(func, inputs, outputs)
        if kv is not None:
            return kv
        if moved >= self.shape.prompts * self.shape.vocab and any(self.over_vocab(t) for t in inputs + outputs):
            return "lm_head" if base in GEMMS else "vocab"
        if base in GEMMS:
            return "gemm"
        return "other"


def holds_no_data(tensor: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return tensor.is_meta or isinstance(tensor, FakeTensor)


class Recorder(TorchDispatchMode):
    """Records every launched aten op into `trace`; answers what meta tensors cannot (a scalar read, a copy
    to the host) with a placeholder, since nothing here depends on the values."""

    def __init__(self, trace: Trace, classify: Classifier, clock=None):
        super().__init__()
        self.trace, self.classify, self.clock = trace, classify, clock

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is aten._local_scalar_dense.default and holds_no_data(args[0]):
            return 1  # e.g. float(loss): train() checks that the loss is finite
        if func is aten._to_copy.default and kwargs.get("device") == torch.device("cpu") and args[0].is_meta:
            return torch.zeros(args[0].shape, dtype=kwargs.get("dtype") or args[0].dtype)
        start = self.clock() if self.clock else None
        out = func(*args, **kwargs)
        span = (start, self.clock()) if self.clock else None
        inputs, outputs = tensors_in(args) + tensors_in(kwargs), tensors_in(out)
        mutates = func._schema.is_mutable
        if func in NO_LAUNCH or not (outputs or mutates) or is_alias(func, inputs, outputs):
            return out  # a view, a query (tensor.device under fake tensors), or nothing launched
        read, written = op_bytes(func, args, kwargs, outputs)
        kind = "optimizer" if self.trace.in_optimizer else self.classify(func, inputs, outputs, read + written)
        kv_bytes = written if kind == "kv_write" else self.classify.kv_read(inputs) if kind == "attention" else 0
        self.trace.ops.append(Op(op_base(func), self.trace.phase, read, written,
                                 op_flops(func, args, kwargs, out), kind, kv_bytes, span))
        return out


def opt_config(shape: Shape):
    from transformers import OPTConfig

    return OPTConfig(vocab_size=shape.vocab, hidden_size=shape.hidden, num_hidden_layers=shape.layers,
                     num_attention_heads=shape.heads, ffn_dim=shape.ffn, word_embed_proj_dim=shape.hidden,
                     max_position_embeddings=max(2048, shape.prompt_len + shape.new_tokens), dropout=0.0,
                     attention_dropout=0.0)


def count_phases(model: torch.nn.Module, trace: Trace):
    """Each call of the input embedding starts a phase: 0 the prefill, s the step that feeds token s-1."""
    calls = {"n": 0}

    def start_phase(module, args):
        trace.phase = calls["n"]
        calls["n"] += 1

    return model.get_input_embeddings().register_forward_pre_hook(start_phase)


def beam_config(shape: Shape):
    from collapse_cli.families.lm.config import GenerateConfig

    return GenerateConfig(preset="shumailov", do_sample=False, num_beams=shape.beams,
                          repetition_penalty=shape.repetition_penalty, prompt_tokens=shape.prompt_len,
                          new_tokens=shape.new_tokens, batch_size=shape.rows, cuda_graph=False)


def record_chunk(model: torch.nn.Module, cfg, prompts: torch.Tensor, shape: Shape, clock=None) -> Trace:
    """Decode one chunk of prompts as generate() does (ChunkDecoder, inference mode), every op recorded.
    `model` is what decoding runs on (bf16 on CUDA): the phase hook sits on its input embedding."""
    from collapse_cli.families.lm.decode import ChunkDecoder

    trace = Trace()
    classify = Classifier(shape, getattr(model.config, "num_key_value_heads", None) or shape.heads)
    hook = count_phases(model, trace)
    generator = torch.Generator(prompts.device if prompts.device.type != "meta" else "cpu").manual_seed(0)
    try:
        with torch.inference_mode(), Recorder(trace, classify, clock):
            ChunkDecoder(model, cfg, len(prompts), prompts.device)(prompts, generator)
    finally:
        hook.remove()
    return trace


def trace_decode(shape: Shape) -> Trace:
    from transformers import OPTForCausalLM

    with torch.device("meta"):
        model = OPTForCausalLM(opt_config(shape)).to(torch.bfloat16).eval()
    prompts = torch.zeros((shape.prompts, shape.prompt_len), dtype=torch.long, device="meta")
    return record_chunk(model, beam_config(shape), prompts, shape)


def trace_train(shape: Shape, batches: int) -> Trace:
    """train() over `batches` batches of one epoch, on fake CPU tensors under bf16 autocast."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from transformers import OPTForCausalLM

    from collapse_cli.config import TrainConfig
    from collapse_cli.families.lm import train as train_module

    fake = FakeTensorMode(allow_non_fake_inputs=True)
    with fake:
        model = OPTForCausalLM(opt_config(shape))
    blocks = np.zeros((shape.train_batch * batches, shape.block), dtype=np.int64)
    cfg = TrainConfig(epochs=1, lr=2e-5, batch_size=shape.train_batch, block_size=shape.block, compile=False,
                      warmup_ratio=0.0)
    trace = Trace()
    # train() enables bf16 autocast on CUDA only; the CPU policy puts the same matmuls and attention in bf16.
    bf16 = mock.patch.object(train_module, "autocast", lambda device: torch.autocast("cpu", dtype=torch.bfloat16))
    with bf16, fake, marking_optimizer(trace), Recorder(trace, Classifier(shape, shape.heads)):
        train_module.train(model, blocks, cfg, 0, torch.device("cpu"), 0)
    return trace


@contextlib.contextmanager
def marking_optimizer(trace: Trace):
    """Ops inside any optimizer.step() are the class `optimizer`."""
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    def enter(*_):
        trace.in_optimizer = True

    def leave(*_):
        trace.in_optimizer = False

    handles = [register_optimizer_step_pre_hook(enter), register_optimizer_step_post_hook(leave)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def sums(ops: list[Op]) -> dict:
    return {"ops": len(ops), "bytes": sum(op.bytes for op in ops), "flops": sum(op.flops for op in ops)}


def floors(bytes_: float, flops: float, tokens: float) -> dict:
    """Lower bound on time (s) and upper bound on tok/s for `tokens` tokens, per device."""
    out = {}
    for name, device in DEVICES.items():
        seconds = max(bytes_ / device["bandwidth"], flops / device["flops"])
        out[name] = {"seconds": seconds, "tok_s": tokens / seconds if seconds else float("inf")}
    return out


def decode_summary(shape: Shape, trace: Trace) -> dict:
    phases = 1 + max((op.phase for op in trace.ops), default=0)
    if phases != shape.new_tokens:
        # One prefill and new_tokens - 1 steps each embed once; anything else would misattribute ops to steps.
        raise RuntimeError(f"the decoder embedded tokens {phases} times for {shape.new_tokens} new tokens "
                           f"(expected one prefill and one call per later step): update count_phases")
    in_steps = [op for op in trace.ops if op.phase >= 1]
    per_step = shape.new_tokens - 1
    row_steps = shape.rows * per_step
    by_kind = {kind: sums([op for op in in_steps if op.kind == kind])
               for kind in ("attention", "kv_copy", "kv_write", "lm_head", "vocab", "gemm", "other")}
    unwritten = steps_reading_unwritten(trace.ops, shape.new_tokens)
    total = sums(in_steps)
    step_floor = floors(total["bytes"] / per_step, total["flops"] / per_step, shape.prompts)
    return {
        "decode_steps_traced": per_step,
        "decode_ops_per_step": total["ops"] / per_step,
        "decode_bytes_per_row_step": total["bytes"] / row_steps,
        "decode_flops_per_row_step": total["flops"] / row_steps,
        "decode_kv_copy_ops": by_kind["kv_copy"]["ops"],
        "decode_vocab_passes": (by_kind["lm_head"]["ops"] + by_kind["vocab"]["ops"]) / per_step,
        "decode_attention_ops": by_kind["attention"]["ops"],
        "decode_attends_unwritten": unwritten,
        # 1.0: attention reads each written KV byte once a step; above 1, slots never written (or reads twice).
        "decode_kv_read_over_written": float(np.mean([read / max(1, written) for read, written in
                                                      kv_read_and_written(trace.ops, shape.new_tokens)])),
        "decode_by_kind_bytes_per_row_step": {k: v["bytes"] / row_steps for k, v in by_kind.items()},
        "decode_by_kind_ops_per_step": {k: v["ops"] / per_step for k, v in by_kind.items()},
        "decode_prefill_ops": sum(1 for op in trace.ops if op.phase == 0),
        "decode_top_ops": top_ops(in_steps, row_steps),
        **{f"decode_floor_tok_s_{name}": value["tok_s"] for name, value in step_floor.items()},
        **{f"decode_floor_ms_per_step_{name}": 1e3 * value["seconds"] for name, value in step_floor.items()},
    }


def kv_read_and_written(ops: list[Op], new_tokens: int) -> list[tuple[int, int]]:
    """Per step 1..new_tokens-1: (KV bytes its attention reads, KV bytes written into caches up to it)."""
    writes, reads = Counter(), Counter()
    for op in ops:
        if op.kind == "kv_write":
            writes[op.phase] += op.kv_bytes
        elif op.kind == "attention":
            reads[op.phase] += op.kv_bytes
    written, steps = writes[0], []
    for phase in range(1, new_tokens):
        written += writes[phase]
        steps.append((reads[phase], written))
    return steps


def steps_reading_unwritten(ops: list[Op], new_tokens: int) -> int:
    """Steps whose attention reads more KV bytes than have been written into the caches up to that step.

    Each live slot is read once a step by a decoder that attends only to written positions; one that
    attends over a whole preallocated buffer (masked or not) reads more than was ever written there.
    """
    return sum(read > written for read, written in kv_read_and_written(ops, new_tokens))


def top_ops(ops: list[Op], row_steps: int, n: int = 12) -> list[dict]:
    """The heaviest (name, class) pairs by bytes: count and bytes per row-step."""
    groups: dict[tuple[str, str], list[Op]] = {}
    for op in ops:
        groups.setdefault((op.name, op.kind), []).append(op)
    ranked = sorted(groups.items(), key=lambda item: -sum(op.bytes for op in item[1]))[:n]
    return [{"op": name, "kind": kind, "count": len(members),
             "bytes_per_row_step": sum(op.bytes for op in members) / row_steps} for (name, kind), members in ranked]


def train_summary(shape: Shape, one: Trace, two: Trace) -> dict:
    """One steady-state step: train() over two batches minus train() over one."""
    step = {key: sums(two.ops)[key] - sums(one.ops)[key] for key in ("ops", "bytes", "flops")}
    tokens = shape.train_batch * shape.block
    by_kind = Counter()
    for op in two.ops:
        by_kind[op.kind] += op.bytes
    for op in one.ops:
        by_kind[op.kind] -= op.bytes
    step_floor = floors(step["bytes"], step["flops"], tokens)
    return {
        "train_tokens_per_step": tokens,
        "train_ops_per_step": step["ops"],
        "train_bytes_per_token": step["bytes"] / tokens,
        "train_flops_per_token": step["flops"] / tokens,
        "train_by_kind_bytes_per_token": {kind: value / tokens for kind, value in sorted(by_kind.items())},
        **{f"train_floor_tok_s_{name}": value["tok_s"] for name, value in step_floor.items()},
        **{f"train_floor_ms_per_step_{name}": 1e3 * value["seconds"] for name, value in step_floor.items()},
    }


def commit() -> str | None:
    """The checkout's commit (and "+changes" when its tracked files differ from it): what the figures measured."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "diff", "--quiet", "HEAD", "--", "collapse_cli"]).returncode
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+changes" if dirty else "")


def measure(shape: Shape, decode: bool = True, train: bool = True) -> dict:
    started, cpu_started = time.perf_counter(), time.process_time()
    report: dict = {"shape": asdict(shape), "rows": shape.rows, "dtype": "bfloat16",
                    "devices": DEVICES, "torch": torch.__version__, "commit": commit()}
    if decode:
        report.update(decode_summary(shape, trace_decode(shape)))
    if train:
        report.update(train_summary(shape, trace_train(shape, 1), trace_train(shape, 2)))
    report["count_seconds"] = time.perf_counter() - started
    report["count_cpu_seconds"] = time.process_time() - cpu_started
    return report


def print_table(report: dict) -> None:
    mb = 1e6
    if "decode_bytes_per_row_step" in report:
        shape = report["shape"]
        print(f"beam decode: {shape['prompts']} prompts x {shape['beams']} beams = {report['rows']} rows, "
              f"prompt {shape['prompt_len']}, {shape['new_tokens']} new tokens, bf16; "
              f"averaged over {report['decode_steps_traced']} steps")
        print(f"{'class':<12}{'ops/step':>10}{'MB/row-step':>14}")
        for kind, value in report["decode_by_kind_bytes_per_row_step"].items():
            print(f"{kind:<12}{report['decode_by_kind_ops_per_step'][kind]:>10.1f}{value / mb:>14.3f}")
        print(f"{'total':<12}{report['decode_ops_per_step']:>10.1f}{report['decode_bytes_per_row_step'] / mb:>14.3f}")
        print(f"kv copies {report['decode_kv_copy_ops']}, vocab passes/step {report['decode_vocab_passes']:.1f}, "
              f"steps whose attention reads unwritten KV {report['decode_attends_unwritten']} "
              f"of {report['decode_steps_traced']} "
              f"(KV read / written, mean: {report['decode_kv_read_over_written']:.2f})")
        print("heaviest ops (bytes per row-step):")
        for op in report["decode_top_ops"]:
            print(f"  {op['op']:<34}{op['kind']:<11}{op['count']:>7}{op['bytes_per_row_step'] / mb:>10.3f} MB")
        for name in DEVICES:
            print(f"floor {name}: {report[f'decode_floor_ms_per_step_{name}']:.2f} ms/step, "
                  f"{report[f'decode_floor_tok_s_{name}']:,.0f} tok/s")
    if "train_bytes_per_token" in report:
        print(f"training step: batch {report['shape']['train_batch']} x {report['shape']['block']} tokens, "
              f"{report['train_ops_per_step']} ops, {report['train_bytes_per_token'] / 1e3:.1f} kB/token, "
              f"{report['train_flops_per_token'] / 1e9:.2f} GFLOP/token")
        for kind, value in report["train_by_kind_bytes_per_token"].items():
            print(f"  {kind:<12}{value / 1e3:>10.1f} kB/token")
        for name in DEVICES:
            print(f"floor {name}: {report[f'train_floor_ms_per_step_{name}']:.2f} ms/step, "
                  f"{report[f'train_floor_tok_s_{name}']:,.0f} tok/s")
    print(f"counted in {report['count_seconds']:.1f} s ({report['count_cpu_seconds']:.1f} s of CPU), "
          f"commit {report['commit']}")


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Shape]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = Shape()
    for name, value in asdict(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-decode", action="store_true")
    args = parser.parse_args(argv)
    shape = replace(defaults, **{name: getattr(args, name) for name in asdict(defaults)})
    if shape.hidden % shape.heads or min(asdict(shape).values()) <= 0 or shape.new_tokens < 2:
        parser.error("hidden must be a multiple of heads, every size positive, new_tokens at least 2")
    return args, shape


def main(argv: list[str] | None = None) -> dict:
    args, shape = parse_args(argv)
    report = measure(shape, decode=not args.skip_decode, train=not args.skip_train)
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report)
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
