"""Hugging Face `Qwen2ForCausalLM`, both ways: Llama's weight layout (mtds/hf/llama.py) with biases
on the q/k/v projections only (megatron's add_qkv_bias), none on o_proj or the MLP."""

from __future__ import annotations

from mtds.hf import llama
from mtds.hf.config_fields import Fields

ARCHITECTURE = "Qwen2ForCausalLM"
MODEL_TYPE = "qwen2"
CAUSAL_LM = True
SEQ2SEQ_LM = False
rules = llama.rules


def unsupported(m, heads: dict) -> str | None:
    if m.num_moe_experts:
        return f"num_moe_experts={m.num_moe_experts} (a mixture of experts; a dense model's table)"
    if llama.layer_mismatch(m):
        return llama.layer_mismatch(m)
    if not m.add_qkv_bias or m.add_bias_linear:
        return f"add_qkv_bias={m.add_qkv_bias}, add_bias_linear={m.add_bias_linear} (Qwen2 has q/k/v biases only)"
    return None


def hf_config(m, heads: dict, vocab_size: int, tok_ids: dict) -> dict:
    config = llama.hf_config(m, heads, vocab_size, tok_ids)
    for key in ("attention_bias", "mlp_bias", "head_dim"):  # Qwen2's q/k/v biases are implied
        config.pop(key)
    return {**config, "architectures": [ARCHITECTURE], "model_type": MODEL_TYPE, "use_sliding_window": False}


def model_config(hf: dict) -> tuple[dict, dict]:
    f = Fields(hf)
    f.require("hidden_act", "silu")
    f.require("use_sliding_window", False, default=False,
              why="mtds attends to the whole sequence; Qwen2 checkpoints train without the window")
    return llama.llama_family_model(f, add_qkv_bias=True), {}
