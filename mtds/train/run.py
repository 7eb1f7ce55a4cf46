"""Carrying out a training run's plan (mtds/train/plan.py), in the order it is built: the processes,
the data and tokenizer, the model and DeepSpeed engine, the saved-run record, the datasets and the
trainer. This and the plan are the run's wiring: the only code below the commands that reads the
run's kind (mtds/kinds.py) and hands its hooks on. mtds/pretrain.py calls `train`.
"""

from __future__ import annotations

import json
import os

from mtds.ckpt.layout import read_config
from mtds.ckpt.run_record import data_sources_record, run_record, versions
from mtds.ds_config import precision
from mtds.errors import ConfigError
from mtds.train.engine import build_engine
from mtds.train.plan import Plan, data_and_tokenizer


def train(plan: Plan, log=print) -> int:
    """Start the processes, build model, engine, data and trainer, and train (resuming if planned)."""
    from mtds.parallel.process_groups import init_distributed, record_peers
    from mtds.train.metrics import Metrics, device_peak_tflops
    from mtds.train.trainer import Trainer

    cfg, ds_cfg, parallel = plan.cfg, plan.ds_cfg, plan.parallel
    rank, world, _ = init_distributed(cfg.training.dist_timeout_mins, tensor_parallel=parallel.tensor)
    record_peers()  # so a rank that loses contact can name the one that died
    if world != parallel.world:
        raise ConfigError(f"WORLD_SIZE said {parallel.world} ranks but {world} joined; check the launcher")
    if plan.sources is None:
        plan.sources, plan.tokenizer = data_and_tokenizer(cfg)
    sources = plan.sources
    vocab_size = cfg.model.padded_vocab_size(plan.tokenizer.vocab_size)
    downstream = None
    if cfg.training.downstream_evals:  # the packs, of this run's tokenizer (mtds/train/downstream.py)
        from mtds.train.downstream import Downstream, load_packs

        downstream = Downstream(cfg, load_packs(cfg, sources.tokenizer_model), cfg.kind.task.continuation_logits)
    if plan.init_from:
        from mtds.ckpt.init_from import check_special_tokens, check_vocab

        check_vocab(*plan.init_from, vocab_size)
        check_special_tokens(*plan.init_from, plan.tokenizer, sources.tokenizer_model)
    if plan.teacher:  # the same token ids as the student's (mtds.train.distill)
        from mtds.train.distill import check_vocab as check_teacher_vocab

        check_teacher_vocab(plan.teacher[0], read_config(plan.teacher[0]), vocab_size, sources.tokenizer_model)
    engine, n_params, unused_init_keys = build_engine(cfg, cfg.kind, ds_cfg, vocab_size, plan.on_gpu, log, plan.init_from)
    global_batch = ds_cfg["train_batch_size"]
    data_sources = data_sources_record(sources.prefixes, sources.tokenizer_model, sources.tokenizer_type,
                                       sources.weights, sources.valid_prefixes, sources.identity())
    resolved = run_record(cfg, deepspeed=ds_cfg, parallel=parallel.as_dict(), data_sources=data_sources,
                          vocab_size=vocab_size, num_parameters=n_params, train_iters=plan.train_iters,
                          versions=versions(), **lineage(plan))
    if plan.teacher:
        resolved["distilled_from"] = plan.teacher[1]
    branched = resolved.get("branched_from") or {}
    if cfg.training.lora_rank:  # the base its adapters-only checkpoints need (mtds/ckpt/lora_base.py)
        from mtds.ckpt.lora_base import KEY, record

        resolved[KEY] = record(plan.init_from[0], unused_init_keys)
    if parallel.tensor > 1:  # how the shards merge, for the tools (mtds.ckpt.consolidate)
        from mtds.parallel.tensor_parallel import tensor_layout

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
    # A branch's training set is built for at least its parent's samples: the parent's order (mtds.ckpt.branch).
    sizes = [max(plan.train_iters * global_batch, branched.get("train_samples", 0)), eval_samples, eval_samples]
    family, task = cfg.kind.family, cfg.kind.task  # the wiring hands the kind's hooks on (mtds/kinds.py)
    datasets = task.build_datasets(cfg, sources, plan.tokenizer, sizes, parallel.data)
    from mtds.data.loader import order_probes

    resolved["train_order"] = order_probes(datasets[0], sizes[0])  # saved with each checkpoint, for the resume check
    metrics = Metrics(cfg.training.run_dir, rank == 0, plan.train_iters, cfg.training.progress_bar)
    from mtds.kinds import count_targets, forward_step

    forward, counts = forward_step(cfg), count_targets(cfg)
    if plan.teacher:  # the teacher's logits train the student: its own forward step and counts
        from mtds.train.distill import Distiller, load_teacher
        from mtds.train.reduction import data_parallel_group

        teacher = load_teacher(plan.teacher[0], read_config(plan.teacher[0]), precision(ds_cfg), engine.device, log)
        distiller = Distiller(cfg, teacher, task.token_logits, counts, vocab_size, data_parallel_group(),
                              family.micro_batch_metrics, log)
        forward, counts = distiller.forward, distiller.count_targets
    # A task whose model sees more than seq_length tokens per sample says so (T5: the decoder's length).
    flops_args = task.flops_args(cfg.task, cfg.seq_length) if task.flops_args is not None else {}
    trainer = Trainer(cfg, engine, datasets, resolved, forward, counts, metrics,
                      parallel=parallel, rank=rank,
                      train_iters=plan.train_iters,
                      flops_per_token=family.flops_per_token(cfg.model, n_params, cfg.seq_length, vocab_size, **flops_args),
                      peak_tflops=cfg.training.tflops_peak or device_peak_tflops(precision(ds_cfg)),
                      before_backward=family.before_backward, summarize=task.summarize, log=log,
                      downstream=downstream)
    if plan.resume_from:
        if plan.branch:
            from mtds.ckpt.branch import describe

            log(describe(plan.branch))
        trainer.resume(plan.resume_from)
        if rank == 0:  # loaded and checked: a rollback's newer tags go aside before the first save (save_load)
            from mtds.ckpt.save_load import start_timeline

            start_timeline(plan.resume_from, cfg.training.run_dir, log)
    try:
        if rank == 0 and cfg.training.wandb_project:  # the run dir's W&B run, continued on a resume (wandb_log.py)
            from mtds.train.wandb_log import start as start_wandb

            metrics.wandb = start_wandb(cfg.training, resolved, trainer.state.iteration if plan.resume_from else None, log)
        state = trainer.fit()
    except BaseException:
        metrics.close(failed=True)
        raise
    metrics.close()  # finishes the W&B run too: also after a stop to resume (SIGTERM, time limit)
    if state.iteration == plan.train_iters:  # finished (not a stop to resume): what to do with it
        log(trainer.summary())
        for command in next_commands(cfg.training.run_dir, generates=task.next_token_logits is not None
                                     or task.seq2seq_logits is not None, exports=bool(family.hf_architectures)):
            log(f"next: {command}")
    return 0


def lineage(plan: Plan) -> dict:
    """`branched_from` of a branch (training.branch_from), kept by every later resume of it."""
    if plan.branch:
        return {"branched_from": plan.branch}
    if plan.resume_from:
        saved = read_config(plan.resume_from).get("branched_from")
        return {"branched_from": saved} if saved else {}
    return {}


def next_commands(run_dir: str, generates: bool, exports: bool) -> list[str]:
    """The commands a finished run leads to, for its last lines."""
    out = [f'python -m mtds.generate --load {run_dir} --prompt "..."'] if generates else []
    out.append(f"python -m mtds.evaluate --load {run_dir}")
    if exports:
        out.append(f"python -m mtds.export_hf --load {run_dir} --out hf/{os.path.basename(os.path.normpath(run_dir))}")
    out += [f"python -m mtds.plot {run_dir}", f"tensorboard --logdir {run_dir}/tensorboard"]
    return out
