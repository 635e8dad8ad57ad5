"""Training-set composition of every regime: sizes, proportions, provenance; and what a real run records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import read_metrics, tiny_run
from toy_family import ToyDatasetConfig, ToyModelConfig

from collapse_cli.compose import validate
from collapse_cli.config import RunConfig, TrainConfig, describe_mix
from collapse_cli.errors import CollapseError
from collapse_cli.experiment.compose import (
    REAL,
    check_pool,
    compose,
    fresh_pool_needed,
    n_real_blocks,
)
from collapse_cli.experiment.loop import Setup, set_up

N = 40
SEED = 7
MIXES = (0.0, 0.1, 0.25, 0.5, 1.0)


def sizes(generations: int, n: int = N) -> dict[int, int]:
    return {k: n for k in range(generations)}


def real_rows(training_set) -> np.ndarray:
    return training_set.index[training_set.origin == REAL]


@pytest.mark.parametrize("regime", ["replace", "accumulate", "accumulate_subsample", "fresh"])
def test_generation_zero_is_the_real_set(regime: str):
    ts = compose(0, regime, 0.5, N, {}, SEED)
    assert np.array_equal(ts.origin, np.full(N, REAL)) and np.array_equal(ts.index, np.arange(N))
    assert ts.counts() == {"real": N}


@pytest.mark.parametrize("mix", MIXES)
def test_replace_keeps_n_with_the_mix_real(mix: float):
    for g in (1, 2, 3):
        ts = compose(g, "replace", mix, N, sizes(g), SEED)
        n_real = n_real_blocks(mix, N)
        assert len(ts) == N
        assert sum(ts.counts().values()) == len(ts)
        assert ts.counts().get("real", 0) == n_real
        assert ts.counts().get(f"gen_{g - 1}", 0) == N - n_real  # synthetic only from the generation before
        assert set(np.unique(ts.origin)) <= {REAL, g - 1}
        rows = real_rows(ts)
        assert len(np.unique(rows)) == len(rows) and (rows < N).all()  # drawn without replacement from the N
        synthetic = ts.index[ts.origin == g - 1]
        assert len(np.unique(synthetic)) == len(synthetic) and (synthetic < N).all()


def test_replace_draws_from_a_curated_corpus_smaller_than_n():
    # Curation can leave fewer than N synthetic rows: every one of them once, the shortfall drawn with replacement.
    ts = compose(1, "replace", 0.0, N, {0: 10}, SEED)
    assert len(ts) == N and (ts.index < 10).all()
    assert set(ts.index.tolist()) == set(range(10))


def test_a_short_corpus_gives_every_survivor_once_and_pads_only_the_shortfall():
    # The hand case: 10 kept of N=16 -> all 10, plus 6 repeats drawn from them.
    ts = compose(1, "replace", 0.0, 16, {0: 10}, SEED)
    counts = np.bincount(ts.index, minlength=10)
    assert len(ts) == 16 and (counts >= 1).all() and counts.sum() - 10 == 6
    assert np.array_equal(ts.index, np.sort(ts.index))
    # At mix > 0 the real share is drawn first, as before; the synthetic rows are still every survivor once.
    ts = compose(2, "fresh", 0.25, 16, {1: 10}, SEED)
    synthetic = ts.index[ts.origin == 1]
    assert len(synthetic) == 12 and set(synthetic.tolist()) == set(range(10))
    assert ts.counts() == {"real": 4, "gen_1": 12}
    # The padding is seeded: the same seed gives the same repeats, another seed others.
    again = compose(1, "replace", 0.0, 16, {0: 10}, SEED)
    assert np.array_equal(again.index, compose(1, "replace", 0.0, 16, {0: 10}, SEED).index)
    assert any(not np.array_equal(compose(1, "replace", 0.0, 16, {0: 10}, s).index, again.index) for s in range(1, 6))


def test_a_full_corpus_is_drawn_as_before():
    # Nothing dropped: the draw is the plain permutation subset it always was (the default run's bits rest on it).
    rng = np.random.default_rng([SEED, 1])
    expected = np.sort(rng.choice(N, size=N, replace=False))
    assert np.array_equal(compose(1, "replace", 0.0, N, {0: N}, SEED).index, expected)


@pytest.mark.parametrize("mix", [m for m in MIXES if m > 0])
def test_accumulate_grows_by_n_per_generation_on_a_fixed_real_subset(mix: float):
    n_real = n_real_blocks(mix, N)
    subsets = []
    for g in (1, 2, 3, 4):
        ts = compose(g, "accumulate", mix, N, sizes(g), SEED)
        assert len(ts) == n_real + g * N
        counts = ts.counts()
        assert sum(counts.values()) == len(ts)
        assert counts["real"] == n_real
        for k in range(g):  # every row of every earlier corpus, exactly once
            assert np.array_equal(np.sort(ts.index[ts.origin == k]), np.arange(N))
        subsets.append(real_rows(ts).tolist())
    assert all(subset == subsets[0] for subset in subsets)
    assert len(set(subsets[0])) == n_real


@pytest.mark.parametrize("mix", [m for m in MIXES if m > 0])
def test_accumulate_subsample_stays_n_from_the_accumulated_pool(mix: float):
    for g in (1, 2, 3, 4):
        ts = compose(g, "accumulate_subsample", mix, N, sizes(g), SEED)
        pool = compose(g, "accumulate", mix, N, sizes(g), SEED)
        assert len(ts) == N and sum(ts.counts().values()) == N
        drawn = set(zip(ts.origin.tolist(), ts.index.tolist()))
        assert len(drawn) == N  # without replacement
        assert drawn <= set(zip(pool.origin.tolist(), pool.index.tolist()))
        assert set(np.unique(ts.origin)) <= {REAL, *range(g)}


@pytest.mark.parametrize("mix", [0.1, 0.25, 0.5, 1.0])
def test_fresh_never_reuses_a_real_row(mix: float):
    n_real = n_real_blocks(mix, N)
    seen = set(range(N))  # generation 0's rows
    for g in (1, 2, 3):
        ts = compose(g, "fresh", mix, N, sizes(g), SEED)
        assert len(ts) == N and sum(ts.counts().values()) == N
        assert ts.counts().get("real", 0) == n_real and ts.counts().get(f"gen_{g - 1}", 0) == N - n_real
        rows = set(real_rows(ts).tolist())
        assert len(rows) == n_real and not rows & seen
        seen |= rows
    assert max(seen) < fresh_pool_needed(N, mix, 3)


def test_blocks_are_read_from_their_origin():
    block = 4
    real_pool = np.repeat(np.arange(N)[:, None], block, axis=1)  # real row i holds i
    corpora = {k: np.repeat(1000 * (k + 1) + np.arange(N)[:, None], block, axis=1) for k in range(2)}
    ts = compose(2, "accumulate", 0.5, N, sizes(2), SEED)
    blocks = ts.rows(real_pool, corpora)
    expected = np.where(ts.origin == REAL, ts.index, 1000 * (ts.origin.astype(np.int64) + 1) + ts.index)
    assert np.array_equal(blocks[:, 0], expected) and (blocks == blocks[:, :1]).all()
    assert blocks.dtype == real_pool.dtype


def test_rows_keep_any_row_shape_and_dtype():
    # Families other than the LM: float points [n, 2] (GMM), images [n, 8, 8] (VAE).
    real_pool = np.arange(N * 16, dtype=np.float32).reshape(N, 8, 2) / 7
    samples = {k: real_pool[::-1] + 1000 * (k + 1) for k in range(2)}
    ts = compose(2, "replace", 0.5, N, sizes(2), SEED)
    rows = ts.rows(real_pool, samples)
    assert rows.shape == (N, 8, 2) and rows.dtype == np.float32
    for row, origin, index in zip(rows, ts.origin, ts.index):
        source = real_pool if origin == REAL else samples[int(origin)]
        assert np.array_equal(row, source[index])


def test_same_seed_same_set_other_seed_other_set():
    a, b = (compose(2, "replace", 0.5, N, sizes(2), SEED) for _ in range(2))
    c = compose(2, "replace", 0.5, N, sizes(2), SEED + 1)
    assert np.array_equal(a.index, b.index) and not np.array_equal(a.index, c.index)


def test_check_pool_names_the_sizes():
    check_pool("fresh", 100, 40, 0.5, 3)  # 40 + 3 * 20 = 100 fits exactly
    check_pool("replace", 10, 40, 0.5, 3)  # only fresh reads beyond the first N
    with pytest.raises(CollapseError) as err:
        check_pool("fresh", 99, 40, 0.5, 3)
    message = str(err.value)
    for number in ("40", "3 x 20", "100", "99"):
        assert number in message, (number, message)
    assert "mix or generations" in message


def toy_setup(n_train: int | None, pool: int, **run) -> Setup:
    """What the loop settles before generation 0 (N, the real rows read) for the toy family of tests/."""
    dataset = ToyDatasetConfig(n_train=n_train, pool=pool)
    return set_up(validate(RunConfig(model=ToyModelConfig(), dataset=dataset, train=TrainConfig(lr=1e-3),
                                      device="cpu", **run)))


@pytest.mark.parametrize("n_pool,generations,mix", [(8, 2, 0.3), (100, 3, 0.5), (17, 1, 0.3), (1000, 5, 0.1),
                                                    (9, 2, 0.3), (50, 4, 0.35)])
def test_fresh_default_size_always_fits_the_pool(n_pool: int, generations: int, mix: float):
    setup = toy_setup(None, n_pool, regime="fresh", mix=mix, generations=generations)
    n = setup.n_train
    assert len(setup.real.train) == n_pool and fresh_pool_needed(n, mix, generations) <= n_pool
    assert fresh_pool_needed(n + 1, mix, generations) > n_pool or n + 1 > n_pool  # and N is not needlessly small


def test_fresh_pool_extends_past_the_cap_on_n():
    fresh = toy_setup(20, 100, regime="fresh", mix=0.5, generations=2)
    assert (fresh.n_train, len(fresh.real.train)) == (20, 40)  # N as asked, and 2 x 10 unseen real rows beyond
    replace = toy_setup(20, 100, regime="replace", mix=0.5, generations=2)
    assert (replace.n_train, len(replace.real.train)) == (20, 20)


def test_a_pool_too_small_for_fresh_names_the_familys_own_size_key():
    with pytest.raises(CollapseError) as err:
        check_pool("fresh", 99, 40, 0.5, 3, "points", "dataset.n_train")
    assert "needs 40 points" in str(err.value) and "lower dataset.n_train, mix or generations" in str(err.value)


def test_describe_mix():
    assert describe_mix("replace", 0.1) == "each generation trains on 10% real / 90% synthetic data"
    assert "fresh" in describe_mix("fresh", 0.5) and "50% real" in describe_mix("fresh", 0.5)
    assert "growing" in describe_mix("accumulate", 1.0) and "fixed size" in describe_mix("accumulate_subsample", 1.0)


def recorded(run: Path, g: int) -> tuple[dict, np.ndarray]:
    folder = run / f"gen_{g:03d}"
    return json.loads((folder / "composition.json").read_text()), np.load(folder / "train_origin.npy")


def origin_counts(origin: np.ndarray) -> dict[str, int]:
    labels, counts = np.unique(origin[:, 0], return_counts=True)
    return {("real" if label == REAL else f"gen_{label}"): int(n) for label, n in zip(labels, counts)}


@pytest.mark.parametrize("mix", [1.0, 0.5])
@pytest.mark.slow
def test_accumulate_run_records_its_composition(tmp_path: Path, mix: float):
    run = tiny_run(tmp_path / "run", "regime=accumulate", f"mix={mix}", "generations=2")
    manifest, origin = recorded(run, 0)
    n = manifest["blocks"]
    n_real = n_real_blocks(mix, n)
    assert manifest["by_origin"] == {"real": n} == origin_counts(origin)
    real_subsets = []
    for g in (1, 2):
        manifest, origin = recorded(run, g)
        expected = {"real": n_real, **{f"gen_{k}": n for k in range(g)}}
        assert manifest["by_origin"] == expected == origin_counts(origin)
        assert manifest["blocks"] == len(origin) == n_real + g * n and manifest["regime"] == "accumulate"
        assert manifest["tokens"] == manifest["blocks"] * 64
        real_subsets.append(sorted(origin[origin[:, 0] == REAL, 1].tolist()))
    assert real_subsets[0] == real_subsets[1]  # one fixed real subset, not a new draw each generation
    rows = read_metrics(run)
    assert [r["train_blocks"] for r in rows] == [n, n_real + n, n_real + 2 * n]
    assert [r["train_real_blocks"] for r in rows] == [n, n_real, n_real]


@pytest.mark.slow
def test_fresh_run_reads_unseen_real_rows(tmp_path: Path):
    run = tiny_run(tmp_path / "run", "regime=fresh", "mix=0.5", "generations=2", "dataset.max_train_blocks=20")
    seen = set(recorded(run, 0)[1][:, 1].tolist())
    assert seen == set(range(20))
    for g in (1, 2):
        manifest, origin = recorded(run, g)
        assert manifest["by_origin"] == {"real": 10, f"gen_{g - 1}": 10} == origin_counts(origin)
        rows = set(origin[origin[:, 0] == REAL, 1].tolist())
        assert len(rows) == 10 and not rows & seen
        seen |= rows
