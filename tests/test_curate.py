"""Tests for collapse_cli.families.lm.curate: each filter on hand-made corpora with known answers."""

from pathlib import Path

import hydra.utils
import numpy as np
import pytest
from omegaconf import OmegaConf

from collapse_cli.errors import CollapseError
from collapse_cli.families.lm.curate import (
    REPORT_KEYS,
    CurateConfig,
    RepetitionScorer,
    build_detector,
    curate,
    exact_duplicate_mask,
    near_duplicate_mask,
    ngram_hashes,
    ppl_quantile_mask,
    repetition_mask,
    resample_by_score,
    validate_curate,
)

CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "curate"
SCORER_TARGET = "collapse_cli.families.lm.curate.RepetitionScorer"


def random_corpus(n_seqs, seq_len, seed=0, vocab=50_000):
    return np.random.default_rng(seed).integers(0, vocab, size=(n_seqs, seq_len), dtype=np.int64)


def assert_report_adds_up(report):
    drops = sum(v for k, v in report.items() if k.startswith("curate_drop_"))
    assert report["curate_in"] - drops == report["curate_survivors"]
    assert (
        report["curate_survivors"] + report["curate_weight_repeats"] + report["curate_resampled"]
        == report["curate_out"]
    )


class ConstantScorer:
    """A user-style scorer whose scores are given in its config, for exact answers."""

    def __init__(self, scores):
        self.scores = np.asarray(scores, dtype=float)

    def __call__(self, synth, texts):
        return self.scores[: synth.shape[0]]


class AlignedTextScorer:
    """Scores 1 where texts[i] == f"row{synth[i, 0]}", else 0 (checks row/text alignment)."""

    def __call__(self, synth, texts):
        assert len(texts) == synth.shape[0]
        return np.array([float(t == f"row{row[0]}") for row, t in zip(synth, texts)])


# --- n-gram hashing -------------------------------------------------------


def test_ngram_hashes_equal_windows_hash_equal_and_token_zero_counts():
    synth = np.array([[0, 0, 1, 0, 0, 1], [0, 0, 0, 0, 0, 0]])
    h = ngram_hashes(synth, 3)
    assert h.shape == (2, 4) and h.dtype == np.int64
    assert h[0, 0] == h[0, 3]  # (0,0,1) twice
    assert h[0, 0] != h[0, 1]  # (0,0,1) vs (0,1,0)
    assert h[1, 0] != h[0, 0]  # (0,0,0) differs from (0,0,1)
    assert ngram_hashes(synth, 7).shape == (2, 0)  # rows shorter than n


# --- exact dedup ----------------------------------------------------------


def test_exact_duplicate_mask_keeps_first_occurrence():
    synth = np.array([[1, 2, 3], [4, 5, 6], [1, 2, 3], [1, 2, 4], [4, 5, 6]])
    assert exact_duplicate_mask(synth).tolist() == [True, True, False, True, False]


def test_exact_duplicate_mask_empty_corpus():
    assert exact_duplicate_mask(np.zeros((0, 5), dtype=np.int64)).shape == (0,)


# --- near dedup -----------------------------------------------------------


def one_token_changed_pair():
    base = random_corpus(1, 16, seed=3)[0]
    changed = base.copy()
    changed[-1] = (changed[-1] + 1) % 50_000  # only the last 8-gram changes: 8/9 seen
    return np.stack([base, changed])


def test_near_duplicate_one_token_changed_dropped_at_0_8_kept_at_0_99():
    pair = one_token_changed_pair()
    assert near_duplicate_mask(pair, 8, 0.8).tolist() == [True, False]
    assert near_duplicate_mask(pair, 8, 0.99).tolist() == [True, True]


def test_near_duplicate_compares_only_against_kept_rows():
    # Row 1 is a near dup of row 0 and is dropped; row 2 shares 8-grams only
    # with the changed tail of row 1, so it must be judged against row 0 alone.
    a = np.arange(16)
    b = np.concatenate([a[:12], [100, 101, 102, 103]])  # near dup of a at n=4
    c = np.concatenate([[100, 101, 102, 103], [200 + i for i in range(12)]])
    synth = np.stack([a, b, c])
    # b: 13 4-grams, 9 seen in a -> 0.69; drop at 0.5. c: only (100..103)
    # occurs in b, which was dropped, so c has 0 seen 4-grams and is kept.
    assert near_duplicate_mask(synth, 4, 0.5).tolist() == [True, False, True]
    # At 0.9 b is kept, and then c's first 4-gram counts as seen: 1/13, still kept.
    assert near_duplicate_mask(synth, 4, 0.9).tolist() == [True, True, True]


def test_near_duplicate_threshold_is_inclusive():
    # Row 1 has 2 bigrams, (1,2) seen in row 0 and (2,9) not: share exactly 0.5.
    synth = np.array([[1, 2, 3], [1, 2, 9]])
    assert near_duplicate_mask(synth, 2, 0.5).tolist() == [True, False]
    assert near_duplicate_mask(synth, 2, 0.51).tolist() == [True, True]


def test_near_duplicate_random_rows_all_kept_and_short_rows_kept():
    assert near_duplicate_mask(random_corpus(200, 32), 8, 0.8).all()
    short = np.array([[1, 2, 3], [1, 2, 3]])
    assert near_duplicate_mask(short, 8, 0.8).tolist() == [True, True]


# --- repetition -----------------------------------------------------------


def test_repetition_mask_drops_single_token_row_and_loop_keeps_varied_row():
    synth = np.array(
        [
            [7, 7, 7, 7, 7, 7, 7, 7],  # 5 4-grams, 1 distinct: repeated share 0.8
            [1, 2, 3, 4, 5, 6, 7, 8],  # all distinct: 0.0
            [1, 2, 1, 2, 1, 2, 1, 2],  # 2 distinct of 5: 0.6
            [1, 2, 3, 4, 1, 2, 3, 4],  # 4 distinct of 5: 0.2
        ]
    )
    assert repetition_mask(synth, 4, 0.5).tolist() == [False, True, False, True]
    # "exceeds" is strict: share 0.6 is kept at max_rep 0.6.
    assert repetition_mask(synth, 4, 0.6).tolist() == [False, True, True, True]


# --- perplexity quantiles -------------------------------------------------


def test_ppl_quantile_mask_drops_exact_fractions():
    ppl = np.array([5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 8.0, 4.0, 6.0, 10.0])
    keep = ppl_quantile_mask(ppl, drop_low=0.2, drop_high=0.1)
    assert sorted(ppl[keep].tolist()) == [3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]
    assert ppl_quantile_mask(ppl, 0.0, 0.0).all()


def test_ppl_quantile_mask_ties_and_nan():
    # Ties: exactly floor(0.5 * 4) = 2 dropped even though all values tie.
    assert ppl_quantile_mask(np.ones(4), 0.0, 0.5).sum() == 2
    # NaN ranks highest, so drop_high removes it first.
    ppl = np.array([1.0, np.nan, 2.0, 3.0])
    assert ppl_quantile_mask(ppl, 0.0, 0.25).tolist() == [True, False, True, True]


# --- detector plug-in -----------------------------------------------------


def test_repetition_scorer_through_hydra_instantiate():
    scorer = hydra.utils.instantiate({"_target_": SCORER_TARGET, "n": 2})
    assert isinstance(scorer, RepetitionScorer) and scorer.n == 2
    synth = np.array([[3, 3, 3, 3, 3], [1, 2, 3, 4, 5]])
    np.testing.assert_allclose(scorer(synth, ["", ""]), [0.25, 1.0])


def test_build_detector_keeps_mode_threshold_out_of_the_constructor():
    detector = build_detector({"_target_": SCORER_TARGET, "n": 3, "mode": "weight", "threshold": 0.2})
    assert detector.mode == "weight" and detector.threshold == 0.2
    assert isinstance(detector.scorer, RepetitionScorer) and detector.scorer.n == 3


def test_build_detector_bad_target_is_one_line_collapse_error():
    with pytest.raises(CollapseError) as err:
        build_detector({"_target_": "collapse_cli.families.lm.curate.NoSuchScorer", "mode": "filter"})
    message = str(err.value)
    assert "curate.detector._target_" in message and "\n" not in message


def test_detector_filter_mode_through_curate():
    synth = np.array([[7] * 8, [1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 1, 2, 1, 2, 1, 2]])
    cfg = {
        "detector": {"_target_": SCORER_TARGET, "n": 4, "mode": "filter", "threshold": 0.5},
        "min_keep_fraction": 0.0,
    }
    result = curate(synth, cfg, texts=["a", "b", "c"], seed=0)
    # distinct 4-gram shares: 0.2, 1.0, 0.4 -> only row 1 passes 0.5.
    assert result.indices.tolist() == [1]
    assert result.report["curate_drop_detector"] == 2
    assert_report_adds_up(result.report)


def test_detector_sees_only_survivors_with_their_own_texts():
    # Rows 0 and 1 are identical, so exact dedup drops row 1 before the
    # detector. AlignedTextScorer accepts a row only if its text is
    # "row<first token>": a misaligned texts subset would reject rows.
    synth = np.array([[1, 2, 3, 4], [1, 2, 3, 4], [5, 6, 7, 8]])
    texts = ["row1", "dup", "row5"]
    cfg = {
        "exact_dedup": True,
        "detector": {"_target_": f"{__name__}.AlignedTextScorer", "mode": "filter", "threshold": 0.5},
    }
    result = curate(synth, cfg, texts=texts, seed=0)
    assert result.indices.tolist() == [0, 2]
    assert result.report["curate_drop_exact_dup"] == 1 and result.report["curate_drop_detector"] == 0


def test_detector_bad_scores_raise_collapse_error():
    synth = random_corpus(3, 8)
    target = f"{__name__}.ConstantScorer"
    for scores in ([0.5, 1.5, 0.2], [0.5, 0.5]):
        cfg = {"detector": {"_target_": target, "scores": scores, "mode": "filter", "threshold": 0.1}}
        with pytest.raises(CollapseError, match="curate.detector._target_"):
            curate(synth, cfg, texts=["a", "b", "c"], seed=0)


# --- weight-mode resampling -----------------------------------------------


def test_resample_by_score_seeded_and_prefers_high_scores():
    scores = np.array([0.05, 0.05, 0.9])
    a = resample_by_score(scores, 1000, np.random.default_rng(1))
    b = resample_by_score(scores, 1000, np.random.default_rng(1))
    c = resample_by_score(scores, 1000, np.random.default_rng(2))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.mean(a == 2) > 0.8
    with pytest.raises(CollapseError):
        resample_by_score(np.zeros(3), 5, np.random.default_rng(0))


def test_weight_mode_curate_is_seeded_full_size_and_skips_zero_weight():
    synth = random_corpus(4, 8)
    target = f"{__name__}.ConstantScorer"
    scores = [0.1, 0.9, 0.0, 0.5]
    cfg = {"detector": {"_target_": target, "scores": scores, "mode": "weight", "threshold": 0.0}}
    texts = ["a", "b", "c", "d"]
    r1, r2 = curate(synth, cfg, texts=texts, seed=7), curate(synth, cfg, texts=texts, seed=7)
    r3 = curate(synth, cfg, texts=texts, seed=8)
    assert np.array_equal(r1.indices, r2.indices) and not np.array_equal(r1.indices, r3.indices)
    assert r1.indices.shape == (4,) and 2 not in r1.indices
    assert r1.report["curate_out"] == 4
    assert r1.report["curate_survivors"] == np.unique(r1.indices).size
    assert_report_adds_up(r1.report)


def test_weight_mode_threshold_zeroes_low_scores():
    synth = random_corpus(4, 8)
    cfg = {
        "detector": {
            "_target_": f"{__name__}.ConstantScorer",
            "scores": [0.3, 0.9, 0.2, 0.8],
            "mode": "weight",
            "threshold": 0.5,
        }
    }
    result = curate(synth, cfg, texts=list("abcd"), seed=0)
    assert set(result.indices.tolist()) <= {1, 3}


# --- shortfall policy -----------------------------------------------------


def mostly_duplicates():
    """10 rows, 3 distinct: exact dedup keeps rows 0, 1, 2."""
    rows = random_corpus(3, 6)
    return rows[[0, 1, 2, 0, 0, 1, 0, 2, 1, 0]]


def test_shortfall_error_names_key_sizes_and_fix():
    cfg = {"exact_dedup": True, "min_keep_fraction": 0.5, "on_shortfall": "error"}
    with pytest.raises(CollapseError) as err:
        curate(mostly_duplicates(), cfg, seed=0)
    message = str(err.value)
    assert "curate.min_keep_fraction=0.5" in message
    assert "kept 3 of 10" in message and "needs 5" in message
    assert "curate.on_shortfall=resample" in message and "\n" not in message


def test_shortfall_resample_fills_to_the_floor_from_survivors_seeded():
    cfg = {"exact_dedup": True, "min_keep_fraction": 0.5, "on_shortfall": "resample"}
    synth = mostly_duplicates()
    r1, r2 = curate(synth, cfg, seed=3), curate(synth, cfg, seed=3)
    assert np.array_equal(r1.indices, r2.indices)
    assert r1.indices.shape == (5,)
    assert set(r1.indices.tolist()) == {0, 1, 2}  # only survivors, all of them
    assert r1.report["curate_resampled"] == 2
    assert r1.report["curate_drop_exact_dup"] == 7
    assert_report_adds_up(r1.report)


def test_zero_survivors_always_error_even_with_resample():
    synth = np.full((4, 8), 5, dtype=np.int64)  # every row is one token repeated
    cfg = {"repetition_n": 2, "repetition_max": 0.1, "min_keep_fraction": 0.0, "on_shortfall": "resample"}
    with pytest.raises(CollapseError, match="kept 0 of 4"):
        curate(synth, cfg, seed=0)


# --- the pipeline ---------------------------------------------------------


def test_curate_with_everything_off_returns_every_row_in_order():
    synth = random_corpus(6, 8)
    result = curate(synth, CurateConfig(), seed=0)
    assert result.indices.tolist() == list(range(6))
    assert set(result.report) == set(REPORT_KEYS)
    assert result.report["curate_out"] == 6 and result.report["curate_drop_exact_dup"] == 0


def test_curate_order_and_counts_on_a_known_corpus():
    varied = random_corpus(8, 16, seed=5)
    near = varied[0].copy()
    near[-1] = (near[-1] + 1) % 50_000
    loop = np.array([4, 9] * 8)
    synth = np.stack([*varied, varied[1], near, loop, loop])  # 12 rows
    ppl = np.arange(12, dtype=float)  # row 7 (highest among survivors) goes to ppl_high
    cfg = {
        "exact_dedup": True,
        "near_dedup_n": 8,
        "near_dedup_threshold": 0.8,
        "repetition_n": 4,
        "repetition_max": 0.5,
        "ppl_drop_low": 0.15,
        "ppl_drop_high": 0.15,
    }
    result = curate(synth, cfg, seq_ppl=ppl, seed=0)
    r = result.report
    # Exact: row 8 (= row 1) and row 11 (= row 10). Near: row 9. Repetition:
    # row 10. Left: rows 0..7 -> floor(0.15*8)=1 low (row 0), 1 high (row 7).
    assert (r["curate_drop_exact_dup"], r["curate_drop_near_dup"], r["curate_drop_repetition"]) == (2, 1, 1)
    assert (r["curate_drop_ppl_low"], r["curate_drop_ppl_high"]) == (1, 1)
    assert result.indices.tolist() == [1, 2, 3, 4, 5, 6]
    assert r["curate_out"] == 6
    assert_report_adds_up(r)


def test_curate_input_mismatches_are_caught():
    synth = random_corpus(4, 8)
    with pytest.raises(ValueError, match="seq_ppl"):
        curate(synth, {"ppl_drop_high": 0.25}, seed=0)
    with pytest.raises(ValueError, match="seq_ppl"):
        curate(synth, {"ppl_drop_high": 0.25}, seq_ppl=np.ones(3), seed=0)
    with pytest.raises(CollapseError, match="curate.near_dedup"):
        curate(synth, {"near_dedup": 8}, seed=0)  # typo'd key must not pass silently


# --- config ---------------------------------------------------------------


@pytest.mark.parametrize(
    "override, key",
    [
        ({"ppl_drop_low": 1.5}, "curate.ppl_drop_low=1.5"),
        ({"ppl_drop_low": 0.6, "ppl_drop_high": 0.5}, "curate.ppl_drop_low + curate.ppl_drop_high"),
        ({"near_dedup_n": -1}, "curate.near_dedup_n=-1"),
        ({"near_dedup_threshold": 0.0}, "curate.near_dedup_threshold=0.0"),
        ({"repetition_max": 2.0}, "curate.repetition_max=2.0"),
        ({"min_keep_fraction": -0.1}, "curate.min_keep_fraction=-0.1"),
        ({"on_shortfall": "ignore"}, "curate.on_shortfall='ignore'"),
        ({"detector": {"mode": "weight"}}, "curate.detector="),
        ({"detector": {"_target_": SCORER_TARGET, "mode": "vote"}}, "curate.detector.mode='vote'"),
        ({"detector": {"_target_": SCORER_TARGET, "threshold": 3}}, "curate.detector.threshold=3"),
    ],
)
def test_validate_curate_names_the_key(override, key):
    with pytest.raises(CollapseError) as err:
        validate_curate(CurateConfig(**override))
    assert key in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["none", "quality", "detector"])
def test_shipped_yaml_merges_into_the_typed_schema_and_runs(name):
    node = OmegaConf.merge(OmegaConf.structured(CurateConfig), OmegaConf.load(CONF_DIR / f"{name}.yaml"))
    validate_curate(OmegaConf.to_object(node))
    synth = random_corpus(50, 32)
    result = curate(synth, node, seq_ppl=np.linspace(1, 2, 50), texts=[""] * 50, seed=0)
    assert_report_adds_up(result.report)
    if name == "none":
        assert result.indices.tolist() == list(range(50))
    if name == "quality":
        assert result.report["curate_drop_ppl_high"] == 2  # floor(0.05 * 50)
    if name == "detector":
        assert result.report["curate_out"] == 50 and result.report["curate_weight_repeats"] > 0


def test_quality_yaml_values():
    cfg = OmegaConf.load(CONF_DIR / "quality.yaml")
    assert cfg.exact_dedup is True
    assert (cfg.near_dedup_n, cfg.near_dedup_threshold) == (8, 0.8)
    assert (cfg.repetition_n, cfg.repetition_max) == (4, 0.5)
    assert cfg.ppl_drop_high == 0.05 and cfg.detector is None
