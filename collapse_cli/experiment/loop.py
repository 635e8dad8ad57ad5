"""The generation loop: train on the mix, sample a synthetic set, measure, repeat.

    set_up()   the family, its real data and base model, the plan
    for g in 0..G:
        compose g's training set  ->  fit  ->  sample  ->  measure  ->  curate  ->  save
    finish()   summary, figures, checkpoint retention

The loop knows rows of arrays, seeds and folders; what a row is (a token block, a point,
an image) and how a model fits, samples and is measured is its family's (families/base.py).
"""

from __future__ import annotations

import copy
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from collapse_cli import collectives, ranks
from collapse_cli.config import RunConfig, describe_mix
from collapse_cli.errors import CollapseError
from collapse_cli.experiment import compose as composition
from collapse_cli.experiment import curation, review, tracking
from collapse_cli.experiment.progress import Feedback
from collapse_cli.experiment.seeds import compose_seed, stage_seed, torch_global_rng, torch_global_seed
from collapse_cli.families.base import Family, RealData, family_name, get_family
from collapse_cli.killpoint import written
from collapse_cli.report.facts import FACTS_FILE
from collapse_cli.rundir import RunDir, gen_name, read_metrics, require_run_array

log = logging.getLogger("collapse")
# status.json's progress count is rewritten at most this often: thousands of fast generations
# would otherwise spend more on status writes than on their work. Done generations are exact
# on disk at every moment (gen_*/DONE, metrics.jsonl); status lags them by at most this.
STATUS_EVERY_S = 1.0


def pick_device(choice: str):
    """auto: CUDA when visible. (config.validate has already refused device=cuda without one.)"""
    import torch

    if choice == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", collectives.local_rank())  # under nproc=N, rank r's own GPU


@dataclass
class Setup:
    """Everything fixed for the whole run, built once before generation 0."""

    cfg: RunConfig
    device: Any
    family: Family
    real: RealData
    base_model: Any
    n_train: int  # N: rows generation 0 trains on, and rows every generation samples


def set_up(cfg: RunConfig) -> Setup:
    """What the whole run shares: the family built from the config, its real data and base model, and N."""
    device = pick_device(cfg.device)
    family = get_family(family_name(cfg.model))(cfg, device)
    base_model = family.build_base_model(cfg.seed)
    real = family.real_data(_pool_cap(cfg, family.train_cap()))
    n_pool = len(real.train)
    n_train = _train_size(cfg, family.train_cap(), n_pool)
    composition.check_pool(cfg.regime, n_pool, n_train, cfg.mix, cfg.generations, family.unit, family.size_key)
    family.prepare(real, n_train)
    return Setup(cfg, device, family, real, base_model, n_train)


def _pool_cap(cfg: RunConfig, cap: Optional[int]) -> Optional[int]:
    """Real rows to read: the family's cap on N, and fresh reads unseen rows beyond the first N."""
    if cfg.regime == "fresh" and cap is not None:
        return composition.fresh_pool_needed(cap, cfg.mix, cfg.generations)
    return cap


def _train_size(cfg: RunConfig, cap: Optional[int], n_pool: int) -> int:
    if cfg.regime == "fresh" and cap is None:
        # The largest N whose pool need (generation 0 plus every generation's unseen share) fits.
        # Shares are rounded, by at most half a row each: start at that bound and step down.
        n = max(1, int((n_pool + cfg.generations / 2) / (1 + cfg.generations * cfg.mix)))
        while n > 1 and composition.fresh_pool_needed(n, cfg.mix, cfg.generations) > n_pool:
            n -= 1
        return n
    return n_pool if cap is None else min(cap, n_pool)


def _sizes(family: Family, n_rows: int, n_real: int) -> dict:
    """Size facts of a training set, named by the family's unit: blocks, tokens, real_blocks, ..."""
    unit = family.unit
    return {unit: n_rows, **family.extent(n_rows), f"real_{unit}": n_real, f"synthetic_{unit}": n_rows - n_real}


def plan(setup: Setup) -> list[dict]:
    """The size and origin mix of every generation's training set, without training."""
    cfg, n = setup.cfg, setup.n_train
    sizes = {k: n for k in range(cfg.generations + 1)}
    rows = []
    for g in range(cfg.generations + 1):
        training_set = composition.compose(g, cfg.regime, cfg.mix, n, sizes, compose_seed(cfg.seed))
        rows.append({"generation": g, **_sizes(setup.family, len(training_set), training_set.counts().get("real", 0))})
    return rows


@dataclass
class LoopState:
    """What later generations need from earlier ones."""

    samples: dict[int, np.ndarray] = field(default_factory=dict)  # curated synthetic rows by generation
    kept: dict[int, np.ndarray] = field(default_factory=dict)  # their rows in each generation's raw samples
    reference_model: Any = None  # the frozen generation-0 model, as family.for_inference made it
    previous_model: Any = None


def run_generation(g: int, setup: Setup, state: LoopState, run_dir: RunDir, feedback: Feedback) -> dict:
    cfg, family = setup.cfg, setup.family
    started = time.perf_counter()
    sizes = {k: len(rows) for k, rows in state.samples.items()}
    training_set = composition.compose(g, cfg.regime, cfg.mix, setup.n_train, sizes, compose_seed(cfg.seed))
    train_rows = training_set.rows(setup.real.train, state.samples)
    manifest = _manifest(g, training_set, cfg, family)
    run_dir.write_json(Path(gen_name(g)) / "composition.json", manifest)
    written("composition", g)
    run_dir.save_array(Path(gen_name(g)) / "train_origin.npy", _provenance(training_set, state.kept))
    written("train_origin", g)

    start_from = state.previous_model if (cfg.train.init == "previous" and g > 0) else setup.base_model
    model = copy.deepcopy(start_from)
    with (feedback.task(f"gen {g} train", total=1) as on_step,
          torch_global_rng(torch_global_seed(cfg.seed, g, ranks.rank()), setup.device)):
        weighted = {} if cfg.train.real_weight == 1 else {"row_weights": training_set.weights(cfg.train.real_weight)}
        stats = family.fit(model, train_rows, stage_seed(cfg.seed, g, "train"), g, on_step, **weighted)
    trained = time.perf_counter()
    inference = family.for_inference(model)  # the one copy sampling and measuring run on
    with feedback.task(f"gen {g} generate", total=setup.n_train) as on_batch:
        samples = family.sample(inference, setup.n_train, stage_seed(cfg.seed, g, "generate"), on_batch)
    generated = time.perf_counter()

    reference_model = inference if g == 0 else state.reference_model
    with feedback.task(f"gen {g} evaluate", total=1) as on_eval:
        metrics, scores = family.measure(g, inference, reference_model, samples, stage_seed(cfg.seed, g, "metrics"),
                                         on_eval)
    curated = curation.curate(family, cfg.curate, samples, scores, stage_seed(cfg.seed, g, "curate"),
                              last=g == cfg.generations)
    evaluated = time.perf_counter()

    family.save_samples(run_dir.gen(g), samples, scores)
    written("samples", g)
    if curated.awaiting_review:  # no curated_index until the verdicts are in (restore applies them)
        review.write_sheet(run_dir, g, family, samples, scores, curated.indices)
    else:
        run_dir.save_array(Path(gen_name(g)) / "curated_index.npy", curated.indices.astype(np.int32))
        state.samples[g], state.kept[g] = samples[curated.indices], curated.indices
        written("curated_index", g)
    metrics.update(curated.report)
    metrics.update(stats)
    sizes = _sizes(family, len(training_set), manifest["by_origin"].get("real", 0))
    metrics.update({f"train_{key}": value for key, value in sizes.items()}, generation=g,
                   train_time_s=trained - started, generate_time_s=generated - trained,
                   eval_time_s=evaluated - generated)
    if g == 0:
        state.reference_model = reference_model
        _save_model(family, model, run_dir.path / "reference")
        for name, array in family.reference_files().items():
            run_dir.save_array(name, array)
        written("reference", g)
    state.previous_model = model
    _keep_checkpoint(g, model, run_dir, cfg, family)
    metrics["wall_time_s"] = time.perf_counter() - started
    metrics["disk_bytes"] = run_dir.disk_usage(g)
    return _ordered(metrics, family.leading_keys)


def _ordered(metrics: dict, leading_keys: tuple[str, ...]) -> dict:
    head = {k: metrics[k] for k in leading_keys if k in metrics}
    return {**head, **{k: metrics[k] for k in sorted(metrics) if k not in head}}


def _provenance(training_set: composition.TrainingSet, kept: dict[int, np.ndarray]) -> np.ndarray:
    """[n, 2] int32 (origin, row): the real-pool row, or the row of gen_<origin>'s saved samples.

    Training sets index the curated samples; provenance points back past curation
    to the raw samples each generation wrote, so every row can be looked up there.
    """
    rows = training_set.index.astype(np.int32)
    # Only the origins present: a loop over every generation so far would make long runs quadratic.
    for generation in np.unique(training_set.origin[training_set.origin != composition.REAL]):
        mine = training_set.origin == generation
        rows[mine] = kept[int(generation)][training_set.index[mine]]
    return np.stack([training_set.origin.astype(np.int32), rows], axis=1)


def _manifest(g: int, training_set: composition.TrainingSet, cfg: RunConfig, family: Family) -> dict:
    sizes = _sizes(family, len(training_set), 0)
    return {"generation": g, "regime": cfg.regime, "mix": cfg.mix, family.unit: len(training_set),
            **{key: sizes[key] for key in family.extent(0)}, "by_origin": training_set.counts(),
            "origin_file": f"train_origin.npy: per row (origin, row); origin -1: row of the real pool, "
                           f"k: row of gen_k/{family.samples_file}"}


def _save_model(family: Family, model: Any, folder: Path) -> None:
    """Save into a temporary folder, then rename: never a half-written checkpoint."""
    if not ranks.is_main():  # every rank holds the same weights; rank 0 writes them
        return
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    family.save_model(model, tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def _keep_checkpoint(g: int, model: Any, run_dir: RunDir, cfg: RunConfig, family: Family) -> None:
    if cfg.checkpoints != "none" or cfg.train.init == "previous":
        _save_model(family, model, run_dir.gen(g) / "model")
        written("model", g)


def _keeps_last_model_only(cfg: RunConfig) -> bool:
    """checkpoints=last, or none with train.init=previous (which needs the last model to go on)."""
    return cfg.checkpoints == "last" or (cfg.checkpoints == "none" and cfg.train.init == "previous")


def _drop_previous_model(g: int, run_dir: RunDir, cfg: RunConfig) -> None:
    """Once generation g is DONE, its predecessor's model is no longer needed, by the loop or a resume.
    Deleting it any earlier would leave a kill in between with neither generation's model to go on from."""
    if g > 0 and _keeps_last_model_only(cfg) and ranks.is_main():
        shutil.rmtree(run_dir.gen(g - 1) / "model", ignore_errors=True)
        written("previous_model_delete", g)


def _drop_stale_models(run_dir: RunDir, cfg: RunConfig, last_done: int) -> None:
    """On resume: models before the last done generation that a kill left undeleted (_drop_previous_model)."""
    if not _keeps_last_model_only(cfg) or not ranks.is_main():
        return
    for folder in run_dir.path.glob("gen_*/model"):
        if int(folder.parent.name[4:]) < last_done:
            shutil.rmtree(folder, ignore_errors=True)


def restore(setup: Setup, run_dir: RunDir) -> tuple[LoopState, int]:
    """Rebuild the loop state from the generations a killed run had finished."""
    done = run_dir.done_generations()
    if done != list(range(len(done))):
        raise CollapseError(f"{run_dir.path}: finished generations {done} are not contiguous; the folder was edited")
    state, family = LoopState(), setup.family
    for g in done:
        samples = family.load_samples(run_dir.gen(g))
        if review.pending(run_dir.gen(g)):  # curate.method=review: the verdicts of the sheet it stopped at
            state.kept[g] = review.apply_verdicts(run_dir, g)
        else:
            state.kept[g] = require_run_array(run_dir.gen(g) / "curated_index.npy").astype(np.int64)
        state.samples[g] = samples[state.kept[g]]
    # With every generation done (killed while finishing), no model is needed, and the
    # finishing step may already have deleted the reference checkpoint.
    if done and len(done) < setup.cfg.generations + 1:
        state.reference_model = family.for_inference(_load_model(family, run_dir.path / "reference"))
        if setup.cfg.train.init == "previous":
            state.previous_model = _load_model(family, run_dir.gen(done[-1]) / "model")
    run_dir.discard_unfinished(len(done))
    run_dir.remove_temporaries()
    if done:
        _drop_stale_models(run_dir, setup.cfg, done[-1])
    run_dir.rebuild_metrics()
    return state, len(done)


def _load_model(family: Family, folder: Path) -> Any:
    if not folder.is_dir():
        raise CollapseError(f"{folder}: the checkpoint the resume needs is missing; start the run again")
    return family.load_model(folder)


def check_disk(run_dir: RunDir, cfg: RunConfig, generation: int) -> None:
    free_mb = shutil.disk_usage(run_dir.path).free / 2**20
    if free_mb < cfg.min_free_disk_mb:
        raise CollapseError(f"{run_dir.path}: only {free_mb:.0f} MiB free before generation {generation}, below "
                            f"min_free_disk_mb={cfg.min_free_disk_mb}; free disk space, then resume the run")


def finish(setup: Setup, run_dir: RunDir) -> dict:
    """summary.json and the family's figures, once every generation is done."""
    rows = read_metrics(run_dir.path)
    summary = setup.family.summarize(run_dir, rows)
    summary.setdefault("generations", len(rows) - 1)
    summary.setdefault("wall_time_s", sum(row.get("wall_time_s", 0.0) for row in rows))
    run_dir.write_json("summary.json", summary)
    written("summary", setup.cfg.generations)
    setup.family.figures(run_dir.path, rows)
    written("figures", setup.cfg.generations)
    return summary


def record_facts(run_dir: RunDir, family: Family) -> None:
    """family.json: what the run's metrics mean (report/facts.py reads it). Written once, at the start; a
    resume keeps what the run began with, and adds it to a folder from before family.json."""
    if not (run_dir.path / FACTS_FILE).exists():
        run_dir.write_json(FACTS_FILE, family.run_facts().to_dict())


def execute(cfg: RunConfig, path: Path, feedback: Feedback) -> Optional[dict]:
    """Run (or resume) the whole loop in `path`; returns the summary, or None for a dry run."""
    setup = set_up(cfg)
    family = setup.family
    feedback.show_plan(cfg, setup.device, family.describe(), family.n_parameters(setup.base_model), plan(setup),
                       describe_mix(cfg.regime, cfg.mix), family.describe_sampling(setup.base_model),
                       family.describe_precision())
    if cfg.dry_run:
        return None
    run_dir = RunDir(path)
    record_facts(run_dir, family)
    state, first = restore(setup, run_dir) if cfg.resume else (LoopState(), 0)
    total = cfg.generations + 1
    run_dir.set_status("running", generations_done=first, generations_total=total)
    status_written = -float("inf")  # the first generation's count is written at once, later ones once a second
    with tracking.start(cfg, run_dir.path, first) as trackers:  # closes the tracker runs however this ends
        for g in range(first, total):
            check_disk(run_dir, cfg, g)
            metrics = run_generation(g, setup, state, run_dir, feedback)
            run_dir.finish_generation(g, metrics)
            _drop_previous_model(g, run_dir, cfg)
            if time.monotonic() - status_written >= STATUS_EVERY_S:
                run_dir.set_status("running", generations_done=g + 1, generations_total=total)
                written("status", g)
                status_written = time.monotonic()
            log.info(feedback.generation_line(metrics, family.table_keys))
            trackers.log_generation(metrics)
            if cfg.curate.method == "review" and g < cfg.generations:  # the sheet is written: stop for the verdicts
                line = review.stop_line(run_dir.path, g)
                run_dir.set_status(review.AWAITING_REVIEW, reason=line, generations_done=g + 1,
                                   generations_total=total)
                log.info(f"collapse: {line}")
                return None
        if not ranks.is_main():  # the other ranks' part ends with the last collective
            return None
        summary = finish(setup, run_dir)
        # The generation-0 copy only serves scoring and resumes; `checkpoints=all` keeps it as gen_000/model.
        shutil.rmtree(run_dir.path / "reference", ignore_errors=True)
        written("reference_delete", cfg.generations)
        run_dir.set_status("finished", generations_done=total, generations_total=total)
        trackers.finish(summary)
    feedback.show_summary(run_dir, summary, family.table_keys)
    return summary


def execute_rank(cfg: RunConfig, path: str) -> None:
    """One worker of `collapse run nproc=N` (distributed.launch): the loop, with rank 0 the one that
    logs, prints and writes."""
    from rich.console import Console

    if ranks.is_main():
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S",
                            handlers=[logging.StreamHandler(), logging.FileHandler(Path(path) / "collapse.log")])
    execute(cfg, Path(path), Feedback(Console(quiet=not ranks.is_main())))
