"""Pretrain a GPT or BERT model: megatron-core model, DeepSpeed engine, Megatron .bin/.idx data.

    deepspeed mtds/pretrain.py --deepspeed_config ds_configs/zero2.json \
        [--config RUN.toml] [--load RUN_DIR] [--section.key=value ...]

With no data given it trains on the embedded default corpus (the Python standard library),
building it with data_tools on first use. Every config problem is reported in one line before
DeepSpeed starts.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import warnings

if __package__ in (None, ""):  # run as a script by the deepspeed launcher: make `mtds` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_tools.errors import DataToolsError
from mtds.config import ConfigError, RunConfig, build_config, check_vocab, load_file, parse_overrides, resolved_dict
from data_tools.spm import TokenizerError
from mtds.errors import TrainingStopped


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, RunConfig]:
    p = argparse.ArgumentParser(
        prog="mtds/pretrain.py",
        description=__doc__.split("\n\n")[0],
        epilog="Any run-config key can be overridden as --section.key=value, e.g. --training.train_iters=100 "
               "--model.preset=gpt-125m --data.paths='data/a_text_document data/b_text_document'.",
    )
    p.add_argument("--deepspeed_config", "--deepspeed-config", help="DeepSpeed JSON (ds_configs/*.json)")
    p.add_argument("--config", help="run config (.toml or .json); see mtds/configs/")
    p.add_argument("--load", help="resume from the latest complete checkpoint of this run dir")
    p.add_argument("--run-dir", help="shortcut for --training.run_dir")
    p.add_argument("--model-type", choices=("gpt", "bert"), help="shortcut for --model.model_type (BERT presets: bert-*)")
    p.add_argument("--exit-duration-mins", type=float, help="save and exit after this many minutes")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args, rest = p.parse_known_args(argv)
    overrides = parse_overrides(rest)
    shortcuts = {("training", "load"): args.load, ("training", "run_dir"): args.run_dir,
                 ("model", "model_type"): args.model_type,
                 ("training", "exit_duration_mins"): args.exit_duration_mins}
    for (section, key), value in shortcuts.items():
        if value is not None:
            overrides.setdefault(section, {})[key] = value
    if args.model_type == "bert" and "preset" not in overrides.get("model", {}):
        overrides["model"]["preset"] = "bert-tiny"
    file_dict = load_file(args.config) if args.config else {}
    return args, build_config(file_dict, overrides)


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


def run(argv: list[str]) -> int:
    from mtds.ds_config import batch_sizes, load_ds_config, precision, resolve_ds_config

    rank_env = int(os.environ.get("RANK", "0"))
    log = print if rank_env == 0 else (lambda *a, **k: None)

    # 1. Everything that can be checked without DeepSpeed or data (config errors come before
    #    even the torch import).
    args, cfg = parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))  # as the launcher announced it
    ds_raw = load_ds_config(args.deepspeed_config)
    global_batch = batch_sizes(ds_raw, args.deepspeed_config, world)["train_batch_size"]
    train_iters = cfg.training.train_iters or math.ceil(cfg.training.train_tokens / (global_batch * cfg.seq_length))
    import torch

    on_gpu = torch.cuda.is_available()
    ds_cfg = resolve_ds_config(ds_raw, args.deepspeed_config, world, train_iters, on_gpu, log=log)
    if cfg.model.recompute_activations and not on_gpu:
        raise ConfigError("model.recompute_activations=true needs CUDA (megatron-core's activation checkpointing "
                          "uses the CUDA RNG tracker); set it false on CPU")
    check_run_dir(cfg.training.run_dir, cfg.training.load)
    resume_from = None
    if cfg.training.load:
        from mtds.checkpoint import plan_resume

        resume_from = plan_resume(cfg.training.load, world, ds_cfg, log=log)
        if resume_from is None:
            log(f"note: no complete checkpoint under {cfg.training.load}; starting from scratch")

    from mtds.data import build_datasets, check_token_ids, resolve_sources
    from mtds.tokenizer import SentencePieceTokenizer

    def data_and_tokenizer():
        sources = resolve_sources(cfg)
        tokenizer = SentencePieceTokenizer(sources.tokenizer_model)
        check_vocab(cfg, tokenizer.vocab_size, sources.tokenizer_model)
        check_token_ids(sources, tokenizer.vocab_size)
        if cfg.model.model_type == "bert":
            from mtds.bert import check_bert_data

            check_bert_data(cfg, sources, tokenizer)
        return sources, tokenizer

    # User data is checked here, before any process group or DeepSpeed work; the default
    # corpus can only be resolved after init (rank 0 builds it while the others wait).
    sources, tokenizer = data_and_tokenizer() if cfg.data.paths else (None, None)

    # 2. Processes.
    import deepspeed

    from mtds.distributed import init_distributed, seed_everything
    from mtds.metrics import Metrics, device_peak_tflops
    from mtds.model import build_model, count_parameters, flops_per_token
    from mtds.steps import forward_step
    from mtds.trainer import Trainer

    rank, world, _ = init_distributed()
    if sources is None:
        sources, tokenizer = data_and_tokenizer()
    vocab_size = cfg.model.padded_vocab_size(tokenizer.vocab_size)
    prec = precision(ds_cfg)

    # 3. Model and engine.
    seed_everything(cfg.training.seed)
    model = build_model(cfg.model, vocab_size, prec, on_gpu)
    n_params = count_parameters(model)
    if cfg.training.compile == "layers":
        from mtds.compile import compile_layers

        n = compile_layers(model)  # compiles lazily, on the first forward
        log(f"torch.compile: each of the {n} transformer layers (training.compile=layers)")
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=weight_decay_groups(model), config=ds_cfg)
    if cfg.training.compile == "model":
        from mtds.compile import compile_engine

        compile_engine(engine)
        log("torch.compile: the whole model, DeepSpeed's engine.compile() (training.compile=model)")

    resolved = {"run": resolved_dict(cfg), "deepspeed": ds_cfg, "world_size": world, "versions": versions(),
                "data_sources": {"prefixes": sources.prefixes, "weights": sources.weights,
                                 "valid_prefixes": sources.valid_prefixes,
                                 "tokenizer_model": os.path.abspath(sources.tokenizer_model)},
                "vocab_size": vocab_size, "num_parameters": n_params, "train_iters": train_iters}
    if rank == 0:
        with open(os.path.join(cfg.training.run_dir, "config.json"), "w") as f:
            json.dump(resolved, f, indent=2)
    log(f"model: {cfg.model.model_type} {n_params / 1e6:.1f}M parameters, {cfg.model.num_layers} layers x "
        f"{cfg.model.hidden_size}, seq {cfg.seq_length}, vocab {vocab_size} | {prec} | ZeRO "
        f"{ds_cfg.get('zero_optimization', {}).get('stage', 0)} | world {world} | global batch {global_batch} "
        f"| {train_iters} iterations")

    # 4. Data: enough training samples for the whole run, fixed validation/test sets.
    micro = ds_cfg["train_micro_batch_size_per_gpu"]
    eval_samples = cfg.training.eval_iters * micro * world
    datasets = build_datasets(cfg, sources, tokenizer, [train_iters * global_batch, eval_samples, eval_samples], world)

    metrics = Metrics(cfg.training.run_dir, rank == 0, train_iters, cfg.training.progress_bar)
    trainer = Trainer(cfg, engine, datasets, resolved, forward_step(cfg.model.model_type), metrics,
                      rank=rank, world_size=world, train_iters=train_iters,
                      flops_per_token=flops_per_token(cfg.model, n_params, cfg.seq_length, vocab_size),
                      peak_tflops=cfg.training.tflops_peak or device_peak_tflops(prec), log=log)
    if resume_from:
        trainer.resume(resume_from)
    try:
        trainer.fit()
    finally:
        metrics.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", message=".*(Transformer Engine|Apex).*")
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except (ConfigError, TokenizerError, DataToolsError) as e:  # one line, no traceback
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingStopped as e:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"error: {e}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
