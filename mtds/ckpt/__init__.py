"""Checkpoints: the on-disk layout (layout.py, a leaf every other module reads), crash-safe save
and load through the DeepSpeed engine (save_load.py), the checks before a resume (resume.py), the
universal form for another world size (universal.py), and one fp32 state dict from the shards for
the tools (consolidate.py)."""
