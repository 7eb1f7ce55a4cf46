"""Masked language modelling with an optional sentence-pair head: BERT pretraining on `_sentence`
data (megatron-core BERTMaskedWordPieceDataset; mtds.data.nsp_dataset for next-sentence pairs).

Loss = MLM loss (per masked token) + the pair loss (cross entropy of the binary head, per pair):
sentence order (`task.pair="sop"`, the default), next sentence (`"nsp"`), or none. Metrics
mlm_loss, mlm_acc and <pair>_loss, <pair>_acc.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from mtds.errors import ConfigError
from mtds.kind_contract import Task

DATA_LAYOUT = "sentence"
"""preprocess output this task reads: `_sentence` (`--split-sentences`: one sequence per sentence)."""


@dataclass
class Options:
    """[task] options of masked_lm."""

    pair: str = "sop"
    """The sentence-pair objective of BertModel's binary head: "sop" (sentence order: A|B of one
    document, swapped half of the time; ALBERT's), "nsp" (next sentence: B follows A, or half of
    the time comes from another document; the BERT paper's) or "none" (masked LM only, no head)."""
    masking_probability: float = 0.15
    """Fraction of tokens masked (80% [MASK], 10% random, 10% unchanged)."""
    short_seq_prob: float = 0.1
    """Probability of a sample shorter than seq_length."""


PAIRS = ("sop", "nsp", "none")
CHANGEABLE_ON_RESUME: tuple[str, ...] = ("masking_probability",)
"""[task] keys a resumed run may change (they change no parameter and not which sample comes next:
`pair` is the objective, `short_seq_prob` lays the samples out)."""


def validate(opts: Options, cfg) -> list[str]:
    errs = []
    if opts.pair not in PAIRS:
        errs.append(f"task.pair={opts.pair!r}: choose one of {', '.join(PAIRS)}")
    if not 0 < opts.masking_probability < 1:
        errs.append(f"task.masking_probability={opts.masking_probability} must be in (0, 1)")
    if not 0 <= opts.short_seq_prob <= 1:
        errs.append(f"task.short_seq_prob={opts.short_seq_prob} must be in [0, 1]")
    errs += index_cache_required(cfg)
    return errs


def index_cache_required(cfg) -> list[str]:
    """megatron-core's masked datasets (BERT here, T5's span corruption) always write their sample
    index to a cache folder that every rank reads: data.index_cache=false cannot hold for them."""
    if cfg.data.index_cache:
        return []
    return [f"data.index_cache=false: {cfg.model.model_type}'s megatron-core dataset always writes its sample index "
            "to a cache that every rank reads; keep it true and set data.cache_dir to a folder every node sees"]


def model_heads(opts: Options) -> dict:
    """Build switches for the family: the binary head for the sentence-pair label."""
    return {"add_binary_head": opts.pair != "none"}


def check_data(cfg, sources, tokenizer) -> None:
    """One-line ConfigError, before DeepSpeed starts, for a split BERT cannot sample from, and the
    tokenizer's one-line error for a missing [CLS]/[SEP]/[MASK] (a Hugging Face tokenizer may lack them)."""
    tokenizer.cls, tokenizer.sep, tokenizer.mask  # noqa: B018 -- each raises if the tokenizer lacks it
    config = dataset_config(cfg, sources, tokenizer)
    check_sentence_splits(config, cfg, sources, min_sentences=2 if config.classification_head else 1)


def dataset_config(cfg, sources, tokenizer):
    """megatron-core BERTMaskedWordPieceDatasetConfig for the run config.

    Masking is classic BERT (Devlin et al. 2019): `task.masking_probability` of the tokens,
    chosen one token at a time (max n-gram 1), replaced 80% by [MASK], 10% by a random id,
    10% left unchanged. Whole-word masking stays off: the dataset finds word continuations
    by WordPiece's "##" prefix in `tokenizer.inv_vocab`, and sentencepiece marks word *starts*
    ("▁") instead, so with a sentencepiece vocabulary it would only glue the rare literal
    "##..." pieces to their predecessor. With it off, every token except [CLS]/[SEP] is a
    candidate on its own, so the "##" check has no effect.
    """
    from megatron.core.datasets.bert_dataset import BERTMaskedWordPieceDatasetConfig

    from mtds.data.splits import shared_dataset_fields

    return BERTMaskedWordPieceDatasetConfig(
        **shared_dataset_fields(cfg, sources, tokenizer),
        masking_probability=cfg.task.masking_probability,
        short_sequence_probability=cfg.task.short_seq_prob,
        masking_max_ngram=1,
        masking_do_full_word=False,
        masking_do_permutation=False,
        masking_use_longer_ngrams=False,
        masking_use_geometric_distribution=False,
        # With a pair objective each sample is two segments; `is_random` is the label (SOP: 1 when
        # swapped; NSP: 1 when B comes from another document). Without one: one segment.
        classification_head=cfg.task.pair != "none",
    )


# megatron-core's BERT sample builder (helpers.cpp build_mapping) only uses documents with at
# least as many sentences as a sample needs (2 with the binary head, else 1) and no sentence
# over LONG_SENTENCE_LEN tokens, and it loops over epochs until it has num_samples: with no
# usable document it never returns. A split with no documents at all raises IndexError.
LONG_SENTENCE_LEN = 512


@functools.lru_cache(maxsize=16)  # checked before DeepSpeed starts, and again by the builder
def usable_documents(prefix: str, min_sentences: int) -> tuple:
    """Per document of an IndexedDataset: (can megatron-core's BERT dataset sample from it,
    its number of sentences)."""
    import numpy as np
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(prefix)
    docs = ds.document_indices  # [n_docs + 1] sentence offsets
    n_sentences = np.diff(docs)
    long_before = np.concatenate([[0], np.cumsum(ds.sequence_lengths > LONG_SENTENCE_LEN)])
    has_long = long_before[docs[1:]] > long_before[docs[:-1]]
    # helpers.cpp only looks for long sentences in documents of two or more sentences.
    return (n_sentences >= min_sentences) & ~(has_long & (n_sentences > 1)), n_sentences


def _split_ranges(config, sources) -> list[tuple[str, str, tuple[float, float]]]:
    """(split name, prefix, [start, end) fraction of its documents) for every split read."""
    if sources.valid_prefixes:  # separate validation set: each prefix read whole
        return ([("train", p, (0.0, 1.0)) for p in sources.prefixes]
                + [("valid", p, (0.0, 1.0)) for p in sources.valid_prefixes])
    return [(name, p, config.split_matrix[i]) for p in sources.prefixes
            for i, name in enumerate(("train", "valid", "test")) if config.split_matrix[i] is not None]


def check_sentence_splits(config, cfg, sources, min_sentences: int) -> None:
    """One-line ConfigError instead of a hang when a split has no document megatron-core's BERT
    (or T5) dataset can sample: one of >= min_sentences sentences (2 for a sentence pair)."""
    need = min_sentences
    per_prefix = {}
    for name, prefix, bounds in _split_ranges(config, sources):
        if prefix not in per_prefix:
            per_prefix[prefix] = usable_documents(prefix, need)
        usable, n_sentences = per_prefix[prefix]
        n = len(usable)
        beg, end = (int(round(b * n)) for b in bounds)
        if usable[beg:end].any():
            continue
        key = "data.valid_paths" if sources.valid_prefixes and name == "valid" else "data.paths"
        how = "whole" if sources.valid_prefixes else f"data.split={cfg.data.split!r}"
        where = (f"{prefix}: the {name} split (documents {beg}..{end} of {n}, {how}) "
                 f"has no document of >= {need} sentences with none over {LONG_SENTENCE_LEN} tokens")
        if need == 2 and (n_sentences <= 1).all():
            hint = ("a sentence-pair objective needs sentence-split data: preprocess with "
                    "`python -m data_tools.preprocess --split-sentences` and give the _sentence prefix "
                    "(or set task.pair=none)")
        elif sources.valid_prefixes:
            hint = f"give {key} more (or longer) documents"
        else:
            hint = f"give more data, more weight to {name} in data.split, or 0 (e.g. data.split=90,10,0)"
        raise ConfigError(f"{key}: {where}; {hint}")


def build_datasets(cfg, sources, tokenizer, sizes: list, dp_size: int):
    """(train, valid, test) BERTMaskedWordPieceDatasets over `_sentence` .bin/.idx prefixes.

    Each sample is a dict of [seq_length] arrays: text (masked ids), types (segment 0/1),
    labels (original id at masked positions, -1 elsewhere), loss_mask, padding_mask
    (1 = token, 0 = pad), and the scalars is_random and truncated. A split without documents
    BERT can sample from is a ConfigError (megatron-core would loop forever).
    """
    from megatron.core.datasets.bert_dataset import BERTMaskedWordPieceDataset
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder

    from mtds.data.nsp_dataset import NSPMaskedWordPieceDataset

    config = dataset_config(cfg, sources, tokenizer)
    # for every caller, not only pretrain.py (cached per prefix)
    check_sentence_splits(config, cfg, sources, min_sentences=2 if config.classification_head else 1)
    dataset = NSPMaskedWordPieceDataset if cfg.task.pair == "nsp" else BERTMaskedWordPieceDataset
    return BlendedMegatronDatasetBuilder(dataset, sizes, lambda: True, config).build()


def count_targets(batch: dict, opts: Options | None = None) -> dict:
    """{"mlm": masked tokens[, <pair>: sentence pairs]} of a micro-batch: the MLM loss is per masked
    token over the step, the pair loss per pair (mtds.train.reduction)."""
    pair = (opts or Options()).pair
    counts = {"mlm": batch["loss_mask"].sum()}
    if pair != "none":
        counts[pair] = len(batch["is_random"])
    return counts


def forward_step(model, batch: dict, device, opts: Options | None = None):
    """MLM cross entropy summed over the masked positions, and the pair loss (binary-head cross
    entropy) summed over the samples: ({"mlm": sum[, <pair>: sum]}, {mlm_acc[, <pair>_acc]}) with
    detached (hits, count) metrics. The trainer logs the parts as mlm_loss and <pair>_loss."""
    import torch.nn.functional as F

    tokens = batch["text"].to(device, non_blocking=True)  # [b, s]
    padding_mask = batch["padding_mask"].to(device, non_blocking=True)  # [b, s], 1 = token
    labels = batch["labels"].to(device, non_blocking=True)  # [b, s], -1 = not masked
    loss_mask = batch["loss_mask"].to(device, non_blocking=True).bool()  # [b, s]
    bert = getattr(model, "module", model)  # the DeepSpeed engine wraps the BertModel
    with_pair = bert.add_binary_head
    types = batch["types"].to(device, non_blocking=True) if with_pair else None
    # Without lm_labels BertModel returns the logits ([b, s, V]) and the binary logits ([b, 2]).
    # Taking the loss from the logits here (rather than BertModel's per-token loss over all
    # positions) scores only the ~15% masked rows and gives the accuracy from the same rows.
    logits, binary_logits = model(tokens, padding_mask, tokentype_ids=types)  # logits [b, s, V / TP]
    # Under tensor parallelism each rank holds 1/TP of the vocabulary's logits: gather the masked
    # rows only (~15%) to whole rows (the identity at TP 1), so loss and accuracy are the same code.
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    masked_logits = gather_from_tensor_model_parallel_region(logits[loss_mask]).float()  # [n_masked, V]
    targets = labels[loss_mask]
    losses = {"mlm": F.cross_entropy(masked_logits, targets, reduction="sum")}
    metrics = {"mlm_acc": ((masked_logits.detach().argmax(-1) == targets).float().sum(), targets.numel())}
    if not with_pair:
        return losses, metrics
    pair = (opts or Options()).pair
    pair_labels = batch["is_random"].to(device, non_blocking=True).long()  # [b], 1 = swapped / random B
    pair_logits = binary_logits.float()  # [b, 2]
    losses[pair] = F.cross_entropy(pair_logits, pair_labels, reduction="sum")
    metrics[f"{pair}_acc"] = ((pair_logits.detach().argmax(-1) == pair_labels).float().sum(), pair_labels.numel())
    return losses, metrics


TASK = Task(
    name="masked_lm", options=Options, data_layout=DATA_LAYOUT, changeable_on_resume=CHANGEABLE_ON_RESUME,
    validate=validate, model_heads=model_heads, check_data=check_data, build_datasets=build_datasets,
    forward_step=forward_step, count_targets=count_targets,
)
