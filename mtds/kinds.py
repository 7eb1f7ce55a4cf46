"""Every kind of model mtds trains, in one explicit table: a kind is a model family (the network:
mtds/models/<family>.py) plus an objective (its data and loss: mtds/tasks/<task>.py).

`--model-type` / `model.model_type` names a kind. Everything kind-specific is reached through this
table, so the trainer, the checkpoints and the tools never test which kind is running. Adding a
kind is one family or task file plus one line here (the checklist is in mtds/README.md).

Importing this module imports no torch: family and task files import torch and megatron-core
inside their functions, so configs are checked (and bad ones refused) in well under a second.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

from mtds.models import bert, gpt, t5
from mtds.tasks import causal_lm, classification, masked_lm, sft, span_corruption


@dataclass(frozen=True)
class Kind:
    family: ModuleType
    """mtds/models/<family>.py: presets, validate, build, flops_per_token, transformer_layers,
    hf_architectures."""
    task: ModuleType
    """mtds/tasks/<task>.py: Options ([task]), DATA_LAYOUT, CHANGEABLE_ON_RESUME, validate,
    model_heads, check_data, build_datasets, forward_step (next_token_logits if it generates, report if
    its evaluation metrics need all samples at once)."""


KINDS: dict[str, Kind] = {
    "gpt": Kind(family=gpt, task=causal_lm),  # decoder-only, next-token loss
    "bert": Kind(family=bert, task=masked_lm),  # encoder-only, masked LM + sentence order
    "gpt_sft": Kind(family=gpt, task=sft),  # decoder-only, fine-tuned on chats: loss on assistant tokens
    "bert_cls": Kind(family=bert, task=classification),  # encoder-only, fine-tuned to label texts (pooler + head)
    "t5": Kind(family=t5, task=span_corruption),  # encoder-decoder, writes back the spans cut from its input
}


def family_name(family: ModuleType) -> str:
    return family.__name__.rsplit(".", 1)[-1]


def task_name(task: ModuleType) -> str:
    return task.__name__.rsplit(".", 1)[-1]


def build_model(cfg, vocab_size: int, precision: str, on_gpu: bool):
    """The network of a run config: its kind's family, with the heads its task asks for."""
    kind = cfg.kind
    return kind.family.build(cfg.model, vocab_size, precision, on_gpu, **kind.task.model_heads(cfg.task))


def forward_step(cfg):
    """The run's forward step `(model, batch, device) -> (loss, metrics)`: its task's, plus the
    family's per-micro-batch metrics where it has them (an MoE GPT's load balance)."""
    task, family_metrics = cfg.kind.task, getattr(cfg.kind.family, "micro_batch_metrics", None)

    def forward(model, batch, device):
        loss, metrics = task.forward_step(model, batch, device, cfg.task)
        return (loss, {**metrics, **family_metrics(model)}) if family_metrics else (loss, metrics)

    return forward
