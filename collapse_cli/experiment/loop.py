"""The generation loop: train on the mix, write a synthetic corpus, measure, repeat.

    prepare()  real data, tokenizer, base model, the plan
    for g in 0..G:
        compose g's training set  ->  train  ->  generate  ->  measure  ->  curate  ->  save
    finish()   summary, early-warning verdict, checkpoint retention
"""

from __future__ import annotations

import copy
import logging
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from collapse_cli.config import RunConfig, check_lengths
from collapse_cli.errors import CollapseError
from collapse_cli.experiment import compose as composition
from collapse_cli.experiment import distributed, tracking
from collapse_cli.experiment.progress import Feedback
from collapse_cli.experiment.rundir import RunDir, gen_name
from collapse_cli.experiment.seeds import compose_seed, stage_seed
from collapse_cli.families.lm import profile
from collapse_cli.families.lm.curate import curate
from collapse_cli.families.lm.data import Blocks, Corpus, load_corpus, make_blocks
from collapse_cli.families.lm.decode import describe as describe_decoder
from collapse_cli.families.lm.evaluate import token_nll
from collapse_cli.families.lm.generate import generate, prompts_for
from collapse_cli.families.lm.models import (
    build_base_model,
    load_tokenizer,
    loop_generation_config,
    makes_own_tokenizer,
    max_positions,
    n_parameters,
)
from collapse_cli.families.lm.train import TrainStats, Validate, train
from collapse_cli.measure.metrics import perplexity

log = logging.getLogger("collapse")


def pick_device(choice: str) -> torch.device:
    """auto: CUDA when visible. (config.validate has already refused device=cuda without one.)"""
    if choice == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", distributed.local_rank())  # under nproc=N, rank r's own GPU


@dataclass
class Setup:
    """Everything fixed for the whole run, built once before generation 0."""

    cfg: RunConfig
    device: torch.device
    corpus: Corpus
    tokenizer: object
    blocks: Blocks
    base_model: torch.nn.Module
    n_train: int  # N: blocks generation 0 trains on, and blocks every corpus holds
    prompts: np.ndarray
    reference: profile.Reference


def prepare(cfg: RunConfig) -> Setup:
    device = pick_device(cfg.device)
    corpus = load_corpus(cfg.dataset)
    tokenizer = load_tokenizer(cfg.model, corpus)
    base_model = build_base_model(cfg.model, tokenizer, cfg.seed)
    check_lengths(cfg, max_positions(base_model))
    blocks = make_blocks(corpus, tokenizer, cfg.train.block_size, replace(cfg.dataset, max_train_blocks=_pool_cap(cfg)))
    n_pool = len(blocks.train)
    n_train = _train_size(cfg, n_pool)
    composition.check_pool(cfg.regime, n_pool, n_train, cfg.mix, cfg.generations)
    prompts = prompts_for(blocks.train[:n_train], cfg.generate, tokenizer.bos_token_id or tokenizer.eos_token_id)
    # The builtin language's true law is over its own word ids; another tokenizer cuts the text differently.
    truth = corpus.language if makes_own_tokenizer(cfg.model) else None
    reference = profile.Reference.build(blocks.train[:n_train], blocks.test, len(tokenizer), truth)
    return Setup(cfg, device, corpus, tokenizer, blocks, base_model, n_train, prompts, reference)


def _pool_cap(cfg: RunConfig) -> Optional[int]:
    """Real blocks to tokenize: max_train_blocks caps N, and fresh reads unseen blocks beyond the first N."""
    cap = cfg.dataset.max_train_blocks
    if cfg.regime == "fresh" and cap is not None:
        return composition.fresh_pool_needed(cap, cfg.mix, cfg.generations)
    return cap


def _train_size(cfg: RunConfig, n_pool: int) -> int:
    cap = cfg.dataset.max_train_blocks
    if cfg.regime == "fresh" and cap is None:
        # The largest N whose pool need (generation 0 plus every generation's unseen share) fits.
        # Shares are rounded, by at most half a block each: start at that bound and step down.
        n = max(1, int((n_pool + cfg.generations / 2) / (1 + cfg.generations * cfg.mix)))
        while n > 1 and composition.fresh_pool_needed(n, cfg.mix, cfg.generations) > n_pool:
            n -= 1
        return n
    return n_pool if cap is None else min(cap, n_pool)


def plan(setup: Setup) -> list[dict]:
    """The size and origin mix of every generation's training set, without training."""
    cfg, n = setup.cfg, setup.n_train
    sizes = {k: n for k in range(cfg.generations + 1)}
    rows = []
    for g in range(cfg.generations + 1):
        training_set = composition.compose(g, cfg.regime, cfg.mix, n, sizes, compose_seed(cfg.seed))
        counts = training_set.counts()
        n_real = counts.get("real", 0)
        rows.append({"generation": g, "blocks": len(training_set), "tokens": len(training_set) * cfg.train.block_size,
                     "real_blocks": n_real, "synthetic_blocks": len(training_set) - n_real})
    return rows


@dataclass
class LoopState:
    """What later generations need from earlier ones."""

    corpora: dict[int, np.ndarray] = field(default_factory=dict)  # curated synthetic blocks by generation
    kept: dict[int, np.ndarray] = field(default_factory=dict)  # their rows in each generation's raw corpus
    reference_model: Optional[torch.nn.Module] = None  # the frozen generation-0 model
    previous_model: Optional[torch.nn.Module] = None


def run_generation(g: int, setup: Setup, state: LoopState, run_dir: RunDir, feedback: Feedback) -> dict:
    cfg, device = setup.cfg, setup.device
    started = time.perf_counter()
    sizes = {k: len(c) for k, c in state.corpora.items()}
    training_set = composition.compose(g, cfg.regime, cfg.mix, setup.n_train, sizes, compose_seed(cfg.seed))
    train_blocks = training_set.blocks(setup.blocks.train, state.corpora)
    manifest = _manifest(g, training_set, cfg)
    run_dir.write_json(Path(gen_name(g)) / "composition.json", manifest)
    run_dir.save_array(Path(gen_name(g)) / "train_origin.npy", _provenance(training_set, state.kept))

    start_from = state.previous_model if (cfg.train.init == "previous" and g > 0) else setup.base_model
    model = copy.deepcopy(start_from).to(device)
    with feedback.task(f"gen {g} train", total=1) as on_step:
        stats = train(model, train_blocks, cfg.train, stage_seed(cfg.seed, g, "train"), device, g, on_step,
                      _validator(setup))
    trained = time.perf_counter()
    with feedback.task(f"gen {g} generate", total=len(setup.prompts)) as on_batch:
        synthetic = generate(model, setup.prompts, cfg.generate, stage_seed(cfg.seed, g, "generate"), device, on_batch)
    generated = time.perf_counter()

    reference_model = model if g == 0 else state.reference_model
    texts = setup.tokenizer.batch_decode(synthetic, skip_special_tokens=False)
    with feedback.task(f"gen {g} evaluate", total=1) as on_eval:
        metrics, seq_ppl, setup.reference = profile.measure(g, model, reference_model, synthetic, texts,
                                                            setup.reference, cfg, device, setup.tokenizer.batch_decode,
                                                            on_eval)
    curated = curate(synthetic, cfg.curate, seq_ppl, texts, stage_seed(cfg.seed, g, "curate"))
    evaluated = time.perf_counter()

    _save_corpus(run_dir, g, synthetic, texts, seq_ppl, curated.indices)
    metrics.update(curated.report)
    n_real = manifest["by_origin"].get("real", 0)
    metrics.update(generation=g, train_blocks=len(training_set), train_tokens=len(training_set) * cfg.train.block_size,
                   train_tokens_seen=stats.tokens, train_real_blocks=n_real,
                   train_synthetic_blocks=len(training_set) - n_real,
                   generated_tokens=int(synthetic.size), train_loss_last=stats.loss_last,
                   train_time_s=trained - started, generate_time_s=generated - trained,
                   eval_time_s=evaluated - generated, **_valid_metrics(stats))
    state.corpora[g], state.kept[g] = synthetic[curated.indices], curated.indices
    if g == 0:
        state.reference_model = model
        _save_model(model, run_dir.path / "reference")
        run_dir.save_array("reference_test_seq_ppl.npy", setup.reference.test_seq_ppl.astype(np.float32))
    state.previous_model = model
    _keep_checkpoint(g, model, run_dir, cfg)
    metrics["wall_time_s"] = time.perf_counter() - started
    metrics["disk_bytes"] = run_dir.disk_usage(g)
    return profile.ordered(metrics)


def _validator(setup: Setup) -> Optional[Validate]:
    """Mean token NLL on the real validation blocks; None when the dataset has no validation split."""
    valid = setup.blocks.valid
    if len(valid) == 0:
        return None
    batch = profile.eval_batch_size(setup.cfg, setup.device)
    return lambda model: float(token_nll(model, valid, batch, setup.device).mean(dtype=np.float64))


def _valid_metrics(stats: TrainStats) -> dict:
    if stats.valid_loss is None:
        return {}
    # valid_loss is already a per-token mean: one "token" of that NLL.
    return {"ppl_valid": perplexity(stats.valid_loss, 1), "kept_epoch": stats.kept_epoch}


def _provenance(training_set: composition.TrainingSet, kept: dict[int, np.ndarray]) -> np.ndarray:
    """[n, 2] int32 (origin, row): the real-pool row, or the row of gen_<origin>/synthetic_ids.npz.

    Training sets index the curated corpora; provenance points back past curation
    to the raw corpus each generation wrote, so every block can be looked up there.
    """
    rows = training_set.index.astype(np.int32)
    for generation, kept_rows in kept.items():
        mine = training_set.origin == generation
        rows[mine] = kept_rows[training_set.index[mine]]
    return np.stack([training_set.origin.astype(np.int32), rows], axis=1)


def _manifest(g: int, training_set: composition.TrainingSet, cfg: RunConfig) -> dict:
    counts = training_set.counts()
    return {"generation": g, "regime": cfg.regime, "mix": cfg.mix, "blocks": len(training_set),
            "tokens": len(training_set) * cfg.train.block_size, "by_origin": counts,
            "origin_file": "train_origin.npy: per block (origin, row); origin -1: row of the real pool, "
                           "k: row of gen_k/synthetic_ids.npz"}


def _save_corpus(run_dir: RunDir, g: int, synthetic: np.ndarray, texts: list[str], seq_ppl: np.ndarray,
                 kept: np.ndarray) -> None:
    folder = Path(gen_name(g))
    run_dir.save_ids(folder / "synthetic_ids.npz", synthetic)
    run_dir.save_texts_gz(folder / "synthetic.txt.gz", texts)
    run_dir.save_array(folder / "seq_ppl.npy", seq_ppl.astype(np.float32))
    run_dir.save_array(folder / "curated_index.npy", kept.astype(np.int32))


def _save_model(model: torch.nn.Module, folder: Path) -> None:
    """save_pretrained into a temporary folder, then rename: never a half-written checkpoint."""
    if not distributed.is_main():  # every rank holds the same weights; rank 0 writes them
        return
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def _keep_checkpoint(g: int, model: torch.nn.Module, run_dir: RunDir, cfg: RunConfig) -> None:
    if not distributed.is_main():
        return
    needs_previous = cfg.train.init == "previous"
    if cfg.checkpoints == "all" or cfg.checkpoints == "last" or needs_previous:
        _save_model(model, run_dir.gen(g) / "model")
    if g > 0 and (cfg.checkpoints == "last" or (cfg.checkpoints == "none" and needs_previous)):
        shutil.rmtree(run_dir.gen(g - 1) / "model", ignore_errors=True)


def restore(setup: Setup, run_dir: RunDir) -> tuple[LoopState, int]:
    """Rebuild the loop state from the generations a killed run had finished."""
    from transformers import AutoModelForCausalLM

    done = run_dir.done_generations()
    if done != list(range(len(done))):
        raise CollapseError(f"{run_dir.path}: finished generations {done} are not contiguous; the folder was edited")
    state = LoopState()
    for g in done:
        synthetic = run_dir.load_ids(Path(gen_name(g)) / "synthetic_ids.npz")
        state.kept[g] = np.load(run_dir.gen(g) / "curated_index.npy").astype(np.int64)
        state.corpora[g] = synthetic[state.kept[g]]
    # With every generation done (killed while finishing), no model is needed, and the
    # finishing step may already have deleted the reference checkpoint.
    if done and len(done) < setup.cfg.generations + 1:
        state.reference_model = _load_model(AutoModelForCausalLM, run_dir.path / "reference", setup.device)
        if setup.cfg.train.init == "previous":
            state.previous_model = _load_model(AutoModelForCausalLM, run_dir.gen(done[-1]) / "model", setup.device)
    run_dir.discard_unfinished(len(done))
    run_dir.rebuild_metrics()
    return state, len(done)


def _load_model(loader, folder: Path, device: torch.device) -> torch.nn.Module:
    if not folder.is_dir():
        raise CollapseError(f"{folder}: the checkpoint the resume needs is missing; start the run again")
    return loop_generation_config(loader.from_pretrained(folder, dtype=torch.float32).to(device).eval())


def check_disk(run_dir: RunDir, cfg: RunConfig, generation: int) -> None:
    free_mb = shutil.disk_usage(run_dir.path).free / 2**20
    if free_mb < cfg.min_free_disk_mb:
        raise CollapseError(f"{run_dir.path}: only {free_mb:.0f} MiB free before generation {generation}, below "
                            f"min_free_disk_mb={cfg.min_free_disk_mb}; free disk space, then resume the run")


def execute(cfg: RunConfig, path: Path, feedback: Feedback) -> Optional[dict]:
    """Run (or resume) the whole loop in `path`; returns the summary, or None for a dry run."""
    setup = prepare(cfg)
    feedback.show_plan(cfg, setup.device, n_parameters(setup.base_model), plan(setup),
                       composition.describe_mix(cfg.regime, cfg.mix), describe_decoder(setup.base_model, cfg.generate))
    if cfg.train.select == "best_valid" and len(setup.blocks.valid) == 0:
        log.warning("train.select=best_valid: the dataset has no validation split (set dataset.valid=PATH), "
                    "so each generation keeps its last epoch and ppl_valid is not measured")
    if cfg.dry_run:
        return None
    run_dir = RunDir(path)
    state, first = restore(setup, run_dir) if cfg.resume else (LoopState(), 0)
    total = cfg.generations + 1
    run_dir.set_status("running", generations_done=first, generations_total=total)
    with tracking.start(cfg, run_dir.path, first) as trackers:  # closes the tracker runs however this ends
        for g in range(first, total):
            check_disk(run_dir, cfg, g)
            metrics = run_generation(g, setup, state, run_dir, feedback)
            run_dir.finish_generation(g, metrics)
            run_dir.set_status("running", generations_done=g + 1, generations_total=total)
            log.info(feedback.generation_line(metrics))
            trackers.log_generation(metrics)
        if not distributed.is_main():  # the other ranks' part ends with the last collective
            return None
        summary = profile.summarize(run_dir, setup.reference, cfg)
        run_dir.write_json("summary.json", summary)
        # The generation-0 copy only serves scoring and resumes; `checkpoints=all` keeps it as gen_000/model.
        shutil.rmtree(run_dir.path / "reference", ignore_errors=True)
        run_dir.set_status("finished", generations_done=total, generations_total=total)
        trackers.finish(summary)
    feedback.show_summary(run_dir, summary)
    return summary
