"""Attention that stays inside each document of a packed sequence (data.document_mask, gpt_sft packing):
the attention side (the ids come from mtds/data/document_ids.py).

The data carries a document id per token ([b, s] int64), not a mask: a query attends to the keys
of its own document at or before it. mtds.models.attention.SDPAttention receives those ids in place of
megatron's attention mask and turns them into
- on GPU, a FlexAttention BlockMask: only the [128 x 128] blocks on the diagonal of each document
  are computed, and no [s, s] mask exists anywhere (a dense bool mask per sample is s^2 bytes:
  16 MiB at s = 4096, built by the loader and copied to the device every step, and SDPA with
  such a mask cannot use the flash kernel);
- on CPU (and with attention dropout, which FlexAttention lacks), the dense [b, 1, s, s] mask
  for SDPA: simple and exact.
Both give the same attention (tests/test_document_mask.py).
"""

from __future__ import annotations

import torch

FLEX_DEVICES = ("cuda",)
"""Device types on which document attention runs through FlexAttention (tests add "cpu", where
flex_attention runs its unfused reference implementation)."""


def dense_allowed(ids: torch.Tensor) -> torch.Tensor:
    """[b, s] document ids -> [b, 1, s, s] bool, True where query i may attend to key j."""
    s = ids.shape[-1]
    causal = torch.ones(s, s, dtype=torch.bool, device=ids.device).tril()
    return (ids[:, None, :, None] == ids[:, None, None, :]) & causal


_cached: tuple | None = None  # (ids tensor, its version, BlockMask): every layer of a forward shares one


def block_mask(ids: torch.Tensor):
    """FlexAttention BlockMask of [b, s] document ids (block-causal), built once per ids tensor."""
    global _cached
    if _cached is not None and _cached[0] is ids and _cached[1] == ids._version:
        return _cached[2]
    from torch.nn.attention.flex_attention import create_block_mask

    def same_document_causal(b, h, q, kv):
        return (ids[b, q] == ids[b, kv]) & (q >= kv)

    b, s = ids.shape
    mask = create_block_mask(same_document_causal, B=b, H=None, Q_LEN=s, KV_LEN=s, device=ids.device,
                             _compile=ids.is_cuda)
    _cached = (ids, ids._version, mask)
    return mask


_compiled_flex = None


def flex_attention(q, k, v, ids: torch.Tensor, scale: float, enable_gqa: bool) -> torch.Tensor:
    """[b, np, s, hn] x3 -> [b, np, s, hn], attending within documents. Compiled on GPU (the
    uncompiled flex_attention is a slow reference that materialises the scores)."""
    global _compiled_flex
    from torch.nn.attention import flex_attention as fa

    fn = fa.flex_attention
    if q.is_cuda:
        if _compiled_flex is None:
            _compiled_flex = torch.compile(fa.flex_attention, dynamic=False)
        fn = _compiled_flex
    return fn(q, k, v, block_mask=block_mask(ids), scale=scale, enable_gqa=enable_gqa)
