"""Next-sentence prediction samples on megatron-core's BERT dataset (`task.pair = "nsp"`).

megatron-core's `BERTMaskedWordPieceDataset` builds sentence-ORDER pairs: a run of sentences of
one document cut into A|B and swapped half of the time. NSP as the BERT paper defines it (Devlin
et al. 2019, section 3.1) pairs A with the text that follows it half of the time and with a
segment of another, randomly chosen document the other half (label 1 = random). The split, the
swap, the masking and the padding all happen inside that class's `__getitem__`, so NSP needs its
own: this one keeps megatron-core's sample index (which runs of sentences make a sample), its
RNG seeding per sample, its truncation rule and its masking (`_create_masked_lm_predictions`),
and replaces only where segment B comes from. The sample layout is the same as SOP's.
"""

from __future__ import annotations

import numpy
from megatron.core.datasets.bert_dataset import BERTMaskedWordPieceDataset


class NSPMaskedWordPieceDataset(BERTMaskedWordPieceDataset):
    """BERT samples whose binary label says "B is a segment of another document" (1) or "B is
    the text that follows A" (0)."""

    def segments(self, idx: int, rng: numpy.random.RandomState) -> tuple[list, list, bool, int, int]:
        """(A tokens, B tokens, B is random, A's document, B's document) of sample `idx`."""
        idx_beg, idx_end, target_length = (int(v) for v in self.sample_index[idx])  # uint32 in the index
        sentences = [list(self.dataset[i]) for i in range(idx_beg, idx_end)]
        docs = self.dataset.document_indices  # [n_docs + 1] sentence offsets
        doc_a = int(numpy.searchsorted(docs, idx_beg, side="right") - 1)
        pivot = 1 if len(sentences) < 3 else rng.randint(low=1, high=len(sentences))
        a = [t for s in sentences[:pivot] for t in s]
        if rng.random() >= 0.5 or len(self.indices) < 2:  # the true continuation
            return a, [t for s in sentences[pivot:] for t in s], False, doc_a, doc_a
        doc_b = doc_a
        while doc_b == doc_a:  # a document of this split, not A's
            doc_b = int(self.indices[rng.randint(len(self.indices))])
        # From a random sentence of it, whole sentences until B has the length A leaves free.
        first, last = int(docs[doc_b]), int(docs[doc_b + 1])
        b, want = [], max(1, target_length - len(a))
        for i in range(rng.randint(first, last), last):
            b.extend(self.dataset[i])
            if len(b) >= want:
                break
        return a, b, True, doc_a, doc_b

    def __getitem__(self, idx: int) -> dict:
        target_length = int(self.sample_index[idx][2])
        rng = numpy.random.RandomState(seed=(self.config.random_seed + idx) % 2**32)
        a, b, is_random, _, _ = self.segments(idx, rng)
        truncated = len(a) + len(b) > target_length
        while len(a) + len(b) > target_length:  # megatron-core's rule: trim the longer, from a random end
            longer = a if len(a) > len(b) else b
            del longer[0 if rng.random() < 0.5 else -1]
        tok = self.config.tokenizer
        tokens = [tok.cls, *a, tok.sep, *b, tok.sep]
        types = [0] * (len(a) + 2) + [1] * (len(b) + 1)
        tokens, positions, masked_labels, _, _ = self._create_masked_lm_predictions(tokens, target_length, rng)
        pad = self.config.sequence_length - len(tokens)
        text = numpy.pad(numpy.array(tokens, dtype=numpy.int64), (0, pad), constant_values=self._pad_token_id)
        padding_mask = numpy.pad(numpy.ones(len(tokens), dtype=numpy.int64), (0, pad))  # 1 = token
        labels = numpy.full(self.config.sequence_length, -1, dtype=numpy.int64)
        labels[positions] = masked_labels
        loss_mask = numpy.zeros(self.config.sequence_length, dtype=numpy.int64)
        loss_mask[positions] = 1
        return {"text": numpy.where(padding_mask == 1, text, 0),  # pad ids the embedding can look up
                "types": numpy.pad(numpy.array(types, dtype=numpy.int64), (0, pad)),
                "labels": labels, "is_random": int(is_random), "padding_mask": padding_mask,
                "loss_mask": loss_mask, "truncated": int(truncated)}
