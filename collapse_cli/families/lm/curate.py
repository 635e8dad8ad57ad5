"""Curation filters for a generation's synthetic corpus.

Before generation g's synthetic text enters generation g+1's training mix it
can be curated: mitigations from the model-collapse literature that remove
duplicates, degenerate loops, perplexity outliers, or that reweight samples by
a detector's verdict (Drayson et al. 2025 weight/resample synthetic samples
by a detector's score), or that drop or down-weight what carries this run's
watermark (Kirchenbauer et al. 2023; families/lm/watermark.py).

A corpus is ``synth``: an int64 array [n_seqs, seq_len] of token ids, all rows
the same length. Every filter returns a boolean keep-mask over its input rows;
:func:`curate` chains them in this fixed order::

    exact dedup -> near dedup -> repetition -> ppl quantile -> watermark -> detector

Each stage only sees the survivors of the stages before it, so a stage's drop
count in the report is "dropped here, not already dropped earlier".

Report keys (all always present, ints, so a run's metrics table has stable
columns)::

    curate_in                rows given to curate
    curate_drop_exact_dup    identical to an earlier row
    curate_drop_near_dup     mostly n-grams already seen in earlier kept rows
    curate_drop_repetition   degenerate: too many repeated n-grams within a row
    curate_drop_ppl_low      lowest-perplexity fraction
    curate_drop_ppl_high     highest-perplexity fraction
    curate_drop_watermark    detected as watermarked (filter mode), or never
                             drawn (weight mode without a weighting detector)
    curate_drop_detector     below the detector threshold (filter mode), or
                             never drawn (weight mode)
    curate_survivors         distinct rows kept = curate_in - sum(curate_drop_*)
    curate_weight_repeats    extra copies drawn by detector weight mode
    curate_resampled         extra copies added by on_shortfall=resample
    curate_out               rows returned = survivors + weight_repeats + resampled
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields, is_dataclass
from typing import Any, Optional

import numpy as np

from collapse_cli.config import (
    DETECTOR_MODES,
    CurateConfig,
    WatermarkCurate,
    WatermarkMode,
    is_int,
    plain,
    validate_curate,
    validate_detector,
)
from collapse_cli.errors import CollapseError

__all__ = ["CurateConfig", "validate_curate", "DETECTOR_MODES", "curate"]  # the config lives in config.py

# Keys of the `curate.detector` block that configure curate itself; every
# other key (besides _target_) is passed to the scorer's constructor.
DETECTOR_OWN_KEYS = ("mode", "threshold")

Scorer = Callable[[np.ndarray, Optional[list]], np.ndarray]


# --------------------------------------------------------------------------
# Typed config
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class CurateResult:
    """Rows to train on (indices into synth, repeats allowed) and the report."""

    indices: np.ndarray
    report: dict


def as_curate_config(cfg: Any) -> CurateConfig:
    """Accept a CurateConfig, a dict, or an OmegaConf node; return a validated CurateConfig."""
    if cfg is None:
        cfg = CurateConfig()
    if not isinstance(cfg, CurateConfig):
        raw = asdict(cfg) if is_dataclass(cfg) else plain(cfg)
        if not isinstance(raw, Mapping):
            raise CollapseError(f"curate config must be a mapping, got {type(cfg).__name__}")
        known = {f.name for f in fields(CurateConfig)}
        unknown = sorted(set(raw) - known)
        if unknown:  # catch typos that would silently leave a filter off
            raise CollapseError(
                f"curate.{unknown[0]} is not a curate option; valid keys: {', '.join(sorted(known))}"
            )
        cfg = CurateConfig(**raw)
    watermark = plain(cfg.watermark)
    if isinstance(watermark, Mapping):  # a dict from YAML, or the one asdict() made of the dataclass
        watermark = WatermarkCurate(**watermark)
    if watermark.mode not in tuple(WatermarkMode):  # OmegaConf checks the enum; a dict given here is unchecked
        raise CollapseError(f"curate.watermark.mode={watermark.mode} must be none, filter or weight")
    cfg = CurateConfig(**{**asdict(cfg), "detector": plain(cfg.detector), "watermark": watermark})
    validate_curate(cfg)
    return cfg


# --------------------------------------------------------------------------
# N-gram hashing
# --------------------------------------------------------------------------

_HASH_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constant (golden ratio)


def _mix64(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads a polynomial hash over all 64 bits."""
    h = h ^ (h >> np.uint64(30))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> np.uint64(27))
    h = h * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def ngram_hashes(synth: np.ndarray, n: int) -> np.ndarray:
    """Hash every length-n window of every row to 64 bits: [n_seqs, seq_len-n+1].

    Distinct n-grams collide with probability ~2^-64 per pair, so treating
    equal hashes as equal n-grams is exact for any realistic corpus size.
    Rows shorter than n give zero columns.
    """
    if n < 1:
        raise ValueError(f"n-gram length must be >= 1, got {n}")
    tokens = np.asarray(synth).astype(np.uint64)
    n_windows = max(tokens.shape[1] - n + 1, 0)
    h = np.zeros((tokens.shape[0], n_windows), dtype=np.uint64)
    with np.errstate(over="ignore"):  # wrap-around mod 2^64 is the point
        for offset in range(n):  # Horner's rule over the window's tokens
            h = h * _HASH_MULT + tokens[:, offset : offset + n_windows]
        return _mix64(h).view(np.int64)


def distinct_ngram_share(synth: np.ndarray, n: int) -> np.ndarray:
    """Per row: distinct n-grams / total n-grams, in (0, 1]; 1.0 if row < n."""
    hashes = np.sort(ngram_hashes(synth, n), axis=1)
    n_windows = hashes.shape[1]
    if n_windows == 0:
        return np.ones(hashes.shape[0])
    distinct = 1 + np.count_nonzero(np.diff(hashes, axis=1), axis=1)
    return distinct / n_windows


# --------------------------------------------------------------------------
# Filters: each returns a boolean keep-mask over the rows it was given
# --------------------------------------------------------------------------


def _check_corpus(synth: np.ndarray) -> np.ndarray:
    synth = np.asarray(synth)
    if synth.ndim != 2 or not np.issubdtype(synth.dtype, np.integer):
        raise ValueError(f"synth must be a 2-D integer array, got {synth.dtype} {synth.shape}")
    return synth


def exact_duplicate_mask(synth: np.ndarray) -> np.ndarray:
    """Keep the first occurrence of each identical row."""
    synth = _check_corpus(synth)
    keep = np.zeros(synth.shape[0], dtype=bool)
    if synth.shape[0]:
        _, first_index = np.unique(synth, axis=0, return_index=True)
        keep[first_index] = True
    return keep


def near_duplicate_mask(synth: np.ndarray, n: int, threshold: float) -> np.ndarray:
    """Drop a row if >= threshold of its n-grams occur in earlier KEPT rows.

    Exact greedy pass in row order (no chunking): n-grams are hashed to int64
    with numpy, then one Python set of the kept rows' n-grams is probed row by
    row -- about a second for 40k x 64. The share counts n-gram occurrences
    (a row's own repeats each count). Rows shorter than n have no n-grams and
    are kept: there is nothing to compare.
    """
    synth = _check_corpus(synth)
    rows = ngram_hashes(synth, n).tolist()  # Python ints: fast set probes
    keep = np.ones(len(rows), dtype=bool)
    seen: set = set()
    for i, row in enumerate(rows):
        if not row:
            continue
        seen_count = sum(map(seen.__contains__, row))
        if seen_count >= threshold * len(row):
            keep[i] = False
        else:
            seen.update(row)  # only kept rows define "already seen"
    return keep


def repetition_mask(synth: np.ndarray, n: int, max_rep: float) -> np.ndarray:
    """Drop degenerate rows whose repeated n-gram share 1 - distinct/total exceeds max_rep."""
    synth = _check_corpus(synth)
    repeated_share = 1.0 - distinct_ngram_share(synth, n)
    return repeated_share <= max_rep


def _fraction_count(fraction: float, total: int) -> int:
    # The epsilon stops 0.29 * 100 = 28.999... from flooring to 28.
    return int(math.floor(fraction * total + 1e-9))


def ppl_quantile_masks(
    seq_ppl: np.ndarray, drop_low: float, drop_high: float
) -> tuple[np.ndarray, np.ndarray]:
    """(dropped_low, dropped_high) masks: floor(drop_low*n) lowest, floor(drop_high*n) highest.

    Rank-based rather than value-based so the dropped counts are exact even
    with tied perplexities (ties break by row order); without ties this is the
    same as cutting at the drop_low and 1-drop_high quantiles. NaN ranks as
    the highest perplexity, so drop_high removes failed scores first.
    """
    seq_ppl = np.asarray(seq_ppl, dtype=np.float64).reshape(-1)
    total = seq_ppl.shape[0]
    order = np.argsort(seq_ppl, kind="stable")
    n_low = _fraction_count(drop_low, total)
    n_high = min(_fraction_count(drop_high, total), total - n_low)
    dropped_low = np.zeros(total, dtype=bool)
    dropped_high = np.zeros(total, dtype=bool)
    dropped_low[order[:n_low]] = True
    dropped_high[order[total - n_high :]] = True
    return dropped_low, dropped_high


def ppl_quantile_mask(seq_ppl: np.ndarray, drop_low: float, drop_high: float) -> np.ndarray:
    """Keep rows between the drop_low and 1-drop_high perplexity quantiles."""
    dropped_low, dropped_high = ppl_quantile_masks(seq_ppl, drop_low, drop_high)
    return ~(dropped_low | dropped_high)


# --------------------------------------------------------------------------
# Detector plug-in
# --------------------------------------------------------------------------


class RepetitionScorer:
    """Built-in detector: score = distinct n-gram share of each row, in (0, 1].

    A cheap stand-in for a learned synthetic-text detector: collapsed models
    loop, and looping text has few distinct n-grams. Use as
    ``_target_: collapse_cli.families.lm.curate.RepetitionScorer`` with ``n: 4``.
    """

    def __init__(self, n: int = 4):
        if not is_int(n) or n < 1:
            raise ValueError(f"RepetitionScorer n must be an integer >= 1, got {n!r}")
        self.n = int(n)

    def __call__(self, synth: np.ndarray, texts: Optional[list] = None) -> np.ndarray:
        return distinct_ngram_share(_check_corpus(synth), self.n)


@dataclass(frozen=True)
class Detector:
    scorer: Scorer
    target: str
    mode: str
    threshold: float


def build_detector(detector_cfg: Mapping) -> Detector:
    """Instantiate `curate.detector` with Hydra; mode/threshold stay with curate."""
    from hydra.utils import instantiate

    detector_cfg = dict(plain(detector_cfg))
    validate_detector(detector_cfg)
    target = detector_cfg["_target_"]
    scorer_cfg = {k: v for k, v in detector_cfg.items() if k not in DETECTOR_OWN_KEYS}
    try:
        scorer = instantiate(scorer_cfg)
    except Exception as err:  # Hydra wraps import/ctor errors; surface one line
        cause = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CollapseError(
            f"curate.detector._target_={target} could not be instantiated ({cause}); "
            "check the class path and its constructor arguments"
        ) from err
    if not callable(scorer):
        raise CollapseError(
            f"curate.detector._target_={target} built a {type(scorer).__name__}, which is not "
            "callable; the scorer must be called as scorer(synth, texts) -> scores"
        )
    return Detector(
        scorer=scorer,
        target=target,
        mode=detector_cfg.get("mode", "filter"),
        threshold=float(detector_cfg.get("threshold", 0.5)),
    )


def score_with_detector(detector: Detector, synth: np.ndarray, texts: Optional[list]) -> np.ndarray:
    """Call the scorer and insist on one finite score in [0, 1] per row."""
    scores = np.asarray(detector.scorer(synth, texts), dtype=np.float64)
    if scores.shape != (synth.shape[0],):
        raise CollapseError(
            f"curate.detector._target_={detector.target} returned scores of shape "
            f"{scores.shape} for {synth.shape[0]} sequences; it must return one score per sequence"
        )
    if not np.all(np.isfinite(scores)) or scores.min(initial=0.0) < 0 or scores.max(initial=0.0) > 1:
        raise CollapseError(
            f"curate.detector._target_={detector.target} returned scores outside [0, 1] "
            "(or NaN); scores must be probabilities of being acceptable"
        )
    return scores


def resample_by_score(scores: np.ndarray, n_out: int, rng: np.random.Generator) -> np.ndarray:
    """Draw n_out positions with replacement, P(i) proportional to scores[i]."""
    scores = np.asarray(scores, dtype=np.float64)
    total = scores.sum()
    if not total > 0:
        raise CollapseError(
            "curate.detector gave every surviving sequence weight 0 in weight mode; "
            "lower curate.detector.threshold or use curate.detector.mode=filter"
        )
    return rng.choice(scores.shape[0], size=n_out, replace=True, p=scores / total)


# --------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------

REPORT_KEYS = (
    "curate_in",
    "curate_drop_exact_dup",
    "curate_drop_near_dup",
    "curate_drop_repetition",
    "curate_drop_ppl_low",
    "curate_drop_ppl_high",
    "curate_drop_watermark",
    "curate_drop_detector",
    "curate_survivors",
    "curate_weight_repeats",
    "curate_resampled",
    "curate_out",
)


def _apply(alive: np.ndarray, keep_among_alive: np.ndarray) -> tuple[np.ndarray, int]:
    """Narrow the alive row indices by a mask over them; return (alive, n_dropped)."""
    return alive[keep_among_alive], int(np.count_nonzero(~keep_among_alive))


def _hard_filters(
    synth: np.ndarray, cfg: CurateConfig, seq_ppl: Optional[np.ndarray], report: dict
) -> np.ndarray:
    """Exact dedup -> near dedup -> repetition -> ppl quantile; return surviving rows."""
    alive = np.arange(synth.shape[0])
    if cfg.exact_dedup:
        alive, report["curate_drop_exact_dup"] = _apply(alive, exact_duplicate_mask(synth[alive]))
    if cfg.near_dedup_n > 0:
        mask = near_duplicate_mask(synth[alive], cfg.near_dedup_n, cfg.near_dedup_threshold)
        alive, report["curate_drop_near_dup"] = _apply(alive, mask)
    if cfg.repetition_n > 0:
        mask = repetition_mask(synth[alive], cfg.repetition_n, cfg.repetition_max)
        alive, report["curate_drop_repetition"] = _apply(alive, mask)
    if cfg.ppl_drop_low > 0 or cfg.ppl_drop_high > 0:
        low, high = ppl_quantile_masks(seq_ppl[alive], cfg.ppl_drop_low, cfg.ppl_drop_high)
        report["curate_drop_ppl_low"] = int(low.sum())
        report["curate_drop_ppl_high"] = int(high.sum())
        alive = alive[~(low | high)]
    return alive


def _check_inputs(
    synth: np.ndarray, cfg: CurateConfig, seq_ppl: Optional[np.ndarray], texts: Optional[list]
) -> Optional[np.ndarray]:
    n_in = synth.shape[0]
    if cfg.ppl_drop_low > 0 or cfg.ppl_drop_high > 0:
        if seq_ppl is None:
            raise ValueError("curate: ppl filter is on but seq_ppl was not given")
        seq_ppl = np.asarray(seq_ppl, dtype=np.float64).reshape(-1)
        if seq_ppl.shape[0] != n_in:
            raise ValueError(f"curate: seq_ppl has {seq_ppl.shape[0]} entries for {n_in} sequences")
    if texts is not None and len(texts) != n_in:
        raise ValueError(f"curate: texts has {len(texts)} entries for {n_in} sequences")
    return seq_ppl


def _shortfall_count(n_kept: int, n_in: int, cfg: CurateConfig) -> int:
    """How many rows to pad so that n_kept meets min_keep_fraction; raise per policy."""
    need = math.ceil(cfg.min_keep_fraction * n_in - 1e-9)
    if n_kept == 0:  # nothing to resample from, whatever the policy
        raise CollapseError(
            f"curate kept 0 of {n_in} sequences; loosen the filters in curate.* "
            "(e.g. raise curate.near_dedup_threshold or curate.repetition_max)"
        )
    if n_kept >= need:
        return 0
    if cfg.on_shortfall == "error":
        raise CollapseError(
            f"curate kept {n_kept} of {n_in} sequences, below "
            f"curate.min_keep_fraction={cfg.min_keep_fraction:g} (needs {need}); loosen the "
            "filters, lower curate.min_keep_fraction, or set curate.on_shortfall=resample"
        )
    return need - n_kept


def _pad_shortfall(alive: np.ndarray, n_in: int, cfg: CurateConfig, rng, report: dict) -> np.ndarray:
    """on_shortfall=resample: uniform draws (with replacement) from the survivors.

    Pads only up to ceil(min_keep_fraction * n_in), the least padding that
    meets the floor, because every extra copy is itself a duplicate in the
    next training mix.
    """
    n_extra = _shortfall_count(alive.shape[0], n_in, cfg)
    if n_extra == 0:
        return alive
    report["curate_resampled"] = n_extra
    return np.concatenate([alive, rng.choice(alive, size=n_extra, replace=True)])


def _weighted_draw(alive: np.ndarray, weights: np.ndarray, n_in: int, cfg, rng, report,
                   drop_key: str = "curate_drop_detector") -> np.ndarray:
    """Weight mode (detector or watermark): draw n_in rows, P proportional to weight (Drayson et al.).

    The shortfall floor is judged on rows with nonzero weight (the only ones
    that can be drawn); the draw itself already restores the full size, so
    on_shortfall=resample adds nothing here.
    """
    _shortfall_count(int(np.count_nonzero(weights > 0)), n_in, cfg)
    indices = alive[resample_by_score(weights, n_in, rng)]
    n_distinct = np.unique(indices).shape[0]
    report[drop_key] = int(alive.shape[0] - n_distinct)
    report["curate_weight_repeats"] = int(indices.shape[0] - n_distinct)
    return indices


def curate(
    synth: np.ndarray,
    cfg: Any,
    seq_ppl: Optional[np.ndarray] = None,
    texts: Optional[list] = None,
    seed: int = 0,
    detected: Optional[np.ndarray] = None,
) -> CurateResult:
    """Apply the configured filters in the fixed order; see the module docstring.

    cfg: a CurateConfig, dict or OmegaConf node (the `curate` node).
    seq_ppl: per-row perplexity (needed only when a ppl filter is on).
    texts: per-row decoded text, passed to the detector (None if not decoded).
    seed: drives the detector's weight-mode draw and shortfall resampling.
    detected: per-row bool, the watermark detector's verdict (needed only with curate.watermark).

    The detector scores only the rows that survived the earlier filters.
    min_keep_fraction is judged on the rows that passed every filter
    (filter-mode detector included). Weight mode reweights rather than
    rejects: rows below detector.threshold get weight 0, and curate_in rows
    are drawn so the next generation's mix keeps its size.
    """
    synth = _check_corpus(synth)
    cfg = as_curate_config(cfg)
    seq_ppl = _check_inputs(synth, cfg, seq_ppl, texts)
    rng = np.random.default_rng(seed)
    n_in = synth.shape[0]
    report = dict.fromkeys(REPORT_KEYS, 0)
    report["curate_in"] = n_in

    alive = _hard_filters(synth, cfg, seq_ppl, report)
    weights, drop_key = np.ones(alive.shape[0]), None  # drop_key: the weighting stage a redraw reports under
    if cfg.watermark.mode != WatermarkMode.none:
        flagged = _check_detected(detected, n_in)[alive]
        if cfg.watermark.mode == WatermarkMode.filter:
            alive, report["curate_drop_watermark"] = _apply(alive, ~flagged)
            weights = weights[~flagged]
        else:
            weights, drop_key = np.where(flagged, cfg.watermark.weight, 1.0), "curate_drop_watermark"
    detector = build_detector(cfg.detector) if cfg.detector is not None else None
    if detector is not None:
        scores = score_with_detector(detector, synth[alive], _subset(texts, alive))
        passed = scores >= detector.threshold
        if detector.mode == "filter":
            alive, report["curate_drop_detector"] = _apply(alive, passed)
            weights = weights[passed]
        else:
            weights, drop_key = weights * np.where(passed, scores, 0.0), "curate_drop_detector"
    if drop_key is None:
        indices = _pad_shortfall(alive, n_in, cfg, rng, report)
    else:
        indices = _weighted_draw(alive, weights, n_in, cfg, rng, report, drop_key)

    n_dropped = sum(v for k, v in report.items() if k.startswith("curate_drop_"))
    report["curate_survivors"] = n_in - n_dropped
    report["curate_out"] = int(indices.shape[0])
    return CurateResult(indices=indices.astype(np.int64), report=report)


def _check_detected(detected: Optional[np.ndarray], n_in: int) -> np.ndarray:
    if detected is None:
        raise ValueError("curate: curate.watermark is on but the watermark detector's verdicts were not given")
    detected = np.asarray(detected, dtype=bool).reshape(-1)
    if detected.shape[0] != n_in:
        raise ValueError(f"curate: detected has {detected.shape[0]} entries for {n_in} sequences")
    return detected


def _subset(texts: Optional[list], rows: np.ndarray) -> Optional[list]:
    return None if texts is None else [texts[i] for i in rows.tolist()]
