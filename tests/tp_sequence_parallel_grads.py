"""Run by tests/test_tensor_parallel.py under `deepspeed --num_gpus 2`: what forgetting the
sequence-parallel gradient all-reduce costs. A TP=2 GPT with sequence parallelism does one
forward/backward on a fixed batch without mtds's hook and once with it; rank 0 writes, for the
norm weights, how far each rank's raw gradient is from the summed one and how far the hooked
gradient is from that sum, as JSON to the last argument."""

from __future__ import annotations

import json
import sys

import torch

from mtds.config import build_config
from mtds.parallel.process_groups import init_distributed, seed_everything
from mtds.kinds import build_model
from mtds.tasks import causal_lm
from mtds.parallel.tensor_parallel import allreduce_sequence_parallel_grads


def norm_grads(model, batch) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    sums, _ = causal_lm.forward_step(model, batch, "cpu")
    (sums["lm"] / batch["loss_mask"].sum()).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if getattr(p, "sequence_parallel", False)}


def main(out_path: str) -> None:
    rank, _, _ = init_distributed(tensor_parallel=2)
    cfg = build_config(None, {"model": {"preset": "none", "num_layers": 2, "hidden_size": 64, "num_attention_heads": 2,
                                        "max_position_embeddings": 64, "tensor_model_parallel_size": 2,
                                        "sequence_parallel": True}})
    seed_everything(1234)
    model = build_model(cfg, 512, "fp32", on_gpu=False)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 512, (2, 65), generator=gen)  # the same batch on both ranks
    batch = {"tokens": tokens[:, :-1], "labels": tokens[:, 1:], "loss_mask": torch.ones(2, 64),
             "position_ids": torch.arange(64).expand(2, 64)}
    raw = norm_grads(model, batch)
    summed = {n: g.clone() for n, g in raw.items()}
    for g in summed.values():
        torch.distributed.all_reduce(g)
    hooked_count = allreduce_sequence_parallel_grads(model)
    hooked = norm_grads(model, batch)

    def rel(a, b):
        return max(((a[n] - b[n]).norm() / b[n].norm()).item() for n in b)

    raw_rel = torch.tensor(rel(raw, summed))
    torch.distributed.all_reduce(raw_rel, op=torch.distributed.ReduceOp.MAX)
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump({"norm_weights": len(raw), "hooked": hooked_count, "raw_vs_summed": raw_rel.item(),
                       "hooked_vs_summed": rel(hooked, summed)}, f)


if __name__ == "__main__":
    main(sys.argv[-1])  # the launcher puts --local_rank=N before our argument
