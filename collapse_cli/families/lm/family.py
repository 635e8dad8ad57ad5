"""The causal language model as a family: token blocks in, token blocks out.

Rows are int64 [n, block_size] token ids. Real data is text tokenized into blocks
(data.py); each generation trains (train.py), writes one block per prompt (generate.py),
is measured (measurement.py) and curated (curate.py).
"""

from __future__ import annotations

import html
import logging
import shutil
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from collapse_cli import ranks
from collapse_cli.config import RunConfig, TrainConfig
from collapse_cli.families.base import Curated, Family, Progress, RealData
from collapse_cli.families.lm import measurement, watermark
from collapse_cli.families.lm.config import (
    DatasetConfig,
    GenerateConfig,
    MetricsConfig,
    ModelConfig,
    check_lengths,
    validate_lm,
)
from collapse_cli.families.lm.corpus_files import load_ids, save_ids, save_texts_gz
from collapse_cli.families.lm.corpus_metrics import perplexity
from collapse_cli.families.lm.curate import curate
from collapse_cli.families.lm.data import load_corpus, make_blocks
from collapse_cli.families.lm.decode import describe as describe_decoder
from collapse_cli.families.lm.decode import logits_width
from collapse_cli.families.lm.evaluate import token_nll
from collapse_cli.families.lm.facts import FACTS
from collapse_cli.families.lm.generate import generate, prompts_for, watermarked
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
from collapse_cli.rundir import RunDir

log = logging.getLogger("collapse")


class LMFamily(Family):
    name = "lm"
    model_schema = ModelConfig
    dataset_schema = DatasetConfig
    group_schemas = {"generate": GenerateConfig, "metrics": MetricsConfig}
    # Every train key: the LM trains by AdamW with warm-up, a schedule, clipping and a block length.
    reads = tuple(f"train.{spec.name}" for spec in fields(TrainConfig))
    size_key = "dataset.max_train_blocks"
    supports_nproc = True  # training, sampling and scoring are sharded across ranks
    datasets = ("builtin", "text", "wikitext2", "tinystories")
    facts = FACTS
    samples_file = "synthetic_ids.npz"
    leading_keys = measurement.LEADING_KEYS
    curates = True
    weighs_rows = True  # per-row weights in the token loss (train.real_weight)

    def __init__(self, cfg: RunConfig, device: torch.device):
        super().__init__(cfg, device)
        self.corpus = None
        self.tokenizer = None
        self.prompts: Optional[np.ndarray] = None
        self.reference: Optional[measurement.Reference] = None
        self._decoded: Optional[tuple[np.ndarray, list[str]]] = None  # a sample array and its texts: see _texts
        # A sample array's watermark, (samples, rows marked, z-scores or None): sample() knows which rows it
        # marked (a function of its seed), measure() adds the z-scores, curate() and save_samples() read both.
        self._marks: Optional[tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]] = None
        if compiles(cfg.train, device):
            keep_compile_cache(cache_root(cfg.model.cache_dir) / "torch-compile")

    @classmethod
    def validate(cls, cfg: RunConfig) -> None:
        validate_lm(cfg)
        watermark.validate_watermark(cfg.generate.watermark, cfg.curate.watermark, cfg.generate.num_beams)

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
        self.reference = measurement.Reference.build(real.train[:n_train], real.test, len(self.tokenizer), truth)
        self.valid, self.real_test = real.valid, real.test
        if self.cfg.train.select == "best_valid" and len(real.valid) == 0:
            log.warning("train.select=best_valid: the dataset has no validation split (set dataset.valid=PATH), "
                        "so each generation keeps its last epoch and ppl_valid is not measured")

    def _validator(self) -> Optional[Validate]:
        """Mean token NLL on the real validation blocks; None when the dataset has no validation split."""
        if len(self.valid) == 0:
            return None
        batch = measurement.eval_batch_size(self.cfg, self.device)

        def validate(model: torch.nn.Module, epoch: int) -> float:
            return float(token_nll(self.for_inference(model), self.valid, batch, self.device).mean(dtype=np.float64))

        return validate

    def fit(self, model: torch.nn.Module, rows: np.ndarray, seed: int, generation: int, on_step: Progress,
            row_weights: Optional[np.ndarray] = None) -> dict:
        model.to(self.device)  # in place: the loop hands over a CPU copy of the base or previous model
        stats = train(model, rows, self.cfg.train, seed, self.device, generation, on_step, self._validator(),
                      row_weights=row_weights)
        out = {"train_tokens_seen": stats.tokens, "train_loss_last": stats.loss_last}
        if stats.valid_loss is not None:
            # valid_loss is already a per-token mean: one "token" of that NLL.
            out.update(ppl_valid=perplexity(stats.valid_loss, 1), kept_epoch=stats.kept_epoch)
        return out

    def for_inference(self, model: torch.nn.Module) -> torch.nn.Module:
        """A bf16 copy on CUDA (train.inference_model), the model itself on the CPU."""
        return inference_model(model, self.device)

    def sample(self, model: torch.nn.Module, n: int, seed: int, on_batch: Progress) -> np.ndarray:
        # One sequence per prompt, and there is one prompt per real training block: n is N.
        assert n == len(self.prompts), (n, len(self.prompts))
        samples = generate(model, self.prompts, self.cfg.generate, seed, self.device, on_batch)
        marked = watermarked(self.cfg.generate, n, seed)
        self._marks = None if marked is None else (samples, marked, None)  # measure adds the z-scores
        return samples

    def _marks_of(self, samples: np.ndarray) -> Optional[tuple[np.ndarray, Optional[np.ndarray]]]:
        """(rows marked, z-scores) of the array sample() wrote; None for any other array."""
        return self._marks[1:] if self._marks is not None and self._marks[0] is samples else None

    def _texts(self, samples: np.ndarray) -> list[str]:
        """The decoded samples; measure, curate and save_samples share one decoding of the same array.

        Keyed by the array itself (`is`), which it holds: an id() is reused once an array is freed."""
        if self._decoded is None or self._decoded[0] is not samples:
            self._decoded = None  # the old texts go before the new ones are made
            self._decoded = (samples, self.tokenizer.batch_decode(samples, skip_special_tokens=False))
        return self._decoded[1]

    def measure(self, generation: int, model: torch.nn.Module, reference_model: torch.nn.Module,
                samples: np.ndarray, seed: int, on_progress: Progress) -> tuple[dict, np.ndarray]:
        metrics, seq_ppl, self.reference = measurement.measure(generation, model, reference_model, samples,
                                                           self._texts(samples), self.reference, self.cfg, self.device,
                                                           self.tokenizer.batch_decode, seed, on_progress)
        metrics["generated_tokens"] = int(samples.size)
        if self.cfg.generate.watermark.enabled:
            metrics.update(self._watermark_metrics(samples, logits_width(model)))
        return metrics, seq_ppl

    def _watermark_metrics(self, samples: np.ndarray, vocab: int) -> dict:
        """Detection on this generation's rows (TPR on the marked ones) and on the real test blocks (FPR)."""
        mark = self.cfg.generate.watermark
        lists = watermark.GreenLists.build(mark.key, mark.gamma, vocab)
        # The rows sample() marked: a function of the generation's seed, which only sample() is given.
        marks = self._marks_of(samples)
        assert marks is not None, "measure() needs the samples this family's sample() wrote"
        z_synth = watermark.z_scores(samples, lists)
        self._marks = (samples, marks[0], z_synth)
        marked = marks[0]
        return watermark.detection_metrics(z_synth, marked, watermark.z_scores(self.real_test, lists), mark.threshold)

    def curate(self, samples: np.ndarray, scores: np.ndarray, seed: int) -> Curated:
        marks = self._marks_of(samples) if self.cfg.generate.watermark.enabled else None
        detected = None if marks is None else marks[1] > self.cfg.generate.watermark.threshold
        result = curate(samples, self.cfg.curate, scores, self._texts(samples), seed, detected)
        if marks is not None:
            result.report.update(through_curation(result.indices, marks[0]))
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

    def describe_precision(self) -> str:
        # train.autocast and train.inference_model: bf16 on CUDA only, fp32 on the CPU
        return "bf16" if self.device.type == "cuda" else ""

    def describe_sampling(self, model: torch.nn.Module) -> str:
        return describe_decoder(model, self.cfg.generate, self.device)

    def reference_files(self) -> dict[str, np.ndarray]:
        return {"reference_test_seq_ppl.npy": self.reference.test_seq_ppl.astype(np.float32)}

    def save_samples(self, folder: Path, samples: np.ndarray, scores: np.ndarray) -> None:
        # `folder` is the run's gen_k: the run folder's tokenizer/ is written beside it, once.
        self._save_run_tokenizer(folder.parent / "tokenizer")
        files = RunDir(folder)
        save_ids(files, self.samples_file, samples)
        save_texts_gz(files, "synthetic.txt.gz", self._texts(samples))
        files.save_array("seq_ppl.npy", scores.astype(np.float32))
        marks = self._marks_of(samples)
        if marks is not None:
            marked, z_scores = marks
            files.save_array("watermarked.npy", marked)
            files.save_array("watermark_z.npy", z_scores.astype(np.float32))

    def load_samples(self, folder: Path) -> np.ndarray:
        return load_ids(Path(folder) / self.samples_file)

    def save_model(self, model: torch.nn.Module, folder: Path) -> None:
        """Weights, config and the tokenizer they were trained with: the folder loads in any HF tool alone."""
        shutil.rmtree(folder, ignore_errors=True)
        with no_library_bars():
            model.save_pretrained(folder)
            self.tokenizer.save_pretrained(folder)

    def _save_run_tokenizer(self, folder: Path) -> None:
        """The run's tokenizer (for tiny: the BPE trained on the run's text, or the builtin words), which the
        corpora's token ids mean; written through a temporary folder, so it is whole or absent."""
        if folder.is_dir() or not ranks.is_main():
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
            summary["extinction"] = measurement.extinction_summary(run_dir, self.reference, len(rows))
        return summary


def through_curation(indices: np.ndarray, marked: np.ndarray) -> dict[str, float]:
    """Shares of the generation's rows, of its marked rows and of its unmarked rows that curation kept
    (distinct rows: a weight-mode redraw's repeats count once). nan where a group has no rows."""
    kept = np.zeros(len(marked), dtype=bool)
    kept[indices] = True

    def share(group: np.ndarray) -> float:
        return float(kept[group].mean()) if group.any() else float("nan")

    return {"watermark_through": float(kept.mean()), "watermark_marked_through": share(marked),
            "watermark_unmarked_through": share(~marked)}


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
