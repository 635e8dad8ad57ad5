"""Watermark provenance: Kirchenbauer et al. 2023's green-list watermark, and its detector.

Marking (decode.py, while sampling): before a token is drawn, the previous token's hash selects a
green list, a share `gamma` of the vocabulary, and every green logit gets `delta` added. The text
then holds more green tokens than chance; the detector counts them.

The green lists: one random set `base` of round(gamma * V) ids, drawn from the key, and for each
previous token p a cyclic shift s(p) = hash(key, p) mod V of it: v is green after p when
base[(v + s(p)) mod V]. Each list is a pseudo-random gamma-share of the vocabulary, and a step's
lists for all rows are index arithmetic on [rows, G] (G = gamma * V ids), so the mark on
[rows, V] logits is one scatter-add (no Python loop over rows or vocabulary, no [rows, V] mask).

Detecting (pure numpy): in a sequence of T tokens, the T - 1 tokens after another are green with
probability gamma when the text knows nothing of the key; Kirchenbauer's one-proportion z-test
    z = (green - gamma * (T - 1)) / sqrt((T - 1) * gamma * (1 - gamma))
and a sequence is detected when z > threshold (4: a one-sided false-alarm rate of 3e-5 per
independent sequence).

This module holds no torch at import: config.py imports the dataclasses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from collapse_cli.checks import check
from collapse_cli.config import WatermarkCurate, WatermarkMode

# SeedSequence streams of one key: the green set, the shift hash, the rows left unmarked.
BASE_STREAM, SHIFT_STREAM, UNMARKED_STREAM = 1, 2, 3


@dataclass
class WatermarkConfig:
    """`generate.watermark`: marks on what the decoder samples, and what counts as detected."""

    enabled: bool = False
    gamma: float = 0.25  # green share of the vocabulary
    delta: float = 2.0  # added to every green logit
    key: int = 15485863  # the secret: fixes the green set and the hash of the previous token
    # Share of each generation's rows sampled without the bias: text of other models, unmarked.
    unmarked_share: float = 0.0
    # A sequence is detected when its z-score exceeds this (metrics and curate=watermark).
    threshold: float = 4.0


def validate_watermark(mark: WatermarkConfig, curate: WatermarkCurate, num_beams: int) -> None:
    """One line naming the key and the fix, for every value the types let through."""
    check(0.0 < mark.gamma < 1.0, f"generate.watermark.gamma={mark.gamma} must be in (0, 1) (the green share), "
                                  f"e.g. 0.25")
    check(mark.delta >= 0.0, f"generate.watermark.delta={mark.delta} must be >= 0 (0: marks nothing), e.g. 2.0")
    check(0 <= mark.key < 2**32, f"generate.watermark.key={mark.key} must be an integer from 0 to {2**32 - 1}")
    check(0.0 <= mark.unmarked_share <= 1.0,
          f"generate.watermark.unmarked_share={mark.unmarked_share} must be in [0, 1] (a share of the rows)")
    check(mark.threshold > 0, f"generate.watermark.threshold={mark.threshold} must be positive (a z-score), e.g. 4")
    check(not (mark.enabled and num_beams > 1),
          f"generate.watermark marks sampled tokens, and generate.num_beams={num_beams} searches beams; "
          f"use generate.num_beams=1 (generate=sample) or generate.watermark.enabled=false")
    check(0.0 < curate.weight <= 1.0,
          f"curate.watermark.weight={curate.weight} must be in (0, 1] (a detected sequence's weight), e.g. 0.1")
    check(mark.enabled or curate.mode == WatermarkMode.none,
          "curate=watermark detects generate.watermark's marks, which are off; set generate.watermark.enabled=true")


def _splitmix64(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser over uint64: a well-spread hash of each value."""
    with np.errstate(over="ignore"):
        h = values ^ (values >> np.uint64(30))
        h = h * np.uint64(0xBF58476D1CE4E5B9)
        h = h ^ (h >> np.uint64(27))
        h = h * np.uint64(0x94D049BB133111EB)
        return h ^ (h >> np.uint64(31))


@dataclass(frozen=True)
class GreenLists:
    """The green lists of one key over a vocabulary of `vocab` ids (the logits' width)."""

    base_ids: np.ndarray  # int64 [G]: the ids green after a token whose shift is 0
    base: np.ndarray  # bool [V]: the same as a mask
    shift: np.ndarray  # int64 [V]: s(p) for every previous token p

    @classmethod
    def build(cls, key: int, gamma: float, vocab: int) -> GreenLists:
        size = min(vocab, max(1, round(gamma * vocab)))
        rng = np.random.default_rng(np.random.SeedSequence([key, BASE_STREAM]))
        base_ids = np.sort(rng.permutation(vocab)[:size]).astype(np.int64)
        base = np.zeros(vocab, dtype=bool)
        base[base_ids] = True
        salt = np.random.SeedSequence([key, SHIFT_STREAM]).generate_state(1, dtype=np.uint64)[0]
        shift = (_splitmix64(np.arange(vocab, dtype=np.uint64) ^ salt) % np.uint64(vocab)).astype(np.int64)
        return cls(base_ids, base, shift)

    @property
    def vocab(self) -> int:
        return len(self.base)

    @property
    def gamma(self) -> float:
        """The exact green share (gamma * V rounded to whole ids): the detector's null proportion."""
        return len(self.base_ids) / self.vocab

    def is_green(self, previous: np.ndarray, token: np.ndarray) -> np.ndarray:
        """bool, elementwise: `token` is on the green list that `previous` selects."""
        return self.base[(token + self.shift[previous]) % self.vocab]

    def green_ids(self, previous):
        """[rows, G] the ids green after each row's previous token: (base_ids - s(p)) mod V.

        Works on numpy arrays and on torch tensors alike (the decoder passes tensors of its tables).
        """
        return (self.base_ids[None, :] - self.shift[previous][:, None]) % self.vocab


def z_scores(rows: np.ndarray, lists: GreenLists) -> np.ndarray:
    """Each row's z-score [n] (float64): green tokens after the first against gamma * (T - 1).

    Ids outside the vocabulary (none in a corpus of this run) would index out of range: refused.
    """
    rows = np.asarray(rows, dtype=np.int64)
    if rows.ndim != 2 or rows.shape[1] < 2:
        raise ValueError(f"z_scores needs rows of at least 2 tokens, got shape {rows.shape}")
    if rows.size and (rows.min() < 0 or rows.max() >= lists.vocab):
        raise ValueError(f"token ids must lie in [0, {lists.vocab}); got {rows.min()}..{rows.max()}")
    scored = rows.shape[1] - 1
    green = lists.is_green(rows[:, :-1], rows[:, 1:]).sum(axis=1)
    gamma = lists.gamma
    return (green - gamma * scored) / math.sqrt(scored * gamma * (1.0 - gamma))


def marked_rows(n: int, unmarked_share: float, seed: int) -> np.ndarray:
    """bool [n]: which of a generation's rows carry the mark; exactly round(share * n) do not, drawn by seed."""
    marked = np.ones(n, dtype=bool)
    unmarked = round(unmarked_share * n)
    if unmarked:
        rng = np.random.default_rng(np.random.SeedSequence([seed, UNMARKED_STREAM]))
        marked[rng.choice(n, size=unmarked, replace=False)] = False
    return marked


def detection_metrics(z_synth: np.ndarray, marked: np.ndarray, z_real: np.ndarray, threshold: float) -> dict[str, Any]:
    """Per generation: TPR on the marked synthetic rows, FPR on real text and on unmarked synthetic rows.

    A rate over no rows is nan (undefined), never 0.
    """
    def share(values: np.ndarray) -> float:
        return float(np.mean(values > threshold)) if len(values) else float("nan")

    return {"watermark_tpr": share(z_synth[marked]), "watermark_fpr": share(z_real),
            "watermark_fpr_unmarked": share(z_synth[~marked]),
            "watermark_z_marked_median": float(np.median(z_synth[marked])) if marked.any() else float("nan"),
            "watermark_marked_rows": int(marked.sum())}
