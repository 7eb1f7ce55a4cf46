"""mtds's default GPT (RoPE + RMSNorm + SwiGLU) as Hugging Face `LlamaForCausalLM`.

Any number of key/value groups (GQA), tied or untied embeddings, with or without linear biases.
megatron's RoPE is the non-interleaved (rotate-half) form, as HF Llama's, so q/k rows need no
permutation; only the fused QKV and the fused SwiGLU fc1 [gate; up] are split.
"""

from __future__ import annotations

from mtds.hf.mapping import Rule, rule
from mtds.hf.transforms import Chunk, SplitQKV

ARCHITECTURE = "LlamaForCausalLM"
CAUSAL_LM = True


def unsupported(m, heads: dict) -> str | None:
    """None if the model exports as Llama, else what does not fit."""
    combo = (m.position_embedding_type, m.normalization, m.activation)
    if combo != ("rope", "RMSNorm", "swiglu"):
        return f"position_embedding_type={combo[0]}, normalization={combo[1]}, activation={combo[2]}"
    return None


def hf_config(m, heads: dict, vocab_size: int, tok_ids: dict) -> dict:
    return {
        "architectures": [ARCHITECTURE], "model_type": "llama",
        "vocab_size": vocab_size, "hidden_size": m.hidden_size, "intermediate_size": m.ffn_size(),
        "num_hidden_layers": m.num_layers, "num_attention_heads": m.num_attention_heads,
        "num_key_value_heads": m.num_query_groups or m.num_attention_heads,
        "head_dim": m.hidden_size // m.num_attention_heads,
        "hidden_act": "silu", "max_position_embeddings": m.max_position_embeddings,
        "rms_norm_eps": 1e-5,  # megatron TransformerConfig.layernorm_epsilon default
        "rope_theta": float(m.rotary_base),  # transformers < 5 reads this ...
        "rope_parameters": {"rope_type": "default", "rope_theta": float(m.rotary_base)},  # ... 5.x this
        "attention_bias": m.add_bias_linear, "mlp_bias": m.add_bias_linear,
        "tie_word_embeddings": m.tie_embeddings, "initializer_range": m.init_method_std,
        "attention_dropout": 0.0, "use_cache": True, **tok_ids,
    }


def rules(m, heads: dict) -> list[Rule]:
    """megatron GPTModel keys <-> LlamaForCausalLM keys."""
    qkv = SplitQKV(m.num_attention_heads, m.num_query_groups or m.num_attention_heads,
                   m.hidden_size // m.num_attention_heads)
    table = [rule("embedding.word_embeddings.weight", "model.embed_tokens.weight"),
             rule("decoder.final_layernorm.weight", "model.norm.weight")]
    if not m.tie_embeddings:  # tied: megatron has no output_layer.weight, HF re-ties lm_head
        table.append(rule("output_layer.weight", "lm_head.weight"))
    for i in range(m.num_layers):
        ours, theirs = f"decoder.layers.{i}.", f"model.layers.{i}."
        table += [rule(ours + "input_layernorm.weight", theirs + "input_layernorm.weight"),
                  rule(ours + "pre_mlp_layernorm.weight", theirs + "post_attention_layernorm.weight")]
        for kind in ("weight", "bias") if m.add_bias_linear else ("weight",):
            attn, mlp = f"{theirs}self_attn.", f"{theirs}mlp."
            table += [
                rule(f"{ours}self_attention.linear_qkv.{kind}",
                     (f"{attn}q_proj.{kind}", f"{attn}k_proj.{kind}", f"{attn}v_proj.{kind}"), qkv),
                rule(f"{ours}self_attention.linear_proj.{kind}", f"{attn}o_proj.{kind}"),
                rule(f"{ours}mlp.linear_fc1.{kind}", (f"{mlp}gate_proj.{kind}", f"{mlp}up_proj.{kind}"), Chunk(2)),
                rule(f"{ours}mlp.linear_fc2.{kind}", f"{mlp}down_proj.{kind}"),
            ]
    return table
