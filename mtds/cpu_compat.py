"""The one place where mtds adapts megatron-core to a machine without CUDA.

megatron-core is written for CUDA: even a tensor-parallel-size-1 run calls
`torch.cuda.current_device()` to place RoPE frequencies, the attention scratch buffer and
some parameters. On a CPU-only machine those calls raise. `enable_if_no_cuda()` points them
at the CPU instead; on a machine with CUDA it does nothing, so the GPU path is unchanged.

megatron-core's model-parallel RNG tracker (`tensor_parallel.get_cuda_rng_tracker()`: separate
random streams for dropout inside tensor-parallel regions, forked by the embedding under sequence
parallelism and by the attention under tensor parallelism) keeps CUDA generator states. On CPU
the same tracker is pointed at the CPU generator, which is where dropout on CPU tensors draws
from, so seeding (`model_parallel_cuda_manual_seed`) and forking are the GPU code unchanged.

Precision on CPUs without native bf16: `has_native_bf16()` reads the CPU's instruction set
(AVX512-BF16 or AMX on x86, the BF16 extension on Arm), and mtds.ds_config trains bf16 configs
in fp32 where it is missing: there bf16 matmuls are emulated (58x slower than fp32 measured on a
2-core AVX2-only EPYC, bench/RESULTS.md). A flag, not a timing: every rank, every restart and
every resume must make the same choice, and an earlier timing-based probe, run by two ranks at
once on two cores, once chose bf16 for one run and fp32 for its resume.

One DeepSpeed cost on CPU is cut here too: its CPU op builder asks py-cpuinfo about the CPU
twice each time an op loads (FusedAdam at `deepspeed.initialize`), and each ask probes the CPU in a
Python subprocess (~1.1 s here, for every rank of every run). The answer cannot change on a machine,
so it is asked once per machine and kept in a JSON file beside DeepSpeed's op cache, named by a
hash of what /proc/cpuinfo says the CPU is (another CPU type, e.g. a node of another cluster
partition sharing the home directory, gets its own file).
"""

from __future__ import annotations

import functools
import os

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
        _rng_tracker_on_cpu_generator()
        _ask_cpuinfo_once()
        _enabled = True
    return True


def _rng_tracker_on_cpu_generator() -> None:
    """The CUDA RNG calls of megatron's tracker (get, set, manual_seed) act on the CPU generator."""
    import logging

    from megatron.core.tensor_parallel import random as mp_random

    def get_state(device="cuda"):
        return torch.get_rng_state()

    torch.cuda.get_rng_state = torch.cuda.random.get_rng_state = get_state
    torch.cuda.manual_seed = lambda seed: torch.default_generator.manual_seed(seed)
    mp_random._set_cuda_rng_state = lambda new_state, device=-1, graph_safe=False: torch.set_rng_state(new_state)
    # fork() warns when the CPU generator changed inside it, which on CPU is the point (the forked
    # stream is the CPU generator): silence that one logger.
    logging.getLogger(mp_random.__name__).setLevel(logging.ERROR)


def enable_moe_without_transformer_engine() -> None:
    """megatron-core's MoE router asks `te_general_gemm is not None`, but moe_utils defines that
    name only when Transformer Engine imports (NameError on every machine without it, CPU or
    GPU). Without TE the answer is None, and the router then uses its torch matmul path."""
    from megatron.core.transformer.moe import moe_utils

    if not hasattr(moe_utils, "te_general_gemm"):
        moe_utils.te_general_gemm = None


def _ask_cpuinfo_once() -> None:
    try:
        import cpuinfo
    except ImportError:  # DeepSpeed then reads lscpu instead, which is fast
        return
    ask = cpuinfo.get_cpu_info
    cpuinfo.get_cpu_info = functools.lru_cache(maxsize=1)(lambda: cpu_info_kept(ask, _op_cache_dir()))


def _op_cache_dir() -> str:
    """Where DeepSpeed keeps its JIT-built ops (torch's default when TORCH_EXTENSIONS_DIR is unset)."""
    return os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "torch_extensions")


def cpu_info_kept(ask, folder: str, proc_cpuinfo: str = "/proc/cpuinfo") -> dict:
    """py-cpuinfo's answer for this CPU: read from `folder` if asked before, else asked and kept."""
    import hashlib
    import json

    try:
        with open(proc_cpuinfo) as f:
            first_cpu = f.read().split("\n\n")[0]
    except OSError:  # no /proc (macOS): nothing names the CPU cheaply, ask
        return ask()
    # The lines that name the CPU type and its features, not its clock (which changes).
    identity = [line for line in first_cpu.splitlines()
                if line.split(":")[0].strip() in ("vendor_id", "cpu family", "model", "model name", "stepping",
                                                  "flags", "Features", "CPU implementer", "CPU part")]
    key = hashlib.sha256("\n".join(identity).encode()).hexdigest()[:16]
    path = os.path.join(folder, f"mtds_cpuinfo_{key}.json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        pass
    info = ask()
    if info:  # py-cpuinfo answers {} when its probe failed: ask again next time
        try:
            from mtds.ckpt.layout import atomic_write

            os.makedirs(folder, exist_ok=True)
            atomic_write(path, json.dumps(info))
        except OSError:  # a read-only home: ask every time, as before
            pass
    return info


def has_native_bf16() -> bool:
    """True where the CPU computes bf16 in hardware (or where we cannot tell: train as asked)."""
    import platform

    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        cpu = torch.cpu
        if hasattr(cpu, "_is_avx512_bf16_supported"):  # torch's own cpuinfo, as inductor uses it
            return bool(cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())
        return bool({"avx512_bf16", "amx_bf16"} & _linux_cpu_flags("flags"))
    if machine in ("aarch64", "arm64"):
        if platform.system() == "Darwin":  # Apple M2 and later
            import subprocess

            out = subprocess.run(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True)
            return out.stdout.strip() == "1"
        return "bf16" in _linux_cpu_flags("Features")
    return True


def _linux_cpu_flags(field: str) -> set[str]:
    """The words of /proc/cpuinfo's first `field:` line (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.split(":")[0].strip() == field:
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()
