"""Hugging Face `MistralForCausalLM` import: Llama's weight layout (mtds/hf/llama.py) with one
more attention rule, the sliding window.

mtds's attention (PyTorch SDPA, causal) sees the whole sequence. Up to the window's length that
is exactly Mistral's attention, so a window shorter than the model's context caps the imported
model's max_position_embeddings at the window (with a note): every sequence mtds can then train
or generate on is computed as Mistral computes it. Exported, such a run is a Llama (same tensors).
"""

from __future__ import annotations

from mtds.hf import llama
from mtds.hf.config_fields import Fields

ARCHITECTURE = "MistralForCausalLM"
CAUSAL_LM = True
SEQ2SEQ_LM = False
rules = llama.rules


def unsupported(m, heads: dict) -> str | None:
    return "import only: mtds exports Mistral-shaped models as LlamaForCausalLM (the same tensors)"


def model_config(hf: dict) -> tuple[dict, dict]:
    f = Fields(hf)
    f.require("hidden_act", "silu")
    model = llama.llama_family_model(f, add_bias_linear=False)
    window = f.get("sliding_window", None)
    if window is not None and window < model["max_position_embeddings"]:
        model["max_position_embeddings"] = window
    return model, {}


def notes(hf: dict) -> list[str]:
    window, context = hf.get("sliding_window"), hf.get("max_position_embeddings")
    if window is not None and window < context:
        return [f"sliding_window={window} < max_position_embeddings={context}: imported with "
                f"max_position_embeddings={window}, the longest sequence mtds computes exactly as Mistral does"]
    return []
