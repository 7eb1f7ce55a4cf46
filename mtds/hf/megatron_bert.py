"""mtds's BERT as Hugging Face `MegatronBertForMaskedLM`, the masked-LM head only.

An exact match: pre-LayerNorm layers, a final LayerNorm, and no LayerNorm on the summed
embeddings, as in megatron-core's BertModel. (`BertForMaskedLM` is post-LayerNorm, and
`RobertaPreLayerNormForMaskedLM` normalises the summed embeddings and counts positions from
pad_token_id + 1, so neither fits.) HF's layers always have biases and a token-type embedding:
a model trained without biases exports zero biases, one without the binary head (hence without
token types) one zero token-type embedding. The sentence-order pooler and binary head have no
place in the masked-LM model and are left out: an importer initialises them fresh.
"""

from __future__ import annotations

from mtds.hf.config_fields import Fields
from mtds.hf.mapping import Rule, dropped, rule
from mtds.hf.transforms import Duplicate, SplitQKV, Zeros

ARCHITECTURE = "MegatronBertForMaskedLM"
CAUSAL_LM = False
SEQ2SEQ_LM = False


def unsupported(m, heads: dict) -> str | None:
    """None if the model exports as MegatronBert, else what does not fit (BERT's positions are
    always learned)."""
    if heads.get("class_labels"):
        return "a sequence-classification head (MegatronBertForSequenceClassification takes it)"
    return body_unsupported(m)


def body_unsupported(m) -> str | None:
    """What of the encoder MegatronBert cannot express, or None."""
    if (m.normalization, m.activation) != ("LayerNorm", "gelu"):
        return f"normalization={m.normalization}, activation={m.activation}"
    if m.position_embedding_type != "learned_absolute":
        return f"position_embedding_type={m.position_embedding_type} (MegatronBert's positions are learned)"
    if m.num_query_groups not in (None, m.num_attention_heads):
        return f"num_query_groups={m.num_query_groups}"
    return None


def hf_config(m, heads: dict, vocab_size: int, tok_ids: dict) -> dict:
    """megatron's LayerNorm eps, no dropout."""
    return {
        "architectures": [ARCHITECTURE], "model_type": "megatron-bert",
        "vocab_size": vocab_size, "hidden_size": m.hidden_size, "num_hidden_layers": m.num_layers,
        "num_attention_heads": m.num_attention_heads, "intermediate_size": m.ffn_size(),
        "hidden_act": "gelu",  # F.gelu (erf) in megatron's MLP and in its BertLMHead
        "max_position_embeddings": m.max_position_embeddings, "position_embedding_type": "absolute",
        "type_vocab_size": 2 if heads.get("add_binary_head", False) else 1, "layer_norm_eps": m.layernorm_epsilon,
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "initializer_range": m.init_method_std,
        "tie_word_embeddings": m.tie_embeddings, "is_decoder": False, "use_cache": False, **tok_ids,
    }


def model_config(hf: dict) -> tuple[dict, dict]:
    """([model] keys, [task] keys) for a MegatronBert config.json. Two token types mean the sentence
    pair head (task.pair=sop; its pooler and binary head are not in the masked-LM model and start
    fresh), one means none."""
    f = Fields(hf)
    f.require("hidden_act", "gelu", why="megatron's exact (erf) GELU")
    f.require("position_embedding_type", "absolute", default="absolute")
    types = f.get("type_vocab_size", 2)
    if types not in (1, 2):
        raise ValueError(f"type_vocab_size={types}: megatron's BERT has 2 token types (with the sentence-pair head) or none")
    return dict(
        preset=None, num_layers=f.get("num_hidden_layers"), hidden_size=f.get("hidden_size"),
        num_attention_heads=f.get("num_attention_heads"), num_query_groups=None,
        ffn_hidden_size=f.get("intermediate_size"), max_position_embeddings=f.get("max_position_embeddings"),
        vocab_size=f.get("vocab_size"), position_embedding_type="learned_absolute", normalization="LayerNorm",
        layernorm_epsilon=float(f.get("layer_norm_eps", 1e-12)), activation="gelu",
        tie_embeddings=bool(f.get("tie_word_embeddings", True)), add_bias_linear=True,
        init_method_std=float(f.get("initializer_range", 0.02)),
    ), {"pair": "sop" if types == 2 else "none"}


def rules(m, heads: dict) -> list[Rule]:
    """megatron BertModel keys <-> MegatronBertForMaskedLM keys."""
    binary_head = heads.get("add_binary_head", False)
    table = body_rules(m, token_types=binary_head)
    table += [rule("lm_head.dense.weight", "cls.predictions.transform.dense.weight"),
              rule("lm_head.dense.bias", "cls.predictions.transform.dense.bias"),
              rule("lm_head.layer_norm.weight", "cls.predictions.transform.LayerNorm.weight"),
              rule("lm_head.layer_norm.bias", "cls.predictions.transform.LayerNorm.bias")]
    if binary_head:
        table.append(dropped("pooler.dense.weight", "pooler.dense.bias", "binary_head.weight", "binary_head.bias"))
    if m.tie_embeddings:
        table.append(rule("output_layer.bias", "cls.predictions.bias"))
    else:  # untied, HF also stops tying the decoder's bias to cls.predictions.bias
        table += [rule("output_layer.weight", "cls.predictions.decoder.weight"),
                  rule("output_layer.bias", ("cls.predictions.bias", "cls.predictions.decoder.bias"), Duplicate())]
    return table


def body_rules(m, token_types: bool) -> list[Rule]:
    """The encoder both MegatronBert heads share (`bert.` in HF): embeddings, layers, final LayerNorm.
    `token_types`: megatron has the two-row token-type embedding (else HF's one row is zero)."""
    h = m.hidden_size
    table = [rule("embedding.word_embeddings.weight", "bert.embeddings.word_embeddings.weight"),
             rule("embedding.position_embeddings.weight", "bert.embeddings.position_embeddings.weight"),
             rule("encoder.final_layernorm.weight", "bert.encoder.ln.weight"),
             rule("encoder.final_layernorm.bias", "bert.encoder.ln.bias")]
    token_type = "bert.embeddings.token_type_embeddings.weight"
    if token_types:
        table.append(rule("embedding.tokentype_embeddings.weight", token_type))
    else:  # no token types in megatron; HF adds type 0's embedding, so it is zero
        table.append(Rule((), (token_type,), Zeros((1, h))))
    qkv = SplitQKV(m.num_attention_heads, m.num_attention_heads, h // m.num_attention_heads)
    for i in range(m.num_layers):
        ours, theirs = f"encoder.layers.{i}.", f"bert.encoder.layer.{i}."
        table += [rule(f"{ours}{norm}.{kind}", f"{theirs}{ln}.{kind}")
                  for norm, ln in (("input_layernorm", "attention.ln"), ("pre_mlp_layernorm", "ln"))
                  for kind in ("weight", "bias")]
        attn = [f"{theirs}attention.self.{name}." for name in ("query", "key", "value")]
        table.append(rule(ours + "self_attention.linear_qkv.weight", tuple(a + "weight" for a in attn), qkv))
        if m.add_bias_linear:
            table.append(rule(ours + "self_attention.linear_qkv.bias", tuple(a + "bias" for a in attn), qkv))
        else:  # [hidden] each: MHA, heads*d = hidden
            table += [Rule((), (a + "bias",), Zeros((h,))) for a in attn]
        for linear, dense, out_size in (("self_attention.linear_proj", "attention.output.dense", h),
                                        ("mlp.linear_fc1", "intermediate.dense", m.ffn_size()),
                                        ("mlp.linear_fc2", "output.dense", h)):
            table.append(rule(f"{ours}{linear}.weight", f"{theirs}{dense}.weight"))
            table.append(rule(f"{ours}{linear}.bias", f"{theirs}{dense}.bias") if m.add_bias_linear
                         else Rule((), (f"{theirs}{dense}.bias",), Zeros((out_size,))))
    return table
