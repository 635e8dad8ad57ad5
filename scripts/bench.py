"""Benchmark one generation of the loop against a naive reference, in one process.

The workload `shumailov-cycle` (GPU): OPT-125m architecture built from its config,
37,500 training blocks of 64 tokens x 5 epochs, 37,500 prompts x 64 new tokens by
5-beam search, ppl_test on ~4,400 blocks, every synthetic sequence scored by a
reference model. `--device cpu` runs the default `collapse run` generation instead:
the `tiny` model on the builtin language, 1,000 blocks x 3 epochs, sampling.

Both paths do the same work on the same device and data:
  tool       collapse_cli.families.lm.train / generate / evaluate (packed blocks, bf16 on CUDA,
             fused AdamW, no per-step host syncs, big batches, KV-cached decoding)
  reference  the way the reference code does it: fp32, text re-tokenized and padded
             per batch with attention masks, loss.item() every step, generate() in
             batches of 128 over left-padded prompts, evaluation in batches of 8.
Each stage runs on `--fraction` of its items and is projected linearly to the whole, after an
untimed warm-up pass of each path on one batch (reported as warmup_s: on CUDA it holds the tool's
one-off torch.compile of the training step).

    python scripts/bench.py --device cpu --out bench_cpu.json
    python scripts/bench.py --device cuda --fraction 0.1 --out bench_h100.json
    python scripts/bench.py --device cpu --scaling      # time against 1k/4k/16k blocks
    python scripts/bench.py --device cuda --decode-only --batch-sizes 64,256,1024   # decoding alone
    python scripts/bench.py --device cuda --section decode --rows 640,5120 --out decode.json  # gpu_check.sh's
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from collapse_cli.config import RunConfig, TrainConfig
from collapse_cli.families.lm.builtin import build_language, make_tokenizer
from collapse_cli.families.lm.config import DatasetConfig, GenerateConfig, MetricsConfig, ModelConfig
from collapse_cli.families.lm.data import group_blocks, tokenize_stream
from collapse_cli.families.lm.evaluate import token_nll
from collapse_cli.families.lm.generate import generate
from collapse_cli.families.lm.measurement import eval_batch_size
from collapse_cli.families.lm.models import build_base_model, ensure_eos
from collapse_cli.families.lm.train import inference_model, lr_at, train

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
# The model configs the tool builds (models.build_base_model): OPT-125m's shape, and `tiny` as shipped.
OPT125M = ModelConfig(hidden_size=768, num_layers=12, num_heads=12, ffn_dim=3072, max_positions=2048)
TINY = ModelConfig()


def workload(name: str, tokenizer_dir: Path) -> dict:
    if name == "default-generation":
        return {"arch": TINY, "n_train": 1000, "n_test": 250, "epochs": 3, "lr": 3e-3, "batch": 32,
                    "gen": GenerateConfig(prompt_tokens=16, new_tokens=64, batch_size=256)}
    return {"arch": OPT125M, "n_train": 37_500, "n_test": 4_400, "epochs": 5, "lr": 2e-5, "batch": 128,
            "tokenizer": tokenizer_dir,
                "gen": GenerateConfig(preset="shumailov", do_sample=False, num_beams=5, repetition_penalty=3.0,
                                   prompt_tokens=64, new_tokens=64, batch_size=640)}


def load_data(spec: dict):
    """Tokenizer and [n, 64] train/test blocks; real text repeated to the workload's size."""
    if "tokenizer" not in spec:  # the builtin language, as dataset=builtin builds it
        d = DatasetConfig()
        language = build_language(d.vocab_words, d.zipf_exponent, d.successors, d.successor_weight, seed=d.seed)
        tokenizer = make_tokenizer(language)
        rng = np.random.default_rng(1)
        docs = language.sample_docs(64 * (spec["n_train"] + spec["n_test"]) + 64 * 40, rng)
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(spec["tokenizer"]))
        ensure_eos(tokenizer)
        tokenizer.pad_token = tokenizer.eos_token
        docs = [d for d in (SHARED / "wikitext2-raw" / "wiki.valid.raw").read_text().split("\n \n") if d.strip()]
    stream = tokenize_stream(docs, tokenizer)
    need = 64 * (spec["n_train"] + spec["n_test"])
    stream = np.tile(stream, -(-need // len(stream)))[:need]
    blocks = group_blocks(stream, 64)
    return tokenizer, blocks[: spec["n_train"]], blocks[spec["n_train"]:]


def build_model(spec: dict, tokenizer, seed: int, device: torch.device):
    """The tool's own model builder, so both paths start from the same weights the tool would."""
    return build_base_model(spec["arch"], tokenizer, seed).to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# --- the naive reference ---------------------------------------------------------
def naive_train(model, texts: list[str], tokenizer, spec: dict, device: torch.device, seed: int) -> None:
    """Same optimizer, schedule and clipping as the tool (so ppl_test must agree); the slow way."""
    cfg = TrainConfig(epochs=spec["epochs"], lr=spec["lr"], batch_size=spec["batch"], block_size=64)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    total_steps = -(-len(texts) // cfg.batch_size) * cfg.epochs
    warmup_steps = max(1, int(cfg.warmup_ratio * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_at(step, total_steps, warmup_steps))
    rng = np.random.default_rng(seed)
    model.train()
    for _ in range(cfg.epochs):
        order = rng.permutation(len(texts))
        for first in range(0, len(texts), cfg.batch_size):
            chosen = [texts[i] for i in order[first:first + cfg.batch_size]]
            enc = tokenizer(chosen, padding="max_length", truncation=True, max_length=64,
                            return_tensors="pt").to(device)
            labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
            loss = model(**enc, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            loss.item()  # the per-step logging sync of Lightning/Trainer loops
    model.eval()


@torch.no_grad()
def naive_generate(model, prompt_texts: list[str], tokenizer, gen: GenerateConfig, device: torch.device) -> list[str]:
    tokenizer.padding_side = "left"
    out = []
    for first in range(0, len(prompt_texts), 128):
        enc = tokenizer(prompt_texts[first:first + 128], padding=True, return_tensors="pt").to(device)
        tokens = model.generate(**enc, max_new_tokens=gen.new_tokens, num_beams=gen.num_beams, do_sample=gen.do_sample,
                                repetition_penalty=gen.repetition_penalty, top_k=gen.top_k or None)
        out += tokenizer.batch_decode(tokens[:, enc.input_ids.shape[1]:])
    return out


@torch.no_grad()
def naive_eval(model, texts: list[str], tokenizer, device: torch.device) -> float:
    tokenizer.padding_side = "right"
    total, count = 0.0, 0
    for first in range(0, len(texts), 8):
        enc = tokenizer(texts[first:first + 8], padding=True, truncation=True, max_length=64,
                        return_tensors="pt").to(device)
        labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
        n = int((labels[:, 1:] != -100).sum())
        total += model(**enc, labels=labels).loss.item() * n
        count += n
    return float(np.exp(total / count))


# --- measurement -----------------------------------------------------------------
def timed(fn, device: torch.device):
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return result, time.perf_counter() - start


def peak_host_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_tool(spec, tokenizer, train_blocks, test_blocks, device, fraction, max_prompts=None) -> dict:
    model = build_model(spec, tokenizer, 0, device)
    n_train = max(1, int(len(train_blocks) * fraction))
    cfg = TrainConfig(epochs=spec["epochs"], lr=spec["lr"], batch_size=spec["batch"], block_size=64)
    _, t_train = timed(lambda: train(model, train_blocks[:n_train], cfg, 0, device, 0), device)
    prompts = np.ascontiguousarray(train_blocks[:max_prompts or n_train, : spec["gen"].prompt_tokens])
    model = inference_model(model, device)  # as the loop does: one copy that sampling and scoring run on
    synthetic, t_gen = timed(lambda: generate(model, prompts, spec["gen"], 0, device), device)
    n_test = max(1, int(len(test_blocks) * fraction))
    eval_batch = eval_batch_size(RunConfig(metrics=MetricsConfig()), device)
    test_nll, t_eval = timed(lambda: token_nll(model, test_blocks[:n_test], eval_batch, device), device)
    _, t_score = timed(lambda: token_nll(model, synthetic, eval_batch, device), device)
    return {"train_s": t_train, "generate_s": t_gen, "eval_s": t_eval + t_score, "n_train": n_train, "n_test": n_test,
                "ppl_test": float(np.exp(test_nll.mean()))}


def run_reference(spec, tokenizer, train_blocks, test_blocks, device, fraction, max_prompts=None) -> dict:
    model = build_model(spec, tokenizer, 0, device)
    n_train = max(1, int(len(train_blocks) * fraction))
    texts = tokenizer.batch_decode(train_blocks[:n_train])
    _, t_train = timed(lambda: naive_train(model, texts, tokenizer, spec, device, 0), device)
    prompt_texts = tokenizer.batch_decode(train_blocks[:max_prompts or n_train, : spec["gen"].prompt_tokens])
    synthetic, t_gen = timed(lambda: naive_generate(model, prompt_texts, tokenizer, spec["gen"], device), device)
    n_test = max(1, int(len(test_blocks) * fraction))
    test_texts = tokenizer.batch_decode(test_blocks[:n_test])
    ppl_test, t_eval = timed(lambda: naive_eval(model, test_texts, tokenizer, device), device)
    _, t_score = timed(lambda: naive_eval(model, synthetic, tokenizer, device), device)
    return {"train_s": t_train, "generate_s": t_gen, "eval_s": t_eval + t_score, "n_train": n_train, "n_test": n_test,
                "ppl_test": ppl_test}


def warm_up(run, spec, tokenizer, train_blocks, test_blocks, device) -> float:
    """One untimed pass of `run` (run_tool or run_reference): one full batch, 8 prompts, 8 test blocks.
    Kernels load, cuBLAS plans, and on CUDA torch.compile compiles the training step, which a run does once
    per process (later generations reuse it). The timed pass then measures the steady state; this returns
    the warm-up's cost."""
    small = dict(spec, epochs=1)
    _, seconds = timed(lambda: run(small, tokenizer, train_blocks[: spec["batch"]], test_blocks[:8], device, 1.0,
                                   max_prompts=8), device)
    return seconds


def project(result: dict, spec: dict) -> dict:
    """Throughputs, and stage times scaled from the fraction run to the whole workload."""
    scale_train, scale_test = spec["n_train"] / result["n_train"], spec["n_test"] / result["n_test"]
    train_tokens = result["n_train"] * 64 * spec["epochs"]
    gen_tokens = result["n_train"] * spec["gen"].new_tokens
    eval_tokens = (result["n_test"] + result["n_train"]) * 64
    eval_full = result["eval_s"] * (spec["n_test"] + spec["n_train"]) / (result["n_test"] + result["n_train"])
    full = result["train_s"] * scale_train + result["generate_s"] * scale_train + eval_full
    return {**result, "train_tok_s": train_tokens / result["train_s"],
            "generate_tok_s": gen_tokens / result["generate_s"], "eval_tok_s": eval_tokens / result["eval_s"],
            "projected_cycle_s": full, "scale_test": scale_test}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workload", choices=["default-generation", "shumailov-cycle"], default=None,
                        help="default: default-generation on cpu, shumailov-cycle on cuda")
    parser.add_argument("--fraction", type=float, default=None,
                        help="share of the workload run (default: cpu 1.0, cuda 0.1)")
    parser.add_argument("--reference-fraction", type=float, default=None,
                        help="share for the slower reference (default: same)")
    parser.add_argument("--tokenizer", type=Path, default=SHARED / "gpt2-tokenizer")
    parser.add_argument("--scaling", action="store_true", help="tool only: time against 1k, 4k, 16k training blocks")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--decode-only", action="store_true",
                        help="tool only: tokens/s of beam search and of sampling at each of --batch-sizes")
    parser.add_argument("--batch-sizes", default="64,256,1024", help="prompts per decoding chunk, comma-separated")
    parser.add_argument("--chunks", type=int, default=2, help="--decode-only: timed chunks per batch size")
    parser.add_argument("--out", type=Path, default=Path("bench.json"))
    parser.add_argument("--section", choices=["ceilings", "decode", "profile", "train"], default=None,
                        help="one section of scripts/gpu_check.sh, written to --out")
    parser.add_argument("--tiny", action="store_true", help="--section on the `tiny` model (gpu_check.sh --cpu-dry)")
    parser.add_argument("--rows", default="640,5120,10240", help="--section decode/profile: decoding rows")
    parser.add_argument("--steps", type=int, default=60, help="--section train: training steps")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.section:
        run_section(args, device)
        return
    name = args.workload or ("default-generation" if args.device == "cpu" else "shumailov-cycle")
    spec = workload(name, args.tokenizer)
    fraction = args.fraction or (1.0 if name == "default-generation" else 0.1)
    cpu = f"cpu ({torch.get_num_threads()} threads)"
    report = {"device": torch.cuda.get_device_name() if device.type == "cuda" else cpu,
              "torch": torch.__version__, "workload": name,
              "fraction": fraction}
    if args.decode_only:
        report["decode"] = decode_only(spec, device, [int(b) for b in args.batch_sizes.split(",")], args.chunks)
    elif args.scaling:
        report["scaling"] = scaling(spec, device)
    else:
        tokenizer, train_blocks, test_blocks = load_data(spec)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        warmup_s = warm_up(run_tool, spec, tokenizer, train_blocks, test_blocks, device)
        report["tool"] = project(run_tool(spec, tokenizer, train_blocks, test_blocks, device, fraction), spec)
        report["tool"]["warmup_s"] = warmup_s
        report["tool"]["peak_host_mb"] = peak_host_mb()
        if device.type == "cuda":
            report["tool"]["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
            torch.cuda.reset_peak_memory_stats()
        if not args.skip_reference:
            ref_fraction = args.reference_fraction or fraction
            warmup_s = warm_up(run_reference, spec, tokenizer, train_blocks, test_blocks, device)
            reference = run_reference(spec, tokenizer, train_blocks, test_blocks, device, ref_fraction)
            report["reference"] = project(reference, spec)
            report["reference"]["warmup_s"] = warmup_s
            report["reference"]["peak_host_mb"] = peak_host_mb()
            if device.type == "cuda":
                report["reference"]["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
            report["speedup"] = {stage: report["tool"][key] / report["reference"][key] for stage, key in
                                 (("train", "train_tok_s"), ("generate", "generate_tok_s"), ("eval", "eval_tok_s"))}
            report["speedup"]["cycle"] = report["reference"]["projected_cycle_s"] / report["tool"]["projected_cycle_s"]
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


def decode_only(spec: dict, device: torch.device, batch_sizes: list[int], chunks: int) -> list[dict]:
    """Decoding alone, through generate(), on the workload's untrained model: tokens/s by batch size.

    One untimed chunk first (kernel warm-up); then `chunks` full chunks in one generate() call,
    as the loop makes it (on CUDA that call includes the bf16 copy and the CUDA graph capture).
    """
    tokenizer, blocks, _ = load_data(dict(spec, n_train=max(batch_sizes) * chunks, n_test=1))
    model = build_model(spec, tokenizer, 0, device).eval()
    beam = spec["gen"] if spec["gen"].num_beams > 1 else replace(spec["gen"], do_sample=False, num_beams=5,
                                                                  repetition_penalty=3.0)
    sampling = replace(spec["gen"], do_sample=True, num_beams=1, repetition_penalty=1.0)
    rows = []
    for batch in batch_sizes:
        for mode, gen in (("beam", beam), ("sample", sampling)):
            gen = replace(gen, batch_size=batch * gen.num_beams)
            prompts = np.ascontiguousarray(blocks[: batch * chunks, : gen.prompt_tokens])
            generate(model, prompts[:batch], gen, 0, device)
            _, seconds = timed(lambda prompts=prompts, gen=gen: generate(model, prompts, gen, 0, device), device)
            rows.append({"mode": mode, "batch_prompts": batch, "rows": batch * gen.num_beams, "seconds": seconds,
                         "tok_s": len(prompts) * gen.new_tokens / seconds})
            print(rows[-1], flush=True)
    return rows


def scaling(spec: dict, device: torch.device) -> list[dict]:
    rows = []
    for n_blocks in (1000, 4000, 16000):
        sized = dict(spec, n_train=n_blocks, n_test=min(spec["n_test"], 250))
        tokenizer, train_blocks, test_blocks = load_data(sized)
        if not rows:
            warm_up(run_tool, sized, tokenizer, train_blocks, test_blocks, device)
        result = project(run_tool(sized, tokenizer, train_blocks, test_blocks, device, 1.0), sized)
        rows.append({"blocks": n_blocks, "train_s": result["train_s"], "generate_s": result["generate_s"],
                     "eval_s": result["eval_s"],
                     "total_s": result["train_s"] + result["generate_s"] + result["eval_s"]})
        print(rows[-1], flush=True)
    return rows


# --- the sections of scripts/gpu_check.sh (each prints one JSON object, or a table) ------------------
def ceilings(device: torch.device, tiny: bool) -> dict:
    """What the device can do at best: a device-to-device copy (GB/s, read + write) and a bf16 GEMM (TFLOP/s)."""
    elements, n = (2**20, 256) if tiny else (2**29, 8192)
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    source, destination = torch.empty(elements, dtype=dtype, device=device), torch.empty(elements, dtype=dtype,
                                                                                          device=device)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    results = {}
    for name, fn, work in (("copy_gb_s", lambda: destination.copy_(source), 2 * elements * source.element_size()),
                           ("gemm_tflop_s", lambda: a @ b, 2 * n**3)):
        fn()
        _, seconds = timed(lambda fn=fn: [fn() for _ in range(20)], device)
        results[name] = 20 * work / seconds / (1e9 if name == "copy_gb_s" else 1e12)
    return {**results, "copy_bytes": elements * source.element_size(), "gemm_n": n, "dtype": str(dtype)}


def op_clock(device: torch.device):
    """(clock, elapsed): marks taken around each op, and the seconds between two of them once synced."""
    if device.type != "cuda":
        return time.perf_counter, lambda span: span[1] - span[0]

    def clock():
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    return clock, lambda span: span[0].elapsed_time(span[1]) / 1e3


def split_step(model, gen: GenerateConfig, prompts: torch.Tensor, device: torch.device) -> dict:
    """ms per decode step by roofline class, from one eager chunk with every op timed (CUDA events on CUDA):
    forward (layers, LM head), selection (ops over [rows, V]), cache (KV copies and writes)."""
    import roofline  # scripts/roofline.py: this script's folder is on sys.path

    clock, elapsed = op_clock(device)
    config = model.config
    shape = roofline.Shape(hidden=config.hidden_size, heads=config.num_attention_heads,
                           layers=config.num_hidden_layers, vocab=config.vocab_size, prompts=len(prompts),
                           beams=gen.num_beams, prompt_len=prompts.shape[1], new_tokens=gen.new_tokens)
    trace = roofline.record_chunk(model, replace(gen, cuda_graph=False), prompts, shape, clock)
    sync(device)
    steps = gen.new_tokens - 1
    parts = {"forward": ("attention", "gemm", "lm_head", "other"), "selection": ("vocab",),
             "cache": ("kv_copy", "kv_write")}
    in_steps = [op for op in trace.ops if op.phase >= 1]
    split = {f"{part}_ms": 1e3 * sum(elapsed(op.span) for op in in_steps if op.kind in kinds) / steps
             for part, kinds in parts.items()}
    return {**split, "ops_per_step": len(in_steps) / steps}


def decode_rows(spec: dict, device: torch.device, rows_list: list[int]) -> list[dict]:
    """Beam-5 and sampling at each number of rows (beam: rows / 5 prompts): tok/s and ms per step through
    generate() (CUDA graphs as configured), then the step split into forward / selection / cache."""

    tokenizer, blocks, _ = load_data(dict(spec, n_train=max(rows_list), n_test=1))
    model = inference_model(build_model(spec, tokenizer, 0, device).eval(), device)
    beam = replace(spec["gen"], do_sample=False, num_beams=5, repetition_penalty=3.0)
    sampling = replace(spec["gen"], do_sample=True, num_beams=1, repetition_penalty=1.0)
    rows_out = []
    for rows in rows_list:
        for mode, gen in (("beam", beam), ("sample", sampling)):
            gen = replace(gen, batch_size=rows)
            prompts = np.ascontiguousarray(blocks[: rows // gen.num_beams, : gen.prompt_tokens])
            generate(model, prompts, gen, 0, device)  # warm-up: kernels, cuBLAS plans, graph capture
            _, seconds = timed(lambda prompts=prompts, gen=gen: generate(model, prompts, gen, 0, device), device)
            split = split_step(model, gen, torch.from_numpy(prompts).to(device), device)
            rows_out.append({"mode": mode, "rows": rows, "prompts": len(prompts), "seconds": seconds,
                             "tok_s": len(prompts) * gen.new_tokens / seconds,
                             "ms_per_step": 1e3 * seconds / gen.new_tokens, "eager_split": split})
            print(json.dumps(rows_out[-1]), flush=True)
    return rows_out


def profile_beam(spec: dict, device: torch.device, rows: int) -> str:
    """torch.profiler table of a chunk of prefill + two beam steps, on a decoder already warmed (graphs captured)."""
    from torch.profiler import ProfilerActivity, profile

    from collapse_cli.families.lm.decode import ChunkDecoder

    tokenizer, blocks, _ = load_data(dict(spec, n_train=rows // 5, n_test=1))
    model = inference_model(build_model(spec, tokenizer, 0, device).eval(), device)
    gen = replace(spec["gen"], do_sample=False, num_beams=5, repetition_penalty=3.0, new_tokens=3, batch_size=rows)
    prompts = torch.from_numpy(np.ascontiguousarray(blocks[: rows // 5, : gen.prompt_tokens])).to(device)
    decode = ChunkDecoder(model, gen, len(prompts), device)
    generator = torch.Generator(device).manual_seed(0)
    with torch.inference_mode():
        decode(prompts, generator)
        sync(device)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            decode(prompts, generator)
            sync(device)
    sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=40)


def train_timing(spec: dict, device: torch.device, steps: int) -> dict:
    """train() over `steps` batches, the host synced after each: the first step's seconds (compilation
    included, from the inductor cache when TORCHINDUCTOR_CACHE_DIR holds one) and steady-state tok/s."""
    import os

    tokenizer, blocks, _ = load_data(dict(spec, n_train=spec["batch"] * steps, n_test=1))
    model = build_model(spec, tokenizer, 0, device)
    cfg = TrainConfig(epochs=1, lr=spec["lr"], batch_size=spec["batch"], block_size=64)
    marks = []

    def on_step(step: int, total: int) -> None:
        sync(device)
        marks.append(time.perf_counter())

    start = time.perf_counter()
    train(model, blocks, cfg, 0, device, 0, on_step=on_step)
    steady_from = min(10, len(marks) // 2)
    steady_step_s = (marks[-1] - marks[steady_from]) / max(1, len(marks) - 1 - steady_from)
    first_step_s = marks[0] - start
    return {"steps": len(marks), "batch": spec["batch"], "first_step_s": first_step_s,
            "compile_s": first_step_s - steady_step_s, "steady_step_ms": 1e3 * steady_step_s,
            "steady_tok_s": spec["batch"] * 64 / steady_step_s,
            "inductor_cache": os.environ.get("TORCHINDUCTOR_CACHE_DIR")}


def run_section(args, device: torch.device) -> None:
    """One section of gpu_check.sh: --tiny takes the default run's `tiny` model (the CPU dry run)."""
    spec = workload("default-generation" if args.tiny else "shumailov-cycle", args.tokenizer)
    if args.section == "profile":
        table = profile_beam(spec, device, int(args.rows.split(",")[1 if "," in args.rows else 0]))
        args.out.write_text(table)
        print(table)
        return
    report = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
              "section": args.section, "model": "tiny" if args.tiny else "opt-125m shape"}
    if args.section == "ceilings":
        report.update(ceilings(device, args.tiny))
    elif args.section == "decode":
        report["decode"] = decode_rows(spec, device, [int(r) for r in args.rows.split(",")])
    elif args.section == "train":
        report.update(train_timing(spec, device, args.steps))
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
