"""Real text in, fixed-length token blocks out (the run_clm recipe).

Every dataset becomes a `Corpus` of documents per split. Tokenizing appends the
end-of-text token to each document, concatenates them, and cuts the stream
into non-overlapping blocks of `block_size` tokens, dropping the remainder.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from collapse_cli.errors import CollapseError
from collapse_cli.families.lm.builtin import BuiltinLanguage, build_language
from collapse_cli.families.lm.config import DatasetConfig

log = logging.getLogger("collapse")

HUB_DEFAULTS = {
    "wikitext2": ("wikitext", "wikitext-2-raw-v1"),
    "tinystories": ("roneneldan/TinyStories", None),
}


@dataclass
class Corpus:
    train: list[str]
    valid: list[str]
    test: list[str]
    # Only the builtin language knows its true distribution.
    language: Optional[BuiltinLanguage] = None


@dataclass
class Blocks:
    """A dataset split as a [n_blocks, block_size] int64 array."""

    train: np.ndarray
    test: np.ndarray
    valid: np.ndarray


def split_documents(text: str, separator: str) -> list[str]:
    if separator in ("line", "row"):
        parts = text.split("\n")
    elif separator.startswith("literal:"):
        parts = text.split(separator[len("literal:"):])
    else:  # blank_line
        parts = [part for part in _split_blank_lines(text)]
    return [part.strip() for part in parts if part.strip()]


def _split_blank_lines(text: str) -> list[str]:
    docs, current = [], []
    for line in text.split("\n"):
        if line.strip():
            current.append(line)
        elif current:
            docs.append("\n".join(current))
            current = []
    if current:
        docs.append("\n".join(current))
    return docs


def read_text_file(key: str, path: str, separator: str) -> list[str]:
    """Read a UTF-8 text file as documents, naming the config key on any fault."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise CollapseError(f"{key}={path}: no such file; give the path of a UTF-8 text file")
    raw = file.read_bytes()
    if b"\x00" in raw:
        raise CollapseError(f"{key}={path}: looks binary (contains NUL bytes); give a plain UTF-8 text file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CollapseError(f"{key}={path}: not valid UTF-8 at byte {err.start}; re-encode it as UTF-8") from None
    docs = split_documents(text, separator)
    if not docs:
        raise CollapseError(f"{key}={path}: the file is empty; give a text file with at least one document")
    return docs


def _load_local(cfg: DatasetConfig) -> Corpus:
    if cfg.test is None:
        raise CollapseError(f"dataset={cfg.name} with local files needs dataset.test=PATH too "
                            f"(dataset.train={cfg.train})")
    train = read_text_file("dataset.train", cfg.train, cfg.doc_separator)
    test = read_text_file("dataset.test", cfg.test, cfg.doc_separator)
    valid = read_text_file("dataset.valid", cfg.valid, cfg.doc_separator) if cfg.valid else []
    warn_shared_files(cfg)
    return Corpus(train=train, valid=valid, test=test)


def warn_shared_files(cfg: DatasetConfig) -> None:
    """A split read from the training file measures training data: allowed (a smoke run with one
    file), but said, since nothing in the metrics would show it."""
    train = Path(cfg.train).resolve()
    for key, path, what in (("dataset.test", cfg.test, "ppl_test and tail_coverage measure training text"),
                            ("dataset.valid", cfg.valid, "ppl_valid and train.select=best_valid see training text")):
        if path and Path(path).resolve() == train:
            log.warning(f"{key} is the training file ({cfg.train}): {what}; give a held-out file for real figures")


def hub_reachable(timeout_s: float = 5.0) -> bool:
    """One quick request to the hub, without retries.

    Offline, the hub client retries every file with back-off (about a minute per
    load); after this fails, callers load from the local cache only, which fails fast.
    """
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    if constants.HF_HUB_OFFLINE:
        return False
    try:
        get_session().head(constants.ENDPOINT, timeout=timeout_s)
    except Exception:  # DNS, connection, timeout, proxy: all mean "not reachable now"
        return False
    return True


@contextmanager
def _datasets_offline(offline: bool) -> Iterator[None]:
    """`datasets` reads its offline switch from its config module; set it for one load only."""
    from datasets import config

    saved = config.HF_HUB_OFFLINE
    config.HF_HUB_OFFLINE = saved or offline
    try:
        yield
    finally:
        config.HF_HUB_OFFLINE = saved


def _load_hub(cfg: DatasetConfig) -> Corpus:
    path, name = HUB_DEFAULTS[cfg.name]
    path, name = cfg.hf_path or path, cfg.hf_name or name
    try:
        from datasets import load_dataset

        with _datasets_offline(not hub_reachable()):
            splits = load_dataset(path, name)
    except Exception as err:  # datasets raises many types when offline
        raise CollapseError(
            f"dataset={cfg.name}: cannot load {path!r} from the hub ({type(err).__name__}); offline, "
            f"download it elsewhere and use dataset=text dataset.train=... dataset.test=... instead"
        ) from None
    def docs(split: str) -> list[str]:
        if split not in splits:
            return []
        if cfg.doc_separator == "row":  # one document per dataset row (TinyStories)
            return [text.strip() for text in splits[split]["text"] if text.strip()]
        # Rows are lines of one file (WikiText): rebuild it, then split it into documents.
        return split_documents("\n".join(splits[split]["text"]), cfg.doc_separator)
    test_split = "test" if "test" in splits else "validation"
    return Corpus(train=docs("train"), valid=docs("validation"), test=docs(test_split))


def load_corpus(cfg: DatasetConfig) -> Corpus:
    if cfg.name == "builtin":
        language = build_language(cfg.vocab_words, cfg.zipf_exponent, cfg.successors,
                                  cfg.successor_weight, cfg.seed)
        rng = np.random.default_rng(cfg.seed + 1)
        return Corpus(train=language.sample_docs(cfg.train_tokens, rng),
                      valid=language.sample_docs(cfg.valid_tokens, rng),
                      test=language.sample_docs(cfg.test_tokens, rng),
                      language=language)
    if cfg.name == "text" or cfg.train:
        return _load_local(cfg)
    if cfg.name in HUB_DEFAULTS:
        return _load_hub(cfg)
    raise CollapseError(f"dataset={cfg.name!r}: unknown dataset; use builtin, text, wikitext2 or tinystories")


def tokenize_stream(docs: list[str], tokenizer) -> np.ndarray:
    """One token stream: each document's ids followed by the end-of-text id."""
    if not docs:  # an absent split (dataset.valid unset); fast tokenizers fail on an empty batch
        return np.empty(0, dtype=np.int64)
    encoded = tokenizer(docs, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    total = sum(len(ids) + 1 for ids in encoded)
    stream = np.empty(total, dtype=np.int64)
    position = 0
    for ids in encoded:
        stream[position:position + len(ids)] = ids
        stream[position + len(ids)] = eos
        position += len(ids) + 1
    return stream


def group_blocks(stream: np.ndarray, block_size: int, max_blocks: Optional[int] = None) -> np.ndarray:
    n_blocks = len(stream) // block_size
    if max_blocks is not None:
        n_blocks = min(n_blocks, max_blocks)
    return stream[: n_blocks * block_size].reshape(n_blocks, block_size)


def make_blocks(corpus: Corpus, tokenizer, block_size: int, cfg: DatasetConfig) -> Blocks:
    def split_blocks(key: str, docs: list[str], max_blocks: Optional[int]) -> np.ndarray:
        blocks = group_blocks(tokenize_stream(docs, tokenizer), block_size, max_blocks)
        if len(blocks) == 0 and docs:
            raise CollapseError(
                f"dataset.{key}: the {key} split has fewer tokens than one block of train.block_size={block_size}; "
                f"give more text or lower train.block_size")
        return blocks

    train = split_blocks("train", corpus.train, cfg.max_train_blocks)
    test = split_blocks("test", corpus.test, cfg.max_test_blocks)
    valid = split_blocks("valid", corpus.valid, cfg.max_test_blocks)
    return Blocks(train=train, test=test, valid=valid)
