"""mtds's T5 as Hugging Face `T5ForConditionalGeneration` (placeholder: not exported yet)."""

from __future__ import annotations

ARCHITECTURE = "T5ForConditionalGeneration"
CAUSAL_LM = False


def unsupported(m, heads: dict) -> str | None:
    return "T5 export is not written yet"
