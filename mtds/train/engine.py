"""The model and its DeepSpeed engine: seeded, weights from `init_from` if given, sequence-parallel
gradient hooks, compiled as configured, then `deepspeed.initialize` (ZeRO, optimizer, precision,
LR schedule, clipping: all from the DeepSpeed JSON; mtds runs the WarmupStableDecay schedule itself,
mtds/train/lr_schedule.py). bench/ reuses `build_engine`.
"""

from __future__ import annotations

from mtds.config import RunConfig
from mtds.ds_config import precision
from mtds.kinds import Kind


def weight_decay_groups(model) -> list[dict]:
    """No weight decay on biases and norm weights (1-D parameters), as in GPT-2/nanoGPT."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_engine(cfg: RunConfig, kind: Kind, ds_cfg: dict, vocab_size: int, on_gpu: bool, log=print,
                 init_from: tuple[str, dict] | None = None):
    """(DeepSpeed engine, parameter count, the init_from tensors this model had no place for): the model
    of `kind` (the run's, handed over by the wiring), seeded, its weights from `init_from` (checkpoint
    dir, saved config) if given, compiled as configured. Call after
    mtds.parallel.process_groups.init_distributed (megatron-core layers look up their process groups)."""
    import deepspeed

    from mtds.parallel.process_groups import seed_everything, seed_per_data_rank
    from mtds.parallel.tensor_parallel import DeepSpeedMPU, allreduce_sequence_parallel_grads, parameter_count
    from mtds.train.compile import compile_engine, compile_layers
    from mtds.train.lr_schedule import deepspeed_arguments, describe_scheduler

    seed_everything(cfg.training.seed)
    model = kind.family.build(cfg.model, vocab_size, precision(ds_cfg), on_gpu, **kind.task.model_heads(cfg.task))
    unused_init_keys = []
    if init_from:
        from mtds.ckpt.init_from import load_initial_weights

        unused_init_keys = load_initial_weights(model, *init_from, log=log)
    if cfg.training.lora_rank:  # frozen base + adapters (the optimizer below gets only the adapters)
        from mtds.models.lora import apply_lora

        apply_lora(model, cfg.training, kind.task.lora_heads, log=log)
    seed_per_data_rank(cfg.training.seed)  # the weights are built: dropout masks now differ per data-parallel rank
    if model.config.sequence_parallel:
        allreduce_sequence_parallel_grads(model)
    n_params = parameter_count(model)
    if cfg.training.compile == "layers":
        n = compile_layers(kind.family.transformer_layers(model))  # compiles lazily, on the first forward
        log(f"torch.compile: each of the {n} transformer layers (training.compile=layers)")
    # mtds's own LR schedule (WarmupStableDecay) is handed over as an object; DeepSpeed's types stay in the JSON.
    ds_config, lr_scheduler = deepspeed_arguments(ds_cfg, log=log)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=weight_decay_groups(model), config=ds_config,
                                           lr_scheduler=lr_scheduler, mpu=DeepSpeedMPU())
    log(describe_scheduler(engine, ds_cfg))
    if cfg.training.compile == "model":
        compile_engine(engine)
        log("torch.compile: the whole model, DeepSpeed's engine.compile() (training.compile=model)")
    return engine, n_params, unused_init_keys
