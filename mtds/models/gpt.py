"""GPT family: megatron-core GPTModel (decoder-only) on the local layer spec with SDPA attention.

The architecture switches of [model] (RoPE or learned positions, RMSNorm or LayerNorm, SwiGLU or
GELU, GQA, tied embeddings, biases) are all GPTModel options. Parallel state must be initialised
first (mtds.parallel.process_groups.init_distributed): megatron-core layers look up their TP group.
"""

from __future__ import annotations

from mtds.kind_contract import Family

# Named sizes (shapes only; architecture choices come from ModelConfig's defaults).
# gpt-125m/350m/1.3b are the GPT-3 paper's shapes (Brown et al. 2020, table 2.1), with 16 heads
# for 1.3b (head dim 128, like Megatron-LM's 1.3B configs).
PRESETS: dict[str, dict] = {
    "gpt-tiny": dict(num_layers=4, hidden_size=256, num_attention_heads=4, max_position_embeddings=256),
    "gpt-125m": dict(num_layers=12, hidden_size=768, num_attention_heads=12, max_position_embeddings=2048),
    "gpt-350m": dict(num_layers=24, hidden_size=1024, num_attention_heads=16, max_position_embeddings=2048),
    "gpt-1.3b": dict(num_layers=24, hidden_size=2048, num_attention_heads=16, max_position_embeddings=2048),
}
# A mixture of experts the size of gpt-tiny's attention, 4 experts (2 active) per layer.
PRESETS["gpt-moe-tiny"] = dict(PRESETS["gpt-tiny"], num_moe_experts=4, moe_router_topk=2)
PRESETS["tiny"] = PRESETS["gpt-tiny"]


def validate(m) -> list[str]:
    """GPTModel takes every dense [model] combination the shared checks allow; MoE needs 2+ experts
    and a top-k within them."""
    if m.position_embedding_type == "relative":
        return ["model.position_embedding_type='relative' is T5's; GPT uses rope, learned_absolute or sinusoidal"]
    if m.expert_model_parallel_size != 1:
        return [f"model.expert_model_parallel_size={m.expert_model_parallel_size}: mtds has no expert parallelism "
                "yet (experts are data-parallel: each rank holds all of them, ZeRO-1/2 partition their "
                "optimizer state); set it to 1"]
    if m.num_moe_experts is None:
        return []
    if m.tensor_model_parallel_size > 1:
        return [f"model.tensor_model_parallel_size={m.tensor_model_parallel_size} with model.num_moe_experts: "
                "tensor-parallel experts are not built or tested in mtds yet; use tensor parallelism with a "
                "dense GPT, or experts with tensor_model_parallel_size=1"]
    if m.num_moe_experts < 2:
        return [f"model.num_moe_experts={m.num_moe_experts}: a mixture needs at least 2 experts (none = dense)"]
    if not 1 <= m.moe_router_topk <= m.num_moe_experts:
        return [f"model.moe_router_topk={m.moe_router_topk} must be between 1 and model.num_moe_experts="
                f"{m.num_moe_experts}"]
    return []


def build(m, vocab_size: int, precision: str, on_gpu: bool, query_tokens: bool = False):
    """GPTModel with a language-model head (the output layer) over the padded vocabulary.
    `query_tokens` (permutation LM's head): mtds.models.query_gpt's GPTModel, whose RoPE follows the
    position ids it is given and whose output layer can run on the last positions only."""
    from megatron.core.models.gpt import GPTModel

    if query_tokens:
        from mtds.models.query_gpt import QueryGPTModel as GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    from mtds.models.common import language_model_args, transformer_config, with_sdpa

    if m.num_moe_experts:
        from mtds.cpu_compat import enable_moe_without_transformer_engine

        enable_moe_without_transformer_engine()
    from mtds.models.common import SequenceParallelNorm

    config = transformer_config(m, precision, on_gpu)
    spec = with_sdpa(get_gpt_layer_local_spec(num_experts=m.num_moe_experts, moe_grouped_gemm=False,
                                              normalization=m.normalization), config.sequence_parallel)
    if config.sequence_parallel:  # the final norm too (a block spec names it; a layer spec gets megatron's)
        from megatron.core.transformer.transformer_block import TransformerBlockSubmodules

        spec = TransformerBlockSubmodules(layer_specs=[spec] * m.num_layers, layer_norm=SequenceParallelNorm)
    model = GPTModel(
        config=config,
        transformer_layer_spec=spec,
        rotary_base=m.rotary_base,
        rope_scaling=m.rope_scaling,
        rope_scaling_factor=m.rope_scaling_factor,
        **language_model_args(m, vocab_size),
    )
    for layer in model.decoder.layers if m.num_moe_experts else ():
        layer.mlp.router.register_forward_hook(_count_routed_tokens)
    if m.position_embedding_type == "sinusoidal":
        from mtds.models.sinusoidal_positions import use_sinusoidal_positions

        use_sinusoidal_positions(model, m)
    return model


def _count_routed_tokens(router, inputs, output) -> None:
    """Forward hook on megatron-core's TopKRouter: tokens routed to each expert since the last read."""
    _, routing_map = output  # [tokens, experts] bool
    counts = routing_map.sum(dim=0).float().detach()
    router.mtds_routed = counts if getattr(router, "mtds_routed", None) is None else router.mtds_routed + counts


def flops_per_token(m, num_params: int, seq_length: int, vocab_size: int, query_tokens: int = 0) -> float:
    """The dense estimate over the parameters a token uses: a mixture of experts' token passes
    through its top-k experts only, so the other experts' weights are left out (MFU stays honest).
    `query_tokens` (permutation LM): K more positions run through the layers after each sample's
    seq_length tokens, and the output layer runs on those K only, so a sample costs (T + K) positions at
    length T + K less the output layer (6 x hidden x vocab per position) at its T content positions."""
    from mtds.models.common import dense_flops_per_token

    if query_tokens:
        length = seq_length + query_tokens
        sample = flops_per_token(m, num_params, length, vocab_size) * length
        return (sample - seq_length * 6 * m.hidden_size * vocab_size) / seq_length

    if m.num_moe_experts:
        ffn = m.moe_ffn_hidden_size or m.ffn_size()
        per_expert = m.hidden_size * ffn * (3 if m.activation == "swiglu" else 2)  # fc1 (gate+up) and fc2
        if m.add_bias_linear:
            per_expert += ffn * (2 if m.activation == "swiglu" else 1) + m.hidden_size
        num_params -= m.num_layers * (m.num_moe_experts - m.moe_router_topk) * per_expert
    return dense_flops_per_token(m, num_params, seq_length, vocab_size)


def before_backward(engine) -> None:
    """megatron-core adds the MoE load-balancing loss's gradient itself (MoEAuxLossAutoScaler), at
    a scale it must be told: DeepSpeed scales the main loss by 1/gradient_accumulation_steps (and,
    in fp16, by the loss scale) inside engine.backward, so the auxiliary loss must get the same, or
    under accumulation N it would weigh N times too much. Harmless for dense models."""
    import torch
    from megatron.core.transformer.moe.router import MoEAuxLossAutoScaler

    scale = float(getattr(engine.optimizer, "loss_scale", 1.0)) if engine.fp16_enabled() else 1.0
    MoEAuxLossAutoScaler.set_loss_scale(torch.tensor(scale / engine.gradient_accumulation_steps(),
                                                     device=engine.device))


def micro_batch_metrics(model) -> dict:
    """MoE: per layer, the share of the routed tokens its busiest expert received (1/experts when
    balanced, 1 when the router collapsed), and in training the load-balancing loss averaged over
    layers (1.0 = tokens spread evenly; megatron-core computes it only with gradients on). Each is
    (value, 1): logged as the mean over micro-batches. {} for a dense model."""
    import torch
    from megatron.core.transformer.moe.moe_utils import clear_aux_losses_tracker, get_moe_layer_wise_logging_tracker

    layers = getattr(model, "module", model).decoder.layers
    if not hasattr(layers[0].mlp, "router"):
        return {}
    metrics = {}
    tracked = get_moe_layer_wise_logging_tracker().get("load_balancing_loss")
    if tracked is not None and torch.is_grad_enabled():
        metrics["moe_load_balancing_loss"] = (tracked["values"].float().mean(), 1)  # [num_layers] -> mean
        clear_aux_losses_tracker()  # (zeroes the tracked values in place: read them first)
    for i, layer in enumerate(layers):
        routed, layer.mlp.router.mtds_routed = layer.mlp.router.mtds_routed, None
        metrics[f"moe_max_expert_share/layer{i}"] = (routed.max() / routed.sum(), 1)
    return metrics


def transformer_layers(model) -> list:
    """The layers training.compile=layers compiles: GPTModel's decoder stack."""
    return list(model.decoder.layers)


FAMILY = Family(
    name="gpt", presets=PRESETS, default_preset="gpt-tiny", validate=validate, build=build,
    flops_per_token=flops_per_token, transformer_layers=transformer_layers,
    hf_architectures=("llama", "mistral", "qwen2", "mixtral", "gpt2"),
    before_backward=before_backward, micro_batch_metrics=micro_batch_metrics,
)
