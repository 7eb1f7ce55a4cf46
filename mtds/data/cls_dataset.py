"""Sequence-classification samples (task classification, kind bert_cls): one labelled text (or
text pair) per sample, framed as BERT reads it.

Written by hand: megatron-core 0.16.1 has no labelled-sequence dataset (its BERT dataset masks
tokens and builds sentence-pair labels; Megatron-LM's GLUE/RACE datasets live in its `tasks/`
scripts, not the core). The input is what data_tools.classify writes: one document per sample
(a sequence for `text`, a second one for `text_pair`) and a class id per sample in its side file.

Each item: text [s] int64 (`[CLS] a [SEP]` or `[CLS] a [SEP] b [SEP]`, then pad), types [s] int64
(0 up to the first [SEP], 1 after), padding_mask [s] int64 (1 = token, 0 = pad; what BertModel
takes), label [] int64. A pair longer than seq_length is cut longest-first (one token at a time
from the longer segment, as BERT's GLUE scripts do).

Order: the training split is shuffled once per epoch with a RandomState seeded by (seed, epoch)
and repeated until `num_samples`; a validation/test split is read once in a fixed seeded order
(its length is the split's size, so an evaluation never counts a sample twice). Everything depends
only on the seed, so `dataset[i]` is the same in every process and after a resume.
"""

from __future__ import annotations

import numpy as np
import torch


class ClassificationDataset(torch.utils.data.Dataset):
    def __init__(self, sources: list, samples: np.ndarray, seq_length: int, num_samples: int | None, seed: int,
                 tokenizer):
        """`sources`: [(tokens IndexedDataset, class ids [n] array)] per prefix; `samples`: [n, 2]
        (source index, sample index) of this split; `num_samples=None`: every sample once (evaluation)."""
        self.sources, self.seq_length = sources, seq_length
        self.cls, self.sep, self.pad = tokenizer.cls, tokenizer.sep, tokenizer.pad
        self.samples = samples
        if num_samples is None:
            self.order = np.random.RandomState(seed % 2**32).permutation(len(samples))
        else:
            epochs = -(-num_samples // max(len(samples), 1))
            self.order = np.concatenate([np.random.RandomState((seed + 1000003 * e) % 2**32).permutation(len(samples))
                                         for e in range(epochs)] or [np.zeros(0, np.int64)])[:num_samples]

    def __len__(self) -> int:
        return len(self.order)

    def label(self, idx: int) -> int:
        p, i = self.samples[self.order[idx]]
        return int(self.sources[p][1][i])

    def __getitem__(self, idx: int) -> dict:
        p, i = self.samples[self.order[idx]]
        tokens, labels = self.sources[p]
        doc = tokens.document_indices  # [n_docs + 1] sequence offsets: 1 or 2 sequences per sample
        segments = [tokens[int(j)].astype(np.int64) for j in range(doc[i], doc[i + 1])]
        budget = self.seq_length - 1 - len(segments)  # room left after [CLS] and one [SEP] per segment
        lengths = [min(len(x), budget) for x in segments]  # so the loop below runs at most `budget` times
        while sum(lengths) > budget:  # longest first
            lengths[int(np.argmax(lengths))] -= 1
        ids = [self.cls]
        types = [0]
        for k, (seg, n) in enumerate(zip(segments, lengths)):
            ids += seg[:n].tolist() + [self.sep]
            types += [k] * (n + 1)
        s, n = self.seq_length, len(ids)
        text = np.full(s, self.pad, np.int64)
        text[:n] = ids
        type_ids = np.zeros(s, np.int64)
        type_ids[:n] = types
        padding_mask = np.zeros(s, np.int64)
        padding_mask[:n] = 1
        return {"text": torch.from_numpy(text), "types": torch.from_numpy(type_ids),
                "padding_mask": torch.from_numpy(padding_mask), "label": torch.tensor(int(labels[i]))}
