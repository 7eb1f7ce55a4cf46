"""Offline data tools: corpus -> sentencepiece tokenizer -> Megatron .bin/.idx datasets.

Each tool is a small CLI module (`python -m data_tools.<tool> --help`):
    corpus           text files / the interpreter's stdlib -> jsonl documents
    train_tokenizer  jsonl -> sentencepiece model (fixed special-token layout, see data_tools.spm)
    preprocess       jsonl -> {prefix}_{key}_document.bin/.idx (megatron-core format)
    merge            several .bin/.idx prefixes -> one
    inspect_data     counts, length histogram, decode, --verify a .bin/.idx pair
    default_dataset  the embedded default corpus, end to end, idempotent

Nothing here imports torch or megatron at module import time (workers start fast); only the
.bin/.idx writer and readers import megatron-core, lazily.
"""
