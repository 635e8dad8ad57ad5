"""Tests for the LM's corpus metrics (families/lm/corpus_metrics.py) and the shared statistics
(measure/stats.py): hand-computed values on tiny inputs plus invariants.

Each hand computation is written next to its assertion.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter

import numpy as np
import pytest

from collapse_cli.families.lm import corpus_metrics as M
from collapse_cli.measure import stats

nan_ok = dict(nan_ok=True)


# ---------------------------------------------------------------- perplexity


def test_perplexity_is_exp_of_mean_nll():
    # nll_sum = 4 ln 2 over 2 tokens -> mean 2 ln 2 -> exp = 4
    assert M.perplexity(4 * math.log(2), 2) == pytest.approx(4.0)
    assert M.perplexity(0.0, 10) == 1.0


def test_perplexity_edge_cases():
    assert math.isnan(M.perplexity(1.0, 0))
    assert M.perplexity(1e6, 1) == math.inf  # exp(1e6) overflows -> inf, not an exception


def test_quantiles_keys_and_values():
    # 0..100: linear quantile q of 101 evenly spaced points is exactly 100 q
    got = M.quantiles(range(101))
    assert got == pytest.approx({"q01": 1.0, "q05": 5.0, "q50": 50.0, "q95": 95.0, "q99": 99.0})
    assert list(got) == ["q01", "q05", "q50", "q95", "q99"]


def test_quantiles_ignore_nan_and_handle_empty():
    # [1, nan, 3] -> [1, 3]: median 2
    assert M.quantiles([1.0, float("nan"), 3.0], qs=(0.5,)) == {"q50": 2.0}
    assert all(math.isnan(v) for v in M.quantiles([]).values())


def test_tail_fractions_hand_example():
    # real = 0..100 -> q05 = 5, q95 = 95. synth below 5: {0, 1, 2} = 3/8;
    # above 95: {96, 100} = 2/8; 5 and 95 themselves are not strictly outside.
    synth = [0, 1, 2, 50, 96, 100, 5, 95]
    below, above = M.tail_fractions(synth, range(101))
    assert below == pytest.approx(3 / 8)
    assert above == pytest.approx(2 / 8)


def test_tail_fractions_same_distribution_gives_about_five_percent():
    real = np.arange(1000, dtype=float)
    below, above = M.tail_fractions(real, real)
    assert below == pytest.approx(0.05, abs=0.002)
    assert above == pytest.approx(0.05, abs=0.002)


def test_wasserstein1_hand_example():
    # Quantile functions: Q_a = 0 on [0, 1/2), 1 on [1/2, 1);
    # Q_b = 0 on [0, 2/3), 3 on [2/3, 1).
    # W1 = int |Q_a - Q_b| = (2/3 - 1/2) * 1 + (1 - 2/3) * 2 = 1/6 + 2/3 = 5/6
    assert M.wasserstein1([0, 1], [0, 0, 3]) == pytest.approx(5 / 6)
    assert M.wasserstein1([0, 0, 3], [0, 1]) == pytest.approx(5 / 6)  # symmetric


def test_wasserstein1_invariants():
    rng = np.random.default_rng(0)
    sample = rng.normal(size=257)
    assert M.wasserstein1(sample, sample) == pytest.approx(0.0, abs=1e-12)
    assert M.wasserstein1(sample, sample + 2.5) == pytest.approx(2.5)
    # Same empirical distribution at different sizes: [1,2,3] vs [1,2,3,1,2,3] -> 0
    assert M.wasserstein1([1, 2, 3], [3, 1, 2, 1, 2, 3]) == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(M.wasserstein1([], [1.0]))
    assert math.isnan(M.wasserstein1([1.0, math.inf], [1.0]))


# ---------------------------------------------------------------- counting


def test_ngram_counts_do_not_cross_boundaries():
    # seq 1 bigrams: (1,2) (2,1) (1,2); seq 2: (2,1). The boundary pair (2,2) is not one.
    counts = M.ngram_counts([[1, 2, 1, 2], [2, 1]], 2)
    assert counts == Counter({(1, 2): 2, (2, 1): 2})
    assert (2, 2) not in counts


def test_ngram_counts_unigrams_are_1_tuples_and_arrays_match_lists():
    lists = [[1, 2, 1, 2], [2, 1]]
    assert M.ngram_counts(lists, 1) == Counter({(1,): 3, (2,): 3})
    arrays = [np.array(s, dtype=np.int32) for s in lists]
    from_arrays = M.ngram_counts(arrays, 2)
    assert from_arrays == M.ngram_counts(lists, 2)
    assert all(type(u) is int for gram in from_arrays for u in gram)
    with pytest.raises(ValueError):
        M.ngram_counts(lists, 0)


def test_truncate_to_tokens():
    corpus = [[1, 2, 3], [4, 5], [6]]
    assert M.truncate_to_tokens(corpus, 4) == [[1, 2, 3], [4]]
    assert M.truncate_to_tokens(corpus, 5) == [[1, 2, 3], [4, 5]]
    assert M.truncate_to_tokens(corpus, 0) == []
    assert M.truncate_to_tokens(corpus, 100) == corpus
    assert M.corpus_size(M.truncate_to_tokens([np.arange(64)] * 10, 200)) == 200


# ---------------------------------------------------------------- tail family

# real: a=1 b=1 c=2 d=6 e=10 (total 20); synth: a=1 d=5 e=12 z=2 (total 20)
REAL = Counter(a=1, b=1, c=2, d=6, e=10)
SYNTH = Counter(a=1, d=5, e=12, z=2)


def test_tail_recall_hand_example():
    assert M.tail_recall(REAL, SYNTH, 1) == pytest.approx(1 / 2)  # tail {a,b}: a present
    assert M.tail_recall(REAL, SYNTH, 2) == pytest.approx(1 / 3)  # tail {a,b,c}: a present
    assert M.tail_recall(REAL, SYNTH, 5) == pytest.approx(1 / 3)  # d=6 is not in the 5-tail
    assert M.tail_coverage(REAL, SYNTH) == M.tail_recall(REAL, SYNTH, 5)


def test_tail_mass_ratio_hand_example():
    # k=1: real tail {a,b} share 2/20 = 0.1; synth mass on it 1/20 = 0.05 -> 0.5
    assert M.tail_mass_ratio(REAL, SYNTH, 1) == pytest.approx(0.5)
    # k=2: real tail {a,b,c} share 4/20 = 0.2; synth mass on it 1/20 -> 0.25
    assert M.tail_mass_ratio(REAL, SYNTH, 2) == pytest.approx(0.25)


def test_head_recall_hand_example():
    # desc real counts e10 d6 c2 a1 b1; cumulative 10, 16, ...; half of 20 = 10 is
    # reached at e -> threshold count 10 -> head {e}; present in synth -> 1
    assert M.head_recall(REAL, SYNTH) == 1.0
    # mass 0.6 -> 12 reached at d (16) -> threshold 6 -> head {e, d}; synth {e} -> 1/2
    assert M.head_recall(REAL, Counter(e=3), mass=0.6) == pytest.approx(0.5)


def test_head_recall_keeps_ties_together():
    # x=5 y=5 z=1 (total 11): 5.5 reached at the second 5 -> threshold 5 -> head {x, y}
    # whichever of the tied pair sorted first; synth holding either one gives 1/2.
    real = Counter(x=5, y=5, z=1)
    assert M.head_recall(real, Counter(x=1)) == pytest.approx(0.5)
    assert M.head_recall(real, Counter(y=1)) == pytest.approx(0.5)


def test_vocab_survival_and_novel_rate_hand_example():
    # V(real) = {a,b,c,d,e}, V(synth) = {a,d,e,z}: survival 3/5, novel {z} -> 1/4
    assert M.vocab_survival(REAL, SYNTH) == pytest.approx(3 / 5)
    assert M.novel_type_rate(REAL, SYNTH) == pytest.approx(1 / 4)


def test_tail_family_invariants():
    for k in (1, 2, 5, 10):
        assert M.tail_recall(REAL, REAL, k) == 1.0
        assert M.tail_mass_ratio(REAL, REAL, k) == pytest.approx(1.0)
    assert M.js_divergence(REAL, REAL) == 0.0
    assert M.novel_type_rate(REAL, REAL) == 0.0
    # Synth with only the head (d, e): every tail type missing -> TR = 0 = TMR
    head_only = Counter(d=3, e=7)
    for k in (1, 2, 5):
        assert M.tail_recall(REAL, head_only, k) == 0.0
        assert M.tail_mass_ratio(REAL, head_only, k) == 0.0


def test_tail_family_undefined_is_nan():
    no_tail = Counter(a=10, b=20)
    assert math.isnan(M.tail_recall(no_tail, SYNTH, 5))
    assert math.isnan(M.tail_mass_ratio(no_tail, SYNTH, 5))
    assert math.isnan(M.tail_mass_ratio(REAL, Counter(), 5))
    assert math.isnan(M.novel_type_rate(REAL, Counter()))
    assert math.isnan(M.vocab_survival(Counter(), SYNTH))
    # Zero counts in a Counter do not make a type present
    assert M.tail_recall(REAL, Counter(a=0, b=0, c=0, e=1), 2) == 0.0


def test_extinction_generation_first_absence():
    # d gone at gen 1; b and c first missing at gen 3 (b's comeback at 4 does not
    # undo it); a never missing -> None
    gens = [{"a", "b", "c", "d"}, {"a", "b", "c"}, {"a", "b", "c"}, {"a"}, {"a", "b"}]
    assert M.extinction_generation("abcd", gens) == {"a": None, "b": 3, "c": 3, "d": 1}
    as_mapping = {g + 1: types for g, types in enumerate(gens)}  # generations 1..5
    assert M.extinction_generation("abcd", as_mapping) == {"a": None, "b": 4, "c": 4, "d": 2}


def test_median_extinction_by_bucket():
    real_counts = {"a": 1, "b": 1, "c": 3, "d": 50, "e": 200}
    extinction = {"a": 1, "b": None, "c": 2, "d": None, "e": None}
    got = M.median_extinction_by_bucket(extinction, real_counts, censor_at=5)
    # '1': median(1, censored 5) = 3; '2-5': c -> 2; '6-20': empty -> nan;
    # '21-100': d censored -> 5; '>100': e censored -> 5
    assert list(got) == ["1", "2-5", "6-20", "21-100", ">100"]
    assert got == pytest.approx({"1": 3.0, "2-5": 2.0, "6-20": math.nan, "21-100": 5.0,
                                 ">100": 5.0}, **nan_ok)


def test_bucket_label():
    assert M.bucket_label(1, 1) == "1"
    assert M.bucket_label(2, 5) == "2-5"
    assert M.bucket_label(101, None) == ">100"


# ---------------------------------------------------------------- tail perplexity


def test_frequency_deciles_hand_example():
    # counts by id: [50, 0, 30, 10, 5, 5], total 100. Sorted desc (ties by id):
    # id0 50, id2 30, id3 10, id4 5, id5 5; mass before each: 0, 50, 80, 90, 95
    # -> floor(10 * before / 100) = 0, 5, 8, 9, 9; unseen id1 -> -1
    got = M.frequency_deciles(np.array([50, 0, 30, 10, 5, 5]))
    assert got.tolist() == [0, -1, 5, 8, 9, 9]


def test_frequency_deciles_split_mass_evenly():
    # 100 types of count 1: type i has i tokens before it -> decile i // 10
    got = M.frequency_deciles(np.ones(100, dtype=int))
    assert np.bincount(got).tolist() == [10] * 10
    assert (M.frequency_deciles(np.zeros(5, dtype=int)) == -1).all()


def test_bucket_perplexity_hand_example():
    buckets = M.frequency_deciles(np.array([50, 0, 30, 10, 5, 5]))  # see above
    nll = np.log([2.0, 8.0, 4.0, 1.0])
    gold = np.array([0, 4, 5, 1])  # deciles 0, 9, 9, -1 (skipped)
    got = M.bucket_perplexity(nll, gold, buckets)
    # decile 0: exp(ln 2) = 2; decile 9: exp((ln 8 + ln 4) / 2) = sqrt(32)
    assert len(got) == 10
    assert got[0] == pytest.approx(2.0)
    assert got[9] == pytest.approx(math.sqrt(32))
    assert all(math.isnan(v) for v in got[1:9])


# ---------------------------------------------------------------- diversity

TINY = [[1, 2, 1, 2], [2, 1]]


def test_distinct_n_hand_example():
    assert M.distinct_n(TINY, 1) == pytest.approx(2 / 6)  # {1,2} over 6 tokens
    assert M.distinct_n(TINY, 2) == pytest.approx(2 / 4)  # {(1,2),(2,1)} over 4 bigrams
    assert M.distinct_n(TINY, 3) == pytest.approx(2 / 2)  # (1,2,1) (2,1,2)
    assert math.isnan(M.distinct_n(TINY, 5))
    with pytest.raises(ValueError):
        M.distinct_n(TINY, 0)
    assert M.distinct_n([["the", "cat", "the", "cat"]], 1) == pytest.approx(2 / 4)


def test_rep_n_hand_example():
    # seq 1: 3 bigrams, 2 unique -> 1/3; seq 2: 1 bigram -> 0; mean 1/6
    assert M.rep_n(TINY, 2) == pytest.approx(1 / 6)
    # trigrams: seq 1 has 2 unique of 2 -> 0; seq 2 has none and is left out
    assert M.rep_n(TINY, 3) == 0.0
    assert M.rep_n([[7, 7, 7, 7]], 1) == pytest.approx(0.75)  # 1 - 1/4
    assert math.isnan(M.rep_n([[1]], 2))


@pytest.mark.parametrize("ragged", [False, True])
def test_rep_n_matches_per_sequence_counts(ragged):
    # Even lengths take the row-sort path; one long sequence among short ones the
    # global-sort path. Both must equal 1 - |set| / count per sequence, averaged.
    rng = np.random.default_rng(5)
    lengths = [200] + [6] * 50 if ragged else [12] * 40
    seqs = [rng.integers(0, 4, size=length).tolist() for length in lengths]
    for n in (1, 2, 4):
        expected = np.mean([1 - len(M.ngram_counts([s], n)) / (len(s) - n + 1) for s in seqs])
        assert M.rep_n(seqs, n) == pytest.approx(expected)


def test_unigram_entropy():
    assert M.unigram_entropy(Counter(a=1, b=1, c=2)) == pytest.approx(1.5)  # (1/4,1/4,1/2)
    assert M.unigram_entropy(np.full(8, 3)) == pytest.approx(3.0)  # uniform over 8
    assert M.unigram_entropy(Counter(a=5)) == 0.0
    assert math.isnan(M.unigram_entropy(Counter()))


def test_compression_ratio():
    text = "the cat sat on the mat " * 50
    raw = text.encode()
    assert M.compression_ratio(text) == pytest.approx(len(raw) / len(zlib.compress(raw, 9)))
    random_text = "".join(chr(c) for c in np.random.default_rng(0).integers(33, 127, 1150))
    assert M.compression_ratio(text) > 5 * M.compression_ratio(random_text)
    assert math.isnan(M.compression_ratio(""))


def reference_sentence_bleu(hyp, refs, max_n):
    """NLTK sentence_bleu with SmoothingFunction().method1, written out naively."""
    def grams(seq, n):
        return Counter(tuple(seq[i:i + n]) for i in range(len(seq) - n + 1))

    log_sum, first_numerator = 0.0, None
    for n in range(1, max_n + 1):
        hyp_counts = grams(hyp, n)
        ref_max = Counter()
        for ref in refs:
            for gram, c in grams(ref, n).items():
                ref_max[gram] = max(ref_max[gram], c)
        numerator = sum(min(c, ref_max[g]) for g, c in hyp_counts.items())
        denominator = max(1, sum(hyp_counts.values()))
        first_numerator = numerator if n == 1 else first_numerator
        log_sum += math.log((numerator if numerator else 0.1) / denominator) / max_n
    if first_numerator == 0:
        return 0.0
    c = len(hyp)
    r = min((len(ref) for ref in refs), key=lambda length: (abs(length - c), length))
    bp = 1.0 if c > r else (0.0 if c == 0 else math.exp(1 - r / c))
    return bp * math.exp(log_sum)


def test_self_bleu_hand_example():
    # A=[1,2,3,4] vs B=[1,2,3,5]: p1 = 3/4, p2 = 2/3 (bigrams (1,2),(2,3) match), BP = 1
    # BLEU-2 = sqrt(3/4 * 2/3) = sqrt(1/2), same for B against A
    pair = [[1, 2, 3, 4], [1, 2, 3, 5]]
    assert M.self_bleu(pair, 10, seed=0, max_n=2) == pytest.approx(math.sqrt(0.5))
    # BLEU-4: p3 = 1/2, p4 = 0 -> smoothed 0.1 / 1: (3/4 * 2/3 * 1/2 * 0.1) ** (1/4)
    assert M.self_bleu(pair, 10, seed=0) == pytest.approx(0.025 ** 0.25)


def test_self_bleu_leaves_the_hypothesis_out():
    # BLEU-1. X=[7,7,7,7]: others hold at most two 7s -> 2/4. Y=[7,7,8,9]: all 4
    # clipped by X or Z -> 1. Z=[8,9,10,11]: 8, 9 in Y -> 2/4. Mean (0.5 + 1 + 0.5) / 3.
    # Counting X against itself would give X a 1.
    seqs = [[7, 7, 7, 7], [7, 7, 8, 9], [8, 9, 10, 11]]
    assert M.self_bleu(seqs, 3, seed=0, max_n=1) == pytest.approx(2 / 3)


def test_self_bleu_invariants():
    assert M.self_bleu([[5, 6, 7, 8, 9]] * 6, 6, seed=1) == pytest.approx(1.0)
    assert M.self_bleu([[1, 2], [3, 4], [5, 6]], 3, seed=1) == 0.0  # no unigram match
    assert math.isnan(M.self_bleu([[1, 2, 3]], 5, seed=1))


def test_self_bleu_matches_naive_reference():
    rng = np.random.default_rng(3)
    # varied lengths exercise the closest-reference-length brevity penalty
    seqs = [rng.integers(0, 6, size=rng.integers(0, 12)).tolist() for _ in range(25)]
    expected = np.mean([reference_sentence_bleu(h, seqs[:i] + seqs[i + 1:], 4)
                        for i, h in enumerate(seqs)])
    assert M.self_bleu(seqs, 100, seed=0) == pytest.approx(expected)


def test_self_bleu_sampling_is_seeded():
    # (Its speed at this size is timed by scripts/bench_metrics.py, not here.)
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 500, size=64) for _ in range(1000)]
    first = M.self_bleu(seqs, 200, seed=7)
    assert M.self_bleu(seqs, 200, seed=7) == first
    assert M.self_bleu(seqs, 200, seed=8) != first


# ---------------------------------------------------------------- divergences


def test_js_divergence_hand_examples():
    assert M.js_divergence(Counter(a=1), Counter(b=3)) == pytest.approx(1.0)  # disjoint
    # p = (1/2, 1/2), q = (1, 0), m = (3/4, 1/4):
    # KL(p||m) = 1 - log2(3)/2, KL(q||m) = 2 - log2 3 -> JS = 3/2 - (3/4) log2 3
    expected = 1.5 - 0.75 * math.log2(3)
    assert M.js_divergence(Counter(a=1, b=1), Counter(a=4)) == pytest.approx(expected)
    assert M.js_divergence(Counter(a=4), Counter(a=1, b=1)) == pytest.approx(expected)
    assert M.js_divergence(Counter(a=2, b=6), Counter(a=1, b=3)) == 0.0  # same shape
    assert math.isnan(M.js_divergence(Counter(), Counter(a=1)))


def test_kl_truth_model_hand_example():
    # row 1: p = (1/2, 1/2, 0), q = (1/4, 3/4, 0)
    #   CE = -(ln(1/4) + ln(3/4)) / 2 = 0.8369882, H = ln 2 = 0.6931472
    # row 2: p = q = (1, 0, 0): CE = H = 0 (the -inf log q under p = 0 adds nothing)
    p = np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    with np.errstate(divide="ignore"):
        logq = np.log(np.array([[0.25, 0.75, 0.0], [1.0, 0.0, 0.0]]))
    ce, h, kl = M.kl_truth_model(p, logq)
    row1_ce = -(math.log(0.25) + math.log(0.75)) / 2
    assert ce == pytest.approx(row1_ce / 2)
    assert h == pytest.approx(math.log(2) / 2)
    assert kl == pytest.approx((row1_ce - math.log(2)) / 2)


def test_kl_truth_model_zero_when_model_is_truth():
    p = np.random.default_rng(0).dirichlet(np.ones(7), size=5)
    ce, h, kl = M.kl_truth_model(p, np.log(p))
    assert kl == pytest.approx(0.0, abs=1e-12)
    assert ce == pytest.approx(h)


# ---------------------------------------------------------------- early warning


def test_bootstrap_se():
    values = np.random.default_rng(1).normal(size=10_000)
    se = stats.bootstrap_se(values, seed=0)
    assert se == pytest.approx(values.std(ddof=1) / 100, rel=0.2)  # sigma / sqrt(n)
    assert stats.bootstrap_se(values, seed=0) == se
    assert stats.bootstrap_se(values, seed=1) != se
    assert stats.bootstrap_se([3.0] * 50, seed=0) == 0.0
    assert math.isnan(stats.bootstrap_se([1.0], seed=0))


def test_first_departure():
    # band = 2 * sqrt(0.1^2 + 0.1^2) = 0.283; diffs 0.1, 0.5 -> generation 2
    assert stats.first_departure([1.0, 1.1, 1.5, 2.0], [0.1] * 4) == 2
    assert stats.first_departure([1.0, 0.5], [0.1, 0.1]) == 1  # either direction
    assert stats.first_departure([1.0, 1.05, 0.95], [0.1] * 3) is None
    # diff exactly at the band (2 = 2 * sqrt(0 + 1)) is not a departure
    assert stats.first_departure([0.0, 2.0], [0.0, 1.0]) is None
    assert stats.first_departure([1.0, float("nan"), 2.0], [0.1] * 3) == 2  # nan skipped
    assert stats.first_departure([], []) is None


def test_early_warning_verdict_tail_first():
    # tail: band 2 * sqrt(2) * 0.01 = 0.028, diff at g1 = 0.1 -> 1
    # ppl: band 0.283, diffs 0, 0.01, 2 -> 3; gap = 3 - 1 = 2
    got = stats.early_warning_verdict([1, 0.9, 0.5, 0.4], [0.01] * 4, [10, 10, 10.01, 12], [0.1] * 4)
    assert (got["first_tail_gen"], got["first_likelihood_gen"], got["gap"]) == (1, 3, 2)
    assert got["text"] == ("Tail coverage departed at generation 1, 2 generation(s) before "
                           "test perplexity (generation 3).")


def test_early_warning_verdict_undefined_gap():
    flat = [1.0, 1.0, 1.0]
    got = stats.early_warning_verdict([1, 0.5, 0.4], [0.01] * 3, flat, [0.1] * 3)
    assert (got["first_tail_gen"], got["first_likelihood_gen"], got["gap"]) == (1, None, None)
    assert "never" in got["text"]
    neither = stats.early_warning_verdict(flat, [0.1] * 3, flat, [0.1] * 3)
    assert neither["gap"] is None and neither["text"].startswith("Neither")
    ppl_first = stats.early_warning_verdict([1, 1, 0], [0.01] * 3, [1, 5, 5], [0.1] * 3)
    assert ppl_first["gap"] == -1 and ppl_first["text"].startswith("Test perplexity departed")


# ---------------------------------------------------------------- corpus_profile

DEFAULT_KEYS = (
    {"compared_tokens_tok", "vocab_survival_tok", "entropy_tok", "rep4_tok"}
    | {f"distinct{n}_tok" for n in (1, 2, 3, 4)}
    | {f"{name}_tok{n}" for n in (1, 2, 3) for name in ("head_recall", "novel_rate", "js")}
    | {f"{m}{k}_tok{n}" for m in ("tr", "tmr") for k in (1, 2, 5, 10) for n in (1, 2, 3)}
)


def zipf_corpus(n_seqs, length, exponent, seed, vocab=300):
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, vocab + 1) ** exponent
    return [rng.choice(vocab, size=length, p=p / p.sum()) for _ in range(n_seqs)]


def test_corpus_profile_keys():
    prof = M.corpus_profile(zipf_corpus(20, 16, 1.1, 0), zipf_corpus(20, 16, 1.1, 1), "tok")
    assert set(prof) == DEFAULT_KEYS
    assert all(isinstance(v, float) for v in prof.values())
    words = [["a", "b", "c"]]
    assert "tr5_word1" in M.corpus_profile(words, words, "word", ns=(1,), ks=(5,))
    with pytest.raises(ValueError):
        M.corpus_profile(words, words, "char")


def test_corpus_profile_identical_corpora():
    corpus = zipf_corpus(50, 32, 1.2, 0)
    prof = M.corpus_profile(corpus, corpus, "tok")
    for n in (1, 2, 3):
        assert prof[f"js_tok{n}"] == 0.0
        assert prof[f"novel_rate_tok{n}"] == 0.0
        assert prof[f"head_recall_tok{n}"] == 1.0
        for k in (1, 2, 5, 10):
            assert prof[f"tr{k}_tok{n}"] == 1.0
            assert prof[f"tmr{k}_tok{n}"] == pytest.approx(1.0)
    assert prof["vocab_survival_tok"] == 1.0


def test_corpus_profile_truncates_to_equal_tokens():
    # real 5 tokens, synth 6 -> synth cut to [1,1,1,1,4]. Real unigrams 1:2 2:2 3:1.
    # tr1: tail {3} absent -> 0; tr2: {1,2,3}, only 1 present -> 1/3;
    # novel: synth types {1,4}, 4 is new -> 1/2 (the cut 4 at the end changes nothing,
    # but distinct1 = 2/5 only holds after the cut; 2/6 before)
    prof = M.corpus_profile([[1, 2, 3], [1, 2]], [[1, 1, 1, 1, 4, 4]], "tok", ns=(1,), ks=(1, 2))
    assert prof["compared_tokens_tok"] == 5.0
    assert prof["tr1_tok1"] == 0.0
    assert prof["tr2_tok1"] == pytest.approx(1 / 3)
    assert prof["novel_rate_tok1"] == pytest.approx(1 / 2)
    assert prof["distinct1_tok"] == pytest.approx(2 / 5)


def counter_profile(real, synth, unit, ns, ks):
    """The slow, readable path: truncate, ngram_counts, Counter-based metrics."""
    size = min(M.corpus_size(real), M.corpus_size(synth))
    real, synth = M.truncate_to_tokens(real, size), M.truncate_to_tokens(synth, size)
    out = {f"compared_tokens_{unit}": float(size)}
    for n in ns:
        rc, sc = M.ngram_counts(real, n), M.ngram_counts(synth, n)
        for k in ks:
            out[f"tr{k}_{unit}{n}"] = M.tail_recall(rc, sc, k)
            out[f"tmr{k}_{unit}{n}"] = M.tail_mass_ratio(rc, sc, k)
        out[f"head_recall_{unit}{n}"] = M.head_recall(rc, sc)
        out[f"novel_rate_{unit}{n}"] = M.novel_type_rate(rc, sc)
        out[f"js_{unit}{n}"] = M.js_divergence(rc, sc)
    rc1, sc1 = M.ngram_counts(real, 1), M.ngram_counts(synth, 1)
    out[f"vocab_survival_{unit}"] = M.vocab_survival(rc1, sc1)
    out[f"entropy_{unit}"] = M.unigram_entropy(sc1)
    for n in (1, 2, 3, 4):
        counts = M.ngram_counts(synth, n)
        out[f"distinct{n}_{unit}"] = len(counts) / sum(counts.values())
    out[f"rep4_{unit}"] = M.rep_n(synth, 4)
    return out


@pytest.mark.parametrize("as_words", [False, True])
def test_corpus_profile_fast_path_matches_counters(as_words):
    real = zipf_corpus(60, 24, 1.1, 0, vocab=200)
    synth = zipf_corpus(80, 20, 1.4, 1, vocab=220)  # bigger: gets truncated
    if as_words:
        real = [[f"w{u}" for u in s] for s in real]
        synth = [[f"w{u}" for u in s] for s in synth]
    else:
        real = [s.tolist() for s in real]  # lists of ints; synth stays ndarrays
    unit = "word" if as_words else "tok"
    fast = M.corpus_profile(real, synth, unit, ns=(1, 2, 3), ks=(1, 2, 5, 10))
    slow = counter_profile(real, synth, unit, (1, 2, 3), (1, 2, 5, 10))
    assert fast.keys() == slow.keys()
    assert fast == pytest.approx(slow, **nan_ok)
    # rep4 must also match a from-scratch per-sequence count
    cut = M.truncate_to_tokens(synth, M.corpus_size(real))
    per_seq = [1 - len(M.ngram_counts([s], 4)) / (len(s) - 3) for s in cut if len(s) >= 4]
    assert fast[f"rep4_{unit}"] == pytest.approx(np.mean(per_seq))


def test_fast_ngram_keys_exact_beyond_int64_range():
    # ids up to 2**40 (and negative): V**3 overflows int64, forcing re-indexing
    rng = np.random.default_rng(0)
    alphabet = np.array([-(2**40), 0, 7, 2**40, 3 * 2**39])
    seqs = [alphabet[rng.integers(0, 5, size=rng.integers(1, 9))] for _ in range(200)]
    for n in (1, 2, 3, 4):
        counts = M.ngram_counts(seqs, n)
        assert M.distinct_n(seqs, n) == pytest.approx(len(counts) / sum(counts.values()))
    half = len(seqs) // 2
    fast = M.corpus_profile(seqs[:half], seqs[half:], "tok", ns=(3,), ks=(1, 5))
    slow = counter_profile(seqs[:half], seqs[half:], "tok", (3,), (1, 5))
    assert fast == pytest.approx(slow, **nan_ok)


def test_corpus_profile_empty_synth_is_all_nan():
    prof = M.corpus_profile([[1, 2, 3]], [], "tok")
    assert prof["compared_tokens_tok"] == 0.0
    assert all(math.isnan(v) for k, v in prof.items() if k != "compared_tokens_tok")


def test_early_warning_verdict_names_the_likelihood_headline():
    # A GMM run's rows: tail_coverage band 2 * sqrt(0.1^2 + 0.1^2) = 0.283, diff 0.5 at g2 -> 2;
    # nll_test band 2 * sqrt(2) * 0.05 = 0.141, diffs 0.01, 0.1, 0.3 -> 3; gap 1.
    got = stats.early_warning_verdict([1.0, 0.9, 0.5, 0.2], [0.1] * 4, [2.84, 2.85, 2.94, 3.14], [0.05] * 4,
                                  headline="test NLL")
    assert (got["first_tail_gen"], got["first_likelihood_gen"], got["gap"], got["headline"]) == (2, 3, 1, "test NLL")
    assert got["text"] == "Tail coverage departed at generation 2, 1 generation(s) before test NLL (generation 3)."
    nll_first = stats.early_warning_verdict([1, 1, 1], [0.1] * 3, [2.8, 3.5, 3.5], [0.05] * 3, headline="test NLL")
    assert nll_first["text"] == "Test NLL departed at generation 1; tail coverage never did."
    assert stats.early_warning_verdict([1.0], [0.1], [2.8], [0.05], headline="test NLL")["text"] == (
        "Neither tail coverage nor test NLL departed from generation 0 beyond noise.")


def test_mean_and_binomial_standard_errors_by_hand():
    # [1, 2, 3, 6]: mean 3, sample variance (4 + 1 + 0 + 9) / 3 = 14/3, se sqrt(14/3) / 2
    assert stats.mean_se([1.0, 2.0, 3.0, 6.0]) == pytest.approx(math.sqrt(14 / 3) / 2)
    assert math.isnan(stats.mean_se([5.0]))
    assert stats.binomial_se(0.2, 100) == pytest.approx(0.04)  # sqrt(0.2 * 0.8 / 100)
    assert stats.binomial_se(1.0, 18) == 0.0
    assert math.isnan(stats.binomial_se(0.5, 0)) and math.isnan(stats.binomial_se(float("nan"), 10))
