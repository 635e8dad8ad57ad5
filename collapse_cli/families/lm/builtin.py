"""The `builtin` dataset: a seeded synthetic language whose true distribution is known.

The language is a first-order Markov chain over word tokens. Words have a
Zipf-like unigram law, so a real training split holds many types seen only a
few times (the tail that collapse erases). Each word prefers a handful of
successors, which gives the model dependencies to learn. Sentences end with
"." and documents with the end-of-text token, so the token stream the loop
trains on is itself a Markov chain with a transition matrix we hold exactly:
the true next-token distribution at any position is one row of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PAD, EOS, UNK, STOP = "<pad>", "</s>", "<unk>", "."
SPECIALS = (PAD, EOS, UNK, STOP)  # ids 0..3; words follow from id 4
EOS_ID, STOP_ID, FIRST_WORD_ID = 1, 3, 4
MEAN_SENTENCE_WORDS = 12
MEAN_DOC_SENTENCES = 5


@dataclass(frozen=True)
class BuiltinLanguage:
    vocab: list[str]  # token strings, index = token id
    transition: np.ndarray  # [V, V] float64, rows sum to 1: P(next | current)

    def sample_docs(self, n_tokens: int, rng: np.random.Generator) -> list[str]:
        """Documents totalling about n_tokens tokens (end-of-text tokens included)."""
        cumulative = np.cumsum(self.transition, axis=1)
        uniforms = rng.random(n_tokens)
        docs, words, state = [], [], EOS_ID
        for u in uniforms:
            # min() guards against u landing above a row's float sum of 1 - eps.
            state = min(int(np.searchsorted(cumulative[state], u, side="right")), len(self.vocab) - 1)
            if state == EOS_ID:
                docs.append(" ".join(words))
                words = []
            else:
                words.append(self.vocab[state])
        if words:
            docs.append(" ".join(words))
        return [doc for doc in docs if doc]


def _pseudo_words(n_words: int, rng: np.random.Generator) -> list[str]:
    """Distinct pronounceable words; frequent ranks get the shorter ones."""
    consonants, vowels = "bdfgklmnprstvz", "aeiou"
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < n_words:
        n_syllables = 1 + min(3, len(words) // 60 + int(rng.integers(0, 2)))
        word = "".join(rng.choice(list(consonants)) + rng.choice(list(vowels)) for _ in range(n_syllables))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def build_language(vocab_words: int, zipf_exponent: float, successors: int,
                   successor_weight: float, seed: int) -> BuiltinLanguage:
    rng = np.random.default_rng(seed)
    words = _pseudo_words(vocab_words, rng)
    vocab = list(SPECIALS) + words
    n_vocab = len(vocab)
    zipf = 1.0 / np.arange(1, vocab_words + 1) ** zipf_exponent
    zipf /= zipf.sum()

    transition = np.zeros((n_vocab, n_vocab))
    p_stop = 1.0 / MEAN_SENTENCE_WORDS
    for word_id in range(FIRST_WORD_ID, n_vocab):
        preferred = rng.choice(vocab_words, size=min(successors, vocab_words), replace=False, p=zipf)
        weights = rng.dirichlet(np.full(len(preferred), 0.5))
        row = (1.0 - successor_weight) * zipf
        np.add.at(row, preferred, successor_weight * weights)
        transition[word_id, FIRST_WORD_ID:] = (1.0 - p_stop) * row
        transition[word_id, STOP_ID] = p_stop
    # After a sentence: end the document, or start a new sentence from the unigram law.
    p_doc_end = 1.0 / MEAN_DOC_SENTENCES
    transition[STOP_ID, EOS_ID] = p_doc_end
    transition[STOP_ID, FIRST_WORD_ID:] = (1.0 - p_doc_end) * zipf
    transition[EOS_ID, FIRST_WORD_ID:] = zipf
    # PAD and UNK never occur; give them a valid row so the matrix stays stochastic.
    transition[[0, 2], FIRST_WORD_ID:] = zipf
    return BuiltinLanguage(vocab=vocab, transition=transition)


def make_tokenizer(language: BuiltinLanguage):
    """A word-level fast tokenizer whose ids are the language's token ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    word_level = models.WordLevel(vocab={tok: i for i, tok in enumerate(language.vocab)}, unk_token=UNK)
    tokenizer = Tokenizer(word_level)
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token=PAD, eos_token=EOS, bos_token=EOS, unk_token=UNK,
        model_max_length=1_000_000,
    )
