"""mtds: config-driven GPT/BERT pretraining on megatron-core + DeepSpeed."""

from mtds import lazy_compile

__version__ = "0.1.0"

lazy_compile.install()  # torch.compile decorators in megatron-core and DeepSpeed act on first call (mtds/lazy_compile.py)
