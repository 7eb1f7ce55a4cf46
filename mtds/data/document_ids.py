"""Document ids of packed samples (data.document_mask, gpt_sft packing): per token, which document of
the sequence it belongs to ([b, s] int64), carried by the data instead of a dense [s, s] mask.
The attention side (ids -> dense mask on CPU, FlexAttention BlockMask on GPU) is
mtds/models/document_attention.py.

Why ids rather than megatron-core's own mask: GPTDataset's `create_attention_mask` builds the
dense [1, s, s] mask per sample in the loader. Its position-id reset (`reset_position_ids`) is kept.
"""

from __future__ import annotations

import torch
from megatron.core.datasets.gpt_dataset import GPTDataset


def document_ids(tokens: torch.Tensor, eod: int) -> torch.Tensor:
    """Document index of each token: the number of end-of-document tokens before it (an EOD
    belongs to the document it ends), as megatron-core's reset_attention_mask splits. [.., s] -> [.., s]."""
    is_eod = (tokens == eod).long()
    return is_eod.cumsum(-1) - is_eod


class DocumentIdsGPTDataset(GPTDataset):
    """megatron-core GPTDataset whose samples also hold `document_ids` [s] (see document_ids)."""

    def __getitem__(self, idx):
        sample = super().__getitem__(idx)
        sample["document_ids"] = document_ids(sample["tokens"], self.config.tokenizer.eod)
        return sample
