"""Generation 0 alone: the test perplexity of a run's starting model, before and after its fine-tune.

    python scripts/gen0_ppl.py +experiment=shumailov_no_data model=smollm2 \
        dataset.train=wiki.valid.raw dataset.valid=wiki.valid.raw dataset.test=wiki.test.raw train.epochs=1

The overrides are `collapse run`'s. Generation 0 is trained as the run trains it (same blocks,
seed, schedule and epoch selection) and scored on the whole test split, but no corpus is
sampled: the check of a fine-tuned baseline against a paper's (Shumailov et al.: about 34 for
OPT-125m on WikiText-2) before the recursive generations spend their hours. LM runs only.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from collapse_cli.cli import preflight
from collapse_cli.compose import register
from collapse_cli.experiment.loop import set_up
from collapse_cli.experiment.seeds import stage_seed, torch_global_rng, torch_global_seed
from collapse_cli.families.lm import measurement
from collapse_cli.families.lm.corpus_metrics import perplexity
from collapse_cli.families.lm.evaluate import token_nll


def ppl_test(setup) -> float:
    family = setup.family
    batch = measurement.eval_batch_size(family.cfg, setup.device)
    nll = token_nll(family.for_inference(setup.base_model), setup.real.test, batch, setup.device)
    return perplexity(float(nll.sum(dtype=np.float64)), nll.size)


def main(overrides: list[str]) -> dict:
    register()
    cfg = preflight(overrides, multirun=False).runs[0]  # composed and checked as `collapse run` does
    if cfg.model.family != "lm":
        raise SystemExit(f"gen0_ppl: model={cfg.model.name} is a {cfg.model.family} model; this script scores LMs")
    setup = set_up(cfg)
    setup.base_model.to(setup.device)
    print(f"{cfg.model.path or cfg.model.name}: {len(setup.real.train[:setup.n_train])} train blocks, "
          f"{len(setup.real.test)} test blocks, {cfg.train.epochs} epoch(s) on {setup.device.type}", flush=True)
    started = time.perf_counter()
    result = {"ppl_test_before": ppl_test(setup)}
    print(f"ppl_test before fine-tuning: {result['ppl_test_before']:.2f}", flush=True)
    with torch_global_rng(torch_global_seed(cfg.seed, 0, rank=0), setup.device):  # as the loop trains: dropout too
        fitted = setup.family.fit(setup.base_model, setup.real.train[:setup.n_train], stage_seed(cfg.seed, 0, "train"),
                                  0, lambda step, total: None)
    result.update(fitted, ppl_test=ppl_test(setup), seconds=time.perf_counter() - started)
    print(" ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
                   for key, value in result.items()))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
