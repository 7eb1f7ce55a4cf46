"""What the model families share: the megatron-core TransformerConfig built from the run config,
the SDPA core attention (and, under sequence parallelism, a norm that allows it) put into a layer
spec, and the FLOPs estimate.

Family files import this (and torch, megatron-core) inside their functions, so that
`mtds.kinds` and `mtds.config` stay importable without torch.
"""

from __future__ import annotations

import dataclasses


def transformer_config(m, precision: str, on_gpu: bool, **family_fields):
    """megatron-core TransformerConfig with the same field names as the run config's [model]
    (plus `family_fields`: TransformerConfig fields a family fixes, e.g. T5's softmax_scale).

    The tensor-parallel size is the one megatron-core's parallel state was initialised with (the
    run's model.tensor_model_parallel_size in training; 1 in the tools, which load merged weights
    in one process), so a model is always built for the process layout it runs in."""
    import torch
    import torch.nn.functional as F
    from megatron.core import parallel_state
    from megatron.core.transformer.transformer_config import TransformerConfig

    tp = parallel_state.get_tensor_model_parallel_world_size() if parallel_state.model_parallel_is_initialized() else 1

    swiglu = m.activation == "swiglu"
    activation = {"swiglu": F.silu, "gelu": F.gelu, "gelu_tanh": gelu_tanh}[m.activation]
    return TransformerConfig(
        num_layers=m.num_layers,
        hidden_size=m.hidden_size,
        num_attention_heads=m.num_attention_heads,
        num_query_groups=m.num_query_groups,
        kv_channels=m.kv_channels,  # None: megatron-core's hidden_size // num_attention_heads
        ffn_hidden_size=m.ffn_size(),
        normalization=m.normalization,
        layernorm_epsilon=m.layernorm_epsilon,
        gated_linear_unit=swiglu,
        activation_func=activation,
        add_bias_linear=m.add_bias_linear,
        add_qkv_bias=m.add_qkv_bias,
        hidden_dropout=m.hidden_dropout,
        attention_dropout=m.attention_dropout,
        init_method_std=m.init_method_std,
        # DeepSpeed owns precision: it casts the module to bf16/fp16 itself; megatron only needs
        # to know for its softmax/cross-entropy dtype choices.
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        params_dtype=torch.float32,
        tensor_model_parallel_size=tp,
        sequence_parallel=m.sequence_parallel and tp > 1,
        # CPU initialisation draws every weight whole from the seed and keeps this rank's slice, so
        # the tensor-parallel shards are exactly those of the TP=1 model (tests/test_tensor_parallel.py).
        use_cpu_initialization=not on_gpu,
        # Fusions that need apex / Transformer Engine / CUDA kernels we do not require.
        gradient_accumulation_fusion=False,
        # megatron-core's fused SwiGLU (bias optional; torch.compile'd through megatron's
        # jit_fuser) saves only its input for backward: on an H100, GPT-1.3b went from 58.5 to
        # 50.5 GB peak and 8% faster (bench/RESULTS.md). CPU runs keep the unfused path.
        bias_activation_fusion=swiglu and on_gpu,
        masked_softmax_fusion=False,
        bias_dropout_fusion=False,
        persist_layer_norm=False,
        apply_rope_fusion=False,
        **moe_fields(m),
        recompute_granularity="full" if m.recompute_activations else None,
        recompute_method="uniform" if m.recompute_activations else None,
        recompute_num_layers=1 if m.recompute_activations else None,
        **family_fields,
    )


def moe_fields(m) -> dict:
    """megatron-core's MoE settings ({} for a dense model): top-k routing with the auxiliary
    load-balancing loss, each expert its own MLP (no grouped GEMM: that needs Transformer
    Engine or CUTLASS), and the all-gather token dispatcher (the all-to-all one creates a CUDA
    stream when built; with expert parallelism 1 both move the same tokens)."""
    if not m.num_moe_experts:
        return {}
    return dict(num_moe_experts=m.num_moe_experts, moe_router_topk=m.moe_router_topk,
                moe_aux_loss_coeff=m.moe_aux_loss_coeff, moe_router_load_balancing_type="aux_loss",
                moe_ffn_hidden_size=m.moe_ffn_hidden_size or m.ffn_size(), moe_grouped_gemm=False,
                moe_token_dispatcher_type="allgather")


def gelu_tanh(x):
    """GELU's tanh approximation (GPT-2's `gelu_new`); a module-level function so it pickles."""
    import torch.nn.functional as F

    return F.gelu(x, approximate="tanh")


def with_sdpa(spec, sequence_parallel: bool = False):
    """Copy of a megatron-core layer spec whose self-attention core (and cross-attention core, in a
    T5 decoder layer) is mtds.models.attention.SDPAttention; with `sequence_parallel`, its norms are
    SequenceParallelNorm."""
    from megatron.core.transformer.identity_op import IdentityOp

    from mtds.models.attention import SDPAttention

    attentions = {}
    for name in ("self_attention", "cross_attention"):
        attention = getattr(spec.submodules, name)
        if attention is IdentityOp:  # no cross-attention in GPT or BERT layers
            continue
        attn_sub = dataclasses.replace(attention.submodules, core_attention=SDPAttention)
        attentions[name] = dataclasses.replace(attention, submodules=attn_sub)
    norms = {}
    if sequence_parallel:
        norms = {name: SequenceParallelNorm for name in ("input_layernorm", "pre_mlp_layernorm")
                 if getattr(spec.submodules, name) is not IdentityOp}
    layer_sub = dataclasses.replace(spec.submodules, **attentions, **norms)
    return dataclasses.replace(spec, submodules=layer_sub)


class SequenceParallelNorm:
    """torch LayerNorm / RMSNorm for megatron-core layer specs under sequence parallelism.

    megatron-core's WrappedTorchNorm (its norm without apex or Transformer Engine) asserts that
    sequence parallelism is off; the norm itself is the same either way (each rank normalises its
    own tokens). What sequence parallelism changes is the norm's gradient: each rank's is the sum
    over its 1/TP of the sequence only, so the weights are marked `sequence_parallel` and
    mtds.parallel.tensor_parallel.allreduce_sequence_parallel_grads sums them over the group.
    """

    def __new__(cls, config, hidden_size: int, eps: float = 1e-5, **_unused):
        import torch

        norm_class = {"LayerNorm": torch.nn.LayerNorm, "RMSNorm": torch.nn.RMSNorm}[config.normalization]
        norm = norm_class(hidden_size, eps=eps)
        for p in norm.parameters():
            p.sequence_parallel = config.sequence_parallel
        return norm


def language_model_args(m, vocab_size: int) -> dict:
    """The GPTModel / BertModel arguments every family passes alike: the whole model in one
    pipeline stage, vocabulary-parallel logits, embeddings tied as configured."""
    # "sinusoidal": built with a learned table, which the family then replaces by the fixed one
    # (mtds.models.sinusoidal_positions).
    positions = "learned_absolute" if m.position_embedding_type == "sinusoidal" else m.position_embedding_type
    return dict(vocab_size=vocab_size, max_sequence_length=m.max_position_embeddings, pre_process=True,
                post_process=True, parallel_output=True, share_embeddings_and_output_weights=m.tie_embeddings,
                position_embedding_type=positions)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def dense_flops_per_token(m, num_params: int, seq_length: int, vocab_size: int) -> float:
    """Training FLOPs per token of a dense transformer: 6N + 12*L*h*T (PaLM, Chowdhery et al. 2022,
    appendix B; the estimate nanoGPT's estimate_mfu uses). N counts the parameters that take part
    in matmuls: the input embedding (when untied from the output layer) and a learned position
    table are lookups, not matmuls, so they are left out; the output layer stays in."""
    lookups = 0 if m.tie_embeddings else vocab_size * m.hidden_size
    if m.position_embedding_type == "learned_absolute":
        lookups += m.max_position_embeddings * m.hidden_size
    return 6 * (num_params - lookups) + 12 * m.num_layers * m.hidden_size * seq_length
