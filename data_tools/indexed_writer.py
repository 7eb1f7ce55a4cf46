"""Write Megatron `.bin`/`.idx` pairs with megatron-core's `IndexedDatasetBuilder`.

Same files Megatron-LM / Megatron-DeepSpeed read. The pair is written under temp names and
renamed only when complete, `.bin` first and `.idx` last, so a killed run never leaves a
valid-looking pair; on error or Ctrl-C the temps are removed.

megatron-core is imported lazily (it pulls in torch: seconds) so the rest of data_tools and the
tokenizing worker processes start fast.
"""

from __future__ import annotations

import contextlib
import os
import warnings

import numpy as np

from data_tools.io_utils import tmp_name


def import_indexed_dataset():
    """megatron.core.datasets.indexed_dataset, imported quietly (its package __init__ warns
    about missing Transformer Engine / Apex, which do not matter for data files)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets import indexed_dataset
    return indexed_dataset


def optimal_dtype(vocab_size: int) -> type:
    """uint16 below 65500 tokens, else int32 (megatron-core's rule, so readers agree)."""
    return import_indexed_dataset().DType.optimal_dtype(vocab_size)


class BinIdxWriter:
    """Appends tokenized documents to `{prefix}.bin` and writes `{prefix}.idx` at `finalize()`."""

    def __init__(self, prefix: str, dtype: type):
        idx = import_indexed_dataset()
        self.prefix = prefix
        self.dtype = np.dtype(dtype)
        self.bin_path, self.idx_path = idx.get_bin_path(prefix), idx.get_idx_path(prefix)
        self.tmp_bin, self.tmp_idx = tmp_name(self.bin_path), tmp_name(self.idx_path)
        # megatron-core wants the scalar type (np.uint16), not a dtype instance: it reads __name__.
        self.builder = idx.IndexedDatasetBuilder(self.tmp_bin, dtype=self.dtype.type)
        self.sequences = 0
        self.documents = 0
        self.tokens = 0

    def add_documents(self, tokens: np.ndarray, seq_lengths: np.ndarray, doc_seq_counts: np.ndarray) -> None:
        """Append many documents at once: `tokens` is all their tokens back to back,
        `seq_lengths` the length of every sequence (sentence) and `doc_seq_counts` how many
        sequences each document has (>= 1).

        Writes exactly what one `builder.add_document(doc_tokens, doc_seq_lengths)` per document
        would (a test checks the bytes), but with one write and two list extends per chunk
        instead of a numpy conversion per document.
        """
        b = self.builder
        b.data_file.write(np.ascontiguousarray(tokens, dtype=self.dtype).tobytes())
        start = len(b.sequence_lengths)
        b.sequence_lengths.extend(seq_lengths.tolist())
        b.document_indices.extend((start + np.cumsum(doc_seq_counts)).tolist())
        self.sequences += len(seq_lengths)
        self.documents += len(doc_seq_counts)
        self.tokens += int(tokens.size)

    def finalize(self) -> None:
        """Write the index and publish the pair: .bin renamed first, .idx last."""
        self.builder.finalize(self.tmp_idx)
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.idx_path)  # an old .idx must never describe the new .bin
        os.replace(self.tmp_bin, self.bin_path)
        os.replace(self.tmp_idx, self.idx_path)

    def abort(self) -> None:
        """Close and delete the temp files (nothing final is touched)."""
        with contextlib.suppress(Exception):
            self.builder.data_file.close()
        for p in (self.tmp_bin, self.tmp_idx):
            with contextlib.suppress(FileNotFoundError):
                os.remove(p)
