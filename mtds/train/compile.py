"""torch.compile for the model (`training.compile`): fuse the elementwise work around the matmuls.

Without Transformer Engine or apex, megatron-core's local layer spec runs RMSNorm, RoPE,
residual adds and the fp32 cross entropy as separate eager kernels; on an H100 they took ~37%
of a GPT-1.3b step (bench/RESULTS.md). torch.compile (Inductor) fuses them.

Modes:
  "none"    eager (the default until GPU runs say otherwise: bench/gpu_suite.sh stage `compile`).
  "layers"  every transformer layer's forward compiled in place (`nn.Module.compile`), the way
            torchtitan compiles blocks. The layers share one code object and parameters are
            graph inputs, so one layer is traced once and reused by all of them: compile time
            does not grow with depth, and since the module tree is untouched, state_dict keys
            and checkpoints are the same as in eager runs.
  "model"   DeepSpeed's own switch, `engine.compile()`: the whole module as one graph, which also
            fuses the output layer and the loss; compile time grows with depth.
"""

from __future__ import annotations

import torch


def quiet_tp_group_lookup() -> None:
    """Make megatron-core's linear layers traceable without graph breaks.

    megatron-core 0.16.1's RowParallelLinear passes `tp_group=None` on every forward, and the
    default-group lookup it then does (`get_tensor_model_parallel_group_if_none`) calls
    `warnings.warn` each time on rank 0. Dynamo cannot trace `warnings.warn`, so each layer split
    into 9 graphs (8 breaks: after the attention projection and after fc2). This returns the
    same group without the warning; rebound only in the module that calls it per forward.
    """
    import megatron.core.tensor_parallel.layers as layers
    from megatron.core import parallel_state

    def group_or_default(tp_group, is_expert=False, check_initialized=True):
        # megatron-core's own logic, minus the warning
        if not torch.distributed.is_initialized():
            return None
        if tp_group is not None or not parallel_state.is_initialized():
            return tp_group
        if is_expert:
            return parallel_state.get_expert_tensor_parallel_group(check_initialized)
        return parallel_state.get_tensor_model_parallel_group(check_initialized)

    layers.get_tensor_model_parallel_group_if_none = group_or_default


def compile_layers(layers: list) -> int:
    """`training.compile="layers"`: compile each transformer layer in place (the family lists them:
    `transformer_layers(model)` in mtds/models/); returns how many."""
    quiet_tp_group_lookup()
    for layer in layers:
        layer.compile()
    return len(layers)


def compile_engine(engine) -> None:
    """`training.compile="model"`: DeepSpeed's whole-module torch.compile."""
    quiet_tp_group_lookup()
    engine.compile()
