"""mtds's default GPT (RoPE + RMSNorm + SwiGLU) as Hugging Face `LlamaForCausalLM`, both ways.

Any number of key/value groups (GQA), tied or untied embeddings, with or without linear biases,
Llama-3.1/3.2 RoPE scaling. megatron's RoPE is the non-interleaved (rotate-half) form, as HF
Llama's, so q/k rows need no permutation; only the fused QKV (grouped per key/value head, so
GQA splits by groups, not query heads) and the fused SwiGLU fc1 [gate; up] are split.
Mistral and Qwen2 are this table with other config fields (mtds/hf/mistral.py, qwen2.py).
"""

from __future__ import annotations

from mtds.hf.config_fields import Fields
from mtds.hf.mapping import Rule, rule
from mtds.hf.transforms import Chunk, SplitQKV

ARCHITECTURE = "LlamaForCausalLM"
MODEL_TYPE = "llama"
CAUSAL_LM = True
SEQ2SEQ_LM = False
# megatron-core's Llama-3 RoPE scaling has these fixed (RotaryEmbedding._apply_scaling).
LLAMA3_ROPE_FIXED = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def layer_mismatch(m) -> str | None:
    """None if the layers are Llama's (RoPE, RMSNorm, SwiGLU), as Mistral, Qwen2 and Mixtral share."""
    combo = (m.position_embedding_type, m.normalization, m.activation)
    if combo != ("rope", "RMSNorm", "swiglu"):
        return f"position_embedding_type={combo[0]}, normalization={combo[1]}, activation={combo[2]}"
    return None


def unsupported(m, heads: dict) -> str | None:
    """None if the model exports as Llama, else what does not fit."""
    if m.num_moe_experts:
        return f"num_moe_experts={m.num_moe_experts} (a mixture of experts; a dense model's table)"
    if layer_mismatch(m):
        return layer_mismatch(m)
    if m.add_qkv_bias and not m.add_bias_linear:
        return "add_qkv_bias=true (biases on q/k/v only: Qwen2)"
    return None


def hf_config(m, heads: dict, vocab_size: int, tok_ids: dict) -> dict:
    rope = {"rope_type": "default", "rope_theta": float(m.rotary_base)}
    if m.rope_scaling:
        rope = {**rope, "rope_type": "llama3", "factor": float(m.rope_scaling_factor), **LLAMA3_ROPE_FIXED}
    return {
        "architectures": [ARCHITECTURE], "model_type": MODEL_TYPE,
        "vocab_size": vocab_size, "hidden_size": m.hidden_size, "intermediate_size": m.ffn_size(),
        "num_hidden_layers": m.num_layers, "num_attention_heads": m.num_attention_heads,
        "num_key_value_heads": m.num_query_groups or m.num_attention_heads,
        "head_dim": m.kv_channels or m.hidden_size // m.num_attention_heads,
        "hidden_act": "silu", "max_position_embeddings": m.max_position_embeddings,
        "rms_norm_eps": m.layernorm_epsilon,
        "rope_theta": float(m.rotary_base),  # transformers < 5 reads this (and rope_scaling) ...
        "rope_scaling": None if rope["rope_type"] == "default" else rope,
        "rope_parameters": rope,  # ... 5.x this
        "attention_bias": m.add_bias_linear, "mlp_bias": m.add_bias_linear,
        "tie_word_embeddings": m.tie_embeddings, "initializer_range": m.init_method_std,
        "attention_dropout": 0.0, "use_cache": True, **tok_ids,
    }


def model_config(hf: dict) -> tuple[dict, dict]:
    """([model] keys, [task] keys) for a Llama config.json; ValueError naming a field mtds cannot express."""
    f = Fields(hf)
    f.require("hidden_act", "silu")
    f.require("pretraining_tp", 1, default=1)
    bias = f.get("attention_bias", False)
    f.require("mlp_bias", bias, default=False, why="megatron has one switch for attention and MLP biases")
    return llama_family_model(f, add_bias_linear=bias), {}


def llama_family_model(f: Fields, **extra) -> dict:
    """The [model] keys Llama, Mistral and Qwen2 configs share."""
    hidden, heads = f.get("hidden_size"), f.get("num_attention_heads")
    f.require("head_dim", hidden // heads, default=hidden // heads, why="megatron's head size is hidden_size / heads")
    groups = f.get("num_key_value_heads", heads)
    rotary_base, scaling = _rope(f)
    return dict(
        preset=None, num_layers=f.get("num_hidden_layers"), hidden_size=hidden,
        num_attention_heads=heads, num_query_groups=None if groups == heads else groups,
        ffn_hidden_size=f.get("intermediate_size"), max_position_embeddings=f.get("max_position_embeddings"),
        vocab_size=f.get("vocab_size"), position_embedding_type="rope", rotary_base=rotary_base,
        normalization="RMSNorm", layernorm_epsilon=float(f.get("rms_norm_eps")), activation="swiglu",
        tie_embeddings=bool(f.get("tie_word_embeddings", False)), init_method_std=float(f.get("initializer_range", 0.02)),
        **scaling, **extra,
    )


def _rope(f: Fields) -> tuple[int, dict]:
    """(rotary_base, rope scaling keys) from transformers 5's rope_parameters or 4.x's rope_theta/rope_scaling."""
    params = f.get("rope_parameters", None) or f.get("rope_scaling", None) or {}
    theta = params.get("rope_theta", f.get("rope_theta", 10000.0))
    if float(theta) != int(theta):
        raise ValueError(f"rope_theta={theta}: megatron's rotary_base is an integer")
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return int(theta), {}
    if kind != "llama3":
        raise ValueError(f"rope_scaling type {kind!r}: mtds expresses only the default RoPE and Llama-3's 'llama3'")
    for key, fixed in LLAMA3_ROPE_FIXED.items():
        if float(params.get(key, fixed)) != fixed:
            raise ValueError(f"rope_scaling.{key}={params[key]}: megatron-core's llama3 RoPE scaling fixes it at {fixed:g}")
    return int(theta), {"rope_scaling": True, "rope_scaling_factor": float(params.get("factor", 8.0))}


def rules(m, heads: dict) -> list[Rule]:
    """megatron GPTModel keys <-> LlamaForCausalLM (Mistral, Qwen2) keys."""
    qkv = SplitQKV(m.num_attention_heads, m.num_query_groups or m.num_attention_heads,
                   m.kv_channels or m.hidden_size // m.num_attention_heads)
    table = [rule("embedding.word_embeddings.weight", "model.embed_tokens.weight"),
             rule("decoder.final_layernorm.weight", "model.norm.weight")]
    if not m.tie_embeddings:  # tied: megatron has no output_layer.weight, HF re-ties lm_head
        table.append(rule("output_layer.weight", "lm_head.weight"))
    for i in range(m.num_layers):
        ours, theirs = f"decoder.layers.{i}.", f"model.layers.{i}."
        attn, mlp = f"{theirs}self_attn.", f"{theirs}mlp."
        table += [rule(ours + "input_layernorm.weight", theirs + "input_layernorm.weight"),
                  rule(ours + "pre_mlp_layernorm.weight", theirs + "post_attention_layernorm.weight")]
        for kind in ("weight", "bias") if m.add_bias_linear or m.add_qkv_bias else ("weight",):
            table.append(rule(f"{ours}self_attention.linear_qkv.{kind}",
                              (f"{attn}q_proj.{kind}", f"{attn}k_proj.{kind}", f"{attn}v_proj.{kind}"), qkv))
        for kind in ("weight", "bias") if m.add_bias_linear else ("weight",):
            table += [
                rule(f"{ours}self_attention.linear_proj.{kind}", f"{attn}o_proj.{kind}"),
                rule(f"{ours}mlp.linear_fc1.{kind}", (f"{mlp}gate_proj.{kind}", f"{mlp}up_proj.{kind}"), Chunk(2)),
                rule(f"{ours}mlp.linear_fc2.{kind}", f"{mlp}down_proj.{kind}"),
            ]
    return table
