"""The LM's corpus metrics: perplexity and its distribution, n-gram tails, diversity, divergences.

Everything here is side-effect free and uses only numpy and the standard
library (no torch). Randomness only enters through an explicit ``seed``
(``np.random.default_rng``). The statistics every family shares (standard
errors, the early-warning verdict) are measure/stats.py.

Conventions
-----------
* A *corpus* is a sequence of sequences of hashable units: token ids (Python
  ints or 1-D integer numpy arrays) or whitespace words (str).
* "real" is always the real training split, "synth" one generation's
  synthetic corpus.
* An n-gram is always a tuple, including unigrams (1-tuples), and never
  crosses a sequence boundary.
* Counters hold type -> count; only types with count > 0 are "present".
* Undefined ratios (empty denominators) are ``nan``, never 0, so a missing
  value cannot be mistaken for collapse.

The Counter-based functions are the readable definitions; ``corpus_profile``
computes the same quantities through an int64-key numpy fast path that shares
the same array kernels (``_*_aligned``), and the tests check both agree.
See docs/metrics.md for formulas, directions and sources.
"""

from __future__ import annotations

import itertools
import math
import zlib
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from collapse_cli.measure.stats import as_floats

Corpus = Sequence[Sequence[Hashable]]

DEFAULT_QUANTILES = (0.01, 0.05, 0.5, 0.95, 0.99)
TAIL_COVERAGE_K = 5  # the headline tail_coverage is tail_recall of unigrams, k=5
HEAD_MASS = 0.5  # the head is the most frequent types holding half the real mass
# (low, high) inclusive real-count buckets; high=None means unbounded.
DEFAULT_EXTINCTION_BUCKETS = ((1, 1), (2, 5), (6, 20), (21, 100), (101, None))
BLEU_EPSILON = 0.1  # NLTK SmoothingFunction().method1, which Texygen uses

# --------------------------------------------------------------------------
# Perplexity and its distribution (Shumailov et al. 2024 perplexity histograms)
# --------------------------------------------------------------------------


def perplexity(nll_sum: float, n_tokens: int) -> float:
    """exp(mean token NLL in nats); nan for zero tokens, inf on overflow."""
    if n_tokens <= 0:
        return float("nan")
    mean_nll = nll_sum / n_tokens
    # math.exp raises past ~709; an exploded model is "infinitely perplexed".
    return math.exp(mean_nll) if mean_nll < 709.0 else float("inf")


def quantile_key(q: float) -> str:
    """0.05 -> 'q05', 0.5 -> 'q50', 0.99 -> 'q99'."""
    return f"q{round(q * 100):02d}"


def quantiles(values: Iterable[float], qs: Sequence[float] = DEFAULT_QUANTILES) -> dict[str, float]:
    """Linear-interpolated quantiles keyed 'q01'...; NaNs ignored; all-nan if empty."""
    arr = as_floats(values)
    arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        return {quantile_key(q): float("nan") for q in qs}
    return {quantile_key(q): float(v) for q, v in zip(qs, np.quantile(arr, qs))}


def tail_fractions(synth_ppl: Iterable[float], real_ppl: Iterable[float]) -> tuple[float, float]:
    """(share of synth below real's 5% quantile, share above real's 95% quantile).

    Under no drift both are ~0.05. Inequalities are strict, so values sitting
    exactly on a real quantile count as inside.
    """
    synth = as_floats(synth_ppl)
    real_q = quantiles(real_ppl, (0.05, 0.95))
    if synth.size == 0 or math.isnan(real_q["q05"]):
        return float("nan"), float("nan")
    return float(np.mean(synth < real_q["q05"])), float(np.mean(synth > real_q["q95"]))


def wasserstein1(a: Iterable[float], b: Iterable[float]) -> float:
    """Exact 1-D Wasserstein-1 distance between two empirical distributions.

    W1 = integral |F_a(x) - F_b(x)| dx, evaluated exactly on the merged sorted
    support (the CDFs are step functions constant between merged points).
    Sizes may differ. nan if either side is empty or holds a non-finite value.
    """
    a_sorted, b_sorted = np.sort(as_floats(a)), np.sort(as_floats(b))
    if a_sorted.size == 0 or b_sorted.size == 0:
        return float("nan")
    if not (np.isfinite(a_sorted).all() and np.isfinite(b_sorted).all()):
        return float("nan")
    support = np.sort(np.concatenate([a_sorted, b_sorted]))
    widths = np.diff(support)
    cdf_a = np.searchsorted(a_sorted, support[:-1], side="right") / a_sorted.size
    cdf_b = np.searchsorted(b_sorted, support[:-1], side="right") / b_sorted.size
    return float(np.sum(np.abs(cdf_a - cdf_b) * widths))


# --------------------------------------------------------------------------
# Counting
# --------------------------------------------------------------------------


def _as_list(seq: Sequence[Hashable]) -> list:
    # numpy scalars hash like ints but print and pickle differently; normalise.
    return seq.tolist() if isinstance(seq, np.ndarray) else list(seq)


def ngram_counts(seqs: Corpus, n: int) -> Counter:
    """Counter of n-gram tuples (unigrams are 1-tuples), within sequences only."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    counts: Counter = Counter()
    for seq in seqs:
        units = _as_list(seq)
        counts.update(zip(*(units[i:] for i in range(n))))
    return counts


def corpus_size(seqs: Corpus) -> int:
    """Total number of units in a corpus."""
    return sum(len(seq) for seq in seqs)


def truncate_to_tokens(seqs: Corpus, n_tokens: int) -> list:
    """Prefix of the corpus holding exactly min(n_tokens, size) units.

    Whole sequences are kept in corpus order; the last one is cut short.
    Count-based metrics (distinct-n, tail recall, vocabulary) grow with sample
    size, so corpora are only comparable at equal token counts. Shuffle first
    if corpus order carries meaning.
    """
    kept: list = []
    budget = max(int(n_tokens), 0)
    for seq in seqs:
        if budget <= 0:
            break
        kept.append(seq if len(seq) <= budget else seq[:budget])
        budget -= len(kept[-1])
    return kept


# --------------------------------------------------------------------------
# Tail coverage family (Shumailov 2024; Dohmatob 2024 "A tale of tails")
# Array kernels work on count vectors aligned over the union support; the
# Counter versions align and delegate, and corpus_profile feeds them directly.
# --------------------------------------------------------------------------


def _align(real_counts: Mapping, synth_counts: Mapping) -> tuple[np.ndarray, np.ndarray]:
    """Count vectors of real and synth over the union of their present types."""
    support = [t for t, c in real_counts.items() if c > 0]
    support += [t for t, c in synth_counts.items() if c > 0 and real_counts.get(t, 0) <= 0]
    real = np.fromiter((max(real_counts.get(t, 0), 0) for t in support), np.int64, len(support))
    synth = np.fromiter((max(synth_counts.get(t, 0), 0) for t in support), np.int64, len(support))
    return real, synth


def _tail_recall_aligned(real: np.ndarray, synth: np.ndarray, k: int) -> float:
    tail = (real >= 1) & (real <= k)
    return float(np.mean(synth[tail] > 0)) if tail.any() else float("nan")


def _tail_mass_ratio_aligned(real: np.ndarray, synth: np.ndarray, k: int) -> float:
    tail = (real >= 1) & (real <= k)
    if not tail.any() or synth.sum() == 0:
        return float("nan")
    real_share = real[tail].sum() / real.sum()
    synth_share = synth[tail].sum() / synth.sum()
    return float(synth_share / real_share)


def _head_recall_aligned(real: np.ndarray, synth: np.ndarray, mass: float = HEAD_MASS) -> float:
    present = real[real > 0]
    if present.size == 0:
        return float("nan")
    by_count = np.sort(present)[::-1]
    cumulative = np.cumsum(by_count)
    # Count of the type at which the cumulative real mass first reaches `mass`;
    # every type at least that frequent is head, so ties never split the head.
    threshold = by_count[np.searchsorted(cumulative, mass * cumulative[-1])]
    return float(np.mean(synth[real >= threshold] > 0))


def _vocab_survival_aligned(real: np.ndarray, synth: np.ndarray) -> float:
    present = real > 0
    return float(np.mean(synth[present] > 0)) if present.any() else float("nan")


def _novel_rate_aligned(real: np.ndarray, synth: np.ndarray) -> float:
    present = synth > 0
    return float(np.mean(real[present] == 0)) if present.any() else float("nan")


def tail_recall(real_counts: Mapping, synth_counts: Mapping, k: int) -> float:
    """Of the types with real count in 1..k, the share that appear in synth."""
    return _tail_recall_aligned(*_align(real_counts, synth_counts), k)


def tail_coverage(real_counts: Mapping, synth_counts: Mapping) -> float:
    """The headline: tail_recall of unigram tokens with k=5 (key tr5_tok1)."""
    return tail_recall(real_counts, synth_counts, TAIL_COVERAGE_K)


def head_recall(real_counts: Mapping, synth_counts: Mapping, mass: float = HEAD_MASS) -> float:
    """Share of head types present in synth.

    Head = every type whose real count is >= the count of the type at which
    the descending cumulative real mass first reaches `mass` (default 50%).
    """
    return _head_recall_aligned(*_align(real_counts, synth_counts), mass)


def tail_mass_ratio(real_counts: Mapping, synth_counts: Mapping, k: int) -> float:
    """(synth mass on real-tail types / synth total) / (real tail mass / real total).

    1 = tail kept its share; < 1 = tail under-sampled (collapse). nan if no tail.
    """
    return _tail_mass_ratio_aligned(*_align(real_counts, synth_counts), k)


def vocab_survival(real_counts: Mapping, synth_counts: Mapping) -> float:
    """|V(synth) ∩ V(real)| / |V(real)|."""
    return _vocab_survival_aligned(*_align(real_counts, synth_counts))


def novel_type_rate(real_counts: Mapping, synth_counts: Mapping) -> float:
    """Share of synth types that never occur in real."""
    return _novel_rate_aligned(*_align(real_counts, synth_counts))


def extinction_generation(
    real_types: Iterable[Hashable],
    synth_type_sets_by_generation: Mapping[int, Iterable[Hashable]] | Sequence[Iterable[Hashable]],
) -> dict[Hashable, int | None]:
    """For each real type, the first generation whose corpus lacks it (None if never).

    A Sequence is indexed by generation (element g = generation g's types); a
    Mapping maps generation -> types. First absence counts even if the type
    reappears later: sampling can resurrect a type, but the first gap is when
    the chain stopped reliably carrying it.
    """
    items = (
        sorted(synth_type_sets_by_generation.items())
        if isinstance(synth_type_sets_by_generation, Mapping)
        else enumerate(synth_type_sets_by_generation)
    )
    extinction: dict[Hashable, int | None] = {t: None for t in real_types}
    alive = set(extinction)
    for generation, types in items:
        present = types if isinstance(types, (set, frozenset)) else set(types)
        died = alive - present
        for t in died:
            extinction[t] = generation
        alive -= died
    return extinction


def bucket_label(low: int, high: int | None) -> str:
    """(1, 1) -> '1', (2, 5) -> '2-5', (101, None) -> '>100'."""
    if high is None:
        return f">{low - 1}"
    return str(low) if low == high else f"{low}-{high}"


def median_extinction_by_bucket(
    extinction: Mapping[Hashable, int | None],
    real_counts: Mapping,
    censor_at: int,
    buckets: Sequence[tuple[int, int | None]] = DEFAULT_EXTINCTION_BUCKETS,
) -> dict[str, float]:
    """Median extinction generation per real-frequency bucket, keyed by label.

    Types never extinct (None) count as `censor_at` (pass last generation + 1),
    so a median equal to censor_at means "at least half survived the run".
    Empty buckets give nan. Types missing from `extinction` are ignored.
    """
    medians: dict[str, float] = {}
    for low, high in buckets:
        generations = [
            censor_at if gen is None else gen
            for t, gen in extinction.items()
            if low <= real_counts.get(t, 0) and (high is None or real_counts.get(t, 0) <= high)
        ]
        median = float(np.median(generations)) if generations else float("nan")
        medians[bucket_label(low, high)] = median
    return medians


# --------------------------------------------------------------------------
# Model-side tail perplexity: NLL of real test tokens by training frequency
# --------------------------------------------------------------------------


def frequency_deciles(train_token_counts: np.ndarray, n_buckets: int = 10) -> np.ndarray:
    """Bucket 0..n_buckets-1 of each token id by training frequency mass; -1 if unseen.

    Types are sorted by train count (most frequent first, ties by id) and the
    occurrence mass is cut into n_buckets equal parts: a type's bucket is
    floor(n_buckets * mass_before_it / total). Each bucket thus holds ~1/n of
    train tokens (a single huge type can overfill one and leave the next
    empty). Bucket 0 = head, n_buckets-1 = rarest. Ids with train count 0 get
    -1 and are left out of bucket_perplexity: an id the model never trained on
    is an out-of-vocabulary artefact, not part of the learnable tail.
    """
    counts = np.asarray(train_token_counts, dtype=np.int64)
    total = int(counts.sum())
    buckets = np.full(counts.shape, -1, dtype=np.int64)
    if total == 0:
        return buckets
    order = np.argsort(-counts, kind="stable")
    sorted_counts = counts[order]
    mass_before = np.cumsum(sorted_counts) - sorted_counts
    buckets[order] = np.minimum(n_buckets * mass_before // total, n_buckets - 1)
    buckets[counts == 0] = -1
    return buckets


def bucket_perplexity(
    nll: np.ndarray, gold_ids: np.ndarray, bucket_of_id: np.ndarray, n_buckets: int = 10
) -> list[float]:
    """exp(mean NLL) of the tokens whose gold id falls in each bucket; nan if empty.

    Tokens whose id maps to a bucket outside 0..n_buckets-1 (e.g. -1) are skipped.
    """
    nll = np.asarray(nll, dtype=np.float64).ravel()
    buckets = np.asarray(bucket_of_id)[np.asarray(gold_ids, dtype=np.int64).ravel()]
    keep = (buckets >= 0) & (buckets < n_buckets)
    sums = np.bincount(buckets[keep], weights=nll[keep], minlength=n_buckets)
    sizes = np.bincount(buckets[keep], minlength=n_buckets)
    return [perplexity(float(s), int(c)) for s, c in zip(sums, sizes)]


# --------------------------------------------------------------------------
# Fast path: a corpus as one flat int64 array; n-grams as int64 keys
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Encoded:
    ids: np.ndarray  # flat unit ids, 0..vocab_size-1, sequences concatenated
    lengths: np.ndarray  # length of each sequence
    vocab_size: int

    @property
    def seq_of_pos(self) -> np.ndarray:
        return np.repeat(np.arange(self.lengths.size), self.lengths)

    @property
    def room(self) -> np.ndarray:
        """Units left in the sequence from each position on (itself included)."""
        return np.repeat(np.cumsum(self.lengths), self.lengths) - np.arange(self.ids.size)


def _encode(seqs: Corpus) -> _Encoded:
    """Map units to non-negative ints: ids are shifted, anything else indexed."""
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    first = next((s[0] for s in seqs if len(s) > 0), None)
    if first is None:
        return _Encoded(np.zeros(0, np.int64), lengths, 1)
    if isinstance(first, (int, np.integer)) and not isinstance(first, bool):
        if all(isinstance(s, np.ndarray) for s in seqs):
            ids = np.concatenate([s.astype(np.int64, copy=False).ravel() for s in seqs])
        else:
            ids = np.fromiter(itertools.chain.from_iterable(seqs), np.int64, int(lengths.sum()))
        ids = ids - ids.min()  # negative ids are legal; keys need >= 0
        return _Encoded(ids, lengths, int(ids.max()) + 1)
    index: dict = {}
    ids = np.fromiter(
        (index.setdefault(u, len(index)) for u in itertools.chain.from_iterable(seqs)),
        np.int64, int(lengths.sum()),
    )
    return _Encoded(ids, lengths, max(len(index), 1))


def _ngram_keys(corpus: _Encoded, n: int, room: np.ndarray | None = None,
                seq_of_pos: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(int64 key of every n-gram, index of the sequence it lies in).

    key = sum ids[p+j] * V**(n-1-j); when V**n would overflow int64 the partial
    keys are first re-indexed densely, which keeps them exact. `room` and
    `seq_of_pos` may be passed in to reuse them across orders.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    room = corpus.room if room is None else room
    seq_of_pos = corpus.seq_of_pos if seq_of_pos is None else seq_of_pos
    starts = np.flatnonzero(room >= n)  # n-grams never cross a sequence end
    keys = corpus.ids[starts]
    key_range = corpus.vocab_size  # exclusive upper bound of keys, Python int
    for j in range(1, n):
        if key_range * corpus.vocab_size >= 2**63:
            uniq = _unique_counts(keys)[0]
            keys, key_range = np.searchsorted(uniq, keys), max(uniq.size, 1)
        keys = keys * corpus.vocab_size + corpus.ids[starts + j]
        key_range *= corpus.vocab_size
    return keys.astype(np.int64, copy=False), seq_of_pos[starts]


def _unique_counts(keys: np.ndarray, key_range: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct keys and their counts.

    A plain sort beats np.unique's hashing here; when the keys are known to lie
    in a small range 0..key_range-1 (unigram ids), a bincount beats both.
    """
    if key_range is not None and key_range <= max(2**20, 2 * keys.size):
        per_key = np.bincount(keys, minlength=key_range)
        types = np.flatnonzero(per_key)
        return types, per_key[types]
    ordered = np.sort(keys)
    if ordered.size == 0:
        return ordered, ordered.copy()
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    return ordered[starts], np.diff(np.r_[starts, ordered.size])


def _distinct_from_keys(keys: np.ndarray) -> float:
    return _unique_counts(keys)[0].size / keys.size if keys.size else float("nan")


def _unique_per_seq(keys: np.ndarray, seq_index: np.ndarray, n_seqs: int,
                    types: np.ndarray | None = None) -> np.ndarray:
    """Number of distinct keys within each sequence (keys grouped by ascending seq_index)."""
    per_seq = np.bincount(seq_index, minlength=n_seqs)
    width = int(per_seq.max()) if per_seq.size else 0
    if n_seqs * width <= 4 * keys.size:
        # Near-equal lengths: one row per sequence, sorted row-wise. Padding cells
        # get distinct negative sentinels so they never pair up with anything.
        rows = -1 - np.tile(np.arange(width, dtype=np.int64), (n_seqs, 1))
        column = np.arange(keys.size) - np.repeat(np.cumsum(per_seq) - per_seq, per_seq)
        rows[seq_index, column] = keys
        rows.sort(axis=1)
        return per_seq - np.count_nonzero(rows[:, 1:] == rows[:, :-1], axis=1)
    # Ragged: dense ranks make (sequence, rank) pairs fit one int64 for a global sort.
    types = _unique_counts(keys)[0] if types is None else types
    rank = np.searchsorted(types, keys)
    pairs = _unique_counts(seq_index.astype(np.int64) * types.size + rank)[0]
    return np.bincount(pairs // types.size, minlength=n_seqs)


def _rep_from_keys(keys: np.ndarray, seq_index: np.ndarray, n_seqs: int,
                   types: np.ndarray | None = None) -> float:
    """Mean over sequences with >= 1 n-gram of 1 - unique/total within the sequence.

    `types` (the sorted distinct keys) may be passed in when already known.
    """
    if keys.size == 0:
        return float("nan")
    total_per_seq = np.bincount(seq_index, minlength=n_seqs)
    unique_per_seq = _unique_per_seq(keys, seq_index, n_seqs, types)
    has = total_per_seq > 0
    return float(np.mean(1.0 - unique_per_seq[has] / total_per_seq[has]))


# --------------------------------------------------------------------------
# Diversity (Li 2016; Holtzman 2020; Zhu 2018; Guo 2024)
# --------------------------------------------------------------------------


def distinct_n(seqs: Corpus, n: int) -> float:
    """Unique n-grams / total n-grams over the whole corpus; nan if none."""
    return _distinct_from_keys(_ngram_keys(_encode(seqs), n)[0])


def rep_n(seqs: Corpus, n: int) -> float:
    """Mean over sequences (with >= 1 n-gram) of 1 - unique/total n-grams in it."""
    corpus = _encode(seqs)
    keys, seq_index = _ngram_keys(corpus, n)
    return _rep_from_keys(keys, seq_index, corpus.lengths.size)


def unigram_entropy(counts: Mapping | np.ndarray) -> float:
    """Shannon entropy in bits of the distribution proportional to counts."""
    values = as_floats(counts.values() if isinstance(counts, Mapping) else counts)
    values = values[values > 0]
    if values.size == 0:
        return float("nan")
    p = values / values.sum()
    return float(-(p * np.log2(p)).sum())


def compression_ratio(text: str) -> float:
    """UTF-8 bytes / zlib(level 9) bytes; higher = more repetitive; nan if empty."""
    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw, 9)) if raw else float("nan")


def _clipped_matches(keys: np.ndarray, seq_index: np.ndarray, n_seqs: int) -> np.ndarray:
    """Per hypothesis: sum over its n-gram types of min(own count, max count in any OTHER seq).

    Leave-one-out exactly: per n-gram keep the largest count (and its holder)
    and the second largest; the hypothesis holding the largest sees the second.
    """
    dense = np.searchsorted(_unique_counts(keys)[0], keys)
    pairs, pair_counts = _unique_counts(dense * n_seqs + seq_index)
    gram, holder = pairs // n_seqs, pairs % n_seqs
    order = np.lexsort((-pair_counts, gram))  # by n-gram, largest count first
    gram, holder, pair_counts = gram[order], holder[order], pair_counts[order]
    group_start = np.r_[True, gram[1:] != gram[:-1]]
    first_row = np.maximum.accumulate(np.where(group_start, np.arange(gram.size), 0))
    next_is_same = np.r_[~group_start[1:], False]
    second_count = np.where(next_is_same, np.r_[pair_counts[1:], 0], 0)[first_row]
    top_count, top_holder = pair_counts[first_row], holder[first_row]
    best_other = np.where(top_holder == holder, second_count, top_count)
    return np.bincount(holder, weights=np.minimum(pair_counts, best_other), minlength=n_seqs)


def _brevity_penalty(hyp_lengths: np.ndarray) -> np.ndarray:
    """NLTK BP per sequence against all the others: 1 if c > r, 0 if c = 0, else exp(1 - r/c).

    r = the closest other length (ties -> the shorter). Found on the sorted
    distinct lengths so a big sample never needs an n x n matrix.
    """
    c = hyp_lengths.astype(np.float64)
    lengths, holders = np.unique(hyp_lengths, return_counts=True)
    own = np.searchsorted(lengths, hyp_lengths)
    shorter = np.where(own > 0, lengths[np.maximum(own - 1, 0)], -np.inf)
    last = lengths.size - 1
    longer = np.where(own < last, lengths[np.minimum(own + 1, last)], np.inf)
    closest = np.where(c - shorter <= longer - c, shorter, longer)
    closest = np.where(holders[own] >= 2, c, closest)  # another sequence has this very length
    with np.errstate(divide="ignore", invalid="ignore"):
        bp = np.where(c > closest, 1.0, np.exp(1.0 - closest / c))
    return np.where(c == 0, 0.0, bp)


def self_bleu(seqs: Corpus, n_sample: int, seed: int, max_n: int = 4) -> float:
    """Self-BLEU (Texygen): mean sentence BLEU-max_n of each sampled sequence vs the rest.

    Uniform weights, NLTK brevity penalty, NLTK smoothing method1 (a zero
    precision becomes 0.1 / n-gram count), BLEU 0 with no unigram match.
    Higher = less diverse. nan with fewer than 2 sequences.
    """
    if max_n < 1:
        raise ValueError(f"max_n must be >= 1, got {max_n}")
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(seqs), size=min(n_sample, len(seqs)), replace=False)
    if picked.size < 2:
        return float("nan")
    corpus = _encode([seqs[i] for i in picked])
    n_seqs, lengths = corpus.lengths.size, corpus.lengths
    log_precision = np.zeros(n_seqs)
    no_unigram_match = np.zeros(n_seqs, dtype=bool)
    for n in range(1, max_n + 1):
        keys, seq_index = _ngram_keys(corpus, n)
        matches = _clipped_matches(keys, seq_index, n_seqs) if keys.size else np.zeros(n_seqs)
        totals = np.maximum(lengths - n + 1, 1)  # NLTK divides by max(1, count)
        precision = np.where(matches > 0, matches, BLEU_EPSILON) / totals
        log_precision += np.log(precision) / max_n
        no_unigram_match |= (n == 1) & (matches == 0)
    bleu = _brevity_penalty(lengths) * np.exp(log_precision)
    return float(np.mean(np.where(no_unigram_match, 0.0, bleu)))


# --------------------------------------------------------------------------
# Divergences: corpus (Lin 1991) and against a known true language
# --------------------------------------------------------------------------


def _js_aligned(p_counts: np.ndarray, q_counts: np.ndarray) -> float:
    if p_counts.sum() == 0 or q_counts.sum() == 0:
        return float("nan")
    p = p_counts / p_counts.sum()
    q = q_counts / q_counts.sum()
    m = (p + q) / 2

    def kl_to_m(x: np.ndarray) -> float:
        on = x > 0  # 0 log 0 = 0; m > 0 wherever x > 0
        return float(np.sum(x[on] * np.log2(x[on] / m[on])))

    # Rounding can leave a -1e-17; JS is a divergence, so clamp into [0, 1].
    return min(max(0.5 * kl_to_m(p) + 0.5 * kl_to_m(q), 0.0), 1.0)


def js_divergence(counts_p: Mapping, counts_q: Mapping) -> float:
    """Jensen-Shannon divergence in bits (in [0, 1]) over the union support."""
    return _js_aligned(*_align(counts_p, counts_q))


def kl_truth_model(p_true: np.ndarray, logq_model: np.ndarray) -> tuple[float, float, float]:
    """(cross-entropy, true entropy, KL(p_true || q_model)) in nats, mean over positions.

    Rows are positions, columns the vocabulary; logq_model is natural-log
    probabilities. Zero-probability true entries contribute 0 (0 log 0 = 0),
    even where the model gives -inf.
    """
    p = np.asarray(p_true, dtype=np.float64)
    logq = np.asarray(logq_model, dtype=np.float64)
    on = p > 0
    cross_entropy = -np.sum(p * np.where(on, logq, 0.0), axis=-1).mean()
    entropy = -np.sum(p * np.log(np.where(on, p, 1.0)), axis=-1).mean()
    return float(cross_entropy), float(entropy), float(cross_entropy - entropy)


# --------------------------------------------------------------------------
# Per-generation corpus profile (called once per generation by the loop)
# --------------------------------------------------------------------------

PROFILE_UNITS = ("tok", "word")
PROFILE_DISTINCT_NS = (1, 2, 3, 4)
PROFILE_REP_N = 4


def _aligned_counts(real: tuple[np.ndarray, np.ndarray],
                    synth: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Count vectors over the union support from (sorted types, counts) pairs."""
    union = _unique_counts(np.concatenate([real[0], synth[0]]))[0]
    real_counts = np.zeros(union.size, np.int64)
    real_counts[np.searchsorted(union, real[0])] = real[1]
    synth_counts = np.zeros(union.size, np.int64)
    synth_counts[np.searchsorted(union, synth[0])] = synth[1]
    return real_counts, synth_counts


def _compare_ngrams(real_counts: np.ndarray, synth_counts: np.ndarray,
                    suffix: str, ks: Sequence[int]) -> dict:
    """Real-vs-synth keys for one n-gram order; suffix is e.g. 'tok2'."""
    out = {f"tr{k}_{suffix}": _tail_recall_aligned(real_counts, synth_counts, k) for k in ks}
    out |= {f"tmr{k}_{suffix}": _tail_mass_ratio_aligned(real_counts, synth_counts, k) for k in ks}
    out[f"head_recall_{suffix}"] = _head_recall_aligned(real_counts, synth_counts)
    out[f"novel_rate_{suffix}"] = _novel_rate_aligned(real_counts, synth_counts)
    out[f"js_{suffix}"] = _js_aligned(real_counts, synth_counts)
    return out


def corpus_profile(
    real_seqs: Corpus, synth_seqs: Corpus, unit: str,
    ns: Sequence[int] = (1, 2, 3), ks: Sequence[int] = (1, 2, 5, 10),
) -> dict[str, float]:
    """Flat snake_case metrics of a synthetic corpus against the real one.

    Both corpora are first cut to the same number of units (the smaller size,
    reported as compared_tokens_<unit>). Keys per n in ns and k in ks:
    tr{k}_<unit>{n}, tmr{k}_<unit>{n}; per n: head_recall_, novel_rate_, js_
    <unit>{n}; always: vocab_survival_<unit>, entropy_<unit> (synth unigram
    entropy, bits), distinct1..4_<unit> and rep4_<unit> (synth only).
    ``unit`` is 'tok' or 'word' and only names the keys.
    """
    if unit not in PROFILE_UNITS:
        raise ValueError(f"unit must be one of {PROFILE_UNITS}, got {unit!r}")
    n_equal = min(corpus_size(real_seqs), corpus_size(synth_seqs))
    real = truncate_to_tokens(real_seqs, n_equal)
    synth = truncate_to_tokens(synth_seqs, n_equal)
    # One joint encoding, so the same unit gets the same id in both corpora.
    joint = _encode(list(real) + list(synth))
    n_real_seqs = len(real)
    room, seq_of_pos = joint.room, joint.seq_of_pos
    out: dict[str, float] = {f"compared_tokens_{unit}": float(n_equal)}
    for n in sorted(set(ns) | set(PROFILE_DISTINCT_NS)):
        keys, seq_index = _ngram_keys(joint, n, room, seq_of_pos)
        in_synth = seq_index >= n_real_seqs
        synth_keys = keys[in_synth]
        key_range = joint.vocab_size if n == 1 else None
        synth_types = _unique_counts(synth_keys, key_range)  # sorted once, reused below
        if n in ns or n == 1:
            real_counts, synth_counts = _aligned_counts(
                _unique_counts(keys[~in_synth], key_range), synth_types)
        if n in ns:
            out |= _compare_ngrams(real_counts, synth_counts, f"{unit}{n}", ks)
        if n == 1:
            out[f"vocab_survival_{unit}"] = _vocab_survival_aligned(real_counts, synth_counts)
            out[f"entropy_{unit}"] = unigram_entropy(synth_counts)
        if n in PROFILE_DISTINCT_NS:
            out[f"distinct{n}_{unit}"] = (
                synth_types[0].size / synth_keys.size if synth_keys.size else float("nan"))
        if n == PROFILE_REP_N:
            out[f"rep{n}_{unit}"] = _rep_from_keys(
                synth_keys, seq_index[in_synth] - n_real_seqs, len(synth), synth_types[0])
    return out
