"""BERT: megatron-core BertModel on the SDPA layer spec, its masked-LM + sentence-order dataset,
and the forward step that turns one micro-batch into (MLM + SOP loss, metrics).

The model type is a config choice (`--model-type bert`, presets bert-tiny/base/large); GPT and
BERT share the entry point, training loop and checkpoints. Hooks: mtds.model.build_model,
mtds.data.build_datasets, mtds.steps.forward_step.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from megatron.core.models.bert.bert_model import BertModel

from mtds.attention import SDPAttention
from mtds.config import ConfigError, ModelConfig, RunConfig


class SDPABertModel(BertModel):
    """BertModel whose padding mask is laid out for mtds.attention.SDPAttention.

    BertModel.__init__ asks `_sanity_check_attention_and_get_attn_mask_dimension` which mask
    layout the spec's core attention wants: "b1ss" for megatron's own DotProductAttention,
    otherwise it assumes Transformer Engine and compares TE versions (a TypeError when TE is
    not installed). This override is the whole adaptation: for SDPAttention it answers "b11s",
    i.e. `bert_extended_attention_mask` turns the [b, s] padding mask (1 = token) into
    [b, 1, 1, s] with True = masked, which SDPAttention inverts and SDPA broadcasts over heads
    and queries.

    Why b11s rather than DotProductAttention's b1ss ([b, 1, s, s] = pad(query) | pad(key)): for
    every real query the two are identical (tests/test_bert.py checks the logits), but b1ss
    masks *every* key of a padded query row, and a fully masked row is where SDPA kernels have
    produced NaN (PyTorch issues #103963, #110213), which would then leak through the values.
    b11s has no empty rows and is s times smaller. Padded positions carry no loss either way.
    """

    def _sanity_check_attention_and_get_attn_mask_dimension(self) -> str:
        core = self.transformer_layer_spec.submodules.self_attention.submodules.core_attention
        if core is SDPAttention:
            return "b11s"
        return super()._sanity_check_attention_and_get_attn_mask_dimension()


def bert_layer_spec():
    """megatron-core's local BERT layer spec (pre-LayerNorm layers, padding attention mask)
    with SDPAttention as the core attention."""
    from megatron.core.models.bert.bert_layer_specs import bert_layer_local_spec

    from mtds.model import _with_sdpa

    return _with_sdpa(bert_layer_local_spec)


def build_bert(m: ModelConfig, vocab_size: int, precision: str, on_gpu: bool) -> torch.nn.Module:
    """BertModel with the MLM head, and the binary (sentence-order) head unless disabled."""
    from mtds.model import transformer_config

    return SDPABertModel(
        config=transformer_config(m, precision, on_gpu),
        # Segment (token-type) embeddings only mean something with two segments, i.e. with SOP.
        num_tokentypes=2 if m.bert_binary_head else 0,
        transformer_layer_spec=bert_layer_spec(),
        vocab_size=vocab_size,
        max_sequence_length=m.max_position_embeddings,
        pre_process=True,
        post_process=True,
        parallel_output=True,
        share_embeddings_and_output_weights=m.tie_embeddings,
        position_embedding_type=m.position_embedding_type,
        add_binary_head=m.bert_binary_head,
    )


def bert_dataset_config(cfg: RunConfig, sources, tokenizer):
    """megatron-core BERTMaskedWordPieceDatasetConfig for the run config.

    Masking is classic BERT (Devlin et al. 2019): `data.masking_probability` of the tokens,
    chosen one token at a time (max n-gram 1), replaced 80% by [MASK], 10% by a random id,
    10% left unchanged. Whole-word masking stays off: the dataset finds word continuations
    by WordPiece's "##" prefix in `tokenizer.inv_vocab`, and sentencepiece marks word *starts*
    ("▁") instead, so with a sentencepiece vocabulary it would only glue the rare literal
    "##..." pieces to their predecessor. With it off, every token except [CLS]/[SEP] is a
    candidate on its own, so the "##" check has no effect.
    """
    from megatron.core.datasets.bert_dataset import BERTMaskedWordPieceDatasetConfig

    from mtds.data import shared_dataset_fields

    return BERTMaskedWordPieceDatasetConfig(
        **shared_dataset_fields(cfg, sources, tokenizer),
        masking_probability=cfg.data.masking_probability,
        short_sequence_probability=cfg.data.short_seq_prob,
        masking_max_ngram=1,
        masking_do_full_word=False,
        masking_do_permutation=False,
        masking_use_longer_ngrams=False,
        masking_use_geometric_distribution=False,
        # With the binary head each sample is two segments, swapped with probability 0.5
        # (`is_random` = 1 when swapped: the sentence-order label). Without it: one segment.
        classification_head=cfg.model.bert_binary_head,
    )


# megatron-core's BERT sample builder (helpers.cpp build_mapping) only uses documents with at
# least as many sentences as a sample needs (2 with the binary head, else 1) and no sentence
# over LONG_SENTENCE_LEN tokens, and it loops over epochs until it has num_samples: with no
# usable document it never returns. A split with no documents at all raises IndexError.
LONG_SENTENCE_LEN = 512


@functools.lru_cache(maxsize=16)  # pretrain.py checks before DeepSpeed starts, the builder again
def usable_documents(prefix: str, min_sentences: int) -> tuple[np.ndarray, np.ndarray]:
    """Per document of an IndexedDataset: (can megatron-core's BERT dataset sample from it,
    its number of sentences)."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(prefix)
    docs = ds.document_indices  # [n_docs + 1] sentence offsets
    n_sentences = np.diff(docs)
    long_before = np.concatenate([[0], np.cumsum(ds.sequence_lengths > LONG_SENTENCE_LEN)])
    has_long = long_before[docs[1:]] > long_before[docs[:-1]]
    # helpers.cpp only looks for long sentences in documents of two or more sentences.
    return (n_sentences >= min_sentences) & ~(has_long & (n_sentences > 1)), n_sentences


def check_bert_data(cfg: RunConfig, sources, tokenizer) -> None:
    """The BERT data checks of build_bert_datasets, for pretrain.py to run before DeepSpeed starts."""
    _check_splits(bert_dataset_config(cfg, sources, tokenizer), cfg, sources)


def _split_ranges(config, sources) -> list[tuple[str, str, tuple[float, float]]]:
    """(split name, prefix, [start, end) fraction of its documents) for every split read."""
    if sources.valid_prefixes:  # separate validation set: each prefix read whole
        return ([("train", p, (0.0, 1.0)) for p in sources.prefixes]
                + [("valid", p, (0.0, 1.0)) for p in sources.valid_prefixes])
    return [(name, p, config.split_matrix[i]) for p in sources.prefixes
            for i, name in enumerate(("train", "valid", "test")) if config.split_matrix[i] is not None]


def _check_splits(config, cfg: RunConfig, sources) -> None:
    """One-line ConfigError instead of a hang when a split has no document BERT can sample."""
    need = 2 if config.classification_head else 1
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
            hint = ("the sentence-order head needs sentence-split data: preprocess with "
                    "`python -m data_tools.preprocess --split-sentences` and give the _sentence prefix "
                    "(or set model.bert_binary_head=false)")
        elif sources.valid_prefixes:
            hint = f"give {key} more (or longer) documents"
        else:
            hint = f"give more data, more weight to {name} in data.split, or 0 (e.g. data.split=90,10,0)"
        raise ConfigError(f"{key}: {where}; {hint}")


def build_bert_datasets(cfg: RunConfig, sources, tokenizer, sizes: list[int]):
    """(train, valid, test) BERTMaskedWordPieceDatasets over `_sentence` .bin/.idx prefixes.

    Each sample is a dict of [seq_length] arrays: text (masked ids), types (segment 0/1),
    labels (original id at masked positions, -1 elsewhere), loss_mask, padding_mask
    (1 = token, 0 = pad), and the scalars is_random and truncated. A split without documents
    BERT can sample from is a ConfigError (megatron-core would loop forever).
    """
    from megatron.core.datasets.bert_dataset import BERTMaskedWordPieceDataset
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder

    config = bert_dataset_config(cfg, sources, tokenizer)
    _check_splits(config, cfg, sources)  # for every caller, not only pretrain.py (cached per prefix)
    return BlendedMegatronDatasetBuilder(BERTMaskedWordPieceDataset, sizes, lambda: True, config).build()


def bert_forward(model: torch.nn.Module, batch: dict, device: torch.device):
    """MLM loss (mean over masked positions) + SOP loss (binary-head cross entropy).

    Returns (loss, {mlm_loss, mlm_acc[, sop_loss, sop_acc]}) with detached metrics.
    """
    tokens = batch["text"].to(device, non_blocking=True)  # [b, s]
    padding_mask = batch["padding_mask"].to(device, non_blocking=True)  # [b, s], 1 = token
    labels = batch["labels"].to(device, non_blocking=True)  # [b, s], -1 = not masked
    loss_mask = batch["loss_mask"].to(device, non_blocking=True).bool()  # [b, s]
    bert = getattr(model, "module", model)  # the DeepSpeed engine wraps the BertModel
    with_sop = bert.add_binary_head
    types = batch["types"].to(device, non_blocking=True) if with_sop else None
    # Without lm_labels BertModel returns the logits ([b, s, V]) and the binary logits ([b, 2]).
    # Taking the loss from the logits here (rather than BertModel's per-token loss over all
    # positions) scores only the ~15% masked rows and gives the accuracy from the same rows.
    logits, binary_logits = model(tokens, padding_mask, tokentype_ids=types)
    masked_logits = logits[loss_mask].float()  # [n_masked, V]
    targets = labels[loss_mask]
    mlm_loss = F.cross_entropy(masked_logits, targets)
    metrics = {"mlm_loss": mlm_loss.detach(),
               "mlm_acc": (masked_logits.detach().argmax(-1) == targets).float().mean()}
    if not with_sop:
        return mlm_loss, metrics
    sop_labels = batch["is_random"].to(device, non_blocking=True).long()  # [b], 1 = segments swapped
    sop_logits = binary_logits.float()
    sop_loss = F.cross_entropy(sop_logits, sop_labels)
    metrics["sop_loss"] = sop_loss.detach()
    metrics["sop_acc"] = (sop_logits.detach().argmax(-1) == sop_labels).float().mean()
    return mlm_loss + sop_loss, metrics
