"""Forward steps: one micro-batch in, (loss, detached metrics) out. One per model type.

The trainer calls `forward_step(model_type)` and never looks inside a batch, so GPT and BERT
share the whole training loop.
"""

from __future__ import annotations

from typing import Callable

import torch

ForwardStep = Callable[[torch.nn.Module, dict, torch.device], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def gpt_forward(model: torch.nn.Module, batch: dict, device: torch.device):
    """Next-token loss averaged over unmasked tokens. Batch tensors are [b, s]."""
    tokens = batch["tokens"].to(device, non_blocking=True)
    labels = batch["labels"].to(device, non_blocking=True)
    loss_mask = batch["loss_mask"].to(device, non_blocking=True).float()
    position_ids = batch["position_ids"].to(device, non_blocking=True)
    # With labels, GPTModel returns the per-token cross entropy [b, s] (fp32).
    per_token = model(tokens, position_ids, None, labels=labels)
    loss = (per_token.float() * loss_mask).sum() / loss_mask.sum().clamp(min=1)
    return loss, {}


def forward_step(model_type: str) -> ForwardStep:
    if model_type == "bert":
        from mtds.bert import bert_forward

        return bert_forward
    return gpt_forward
