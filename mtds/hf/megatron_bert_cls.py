"""mtds's BERT classifier (kind bert_cls, mtds.models.bert_classifier) as Hugging Face
`MegatronBertForSequenceClassification`.

The same encoder as the masked-LM export (mtds.hf.megatron_bert: pre-LayerNorm layers, a final
LayerNorm, no LayerNorm on the summed embeddings), with two token types, and the head maps one to
one: megatron-core's Pooler (dense + tanh on position 0) is HF's `bert.pooler.dense`, the
classification head its `classifier` (HF also puts dropout between them, as ours does). The label
names go to `id2label` / `label2id`.
"""

from __future__ import annotations

from mtds.hf import megatron_bert
from mtds.hf.mapping import Rule, rule

ARCHITECTURE = "MegatronBertForSequenceClassification"
CAUSAL_LM = False
SEQ2SEQ_LM = False

model_config = None  # export only: mtds.import_hf does not read this architecture


def unsupported(m, heads: dict) -> str | None:
    """None if the classifier exports, else what does not fit."""
    if not heads.get("class_labels"):
        return "a model without a sequence-classification head (kind bert_cls)"
    return megatron_bert.body_unsupported(m)


def hf_config(m, heads: dict, vocab_size: int, tok_ids: dict) -> dict:
    """The masked-LM export's config with two token types, the labels, and no dropout."""
    labels = [str(label) for label in heads["class_labels"]]
    config = megatron_bert.hf_config(m, {"add_binary_head": True}, vocab_size, tok_ids)
    return {**config, "architectures": [ARCHITECTURE], "num_labels": len(labels),
            "id2label": dict(enumerate(labels)), "label2id": {name: i for i, name in enumerate(labels)},
            "problem_type": "single_label_classification", "classifier_dropout": None}


def rules(m, heads: dict) -> list[Rule]:
    """megatron BertClassifier keys <-> MegatronBertForSequenceClassification keys."""
    return megatron_bert.body_rules(m, token_types=True) + [
        rule("pooler.dense.weight", "bert.pooler.dense.weight"),
        rule("pooler.dense.bias", "bert.pooler.dense.bias"),
        rule("classification_head.weight", "classifier.weight"),
        rule("classification_head.bias", "classifier.bias"),
    ]
