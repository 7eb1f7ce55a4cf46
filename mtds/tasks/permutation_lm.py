"""Permutation language modeling (XLNet, Yang et al. 2019) on `_document` data, in one stream (MPNet).

Each sample is T = seq_length tokens and a factorization order z drawn per sample (mtds.data.plm_dataset);
the last K = ceil(T / c) tokens of the order are predicted, each from the tokens before it in the order,
never from itself. XLNet's two streams become one ordinary transformer pass: K query tokens (the mask
token's embedding, at the position ids of their targets) follow the T content tokens, and attention gets
a (T + K) x (T + K) mask built from the ranks:
    content i -> content j   iff rank(j) <= rank(i)     (XLNet's content stream)
    query   t -> content j   iff rank(j) <  rank(t)     (its query stream: never its own token)
    query   t -> query       never (its own earlier state arrives through the residual connection)
    content   -> query       never
Loss = cross entropy of the K query outputs, per token over the step. Position ids carry the original
positions: learned tables read them, and RoPE follows them (the GPT family's `query_tokens` head builds
mtds.models.query_gpt's GPTModel, which also runs the output layer on the K query tokens only).

The mask goes through the attention path document masks use (mtds.models.attention.SDPAttention takes a
given [b, 1, s, s] bool mask as the whole mask), dense on CPU and on GPU: a FlexAttention block mask
would need the ranks inside its mask function, and of a random order's [128 x 128] blocks only the K
query columns' are empty (about K / (T + K) of them), so it would skip little work; SDPA's
memory-efficient kernel takes the dense mask.
Generation runs in natural order: the context, then one query token at the next position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mtds.errors import ConfigError
from mtds.kind_contract import Task

DATA_LAYOUT = "document"
"""The ordinary GPT `_document` data."""


@dataclass
class Options:
    """[task] options of permutation_lm."""

    partial_prediction: float = 6.0
    """XLNet's c: each sample predicts the last K = ceil(seq_length / c) tokens of its order (XLNet: 6 or
    7). K must be between 1 and seq_length - 1 (a target needs a token before it in the order)."""


CHANGEABLE_ON_RESUME: tuple[str, ...] = ()
"""[task] keys a resumed run may change: none (c sets what each sample predicts)."""


def num_predict(opts: Options, seq_length: int) -> int:
    """K = ceil(T / c)."""
    return math.ceil(seq_length / opts.partial_prediction)


def validate(opts: Options, cfg) -> list[str]:
    c, T = opts.partial_prediction, cfg.seq_length
    if not (isinstance(c, (int, float)) and math.isfinite(c) and c > 1):
        return [f"task.partial_prediction={c!r} must be a number > 1 (XLNet's c: K = ceil(seq_length / c); 6 or 7)"]
    errs = []
    if not 1 <= num_predict(opts, T) <= T - 1:
        errs.append(f"task.partial_prediction={c} gives K={num_predict(opts, T)} targets of data.seq_length={T}; "
                    f"K must be 1 .. {T - 1} (every target needs a token before it): raise c")
    if cfg.model.tensor_model_parallel_size != 1:
        errs.append(f"model.tensor_model_parallel_size={cfg.model.tensor_model_parallel_size}: permutation LM is "
                    "not built or tested with tensor parallelism yet; set it to 1 (ZeRO and data parallelism work)")
    if cfg.data.document_mask:
        errs.append("data.document_mask=true: permutation LM's attention mask is its order's; set it to false")
    return errs


def model_heads(opts: Options) -> dict:
    """Query tokens sit at their targets' positions (RoPE must follow the position ids) and alone need
    logits (mtds.models.query_gpt)."""
    return {"query_tokens": True}


def flops_args(opts: Options, seq_length: int) -> dict:
    """The K query tokens run after each sample's T tokens: about K / T more compute."""
    return {"query_tokens": num_predict(opts, seq_length)}


def mask_token(tokenizer, key: str) -> int:
    """The tokenizer's mask token (the query tokens' input), or a one-line ConfigError naming the fix."""
    from data_tools.spm import TokenizerError

    try:
        return tokenizer.mask
    except TokenizerError:
        raise ConfigError(f"{key}: {tokenizer.model_path} has no mask token, which permutation LM's query tokens "
                          "are; train one with `python -m data_tools.train_tokenizer` (it adds [MASK]) or set "
                          "mask_token in a Hugging Face tokenizer's tokenizer_config.json") from None


def check_data(cfg, sources, tokenizer) -> None:
    """A tokenizer without a mask token is refused before DeepSpeed starts."""
    mask_token(tokenizer, "data.tokenizer_model" if cfg.data.paths else "data.default_dir")


def build_datasets(cfg, sources, tokenizer, sizes: list, dp_size: int):
    """(train, valid, test) PermutationGPTDatasets (mtds.data.plm_dataset) of seq_length tokens each."""
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder

    from mtds.data.plm_dataset import PermutationDatasetConfig, PermutationGPTDataset
    from mtds.data.splits import shared_dataset_fields

    config = PermutationDatasetConfig(
        **shared_dataset_fields(cfg, sources, tokenizer),
        reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=False, create_attention_mask=False,
        add_extra_token_to_sequence=False,  # T tokens, no next-token label
        data_parallel_size=dp_size,
        num_predict=num_predict(cfg.task, cfg.seq_length),
    )
    return BlendedMegatronDatasetBuilder(PermutationGPTDataset, sizes, lambda: True, config).build()


def attention_mask(ranks, target_ranks):
    """megatron's mask (True = may NOT attend) [b, 1, T + K, T + K] of the content tokens' ranks [b, T] and
    the targets' ranks [b, K] (see the module docstring). Every row keeps a key: content i itself, a
    query (rank >= 1) the token of rank 0."""
    import torch

    content = ranks[:, None, :] <= ranks[:, :, None]  # [b, T, T]: [i, j] = rank(j) <= rank(i)
    query = ranks[:, None, :] < target_ranks[:, :, None]  # [b, K, T]: [t, j] = rank(j) < rank(t)
    b, T, K = ranks.shape[0], ranks.shape[1], target_ranks.shape[1]
    no = torch.zeros(b, T + K, K, dtype=torch.bool, device=ranks.device)  # nothing attends a query token
    allowed = torch.cat([torch.cat([content, query], dim=1), no], dim=2)  # [b, T + K, T + K]
    return ~allowed[:, None]


def query_logits(model, input_ids, position_ids, ranks, targets, labels=None):
    """The one-stream forward: logits [b, K, V / TP] of the query tokens, or with `labels` [b, K] their
    per-token cross entropy [b, K] (fp32). input_ids, position_ids: [b, T + K] (mtds.data.plm_dataset)."""
    K = targets.shape[1]
    mask = attention_mask(ranks, ranks.gather(1, targets))
    # The output layer (and GPTModel's vocabulary-parallel cross entropy) on the K query tokens only.
    return model(input_ids, position_ids, mask, labels=labels, logits_of_last=K)


def count_targets(batch: dict, opts: Options | None = None) -> dict:
    """{"lm": the micro-batch's query tokens} (mtds.train.reduction: per-token losses)."""
    return {"lm": batch["loss_mask"].sum()}


def forward_step(model, batch: dict, device, opts: Options | None = None):
    """Cross entropy summed over the query tokens. Returns ({"lm": sum}, {})."""
    to = {k: batch[k].to(device, non_blocking=True) for k in ("input_ids", "position_ids", "ranks", "targets",
                                                             "labels", "loss_mask")}
    per_token = query_logits(model, to["input_ids"], to["position_ids"], to["ranks"], to["targets"],
                             labels=to["labels"])  # [b, K]
    return {"lm": (per_token.float() * to["loss_mask"].float()).sum()}, {}


def next_token_logits(model, context, tokenizer=None):
    """Natural-order generation: logits [b, 1, V] of one query token at position s after the context [b, s].
    The context keeps its last max_position_embeddings - 1 tokens, so the query has a position."""
    import torch

    if tokenizer is None:
        raise ConfigError("permutation LM generation needs the run's tokenizer (its mask token)")
    context = context[:, -(model.max_sequence_length - 1):]
    b, s = context.shape
    positions = torch.arange(s + 1, device=context.device).expand(b, s + 1)  # [b, s + 1]: the query at s
    ids = torch.cat([context, torch.full((b, 1), mask_token(tokenizer, "the run's tokenizer"),
                                         device=context.device)], dim=1)  # [b, s + 1]
    ranks = positions[:, :s]  # the identity order; the target (position s) comes last, at rank s
    return model(ids, positions, attention_mask(ranks, positions[:, s:]), logits_of_last=1)


TASK = Task(
    name="permutation_lm", options=Options, data_layout=DATA_LAYOUT, changeable_on_resume=CHANGEABLE_ON_RESUME,
    validate=validate, model_heads=model_heads, check_data=check_data, build_datasets=build_datasets,
    forward_step=forward_step, count_targets=count_targets, next_token_logits=next_token_logits,
    flops_args=flops_args,
)
