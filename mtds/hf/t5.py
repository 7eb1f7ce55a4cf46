"""mtds's T5 as Hugging Face `T5ForConditionalGeneration` (T5 v1.1's layout), export only.

The layers line up one to one: pre-norm RMSNorm without biases, T5's relative position bias
(same buckets, kept by the first layer of each stack in HF, by the stack in megatron), no bias
in cross-attention, unscaled attention scores (mtds.models.t5.T5_SOFTMAX_SCALE), an untied
output layer (HF then does not rescale the decoder's output). Per layer, megatron's fused
self-attention QKV is split per head as for Llama, and cross-attention's fused linear_kv, whose
rows are [heads, (k, v), head_dim], into k and v (`SplitKV`). The MLP is HF's
`DenseReluDense` (GELU, `gelu_new` for the tanh GELU) or its gated form `wi_0`/`wi_1` (SwiGLU:
`gated-silu`). megatron keeps the output layer under two names (`output_layer` and
`lm_head.output_layer`, one tensor): both map to HF's `lm_head.weight`.

HF cannot express learned absolute positions, LayerNorm, linear biases or a tied output layer
(megatron's tied T5 head adds a bias; HF's tied T5 rescales the decoder's output): refused.
"""

from __future__ import annotations

from mtds.hf.mapping import Rule, rule
from mtds.hf.transforms import Chunk, Duplicate, Inverse, SplitKV, SplitQKV
from mtds.models.t5 import RELATIVE_ATTENTION_BUCKETS, RELATIVE_ATTENTION_MAX_DISTANCE

ARCHITECTURE = "T5ForConditionalGeneration"
MODEL_TYPE = "t5"
CAUSAL_LM = False
SEQ2SEQ_LM = True
FEED_FORWARD_PROJ = {"gelu": "gelu", "gelu_tanh": "gelu_new", "swiglu": "gated-silu"}
"""mtds model.activation -> HF T5Config.feed_forward_proj. (HF's 'gated-gelu', T5 v1.1's and
Flan-T5's, is a gated tanh GELU, which mtds's activations do not include.)"""

model_config = None  # export only: mtds.import_hf does not read this architecture


def unsupported(m, heads: dict) -> str | None:
    """None if the model exports as HF T5, else what does not fit."""
    if m.position_embedding_type != "relative":
        return f"position_embedding_type={m.position_embedding_type} (HF's T5 has relative position buckets only)"
    if m.normalization != "RMSNorm":
        return f"normalization={m.normalization} (HF's T5 normalises with RMSNorm)"
    if m.add_bias_linear or m.add_qkv_bias:
        return "linear biases (HF's T5 has none)"
    if m.tie_embeddings:
        return ("tie_embeddings=true (megatron's tied T5 head adds an output bias, HF's tied T5 rescales the "
                "decoder output)")
    if m.activation not in FEED_FORWARD_PROJ:
        return f"activation={m.activation}"
    return None


def hf_config(m, heads: dict, vocab_size: int, tok_ids: dict) -> dict:
    """The decoder starts from <s>, as mtds's span-corruption data does (text_dec = <s> + target)."""
    return {
        "architectures": [ARCHITECTURE], "model_type": MODEL_TYPE,
        "vocab_size": vocab_size, "d_model": m.hidden_size, "d_kv": m.hidden_size // m.num_attention_heads,
        "d_ff": m.ffn_size(), "num_layers": m.num_layers, "num_decoder_layers": m.num_layers,
        "num_heads": m.num_attention_heads, "feed_forward_proj": FEED_FORWARD_PROJ[m.activation],
        "relative_attention_num_buckets": RELATIVE_ATTENTION_BUCKETS,
        "relative_attention_max_distance": RELATIVE_ATTENTION_MAX_DISTANCE,
        "layer_norm_epsilon": m.layernorm_epsilon, "dropout_rate": 0.0, "initializer_factor": 1.0,
        "tie_word_embeddings": False, "is_encoder_decoder": True, "use_cache": True,
        "decoder_start_token_id": tok_ids["bos_token_id"], **tok_ids,
    }


def rules(m, heads: dict) -> list[Rule]:
    """megatron T5Model keys <-> T5ForConditionalGeneration keys."""
    d = m.hidden_size // m.num_attention_heads
    qkv, kv = SplitQKV(m.num_attention_heads, m.num_attention_heads, d), SplitKV(m.num_attention_heads, d)
    table = [
        rule("embedding.word_embeddings.weight", "shared.weight"),  # HF ties both stacks' embed_tokens to it
        Rule(("output_layer.weight", "lm_head.output_layer.weight"), ("lm_head.weight",), Inverse(Duplicate())),
    ]
    for stack in ("encoder", "decoder"):
        table += [rule(f"{stack}_relative_pos_emb.relative_attention_bias.weight",  # [buckets, heads] both
                       f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
                  rule(f"{stack}.final_layernorm.weight", f"{stack}.final_layer_norm.weight")]
        for i in range(m.num_layers):
            ours, block = f"{stack}.layers.{i}.", f"{stack}.block.{i}.layer."
            attn = f"{block}0.SelfAttention."
            table += [rule(ours + "input_layernorm.weight", f"{block}0.layer_norm.weight"),
                      rule(ours + "self_attention.linear_qkv.weight", (attn + "q.weight", attn + "k.weight", attn + "v.weight"), qkv),
                      rule(ours + "self_attention.linear_proj.weight", attn + "o.weight")]
            mlp = 1
            if stack == "decoder":
                cross, mlp = f"{block}1.EncDecAttention.", 2
                table += [rule(ours + "pre_cross_attn_layernorm.weight", f"{block}1.layer_norm.weight"),
                          rule(ours + "cross_attention.linear_q.weight", cross + "q.weight"),
                          rule(ours + "cross_attention.linear_kv.weight", (cross + "k.weight", cross + "v.weight"), kv),
                          rule(ours + "cross_attention.linear_proj.weight", cross + "o.weight")]
            ff = f"{block}{mlp}.DenseReluDense."
            wi = rule(ours + "mlp.linear_fc1.weight", (ff + "wi_0.weight", ff + "wi_1.weight"), Chunk(2)) \
                if m.activation == "swiglu" else rule(ours + "mlp.linear_fc1.weight", ff + "wi.weight")
            table += [rule(ours + "pre_mlp_layernorm.weight", f"{block}{mlp}.layer_norm.weight"), wi,
                      rule(ours + "mlp.linear_fc2.weight", ff + "wo.weight")]
    return table
