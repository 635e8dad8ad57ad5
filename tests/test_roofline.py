"""scripts/roofline.py: the op/byte/FLOP counter on hand-computed cases, and the decode step's roofline gates."""

from __future__ import annotations

import sys
from dataclasses import replace

import pytest
import torch
from test_scripts import SCRIPTS, load_script

roofline = load_script("roofline")

# A small OPT: the gates read the shape of the decode step, which does not depend on the model's size.
SMALL = roofline.Shape(hidden=64, layers=2, heads=4, ffn=128, vocab=1000, prompts=4, beams=5, prompt_len=8,
                       new_tokens=8, train_batch=4, block=16)


def record(fn, shape: roofline.Shape = SMALL, kv_heads: int = 4) -> list:
    """The ops `fn` launches, under inference mode as decoding runs (composites such as SDPA stay one op)."""
    trace = roofline.Trace()
    with torch.inference_mode(), roofline.Recorder(trace, roofline.Classifier(shape, kv_heads)):
        fn()
    return trace.ops


def meta(*shape, dtype=torch.float32):
    return torch.empty(shape, dtype=dtype, device="meta")


def test_matmul_counts_2mnk_flops_and_its_operands_bytes():
    a, b = meta(32, 48), meta(48, 16, dtype=torch.bfloat16).float()
    (op,) = record(lambda: a @ b)
    assert op.flops == 2 * 32 * 48 * 16
    assert (op.read, op.written) == ((32 * 48 + 48 * 16) * 4, 32 * 16 * 4)
    assert op.kind == "gemm"


def test_gemms_in_place_or_with_an_epilogue_count_as_gemms():
    """baddbmm_ (the decoder accumulates attention outputs with it) and _addmm_activation (OPT's fc1 + ReLU)."""
    total, weights, values = meta(6, 5, 16), meta(6, 5, 40), meta(6, 40, 16)
    x, weight, bias = meta(32, 48), meta(64, 48), meta(64)
    accumulate, fused = record(lambda: (total.baddbmm_(weights, values),
                                        torch._addmm_activation(bias, x, weight.t())))
    assert (accumulate.kind, accumulate.flops) == ("gemm", 2 * 6 * 5 * 40 * 16)
    assert (accumulate.read, accumulate.written) == ((6 * 5 * 16 + 6 * 5 * 40 + 6 * 40 * 16) * 4, 6 * 5 * 16 * 4)
    assert (fused.kind, fused.flops) == ("gemm", 2 * 32 * 48 * 64)
    assert (fused.read, fused.written) == ((64 + 32 * 48 + 64 * 48) * 4, 32 * 64 * 4)


def test_copy_reads_its_source_once_and_writes_its_destination():
    destination, source = meta(8, 100, dtype=torch.bfloat16), meta(100)
    ops = record(lambda: destination.copy_(source.expand(8, 100)))  # a broadcast row: read once
    assert [(op.name, op.read, op.written, op.flops) for op in ops] == [("copy_", 100 * 4, 8 * 100 * 2, 0)]


def test_views_launch_nothing_and_a_gather_reads_only_what_it_gathers():
    table, ids = meta(1000, 64), torch.zeros(10, dtype=torch.long, device="meta")
    ops = record(lambda: (table.t().view(64, 1000), table[:5], torch.nn.functional.embedding(ids, table)))
    assert [(op.name, op.read, op.written) for op in ops] == [("embedding", 10 * 64 * 4 + 10 * 8, 10 * 64 * 4)]


def test_a_cache_written_in_place_then_gathered_is_a_kv_copy_and_attention_reads_it():
    cache, fresh = meta(6, 4, 20, 16), meta(6, 4, 1, 16)
    position, source_rows = torch.zeros(1, dtype=torch.long, device="meta"), torch.zeros(6, dtype=torch.long,
                                                                                         device="meta")

    def step():
        cache.index_copy_(2, position, fresh)  # the step's new key: one position, freshly projected
        generated = cache[:, :, :5]
        generated.copy_(generated.index_select(0, source_rows))  # a beam reorder
        torch.nn.functional.scaled_dot_product_attention(meta(6, 4, 1, 16), cache, cache)

    ops = record(step)
    assert [(op.name, op.kind) for op in ops] == [("index_copy_", "kv_write"), ("index_select", "kv_copy"),
                                                  ("copy_", "kv_copy"), ("scaled_dot_product_attention",
                                                                         "attention")]
    assert ops[0].written == ops[0].kv_bytes == 6 * 4 * 16 * 4  # one position of every row and head
    assert ops[-1].kv_bytes == 2 * 6 * 4 * 20 * 16 * 4  # keys and values, all 20 slots
    assert ops[-1].flops == 4 * 6 * 4 * 1 * 20 * 16
    # 1 slot written, 20 read: a step attending over unwritten slots.
    assert roofline.steps_reading_unwritten([replace(op, phase=1) for op in ops], new_tokens=2) == 1


def test_a_matmul_over_the_written_slots_of_a_cache_is_attention_that_reads_nothing_unwritten():
    """The new decoder's shape of attention: plain matmuls against a cache's live prefix."""
    keys, values = meta(6, 4, 20, 16), meta(6, 4, 20, 16)
    position = torch.zeros(1, dtype=torch.long, device="meta")
    trace = roofline.Trace()
    with torch.inference_mode(), roofline.Recorder(trace, roofline.Classifier(SMALL, 4)):
        for cache in (keys, values):
            cache[:, :, :3].copy_(meta(6, 4, 3, 16))  # prefill: 3 positions
        trace.phase = 1
        for cache in (keys, values):
            cache.index_copy_(2, position, meta(6, 4, 1, 16))  # step 1 writes position 3
        scores = meta(6, 4, 1, 16) @ keys[:, :, :4].transpose(-1, -2)  # and reads the 4 written
        scores @ values[:, :, :4]
    assert [(op.phase, op.kind) for op in trace.ops] == [(0, "kv_write"), (0, "kv_write"), (1, "kv_write"),
                                                         (1, "kv_write"), (1, "attention"), (1, "attention")]
    assert roofline.steps_reading_unwritten(trace.ops, new_tokens=2) == 0
    assert trace.ops[-1].kv_bytes == 6 * 4 * 4 * 16 * 4
    # Both caches hold 4 written positions, and the step reads exactly those.
    assert roofline.kv_read_and_written(trace.ops, new_tokens=2) == [(2 * 6 * 4 * 4 * 16 * 4,) * 2]


def test_passes_over_the_vocabulary_are_told_apart_from_the_lm_head_and_from_sparse_touches():
    hidden, weight, logits = meta(SMALL.rows, 64), meta(SMALL.vocab, 64), meta(SMALL.rows, SMALL.vocab)
    ids = torch.zeros(SMALL.rows, 3, dtype=torch.long, device="meta")

    def select():
        torch.mm(hidden, weight.t(), out=logits)  # an LM head writing into a buffer: out= is written, not read
        torch.log_softmax(logits, dim=-1)
        logits.gather(1, ids)  # 3 ids per row: no pass over [rows, V]

    ops = record(select)
    assert [(op.name, op.kind) for op in ops] == [("mm", "lm_head"), ("log_softmax", "vocab"), ("gather", "other")]
    assert (ops[0].read, ops[0].written) == ((SMALL.rows + SMALL.vocab) * 64 * 4, SMALL.rows * SMALL.vocab * 4)
    assert ops[0].flops == 2 * SMALL.rows * SMALL.vocab * 64


@pytest.fixture(scope="module")
def small_decode() -> dict:
    return roofline.decode_summary(SMALL, roofline.trace_decode(SMALL))


def test_the_decode_trace_has_one_phase_per_step_and_counts_every_layer(small_decode):
    assert small_decode["decode_steps_traced"] == SMALL.new_tokens - 1
    # Every layer attends at every step (SDPA, a named attention op, or matmuls over the cache): the gate on
    # unwritten slots cannot pass for want of attention ops.
    per_layer_step = small_decode["decode_attention_ops"] / (SMALL.layers * (SMALL.new_tokens - 1))
    assert per_layer_step >= 1 and per_layer_step == int(per_layer_step)
    assert small_decode["decode_flops_per_row_step"] > 2 * SMALL.vocab * SMALL.hidden  # the LM head at least


def test_gate_no_kv_copies(small_decode):
    assert small_decode["decode_kv_copy_ops"] == 0


def test_gate_at_most_3_ops_over_rows_by_vocab(small_decode):
    assert small_decode["decode_vocab_passes"] <= 3


def test_gate_no_attention_over_unwritten_slots(small_decode):
    assert small_decode["decode_attends_unwritten"] == 0


@pytest.mark.slow
def test_gate_at_most_3_mb_per_row_step_at_the_shumailov_shape():
    """At the default shape (5,120 rows, 64 + 64 tokens): meta tensors make it cost what the small one does."""
    shape = roofline.Shape()
    report = roofline.decode_summary(shape, roofline.trace_decode(shape))
    assert report["decode_bytes_per_row_step"] <= 3e6


def test_training_flops_are_six_per_parameter_per_token_plus_attention():
    """Forward 2 FLOPs per weight and token, backward 4; attention 4 x block x hidden per token and layer forward,
    8 backward. The LM head shares the embedding's weight and counts once."""
    one, two = roofline.trace_train(SMALL, 1), roofline.trace_train(SMALL, 2)
    report = roofline.train_summary(SMALL, one, two)
    h, layers = SMALL.hidden, SMALL.layers
    matmul_weights = layers * (4 * h * h + 2 * h * SMALL.ffn) + SMALL.vocab * h
    attention = 12 * layers * SMALL.block * h
    assert report["train_flops_per_token"] == 6 * matmul_weights + attention
    assert report["train_tokens_per_step"] == SMALL.train_batch * SMALL.block
    assert report["train_by_kind_bytes_per_token"]["optimizer"] > 0


@pytest.mark.slow
def test_gpu_check_dry_run_writes_every_section(tmp_path):
    """scripts/gpu_check.sh --cpu-dry: the GPU script's sections, on the CPU with the tiny model, into $OUT."""
    import json
    import os
    import subprocess

    out = tmp_path / "out"
    result = subprocess.run(["bash", str(SCRIPTS / "gpu_check.sh"), "--cpu-dry"], capture_output=True, text=True,
                            timeout=900, env={**os.environ, "OUT": str(out), "PYTHON": sys.executable})
    assert result.returncode == 0, result.stderr
    log = (out / "gpu_check.log").read_text()
    for name in ("ceilings", "decode", "profile", "train_cold", "train_warm", "bench", "gpu_tests"):
        assert f"section {name} rc=0 " in log, log[-3000:]
    assert json.loads((out / "01_ceilings.json").read_text())["gemm_tflop_s"] > 0
    decode = json.loads((out / "02_decode.json").read_text())["decode"]
    assert [(row["mode"], row["rows"]) for row in decode] == [(mode, rows) for rows in (10, 20, 40)
                                                              for mode in ("beam", "sample")]
    assert all(row["eager_split"]["forward_ms"] > 0 and row["eager_split"]["selection_ms"] > 0 for row in decode)
    assert "aten::" in (out / "03_profile.txt").read_text()
    for name in ("04_train_cold.json", "05_train_warm.json"):
        assert json.loads((out / name).read_text())["steady_tok_s"] > 0
    assert "speedup" in json.loads((out / "06_bench.json").read_text())
    assert "passed" in (out / "07_gpu_tests.txt").read_text() or "skipped" in (out / "07_gpu_tests.txt").read_text()


def test_json_prints_one_object_with_the_gated_keys(capsys):
    import json

    small = ["--hidden", "64", "--layers", "2", "--heads", "4", "--ffn", "128", "--vocab", "1000", "--prompts", "4",
             "--prompt-len", "8", "--new-tokens", "4", "--train-batch", "4", "--block", "16"]
    roofline.main([*small, "--json"])
    report = json.loads(capsys.readouterr().out)
    for key in ("decode_bytes_per_row_step", "decode_kv_copy_ops", "decode_vocab_passes", "decode_attends_unwritten",
                "decode_floor_tok_s_h200", "train_bytes_per_token", "train_flops_per_token", "train_floor_tok_s_h200"):
        assert report[key] >= 0, key
    # The floor is the bandwidth bound here: bytes / 4.8 TB/s per step, one token per prompt.
    step_s = report["decode_bytes_per_row_step"] * report["rows"] / 4.8e12
    assert report["decode_floor_tok_s_h200"] == pytest.approx(4 / step_s)


def test_a_bad_shape_is_refused_with_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        roofline.main(["--hidden", "100", "--heads", "12"])
    assert exit_info.value.code == 2 and "multiple of heads" in capsys.readouterr().err
