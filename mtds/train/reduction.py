"""Per-token losses: how the micro-batches and data-parallel ranks of a step combine.

A task's forward step returns sums, never per-micro-batch means: each loss part summed over its
targets (a language model: the tokens its loss mask lets in; BERT: the masked tokens, and the
sentence pairs as a second part; a classifier: the samples) and each metric as a (sum, count)
pair. The step's loss is, per part, (the per-target losses summed over every micro-batch and
data-parallel rank) / (the number of targets in the whole step), the parts added. So
micro-batch 1 x accumulation 8, 8 x 1 and 2 ranks x 4 train the same objective, and a token in a
micro-batch with few targets weighs what one in a full micro-batch weighs (a mean per micro-batch
would not: the bug Hugging Face fixed in its trainers in late 2024; Megatron-LM's
--calculate-per-token-loss). The target counts of a step are known before its first backward:
the trainer reads the step's micro-batches first and counts them (`count_targets`, the task's)
with one small all-reduce.
"""

from __future__ import annotations

import torch


def data_parallel_group():
    """The group whose ranks read different samples (None: no process group, a world of one).
    Tensor-parallel ranks read the same samples, so their sums must not be added."""
    if not torch.distributed.is_initialized():
        return None
    from megatron.core import parallel_state

    return parallel_state.get_data_parallel_group() if parallel_state.model_parallel_is_initialized() else None


def sum_over_ranks(t: torch.Tensor, group) -> torch.Tensor:
    """In place: the sum of `t` over the ranks of `group` (unchanged without process groups)."""
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(t, group=group)
    return t


def step_target_counts(count_targets, batches: list, device, group) -> dict[str, torch.Tensor]:
    """{part: targets in the whole step} over these micro-batches and the data-parallel ranks,
    as fp32 scalars on `device` (at least 1, so an empty part divides a zero sum). `count_targets`
    reads the batch only (CPU tensors, no forward), so this costs no device sync but the all-reduce."""
    counts: dict[str, int] = {}
    for batch in batches:
        for part, n in count_targets(batch).items():
            counts[part] = counts.get(part, 0) + int(n)
    parts = sorted(counts)
    packed = sum_over_ranks(torch.tensor([counts[p] for p in parts], dtype=torch.int64, device=device), group)
    return {p: n.float().clamp(min=1) for p, n in zip(parts, packed)}


class Totals:
    """Running (sum, count) per name, over micro-batches; `means` reduces them over the
    data-parallel ranks and divides. Losses use the name of their part, metrics their own."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, torch.Tensor] = {}

    def add(self, name: str, total: torch.Tensor, count) -> None:
        self.sums[name] = self.sums.get(name, 0) + total.detach().float()
        self.counts[name] = self.counts.get(name, 0) + torch.as_tensor(count, dtype=torch.float32,
                                                                       device=total.device)

    def add_metrics(self, metrics: dict) -> None:
        """`metrics`: {name: (sum, count)} as forward steps return them."""
        for name, (total, count) in metrics.items():
            self.add(name, total, count)

    def __bool__(self) -> bool:
        return bool(self.sums)

    def means(self, group) -> dict[str, torch.Tensor]:
        """{name: sum / count}, both summed over the ranks of `group` first (one all-reduce)."""
        names = sorted(self.sums)
        if not names:
            return {}
        packed = torch.stack([self.sums[n] for n in names] + [self.counts[n] for n in names])
        packed = sum_over_ranks(packed, group)
        sums, counts = packed[:len(names)], packed[len(names):]
        return dict(zip(names, sums / counts.clamp(min=1e-12)))


def loss_of_parts(part_means: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(the loss, {<part>_loss: mean}): the parts added; each part named only when there are
    several (BERT: mlm_loss and sop_loss beside the loss they add up to)."""
    loss = sum(part_means.values())
    named = {f"{p}_loss": v for p, v in part_means.items()} if len(part_means) > 1 else {}
    return loss, named


def evaluation_means(model, batches, forward, count_targets, device, group) -> tuple[torch.Tensor, dict, int]:
    """(loss, {metric: mean}, micro-batches read) over `batches`: each loss part and metric per
    target over all of them and the ranks of `group`, as training weighs them (the training loop's
    validation and mtds.evaluate share this, so they agree)."""
    totals, n = Totals(), 0
    for batch in batches:
        sums, metrics = forward(model, batch, device)
        counts = count_targets(batch)
        for part, total in sums.items():
            totals.add(f"loss/{part}", total, counts[part])
        totals.add_metrics(metrics)
        n += 1
    means = totals.means(group)
    loss, extra = loss_of_parts({k.removeprefix("loss/"): v for k, v in means.items() if k.startswith("loss/")})
    extra.update({k: v for k, v in means.items() if not k.startswith("loss/")})
    return loss, extra, n
