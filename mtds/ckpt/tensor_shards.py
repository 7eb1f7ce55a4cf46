"""Merge tensor-parallel shards into whole tensors, and split whole tensors for one rank.

megatron-core splits a tensor-parallel parameter along its `partition_dim` into TP equal slices.
With a `partition_stride` s > 1 (SwiGLU's fc1, whose rows are [gate; up]) the tensor is first cut
into s parts and each part is split, so rank r holds [part_0 slice r; part_1 slice r; ...].
The layout ({name: [dim, stride]}) comes from mtds.parallel.tensor_parallel.tensor_layout; parameters not
in it are replicated (rank 0's copy is taken). Written here because megatron-core's own reshard
path (dist_checkpointing) reads its own checkpoint format, not DeepSpeed's per-rank files.
"""

from __future__ import annotations

import torch


def merge(shards: list[dict], layout: dict) -> dict:
    """One state dict of whole tensors from the per-rank state dicts `shards` (rank order)."""
    merged = dict(shards[0])
    for name, (dim, stride) in layout.items():
        if name not in merged:
            continue
        parts = [shard[name].chunk(stride, dim=dim) for shard in shards]  # [rank][stride part]
        merged[name] = torch.cat([parts[r][j] for j in range(stride) for r in range(len(shards))], dim=dim)
    return merged


def split(whole: dict, layout: dict, rank: int, size: int) -> dict:
    """The state dict rank `rank` of `size` holds, from whole tensors (the inverse of merge)."""
    out = dict(whole)
    for name, (dim, stride) in layout.items():
        if name in out:
            out[name] = torch.cat([part.chunk(size, dim=dim)[rank] for part in out[name].chunk(stride, dim=dim)],
                                  dim=dim)
    return out
