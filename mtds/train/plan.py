"""The plan of a training run: everything decided before any process group or model exists (run
config, DeepSpeed JSON, batch sizes and run length, run dir and its lock, resume, branch_from and
init_from checks, the user's data and tokenizer). Config errors come before even the torch import.
mtds/train/run.py carries the plan out.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from mtds.config import RunConfig, check_vocab, resolved_dict
from mtds.ds_config import apply_overrides, batch_sizes, load_ds_config, precision, resolve_ds_config, zero_stage
from mtds.errors import ConfigError
from mtds.parallel.sizes import ParallelSizes


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
    branch: dict | None = None
    """training.branch_from's record (mtds.ckpt.branch): resume_from is then the parent's checkpoint."""
    teacher: tuple[str, dict] | None = None
    """(checkpoint dir, `distilled_from` record) of training.teacher (mtds.train.distill)."""
    sources: object = None  # mtds.data.sources.DataSources; None until resolved (the default corpus: after init)
    tokenizer: object = None


def plan_run(cfg: RunConfig, ds_config_path: str | None, log=print, ds_overrides: dict | None = None) -> Plan:
    """Batch sizes, run length, DeepSpeed JSON (with the command line's `--ds.*` overrides), run dir,
    resume checks and the user's data, all before DeepSpeed starts (config errors come before even
    the torch import)."""
    from mtds.train.wandb_log import check_installed

    check_installed(cfg.training.wandb_project)
    parallel = ParallelSizes(world=int(os.environ.get("WORLD_SIZE", "1")),  # as the launcher announced it
                             tensor=cfg.model.tensor_model_parallel_size)
    ds_raw = apply_overrides(load_ds_config(ds_config_path), ds_overrides or {}, ds_config_path)
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
    if t.ema_decay is not None and (zero_stage(ds_cfg) == 3 or parallel.tensor > 1):
        raise ConfigError(f"training.ema_decay={t.ema_decay} needs whole parameters on every rank: ZeRO stage 0-2 "
                          "without tensor parallelism (this run: ZeRO "
                          f"{zero_stage(ds_cfg)}, model.tensor_model_parallel_size={parallel.tensor})")
    from mtds.train.downstream import check_plan

    check_plan(cfg, cfg.kind.task.continuation_logits is not None, parallel.tensor)  # training.downstream_evals
    if cfg.model.recompute_activations and not on_gpu:
        raise ConfigError("model.recompute_activations=true needs CUDA (megatron-core's activation checkpointing "
                          "uses the CUDA RNG tracker); set it false on CPU")
    check_run_dir(t.run_dir, t.load)
    if int(os.environ.get("RANK", "0")) == 0:
        from mtds.train.run_lock import lock_run_dir

        lock_run_dir(t.run_dir, log=log)
    from mtds.ckpt.resume import plan_resume

    fell_back = not on_gpu and precision(ds_cfg) == "fp32" and precision(ds_raw) != "fp32"
    resume_from, branch, go_back = None, None, "resume from it with --training.load_tag={tag}"
    if t.load:
        resume_from = plan_resume(t.load, parallel.data, ds_cfg, log=log, cpu_fell_back_to_fp32=fell_back,
                                  tag=t.load_tag, tensor=parallel.tensor)
        if resume_from is None:
            log(f"note: no complete checkpoint under {t.load}; "
                + (f"branching from {t.branch_from}" if t.branch_from else "starting from scratch"))
    if t.branch_from and resume_from is None:  # a requeued branch (with --load) resumes instead
        from mtds.ckpt.branch import parse, plan_branch

        resume_from, branch = plan_branch(t.branch_from, t.run_dir, resolved_dict(cfg))
        parent = parse(t.branch_from)[0]  # world size, ZeRO stage and precision: checked as for a resume
        plan_resume(parent, parallel.data, ds_cfg, log=log, cpu_fell_back_to_fp32=fell_back, tag=branch["tag"],
                    tensor=parallel.tensor, key=f"training.branch_from={t.branch_from!r}")
        go_back = f"branch from it with --training.branch_from={parent}:{{tag}}"
    check_not_overwriting(t.run_dir, resume_from)
    if resume_from:  # the config keys that move the data order, before the checkpoint is hashed or DeepSpeed starts
        from mtds.ckpt.layout import read_config
        from mtds.ckpt.resume import check_data_order

        here = {"run": resolved_dict(cfg), "deepspeed": ds_cfg, "train_iters": train_iters}
        check_data_order(read_config(resume_from), here, log=lambda *_: None)  # its notes come with the load
    init_from = None
    if t.init_from and resume_from is None:  # a requeued fine-tuning job resumes instead
        from mtds.ckpt.init_from import plan_init

        init_from = plan_init(t.init_from, resolved_dict(cfg))
    elif t.lora_rank and resume_from:  # adapters-only checkpoints: the base comes through their pointer
        from mtds.ckpt.layout import read_config
        from mtds.ckpt.lora_base import base_checkpoint

        init_from = base_checkpoint(read_config(resume_from), resume_from)
    teacher = None
    if t.teacher:  # knowledge distillation: the teacher checked (and hashed below) before DeepSpeed starts
        from mtds.ckpt.layout import read_config
        from mtds.train.distill import check_resumed_teacher, plan_teacher

        teacher = plan_teacher(cfg, parallel.tensor, cfg.kind.family, cfg.kind.task.token_logits is not None)
        if resume_from:
            check_resumed_teacher(read_config(resume_from), teacher[1])
    plan = Plan(cfg, ds_cfg, parallel, train_iters, on_gpu, resume_from, init_from, branch, teacher)
    from mtds.ckpt.manifest import check_before_load
    from mtds.ckpt.safe_loading import enable

    enable()  # every torch.load of this run is weights-only (DeepSpeed's too)
    # Content hashes: rank 0 alone reads the checkpoint; the other ranks cannot load anything
    # before it joins them in init_distributed, and its one-line refusal ends the job.
    hashed = int(os.environ.get("RANK", "0")) == 0
    for ckpt, earlier in ((resume_from, go_back), (init_from and init_from[0], None), (teacher and teacher[0], None)):
        if ckpt:
            check_before_load(ckpt, earlier, log, hashes=hashed)
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


def check_not_overwriting(run_dir: str, resume_from: str | None) -> None:
    """A run may save into a run dir that holds checkpoints only by resuming from one of them.

    Why: a fresh run (no --load, or a --load that found nothing) or a resume from another run dir
    would save its own iterations among the older run's: `save` replaces a tag of the same
    iteration, `keep_last` deletes the older run's by number, and TensorBoard and mtds.plot draw
    both runs as one curve.
    """
    from mtds.ckpt.layout import complete_tags

    root = os.path.join(run_dir, "checkpoints")
    tags = complete_tags(root)
    if not tags or (resume_from and os.path.realpath(os.path.dirname(resume_from)) == os.path.realpath(root)):
        return
    doing = f"resumes from {resume_from}" if resume_from else "starts from scratch"
    raise ConfigError(f"training.run_dir={run_dir!r} already holds a run's checkpoints (newest {tags[-1]}) and this run "
                      f"{doing}, which would overwrite them; resume that run with --load {run_dir}, or give this run "
                      "another --run-dir")


def data_and_tokenizer(cfg: RunConfig):
    """Data sources (checked) and the tokenizer, plus the task's own data checks."""
    from mtds.data.sources import check_token_ids, resolve_sources
    from mtds.data.tokenizer import load_tokenizer

    sources = resolve_sources(cfg, cfg.kind.task.data_layout)
    tokenizer = load_tokenizer(sources.tokenizer_model, sources.tokenizer_type)
    sources.tokenizer_type = tokenizer.tokenizer_type  # recorded resolved: the tools reload this class
    check_vocab(cfg, tokenizer.vocab_size, sources.tokenizer_model)
    check_token_ids(sources, tokenizer.vocab_size)
    cfg.kind.task.check_data(cfg, sources, tokenizer)
    return sources, tokenizer
