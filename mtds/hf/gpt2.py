"""A learned-position + LayerNorm + GELU GPT as Hugging Face `GPT2LMHeadModel`.

GPT-2 has biases on every linear layer, multi-head attention only and tied embeddings, so the
model must too. Its Conv1D layers store weights [in, out], the transpose of torch.nn.Linear, and
its one c_attn projection outputs [all q | all k | all v], where megatron groups q, k, v per head.
"""

from __future__ import annotations

from mtds.hf.config_fields import Fields
from mtds.hf.mapping import Rule, rule
from mtds.hf.transforms import Chain, Chunk, Inverse, SplitQKV, Transpose

ARCHITECTURE = "GPT2LMHeadModel"
CAUSAL_LM = True
SEQ2SEQ_LM = False
ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_new"}  # ours -> HF's name (GPT-2's own is gelu_new)
HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}


def unsupported(m, heads: dict) -> str | None:
    """None if the model exports as GPT-2, else what does not fit."""
    if m.num_moe_experts:
        return f"num_moe_experts={m.num_moe_experts} (a mixture of experts; a dense model's table)"
    combo = (m.position_embedding_type, m.normalization, m.activation)
    if combo[:2] != ("learned_absolute", "LayerNorm") or combo[2] not in ACTIVATIONS:
        return f"position_embedding_type={combo[0]}, normalization={combo[1]}, activation={combo[2]}"
    problems = [p for ok, p in ((m.add_bias_linear, "add_bias_linear=false"),
                                (m.tie_embeddings, "tie_embeddings=false"),
                                (m.num_query_groups in (None, m.num_attention_heads),
                                 f"num_query_groups={m.num_query_groups}"),
                                (m.kv_channels in (None, m.hidden_size // m.num_attention_heads),
                                 "kv_channels=none")) if not ok]
    return ", ".join(problems) or None


def hf_config(m, heads: dict, vocab_size: int, tok_ids: dict) -> dict:
    return {
        "architectures": [ARCHITECTURE], "model_type": "gpt2",
        "vocab_size": vocab_size, "n_positions": m.max_position_embeddings, "n_embd": m.hidden_size,
        "n_layer": m.num_layers, "n_head": m.num_attention_heads, "n_inner": m.ffn_size(),
        "activation_function": ACTIVATIONS[m.activation],
        "layer_norm_epsilon": m.layernorm_epsilon, "initializer_range": m.init_method_std,
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True, "use_cache": True, **tok_ids,
    }


def model_config(hf: dict) -> tuple[dict, dict]:
    """([model] keys, [task] keys) for a GPT-2 config.json; ValueError naming a field mtds cannot express."""
    f = Fields(hf)
    act = f.get("activation_function", "gelu_new")
    if act not in HF_ACTIVATIONS:
        raise ValueError(f"activation_function={act!r}: mtds supports {', '.join(HF_ACTIVATIONS)}")
    f.require("scale_attn_weights", True, default=True)
    f.require("scale_attn_by_inverse_layer_idx", False, default=False)
    f.require("reorder_and_upcast_attn", False, default=False, why="megatron's attention runs in the model's dtype")
    f.require("tie_word_embeddings", True, default=True, why="GPT-2's lm_head is its input embedding")
    hidden = f.get("n_embd")
    return dict(
        preset=None, num_layers=f.get("n_layer"), hidden_size=hidden,
        num_attention_heads=f.get("n_head"), num_query_groups=None, ffn_hidden_size=f.get("n_inner", 4 * hidden),
        max_position_embeddings=f.get("n_positions"), vocab_size=f.get("vocab_size"),
        position_embedding_type="learned_absolute", normalization="LayerNorm",
        layernorm_epsilon=float(f.get("layer_norm_epsilon", 1e-5)), activation=HF_ACTIVATIONS[act],
        tie_embeddings=True, add_bias_linear=True, init_method_std=float(f.get("initializer_range", 0.02)),
    ), {}


def rules(m, heads: dict) -> list[Rule]:
    """megatron GPTModel keys <-> GPT2LMHeadModel keys."""
    # fused [heads x (q, k, v) x d, ...] -> q, k, v [heads*d, ...] -> c_attn [3*heads*d, ...]
    qkv_bias = Chain((SplitQKV(m.num_attention_heads, m.num_attention_heads, m.hidden_size // m.num_attention_heads),
                      Inverse(Chunk(3))))
    qkv_weight = Chain((qkv_bias, Transpose()))  # ... -> [hidden, 3*heads*d] for Conv1D
    table = [rule("embedding.word_embeddings.weight", "transformer.wte.weight"),
             rule("embedding.position_embeddings.weight", "transformer.wpe.weight"),
             rule("decoder.final_layernorm.weight", "transformer.ln_f.weight"),
             rule("decoder.final_layernorm.bias", "transformer.ln_f.bias")]
    for i in range(m.num_layers):
        ours, theirs = f"decoder.layers.{i}.", f"transformer.h.{i}."
        table += [rule(f"{ours}{norm}.{kind}", f"{theirs}{ln}.{kind}")
                  for norm, ln in (("input_layernorm", "ln_1"), ("pre_mlp_layernorm", "ln_2"))
                  for kind in ("weight", "bias")]
        table += [rule(ours + "self_attention.linear_qkv.weight", theirs + "attn.c_attn.weight", qkv_weight),
                  rule(ours + "self_attention.linear_qkv.bias", theirs + "attn.c_attn.bias", qkv_bias)]
        for linear, conv in (("self_attention.linear_proj", "attn.c_proj"), ("mlp.linear_fc1", "mlp.c_fc"),
                             ("mlp.linear_fc2", "mlp.c_proj")):
            table += [rule(f"{ours}{linear}.weight", f"{theirs}{conv}.weight", Transpose()),
                      rule(f"{ours}{linear}.bias", f"{theirs}{conv}.bias")]
    return table
