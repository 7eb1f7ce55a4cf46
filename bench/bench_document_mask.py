"""Document attention (data.document_mask, gpt_sft packing): the dense [b, 1, s, s] SDPA mask against
FlexAttention's BlockMask, per attention call (forward + backward), on this machine's device.

    python bench/bench_document_mask.py [--seq 4096] [--batch 4] [--heads 16] [--head-dim 64] [--docs 8]

Prints one table: median ms per call and peak memory of each path, plus plain causal SDPA (the
flash kernel, no documents) as the floor. Documents have random lengths summing to --seq. On CPU
FlexAttention runs its uncompiled reference implementation and has no backward, so there the
calls are forward only and the table checks that both paths run and agree, not speed (the GPU is
what the sparse path is for).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def random_document_ids(batch: int, seq: int, docs: int, gen: torch.Generator) -> torch.Tensor:
    """[batch, seq] ids of `docs` documents of random lengths per row."""
    cuts = torch.stack([torch.randperm(seq - 1, generator=gen)[: docs - 1].sort().values + 1 for _ in range(batch)])
    ids = torch.zeros(batch, seq, dtype=torch.long)
    ids.scatter_(1, cuts, 1)
    return ids.cumsum(1)


def timed(fn, steps: int, device: torch.device) -> tuple[float, float]:
    """(median ms, peak MiB) of fn() over `steps` calls after two warm-ups."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(2):
        fn()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
    return statistics.median(times), peak


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seq", type=int, default=4096)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--docs", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    a = p.parse_args()
    from mtds.models import document_attention as document_mask

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    gen = torch.Generator().manual_seed(0)
    ids = random_document_ids(a.batch, a.seq, a.docs, gen).to(device)
    backward = device.type == "cuda"  # FlexAttention has no CPU backward
    q, k, v = (torch.randn(a.batch, a.heads, a.seq, a.head_dim, generator=gen).to(device, dtype).requires_grad_(backward)
               for _ in range(3))
    scale = a.head_dim ** -0.5

    def run(out):
        if backward:
            out.sum().backward()

    def dense():
        mask = document_mask.dense_allowed(ids)  # built per call, as SDPAttention does per micro-batch
        run(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale))

    def flex():
        document_mask._cached = None  # a new BlockMask per call, as per micro-batch
        run(document_mask.flex_attention(q, k, v, ids, scale, False))

    def causal():
        run(F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale))

    with torch.no_grad():
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=document_mask.dense_allowed(ids), scale=scale)
        document_mask._cached = None
        got = document_mask.flex_attention(q, k, v, ids, scale, False)
    diff = (got.float() - ref.float()).abs().max().item()
    rows = [(name, *timed(fn, a.steps, device)) for name, fn in
            (("dense [s, s] mask (SDPA)", dense), ("FlexAttention BlockMask", flex), ("causal SDPA, no documents", causal))]
    print(f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}), {dtype}, "
          f"batch {a.batch} x seq {a.seq}, {a.heads} heads x {a.head_dim}, {a.docs} documents per row; "
          f"max |flex - dense| {diff:.2e}")
    print(f"| path | {'fwd+bwd' if backward else 'fwd'} ms (median of {a.steps}) | vs dense | peak MiB |\n|---|---|---|---|")
    base = rows[0][1]
    for name, ms, peak in rows:
        print(f"| {name} | {ms:.2f} | {ms / base:.2f}x | {peak:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
