"""Model families: one file per architecture (how to build it, its presets, FLOPs per token, its
transformer layers, its Hugging Face architectures). `common.py` holds what they share.
Listed in mtds/kinds.py; see mtds/README.md for what a family file provides."""
