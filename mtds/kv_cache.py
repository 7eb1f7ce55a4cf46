"""A KV cache for generating with a megatron-core GPTModel: megatron-core's own static inference context.

Without a cache, each new token re-runs the model on the whole context (mtds.generate's
fallback): O(s) token passes per token. With it, the prompt runs once (prefill) and each new
token runs alone, attending to the keys and values every layer stored for the tokens before it.

This is megatron-core's `StaticInferenceContext` passed to `GPTModel.forward(inference_context=...)`,
the path Megatron-LM's own text generation uses; it runs on CPU with mtds's SDPAttention once
one thing is done here: megatron allocates each layer's cache buffers on first use on
`torch.cuda.current_device()`, which fails without CUDA, so the buffers are allocated up front on
the model's device (megatron then finds them in `key_value_memory_dict` and allocates nothing).
What megatron does with the context, per layer (megatron/core/transformer/attention.py,
`_adjust_key_value_for_inference`): it writes the new keys/values at
`[sequence_len_offset : +k]`, attends over `[: sequence_len_offset + k]`, and turns the causal mask
off once `sequence_len_offset > 0`. So after the prefill, tokens must be fed ONE at a time (a chunk
at a nonzero offset would attend to its own later tokens). Keys are stored before RoPE, and RoPE is
applied to all of them with the absolute positions, so learned and rotary positions both give
the full recompute's logits (tests/test_generate_kv_cache.py: token for token, logits to 1e-5).
"""

from __future__ import annotations

import torch


class KVCache:
    """The growing context of one sequence (batch 1) of a GPTModel in eval mode, up to `max_length` tokens."""

    def __init__(self, model: torch.nn.Module, max_length: int):
        from megatron.core.inference.contexts import StaticInferenceContext

        self.model, self.max_length = model, max_length
        self.context = StaticInferenceContext(max_batch_size=1, max_sequence_length=max_length)
        param = next(model.parameters())
        for layer in model.decoder.layers:
            attn = layer.self_attention
            groups = attn.num_query_groups_per_partition

            def buffer(dim: int) -> torch.Tensor:  # [max_length, b=1, groups, head dim], as megatron's own
                return torch.zeros(max_length, 1, groups, dim, dtype=param.dtype, device=param.device)

            self.context.key_value_memory_dict[attn.layer_number] = (buffer(attn.key_hidden_size),
                                                                     buffer(attn.val_hidden_size))

    @property
    def length(self) -> int:
        """Tokens whose keys and values are cached."""
        return self.context.sequence_len_offset

    @torch.no_grad()
    def __call__(self, new_ids: torch.Tensor) -> torch.Tensor:
        """Feed the next ids [1, k] of the sequence; returns the logits [1, V_padded] after the last.

        The first call (the prompt) may feed any number of ids; later calls feed one id each."""
        start, k = self.length, new_ids.size(1)
        if start and k != 1:
            raise ValueError("after the prompt, a KV cache takes one token at a time")
        if start + k > self.max_length:
            raise ValueError(f"KV cache holds {self.max_length} tokens; {start} + {k} do not fit")
        if start:
            self.context.enable_decode_mode()
        position_ids = torch.arange(start, start + k, device=new_ids.device).unsqueeze(0)  # [1, k]
        # materialize_only_last_token_logits: the output layer runs on the last position only -> [1, 1, V]
        logits = self.model(new_ids, position_ids, None, inference_context=self.context, runtime_gather_output=True)
        self.context.sequence_len_offset += k
        return logits[:, -1]
