"""LM checkpoints stand alone: plain transformers loads gen_k/model with its tokenizer and reproduces ppl_test."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, read_metrics, run_in_process

BLOCK = 32


def write_text(path: Path, n_docs: int, seed: int) -> Path:
    """Documents of Zipf-distributed words, separated by blank lines (dataset=text's default)."""
    rng = np.random.default_rng(seed)
    words = [f"w{chr(97 + i % 26)}{chr(97 + i // 26 % 26)}x{i}" for i in range(400)]
    docs = []
    for _ in range(n_docs):
        picks = np.minimum(rng.zipf(1.3, size=rng.integers(20, 60)) - 1, len(words) - 1)
        docs.append(" ".join(words[i] for i in picks) + ".")
    path.write_text("\n\n".join(docs) + "\n")
    return path


def run_clm_ppl(folder: Path, test_file: Path) -> float:
    """Perplexity of test text as run_clm measures it, with nothing of collapse: documents tokenized, each
    followed by EOS, concatenated, cut into blocks (remainder dropped), the HF loss averaged over blocks."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    docs = [doc.strip() for doc in test_file.read_text().split("\n\n") if doc.strip()]
    stream = [token for ids in tokenizer(docs, add_special_tokens=False)["input_ids"]
              for token in [*ids, tokenizer.eos_token_id]]
    blocks = torch.tensor(stream[: len(stream) // BLOCK * BLOCK]).view(-1, BLOCK)
    with torch.no_grad():
        losses = [model(input_ids=batch, labels=batch).loss * len(batch) for batch in blocks.split(8)]
    return math.exp(float(sum(losses)) / len(blocks))


@pytest.mark.slow
def test_a_text_runs_checkpoints_load_alone_and_reproduce_ppl_test(tmp_path: Path):
    from transformers import AutoTokenizer

    train_file, test_file = write_text(tmp_path / "train.txt", 300, 0), write_text(tmp_path / "test.txt", 60, 1)
    run_dir = tmp_path / "run"
    assert run_in_process([
        "run", *TINY, "dataset=text", f"dataset.train={train_file}", f"dataset.test={test_file}",
        "model.bpe_vocab_size=500", f"train.block_size={BLOCK}", "checkpoints=all", f"hydra.run.dir={run_dir}"]) == 0
    rows = read_metrics(run_dir)
    run_tokenizer = AutoTokenizer.from_pretrained(run_dir / "tokenizer")
    assert 300 < len(run_tokenizer) <= 500  # the BPE trained on train.txt, not a hub tokenizer
    for row in rows:
        folder = run_dir / f"gen_{row['generation']:03d}" / "model"
        assert AutoTokenizer.from_pretrained(folder).get_vocab() == run_tokenizer.get_vocab()
        assert run_clm_ppl(folder, test_file) == pytest.approx(row["ppl_test"], rel=1e-5)


@pytest.mark.slow
def test_the_run_folders_tokenizer_decodes_the_saved_corpus(tiny_finished: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_finished / "tokenizer")  # the builtin language's words
    ids = np.load(tiny_finished / "gen_000" / "synthetic_ids.npz")
    rows = ids[ids.files[0]]
    texts = gzip.decompress((tiny_finished / "gen_000" / "synthetic.txt.gz").read_bytes()).decode().splitlines()
    assert tokenizer.batch_decode(rows[:20].tolist()) == texts[:20]
