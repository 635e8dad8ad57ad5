"""The loop's own cost per generation, measured with a family that does almost nothing.

    PYTHONPATH=$PWD python scripts/loop_overhead.py --generations 2000 [--regime replace --mix 0]

The toy family (tests/toy_family.py) fits a 1-D normal by its mean and std, so nearly all
the time is the loop's: composition, provenance, json and status writes, metrics lines.
The GMM target (2,000 generations in 3 minutes) leaves the loop a small share of 90 ms each.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from rich.console import Console  # noqa: E402

from collapse_cli.compose import validate  # noqa: E402
from collapse_cli.config import RunConfig, TrainConfig  # noqa: E402
from collapse_cli.experiment.loop import execute  # noqa: E402
from collapse_cli.experiment.progress import Feedback  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generations", type=int, default=2000)
    parser.add_argument("--regime", default="replace")
    parser.add_argument("--mix", type=float, default=0.0)
    parser.add_argument("--n", type=int, default=1000, help="rows per generation (N)")
    args = parser.parse_args()
    from toy_family import ToyDatasetConfig, ToyModelConfig

    cfg = validate(RunConfig(model=ToyModelConfig(), dataset=ToyDatasetConfig(n_train=args.n, pool=2 * args.n),
                             train=TrainConfig(lr=1e-3),
                             generations=args.generations, regime=args.regime, mix=args.mix, device="cpu"))
    logging.getLogger("collapse").setLevel(logging.WARNING)
    import torch  # noqa: F401  (pick_device imports it once per run: not a per-generation cost)

    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        execute(cfg, Path(folder) / "run", Feedback(Console(quiet=True)))
        seconds = time.perf_counter() - started  # before the folder's removal, which is not the loop's
    print(f"{args.generations} generations ({args.regime}, mix={args.mix}, N={args.n}): {seconds:.2f} s, "
          f"{1000 * seconds / (args.generations + 1):.2f} ms per generation")


if __name__ == "__main__":
    main()
