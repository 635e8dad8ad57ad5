"""Watermark provenance: the green lists, the z-test against hand-computed and closed-form cases, the mark in the
decoder (exact on the CPU), curate=watermark, the config's refusals and a real run's metrics."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import read_metrics, tiny_run
from test_config import refusal
from test_curate import assert_report_adds_up
from transformers import OPTConfig, OPTForCausalLM

from collapse_cli.families.lm.config import GenerateConfig
from collapse_cli.families.lm.curate import curate
from collapse_cli.families.lm.family import through_curation
from collapse_cli.families.lm.generate import generate
from collapse_cli.families.lm.models import loop_generation_config
from collapse_cli.families.lm.select import Marker
from collapse_cli.families.lm.watermark import (
    GreenLists,
    WatermarkConfig,
    detection_metrics,
    marked_rows,
    z_scores,
)

CPU = torch.device("cpu")
VOCAB = 50


def hand_lists() -> GreenLists:
    """V = 4, green set {0}, shift s(p) = p: after p the one green id is v with (v + p) mod 4 = 0."""
    return GreenLists(base_ids=np.array([0]), base=np.array([True, False, False, False]), shift=np.arange(4))


def test_z_score_of_a_hand_computed_case():
    # Row 1, pairs (0,0) green, (0,3) red, (3,1) green, (1,2) red: 2 green of 4 against gamma * 4 = 1.
    # Row 2: (0,1), (1,1), (1,1), (1,1): none green.
    z = z_scores(np.array([[0, 0, 3, 1, 2], [0, 1, 1, 1, 1]]), hand_lists())
    sd = math.sqrt(4 * 0.25 * 0.75)
    assert z == pytest.approx([(2 - 1) / sd, (0 - 1) / sd], abs=1e-12)


def test_z_scores_refuse_ids_outside_the_vocabulary_and_rows_of_one_token():
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        z_scores(np.array([[0, 4]]), hand_lists())
    with pytest.raises(ValueError, match="at least 2 tokens"):
        z_scores(np.array([[0]]), hand_lists())


def test_every_green_list_holds_gamma_of_the_vocabulary_and_the_key_decides_them():
    lists = GreenLists.build(key=7, gamma=0.25, vocab=1000)
    ids = lists.green_ids(np.arange(1000))
    assert ids.shape == (1000, 250) and lists.gamma == 0.25
    # green_ids and is_green agree, and each row's ids are distinct: a gamma share of the vocabulary.
    assert lists.is_green(np.repeat(np.arange(1000), 250), ids.ravel()).all()
    assert all(len(set(row)) == 250 for row in ids[:50].tolist())
    # Lists of different previous tokens overlap as independent gamma-shares do (gamma^2 V = 62.5 ids).
    overlaps = [len(set(ids[a]) & set(ids[a + 1])) for a in range(0, 400, 2)]
    assert 55 < np.mean(overlaps) < 70
    assert np.array_equal(GreenLists.build(7, 0.25, 1000).shift, lists.shift)
    assert not np.array_equal(GreenLists.build(8, 0.25, 1000).base, lists.base)


def test_unmarked_text_scores_as_the_null_law_says():
    """Tokens that know nothing of the key: the green count of 64 scored tokens is Binomial(64, 1/4), so z has
    mean 0, sd 1, and exceeds 2 (23 green or more) with the binomial tail's probability."""
    lists = GreenLists.build(key=3, gamma=0.25, vocab=5000)
    z = z_scores(np.random.default_rng(0).integers(0, 5000, size=(20_000, 65)), lists)
    assert abs(z.mean()) < 0.03 and abs(z.std() - 1) < 0.03
    tail = sum(math.comb(64, k) * 0.25**k * 0.75 ** (64 - k) for k in range(23, 65))  # 16 + 2 * sqrt(12) = 22.9
    assert abs(np.mean(z > 2) - tail) < 4 * math.sqrt(tail * (1 - tail) / len(z))


def test_marker_adds_delta_at_the_green_ids_of_marked_rows_only():
    lists = GreenLists.build(key=5, gamma=0.25, vocab=VOCAB)
    logits = torch.randn(6, VOCAB, generator=torch.Generator().manual_seed(0))
    previous = torch.tensor([3, 3, 0, 49, 17, 8])
    marked = np.array([True, False, True, True, False, True])
    out = Marker(WatermarkConfig(enabled=True, key=5, delta=1.5), VOCAB, CPU).bind(marked)(logits.clone(), previous)
    green = lists.is_green(previous.numpy()[:, None], np.arange(VOCAB)[None, :])
    expected = logits.numpy() + 1.5 * (green & marked[:, None])
    assert np.array_equal(out.numpy(), expected.astype(np.float32))


def test_the_mark_is_one_pass_over_the_logits_by_the_roofline_counter():
    """scripts/roofline.py's classes: the scatter-add is the one op over [rows, V]; the green ids [rows, G] are
    index arithmetic (a gather of shifts, a subtract, a modulo), never a [rows, V] mask."""
    from test_roofline import SMALL, meta, record

    device = torch.device("meta")
    marker = Marker(WatermarkConfig(enabled=True), SMALL.vocab, device)
    mark = marker.bind(np.ones(SMALL.rows, dtype=bool))
    previous = torch.zeros(SMALL.rows, dtype=torch.long, device=device)
    ops = record(lambda: mark(meta(SMALL.rows, SMALL.vocab), previous))
    assert [op.name for op in ops if op.kind == "vocab"] == ["scatter_add_"]
    assert {op.kind for op in ops} == {"vocab", "other"} and len(ops) == 4


@pytest.fixture(scope="module")
def model():
    config = OPTConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, ffn_dim=64,
                       max_position_embeddings=128, word_embed_proj_dim=32, pad_token_id=0, bos_token_id=1,
                       eos_token_id=1)
    torch.manual_seed(0)
    return loop_generation_config(OPTForCausalLM(config).eval())


PROMPTS = np.random.default_rng(0).integers(2, VOCAB, size=(40, 5))
SAMPLE = GenerateConfig(new_tokens=48, batch_size=16)


def marked_config(**settings) -> GenerateConfig:
    return replace(SAMPLE, watermark=WatermarkConfig(enabled=True, **settings))


@pytest.mark.parametrize("decoder", ["own", "transformers"])
def test_delta_zero_is_bit_identical_to_unwatermarked_sampling(model, decoder):
    plain = generate(model, PROMPTS, replace(SAMPLE, decoder=decoder), seed=0, device=CPU)
    zero = generate(model, PROMPTS, replace(marked_config(delta=0.0), decoder=decoder), seed=0, device=CPU)
    assert np.array_equal(plain, zero)


def test_same_seed_same_marks_and_unmarked_rows_are_the_unwatermarked_ones(model):
    cfg = marked_config(delta=4.0, unmarked_share=0.25)  # a strong mark: every marked row of 48 tokens detected
    first, again = (generate(model, PROMPTS, cfg, seed=4, device=CPU) for _ in range(2))
    assert np.array_equal(first, again)
    marked = marked_rows(len(PROMPTS), 0.25, seed=4)
    assert (~marked).sum() == 10
    # Each row draws one uniform per step from its chunk's stream, marked or not: an unmarked row's logits
    # are untouched, so it is the row unwatermarked sampling writes, token for token.
    plain = generate(model, PROMPTS, SAMPLE, seed=4, device=CPU)
    assert np.array_equal(first[~marked], plain[~marked])
    assert not np.array_equal(first[marked], plain[marked])
    z = z_scores(first, GreenLists.build(WatermarkConfig.key, 0.25, VOCAB))
    assert z[marked].min() > 4 > z[~marked].max()


def test_the_transformers_decoder_marks_the_same_tokens(model):
    """generate.decoder=transformers samples through the same loop, so the same marks."""
    cfg = marked_config(delta=2.0, unmarked_share=0.5)
    assert np.array_equal(generate(model, PROMPTS, cfg, seed=1, device=CPU),
                          generate(model, PROMPTS, replace(cfg, decoder="transformers"), seed=1, device=CPU))


def test_chunks_of_a_marked_corpus_reassemble_it(model):
    """Which rows are marked depends on the seed and the row, not on which chunks a rank decodes."""
    cfg = marked_config(delta=2.0, unmarked_share=0.5)
    whole = generate(model, PROMPTS, cfg, seed=2, device=CPU)
    parts = [generate(model, PROMPTS, cfg, seed=2, device=CPU, chunks=[k]) for k in (2, 0, 1)]
    assert np.array_equal(np.concatenate([parts[1], parts[2], parts[0]]), whole)


def test_detection_metrics_and_what_got_through_on_a_hand_case():
    z_synth = np.array([5.0, 4.5, 1.0, 3.9, 0.0, 6.0])
    marked = np.array([True, True, True, True, False, False])
    metrics = detection_metrics(z_synth, marked, np.array([0.1, 4.2, -1.0, 2.0]), threshold=4.0)
    assert metrics == {"watermark_tpr": 0.5, "watermark_fpr": 0.25, "watermark_fpr_unmarked": 0.5,
                       "watermark_z_marked_median": pytest.approx(4.2), "watermark_marked_rows": 4}
    through = through_curation(np.array([2, 3, 4, 4]), marked)
    assert through == {"watermark_through": 0.5, "watermark_marked_through": 0.5, "watermark_unmarked_through": 0.5}
    assert math.isnan(detection_metrics(z_synth, np.ones(6, bool), z_synth, 4.0)["watermark_fpr_unmarked"])


CORPUS = np.random.default_rng(1).integers(0, 100, size=(10, 8))
DETECTED = np.array([True, False, True, False, False, True, False, False, True, False])


def test_curate_watermark_filter_drops_exactly_the_detected_rows():
    result = curate(CORPUS, {"watermark": {"mode": "filter"}, "min_keep_fraction": 0.0}, detected=DETECTED)
    assert result.indices.tolist() == np.flatnonzero(~DETECTED).tolist()
    assert result.report["curate_drop_watermark"] == 4
    assert_report_adds_up(result.report)


def test_curate_watermark_weight_redraws_the_size_and_favours_undetected_rows():
    cfg = {"watermark": {"mode": "weight", "weight": 0.1}}
    result = curate(np.repeat(CORPUS, 100, axis=0), cfg, detected=np.repeat(DETECTED, 100), seed=3)
    assert len(result.indices) == 1000
    # P(detected) = 400 * 0.1 / (400 * 0.1 + 600) = 1/16.
    share = np.repeat(DETECTED, 100)[result.indices].mean()
    assert abs(share - 1 / 16) < 0.025
    assert_report_adds_up(result.report)
    assert np.array_equal(curate(np.repeat(CORPUS, 100, axis=0), cfg, detected=np.repeat(DETECTED, 100),
                                 seed=3).indices, result.indices)


def test_curate_watermark_needs_the_verdicts():
    with pytest.raises(ValueError, match="watermark detector"):
        curate(CORPUS, {"watermark": {"mode": "filter"}})


def test_config_refuses_bad_watermark_values_with_one_line(compose):
    assert refusal(compose, ["generate.watermark.gamma=1.5"]).startswith(
        "generate.watermark.gamma=1.5 must be in (0, 1)")
    assert refusal(compose, ["generate.watermark.delta=-1"]).startswith("generate.watermark.delta=-1.0 must be >= 0")
    assert "generate.watermark.unmarked_share=2.0" in refusal(compose, ["generate.watermark.unmarked_share=2"])
    assert "generate.num_beams=5" in refusal(compose, ["generate=shumailov", "generate.watermark.enabled=true"])
    assert "set generate.watermark.enabled=true" in refusal(
        compose, ["curate=watermark", "generate.watermark.enabled=false"])
    assert "curate.watermark.weight=0.0" in refusal(compose, ["curate=watermark", "curate.watermark.weight=0"])
    assert "curate filters text" in refusal(compose, ["model=gmm", "dataset=gaussian", "curate=watermark"])


def test_curate_watermark_alone_turns_the_mark_on_so_it_is_one_arm_of_a_curate_sweep(compose):
    cfg = compose(["curate=watermark"])
    assert cfg.generate.watermark.enabled and cfg.generate.watermark.unmarked_share == 0.2
    assert cfg.curate.watermark.mode == "filter" and cfg.curate.min_keep_fraction == 0.0
    assert not compose(["curate=none"]).generate.watermark.enabled


def test_the_experiment_filters_marked_text_and_one_override_is_its_control(compose):
    cfg = compose(["+experiment=watermark_filter"])
    assert cfg.mix == 0.0 and cfg.curate.watermark.mode == "filter" and cfg.curate.active()
    assert (cfg.generate.watermark.enabled, cfg.generate.watermark.delta, cfg.generate.watermark.unmarked_share) == (
        True, 2.0, 0.2)
    control = compose(["+experiment=watermark_filter", "curate=none", "generate.watermark.delta=0.5"])
    assert control.curate.watermark.mode == "none" and not control.curate.active()
    assert control.generate.watermark.enabled and control.generate.watermark.delta == 0.5


@pytest.mark.slow
def test_a_marked_run_reports_detection_and_filters_what_it_detects(tmp_path: Path):
    """A real tiny run on the builtin language: TPR, FPR and what got through, per generation; the saved files."""
    run = tiny_run(tmp_path / "run", "curate=watermark", "generate.watermark.enabled=true",
                   "generate.watermark.unmarked_share=0.3")
    rows = read_metrics(run)
    assert [row["generation"] for row in rows] == [0, 1]
    for g, row in enumerate(rows):
        assert row["watermark_tpr"] >= 0.95 and row["watermark_fpr"] <= 0.05, row
        marked = np.load(run / f"gen_{g:03d}" / "watermarked.npy")
        z = np.load(run / f"gen_{g:03d}" / "watermark_z.npy")
        kept = np.load(run / f"gen_{g:03d}" / "curated_index.npy")
        assert (~marked).sum() == round(0.3 * len(marked)) and marked.sum() == row["watermark_marked_rows"]
        assert len(kept) > 0 and (z[kept] <= 4).all() and row["curate_drop_watermark"] == int((z > 4).sum())
        assert row["watermark_marked_through"] == pytest.approx(1 - row["watermark_tpr"])
