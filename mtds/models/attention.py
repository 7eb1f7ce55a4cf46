"""Core attention on PyTorch's scaled_dot_product_attention, for megatron-core layer specs.

It replaces megatron-core's `DotProductAttention` in our layer specs because:
- on GPU without Transformer Engine, SDPA dispatches to the flash / memory-efficient kernels,
  while DotProductAttention materialises the [b, np, s, s] score matrix;
- on CPU, DotProductAttention forks megatron's CUDA RNG tracker for dropout and fails.
Under tensor parallelism each rank attends with its own heads and key/value groups (global / TP),
and attention dropout draws from the tracker's model-parallel stream, as megatron's own does, so
the ranks' heads get independent masks. T5's relative position bias (megatron's attention_bias) is
added to the scores through SDPA's float mask. In place of a mask it also takes document ids
[b, s] (mtds.models.document_attention: packed documents attend only to themselves; FlexAttention on GPU).
Context parallelism is not supported.
`SDPABertModel` is the one change megatron-core's BertModel needs to accept this core attention.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from megatron.core.models.bert.bert_model import BertModel
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig

from mtds.models import document_attention


class SDPAttention(MegatronModule):
    """Drop-in for DotProductAttention: [sq, b, np, hn] x3 -> [sq, b, np * hn], np = heads / TP."""

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection=None,
    ):
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ValueError("SDPAttention supports context parallel size 1 only")
        if config.apply_query_key_layer_scaling:
            raise ValueError("SDPAttention does not implement apply_query_key_layer_scaling")
        self.attn_mask_type = attn_mask_type
        tp = config.tensor_model_parallel_size
        self.num_heads = config.num_attention_heads // tp  # this rank's heads
        self.num_query_groups = (config.num_query_groups or config.num_attention_heads) // tp
        self.tensor_parallel = tp > 1
        self.head_dim = config.kv_channels
        self.softmax_scale = softmax_scale or 1.0 / math.sqrt(self.head_dim)
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        attn_mask_type: AttnMaskType | None = None,
        attention_bias=None,
        packed_seq_params=None,
    ) -> torch.Tensor:
        if packed_seq_params is not None:
            raise ValueError("SDPAttention does not support packed sequences")
        mask_type = attn_mask_type or self.attn_mask_type
        # megatron layout [s, b, heads, hn] -> SDPA layout [b, heads, s, hn]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        is_causal, sdpa_mask = mask_type == AttnMaskType.causal, None
        dropout_p = self.dropout_p if self.training else 0.0
        if attention_mask is not None and not attention_mask.is_floating_point() and attention_mask.dtype != torch.bool:
            # Document ids [b, s] (mtds.models.document_attention): attention within each packed document.
            if q.device.type in document_attention.FLEX_DEVICES and dropout_p == 0.0:
                context = document_attention.flex_attention(q, k, v, attention_mask, self.softmax_scale,
                                                       self.num_query_groups != self.num_heads)
                return self._megatron_layout(context)
            attention_mask = ~document_attention.dense_allowed(attention_mask)  # [b, 1, s, s], True = masked
        if attention_mask is not None:
            # A given mask is the whole mask: BERT's and T5's padding mask [b, 1, 1, s], or GPT's
            # block-causal document mask [b, 1, s, s] (data.document_mask), which holds the causal part.
            # megatron masks are True where attention is NOT allowed; SDPA's bool mask is the opposite.
            is_causal, sdpa_mask = False, ~attention_mask.bool()
        if attention_bias is not None:
            sdpa_mask = self._bias_mask(attention_bias, sdpa_mask, is_causal, q)
            is_causal = False
        rng = contextlib.nullcontext()
        if dropout_p and self.tensor_parallel:
            from megatron.core import tensor_parallel

            rng = tensor_parallel.get_cuda_rng_tracker().fork()
        with rng:
            context = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=sdpa_mask,
                dropout_p=dropout_p,
                is_causal=is_causal,
                scale=self.softmax_scale,
                enable_gqa=self.num_query_groups != self.num_heads,
            )
        return self._megatron_layout(context)

    def _megatron_layout(self, context: torch.Tensor) -> torch.Tensor:
        """[b, np, sq, hn] -> [sq, b, np * hn] (np: this rank's heads)."""
        sq, b = context.shape[2], context.shape[0]
        return context.permute(2, 0, 1, 3).reshape(sq, b, self.num_heads * self.head_dim)


    @staticmethod
    def _bias_mask(bias: torch.Tensor, allowed: torch.Tensor | None, causal: bool, q: torch.Tensor) -> torch.Tensor:
        """T5's relative position bias [1, np, sq, sk] as SDPA's float mask (added to the scores),
        -inf where `allowed` (bool, True = may attend) or causality forbids: SDPA takes one mask."""
        mask = bias.to(q.dtype)
        if causal:
            sq, sk = mask.shape[-2:]
            allowed = torch.ones(sq, sk, dtype=torch.bool, device=q.device).tril()
        if allowed is not None:
            mask = mask.masked_fill(~allowed, float("-inf"))
        return mask


class SDPABertModel(BertModel):
    """BertModel whose padding mask is laid out for mtds.models.attention.SDPAttention.

    BertModel.__init__ asks `_sanity_check_attention_and_get_attn_mask_dimension` which mask
    layout the spec's core attention wants: "b1ss" for megatron's own DotProductAttention,
    otherwise it assumes Transformer Engine and compares TE versions (a TypeError when TE is
    not installed). This override is the whole adaptation: for SDPAttention it answers "b11s",
    i.e. `bert_extended_attention_mask` turns the [b, s] padding mask (1 = token) into
    [b, 1, 1, s] with True = masked, which SDPAttention inverts and SDPA broadcasts over heads
    and queries.

    Why b11s rather than DotProductAttention's b1ss ([b, 1, s, s] = pad(query) | pad(key)): for
    every real query the two are identical (tests/test_bert.py checks the logits), but b1ss
    masks *every* key of a padded query row, and a fully masked row is where SDPA kernels have
    produced NaN (PyTorch issues #103963, #110213), which would then leak through the values.
    b11s has no empty rows and is s times smaller. Padded positions carry no loss either way.
    """

    def _sanity_check_attention_and_get_attn_mask_dimension(self) -> str:
        core = self.transformer_layer_spec.submodules.self_attention.submodules.core_attention
        if core is SDPAttention:
            return "b11s"
        return super()._sanity_check_attention_and_get_attn_mask_dimension()
