"""Training speed of permutation LM (gpt_plm) against causal LM (gpt) at the same shape: one micro-batch's
forward + backward through each task's own forward_step, on this machine's device.

    python bench/bench_plm.py [--preset gpt-tiny] [--seq 256] [--batch 4] [--c 6] [--vocab 32000] [--steps 10]

PLM runs T + K positions for T tokens (K = ceil(T / c) query tokens) under a dense (T+K) x (T+K) mask;
causal LM runs T under SDPA's causal flag. Prints median ms per micro-batch, tokens/s (the sample's T
tokens), the measured ratio, (T + K) / T, and the ratio of the FLOPs per token the run logs (the GPT
family's flops_per_token with the task's flops_args), which is what MFU counts.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def batches(T: int, b: int, K: int, vocab: int, mask_id: int):
    """(causal_lm batch, permutation_lm batch) of the same random tokens."""
    from mtds.data.plm_dataset import query_inputs, sample_order

    gen = torch.Generator().manual_seed(0)
    text = torch.randint(0, vocab, (b, T + 1), generator=gen)
    causal = {"tokens": text[:, :-1], "labels": text[:, 1:], "loss_mask": torch.ones(b, T),
              "position_ids": torch.arange(T).expand(b, T)}
    tokens, rng = text[:, :-1], np.random.default_rng(0)
    ranks, targets = map(torch.stack, zip(*(map(torch.from_numpy, sample_order(rng, T, K)) for _ in range(b))))
    ids, positions = query_inputs(tokens, targets, mask_id)
    plm = {"input_ids": ids, "position_ids": positions, "ranks": ranks, "targets": targets,
           "labels": tokens.gather(1, targets), "loss_mask": torch.ones(b, K)}
    return causal, plm


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="gpt-tiny")
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--c", type=float, default=6.0, help="task.partial_prediction: K = ceil(seq / c)")
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args(argv)

    from megatron.core import parallel_state

    from mtds.config import build_config
    from mtds.cpu_compat import enable_if_no_cuda
    from mtds.kinds import build_model
    from mtds.models.common import count_parameters

    device = torch.device(a.device)
    on_gpu = device.type == "cuda"
    if not on_gpu:
        enable_if_no_cuda()
    if not torch.distributed.is_initialized():  # a test may have set up this world of one already
        torch.distributed.init_process_group("gloo", store=torch.distributed.HashStore(), rank=0, world_size=1)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(1, 1)
    T, K = a.seq, math.ceil(a.seq / a.c)
    causal_batch, plm_batch = batches(T, a.batch, K, a.vocab, mask_id=6)
    rows = {}
    for kind, batch in (("gpt", causal_batch), ("gpt_plm", plm_batch)):
        cfg = build_config({"model": {"model_type": kind, "preset": a.preset, "vocab_size": a.vocab},
                            "task": {"partial_prediction": a.c} if kind == "gpt_plm" else {},
                            "data": {"seq_length": T}})
        torch.manual_seed(0)
        model = build_model(cfg, a.vocab, "fp32", on_gpu=on_gpu).to(device)
        task, family = cfg.kind.task, cfg.kind.family

        def step():
            losses, _ = task.forward_step(model, batch, device, cfg.task)
            sum(losses.values()).backward()
            if on_gpu:
                torch.cuda.synchronize()

        for _ in range(2):
            step()
        times = []
        for _ in range(a.steps):
            t0 = time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1e3)
        extra = task.flops_args(cfg.task, T) if task.flops_args is not None else {}
        flops = family.flops_per_token(cfg.model, count_parameters(model), T, a.vocab, **extra)
        rows[kind] = (statistics.median(times), min(times), flops)
        del model
    print(f"{a.preset}, seq {T}, batch {a.batch}, vocab {a.vocab}, K = ceil({T} / {a.c:g}) = {K}, {a.device}, "
          f"fp32, {a.steps} steps after 2 warm-ups")
    print("| kind | median ms / micro-batch | min ms | tokens/s (median) | FLOPs / token |")
    print("|---|---|---|---|---|")
    for kind, (med, low, flops) in rows.items():
        print(f"| {kind} | {med:.1f} | {low:.1f} | {a.batch * T / med * 1e3:,.0f} | {flops / 1e6:.1f}M |")
    (m_gpt, l_gpt, f_gpt), (m_plm, l_plm, f_plm) = rows["gpt"], rows["gpt_plm"]
    print(f"PLM / causal: time {m_plm / m_gpt:.3f}x (median), {l_plm / l_gpt:.3f}x (min); "
          f"(T + K) / T = {(T + K) / T:.3f}; FLOPs per token {f_plm / f_gpt:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
