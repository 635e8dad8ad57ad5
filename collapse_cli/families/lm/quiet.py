"""transformers' own progress bars off while the LM family loads, converts or saves a model.

Our log lines say what is loaded and converted; transformers (5.x) would add tqdm bars of its own next
to them: "Loading weights" on every from_pretrained, "Writing model shards" on save_pretrained, and
"Converting and de-quantizing GGUF tensors" while reading a GGUF file.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator


@contextlib.contextmanager
def no_library_bars() -> Iterator[None]:
    """Within the block, transformers' bars are off; the process-wide state is restored after it.

    transformers' switch (disable_progress_bar) covers its own and huggingface_hub's bars; the GGUF
    reader calls tqdm directly, so its module's `tqdm` is swapped for a disabled one meanwhile.
    """
    from transformers import modeling_gguf_pytorch_utils as gguf_reader
    from transformers.utils import logging as hf_logging

    bars_were_on = hf_logging.is_progress_bar_enabled()
    reader_tqdm = getattr(gguf_reader, "tqdm", None)  # absent in another transformers: nothing to swap
    hf_logging.disable_progress_bar()
    if reader_tqdm is not None:
        gguf_reader.tqdm = functools.partial(reader_tqdm, disable=True)
    try:
        yield
    finally:
        if reader_tqdm is not None:
            gguf_reader.tqdm = reader_tqdm
        if bars_were_on:
            hf_logging.enable_progress_bar()
