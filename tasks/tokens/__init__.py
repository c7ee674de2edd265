"""Tokenization: the byte-level BPE tokenizer and token shards."""
