"""T5 family: megatron-core T5Model (encoder-decoder, pre-norm) on its local layer specs, with
mtds's SDPA core attention in encoder self-attention, decoder self-attention and cross-attention.

Two adaptations, both in `_block_spec`:
- The local specs name Transformer Engine's TENorm as each stack's final norm; without Transformer
  Engine that is None and TransformerBlock then builds no final norm at all (the encoder's and
  decoder's outputs would go un-normalised, silently). Here it is megatron's torch norm.
- Their core attention is DotProductAttention (CUDA RNG tracker, materialised scores): SDPAttention,
  which also takes T5's relative position bias as SDPA's float mask.

The presets follow T5 (Raffel et al. 2020) with Hugging Face's T5 as the export target: RMSNorm
without biases, relative position buckets (32, max distance 128) shared by a stack's layers,
separate input embedding and output layer (T5 v1.1; megatron's tied T5 head adds an output bias
and HF's tied T5 rescales the decoder output, so tying cannot be exported), GELU MLP (the paper
used ReLU, which megatron-core's config here does not offer; HF's `feed_forward_proj="gelu"`).
The encoder and the decoder have `num_layers` layers each.
"""

from __future__ import annotations

import dataclasses

from mtds.kind_contract import Family

RELATIVE_ATTENTION_BUCKETS = 32
RELATIVE_ATTENTION_MAX_DISTANCE = 128
"""T5's relative position buckets (T5Config's defaults), fixed, not [model] keys: T5Model is built with
these, and the export (mtds/hf/t5.py) writes them into the Hugging Face config."""

T5_SOFTMAX_SCALE = 1.0
"""T5 does not divide attention scores by sqrt(head size) (its query init is smaller instead), and
neither does Hugging Face's T5; with the same scores the exported query weights are ours as they are."""

_T5_ARCH = dict(position_embedding_type="relative", normalization="RMSNorm", activation="gelu",
                tie_embeddings=False, add_bias_linear=False, layernorm_epsilon=1e-6)
PRESETS: dict[str, dict] = {  # T5 paper sizes (encoder and decoder each num_layers) and a tiny debug one
    "t5-tiny": dict(num_layers=4, hidden_size=256, num_attention_heads=4, max_position_embeddings=128, **_T5_ARCH),
    "t5-base": dict(num_layers=12, hidden_size=768, num_attention_heads=12, max_position_embeddings=512,
                    **_T5_ARCH),
}


def validate(m) -> list[str]:
    errs = []
    if m.position_embedding_type not in ("relative", "learned_absolute"):
        errs.append(f"model.position_embedding_type={m.position_embedding_type!r}: T5 uses relative (T5's buckets) "
                    "or learned_absolute positions")
    if m.num_moe_experts:
        errs.append("model.num_moe_experts: mtds's T5 is dense (mixtures of experts are GPT-only); set it to none")
    if m.num_query_groups not in (None, m.num_attention_heads):
        errs.append(f"model.num_query_groups={m.num_query_groups}: megatron-core's cross-attention has no "
                    "grouped-query attention; set it to none")
    if m.tensor_model_parallel_size != 1:
        errs.append(f"model.tensor_model_parallel_size={m.tensor_model_parallel_size}: T5 is built and tested at "
                    "tensor parallel 1 only in mtds; use data parallelism (ZeRO) for it")
    return errs


def build(m, vocab_size: int, precision: str, on_gpu: bool):
    """T5Model: encoder and decoder of `num_layers` each, one embedding shared by both, an output
    layer of its own (or tied to the embedding with model.tie_embeddings)."""
    from megatron.core.models.T5.t5_model import T5Model
    from megatron.core.models.T5.t5_spec import (get_t5_decoder_with_local_block_spec,
                                                 get_t5_encoder_with_local_block_spec)

    from mtds.models.common import transformer_config

    config = transformer_config(m, precision, on_gpu, softmax_scale=T5_SOFTMAX_SCALE)
    return T5Model(
        config=config,
        encoder_config=config,
        transformer_encoder_layer_spec=_block_spec(get_t5_encoder_with_local_block_spec(m.num_layers)),
        transformer_decoder_layer_spec=_block_spec(get_t5_decoder_with_local_block_spec(m.num_layers)),
        vocab_size=vocab_size,
        max_sequence_length=m.max_position_embeddings,
        pre_process=True,
        post_process=True,
        parallel_output=True,
        share_embeddings_and_output_weights=m.tie_embeddings,
        position_embedding_type=m.position_embedding_type,
        relative_attention_num_buckets=RELATIVE_ATTENTION_BUCKETS,
        relative_attention_max_distance=RELATIVE_ATTENTION_MAX_DISTANCE,
    )


def _block_spec(block):
    """A local T5 block spec with SDPA core attention and a real final norm (module docstring)."""
    from megatron.core.transformer.torch_norm import WrappedTorchNorm

    from mtds.models.common import with_sdpa

    layers = [with_sdpa(spec) for spec in block.layer_specs]
    return dataclasses.replace(block, layer_specs=layers, layer_norm=WrappedTorchNorm)


def flops_per_token(m, num_params: int, seq_length: int, vocab_size: int, decoder_seq_length: int | None = None) -> float:
    """Training FLOPs per encoder token (the tokens the trainer counts), from the shapes: 6 per
    weight per token it multiplies (2 forward, 4 backward) plus attention's scores and values
    (6 * 2 * h per query-key pair). The decoder runs on `decoder_seq_length` tokens per sample
    (default seq_length / 4), its cross-attention keys/values on the encoder's seq_length;
    num_params is not used (embeddings and the position bias are lookups)."""
    h, L = m.hidden_size, m.num_layers
    s_enc, s_dec = seq_length, decoder_seq_length or max(1, seq_length // 4)
    mlp = h * m.ffn_size() * (3 if m.activation == "swiglu" else 2)
    attention = 4 * h * h  # q, k, v and the output projection (no grouped-query attention in T5)
    encoder = L * (attention + mlp) * s_enc
    # decoder: self-attention, cross-attention's q and output on its own tokens, its k and v on the encoder's
    decoder = L * ((attention + 2 * h * h + mlp) * s_dec + 2 * h * h * s_enc)
    weights = 6 * (encoder + decoder + h * vocab_size * s_dec)  # + the output layer
    # scores and values over every query-key pair, as dense_flops_per_token counts a causal GPT
    scores = 12 * h * L * (s_enc * s_enc + s_dec * s_dec + s_dec * s_enc)
    return (weights + scores) / s_enc


def transformer_layers(model) -> list:
    """The layers training.compile=layers compiles: the encoder's, then the decoder's."""
    return list(model.encoder.layers) + list(model.decoder.layers)


FAMILY = Family(
    name="t5", presets=PRESETS, default_preset="t5-tiny", validate=validate, build=build,
    flops_per_token=flops_per_token, transformer_layers=transformer_layers,
    hf_architectures=("t5",),
)
