"""Causal language models: tokenizers, packed blocks, training, decoding, the LM's measurement."""
