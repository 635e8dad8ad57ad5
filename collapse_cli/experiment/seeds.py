"""Seeds derived explicitly per (run seed, generation, stage): no stage ever reads global RNG state."""

from __future__ import annotations

import numpy as np

STAGES = {"train": 1, "generate": 2, "curate": 3, "compose": 4, "metrics": 5}


def stage_seed(seed: int, generation: int, stage: str) -> int:
    """Independent, reproducible seeds per (run seed, generation, stage)."""
    return int(np.random.SeedSequence([seed, generation, STAGES[stage]]).generate_state(1)[0])


def compose_seed(seed: int) -> int:
    """One composition seed for the whole run: compose() mixes in the generation itself,
    and the accumulating regimes draw their fixed real subset from this seed alone."""
    return stage_seed(seed, 0, "compose")
