"""Which rows each generation trains on, and where every one of them came from.

A row is one sample of the family: a token block (LM), a point (GMM), an image (VAE).

N is the size of the real training set that generation 0 trains on. For g >= 1:
    replace               round(mix*N) real + the rest synthetic from g-1       (Shumailov et al. 2024)
    accumulate            round(mix*N) real + every synthetic corpus so far     (Gerstgrasser et al. 2024)
    accumulate_subsample  N drawn uniformly from that accumulated pool          (Kazdan et al. 2024)
    fresh                 round(mix*N) real blocks no earlier generation saw
                          + the rest synthetic from g-1                         (Alemohammad et al. 2024)
Origins: REAL (-1) for real rows, k >= 0 for synthetic rows from generation k.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from collapse_cli.errors import CollapseError

REAL = -1


@dataclass
class TrainingSet:
    origin: np.ndarray  # int32 [n]: REAL or the generation that wrote the row (generations reach 100,000)
    index: np.ndarray  # int32 [n]: row in the real pool or in that generation's corpus

    def __len__(self) -> int:
        return len(self.origin)

    def counts(self) -> dict[str, int]:
        labels, counts = np.unique(self.origin, return_counts=True)
        return {("real" if label == REAL else f"gen_{label}"): int(n) for label, n in zip(labels, counts)}

    def weights(self, real_weight: float) -> np.ndarray:
        """The loss weight of each row (train.real_weight): real_weight on real rows, 1 on synthetic ones."""
        return np.where(self.origin == REAL, real_weight, 1.0)

    def rows(self, real_pool: np.ndarray, samples: dict[int, np.ndarray]) -> np.ndarray:
        """The training rows themselves, in order, with the real pool's dtype and row shape."""
        out = np.empty((len(self), *real_pool.shape[1:]), dtype=real_pool.dtype)
        is_real = self.origin == REAL
        out[is_real] = real_pool[self.index[is_real]]
        for generation in np.unique(self.origin[~is_real]):
            rows = self.origin == generation
            out[rows] = samples[int(generation)][self.index[rows]]
        return out


def _part(origin: int, index: np.ndarray) -> TrainingSet:
    return TrainingSet(np.full(len(index), origin, dtype=np.int32), np.asarray(index, dtype=np.int32))


def _concat(parts: list[TrainingSet]) -> TrainingSet:
    return TrainingSet(np.concatenate([p.origin for p in parts]), np.concatenate([p.index for p in parts]))


def n_real_blocks(mix: float, n_train: int) -> int:
    """The real share of a later generation's N blocks (every regime rounds it the same way)."""
    return int(round(mix * n_train))


def fresh_pool_needed(n_train: int, mix: float, generations: int) -> int:
    return n_train + generations * n_real_blocks(mix, n_train)


def check_pool(regime: str, n_pool: int, n_train: int, mix: float, generations: int, unit: str = "rows",
               size_key: Optional[str] = None) -> None:
    """regime=fresh's unseen real rows fit the pool; `unit` and `size_key` (the key that sets N) come from the
    family (Family.unit, Family.size_key), so the fix names that family's own key."""
    if regime != "fresh":
        return
    needed = fresh_pool_needed(n_train, mix, generations)
    if needed > n_pool:
        lower = f"{size_key}, mix or generations" if size_key else "mix or generations"
        raise CollapseError(
            f"regime=fresh needs {n_train} {unit} for generation 0 + {generations} x {n_real_blocks(mix, n_train)} "
            f"unseen real {unit} = {needed}, but the real pool has {n_pool}: lower {lower}, or give more real data")


def _draw(rng: np.random.Generator, n_available: int, n_wanted: int) -> np.ndarray:
    """n_wanted rows without replacement when possible; beyond that every row once, and the shortfall
    drawn with replacement. (Drawing all n_wanted with replacement would leave about 1 - 1/e of the rows
    in the set even where curation kept fewer rows than the set needs and every one could be used.)"""
    if n_wanted <= n_available:
        return np.sort(rng.choice(n_available, size=n_wanted, replace=False))
    repeats = rng.choice(n_available, size=n_wanted - n_available, replace=True)
    return np.sort(np.concatenate([np.arange(n_available), repeats]))


def compose(generation: int, regime: str, mix: float, n_train: int, corpus_sizes: dict[int, int],
            seed: int) -> TrainingSet:
    """The training set of `generation`, as (origin, index) pairs.

    `corpus_sizes[k]` is the number of usable synthetic rows generation k wrote
    (after curation). The real pool's first n_train rows are generation 0's set;
    the fresh regime reads its unseen rows from the rows after them.
    """
    if generation == 0:
        return _part(REAL, np.arange(n_train))
    rng = np.random.default_rng([seed, generation])
    n_real = n_real_blocks(mix, n_train)
    previous = generation - 1
    if regime == "replace":
        return _concat([_part(REAL, _draw(rng, n_train, n_real)),
                        _part(previous, _draw(rng, corpus_sizes[previous], n_train - n_real))])
    if regime == "fresh":
        first_unseen = n_train + previous * n_real
        return _concat([_part(REAL, np.arange(first_unseen, first_unseen + n_real)),
                        _part(previous, _draw(rng, corpus_sizes[previous], n_train - n_real))])
    # Accumulating regimes keep one fixed real subset, so real data does not grow with g.
    real_part = _part(REAL, _draw(np.random.default_rng([seed, 0]), n_train, n_real))
    pool = _concat([real_part] + [_part(k, np.arange(corpus_sizes[k])) for k in range(generation)])
    if regime == "accumulate":
        return pool
    chosen = np.sort(rng.choice(len(pool), size=n_train, replace=False))
    return TrainingSet(pool.origin[chosen], pool.index[chosen])
