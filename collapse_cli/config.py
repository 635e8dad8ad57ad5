"""The typed run configuration: the loop's keys and the groups every family shares (train, curate, logger).

Hydra composes YAML onto RunConfig (collapse_cli/compose.py registers it as `schema`, listed first in
`conf/config.yaml`'s defaults), so every composed config is type-checked by OmegaConf (unknown keys, wrong
types) before the range checks here and in the family run. `model`, `dataset` and the family's further groups
(the LM's `generate` and `metrics`) are typed by the family's own schemas (Family.schemas); this module
knows no family.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from collapse_cli.checks import (  # noqa: F401  (re-exported: the names callers knew from here)
    MAX_COUNT,
    MAX_FLOAT,
    StrEnum,
    check,
    check_count,
    check_finite,
    check_memory,
    check_seed,
    fail_range,
    is_int,
    is_number,
    keys_text,
)
from collapse_cli.errors import CollapseError

# Choices are StrEnums: OmegaConf refuses any other value while composing, and a member
# compares equal to its string ("fresh" == Regime.fresh), so code and JSON see plain words.

class Regime(StrEnum):
    replace = "replace"
    accumulate = "accumulate"
    accumulate_subsample = "accumulate_subsample"
    fresh = "fresh"


def describe_mix(regime: str, mix: float) -> str:
    """What a later generation trains on, in words: the plan printed by `collapse run`, and `collapse show`
    (here beside the choices, not in experiment/compose.py, since report/ does not import experiment/).
    Empty for a regime Regime does not list (an edited config.yaml)."""
    real_pct, synth_pct = round(100 * mix), round(100 * (1 - mix))
    if regime in ("replace", "fresh"):
        fresh = " (fresh, never-seen real blocks each generation)" if regime == "fresh" else ""
        return f"each generation trains on {real_pct}% real{fresh} / {synth_pct}% synthetic data"
    if regime == "accumulate":
        return f"each generation trains on {real_pct}% of the real data plus every synthetic corpus so far (growing)"
    if regime == "accumulate_subsample":
        return (f"each generation trains on N blocks drawn from {real_pct}% of the real data plus every "
                f"synthetic corpus so far (fixed size)")
    return ""


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Checkpoints(StrEnum):
    none = "none"
    last = "last"
    all = "all"


class Init(StrEnum):
    base = "base"
    previous = "previous"


class Schedule(StrEnum):
    linear = "linear"
    cosine = "cosine"


class Select(StrEnum):
    last = "last"
    best_valid = "best_valid"


class Shortfall(StrEnum):
    error = "error"
    resample = "resample"


class CurateMethod(StrEnum):
    """The family-agnostic curation step after the family's own filters (experiment/curation.py)."""

    none = "none"
    verifier = "verifier"  # keep the best-scored curate.keep of the samples (Feng et al. 2024)
    tail = "tail"  # resample with weights that favour rare samples (inverse density, capped)
    review = "review"  # a person or a script decides: the run stops with a sheet to fill (experiment/review.py)


class CurateScore(StrEnum):
    """What the verifier and tail curation score a sample by."""

    auto = "auto"  # truth where the family knows it (Family.truth_scores), else model
    truth = "truth"  # the true distribution's log-likelihood (or the digits classifier's log-confidence)
    model = "model"  # the per-sample scores the family's measure computes, as log-likelihoods


# A ceiling that catches a typo (generations=100000000) before the plan alone fills the memory;
# small families run thousands of generations (the GMM paper setting: 2,000).
MAX_GENERATIONS = 100_000

@dataclass
class TrainConfig:
    epochs: int = 3
    lr: float = MISSING
    batch_size: int = 32
    block_size: int = 64
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    # base: every generation starts again from the base model; previous: continue.
    init: Init = Init.base
    # torch.compile the training forward/backward. null: on for CUDA (it pays from a few hundred
    # steps on), off on the CPU (compiling costs more than the default run's training).
    compile: Optional[bool] = None
    # linear | cosine: the decay after warm-up, from train.lr down to train.min_lr.
    schedule: Schedule = Schedule.linear
    min_lr: float = 0.0
    # last: keep the last epoch's model; best_valid: the epoch with the lowest validation loss
    # (the validation split is scored after every epoch; without one the last epoch is kept).
    select: Select = Select.last
    # The loss weight of a real row against a synthetic row's 1 (a weighted mean: the loss keeps its scale).
    # Families that cannot weight rows (Family.weighs_rows False) refuse any other value than 1.
    real_weight: float = 1.0


class WatermarkMode(StrEnum):
    none = "none"  # no watermark curation (the default)
    filter = "filter"  # drop detected sequences
    weight = "weight"  # keep them with `weight` (undetected ones 1) and redraw the corpus's size by weight


@dataclass
class WatermarkCurate:
    """`curate.watermark` (conf/curate/watermark.yaml): what curation does with sequences that carry
    generate.watermark's mark (families/lm/watermark.py detects them)."""

    mode: WatermarkMode = WatermarkMode.none
    weight: float = 0.1  # weight mode: a detected sequence's weight against 1 for the others


@dataclass
class CurateConfig:
    """The `curate` group: filters between a generation's samples and later training sets (families/lm/curate.py).

    Defaults switch every filter off.
    """

    exact_dedup: bool = False
    near_dedup_n: int = 0  # n-gram length for near dedup; 0 = off
    near_dedup_threshold: float = 0.8  # drop if >= this share of n-grams seen
    repetition_n: int = 0  # n-gram length for the repetition filter; 0 = off
    repetition_max: float = 0.5  # drop if repeated n-gram share > this
    ppl_drop_low: float = 0.0  # fraction of lowest-perplexity rows to drop
    ppl_drop_high: float = 0.0  # fraction of highest-perplexity rows to drop
    # None, or {_target_: <callable class>, mode: filter|weight,
    #           threshold: float, **constructor kwargs}
    detector: Optional[Any] = None
    # What to do with sequences that carry generate.watermark's mark (families/lm/watermark.py): none|filter|weight.
    watermark: WatermarkCurate = field(default_factory=WatermarkCurate)
    min_keep_fraction: float = 0.5
    on_shortfall: Shortfall = Shortfall.error
    # The family-agnostic step after the filters above (experiment/curation.py, README "Mitigations").
    method: CurateMethod = CurateMethod.none
    score: CurateScore = CurateScore.auto
    keep: float = 0.5  # verifier: the fraction of the samples kept, in (0, 1]
    # verifier: Gaussian noise added to each score, in units of the scores' standard deviation
    # (0: a perfect verifier; the noisy and true scores then correlate 1 / sqrt(1 + noise^2)).
    noise: float = 0.0
    temperature: float = 1.0  # tail: weights are density^(-1/temperature); large: uniform
    cap: float = 10.0  # tail: no weight above this multiple of the mean weight (>= 1)

    def active(self) -> bool:
        """Whether any text filter is on (a run that filters text needs a family that can)."""
        return (self.exact_dedup or self.near_dedup_n > 0 or self.repetition_n > 0 or self.ppl_drop_low > 0
                or self.ppl_drop_high > 0 or self.detector is not None or self.watermark.mode != "none")


DETECTOR_MODES = ("filter", "weight")


# --- experiment trackers (`logger=`; experiment/tracking.py uses them) ---

@dataclass
class TensorBoardConfig:
    """No keys: event files always go to <run>/tensorboard, next to the metrics they copy."""


@dataclass
class MlflowConfig:
    # null: a local file store, mlruns/ beside the run folder (a sweep's runs share <sweep>/mlruns).
    tracking_uri: Optional[str] = None
    experiment: str = "collapse"
    # Bound on each HTTP request to a tracking server (MLFLOW_HTTP_REQUEST_TIMEOUT); retries are off,
    # so an unreachable server costs the run at most this once.
    timeout_s: int = 10


class WandbMode(StrEnum):
    offline = "offline"  # files under <run>/wandb; `wandb sync <run>/wandb/offline-run-*` uploads them
    online = "online"


@dataclass
class WandbConfig:
    project: str = "collapse"
    entity: Optional[str] = None
    mode: WandbMode = WandbMode.offline


@dataclass
class LoggerConfig:
    """Chosen trackers are the non-null sections; conf/logger/*.yaml fills them (`logger=[tensorboard,mlflow]`)."""

    tensorboard: Optional[TensorBoardConfig] = None
    mlflow: Optional[MlflowConfig] = None
    wandb: Optional[WandbConfig] = None
    # Also log the plots `collapse compare` makes for this run, as images/artifacts.
    plots: bool = False


def validate_logger(cfg: LoggerConfig) -> None:
    if cfg.mlflow is not None:
        if cfg.mlflow.tracking_uri is not None and not cfg.mlflow.tracking_uri.strip():
            raise CollapseError("logger.mlflow.tracking_uri is empty: give a URI (http://host:5000, file:/path) "
                                "or null for the local store beside the run folder")
        if not cfg.mlflow.experiment.strip():
            raise CollapseError("logger.mlflow.experiment is empty: name the MLflow experiment, e.g. collapse")
        if cfg.mlflow.timeout_s < 1:
            raise CollapseError(f"logger.mlflow.timeout_s={cfg.mlflow.timeout_s} must be at least 1 (seconds)")
    if cfg.wandb is not None and not cfg.wandb.project.strip():
        raise CollapseError("logger.wandb.project is empty: name the W&B project, e.g. collapse")


@dataclass
class RunConfig:
    # The family's groups, typed by its schemas (Family.schemas; model.family picks the family) in
    # compose.to_run_config. A group the family does not declare (the LM's generate for the GMM) is None.
    model: Any = None
    dataset: Any = None
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: Any = None
    metrics: Any = None
    curate: CurateConfig = field(default_factory=CurateConfig)
    # Experiment trackers (conf/logger): each non-null section is one on.
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    mix: float = 0.0
    generations: int = 5
    seed: int = 0
    regime: Regime = Regime.replace
    device: Device = Device.auto
    # Processes of one run (README "Scaling out"): one per GPU, or gloo processes on the CPU.
    nproc: int = 1
    # Machines of one run, each running `collapse run` with the same keys (README "Scaling out"): nproc
    # processes per machine; they meet at rdzv_endpoint, host:port of the first machine (torchrun's c10d).
    nnodes: int = 1
    rdzv_endpoint: str = ""
    # none | last | all: which generations keep their model weights on disk.
    checkpoints: Checkpoints = Checkpoints.none
    dry_run: bool = False
    resume: bool = False
    # A folder (hydra.run.dir) that holds another run is refused; overwrite=true moves that run aside to
    # <folder>.replaced-<date>-<time> first (cli.py check_job_folders). Not part of the run: a requeue is the same run.
    overwrite: bool = False
    # Minimum free disk, in MiB, checked before each generation.
    min_free_disk_mb: int = 200
    # Math threads (torch, BLAS): auto = the cores this process may use, shared among a local sweep's jobs.
    threads: str = "auto"

    def generations_held(self) -> int:
        """How many generations' training rows the run holds at once: every one under accumulate, else one.
        The families' memory checks multiply their rows per generation by it."""
        return self.generations + 1 if self.regime == "accumulate" else 1


# --- curate: values the type system cannot range-check (the filters live in families/lm/curate.py) ---


def _validate_ngram_filters(cfg: CurateConfig) -> None:
    if not isinstance(cfg.exact_dedup, bool):
        fail_range("curate.exact_dedup", cfg.exact_dedup, "true or false", "set curate.exact_dedup=true")
    for key in ("near_dedup_n", "repetition_n"):
        value = getattr(cfg, key)
        if not is_int(value) or value < 0:
            fail_range(f"curate.{key}", value, "an integer >= 0 (0 = off)", f"set e.g. curate.{key}=8")
    # threshold 0 would call every row after the first a duplicate.
    t = cfg.near_dedup_threshold
    if not is_number(t) or not 0.0 < t <= 1.0:
        fail_range("curate.near_dedup_threshold", t, "in (0, 1]", "set e.g. curate.near_dedup_threshold=0.8")
    m = cfg.repetition_max
    if not is_number(m) or not 0.0 <= m <= 1.0:
        fail_range("curate.repetition_max", m, "in [0, 1]", "set e.g. curate.repetition_max=0.5")


def _validate_ppl_and_shortfall(cfg: CurateConfig) -> None:
    for key in ("ppl_drop_low", "ppl_drop_high"):
        value = getattr(cfg, key)
        if not is_number(value) or not 0.0 <= value < 1.0:
            fail_range(f"curate.{key}", value, "in [0, 1) (a fraction of sequences)", f"set e.g. curate.{key}=0.05")
    if cfg.ppl_drop_low + cfg.ppl_drop_high >= 1.0:
        raise CollapseError(
            f"curate.ppl_drop_low + curate.ppl_drop_high = "
            f"{cfg.ppl_drop_low + cfg.ppl_drop_high:g} must be < 1 (nothing would survive); "
            "lower one of them"
        )
    f = cfg.min_keep_fraction
    if not is_number(f) or not 0.0 <= f <= 1.0:
        fail_range("curate.min_keep_fraction", f, "in [0, 1]", "set e.g. curate.min_keep_fraction=0.5")
    if cfg.on_shortfall not in tuple(Shortfall):
        fail_range("curate.on_shortfall", cfg.on_shortfall, "one of error|resample", "set curate.on_shortfall=error")


def validate_detector(detector: Any) -> None:
    if detector is None:
        return
    if not isinstance(detector, Mapping) or not isinstance(detector.get("_target_"), str):
        raise CollapseError(
            f"curate.detector={detector!r} must be null or a block with a `_target_` "
            "naming a scorer class; see conf/curate/detector.yaml"
        )
    mode = detector.get("mode", "filter")
    if mode not in DETECTOR_MODES:
        fail_range("curate.detector.mode", mode, "one of filter|weight", "set curate.detector.mode=weight")
    t = detector.get("threshold", 0.5)
    if not is_number(t) or not 0.0 <= t <= 1.0:
        fail_range(
            "curate.detector.threshold", t, "in [0, 1] (scores are in [0, 1])",
            "set e.g. curate.detector.threshold=0.5",
        )


def _validate_method(cfg: CurateConfig) -> None:
    if not is_number(cfg.keep) or not 0.0 < cfg.keep <= 1.0:
        fail_range("curate.keep", cfg.keep, "in (0, 1] (the fraction of samples the verifier keeps)",
                   "set e.g. curate.keep=0.5")
    if not is_number(cfg.noise) or not cfg.noise >= 0.0:
        fail_range("curate.noise", cfg.noise, ">= 0 (0: a perfect verifier)", "set e.g. curate.noise=1")
    if not is_number(cfg.temperature) or not cfg.temperature > 0.0:
        fail_range("curate.temperature", cfg.temperature, "positive", "set e.g. curate.temperature=1")
    if not is_number(cfg.cap) or not cfg.cap >= 1.0:
        fail_range("curate.cap", cfg.cap, ">= 1 (a multiple of the mean weight)", "set e.g. curate.cap=10")


def validate_curate(cfg: CurateConfig) -> None:
    """Raise CollapseError (one line, naming the key and the fix) on a bad value."""
    _validate_ngram_filters(cfg)
    _validate_ppl_and_shortfall(cfg)
    validate_detector(plain(cfg.detector))
    _validate_method(cfg)


def plain(value: Any) -> Any:
    """DictConfig -> plain dict/list; anything else unchanged."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _train_checks(t: TrainConfig) -> list[tuple[str, bool, str]]:
    """(key, holds, message) of every range check of the train group: the family's `reads` picks which count."""
    return [
        ("epochs", t.epochs >= 1, f"train.epochs={t.epochs} must be at least 1"),
        ("lr", t.lr > 0, f"train.lr={t.lr} must be positive"),
        ("batch_size", t.batch_size >= 1, f"train.batch_size={t.batch_size} must be at least 1"),
        ("block_size", t.block_size >= 2, f"train.block_size={t.block_size} must be at least 2"),
        ("warmup_ratio", 0.0 <= t.warmup_ratio < 1.0, f"train.warmup_ratio={t.warmup_ratio} must be in [0, 1)"),
        ("weight_decay", t.weight_decay >= 0, f"train.weight_decay={t.weight_decay} must be >= 0"),
        ("grad_clip", t.grad_clip >= 0, f"train.grad_clip={t.grad_clip} must be >= 0 (0 disables clipping)"),
        ("min_lr", 0.0 <= t.min_lr <= t.lr, f"train.min_lr={t.min_lr} must be in [0, train.lr={t.lr}]"),
    ]


def validate_train(t: TrainConfig, reads: Collection[str]) -> None:
    """The train keys a family reads (Family.reads: "train.lr", ...); a key it ignores may hold anything."""
    for key, holds, message in _train_checks(t):
        check(holds or f"train.{key}" not in reads, message)
    # The loop weighs real rows for every family that weighs rows (compose.validate refuses the others).
    check(t.real_weight > 0, f"train.real_weight={t.real_weight} must be positive (1: real and synthetic rows "
                             f"weigh the same)")
    if "train.epochs" in reads:
        check_count("train.epochs", t.epochs)


def _cuda_visible() -> bool:
    import torch

    return torch.cuda.is_available()


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_nproc(nproc: int, device: str, n_gpus: int) -> None:
    """nproc=N runs N processes: on CUDA (device=cuda, or auto with a GPU) one per visible GPU."""
    check(nproc >= 1, f"nproc={nproc} must be at least 1 (1: one process; N: one run across N processes)")
    on_cuda = device == "cuda" or (device == "auto" and n_gpus > 0)
    check(nproc == 1 or not on_cuda or nproc <= n_gpus,
          f"nproc={nproc} needs {nproc} GPUs but {n_gpus} CUDA device(s) are visible; "
          f"lower nproc, or set device=cpu for {nproc} CPU processes")
    # A typo guard, not a policy: more gloo processes than cores is slow but legal (a test of nproc=4 on a
    # 2-core laptop); thousands of them would only exhaust the machine.
    cores = os.cpu_count() or 1
    check(on_cuda or nproc <= 4 * cores, f"nproc={nproc} CPU processes, but this machine has {cores} cores; "
                                          f"lower nproc to {cores} or fewer (at most {4 * cores})")


def check_nodes(nnodes: int, rdzv_endpoint: str) -> None:
    """nnodes=M needs the address where the M machines meet; one machine meets on a loopback port of its own."""
    check(nnodes >= 1, f"nnodes={nnodes} must be at least 1 (machines of one run)")
    host, _, port = rdzv_endpoint.rpartition(":")
    check(nnodes == 1 or (host and port.isdigit() and 0 < int(port) < 65536),
          f"nnodes={nnodes} needs rdzv_endpoint=HOST:PORT, the first machine's address and a free port "
          f"(e.g. rdzv_endpoint=node001:29400); got '{rdzv_endpoint}'")
    check(nnodes > 1 or not rdzv_endpoint,
          f"rdzv_endpoint={rdzv_endpoint} is only for nnodes > 1; drop it, or set nnodes to the number of machines")


def _validate_run(cfg: RunConfig) -> None:
    check(0.0 <= cfg.mix <= 1.0, f"mix={cfg.mix} must be in [0, 1] (the real fraction of each later generation)")
    check(cfg.generations >= 1,
          f"generations={cfg.generations} must be at least 1 (recursive generations after generation 0)")
    check(cfg.generations <= MAX_GENERATIONS, f"generations={cfg.generations} is above {MAX_GENERATIONS}; run fewer")
    check_seed("seed", cfg.seed)
    check(not (cfg.regime == "fresh" and cfg.mix == 0.0),
          "regime=fresh draws each generation's real share from unseen data, so it needs mix > 0: set mix=0.1, say")
    check(not (cfg.regime.startswith("accumulate") and cfg.mix == 0.0),
          f"regime={cfg.regime} keeps real data in its pool, which mix=0 empties: set mix=1 "
          f"(all real data kept, as Gerstgrasser et al.) or a fraction such as mix=0.5")
    check_nproc(cfg.nproc, cfg.device, _cuda_count())
    check_nodes(cfg.nnodes, cfg.rdzv_endpoint)
    check(cfg.device != "cuda" or _cuda_visible(),
          "device=cuda but no CUDA device is visible; use device=auto or device=cpu")
    check(cfg.min_free_disk_mb >= 0, f"min_free_disk_mb={cfg.min_free_disk_mb} must be >= 0")
    check(cfg.threads == "auto" or (cfg.threads.isdigit() and int(cfg.threads) >= 1),
          f"threads={cfg.threads}: use auto (the cores this process may use) or a whole number of threads, e.g. 4")


def validate_shared(cfg: RunConfig, reads: Collection[str]) -> None:
    """Range checks of the loop's keys and the shared groups that the type system cannot express (compose.validate
    adds the family's); `reads` names the train keys the family reads. Raises CollapseError."""
    check_finite(cfg)
    _validate_run(cfg)
    validate_train(cfg.train, reads)
    validate_curate(cfg.curate)
    validate_logger(cfg.logger)
