"""Look inside a Megatron `.bin`/`.idx` pair: counts, dtype, length histogram, decoded samples,
and `--verify` that the two files agree.

    python -m data_tools.inspect_data PREFIX [--verify] [--decode N --tokenizer-model tok.model|hf_tok_dir/]

Named inspect_data, not inspect: a module called `inspect` inside the package would shadow the
standard library's `inspect` whenever data_tools/ is first on sys.path (running a file in it as
a script), and dataclasses, argparse helpers and numpy import the stdlib one.

`verify_pair` reads the index with numpy alone (no torch), checks every invariant megatron-core
relies on, and raises a one-line DataToolsError naming the file and the fix, instead of the
assertion / numpy errors megatron-core's `IndexedDataset` gives on a truncated or mismatched pair.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from data_tools.errors import DataToolsError, run_cli
from data_tools.hf_tokenizer import TOKENIZER_TYPES

INDEX_MAGIC = b"MMIDIDX\x00\x00"  # megatron-core's _INDEX_HEADER
HEADER_BYTES = 9 + 8 + 1 + 8 + 8  # magic, version, dtype code, sequence count, document count
# megatron-core's DType codes
DTYPE_CODES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64,
               7: np.float32, 8: np.uint16}
REBUILD = "rebuild it with `python -m data_tools.preprocess`"


@dataclass
class PairInfo:
    prefix: str
    dtype: np.dtype
    sequence_lengths: np.ndarray  # int32 [sequences]
    document_indices: np.ndarray  # int64 [documents + 1], sequence index where each document ends
    bin_bytes: int

    @property
    def sequences(self) -> int:
        return len(self.sequence_lengths)

    @property
    def documents(self) -> int:
        return len(self.document_indices) - 1

    @property
    def tokens(self) -> int:
        return int(self.sequence_lengths.sum(dtype=np.int64))


def strip_prefix(path: str) -> str:
    """Accept `prefix`, `prefix.bin` or `prefix.idx`."""
    return path[:-4] if path.endswith((".bin", ".idx")) else path


def read_header(idx_path: str) -> tuple[np.dtype, int, int]:
    """(token dtype, sequence count, document-index length) from a Megatron .idx header."""
    with open(idx_path, "rb") as f:
        head = f.read(HEADER_BYTES)
    if len(head) < HEADER_BYTES or head[:9] != INDEX_MAGIC:
        raise DataToolsError(f"{idx_path}: not a Megatron index (bad or truncated header); {REBUILD}")
    version, code, n_seq, n_doc = struct.unpack("<QBQQ", head[9:])
    if version != 1:
        raise DataToolsError(f"{idx_path}: index version {version}, expected 1; {REBUILD}")
    if code not in DTYPE_CODES:
        raise DataToolsError(f"{idx_path}: unknown dtype code {code}; {REBUILD}")
    return np.dtype(DTYPE_CODES[code]), n_seq, n_doc


def verify_pair(prefix: str) -> PairInfo:
    """Check `{prefix}.idx` against `{prefix}.bin`; return what the index says, or raise one line."""
    prefix = strip_prefix(os.fspath(prefix))
    idx_path, bin_path = prefix + ".idx", prefix + ".bin"
    for p in (idx_path, bin_path):
        if not os.path.isfile(p):
            raise DataToolsError(f"{p}: not found (need both {prefix}.bin and {prefix}.idx)")
    idx_size = os.path.getsize(idx_path)
    dtype, n_seq, n_doc = read_header(idx_path)
    expected_idx = HEADER_BYTES + n_seq * (4 + 8) + n_doc * 8
    if idx_size != expected_idx:
        raise DataToolsError(f"{idx_path}: {idx_size} bytes but its header ({n_seq} sequences, {n_doc - 1} "
                             f"documents) needs {expected_idx}: truncated or corrupt; {REBUILD}")
    raw = np.fromfile(idx_path, dtype=np.uint8, offset=HEADER_BYTES)
    lengths = raw[: n_seq * 4].view(np.int32)
    pointers = raw[n_seq * 4 : n_seq * 12].view(np.int64)
    docs = raw[n_seq * 12 :].view(np.int64)
    if n_seq and lengths.min() < 0:
        raise DataToolsError(f"{idx_path}: negative sequence length; {REBUILD}")
    ends = np.cumsum(lengths, dtype=np.int64) * dtype.itemsize
    starts = np.concatenate(([0], ends[:-1])) if n_seq else ends
    if not np.array_equal(pointers, starts):
        raise DataToolsError(f"{idx_path}: sequence pointers disagree with sequence lengths; {REBUILD}")
    if n_doc < 1 or docs[0] != 0 or np.any(np.diff(docs) < 0) or docs[-1] != n_seq:
        raise DataToolsError(f"{idx_path}: document index is not monotone from 0 to the sequence count "
                             f"({n_seq}); {REBUILD}")
    bin_size = os.path.getsize(bin_path)
    expected_bin = int(ends[-1]) if n_seq else 0
    if bin_size != expected_bin:
        raise DataToolsError(f"{bin_path}: {bin_size} bytes but {idx_path} describes {expected_bin} "
                             f"({dtype.name}): truncated or not the matching .bin; {REBUILD}")
    return PairInfo(prefix, dtype, lengths, docs, bin_size)


def max_token_id(prefix: str, sample_tokens: int | None = None) -> int:
    """Largest token id in `prefix`.bin (a pair already verified): all of it, or about
    `sample_tokens` read from 16 evenly spaced windows (a tokenizer mismatch shows up everywhere,
    so a sample finds it in milliseconds where a full scan of a large corpus takes minutes).
    -1 if empty."""
    dtype, _, _ = read_header(prefix + ".idx")
    empty = os.path.getsize(prefix + ".bin") == 0
    data = np.empty(0) if empty else np.memmap(prefix + ".bin", dtype=dtype, mode="r")
    n = len(data)
    if n == 0:
        return -1
    if sample_tokens is None or n <= sample_tokens:
        chunk = 1 << 24
        return int(max(data[i : i + chunk].max() for i in range(0, n, chunk)))
    width = max(1, sample_tokens // 16)
    starts = np.linspace(0, n - width, 16).astype(np.int64)
    return int(max(data[s : s + width].max() for s in starts))


def check_token_ids(prefix: str, vocab_size: int, tokenizer_model: str, sample_tokens: int | None = None) -> None:
    """Every token id must be below the tokenizer's vocabulary size: a .bin built with another
    (larger) tokenizer would otherwise fail deep inside the embedding, or train on wrong text."""
    prefix = strip_prefix(os.fspath(prefix))
    top = max_token_id(prefix, sample_tokens)
    if top >= vocab_size:
        raise DataToolsError(
            f"{prefix}.bin holds token id {top} but {tokenizer_model} has only {vocab_size} pieces: the data "
            f"was built with another tokenizer; give that tokenizer, or rebuild the data with "
            f"`python -m data_tools.preprocess --tokenizer-model {tokenizer_model}`"
        )


def open_indexed_dataset(prefix: str):
    """megatron-core `IndexedDataset` for `prefix`, verified first so problems are one line."""
    info = verify_pair(prefix)
    from data_tools.indexed_writer import import_indexed_dataset

    try:
        return import_indexed_dataset().IndexedDataset(info.prefix)
    except (AssertionError, ValueError, OSError) as e:  # megatron-core reports with bare asserts
        raise DataToolsError(f"{info.prefix}: megatron-core cannot read the pair ({e}); {REBUILD}") from None


def length_histogram(lengths: np.ndarray, width: int = 40) -> list[str]:
    """Text histogram of sequence lengths in power-of-two buckets."""
    if len(lengths) == 0:
        return ["(no sequences)"]
    buckets = np.floor(np.log2(np.maximum(lengths, 1))).astype(int)
    counts = np.bincount(buckets)
    top = counts.max()
    rows = []
    for b, c in enumerate(counts):
        if c:
            lo, hi = 1 << b, (1 << (b + 1)) - 1
            rows.append(f"{lo:>8}-{hi:<8} {c:>9}  {'#' * max(1, round(width * c / top))}")
    return rows


def load_tokenizer(path: str, tokenizer_type: str = "auto"):
    """(vocabulary size, decode(ids) -> str) of a sentencepiece .model or a Hugging Face directory."""
    from data_tools.hf_tokenizer import HUGGINGFACE, load_hf_tokenizer, tokenizer_type as resolve_type
    from data_tools.spm import TokenizerError, load_sentencepiece

    try:
        if resolve_type(path, tokenizer_type) == HUGGINGFACE:
            tok = load_hf_tokenizer(path)
            return len(tok), tok.decode
        sp = load_sentencepiece(path)
        return sp.vocab_size(), sp.decode
    except TokenizerError as e:
        raise DataToolsError(str(e)) from None


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_tools.inspect_data", description=__doc__.split("\n\n")[0])
    p.add_argument("prefix", help="dataset prefix (PREFIX.bin + PREFIX.idx); PREFIX.bin/.idx also accepted")
    p.add_argument("--verify", action="store_true", help="only check the pair; exit 0 if consistent")
    p.add_argument("--decode", type=int, default=0, metavar="N", help="print the first N documents decoded")
    p.add_argument("--tokenizer-model",
                   help="sentencepiece .model or Hugging Face tokenizer directory: for --decode, and with --verify "
                        "every token id is checked against it")
    p.add_argument("--tokenizer-type", choices=TOKENIZER_TYPES,
                   default="auto", help="auto: a directory is HuggingFaceTokenizer, a file SentencePieceTokenizer")
    a = p.parse_args(argv)
    info = verify_pair(a.prefix)
    if a.verify:
        checked = ""
        if a.tokenizer_model:
            vocab, _ = load_tokenizer(a.tokenizer_model, a.tokenizer_type)
            check_token_ids(info.prefix, vocab, a.tokenizer_model)
            checked = f", every id below the tokenizer's {vocab}"
        print(f"ok: {info.prefix}: {info.documents} documents, {info.sequences} sequences, "
              f"{info.tokens} tokens ({info.dtype.name}){checked}")
        return 0
    lengths = info.sequence_lengths
    print(f"{info.prefix}\n  dtype      {info.dtype.name}\n  documents  {info.documents}\n"
          f"  sequences  {info.sequences}\n  tokens     {info.tokens}")
    if info.sequences:
        print(f"  length     min {lengths.min()}  median {int(np.median(lengths))}  mean {lengths.mean():.1f}"
              f"  max {lengths.max()}\nsequence length histogram:")
        print("\n".join(length_histogram(lengths)))
    if a.decode:
        if not a.tokenizer_model:
            raise DataToolsError("--decode needs --tokenizer-model")
        _, decode = load_tokenizer(a.tokenizer_model, a.tokenizer_type)
        data = np.memmap(info.prefix + ".bin", dtype=info.dtype, mode="r")
        offsets = np.concatenate(([0], np.cumsum(lengths, dtype=np.int64)))
        for d in range(min(a.decode, info.documents)):
            s, e = info.document_indices[d], info.document_indices[d + 1]
            ids = data[offsets[s] : offsets[e]].tolist()
            print(f"--- document {d} ({e - s} sequences, {len(ids)} tokens)")
            print(decode(ids))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
