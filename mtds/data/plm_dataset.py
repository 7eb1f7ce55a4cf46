"""Samples for permutation language modeling (mtds/tasks/permutation_lm.py): megatron-core GPT samples of
T tokens, each with a factorization order and the K tokens it predicts, and the inputs of the one-stream
construction (the T tokens, then K query tokens carrying the mask token at their targets' positions).

The order is drawn from a generator seeded by (data.seed, sample index) alone, so a sample is the same
whoever reads it and whenever: a resumed run, another data-parallel layout or mtds.evaluate see the same
orders (megatron-core's BERT and T5 datasets seed their masking per sample the same way).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

ORDER_SALT = 0x504C4D  # "PLM": keeps these draws apart from any other per-sample draw of the same seed


def sample_order(rng: np.random.Generator, length: int, num_predict: int) -> tuple[np.ndarray, np.ndarray]:
    """A uniform random factorization order of `length` positions: (ranks [T] int64, rank of each
    position in the order; targets [K] int64, the positions of the order's last K, by rank)."""
    order = rng.permutation(length)  # order[r] = the position at rank r
    ranks = np.empty(length, np.int64)
    ranks[order] = np.arange(length)
    return ranks, order[length - num_predict:].astype(np.int64)


def query_inputs(tokens: torch.Tensor, targets: torch.Tensor, mask_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The one-stream inputs of [.., T] tokens and [.., K] target positions: (input ids [.., T + K], the
    tokens then K mask tokens; position ids [.., T + K], 0 .. T-1 then the targets' positions)."""
    positions = torch.arange(tokens.shape[-1], device=tokens.device).expand_as(tokens)
    return (torch.cat([tokens, torch.full_like(targets, mask_id)], dim=-1),
            torch.cat([positions, targets], dim=-1))


@dataclass
class PermutationDatasetConfig(GPTDatasetConfig):
    """GPTDatasetConfig plus the number of tokens each sample predicts."""

    num_predict: int = 1
    """K: the order's last K tokens are the targets."""


class PermutationGPTDataset(GPTDataset):
    """megatron-core GPTDataset (T = seq_length tokens, no extra token) whose samples are
    tokens [T], ranks [T], targets [K] (positions), labels [K] (their tokens), loss_mask [K]
    (0 for megatron's padding sample), input_ids and position_ids [T + K] (see query_inputs)."""

    def __getitem__(self, idx):
        sample = super().__getitem__(idx)
        tokens = sample["tokens"]  # [T]
        rng = np.random.default_rng([self.config.random_seed, ORDER_SALT, 0 if idx is None else int(idx)])
        ranks, targets = sample_order(rng, tokens.numel(), self.config.num_predict)
        ranks, targets = torch.from_numpy(ranks), torch.from_numpy(targets)
        input_ids, position_ids = query_inputs(tokens, targets, self.config.tokenizer.mask)
        real = 0.0 if idx is None else 1.0  # megatron-core's batch-padding sample has no loss
        return {"tokens": tokens, "ranks": ranks, "targets": targets, "labels": tokens[targets],
                "loss_mask": torch.full((targets.numel(),), real), "input_ids": input_ids,
                "position_ids": position_ids}
