"""Tokenizers and base models: built from a config (`tiny`) or loaded (hub id, folder, or `smollm2`'s GGUF)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional

import torch

from collapse_cli.errors import CollapseError
from collapse_cli.families.lm.builtin import make_tokenizer as builtin_tokenizer
from collapse_cli.families.lm.config import ModelConfig
from collapse_cli.families.lm.data import Corpus, hub_reachable
from collapse_cli.families.lm.gguf import converted_folder
from collapse_cli.families.lm.quiet import no_library_bars

HUB_FIX = "download it on a machine with network (save_pretrained) and pass model.path=/that/folder, or use model=tiny"


def _source(cfg: ModelConfig) -> str:
    return cfg.path if cfg.path else cfg.name


def is_pretrained(cfg: ModelConfig) -> bool:
    return bool(cfg.path) or cfg.name != "tiny"


def makes_own_tokenizer(cfg: ModelConfig) -> bool:
    """`tiny` without model.tokenizer makes its own: the builtin language's words, or BPE trained on the text.
    Only then are token ids the builtin language's word ids, which its true law is written in."""
    return not is_pretrained(cfg) and not cfg.tokenizer


def _local(cfg: ModelConfig) -> ModelConfig:
    """`smollm2` is its converted GGUF folder (converted on first use); a given model.path wins."""
    if cfg.name == "smollm2" and not cfg.path:
        return replace(cfg, path=str(converted_folder(cfg.gguf_file, cfg.cache_dir)))
    return cfg


def _from_pretrained(loader, cfg: ModelConfig, what: str, key: str = "model.path", **kwargs):
    """`key` names the setting that gave cfg.path (model.tokenizer for a separate tokenizer folder)."""
    # validate_lm (families/lm/config.py) has already refused a model.path / model.tokenizer folder that does not exist.
    source = _source(cfg)
    if not cfg.path:
        # Offline, a hub download retries with back-off for minutes; the cache alone answers at once.
        kwargs["local_files_only"] = not hub_reachable()
    try:
        with no_library_bars():  # the run's own lines say what is loaded
            return loader(str(Path(source).expanduser()) if cfg.path else source, **kwargs)
    except (OSError, ValueError) as err:
        if cfg.path:
            reason = str(err).splitlines()[0][:160] if str(err).strip() else type(err).__name__
            raise CollapseError(f"{key}={cfg.path}: cannot load a {what} from it ({reason})") from None
        raise CollapseError(f"model.name={cfg.name}: cannot fetch the {what} from the hub (offline?); "
                            f"{HUB_FIX}") from None


def _train_bpe(docs: list[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on the real training split, for `tiny` on real text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(docs, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>",
                                   bos_token="</s>", model_max_length=1_000_000)


def ensure_eos(tokenizer) -> None:
    """Bare GPT-2/OPT vocab folders (vocab.json + merges.txt) carry no special-token config."""
    if tokenizer.eos_token_id is None and "<|endoftext|>" in tokenizer.get_vocab():
        tokenizer.eos_token = "<|endoftext|>"


def load_tokenizer(cfg: ModelConfig, corpus: Corpus):
    from transformers import AutoTokenizer

    cfg = _local(cfg)
    if not makes_own_tokenizer(cfg):
        tokenizer_cfg = ModelConfig(name=cfg.name, path=cfg.tokenizer or cfg.path)
        key = "model.tokenizer" if cfg.tokenizer else "model.path"
        tokenizer = _from_pretrained(AutoTokenizer.from_pretrained, tokenizer_cfg, "tokenizer", key)
    elif corpus.language is not None:
        tokenizer = builtin_tokenizer(corpus.language)
    else:
        tokenizer = _train_bpe(corpus.train, cfg.bpe_vocab_size)
    ensure_eos(tokenizer)
    if tokenizer.eos_token_id is None:
        raise CollapseError(f"model: the tokenizer of {_source(cfg)} has no end-of-text token; "
                            f"give one with an eos_token")
    if tokenizer.pad_token_id is None:
        # Prompts have equal lengths, so padding never reaches the model; generate() still wants an id.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def build_base_model(cfg: ModelConfig, tokenizer, seed: int) -> torch.nn.Module:
    """The generation-0 starting point, on the CPU in float32."""
    from transformers import AutoModelForCausalLM, OPTConfig, OPTForCausalLM

    cfg = _local(cfg)
    if is_pretrained(cfg):
        model = _from_pretrained(AutoModelForCausalLM.from_pretrained, cfg, "model", dtype=torch.float32)
    else:
        config = OPTConfig(
            vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads, ffn_dim=cfg.ffn_dim, max_position_embeddings=cfg.max_positions,
            word_embed_proj_dim=cfg.hidden_size, dropout=cfg.dropout, attention_dropout=cfg.dropout,
            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id or tokenizer.eos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        # A private RNG stream: building the model must not depend on, or disturb, any other seed.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = OPTForCausalLM(config)
    return loop_generation_config(model, tokenizer.pad_token_id)


def loop_generation_config(model: torch.nn.Module, pad_token_id: Optional[int] = None) -> torch.nn.Module:
    """Built, loaded or reloaded: the loop decides sequence lengths itself, so EOS is an ordinary
    token of the stream and never stops decoding. A pad id, when given, is the tokenizer's."""
    model.generation_config.eos_token_id = None
    if pad_token_id is not None:
        model.generation_config.pad_token_id = pad_token_id
    return model


def max_positions(model: torch.nn.Module) -> int:
    config = model.config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        if getattr(config, key, None):
            return int(getattr(config, key))
    return 1_000_000


def n_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
