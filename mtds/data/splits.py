"""Train/valid/test splits of the prefixes, and the BlendedMegatronDatasetConfig fields every
task's megatron-core dataset shares (mtds/tasks/ build their datasets from these)."""

from __future__ import annotations

import os

from mtds.errors import ConfigError


def split_string(split: str) -> str:
    return split.replace("/", ",")


def check_splits(prefixes: list[str], split: str) -> None:
    """Every split with a nonzero weight must get at least one document of every prefix.

    megatron-core's GPTDataset loops forever computing epochs for a split with no tokens
    (e.g. the test split of "969,30,1" on a corpus of fewer than ~500 documents), so catch it.
    """
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from megatron.core.datasets.utils import normalize

    weights = normalize([float(w) for w in split_string(split).split(",")])
    for prefix in prefixes:
        n_docs = len(IndexedDataset(prefix).document_indices) - 1
        start = 0.0
        for name, w in zip(("train", "valid", "test"), weights):
            docs = int(round((start + w) * n_docs)) - int(round(start * n_docs))
            start += w
            if w > 0 and docs == 0:
                raise ConfigError(
                    f"data.split={split!r} leaves the {name} split of {prefix} ({n_docs} documents) empty; "
                    f"use a larger corpus or give {name} more weight or 0 (e.g. data.split=90,10,0)"
                )


def shared_dataset_fields(cfg, sources, tokenizer) -> dict:
    """The BlendedMegatronDatasetConfig fields that every task's dataset shares (`sources`: a
    mtds.data.sources.DataSources)."""
    if sources.valid_prefixes:  # all of `prefixes` trains; the validation set is read whole; no test
        data = dict(blend_per_split=[(sources.prefixes, sources.weights), (sources.valid_prefixes, None), None])
    else:
        data = dict(blend=(sources.prefixes, sources.weights), split=split_string(cfg.data.split))
    # data.index_cache=false: "", not None. megatron-core's GPTDataset replaces a None path_to_cache
    # by a folder next to the data (<prefix dir>/cache/, unkeyed by content, unchecked, and fatal on
    # read-only data); an empty path is falsy there, so every rank builds the indices in memory and
    # nothing is written (gpt_dataset.py: `if not path_to_cache ...`; test_sampler.py guards it on a
    # read-only data dir). The BERT/T5 datasets cannot: masked_lm/span_corruption refuse the setting.
    cache = os.path.join(cfg.data.cache_dir or os.path.join(cfg.training.run_dir, "index_cache"),
                         sources.identity_key()) if cfg.data.index_cache else ""
    if cache:
        from mtds.ckpt.safe_loading import check_index_cache
        from mtds.parallel.process_groups import barrier

        check_index_cache(cache)  # megatron-core unpickles these files (allow_pickle=True)
        # Every rank checks before any rank writes: a rank still checking once read a file rank 0 was
        # writing for this run, refused it, and stopped (TP=2 BERT on a loaded machine).
        barrier()
    return dict(random_seed=cfg.data.seed, sequence_length=cfg.seq_length, **data, path_to_cache=cache,
                tokenizer=tokenizer)
