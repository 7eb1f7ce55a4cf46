"""Supervised fine-tuning of a causal LM on chat / instruction data (kind gpt_sft).

Data: what `python -m data_tools.sft` writes, a token prefix `..._sft_document` (data.paths) with
its loss-mask side file `..._sft_document_loss_mask`. Samples are packed into sequences of
data.seq_length, each attending only to itself (mtds.data.sft_dataset). Loss = mean next-token cross
entropy over the target tokens the mask lets in (assistant content and its end-of-turn token),
per token over the whole optimizer step (mtds.train.reduction), so packed or not, the same samples
give the same loss.
Start from a pretrained GPT with `training.init_from=RUN_DIR` (same family, weights only).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from mtds.errors import ConfigError
from mtds.kind_contract import Task
# pretraining's loss and generation
from mtds.tasks.causal_lm import cached_logits, count_targets, forward_step, next_token_logits, token_logits

DATA_LAYOUT = "sft"
"""preprocess output this task reads: data_tools.sft's `_sft_document` token prefix + loss-mask side file."""


@dataclass
class Options:
    """[task] options of sft."""

    pack: bool = True
    """Several whole samples per sequence (each attends only to itself); false: one per sequence,
    the rest padding (the same loss, more compute)."""


CHANGEABLE_ON_RESUME: tuple[str, ...] = ()
"""`pack` decides which samples each sequence holds, so a resume must keep it."""


def validate(opts: Options, cfg) -> list[str]:
    errs = []
    if not cfg.data.paths:
        errs.append(f"model_type={cfg.model.model_type!r} needs data.paths (there is no default chat corpus): "
                    "build one with `python -m data_tools.sft` and give its _sft_document prefix")
    if cfg.data.weights is not None:
        errs.append("data.weights: SFT reads all of data.paths, concatenated; drop data.weights")
    return errs


def model_heads(opts: Options) -> dict:
    """Build switches for the family: a language model needs only its output layer."""
    return {}


def check_data(cfg, sources, tokenizer) -> None:
    """Every prefix needs its loss-mask side file with the same sample lengths (one line if not)."""
    import numpy as np
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from data_tools.sft import loss_mask_prefix

    for prefix in sources.all_prefixes:
        side = loss_mask_prefix(prefix)
        rebuild = "rebuild both with `python -m data_tools.sft` (give the _sft_document prefix as data.paths)"
        if not (os.path.isfile(side + ".bin") and os.path.isfile(side + ".idx")):
            raise ConfigError(f"data.paths: {prefix} has no loss-mask side file {side}.bin/.idx; {rebuild}")
        tokens, masks = IndexedDataset(prefix), IndexedDataset(side)  # kept alive: their arrays view the files
        if not np.array_equal(tokens.sequence_lengths, masks.sequence_lengths):
            raise ConfigError(f"data.paths: {side}.idx does not match {prefix}.idx (other sample lengths); {rebuild}")


def _split_samples(cfg, sources) -> list:
    """[n, 2] (prefix index, sample index) arrays for train, valid, test; None where a split is unused.
    data.split divides each prefix's samples into contiguous ranges as megatron-core's builder does."""
    import numpy as np
    from megatron.core.datasets.blended_megatron_dataset_config import convert_split_vector_to_split_matrix
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from megatron.core.datasets.utils import normalize

    from mtds.data.splits import split_string

    counts = [len(IndexedDataset(p)) for p in sources.all_prefixes]

    def rows(prefix_ids, bounds):
        parts = [np.stack([np.full(e - b, p), np.arange(b, e)], 1)
                 for p in prefix_ids for b, e in [(int(round(bounds[0] * counts[p])), int(round(bounds[1] * counts[p])))]]
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros((0, 2), np.int64)

    n_train = len(sources.prefixes)
    if sources.valid_prefixes:  # separate validation set, read whole; no test split
        return [rows(range(n_train), (0.0, 1.0)), rows(range(n_train, len(counts)), (0.0, 1.0)), None]
    matrix = convert_split_vector_to_split_matrix(normalize([float(w) for w in split_string(cfg.data.split).split(",")]))
    return [None if b is None else rows(range(n_train), b) for b in matrix]


def build_datasets(cfg, sources, tokenizer, sizes: list, dp_size: int):
    """(train, valid, test) PackedSFTDatasets with at least `sizes` packed sequences each (None for
    a split that is unused or asked for 0). The packing is cheap (lengths only), so no index cache."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from mtds.parallel.process_groups import is_rank0
    from mtds.data.sft_dataset import PackedSFTDataset
    from data_tools.sft import loss_mask_prefix

    pairs = [(IndexedDataset(p), IndexedDataset(loss_mask_prefix(p))) for p in sources.all_prefixes]
    out = []
    for name, samples, size in zip(("train", "valid", "test"), _split_samples(cfg, sources), sizes):
        if samples is None or not size or len(samples) == 0:
            out.append(None)
            continue
        ds = PackedSFTDataset(pairs, samples, cfg.seq_length, size, cfg.data.seed, tokenizer.pad, cfg.task.pack)
        if ds.dropped and is_rank0():
            print(f"note: {ds.dropped} {name} samples have no target token within data.seq_length + 1 = "
                  f"{cfg.seq_length + 1} tokens and are skipped; preprocess with a smaller --max-length")
        out.append(ds if len(ds) else None)
    return tuple(out)


TASK = Task(
    name="sft", options=Options, data_layout=DATA_LAYOUT, changeable_on_resume=CHANGEABLE_ON_RESUME,
    validate=validate, model_heads=model_heads, check_data=check_data, build_datasets=build_datasets,
    forward_step=forward_step, count_targets=count_targets, next_token_logits=next_token_logits,
    continuation_logits=next_token_logits, token_logits=token_logits,
    cached_logits=cached_logits,
    lora_heads=(),
)
