"""Causal language modelling: next-token loss over `_document` data (megatron-core GPTDataset).

Each sample is seq_length + 1 consecutive tokens of the shuffled, concatenated documents
(documents end with the EOD token written by `preprocess --append-eod`).
"""

from __future__ import annotations

from dataclasses import dataclass

from mtds.kind_contract import Task

DATA_LAYOUT = "document"
"""preprocess output this task reads: `_document` (one sequence per document)."""


@dataclass
class Options:
    """[task] options of causal_lm."""

    eod_mask_loss: bool = False
    """No loss on the positions whose input token is the end-of-document token (Megatron-LM's
    --eod-mask-loss): the model is not trained to predict what follows a document's end."""


CHANGEABLE_ON_RESUME: tuple[str, ...] = ("eod_mask_loss",)
"""[task] keys a resumed run may change (they change no parameter)."""


def validate(opts: Options, cfg) -> list[str]:
    return []


def model_heads(opts: Options) -> dict:
    """Build switches for the family: a language model needs only its output layer."""
    return {}


def check_data(cfg, sources, tokenizer) -> None:
    """Nothing beyond the shared checks (mtds/data/): any `_document` prefix works."""


def build_datasets(cfg, sources, tokenizer, sizes: list, dp_size: int):
    """(train, valid, test) GPTDatasets with `sizes` samples each, via BlendedMegatronDatasetBuilder.

    Each sample is a dict of [seq_length] tensors: tokens, labels (tokens shifted by one),
    loss_mask, position_ids; with data.document_mask also document_ids (mtds.data.document_ids).
    """
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    from mtds.data.splits import shared_dataset_fields
    from mtds.data.document_ids import DocumentIdsGPTDataset

    config = GPTDatasetConfig(
        **shared_dataset_fields(cfg, sources, tokenizer),
        # data.document_mask: megatron-core restarts position ids after each EOD, and each sample
        # carries its tokens' document ids for SDPAttention (no dense [s, s] mask; mtds.models.document_attention);
        # otherwise SDPAttention applies the causal mask.
        reset_position_ids=cfg.data.document_mask,
        reset_attention_mask=False,
        eod_mask_loss=cfg.task.eod_mask_loss,
        create_attention_mask=False,
        data_parallel_size=dp_size,
    )
    dataset = DocumentIdsGPTDataset if cfg.data.document_mask else GPTDataset
    return BlendedMegatronDatasetBuilder(dataset, sizes, lambda: True, config).build()


def count_targets(batch: dict, opts: Options | None = None) -> dict:
    """{"lm": tokens the loss mask lets in} of a micro-batch (mtds.train.reduction: per-token losses)."""
    return {"lm": batch["loss_mask"].sum()}


def forward_step(model, batch: dict, device, opts: Options | None = None):
    """Next-token loss summed over the unmasked tokens. Batch tensors are [b, s]. Returns ({"lm": sum}, {})."""
    tokens = batch["tokens"].to(device, non_blocking=True)
    labels = batch["labels"].to(device, non_blocking=True)
    loss_mask = batch["loss_mask"].to(device, non_blocking=True).float()
    position_ids = batch["position_ids"].to(device, non_blocking=True)
    mask = batch.get("document_ids")  # [b, s] (data.document_mask, gpt_sft packing): SDPAttention keeps to each
    mask = None if mask is None else mask.to(device, non_blocking=True)
    # With labels, GPTModel returns the per-token cross entropy [b, s] (fp32).
    per_token = model(tokens, position_ids, mask, labels=labels)
    return {"lm": (per_token.float() * loss_mask).sum()}, {}


def token_logits(model, batch: dict, device, opts: Options | None = None):
    """(logits [b, s, V_padded], labels [b, s], loss mask [b, s]) of a training micro-batch, the forward of
    `forward_step` without the loss: knowledge distillation scores them (mtds/train/distill.py)."""
    tokens = batch["tokens"].to(device, non_blocking=True)
    position_ids = batch["position_ids"].to(device, non_blocking=True)
    mask = batch.get("document_ids")
    mask = None if mask is None else mask.to(device, non_blocking=True)
    return (model(tokens, position_ids, mask), batch["labels"].to(device, non_blocking=True),
            batch["loss_mask"].to(device, non_blocking=True))


def next_token_logits(model, context, tokenizer=None):
    """Logits [b, s, V_padded] for a context [b, s] of token ids (mtds.generate; the tokenizer is not needed)."""
    import torch

    position_ids = torch.arange(context.size(1), device=context.device).unsqueeze(0)
    return model(context, position_ids, None)


def cached_logits(model, max_length: int):
    """A KV cache for generation (mtds.kv_cache: megatron-core's static inference context)."""
    from mtds.kv_cache import KVCache

    return KVCache(model, max_length)


TASK = Task(
    name="causal_lm", options=Options, data_layout=DATA_LAYOUT, changeable_on_resume=CHANGEABLE_ON_RESUME,
    validate=validate, model_heads=model_heads, check_data=check_data, build_datasets=build_datasets,
    forward_step=forward_step, count_targets=count_targets, next_token_logits=next_token_logits,
    continuation_logits=next_token_logits, token_logits=token_logits,
    cached_logits=cached_logits,
    lora_heads=(),
)
