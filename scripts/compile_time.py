"""Seconds to the first compiled training step, and steady-state tokens/s, of collapse's LM training.

One process, one training run of `--steps` steps (the last batch short, as a real epoch's is) through
collapse_cli.families.lm.train on an OPT-architecture model built from its config (default: OPT-125m's
shape). Run it twice with the same --cache to see a cold and a warm (cached) compilation:

    python scripts/compile_time.py --device cuda --cache /tmp/cc --mode regional    # cold, then again: warm
    python scripts/compile_time.py --device cuda --cache /tmp/cc2 --mode whole      # the whole decoder as one region
    python scripts/compile_time.py --device cpu --mode eager --layers 2 --hidden 128 --vocab 3004

It prints one JSON object: first_step_s (compilation included), steady_tok_s (steps after the first few),
graphs (dynamo graphs compiled in this process), and the settings.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mode", choices=["regional", "whole", "eager"], default="regional")
    parser.add_argument("--cache", default=None, help="TORCHINDUCTOR_CACHE_DIR for this process")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (eager: a quick CPU check)")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=50272)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--block", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    if args.cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = args.cache  # before torch: inductor reads it at first use

    import numpy as np
    import torch
    from torch._dynamo.utils import counters
    from transformers import OPTConfig, OPTForCausalLM

    from collapse_cli.config import TrainConfig
    from collapse_cli.families.lm import train

    device = torch.device(args.device)
    config = OPTConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                       num_attention_heads=max(1, args.hidden // 64), ffn_dim=4 * args.hidden,
                       max_position_embeddings=max(2048, args.block), word_embed_proj_dim=args.hidden,
                       dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(0)
    model = OPTForCausalLM(config).to(device)
    if args.mode == "whole":
        model._no_split_modules = None  # no repeated block named: the whole decoder is the one region
    # Steps - 1 full batches and a short last one: the run's shapes, the filled last batch included.
    n_blocks = (args.steps - 1) * args.batch + args.batch // 2
    blocks = np.random.default_rng(0).integers(0, args.vocab, (n_blocks, args.block))
    stamps = []

    def on_step(step: int, total: int) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    cfg = TrainConfig(epochs=1, batch_size=args.batch, lr=1e-4, compile=args.mode != "eager")
    start = time.perf_counter()
    train.train(model, blocks, cfg, 0, device, 0, on_step=on_step, compile_backend=args.backend)
    steady_from = min(3, len(stamps) - 2)  # the first steps hold compilation and allocator warm-up
    steady_tokens = (len(stamps) - 1 - steady_from) * args.batch * args.block
    print(json.dumps({
        "mode": args.mode, "device": str(device), "torch": torch.__version__, "layers": args.layers,
        "hidden": args.hidden, "vocab": args.vocab, "batch": args.batch, "block": args.block, "steps": len(stamps),
        "backend": args.backend, "cache": args.cache, "first_step_s": round(stamps[0] - start, 2),
        "steady_tok_s": round(steady_tokens / (stamps[-1] - stamps[steady_from]), 1),
        "graphs": int(counters["stats"]["unique_graphs"])}))


if __name__ == "__main__":
    main()
