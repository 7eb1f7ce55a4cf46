"""Build DeepSpeed's JIT ops for this machine's accelerator once, at install time.

    python -m mtds.ops          # what `make venv` runs; ~2 min on 2 CPU cores

DeepSpeed compiles an op the first time a run needs it. Doing it here, once, keeps every
training run and test from paying for it or racing another process building it (set
TORCH_EXTENSIONS_DIR the same way at run time to reuse the build, as the Makefile does).

Which ops depend on the accelerator DeepSpeed detects: the CPU one has the shared-memory
collectives (`ShareMemCommBuilder`, used by `deepspeed --num_gpus N` on CPU) and its fused
Adam; on CUDA, `ShareMemCommBuilder` does not exist (DeepSpeed returns None for it) and
FusedAdam is a CUDA kernel that needs nvcc from a CUDA toolkit. Without nvcc a CUDA machine
still trains: `"optimizer": {"type": "Adam", "params": {"torch_adam": true, ...}}` in the
DeepSpeed JSON uses torch.optim.Adam(W) (foreach) instead.
"""

from __future__ import annotations

import os
import sys

# Built where the accelerator provides them, in this order.
WANTED = ("ShareMemCommBuilder", "FusedAdamBuilder")

NO_NVCC = ("note: FusedAdam (DeepSpeed's \"type\": \"Adam\") needs nvcc (a CUDA toolkit matching "
           "torch.version.cuda, found through CUDA_HOME) and was not built; without it, set "
           "\"torch_adam\": true in the optimizer params of the DeepSpeed JSON")


def find_nvcc() -> str | None:
    """nvcc where DeepSpeed looks for it (torch's CUDA_HOME/bin/nvcc; hipcc under ROCM_HOME on a
    ROCm torch, whose accelerator DeepSpeed also calls "cuda"), or None."""
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, ROCM_HOME

    home, exe = (ROCM_HOME, "hipcc") if torch.version.hip else (CUDA_HOME, "nvcc")
    nvcc = os.path.join(home, "bin", exe) if home else None
    return nvcc if nvcc and os.path.exists(nvcc) else None


def ops_for(accelerator, nvcc: str | None) -> tuple[list[str], list[str]]:
    """The op builders to build for `accelerator` (a DeepSpeed accelerator object) and the notes
    to print about ops left out. Nothing is built here; `nvcc` is find_nvcc()'s answer."""
    ops, notes = [], []
    for name in WANTED:
        if accelerator.create_op_builder(name) is None:  # not an op of this accelerator
            continue
        if name == "FusedAdamBuilder" and accelerator._name == "cuda" and nvcc is None:
            notes.append(NO_NVCC)
            continue
        ops.append(name)
    return ops, notes


def main() -> int:
    from deepspeed.accelerator import get_accelerator

    acc = get_accelerator()
    ops, notes = ops_for(acc, find_nvcc() if acc._name == "cuda" else None)
    for note in notes:
        print(note, file=sys.stderr)
    print(f"mtds.ops: {acc._name} accelerator, building {', '.join(ops) or 'nothing'}")
    for name in ops:
        acc.create_op_builder(name).load()
    return 0


if __name__ == "__main__":
    sys.exit(main())
