"""Real text to token blocks: document splitting, tokenizing, blocking; the builtin language and its tokenizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from collapse_cli.errors import CollapseError
from collapse_cli.families.lm.builtin import (
    EOS_ID,
    FIRST_WORD_ID,
    STOP_ID,
    build_language,
    make_tokenizer,
)
from collapse_cli.families.lm.config import DatasetConfig
from collapse_cli.families.lm.data import (
    Corpus,
    group_blocks,
    load_corpus,
    make_blocks,
    read_text_file,
    split_documents,
    tokenize_stream,
)


@pytest.fixture(scope="module")
def small_language():
    return build_language(vocab_words=50, zipf_exponent=1.1, successors=4, successor_weight=0.6, seed=0)


@pytest.fixture(scope="module")
def tokenizer(small_language):
    return make_tokenizer(small_language)


def test_tokenize_stream_appends_eos_to_every_document(small_language, tokenizer):
    w = small_language.vocab
    docs = [f"{w[4]} {w[5]} .", w[6], f"{w[7]} {w[4]}"]
    stream = tokenize_stream(docs, tokenizer)
    assert stream.dtype == np.int64
    assert stream.tolist() == [4, 5, STOP_ID, EOS_ID, 6, EOS_ID, 7, 4, EOS_ID]


def test_tokenize_stream_of_an_absent_split_is_empty(tokenizer):
    # dataset=text without dataset.valid: no documents, no blocks (fast tokenizers fail on an empty batch).
    assert tokenize_stream([], tokenizer).shape == (0,)
    assert group_blocks(tokenize_stream([], tokenizer), 8).shape == (0, 8)


def test_group_blocks_drops_the_remainder():
    stream = np.arange(10)
    blocks = group_blocks(stream, 4)
    assert blocks.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert group_blocks(stream, 4, max_blocks=1).tolist() == [[0, 1, 2, 3]]
    assert group_blocks(stream, 5).shape == (2, 5)
    assert group_blocks(stream, 11).shape == (0, 11)


def test_make_blocks_refuses_a_split_below_one_block(small_language, tokenizer):
    w = small_language.vocab
    corpus = Corpus(train=[" ".join(w[4:20])], valid=[], test=[" ".join(w[4:40])])
    with pytest.raises(CollapseError, match="dataset.train"):
        make_blocks(corpus, tokenizer, 32, DatasetConfig())
    blocks = make_blocks(corpus, tokenizer, 8, DatasetConfig())
    assert blocks.train.shape == (2, 8) and blocks.test.shape == (4, 8) and blocks.valid.shape == (0, 8)
    assert blocks.train[0].tolist() == list(range(4, 12))


def test_split_documents_on_blank_lines():
    text = "first line\nsecond line\n\n\nnext doc\n   \nlast\n"
    assert split_documents(text, "blank_line") == ["first line\nsecond line", "next doc", "last"]


def test_split_documents_on_lines():
    assert split_documents("a b\n\n  c  \nd\n", "line") == ["a b", "c", "d"]


def test_split_documents_on_a_literal():
    text = "one story<|endoftext|>\ntwo\n\nstories<|endoftext|>  <|endoftext|>"
    assert split_documents(text, "literal:<|endoftext|>") == ["one story", "two\n\nstories"]


def test_read_text_file_faults_name_the_key(tmp_path: Path):
    (tmp_path / "blank.txt").write_text("\n  \n\n")
    (tmp_path / "nul.txt").write_bytes(b"abc\x00def")
    (tmp_path / "latin1.txt").write_bytes("naïve\n".encode("latin-1"))
    with pytest.raises(CollapseError, match=r"dataset.train=.*blank.txt: the file is empty"):
        read_text_file("dataset.train", str(tmp_path / "blank.txt"), "blank_line")
    with pytest.raises(CollapseError, match=r"dataset.test=.*nul.txt: looks binary"):
        read_text_file("dataset.test", str(tmp_path / "nul.txt"), "blank_line")
    with pytest.raises(CollapseError, match=r"dataset.valid=.*latin1.txt: not valid UTF-8 at byte 2"):
        read_text_file("dataset.valid", str(tmp_path / "latin1.txt"), "blank_line")
    (tmp_path / "ok.txt").write_text("café\n\nthé\n")
    assert read_text_file("dataset.train", str(tmp_path / "ok.txt"), "blank_line") == ["café", "thé"]


def test_builtin_transition_rows_are_distributions(small_language):
    transition = small_language.transition
    assert transition.shape == (54, 54)
    assert (transition >= 0).all()
    assert np.allclose(transition.sum(axis=1), 1.0)
    assert transition[STOP_ID, EOS_ID] > 0 and transition[EOS_ID, EOS_ID] == 0  # documents end after a sentence


def builtin_config(**overrides) -> DatasetConfig:
    return DatasetConfig(**{"vocab_words": 3000, "train_tokens": 30000, "valid_tokens": 100, "test_tokens": 100,
                            **overrides})


@pytest.fixture(scope="module")
def builtin_corpus() -> Corpus:
    return load_corpus(builtin_config())


def test_builtin_corpus_is_fixed_by_its_seed(builtin_corpus: Corpus):
    small = builtin_config(vocab_words=300, train_tokens=3000)
    assert load_corpus(small).train == load_corpus(small).train
    assert load_corpus(builtin_config(vocab_words=300, train_tokens=3000, seed=1)).train != load_corpus(small).train
    # Sampled documents add up to the requested size, end-of-text tokens included (the last
    # document may be cut before its end-of-text token, which this count adds anyway).
    n_tokens = sum(len(doc.split()) + 1 for doc in builtin_corpus.train)
    assert n_tokens in (30000, 30001)


def test_builtin_words_follow_a_zipf_like_law(builtin_corpus: Corpus):
    words = [w for doc in builtin_corpus.train for w in doc.split() if w != "."]
    counts = np.sort(np.unique(words, return_counts=True)[1])[::-1]
    assert len(counts) > 1000
    # Rank 1 dwarfs rank 1000: a long tail of rare types, the part collapse erases first.
    assert counts[0] > 50 * counts[999]
    assert (counts <= 5).sum() > 0.3 * len(counts)


def test_builtin_tokenizer_round_trips_documents(builtin_corpus: Corpus):
    tokenizer = make_tokenizer(builtin_corpus.language)
    assert tokenizer.eos_token_id == EOS_ID and tokenizer.convert_tokens_to_ids(".") == STOP_ID
    for doc in builtin_corpus.train[:20]:
        ids = tokenizer(doc, add_special_tokens=False)["input_ids"]
        assert min(ids) >= STOP_ID and tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids) == doc
    assert min(tokenizer(builtin_corpus.train[0])["input_ids"]) >= FIRST_WORD_ID - 1


def test_a_split_read_from_the_training_file_is_said(tmp_path: Path, caplog):
    text, held_out = tmp_path / "train.txt", tmp_path / "test.txt"
    text.write_text("one document\n\nanother one\n")
    held_out.write_text("held out\n")
    with caplog.at_level("WARNING", logger="collapse"):
        load_corpus(DatasetConfig(name="text", train=str(text), valid=str(text), test=str(held_out)))
        said = [r.getMessage().split(":")[0] for r in caplog.records]
        assert said == [f"dataset.valid is the training file ({text})"]
        caplog.clear()
        load_corpus(DatasetConfig(name="text", train=str(text), test=str(tmp_path / "." / "train.txt")))
        assert "ppl_test and tail_coverage measure training text" in caplog.text
        caplog.clear()
        load_corpus(DatasetConfig(name="text", train=str(text), valid=str(held_out), test=str(held_out)))
        assert caplog.records == []
