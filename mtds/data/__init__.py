"""Training data: sources, splits, the loader, the tokenizer and every dataset class (mtds/README.md, Layout)."""
