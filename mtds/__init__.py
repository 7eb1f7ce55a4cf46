"""mtds: config-driven GPT/BERT pretraining on megatron-core + DeepSpeed."""

__version__ = "0.1.0"
