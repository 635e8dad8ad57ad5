"""Decode-step time on the CPU at a small shape: beam-5 search and sampling, through generate().

Only generate()'s public signature is used, so the same script times any commit: put that
commit's checkout first on PYTHONPATH.

    PYTHONPATH=. python scripts/decode_step_cpu.py                    # this checkout
    PYTHONPATH=/path/to/other/checkout python scripts/decode_step_cpu.py

The shape: a scaled-down OPT (hidden 256, 4 layers, 4 heads, vocabulary 8,192), 32 prompts of
32 tokens, 32 new tokens; beam-5 (160 rows) with repetition penalty 3.0, and sampling (32 rows).
One untimed warm-up call, then the best of --repeats. ms per step = wall time / new tokens (the
prefill included: one prompt pass, small against 32 steps).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
from transformers import OPTConfig, OPTForCausalLM

from collapse_cli.families.lm.config import GenerateConfig
from collapse_cli.families.lm.generate import generate
from collapse_cli.families.lm.models import loop_generation_config

VOCAB, PROMPTS, PROMPT_LEN, NEW = 8192, 32, 32, 32


def model() -> torch.nn.Module:
    config = OPTConfig(vocab_size=VOCAB, hidden_size=256, num_hidden_layers=4, num_attention_heads=4, ffn_dim=1024,
                       max_position_embeddings=128, word_embed_proj_dim=256, bos_token_id=1, eos_token_id=1,
                       pad_token_id=0)
    torch.manual_seed(0)
    return loop_generation_config(OPTForCausalLM(config).eval())


def best_time(decode, repeats: int) -> float:
    decode()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        decode()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    lm, cpu = model(), torch.device("cpu")
    prompts = np.random.default_rng(0).integers(2, VOCAB, size=(PROMPTS, PROMPT_LEN))
    configs = {"beam5": GenerateConfig(do_sample=False, num_beams=5, repetition_penalty=3.0, new_tokens=NEW,
                                       batch_size=PROMPTS * 5),
               "sample": GenerateConfig(do_sample=True, new_tokens=NEW, batch_size=PROMPTS)}
    result = {"device": f"cpu, {torch.get_num_threads()} thread(s)", "torch": torch.__version__}
    for name, cfg in configs.items():
        seconds = best_time(lambda cfg=cfg: generate(lm, prompts, cfg, seed=0, device=cpu), args.repeats)
        rows = PROMPTS * cfg.num_beams
        result[name] = {"rows": rows, "ms_per_step": round(1000 * seconds / NEW, 2),
                        "us_per_row_step": round(1e6 * seconds / NEW / rows, 1)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
