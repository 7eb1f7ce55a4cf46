"""BERT family: megatron-core BertModel (encoder-only, pre-LayerNorm) on its local layer spec with
SDPA attention (mtds.models.attention.SDPABertModel explains the one adaptation this needs).

The heads are the objective's choice: the masked-LM head, plus the binary (sentence-pair) head
when the task asks for it (`heads={"add_binary_head": True}`, see mtds/tasks/masked_lm.py); or,
for sequence classification (`heads={"class_labels": (...)}`, mtds/tasks/classification.py), the
pooler and a classification head in place of both (mtds.models.bert_classifier).
"""

from __future__ import annotations

import contextlib

from mtds.kind_contract import Family

_BERT_ARCH = dict(position_embedding_type="learned_absolute", normalization="LayerNorm", activation="gelu",
                  tie_embeddings=True)
PRESETS: dict[str, dict] = {  # BERT paper sizes (Devlin et al. 2019) and a tiny debug one
    "bert-tiny": dict(num_layers=4, hidden_size=256, num_attention_heads=4, max_position_embeddings=128, **_BERT_ARCH),
    "bert-base": dict(num_layers=12, hidden_size=768, num_attention_heads=12, max_position_embeddings=512,
                      **_BERT_ARCH),
    "bert-large": dict(num_layers=24, hidden_size=1024, num_attention_heads=16, max_position_embeddings=512,
                       **_BERT_ARCH),
}


def validate(m) -> list[str]:
    if m.position_embedding_type not in ("learned_absolute", "sinusoidal"):
        return ["model.position_embedding_type: BERT uses learned_absolute or sinusoidal positions"]
    if m.num_moe_experts:
        return ["model.num_moe_experts: mtds's BERT is dense (mixtures of experts are GPT-only); set it to none"]
    return []


def build(m, vocab_size: int, precision: str, on_gpu: bool, *, add_binary_head: bool = False,
          class_labels: tuple = ()):
    """BertModel with the masked-LM head, plus the binary head if asked; with `class_labels`, a
    classifier with one logit per label instead (no LM head)."""
    from megatron.core.models.bert.bert_layer_specs import bert_layer_local_spec

    from mtds.models.common import transformer_config, with_sdpa

    config = transformer_config(m, precision, on_gpu)
    spec = with_sdpa(bert_layer_local_spec, config.sequence_parallel)
    with _sequence_parallel_norms(config.sequence_parallel):
        model = _build(m, vocab_size, config, spec, add_binary_head, class_labels)
    if m.position_embedding_type == "sinusoidal":
        from mtds.models.sinusoidal_positions import use_sinusoidal_positions

        use_sinusoidal_positions(model, m)
    return model


@contextlib.contextmanager
def _sequence_parallel_norms(sequence_parallel: bool):
    """BertModel builds two norms outside the layer spec, the encoder's final norm and the LM head's,
    from module-level classes (megatron's WrappedTorchNorm without apex or Transformer Engine, which
    refuses sequence parallelism). Under sequence parallelism both are mtds's SequenceParallelNorm
    while the model is built; the layer spec's norms are swapped by with_sdpa."""
    if not sequence_parallel:
        yield
        return
    from megatron.core.models.bert import bert_lm_head
    from megatron.core.transformer import transformer_block

    from mtds.models.common import SequenceParallelNorm

    saved = transformer_block.LayerNormImpl, bert_lm_head.LNImpl
    transformer_block.LayerNormImpl = bert_lm_head.LNImpl = SequenceParallelNorm
    try:
        yield
    finally:
        transformer_block.LayerNormImpl, bert_lm_head.LNImpl = saved


def _build(m, vocab_size: int, config, spec, add_binary_head: bool, class_labels: tuple):
    from mtds.models.attention import SDPABertModel
    from mtds.models.common import language_model_args

    if class_labels:
        from mtds.models.bert_classifier import BertClassifier

        return BertClassifier(num_classes=len(class_labels), config=config,
                              transformer_layer_spec=spec, num_tokentypes=2,
                              **language_model_args(m, vocab_size))
    return SDPABertModel(
        config=config,
        transformer_layer_spec=spec,
        # Segment (token-type) embeddings only mean something with two segments, i.e. with the binary head.
        num_tokentypes=2 if add_binary_head else 0,
        add_binary_head=add_binary_head,
        **language_model_args(m, vocab_size),
    )


def flops_per_token(m, num_params: int, seq_length: int, vocab_size: int, lm_head: bool = True) -> float:
    """The dense count. Without the masked-LM head (a classifier: `lm_head=False`, from its task's
    flops_args) no output layer multiplies by the word embedding, so a tied embedding is a lookup
    only; the pooler and classification head (run on one position per sample) stay counted per
    token, an overcount of 6 * (h * h + h * classes) FLOPs."""
    from mtds.models.common import dense_flops_per_token

    flops = dense_flops_per_token(m, num_params, seq_length, vocab_size)
    if not lm_head and m.tie_embeddings:  # untied: dense_flops_per_token already left the lookup out
        flops -= 6 * vocab_size * m.hidden_size
    return flops


def transformer_layers(model) -> list:
    """The layers training.compile=layers compiles: BertModel's encoder stack."""
    return list(model.encoder.layers)


FAMILY = Family(
    name="bert", presets=PRESETS, default_preset="bert-tiny", validate=validate, build=build,
    flops_per_token=flops_per_token, transformer_layers=transformer_layers,
    hf_architectures=("megatron_bert", "megatron_bert_cls"),
)
