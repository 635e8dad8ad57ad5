"""Seeds derived explicitly per (run seed, generation, stage): no stage ever reads global RNG state."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

STAGES = {"train": 1, "generate": 2, "curate": 3, "compose": 4, "metrics": 5, "torch_global": 6}


def stage_seed(seed: int, generation: int, stage: str) -> int:
    """Independent, reproducible seeds per (run seed, generation, stage)."""
    return int(np.random.SeedSequence([seed, generation, STAGES[stage]]).generate_state(1)[0])


def compose_seed(seed: int) -> int:
    """One composition seed for the whole run: compose() mixes in the generation itself,
    and the accumulating regimes draw their fixed real subset from this seed alone."""
    return stage_seed(seed, 0, "compose")


def torch_global_seed(seed: int, generation: int, rank: int) -> int:
    """The seed of torch's global RNG while generation `generation` trains: one stream per rank, so the
    ranks of `nproc=N` draw different dropout masks for their shares of a batch."""
    return int(np.random.SeedSequence([seed, generation, STAGES["torch_global"], rank]).generate_state(1)[0])


@contextmanager
def torch_global_rng(seed: int, device: Any) -> Iterator[None]:
    """torch's global RNG seeded with `seed` inside the block, and put back as it was after it.

    For what draws from it without taking a generator: dropout masks (also torch.compile's) in
    training. Those draws then depend on the seed alone, not on what ran before in the process,
    so a run repeats, and a resumed run matches an uninterrupted one.
    """
    import torch

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)  # the CPU's generator and the GPUs'
        yield
