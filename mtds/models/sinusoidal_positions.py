"""Sinusoidal position encoding (Vaswani et al. 2017, section 3.5), `model.position_embedding_type =
"sinusoidal"` (GPT and BERT): the fixed table
    PE(pos, 2i) = sin(pos / 10000^(2i / d)),   PE(pos, 2i + 1) = cos(pos / 10000^(2i / d)),
added to the token embeddings where a learned table would be.

How: the family builds megatron-core's model with learned positions, then `use_sinusoidal_positions`
puts SinusoidalPositions in place of the embedding's position table (a torch.nn.Embedding).
megatron-core's LanguageModelEmbedding calls it the same way (`table(position_ids)`) and adds it to
the word embeddings before its dropout and sequence-parallel scatter. It holds no parameter and no
state-dict key (a non-persistent buffer): checkpoints store nothing for it, ZeRO partitions nothing
and no optimizer moves it. No Hugging Face architecture of these families uses it: export refuses it.
"""

from __future__ import annotations

import torch


def sinusoid_table(positions: int, dim: int) -> torch.Tensor:
    """[positions, dim] fp32: Vaswani et al.'s table (computed in fp64, then rounded once)."""
    pos = torch.arange(positions, dtype=torch.float64)[:, None]  # [P, 1]
    angles = pos / 10000 ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # [P, ceil(d / 2)]
    table = torch.empty(positions, dim, dtype=torch.float64)
    table[:, 0::2] = angles.sin()
    table[:, 1::2] = angles.cos()[:, : dim // 2]
    return table.float()


class SinusoidalPositions(torch.nn.Module):
    """Drop-in for LanguageModelEmbedding.position_embeddings: position ids [b, s] -> [b, s, h]."""

    def __init__(self, positions: int, dim: int):
        super().__init__()
        self.register_buffer("table", sinusoid_table(positions, dim), persistent=False)

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        return self.table[position_ids]


def use_sinusoidal_positions(model, m):
    """`model` (built with learned positions) with the fixed table in place of the learned one."""
    model.embedding.position_embeddings = SinusoidalPositions(m.max_position_embeddings, m.hidden_size)
    return model
