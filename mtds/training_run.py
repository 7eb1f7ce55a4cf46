"""The wiring of a training run, in the order it is built: the plan (run config, DeepSpeed JSON and
every check that needs neither processes nor data), the processes, the data and tokenizer, the
model and DeepSpeed engine, the datasets and the trainer. Kind-specific work goes through
`cfg.kind` (mtds/kinds.py). mtds/pretrain.py calls `train`; bench/ reuses `build_engine`.
"""

from __future__ import annotations

import json
import math
import os
import platform
from dataclasses import dataclass

from mtds.config import CONFIG_FORMAT, RunConfig, check_vocab, resolved_dict
from mtds.ds_config import batch_sizes, load_ds_config, precision, resolve_ds_config, zero_stage
from mtds.errors import ConfigError
from mtds.parallel import ParallelSizes


@dataclass
class Plan:
    """What was decided before any process group or model exists."""

    cfg: RunConfig
    ds_cfg: dict
    parallel: ParallelSizes
    train_iters: int
    on_gpu: bool
    resume_from: str | None
    init_from: tuple[str, dict] | None = None
    """(checkpoint dir, its saved config) whose weights start the run (training.init_from)."""
    sources: object = None  # mtds.data.DataSources; None until resolved (the default corpus: after init)
    tokenizer: object = None


def plan_run(cfg: RunConfig, ds_config_path: str | None, log=print) -> Plan:
    """Batch sizes, run length, DeepSpeed JSON, run dir, resume checks and the user's data, all
    before DeepSpeed starts (config errors come before even the torch import)."""
    parallel = ParallelSizes(world=int(os.environ.get("WORLD_SIZE", "1")),  # as the launcher announced it
                             tensor=cfg.model.tensor_model_parallel_size)
    ds_raw = load_ds_config(ds_config_path)
    global_batch = batch_sizes(ds_raw, ds_config_path, parallel.data)["train_batch_size"]
    t = cfg.training
    train_iters = t.train_iters or math.ceil(t.train_tokens / (global_batch * cfg.seq_length))
    import torch

    on_gpu = torch.cuda.is_available()
    from mtds.cpu_compat import has_native_bf16

    ds_cfg = resolve_ds_config(ds_raw, ds_config_path, parallel.data, train_iters, on_gpu, log=log,
                               cpu_native_bf16=on_gpu or has_native_bf16())
    if cfg.model.num_moe_experts and zero_stage(ds_cfg) == 3:
        raise ConfigError(f"{ds_config_path}: ZeRO stage 3 with a mixture of experts (model.num_moe_experts="
                          f"{cfg.model.num_moe_experts}) is not supported by DeepSpeed; use stage 1 or 2")
    if cfg.model.recompute_activations and not on_gpu:
        raise ConfigError("model.recompute_activations=true needs CUDA (megatron-core's activation checkpointing "
                          "uses the CUDA RNG tracker); set it false on CPU")
    check_run_dir(t.run_dir, t.load)
    if int(os.environ.get("RANK", "0")) == 0:
        from mtds.run_lock import lock_run_dir

        lock_run_dir(t.run_dir, log=log)
    resume_from = None
    if t.load:
        from mtds.ckpt.resume import plan_resume

        fell_back = not on_gpu and precision(ds_cfg) == "fp32" and precision(ds_raw) != "fp32"
        resume_from = plan_resume(t.load, parallel.data, ds_cfg, log=log, cpu_fell_back_to_fp32=fell_back,
                                  tag=t.load_tag, tensor=parallel.tensor)
        if resume_from is None:
            log(f"note: no complete checkpoint under {t.load}; starting from scratch")
    init_from = None
    if t.init_from and resume_from is None:  # a requeued fine-tuning job resumes instead
        from mtds.ckpt.init_from import plan_init

        init_from = plan_init(t.init_from, resolved_dict(cfg))
    plan = Plan(cfg, ds_cfg, parallel, train_iters, on_gpu, resume_from, init_from)
    from mtds.ckpt.manifest import check_before_load
    from mtds.safe_loading import enable

    enable()  # every torch.load of this run is weights-only (DeepSpeed's too)
    # Content hashes: rank 0 alone reads the checkpoint; the other ranks cannot load anything
    # before it joins them in init_distributed, and its one-line refusal ends the job.
    hashed = int(os.environ.get("RANK", "0")) == 0
    for ckpt, go_back in ((resume_from, "resume from it with --training.load_tag={tag}"),
                          (init_from and init_from[0], None)):
        if ckpt:
            check_before_load(ckpt, go_back, log, hashes=hashed)
    if cfg.data.paths:  # the user's data is checked now; the default corpus is built after init (rank 0)
        plan.sources, plan.tokenizer = data_and_tokenizer(cfg)
    return plan


def check_run_dir(run_dir: str, load: str | None) -> None:
    if load is not None and os.path.exists(load) and not os.path.isdir(load):
        raise ConfigError(f"training.load={load!r} is a file; give the run directory to resume from")
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise ConfigError(f"training.run_dir={run_dir!r} is a file; choose a directory")
    try:
        os.makedirs(run_dir, exist_ok=True)
        probe = os.path.join(run_dir, f".write-test-{os.getpid()}")
        open(probe, "w").close()
        os.remove(probe)
    except OSError as e:
        raise ConfigError(f"training.run_dir={run_dir!r} is not writable ({e.strerror}); choose another") from None


def data_and_tokenizer(cfg: RunConfig):
    """Data sources (checked) and the tokenizer, plus the task's own data checks."""
    from mtds.data import check_token_ids, resolve_sources
    from mtds.tokenizer import load_tokenizer

    sources = resolve_sources(cfg)
    tokenizer = load_tokenizer(sources.tokenizer_model, sources.tokenizer_type)
    sources.tokenizer_type = tokenizer.tokenizer_type  # recorded resolved: the tools reload this class
    check_vocab(cfg, tokenizer.vocab_size, sources.tokenizer_model)
    check_token_ids(sources, tokenizer.vocab_size)
    cfg.kind.task.check_data(cfg, sources, tokenizer)
    return sources, tokenizer


def versions() -> dict:
    import deepspeed
    import megatron.core
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "deepspeed": deepspeed.__version__,
            "megatron_core": megatron.core.__version__, "mtds": __import__("mtds").__version__}


def weight_decay_groups(model) -> list[dict]:
    """No weight decay on biases and norm weights (1-D parameters), as in GPT-2/nanoGPT."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_engine(cfg: RunConfig, ds_cfg: dict, vocab_size: int, on_gpu: bool, log=print,
                 init_from: tuple[str, dict] | None = None):
    """(DeepSpeed engine, parameter count): the kind's model, seeded, its weights from `init_from`
    (checkpoint dir, saved config) if given, compiled as configured. Call after
    mtds.distributed.init_distributed (megatron-core layers look up their process groups)."""
    import deepspeed

    from mtds.compile import compile_engine, compile_layers
    from mtds.distributed import seed_everything
    from mtds.kinds import build_model
    from mtds.tensor_parallel import DeepSpeedMPU, allreduce_sequence_parallel_grads, parameter_count

    seed_everything(cfg.training.seed)
    model = build_model(cfg, vocab_size, precision(ds_cfg), on_gpu)
    if init_from:
        from mtds.ckpt.init_from import load_initial_weights

        load_initial_weights(model, *init_from, log=log)
    if model.config.sequence_parallel:
        allreduce_sequence_parallel_grads(model)
    n_params = parameter_count(model)
    if cfg.training.compile == "layers":
        n = compile_layers(cfg.kind.family.transformer_layers(model))  # compiles lazily, on the first forward
        log(f"torch.compile: each of the {n} transformer layers (training.compile=layers)")
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=weight_decay_groups(model), config=ds_cfg,
                                           mpu=DeepSpeedMPU())
    if cfg.training.compile == "model":
        compile_engine(engine)
        log("torch.compile: the whole model, DeepSpeed's engine.compile() (training.compile=model)")
    return engine, n_params


def train(plan: Plan, log=print) -> int:
    """Start the processes, build model, engine, data and trainer, and train (resuming if planned)."""
    from mtds.distributed import init_distributed, record_peers
    from mtds.metrics import Metrics, device_peak_tflops
    from mtds.trainer import Trainer

    cfg, ds_cfg, parallel = plan.cfg, plan.ds_cfg, plan.parallel
    rank, world, _ = init_distributed(cfg.training.dist_timeout_mins, tensor_parallel=parallel.tensor)
    record_peers()  # so a rank that loses contact can name the one that died
    if world != parallel.world:
        raise ConfigError(f"WORLD_SIZE said {parallel.world} ranks but {world} joined; check the launcher")
    if plan.sources is None:
        plan.sources, plan.tokenizer = data_and_tokenizer(cfg)
    sources = plan.sources
    vocab_size = cfg.model.padded_vocab_size(plan.tokenizer.vocab_size)
    if plan.init_from:
        from mtds.ckpt.init_from import check_special_tokens, check_vocab

        check_vocab(*plan.init_from, vocab_size)
        check_special_tokens(*plan.init_from, plan.tokenizer, sources.tokenizer_model)
    engine, n_params = build_engine(cfg, ds_cfg, vocab_size, plan.on_gpu, log, plan.init_from)
    global_batch = ds_cfg["train_batch_size"]
    resolved = {"config_format": CONFIG_FORMAT, "run": resolved_dict(cfg), "deepspeed": ds_cfg, "world_size": world, "parallel": parallel.as_dict(),
                "versions": versions(),
                "data_sources": {"prefixes": sources.prefixes, "weights": sources.weights,
                                 "valid_prefixes": sources.valid_prefixes,
                                 "tokenizer_model": os.path.abspath(sources.tokenizer_model),
                                 "tokenizer_type": sources.tokenizer_type,
                                 "identity": sources.identity()},
                "vocab_size": vocab_size, "num_parameters": n_params, "train_iters": plan.train_iters}
    if parallel.tensor > 1:  # how the shards merge, for the tools (mtds.ckpt.consolidate)
        from mtds.tensor_parallel import tensor_layout

        resolved["parallel"]["tensor_layout"] = tensor_layout(engine.module)
    if rank == 0:
        with open(os.path.join(cfg.training.run_dir, "config.json"), "w") as f:
            json.dump(resolved, f, indent=2)
    layout = f" (TP {parallel.tensor} x DP {parallel.data})" if parallel.tensor > 1 else ""
    log(f"model: {cfg.model.model_type} {n_params / 1e6:.1f}M parameters, {cfg.model.num_layers} layers x "
        f"{cfg.model.hidden_size}, seq {cfg.seq_length}, vocab {vocab_size} | {precision(ds_cfg)} | ZeRO "
        f"{ds_cfg.get('zero_optimization', {}).get('stage', 0)} | world {world}{layout} | global batch {global_batch} "
        f"| {plan.train_iters} iterations")

    # Enough training samples for the whole run, fixed validation/test sets.
    eval_samples = cfg.training.eval_iters * ds_cfg["train_micro_batch_size_per_gpu"] * parallel.data
    sizes = [plan.train_iters * global_batch, eval_samples, eval_samples]
    task = cfg.kind.task
    datasets = task.build_datasets(cfg, sources, plan.tokenizer, sizes, parallel.data)
    metrics = Metrics(cfg.training.run_dir, rank == 0, plan.train_iters, cfg.training.progress_bar)
    from mtds.kinds import forward_step

    forward = forward_step(cfg)
    # A task whose model sees more than seq_length tokens per sample says so (T5: the decoder's length).
    flops_args = task.flops_args(cfg.task, cfg.seq_length) if hasattr(task, "flops_args") else {}
    trainer = Trainer(cfg, engine, datasets, resolved, forward, metrics, parallel=parallel, rank=rank,
                      train_iters=plan.train_iters,
                      flops_per_token=cfg.kind.family.flops_per_token(cfg.model, n_params, cfg.seq_length, vocab_size,
                                                                      **flops_args),
                      peak_tflops=cfg.training.tflops_peak or device_peak_tflops(precision(ds_cfg)), log=log)
    if plan.resume_from:
        trainer.resume(plan.resume_from)
    try:
        trainer.fit()
    finally:
        metrics.close()
    return 0
