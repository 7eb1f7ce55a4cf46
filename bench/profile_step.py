"""Where one training step's GPU time goes, and which SDPA backend our attention gets.

    python bench/profile_step.py --preset gpt-1.3b --variant z2 --micro 8

1. SDPA backends: times each backend that accepts our attention's inputs (megatron's
   [s, b, np, hn] permuted to [b, np, s, hn], i.e. non-contiguous views) at the preset's shape,
   forward + backward, and names the one PyTorch picks by default (from the profiler's kernels).
2. One profiled step of the mtds+DeepSpeed engine: GPU time per kernel category (matmul,
   attention, optimizer, elementwise/norm/softmax, copies), top kernels.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

from bench.train_throughput import build_engine, model_config, synthetic_batches  # noqa: E402

CATEGORIES = [  # first match wins; names of CUDA kernels (lower case)
    ("attention", ("flash", "fmha", "attention", "cudnn", "efficient")),
    ("matmul", ("gemm", "cutlass", "sm90_xmma", "nvjet", "cublas", "matmul")),
    ("optimizer", ("adam", "multi_tensor", "l2norm", "unscale")),
    ("copy/cast", ("copy", "memcpy", "memset", "cat", "fill", "to_copy")),
    ("reduce", ("reduce", "sum", "norm", "max")),
    ("elementwise", ("elementwise", "vectorized", "unrolled", "silu", "mul", "add", "softmax", "log", "exp")),
]


def category(name: str) -> str:
    low = name.lower()
    return next((c for c, keys in CATEGORIES if any(k in low for k in keys)), "other")


def kernel_times(prof) -> dict[str, float]:
    """GPU microseconds per kernel name."""
    out = collections.Counter()
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if e.device_type == torch.autograd.DeviceType.CUDA and t:
            out[e.key] += t
    return out


def sdpa_backends(preset: str, micro: int, seq: int) -> None:
    m = model_config(preset)
    h, hd = m.num_attention_heads, m.hidden_size // m.num_attention_heads
    # megatron layout [s, b, np, hn]; SDPAttention permutes to [b, np, s, hn] without a copy
    q, k, v = (torch.randn(seq, micro, h, hd, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))

    def run():
        out = F.scaled_dot_product_attention(*(t.permute(1, 2, 0, 3) for t in (q, k, v)), is_causal=True)
        out.sum().backward()

    print(f"SDPA at b={micro} heads={h} seq={seq} head_dim={hd}, bf16, causal, fwd+bwd:")
    for name, backend in [("default", None), ("flash", SDPBackend.FLASH_ATTENTION),
                          ("cudnn", SDPBackend.CUDNN_ATTENTION), ("mem-efficient", SDPBackend.EFFICIENT_ATTENTION),
                          ("math", SDPBackend.MATH)]:
        ctx = sdpa_kernel([backend]) if backend is not None else torch.autograd.profiler.record_function("x")
        try:
            with ctx:
                for _ in range(3):
                    run()
                torch.cuda.synchronize()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(10):
                    run()
                end.record()
                torch.cuda.synchronize()
                ms = start.elapsed_time(end) / 10
                kernels = ""
                if backend is None:
                    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                        run()
                        torch.cuda.synchronize()
                    names = [n for n in kernel_times(prof) if category(n) == "attention"]
                    kernels = " kernels: " + "; ".join(n[:70] for n in names[:3])
            # causal attention: fwd 2*2*b*h*s^2*hd/2, bwd 2.5x fwd
            flops = 3.5 * 2 * 2 * micro * h * seq * seq * hd / 2
            print(f"  {name:14s} {ms:8.2f} ms  {flops / ms / 1e9:6.0f} TFLOP/s{kernels}")
        except RuntimeError as e:
            print(f"  {name:14s} not available: {str(e).splitlines()[0][:100]}")
        q.grad = k.grad = v.grad = None


def profile_step(preset: str, variant: str, micro: int, seq: int, vocab: int) -> None:
    from mtds.tasks.causal_lm import forward_step

    engine, _, _, _ = build_engine(preset, variant, micro, vocab)
    batches = synthetic_batches(2, micro, seq, vocab, engine.device)

    def step(i):
        sums, _ = forward_step(engine, batches[i % 2], engine.device)
        engine.backward(sums["lm"] / batches[i % 2]["loss_mask"].sum())  # the per-token mean
        engine.step()

    for i in range(4):
        step(i)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA,
                                            torch.profiler.ProfilerActivity.CPU]) as prof:
        for i in range(2):
            step(i)
        torch.cuda.synchronize()
    times = kernel_times(prof)
    total = sum(times.values())
    by_cat = collections.Counter()
    for n, t in times.items():
        by_cat[category(n)] += t
    print(f"\nGPU time of 2 steps ({preset}, {variant}, micro {micro}): {total / 1e3:.1f} ms of kernels")
    print("| category | ms/step | share |\n|---|---|---|")
    for c, t in by_cat.most_common():
        print(f"| {c} | {t / 2e3:.1f} | {t / total:.1%} |")
    print("\ntop kernels (ms/step, share, name):")
    for n, t in times.most_common(15):
        print(f"  {t / 2e3:8.2f} {t / total:6.1%}  [{category(n)}] {n[:110]}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="gpt-1.3b")
    p.add_argument("--variant", default="z2")
    p.add_argument("--micro", type=int, default=8)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--vocab", type=int, default=50304)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("profile_step.py needs a GPU")
        return 1
    sdpa_backends(args.preset, args.micro, args.seq)
    profile_step(args.preset, args.variant, args.micro, args.seq, args.vocab)
    return 0


if __name__ == "__main__":
    sys.exit(main())
