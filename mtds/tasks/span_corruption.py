"""T5's span corruption on `_sentence` data (megatron-core T5MaskedWordPieceDataset).

Spans of the text (about `masking_probability` of its tokens, 1 to `max_span_length` tokens each)
are cut out of the encoder input, each replaced by its own sentinel <extra_id_0>, <extra_id_1>, ...
in order; the decoder writes them back, each after its sentinel:
    encoder  The <extra_id_0> sat on <extra_id_1> mat.
    decoder  <s> <extra_id_0> cat <extra_id_1> the
    target   <extra_id_0> cat <extra_id_1> the </s>
Loss = cross entropy over the target tokens (mean over the micro-batch's); metric token_acc,
the share of target tokens the decoder's argmax gets right. The tokenizer must have the sentinels (`data_tools.train_tokenizer
--sentinel-tokens`); the default corpus builds such a tokenizer for this task.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mtds.errors import ConfigError
from mtds.kind_contract import Task
from mtds.tasks.masked_lm import index_cache_required

DATA_LAYOUT = "span"
"""`_sentence` data (`preprocess --split-sentences`) from a tokenizer with T5's sentinel tokens."""


@dataclass
class Options:
    """[task] options of span_corruption."""

    masking_probability: float = 0.15
    """Fraction of the tokens cut out into spans (T5's 15%)."""
    max_span_length: int = 10
    """Longest span; lengths 1..max are drawn with probability ~ 1/length (mean 3.4 at 10, near T5's 3)."""
    short_seq_prob: float = 0.1
    """Probability of a sample shorter than seq_length."""
    decoder_seq_length: int | None = None
    """Decoder (target) length; None = the longest a sample can need, 1 + 2 * masked tokens
    (every span one token long), so no sample is cut: 37 for a 128-token encoder at 15%."""


CHANGEABLE_ON_RESUME: tuple[str, ...] = ()
"""[task] keys a resumed run may change: none (`short_seq_prob` lays the samples out, so a resume
would read others; the rest change what the model is trained to do)."""


def max_masked_tokens(opts: Options, seq_length: int) -> int:
    """The most tokens megatron-core masks in a sample: masking_probability of seq_length - 2."""
    return math.floor(opts.masking_probability * (seq_length - 2))


def decoder_length(opts: Options, seq_length: int) -> int:
    return opts.decoder_seq_length or 1 + 2 * max_masked_tokens(opts, seq_length)


def validate(opts: Options, cfg) -> list[str]:
    errs = []
    if not 0 < opts.masking_probability < 1:
        errs.append(f"task.masking_probability={opts.masking_probability} must be in (0, 1)")
    if opts.max_span_length < 1:
        errs.append(f"task.max_span_length={opts.max_span_length} must be >= 1")
    if not 0 <= opts.short_seq_prob <= 1:
        errs.append(f"task.short_seq_prob={opts.short_seq_prob} must be in [0, 1]")
    errs += index_cache_required(cfg)
    if errs:
        return errs
    masked = max_masked_tokens(opts, cfg.seq_length)
    if masked < 1:
        errs.append(f"data.seq_length={cfg.seq_length} masks no token at task.masking_probability="
                    f"{opts.masking_probability}; give a longer sequence")
    need = 1 + 2 * masked
    if opts.decoder_seq_length is not None and opts.decoder_seq_length < need:
        errs.append(f"task.decoder_seq_length={opts.decoder_seq_length} is shorter than a sample can need "
                    f"({need}: <s>, up to {masked} masked tokens and as many sentinels); give >= {need} or none")
    if cfg.model.position_embedding_type == "learned_absolute" and decoder_length(opts, cfg.seq_length) > \
            cfg.model.max_position_embeddings:
        errs.append(f"task.decoder_seq_length={decoder_length(opts, cfg.seq_length)} exceeds "
                    f"model.max_position_embeddings={cfg.model.max_position_embeddings}")
    return errs


def model_heads(opts: Options) -> dict:
    """No build switches: the T5 family has one head, the decoder's output layer."""
    return {}


def flops_args(opts: Options, seq_length: int) -> dict:
    """What the family's FLOPs count needs beyond the encoder length: the decoder's."""
    return {"decoder_seq_length": decoder_length(opts, seq_length)}


def check_data(cfg, sources, tokenizer) -> None:
    """One-line ConfigError, before DeepSpeed starts, for a tokenizer without enough sentinels or a
    decoder start token, or a split with no document to sample from."""
    sentinels = tokenizer.additional_special_tokens_ids
    need = max_masked_tokens(cfg.task, cfg.seq_length)  # one sentinel per span, at most one span per masked token
    key = "data.tokenizer_model" if cfg.data.paths else "data.default_dir"
    if not sentinels:
        raise ConfigError(f"{key}: {tokenizer.model_path} has no T5 sentinel tokens (<extra_id_0>, ...); train "
                          "one with `python -m data_tools.train_tokenizer --sentinel-tokens` and preprocess the "
                          "data with it")
    if len(sentinels) < need:
        raise ConfigError(f"{key}: {tokenizer.model_path} has {len(sentinels)} sentinel tokens, and a "
                          f"{cfg.seq_length}-token sample can have {need} spans; retrain it with "
                          f"`--sentinel-tokens {need}` or shorten data.seq_length")
    if tokenizer.bos is None:
        raise ConfigError(f"{key}: {tokenizer.model_path} has no bos token, which starts T5's decoder input; "
                          "set bos_token in its tokenizer_config.json")
    from mtds.tasks.masked_lm import check_sentence_splits

    check_sentence_splits(dataset_config(cfg, sources, tokenizer), cfg, sources, min_sentences=1)


def dataset_config(cfg, sources, tokenizer):
    """megatron-core T5MaskedWordPieceDatasetConfig for the run config.

    Spans are n-grams of single tokens (whole-word grouping stays off for sentencepiece, see
    mtds.tasks.masked_lm.dataset_config), of length n in 1..max_span_length with probability
    ~ 1/n (megatron's default n-gram draw; its geometric alternative, SpanBERT's, has mean ~4.5)."""
    from megatron.core.datasets.t5_dataset import T5MaskedWordPieceDatasetConfig

    from mtds.data.splits import shared_dataset_fields

    return T5MaskedWordPieceDatasetConfig(
        **shared_dataset_fields(cfg, sources, tokenizer),
        sequence_length_decoder=decoder_length(cfg.task, cfg.seq_length),
        masking_probability=cfg.task.masking_probability,
        short_sequence_probability=cfg.task.short_seq_prob,
        masking_max_ngram=cfg.task.max_span_length,
        masking_do_full_word=False,
        masking_do_permutation=False,
        masking_use_longer_ngrams=False,
        masking_use_geometric_distribution=False,
    )


def build_datasets(cfg, sources, tokenizer, sizes: list, dp_size: int):
    """(train, valid, test) T5MaskedWordPieceDatasets over `_sentence` prefixes.

    Each sample is a dict of arrays: text_enc [seq_length] (encoder input with sentinels, 0-padded),
    text_dec [decoder_seq_length] (<s> then the target shifted right), labels [decoder_seq_length]
    (the target: each sentinel and its span, then </s>), loss_mask, enc_mask and dec_mask (1 = token),
    and the scalar truncated.
    """
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.t5_dataset import T5MaskedWordPieceDataset

    from mtds.tasks.masked_lm import check_sentence_splits

    config = dataset_config(cfg, sources, tokenizer)
    check_sentence_splits(config, cfg, sources, min_sentences=1)
    return BlendedMegatronDatasetBuilder(T5MaskedWordPieceDataset, sizes, lambda: True, config).build()


def count_targets(batch: dict, opts: Options | None = None) -> dict:
    """{"lm": decoder target tokens} of a micro-batch (mtds.train.reduction: per-token losses)."""
    return {"lm": batch["loss_mask"].sum()}


def forward_step(model, batch: dict, device, opts: Options | None = None):
    """Cross entropy summed over the target tokens. Returns ({"lm": sum}, {token_acc: (hits, targets)})
    with detached metrics."""
    import torch.nn.functional as F
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    enc = batch["text_enc"].to(device, non_blocking=True)  # [b, s_enc]
    dec = batch["text_dec"].to(device, non_blocking=True)  # [b, s_dec]
    labels = batch["labels"].to(device, non_blocking=True)  # [b, s_dec]
    loss_mask = batch["loss_mask"].to(device, non_blocking=True).bool()  # [b, s_dec]
    logits = seq2seq_logits(model, enc, dec, batch["enc_mask"].to(device, non_blocking=True))  # [b, s_dec, V / TP]
    target_logits = gather_from_tensor_model_parallel_region(logits[loss_mask]).float()  # [n_targets, V]
    targets = labels[loss_mask]
    loss = F.cross_entropy(target_logits, targets, reduction="sum")
    hits = (target_logits.detach().argmax(-1) == targets).float().sum()
    return {"lm": loss}, {"token_acc": (hits, targets.numel())}


def seq2seq_logits(model, encoder_ids, decoder_ids, encoder_padding=None):
    """T5Model's logits [b, s_dec, V] for encoder ids [b, s_enc] and decoder ids [b, s_dec].

    Masks (megatron's: True = may not attend): the encoder's self-attention and the decoder's
    cross-attention skip the encoder's padding keys ([b, 1, 1, s_enc], SDPA broadcasts it over
    heads and queries); the decoder's self-attention is causal (its spec's mask type), which keeps
    every real position off the padding after it. `encoder_padding` [b, s_enc]: 1 = token; None = all tokens.
    """
    pad_keys = None if encoder_padding is None else (encoder_padding == 0)[:, None, None, :]
    return model(encoder_ids, decoder_ids, pad_keys, None, pad_keys)


def render_generation(prompt: str, new_ids: list[int], tokenizer) -> str:
    """Span filling: the prompt with each sentinel replaced by the span the decoder wrote after it
    (a sentinel the decoder wrote nothing for stays as it is)."""
    sentinels = tokenizer.additional_special_tokens_ids
    spans: dict[int, list[int]] = {}
    current = None
    for t in new_ids:
        if t in sentinels:
            current = spans.setdefault(sentinels.index(t), [])
        elif t in (tokenizer.eos, tokenizer.pad):
            break
        elif current is not None:
            current.append(t)
    out = prompt
    from data_tools.spm import sentinel_piece

    for i, ids in spans.items():
        out = out.replace(sentinel_piece(i), tokenizer.detokenize(ids), 1)
    return out


TASK = Task(
    name="span_corruption", options=Options, data_layout=DATA_LAYOUT, changeable_on_resume=CHANGEABLE_ON_RESUME,
    validate=validate, model_heads=model_heads, check_data=check_data, build_datasets=build_datasets,
    forward_step=forward_step, count_targets=count_targets, seq2seq_logits=seq2seq_logits,
    render_generation=render_generation, flops_args=flops_args,
)
