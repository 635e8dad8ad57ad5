"""One end-to-end `metrics=full` run: every key it writes is documented, present and finite."""

from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, is_finite_number, read_metrics, run_in_process, stable, tiny_run

from collapse_cli.config import RunConfig
from collapse_cli.experiment.seeds import stage_seed
from collapse_cli.families.lm import corpus_metrics as M
from collapse_cli.families.lm import family as lm_family
from collapse_cli.families.lm import measurement, train
from collapse_cli.families.lm.builtin import BuiltinLanguage
from collapse_cli.families.lm.config import MetricsConfig

DOCS = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"
# Keys that are the count of something a tiny run may legitimately lack (no tail types of a bucket).
MAY_BE_UNDEFINED = re.compile(r"^(tail_ppl_d\d|tmr\d+_\w+|tr\d+_\w+|head_recall_\w+)$")


def documented_patterns() -> list[re.Pattern]:
    """Every `key` or `key{k}_tok{n}`-style pattern written in backticks in docs/metrics.md."""
    names = set(re.findall(r"`([a-z][a-z0-9_{}<>*…]*)`", DOCS.read_text()))
    patterns = []
    for name in names:
        regex = re.escape(name)
        for placeholder in (r"\{k\}", r"\{n\}", "<u>", "<unit>", r"\{unit\}"):
            regex = regex.replace(placeholder, "[a-z0-9]+")
        regex = regex.replace(r"\*", "[a-z0-9_]+")
        patterns.append(re.compile(f"^{regex}$"))
    return patterns


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    return tiny_run(tmp_path_factory.mktemp("full") / "run", "metrics=full", "dataset.train_tokens=8000")


@pytest.mark.slow
def test_every_key_is_documented(full_run: Path):
    patterns = documented_patterns()
    keys = set().union(*(row.keys() for row in read_metrics(full_run)))
    undocumented = sorted(k for k in keys if not any(p.match(k) for p in patterns))
    assert not undocumented, undocumented


@pytest.mark.slow
def test_full_profile_keys_present_and_finite(full_run: Path):
    rows = read_metrics(full_run)
    required = ["ppl_test", "ppl_test_sliding", "tail_coverage", "seq_ppl_q01", "seq_ppl_q99", "seq_ppl_w1_log",
                "seq_ppl_frac_below_real_q05", "seq_ppl_frac_above_real_q95", "ce_truth", "kl_truth", "entropy_truth",
                "tr1_tok1", "tr10_word3", "tmr5_tok2", "head_recall_tok1", "vocab_survival_word", "novel_rate_tok3",
                "distinct4_tok", "rep4_word", "entropy_tok", "js_tok1", "js_word2", "self_bleu4_tok",
                "compression_ratio", "tail_ppl_d0", "tail_ppl_d9"]
    for row in rows:
        missing = [k for k in required if k not in row]
        assert not missing, missing
        not_finite = [k for k, v in row.items() if not is_finite_number(v) and not MAY_BE_UNDEFINED.match(k)]
        assert not not_finite, not_finite
    assert all(row["kl_truth"] > 0 for row in rows)


@pytest.mark.slow
def test_summary_has_extinction_and_verdict(full_run: Path):
    import json

    summary = json.loads((full_run / "summary.json").read_text())
    assert set(summary["extinction"]) == {"1", "2-5", "6-20", "21-100", ">100"}
    assert {"first_tail_gen", "first_likelihood_gen", "gap", "text"} <= set(summary["early_warning"])
    assert (full_run / "extinction_tok.npy").is_file()


# A two-token language known by hand: after token 0, 0 or 1 with 1/2 each; after token 1, 0 with 0.9.
TWO_TOKEN = BuiltinLanguage(vocab=["a", "b"], transition=np.array([[0.5, 0.5], [0.9, 0.1]]))
CPU = torch.device("cpu")


def uniform_model(vocab_size: int) -> torch.nn.Module:
    """A real (tiny) OPT decoder whose output layer is zero: every next-token law is uniform."""
    from transformers import OPTConfig, OPTForCausalLM

    config = OPTConfig(vocab_size=vocab_size, hidden_size=8, num_hidden_layers=1, ffn_dim=16, num_attention_heads=2,
                       max_position_embeddings=32, word_embed_proj_dim=8)
    model = OPTForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.zero_()  # tied to the input embeddings: those become zero too, harmlessly
    return model.eval()


def test_kl_truth_against_hand_computed_value():
    # One block "a b a a": positions predict after a, b, a. The model is uniform over the 2 tokens, so
    #   KL = mean over positions of (ln 2 - H(row)) = (0 + (ln 2 - h(0.9)) + 0) / 3,
    #   h(0.9) = -(0.9 ln 0.9 + 0.1 ln 0.1) = 0.325083; KL = (0.693147 - 0.325083) / 3 = 0.122688.
    blocks = np.array([[0, 1, 0, 0]])
    ref = measurement.Reference.build(blocks, blocks, 2, TWO_TOKEN)
    out, _ = measurement.model_metrics(uniform_model(2), ref, RunConfig(metrics=MetricsConfig()), CPU, seed=0)
    assert out["kl_truth"] == pytest.approx(0.122688, abs=1e-5)
    assert out["ce_truth"] == pytest.approx(math.log(2), abs=1e-6)


def measured(generation: int, ref: measurement.Reference, cfg: RunConfig, synthetic: np.ndarray):
    """measurement.measure as the loop calls it, with the generation's metrics seed."""
    model = uniform_model(2)
    texts = [" ".join("ab"[t] for t in row) for row in synthetic]
    decode = lambda blocks: [" ".join("ab"[t] for t in row) for row in blocks]  # noqa: E731
    return measurement.measure(generation, model, model, synthetic, texts, ref, cfg, CPU, decode,
                           stage_seed(cfg.seed, generation, "metrics"), lambda done, total: None)


def test_metrics_seed_differs_across_runs_and_generations():
    seeds = {(run_seed, g): stage_seed(run_seed, g, "metrics") for run_seed in range(4) for g in range(8)}
    # seed + generation would make (0, 1) and (1, 0) draw the same subsample.
    assert stage_seed(0, 1, "metrics") != stage_seed(1, 0, "metrics")
    assert len(set(seeds.values())) == len(seeds)


def test_measure_draws_its_subsamples_from_the_metrics_seed():
    rng = np.random.default_rng(0)
    real, synthetic = rng.integers(0, 2, size=(40, 8)), rng.integers(0, 2, size=(30, 8))
    cfg = RunConfig(metrics=MetricsConfig())
    cfg.metrics.level, cfg.metrics.self_bleu_sample, cfg.seed = "full", 5, 1
    ref = measurement.Reference.build(real, real[:10], 2, TWO_TOKEN)
    for generation in (0, 2):
        out, _, _ = measured(generation, ref, cfg, synthetic)
        expected = M.self_bleu(list(synthetic), 5, stage_seed(cfg.seed, generation, "metrics"))
        old_formula = M.self_bleu(list(synthetic), 5, cfg.seed + generation)
        assert expected != old_formula  # the data tell the two seeds apart
        assert out["self_bleu4_tok"] == expected


def test_measure_leaves_the_reference_as_it_was():
    rng = np.random.default_rng(1)
    real = rng.integers(0, 2, size=(20, 8))
    cfg = RunConfig(metrics=MetricsConfig())
    cfg.metrics.level = "full"
    ref = measurement.Reference.build(real, real[:6], 2, TWO_TOKEN)
    before = replace(ref)
    _, _, completed = measured(0, ref, cfg, real[:5])
    assert ref.test_seq_ppl is None and ref.real_words is None and ref == before
    # What later generations reuse comes back instead: generation 0's test perplexities (uniform model: 2).
    assert completed.test_seq_ppl.shape == (6,) and np.allclose(completed.test_seq_ppl, 2.0)
    assert completed.real_words[0] == ["ab"[t] for t in real[0]]


def copied_as_on_cuda(monkeypatch) -> list[torch.nn.Module]:
    """The models every conversion to inference weights copies from now on (kept alive: identities stay distinct).

    On the CPU inference_model returns the model itself; its CUDA branch (a bf16 copy) runs anywhere, and
    replaces it where the LM family calls it (for_inference, which the loop and the validator ask).
    """
    copied = []

    def bf16_copy_as_on_cuda(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        weights = train.inference_model(model, torch.device("cuda"))
        if weights is not model:
            copied.append(model)
        return weights

    monkeypatch.setattr(lm_family, "inference_model", bf16_copy_as_on_cuda)
    return copied


def handed_over(monkeypatch) -> list[tuple]:
    """Per generation that runs from now on: (the model sample got, the model measure got, its reference)."""
    calls, real_sample, real_measure = [], lm_family.LMFamily.sample, lm_family.LMFamily.measure

    def sample(self, model, *args):
        calls.append([model])
        return real_sample(self, model, *args)

    def measure(self, generation, model, reference_model, *args):
        calls[-1] += [model, reference_model]
        return real_measure(self, generation, model, reference_model, *args)

    monkeypatch.setattr(lm_family.LMFamily, "sample", sample)
    monkeypatch.setattr(lm_family.LMFamily, "measure", measure)
    return calls


@pytest.mark.slow
def test_the_loop_asks_one_inference_copy_per_model_and_hands_it_to_sample_and_measure(tmp_path: Path, monkeypatch):
    """On CUDA, validation, sampling and scoring run a bf16 copy of a model. The loop asks for_inference once
    per trained model and passes that copy to sample and measure; generation 0's copy scores every later
    corpus; a resume reloads the reference and asks once for its copy."""
    copied, calls = copied_as_on_cuda(monkeypatch), handed_over(monkeypatch)
    whole = tiny_run(tmp_path / "whole", "generations=3")  # the builtin language has a validation split
    # Per generation: the one validation of its one epoch, and the loop's copy.
    assert len(copied) == 2 * 4 and len({id(model) for model in copied}) == 4
    assert len(calls) == 4 and all(sampled is measured for sampled, measured, _ in calls)
    assert all(sampled.dtype == torch.bfloat16 for sampled, _, _ in calls)
    assert len({id(sampled) for sampled, _, _ in calls}) == 4  # a copy of each generation's own model
    assert all(reference is calls[0][0] for _, _, reference in calls)  # generation 0's copy, never copied again

    real_fit = lm_family.LMFamily.fit

    def stop_at_generation_2(self, model, rows, seed, generation, on_step):
        if generation == 2:
            raise KeyboardInterrupt  # as Ctrl-C would: generations 0 and 1 are done
        return real_fit(self, model, rows, seed, generation, on_step)

    monkeypatch.setattr(lm_family.LMFamily, "fit", stop_at_generation_2)
    resumed = tmp_path / "resumed"
    with pytest.raises(SystemExit) as interrupted:
        run_in_process(["run", *TINY, "generations=3", f"hydra.run.dir={resumed}"])
    assert interrupted.value.code == 130 and (resumed / "gen_001/DONE").exists()
    monkeypatch.setattr(lm_family.LMFamily, "fit", real_fit)
    copied.clear()
    calls.clear()
    assert run_in_process(["resume", str(resumed)]) == 0
    assert len(copied) == 2 * 2 + 1  # generations 2 and 3 as above, and the reloaded reference once
    assert len(calls) == 2 and calls[0][2] is calls[1][2] and calls[0][2].dtype == torch.bfloat16
    assert stable(read_metrics(resumed)) == stable(read_metrics(whole))  # the reloaded copy scores the same


@pytest.mark.slow
def test_a_restored_epoch_is_sampled_from_its_own_copy(tmp_path: Path, monkeypatch):
    """best_valid keeping epoch 1 of 2: the copy the last validation made holds epoch 2's weights; sampling
    and scoring run the loop's copy, made after training restored epoch 1."""
    copied = copied_as_on_cuda(monkeypatch)
    scripted = iter([1.0, 2.0] * 2)  # validation losses by epoch, per generation: epoch 1 is the best
    monkeypatch.setattr(lm_family, "token_nll", lambda *args: np.array([next(scripted)]))
    trained, sampled = [], []
    real_fit, real_generate = lm_family.LMFamily.fit, lm_family.generate

    def fit_and_keep(self, model, *args):
        stats = real_fit(self, model, *args)
        trained.append({name: tensor.to(torch.bfloat16) for name, tensor in model.state_dict().items()})
        return stats

    def generate_and_keep(weights, *args):
        sampled.append({name: tensor.clone() for name, tensor in weights.state_dict().items()})
        return real_generate(weights, *args)

    monkeypatch.setattr(lm_family.LMFamily, "fit", fit_and_keep)
    monkeypatch.setattr(lm_family, "generate", generate_and_keep)
    run = tiny_run(tmp_path / "run", "train.epochs=2", "train.select=best_valid")
    assert [row["kept_epoch"] for row in read_metrics(run)] == [1, 1]
    assert len(copied) == 6  # per generation: one copy per validated epoch, one of the restored weights
    assert len(sampled) == len(trained) == 2
    for weights, kept in zip(sampled, trained):
        assert weights.keys() == kept.keys() and all(torch.equal(weights[name], kept[name]) for name in kept)
