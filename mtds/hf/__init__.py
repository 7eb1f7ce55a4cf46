"""Weight and config mappings between mtds's megatron-core models and Hugging Face `transformers`
architectures: one table of `mapping.Rule`s per architecture (`llama`, `gpt2`, `megatron_bert`, `t5`, ...),
built from the invertible tensor `transforms`, from which `mapping.to_hf` (export) and
`mapping.from_hf` (import) are both derived so the two directions cannot drift apart; plus the
tokenizer files an exported model directory needs (`tokenizer`)."""

import importlib


def architecture(name: str):
    """The table module mtds/hf/<name>.py. A family lists its architectures by name
    (`Family.hf_architectures`), so family files never import their export tables, while a table may
    read its family's constants (mtds/hf/t5.py reads mtds/models/t5.py's position buckets)."""
    return importlib.import_module(f"mtds.hf.{name}")
