"""The causal language model as a family: token blocks in, token blocks out.

Rows are int64 [n, block_size] token ids. Real data is text tokenized into blocks
(data.py); each generation trains (train.py), writes one block per prompt (generate.py),
is measured by the collapse profile (profile.py) and curated (curate.py).
"""

from __future__ import annotations

import html
import logging
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from collapse_cli.config import DatasetConfig, ModelConfig, RunConfig, check_lengths, validate_lm
from collapse_cli.experiment import distributed
from collapse_cli.families.base import Curated, Family, ObjectCache, Progress, RealData
from collapse_cli.families.lm import profile
from collapse_cli.families.lm.curate import curate
from collapse_cli.families.lm.data import load_corpus, make_blocks
from collapse_cli.families.lm.decode import describe as describe_decoder
from collapse_cli.families.lm.evaluate import token_nll
from collapse_cli.families.lm.generate import generate, prompts_for
from collapse_cli.families.lm.gguf import cache_root
from collapse_cli.families.lm.models import (
    build_base_model,
    load_tokenizer,
    loop_generation_config,
    makes_own_tokenizer,
    max_positions,
    n_parameters,
)
from collapse_cli.families.lm.quiet import no_library_bars
from collapse_cli.families.lm.train import Validate, compiles, inference_model, keep_compile_cache, train
from collapse_cli.measure.metrics import perplexity
from collapse_cli.rundir import RunDir

log = logging.getLogger("collapse")


class LMFamily(Family):
    name = "lm"
    model_schema = ModelConfig
    dataset_schema = DatasetConfig
    datasets = ("builtin", "text", "wikitext2", "tinystories")
    unit = "blocks"
    samples_file = "synthetic_ids.npz"
    headline = ("ppl_test", "tail_coverage")
    likelihood_key, likelihood_se_key, likelihood_name = "ppl_test", "ppl_test_se", "test perplexity"
    leading_keys = profile.LEADING_KEYS
    table_keys = ("ppl_test", "tail_coverage", "seq_ppl_q50", "seq_ppl_q99", "kl_truth", "distinct2_tok",
                  "train_loss_last")
    curates = True
    weighs_rows = True  # per-row weights in the token loss (train.real_weight)

    def __init__(self, cfg: RunConfig, device: torch.device):
        super().__init__(cfg, device)
        self.corpus = None
        self.tokenizer = None
        self.prompts: Optional[np.ndarray] = None
        self.reference: Optional[profile.Reference] = None
        self._decoded = ObjectCache()  # a sample array's texts
        self._reference_copy = ObjectCache()  # the generation-0 model's inference weights: see _scoring_reference
        self._trained_copy = ObjectCache()  # this generation's model's inference weights: see _inference_weights
        if compiles(cfg.train, device):
            keep_compile_cache(cache_root(cfg.model.cache_dir) / "torch-compile")

    @classmethod
    def validate(cls, cfg: RunConfig) -> None:
        validate_lm(cfg)

    def _load_text(self) -> None:
        """The corpus and its tokenizer, once: the base model's vocabulary and the blocks both need them."""
        if self.tokenizer is None:
            self.corpus = load_corpus(self.cfg.dataset)
            self.tokenizer = load_tokenizer(self.cfg.model, self.corpus)

    def build_base_model(self, seed: int) -> torch.nn.Module:
        self._load_text()
        model = build_base_model(self.cfg.model, self.tokenizer, seed)
        check_lengths(self.cfg, max_positions(model))
        return model

    def train_cap(self) -> Optional[int]:
        return self.cfg.dataset.max_train_blocks

    def real_data(self, pool_cap: Optional[int]) -> RealData:
        self._load_text()
        dataset = replace(self.cfg.dataset, max_train_blocks=pool_cap)
        blocks = make_blocks(self.corpus, self.tokenizer, self.cfg.train.block_size, dataset)
        return RealData(train=blocks.train, test=blocks.test, valid=blocks.valid)

    def prepare(self, real: RealData, n_train: int) -> None:
        bos = self.tokenizer.bos_token_id or self.tokenizer.eos_token_id
        self.prompts = prompts_for(real.train[:n_train], self.cfg.generate, bos)
        # The builtin language's true law is over its own word ids; another tokenizer cuts the text differently.
        truth = self.corpus.language if makes_own_tokenizer(self.cfg.model) else None
        self.reference = profile.Reference.build(real.train[:n_train], real.test, len(self.tokenizer), truth)
        self.valid = real.valid
        if self.cfg.train.select == "best_valid" and len(real.valid) == 0:
            log.warning("train.select=best_valid: the dataset has no validation split (set dataset.valid=PATH), "
                        "so each generation keeps its last epoch and ppl_valid is not measured")

    def _validator(self) -> Optional[Validate]:
        """Mean token NLL on the real validation blocks; None when the dataset has no validation split."""
        if len(self.valid) == 0:
            return None
        batch = profile.eval_batch_size(self.cfg, self.device)

        def validate(model: torch.nn.Module, epoch: int) -> float:
            weights = inference_model(model, self.device)
            if epoch == self.cfg.train.epochs:  # the trained weights, unless best_valid restores an earlier epoch
                self._trained_copy.put(model, weights)
            return float(token_nll(weights, self.valid, batch, self.device).mean(dtype=np.float64))

        return validate

    def fit(self, model: torch.nn.Module, rows: np.ndarray, seed: int, generation: int, on_step: Progress,
            row_weights: Optional[np.ndarray] = None) -> dict:
        model.to(self.device)  # in place: the loop hands over a CPU copy of the base or previous model
        self._trained_copy.clear()  # training changes weights: no copy made before it may serve after it
        stats = train(model, rows, self.cfg.train, seed, self.device, generation, on_step, self._validator(),
                      row_weights=row_weights)
        if stats.kept_epoch != self.cfg.train.epochs:  # restored an earlier epoch (or never validated)
            self._trained_copy.clear()
        out = {"train_tokens_seen": stats.tokens, "train_loss_last": stats.loss_last}
        if stats.valid_loss is not None:
            # valid_loss is already a per-token mean: one "token" of that NLL.
            out.update(ppl_valid=perplexity(stats.valid_loss, 1), kept_epoch=stats.kept_epoch)
        return out

    def sample(self, model: torch.nn.Module, n: int, seed: int, on_batch: Progress) -> np.ndarray:
        # One sequence per prompt, and there is one prompt per real training block: n is N.
        assert n == len(self.prompts), (n, len(self.prompts))
        return generate(self._inference_weights(model), self.prompts, self.cfg.generate, seed, self.device, on_batch)

    def _inference_weights(self, model: torch.nn.Module) -> torch.nn.Module:
        """The weights sampling and scoring run on (a bf16 copy on CUDA), made at most once per trained model.

        Training's last validation pass already made that copy, unless best_valid restored an earlier
        epoch; else sampling makes it, and measuring reuses it.
        """
        return self._trained_copy.get(model, lambda trained: inference_model(trained, self.device))

    def _texts(self, samples: np.ndarray) -> list[str]:
        """The decoded samples; measure, curate and save_samples share one decoding."""
        return self._decoded.get(samples, lambda rows: self.tokenizer.batch_decode(rows, skip_special_tokens=False))

    def _scoring_reference(self, reference_model: torch.nn.Module) -> torch.nn.Module:
        """The generation-0 model as scoring runs it (a bf16 copy on CUDA), made once per reference model.

        Every generation scores its corpus under the reference: converting it there cost a full copy
        per generation. Keyed by the model object, which the loop keeps for the whole run; a resume
        loads a new one, so its copy is made afresh and the old one (if any) is dropped first.
        """
        return self._reference_copy.get(reference_model, lambda model: inference_model(model, self.device))

    def measure(self, generation: int, model: torch.nn.Module, reference_model: torch.nn.Module,
                samples: np.ndarray, seed: int, on_progress: Progress) -> tuple[dict, np.ndarray]:
        weights = self._inference_weights(model)  # bf16 on CUDA: scoring converts neither model again
        if model is reference_model:
            self._reference_copy.put(model, weights)  # generation 0 is the reference: one copy scores it both ways
        scoring_reference = self._scoring_reference(reference_model)
        metrics, seq_ppl, self.reference = profile.measure(generation, weights, scoring_reference, samples,
                                                           self._texts(samples), self.reference, self.cfg, self.device,
                                                           self.tokenizer.batch_decode, seed, on_progress)
        self._trained_copy.clear()  # its last use: the memory goes back before the next generation trains
        metrics["generated_tokens"] = int(samples.size)
        return metrics, seq_ppl

    def curate(self, samples: np.ndarray, scores: np.ndarray, seed: int) -> Curated:
        result = curate(samples, self.cfg.curate, scores, self._texts(samples), seed)
        return Curated(result.indices, result.report)

    def truth_scores(self, samples: np.ndarray) -> Optional[np.ndarray]:
        """Mean log-probability per transition under the builtin language (own tokenizer only: None otherwise)."""
        language = self.reference.language if self.reference is not None else None
        return None if language is None else true_log_likelihood(language.transition, samples)

    def review_cells(self, samples: np.ndarray) -> list[str]:
        return [f"<pre style='white-space:pre-wrap'>{html.escape(text)}</pre>" for text in self._texts(samples)]

    def model_scores(self, scores: np.ndarray) -> np.ndarray:
        return -np.log(np.asarray(scores, dtype=np.float64))  # seq_ppl -> mean token log-likelihood (gen 0)

    def extent(self, n_rows: int) -> dict[str, int]:
        return {"tokens": n_rows * self.cfg.train.block_size}

    def n_parameters(self, model: torch.nn.Module) -> int:
        return n_parameters(model)

    def describe(self) -> str:
        return self.cfg.model.path or self.cfg.model.name

    def describe_sampling(self, model: torch.nn.Module) -> str:
        return describe_decoder(model, self.cfg.generate, self.device)

    def reference_files(self) -> dict[str, np.ndarray]:
        return {"reference_test_seq_ppl.npy": self.reference.test_seq_ppl.astype(np.float32)}

    def save_samples(self, folder: Path, samples: np.ndarray, scores: np.ndarray) -> None:
        # `folder` is the run's gen_k: the run folder's tokenizer/ is written beside it, once.
        self._save_run_tokenizer(folder.parent / "tokenizer")
        files = RunDir(folder)
        files.save_ids(self.samples_file, samples)
        files.save_texts_gz("synthetic.txt.gz", self._texts(samples))
        files.save_array("seq_ppl.npy", scores.astype(np.float32))

    def load_samples(self, folder: Path) -> np.ndarray:
        return RunDir(folder).load_ids(self.samples_file)

    def save_model(self, model: torch.nn.Module, folder: Path) -> None:
        """Weights, config and the tokenizer they were trained with: the folder loads in any HF tool alone."""
        shutil.rmtree(folder, ignore_errors=True)
        with no_library_bars():
            model.save_pretrained(folder)
            self.tokenizer.save_pretrained(folder)

    def _save_run_tokenizer(self, folder: Path) -> None:
        """The run's tokenizer (for tiny: the BPE trained on the run's text, or the builtin words), which the
        corpora's token ids mean; written through a temporary folder, so it is whole or absent."""
        if folder.is_dir() or not distributed.is_main():
            return
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        with no_library_bars():
            self.tokenizer.save_pretrained(tmp)
        tmp.rename(folder)

    def load_model(self, folder: Path) -> torch.nn.Module:
        from transformers import AutoModelForCausalLM

        with no_library_bars():
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        return loop_generation_config(model.to(self.device).eval())

    def summarize(self, run_dir: Any, rows: list[dict]) -> dict:
        summary = super().summarize(run_dir, rows)
        if self.cfg.metrics.level == "full":
            summary["extinction"] = profile.extinction_summary(run_dir, self.reference, len(rows))
        return summary


# An impossible transition (the model wrote one the language never makes) counts as this probability:
# the verifier ranks it last and the tail weights stay finite.
IMPOSSIBLE = 1e-12


def true_log_likelihood(transition: np.ndarray, blocks: np.ndarray) -> np.ndarray:
    """Per block: the mean log P(next | current) of its transitions under the true chain, float64 [n]."""
    n_vocab = transition.shape[0]
    current, following = blocks[:, :-1], blocks[:, 1:]
    inside = (current < n_vocab) & (following < n_vocab)  # a model vocabulary larger than the language's
    p = np.where(inside, transition[np.minimum(current, n_vocab - 1), np.minimum(following, n_vocab - 1)], 0.0)
    return np.log(np.maximum(p, IMPOSSIBLE)).mean(axis=1)


FAMILY = LMFamily
