"""What tensor parallelism needs beyond megatron-core's layers, under DeepSpeed.

- `DeepSpeedMPU`: megatron-core's parallel state as the `mpu=` object deepspeed.initialize takes.
  DeepSpeed reduces gradients over its data-parallel group, counts replicated parameters once in
  the gradient norm and names checkpoint files per model-parallel rank through it; it asks for
  `get_model_parallel_*`, which megatron-core calls `get_tensor_model_parallel_*`.
- `allreduce_sequence_parallel_grads`: under sequence parallelism each rank runs the norms on its
  own 1/TP of the sequence, so a norm weight's gradient is a partial sum per rank. Megatron-LM sums
  these over the tensor-parallel group in its own optimizer step (finalize_model_grads);
  DeepSpeed knows nothing of them, so a gradient hook does it before DeepSpeed sees the gradient.
- `tensor_layout`: which parameters are split and how, saved with each checkpoint so the tools
  can merge the shards without building the model (mtds.ckpt.tensor_shards).
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state


class DeepSpeedMPU:
    """The model-parallel unit DeepSpeed expects, over megatron-core's groups (pipeline size 1,
    so model parallel = tensor parallel)."""

    get_model_parallel_world_size = staticmethod(parallel_state.get_tensor_model_parallel_world_size)
    get_model_parallel_rank = staticmethod(parallel_state.get_tensor_model_parallel_rank)
    get_model_parallel_group = staticmethod(parallel_state.get_tensor_model_parallel_group)
    get_tensor_model_parallel_world_size = staticmethod(parallel_state.get_tensor_model_parallel_world_size)
    get_tensor_model_parallel_rank = staticmethod(parallel_state.get_tensor_model_parallel_rank)
    get_tensor_model_parallel_group = staticmethod(parallel_state.get_tensor_model_parallel_group)
    get_tensor_model_parallel_src_rank = staticmethod(parallel_state.get_tensor_model_parallel_src_rank)
    get_data_parallel_world_size = staticmethod(parallel_state.get_data_parallel_world_size)
    get_data_parallel_rank = staticmethod(parallel_state.get_data_parallel_rank)
    get_data_parallel_group = staticmethod(parallel_state.get_data_parallel_group)
    get_pipeline_model_parallel_world_size = staticmethod(parallel_state.get_pipeline_model_parallel_world_size)
    get_pipeline_model_parallel_rank = staticmethod(parallel_state.get_pipeline_model_parallel_rank)


def allreduce_sequence_parallel_grads(model: torch.nn.Module) -> int:
    """Sum the gradients of the parameters marked `sequence_parallel` over the tensor-parallel group
    as they are computed (each micro-batch's, before accumulation). Returns how many were hooked."""
    group = parallel_state.get_tensor_model_parallel_group()

    def summed(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()  # autograd may hand the same buffer to others: reduce a copy
        torch.distributed.all_reduce(grad, group=group)
        return grad

    hooked = [p for p in model.parameters() if getattr(p, "sequence_parallel", False) and p.requires_grad]
    for p in hooked:
        p.register_hook(summed)
    return len(hooked)


def tensor_layout(model: torch.nn.Module) -> dict[str, list[int]]:
    """{parameter name: [partition dim, partition stride]} of every tensor-parallel parameter
    (megatron-core marks them `tensor_model_parallel`); the others are replicated on every rank."""
    return {name: [int(p.partition_dim), int(getattr(p, "partition_stride", 1))]
            for name, p in model.named_parameters() if getattr(p, "tensor_model_parallel", False)}


def parameter_count(model: torch.nn.Module) -> int:
    """Parameters of the whole model: a tensor-parallel parameter counts TP times (each rank holds
    an equal slice), a replicated one once."""
    tp = parallel_state.get_tensor_model_parallel_world_size()
    return sum(p.numel() * (tp if getattr(p, "tensor_model_parallel", False) else 1) for p in model.parameters())
