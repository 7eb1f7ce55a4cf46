"""GPT family: megatron-core GPTModel (decoder-only) on the local layer spec with SDPA attention.

The architecture switches of [model] (RoPE or learned positions, RMSNorm or LayerNorm, SwiGLU or
GELU, GQA, tied embeddings, biases) are all GPTModel options. Parallel state must be initialised
first (mtds.distributed.init_distributed): megatron-core layers look up their TP group.
"""

from __future__ import annotations

# Named sizes (shapes only; architecture choices come from ModelConfig's defaults).
# gpt-125m/350m/1.3b are the GPT-3 paper's shapes (Brown et al. 2020, table 2.1), with 16 heads
# for 1.3b (head dim 128, like Megatron-LM's 1.3B configs).
PRESETS: dict[str, dict] = {
    "gpt-tiny": dict(num_layers=4, hidden_size=256, num_attention_heads=4, max_position_embeddings=256),
    "gpt-125m": dict(num_layers=12, hidden_size=768, num_attention_heads=12, max_position_embeddings=2048),
    "gpt-350m": dict(num_layers=24, hidden_size=1024, num_attention_heads=16, max_position_embeddings=2048),
    "gpt-1.3b": dict(num_layers=24, hidden_size=2048, num_attention_heads=16, max_position_embeddings=2048),
}
PRESETS["tiny"] = PRESETS["gpt-tiny"]
DEFAULT_PRESET = "gpt-tiny"


def validate(m) -> list[str]:
    """GPTModel takes every [model] combination the shared checks allow."""
    return []


def build(m, vocab_size: int, precision: str, on_gpu: bool):
    """GPTModel with a language-model head (the output layer) over the padded vocabulary."""
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    from mtds.models.common import language_model_args, transformer_config, with_sdpa

    return GPTModel(
        config=transformer_config(m, precision, on_gpu),
        transformer_layer_spec=with_sdpa(get_gpt_layer_local_spec(normalization=m.normalization)),
        rotary_base=m.rotary_base,
        rope_scaling=m.rope_scaling,
        rope_scaling_factor=m.rope_scaling_factor,
        **language_model_args(m, vocab_size),
    )


def flops_per_token(m, num_params: int, seq_length: int, vocab_size: int) -> float:
    from mtds.models.common import dense_flops_per_token

    return dense_flops_per_token(m, num_params, seq_length, vocab_size)


def transformer_layers(model) -> list:
    """The layers training.compile=layers compiles: GPTModel's decoder stack."""
    return list(model.decoder.layers)


def hf_architectures() -> tuple:
    """Hugging Face architectures this family maps to, tried in order (mtds/hf/)."""
    from mtds.hf import gpt2, llama, qwen2

    return (llama, qwen2, gpt2)
