"""Time the per-generation metric and curation steps that must stay fast at real scale.

These budgets used to be timing assertions in unit tests; on a shared machine those
measure the neighbours, not the code. Run this on a quiet machine and compare with
the budgets printed next to each figure.

    python scripts/bench_metrics.py                # median of 3 repeats
    python scripts/bench_metrics.py --repeats 5 --out bench_metrics.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from collapse_cli.families.lm import corpus_metrics as M
from collapse_cli.families.lm.curate import near_duplicate_mask


def seconds(step, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="also write the figures as JSON")
    options = parser.parse_args()
    rng = np.random.default_rng(0)
    sequences = [rng.integers(0, 500, size=64) for _ in range(1000)]
    # One Shumailov-scale generation: 37,500 synthetic blocks of 64 tokens from a 50k vocabulary.
    corpus = rng.integers(0, 50_000, size=(37_500, 64), dtype=np.int64)
    # (name, step, budget in seconds on an idle laptop core)
    steps = [("self_bleu: 200 of 1,000 x 64 tokens", lambda: M.self_bleu(sequences, 200, seed=7), 1.0),
             ("near_duplicate_mask: 37,500 x 64, 8-grams", lambda: near_duplicate_mask(corpus, 8, 0.8), 2.0)]
    results = {}
    for name, step, budget in steps:
        took = seconds(step, options.repeats)
        results[name] = {"seconds": took, "budget_s": budget}
        print(f"{name:<45} {took:8.3f} s  (budget {budget:g} s{'' if took <= budget else ', OVER'})")
    if options.out:
        options.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
