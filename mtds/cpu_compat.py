"""The one place where mtds adapts megatron-core to a machine without CUDA.

megatron-core is written for CUDA: even a tensor-parallel-size-1 run calls
`torch.cuda.current_device()` to place RoPE frequencies, the attention scratch buffer and
some parameters. On a CPU-only machine those calls raise. `enable_if_no_cuda()` points them
at the CPU instead; on a machine with CUDA it does nothing, so the GPU path is unchanged.

Two more CPU differences are handled where they arise, not here:
- seeding uses `torch.manual_seed` instead of `tensor_parallel.model_parallel_cuda_manual_seed`
  (mtds.distributed.seed_everything);
- attention dropout does not fork megatron's CUDA RNG tracker because our core attention
  (mtds.attention.SDPAttention) calls PyTorch SDPA, which draws from the default generator.

Precision on CPUs without native bf16: `bf16_slowdown()` measures how much slower a bf16 matmul
is than an fp32 one (on a 2-core AVX2-only EPYC, 58x for 384x384; where the CPU has bf16
instructions it is ~1x or faster), and mtds.ds_config trains such CPUs in fp32 instead.

One DeepSpeed cost on CPU is cut here too: its CPU op builder asks py-cpuinfo about the CPU
twice each time an op loads (FusedAdam at `deepspeed.initialize`), and each ask spawns a Python
subprocess (~1.1 s here). The answer cannot change within a process, so it is asked once.
"""

from __future__ import annotations

import functools

import torch

_enabled = False


def enable_if_no_cuda() -> bool:
    """Make megatron-core's CUDA device lookups return the CPU. Returns True if it did."""
    global _enabled
    if torch.cuda.is_available():
        return False
    if not _enabled:
        # torch.cuda.current_device() would raise "Torch not compiled with CUDA enabled";
        # megatron-core passes its result as `device=`, so "cpu" is a drop-in answer.
        torch.cuda.current_device = lambda: "cpu"
        _ask_cpuinfo_once()
        _enabled = True
    return True


def _ask_cpuinfo_once() -> None:
    try:
        import cpuinfo
    except ImportError:  # DeepSpeed then reads lscpu instead, which is fast
        return
    cpuinfo.get_cpu_info = functools.lru_cache(maxsize=1)(cpuinfo.get_cpu_info)


def bf16_slowdown(n: int = 256, reps: int = 5) -> float:
    """Time of an [n, n] @ [n, n] matmul in bf16 over fp32 on this CPU (best of `reps`; ~0.1 s)."""
    import time

    def best(dtype) -> float:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b  # warm-up: first-call dispatch and allocation
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - start)
        return min(times)

    return best(torch.bfloat16) / best(torch.float32)
