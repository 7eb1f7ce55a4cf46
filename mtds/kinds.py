"""Every kind of model mtds trains, in one explicit table: a kind is a model family (the network:
the `FAMILY` of mtds/models/<family>.py) plus a task (its data and loss: the `TASK` of
mtds/tasks/<task>.py), both instances of the dataclasses in mtds/kind_contract.py.

`--model-type` / `model.model_type` names a kind. The commands and the run wiring (mtds/train/plan.py,
mtds/train/run.py) look the run's kind up here and hand its hooks on: the trainer, the data plumbing
and the checkpoints receive functions and values, never the kind. Adding a kind is one family or
task file plus one line here (the checklist is in mtds/README.md).

Importing this module imports no torch: family and task files import torch and megatron-core
inside their functions, so configs are checked (and bad ones refused) in well under a second.
"""

from __future__ import annotations

from dataclasses import dataclass

from mtds.kind_contract import Family, Task
from mtds.models import bert, gpt, t5
from mtds.tasks import causal_lm, classification, masked_lm, permutation_lm, sft, span_corruption


@dataclass(frozen=True)
class Kind:
    family: Family
    task: Task


KINDS: dict[str, Kind] = {
    "gpt": Kind(gpt.FAMILY, causal_lm.TASK),  # decoder-only, next-token loss
    "bert": Kind(bert.FAMILY, masked_lm.TASK),  # encoder-only, masked LM + sentence order
    "gpt_sft": Kind(gpt.FAMILY, sft.TASK),  # decoder-only, fine-tuned on chats: loss on assistant tokens
    "bert_cls": Kind(bert.FAMILY, classification.TASK),  # encoder-only, fine-tuned to label texts (pooler + head)
    "t5": Kind(t5.FAMILY, span_corruption.TASK),  # encoder-decoder, writes back the spans cut from its input
    "gpt_plm": Kind(gpt.FAMILY, permutation_lm.TASK),  # decoder-only, predicts tokens in a random order (XLNet)
}

FAMILIES: tuple[Family, ...] = tuple({id(k.family): k.family for k in KINDS.values()}.values())


def pretraining_kind(family: Family) -> str:
    """The first kind of a family in KINDS: what a preset of that family (or a model imported from
    Hugging Face into it) trains unless model.model_type says otherwise."""
    return next(name for name, k in KINDS.items() if k.family is family)


def build_model(cfg, vocab_size: int, precision: str, on_gpu: bool):
    """The network of a run config: its kind's family, with the heads its task asks for."""
    kind = cfg.kind
    return kind.family.build(cfg.model, vocab_size, precision, on_gpu, **kind.task.model_heads(cfg.task))


def forward_step(cfg):
    """The run's forward step `(model, batch, device) -> (loss sums, metrics)`: its task's, plus the
    family's per-micro-batch metrics where it has them (an MoE GPT's load balance)."""
    task, family_metrics = cfg.kind.task, cfg.kind.family.micro_batch_metrics

    def forward(model, batch, device):
        losses, metrics = task.forward_step(model, batch, device, cfg.task)
        return (losses, {**metrics, **family_metrics(model)}) if family_metrics is not None else (losses, metrics)

    return forward


def count_targets(cfg):
    """The run's `count_targets(batch) -> {part: n}`: its task's, with the run's `[task]` options."""
    task = cfg.kind.task
    return lambda batch: task.count_targets(batch, cfg.task)
