"""Packed supervised fine-tuning samples (task gpt_sft): whole chat samples, several per sequence,
each attending only to itself.

Written by hand: megatron-core 0.16.1 has no SFT dataset that packs samples with their loss masks
(its GPTDataset concatenates documents and cuts sequences anywhere; Megatron-LM's SFT dataset
lives in its training scripts, not the core). The input is what data_tools.sft writes: a token
pair and a loss-mask pair with one sequence per sample and identical lengths.

Packing: per epoch the split's samples are shuffled with a RandomState seeded by (seed, epoch) and
laid greedily, in that order, into sequences of `seq_length` positions; a sample of n tokens takes
n - 1 positions (inputs ids[:-1], targets ids[1:]); a sample that does not fit starts the next
sequence; the rest of a sequence is padding with loss mask 0. Epochs repeat until there are
`num_samples` sequences. Everything depends only on the seed, so `dataset[i]` is the same in every
process and after a resume (mtds.data.loader.ResumableBatchSampler indexes it by consumed samples).
A sample longer than seq_length + 1 is cut to it; one whose targets are then all masked is
dropped (counted in `dropped`), never trained with an all-zero mask.

Each item: tokens, labels, position_ids [s] int64 (positions restart at 0 per sample), loss_mask
[s] float32, document_ids [s] int64 (which sample each position belongs to; padding is its own
"sample" -1, so no query is left without a key). SDPAttention (mtds/models/attention.py) attends within
each (mtds/models/document_attention.py: block-causal, FlexAttention on GPU).
"""

from __future__ import annotations

import numpy as np
import torch


class PackedSFTDataset(torch.utils.data.Dataset):
    def __init__(self, pairs: list, samples: np.ndarray, seq_length: int, num_samples: int, seed: int,
                 pad_id: int, pack: bool = True):
        """`pairs`: [(tokens IndexedDataset, loss-mask IndexedDataset)] per prefix; `samples`: [n, 2]
        (pair index, sample index) of this split; `pack=False`: one sample per sequence."""
        self.pairs, self.seq_length, self.pad_id = pairs, seq_length, pad_id
        lengths = np.array([pairs[p][0].sequence_lengths[i] for p, i in samples], np.int64).reshape(-1)
        keep = np.ones(len(samples), bool)
        for j in np.flatnonzero(lengths > seq_length + 1):  # cut: are any targets left in the window?
            p, i = samples[j]
            keep[j] = bool(pairs[p][1].get(int(i), 0, seq_length + 1)[1:].any())
        self.dropped = int((~keep).sum())
        self.samples, positions = samples[keep], np.minimum(lengths[keep], seq_length + 1) - 1  # [n], [n]
        self.bins: list[np.ndarray] = []  # per packed sequence: rows of self.samples
        epoch = 0
        while len(self.samples) and len(self.bins) < num_samples:
            order = np.random.RandomState((seed + 1000003 * epoch) % 2**32).permutation(len(self.samples))
            self.bins += _greedy_bins(order, positions, seq_length if pack else 1)
            epoch += 1

    def __len__(self) -> int:
        return len(self.bins)

    def _sample(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        p, i = self.samples[row]
        n = min(int(self.pairs[p][0].sequence_lengths[i]), self.seq_length + 1)
        return (self.pairs[p][0].get(int(i), 0, n).astype(np.int64),
                self.pairs[p][1].get(int(i), 0, n).astype(np.float32))

    def __getitem__(self, idx: int) -> dict:
        s = self.seq_length
        tokens = np.full(s, self.pad_id, np.int64)
        labels = np.full(s, self.pad_id, np.int64)
        loss_mask = np.zeros(s, np.float32)
        position_ids = np.zeros(s, np.int64)
        segment = np.full(s, -1, np.int64)  # which sample each position belongs to; -1 = padding
        start = 0
        for k, row in enumerate(self.bins[idx]):
            ids, mask = self._sample(int(row))
            n = len(ids) - 1
            tokens[start:start + n], labels[start:start + n] = ids[:-1], ids[1:]
            loss_mask[start:start + n] = mask[1:]  # mask[t] says whether token t is a target
            position_ids[start:start + n] = np.arange(n)
            segment[start:start + n] = k
            start += n
        position_ids[start:] = np.arange(s - start)
        return {"tokens": torch.from_numpy(tokens), "labels": torch.from_numpy(labels),
                "loss_mask": torch.from_numpy(loss_mask), "position_ids": torch.from_numpy(position_ids),
                "document_ids": torch.from_numpy(segment)}


def _greedy_bins(order: np.ndarray, positions: np.ndarray, capacity: int) -> list[np.ndarray]:
    """Samples in `order` laid into bins of `capacity` positions (a bin holds at least one)."""
    bins, current, used = [], [], 0
    for row in order:
        n = int(positions[row])
        if current and used + n > capacity:
            bins.append(np.asarray(current, np.int64))
            current, used = [], 0
        current.append(row)
        used += n
    if current:
        bins.append(np.asarray(current, np.int64))
    return bins
