"""A mixture-of-experts GPT (RoPE + RMSNorm + SwiGLU experts) as Hugging Face `MixtralForCausalLM`,
both ways.

Attention, norms and embeddings are Llama's table (mtds/hf/llama.py). Each layer's MLP is
megatron-core's MoE layer: its router is Mixtral's gate ([experts, hidden]), and each expert's
fused SwiGLU fc1 [gate; up] is Mixtral's w1 (gate) and w3 (up), fc2 its w2. The routing is the
same function: megatron's top-k router takes the top-k logits and softmaxes over them, Mixtral
softmaxes over all and renormalises the top k, which is the same weights; neither drops tokens.
"""

from __future__ import annotations

from mtds.hf import llama
from mtds.hf.config_fields import Fields
from mtds.hf.mapping import Rule, rule
from mtds.hf.transforms import Chunk

ARCHITECTURE = "MixtralForCausalLM"
MODEL_TYPE = "mixtral"
CAUSAL_LM = True
SEQ2SEQ_LM = False


def unsupported(m, heads: dict) -> str | None:
    if not m.num_moe_experts:
        return "num_moe_experts=none (Mixtral is a mixture of experts)"
    if llama.layer_mismatch(m):
        return llama.layer_mismatch(m)
    if m.add_bias_linear or m.add_qkv_bias:
        return "linear biases (Mixtral has none)"
    return None


def hf_config(m, heads: dict, vocab_size: int, tok_ids: dict) -> dict:
    config = llama.hf_config(m, heads, vocab_size, tok_ids)
    for key in ("attention_bias", "mlp_bias"):
        config.pop(key)
    return {**config, "architectures": [ARCHITECTURE], "model_type": MODEL_TYPE,
            "intermediate_size": m.moe_ffn_hidden_size or m.ffn_size(), "num_local_experts": m.num_moe_experts,
            "num_experts_per_tok": m.moe_router_topk, "router_aux_loss_coef": m.moe_aux_loss_coeff,
            "output_router_logits": False, "sliding_window": None}


def model_config(hf: dict) -> tuple[dict, dict]:
    f = Fields(hf)
    f.require("hidden_act", "silu")
    f.require("sliding_window", None, default=None, why="mtds attends to the whole sequence")
    model = llama.llama_family_model(f, add_bias_linear=False)
    model.update(num_moe_experts=f.get("num_local_experts"), moe_router_topk=f.get("num_experts_per_tok"),
                 moe_aux_loss_coeff=float(f.get("router_aux_loss_coef", 0.02)),
                 moe_ffn_hidden_size=f.get("intermediate_size"))
    return model, {}


def rules(m, heads: dict) -> list[Rule]:
    """megatron GPTModel (MoE) keys <-> MixtralForCausalLM keys, as transformers saves them."""
    table = [r for r in llama.rules(m, heads) if ".mlp." not in r.ours[0]]  # attention, norms, embeddings
    for i in range(m.num_layers):
        ours, theirs = f"decoder.layers.{i}.mlp.", f"model.layers.{i}.block_sparse_moe."
        table.append(rule(ours + "router.weight", theirs + "gate.weight"))
        for e in range(m.num_moe_experts):
            expert, hf_expert = f"{ours}experts.local_experts.{e}.", f"{theirs}experts.{e}."
            table += [rule(expert + "linear_fc1.weight", (hf_expert + "w1.weight", hf_expert + "w3.weight"), Chunk(2)),
                      rule(expert + "linear_fc2.weight", hf_expert + "w2.weight")]
    return table
