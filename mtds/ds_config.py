"""Load, check and complete the DeepSpeed JSON before DeepSpeed sees it.

The JSON owns batch sizes, precision, optimizer, LR schedule and clipping; the engine applies
them. What we add here is what DeepSpeed does not do for the user:
- one source of truth for batch sizes: `train_batch_size` is derived from the micro-batch,
  gradient accumulation and data-parallel size (DeepSpeed asks for all three to agree and fails with
  an assertion about their product when they don't);
- the LR scheduler's `total_num_steps` is filled from the run's iteration count when absent, and
  mtds's own schedule (`"type": "WarmupStableDecay"`, mtds/train/lr_schedule.py: linear warmup
  with no step at LR 0, then constant and/or cosine / linear / 1-sqrt decay) is checked here and run
  by mtds, since DeepSpeed has none like it;
- typos in top-level keys are errors (DeepSpeed silently ignores unknown keys);
- on a CPU-only machine fp16, which DeepSpeed refuses there, is switched to bf16 with one line,
  and bf16 to fp32 where the CPU has no bf16 instructions (mtds.cpu_compat.has_native_bf16:
  there bf16 matmuls are emulated, tens of times slower than fp32), also with one line.
"""

from __future__ import annotations

import copy
import difflib
import json
import os

from mtds.config import ConfigError
from mtds.shipped import find_shipped
from mtds.train.lr_schedule import SCHEDULE_TYPE, resolve_scheduler

# Top-level keys DeepSpeed 0.19 reads (a subset that covers training configs). A key close to
# one of these is a typo and an error; other unknown keys only warn, since DeepSpeed grows.
KNOWN_KEYS = {
    "train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
    "optimizer", "scheduler", "fp16", "bf16", "bfloat16", "amp", "zero_optimization",
    "gradient_clipping", "prescale_gradients", "gradient_predivide_factor", "steps_per_print",
    "wall_clock_breakdown", "dump_state", "zero_allow_untested_optimizer", "zero_force_ds_cpu_optimizer",
    "activation_checkpointing", "flops_profiler", "tensorboard", "wandb", "csv_monitor", "comet",
    "communication_data_type", "seq_parallel_communication_data_type", "sparse_gradients",
    "data_types", "checkpoint", "aio", "elasticity", "memory_breakdown", "torch_autocast",
    "compile", "data_efficiency", "curriculum_learning", "disable_allgather", "comms_logger",
    "pipeline", "weight_quantization", "compression_training", "autotuning", "nebula",
    "load_universal_checkpoint", "use_node_local_storage", "graph_harvesting", "timers",
    "train_steps", "zero_ignore_unknown_keys", "hybrid_engine", "eigenvalue",
}
LR_SCHEDULERS_WITH_TOTAL = {"WarmupDecayLR", "WarmupCosineLR"}


def load_ds_config(path: str | None) -> dict:
    if not path:
        raise ConfigError("--deepspeed-config is required, e.g. --deepspeed-config ds_configs/zero2.json "
                          "(`mtds configs` lists the shipped ones)")
    path = find_shipped(path, "ds_configs")  # ds_configs/zero2.json works from any directory
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: DeepSpeed config not found (`mtds configs` lists the shipped ones)")
    try:
        with open(path) as f:
            cfg = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e}); fix the file or use one from ds_configs/") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: expected a JSON object at the top level")
    return cfg


def apply_overrides(cfg: dict, overrides: dict[str, str], path: str) -> dict:
    """The DeepSpeed JSON with command-line overrides `--ds.a.b.c=value` applied (a copy): `value`
    read as JSON where it parses (2e-5, true, [0.9, 0.95], {"stage": 1}), else as a string. Every
    level but the last must be an object in the JSON; a last key it lacks that is close to one it
    has is a typo and an error (the top level is checked against DeepSpeed's keys later)."""
    cfg = copy.deepcopy(cfg)
    for dotted, raw in overrides.items():
        *parents, leaf = dotted.split(".")
        node = cfg
        for i, key in enumerate(parents):
            node = node.get(key) if isinstance(node, dict) else None
            if not isinstance(node, dict):
                where = ".".join(parents[:i + 1])
                raise ConfigError(f"--ds.{dotted}: {path} has no object {where}; override only keys of objects it has")
        if parents and leaf not in node:
            close = difflib.get_close_matches(leaf, list(node), n=1, cutoff=0.75)
            if close:
                raise ConfigError(f"--ds.{dotted}: {path} has no {'.'.join(parents)}.{leaf} "
                                  f"(did you mean {'.'.join(parents)}.{close[0]}?)")
        try:
            node[leaf] = json.loads(raw)
        except json.JSONDecodeError:
            node[leaf] = raw
    return cfg


def _as_int(cfg: dict, key: str, path: str, default=None) -> int | None:
    value = cfg.get(key, default)
    if value is None or value == "auto":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{path}: {key}={value!r} must be a positive integer")
    return value


def batch_sizes(cfg: dict, path: str, dp_size: int) -> dict[str, int]:
    """Micro-batch, accumulation and the global batch; one-line error if they clash. Two of the three
    given, the third is derived (accumulation defaults to 1 when only the micro-batch is given)."""
    micro = _as_int(cfg, "train_micro_batch_size_per_gpu", path)
    accum = _as_int(cfg, "gradient_accumulation_steps", path)
    total = _as_int(cfg, "train_batch_size", path)
    if accum is None and micro is not None and total is not None:
        # The global batch and the micro-batch given (the size recipes): accumulation makes up the
        # rest at this data-parallel size, as DeepSpeed derives it.
        if total % (micro * dp_size):
            raise ConfigError(
                f"{path}: train_batch_size={total} is not a multiple of train_micro_batch_size_per_gpu={micro} x "
                f"data-parallel size {dp_size}; change the micro-batch or the number of ranks")
        accum = total // (micro * dp_size)
    accum = accum or 1
    if micro is None:
        if total is None:
            raise ConfigError(f"{path}: set train_micro_batch_size_per_gpu (and optionally gradient_accumulation_steps)")
        if total % (accum * dp_size):
            raise ConfigError(
                f"{path}: train_batch_size={total} is not divisible by gradient_accumulation_steps={accum} "
                f"x data-parallel size {dp_size}; set train_micro_batch_size_per_gpu instead"
            )
        micro = total // (accum * dp_size)
    expected = micro * accum * dp_size
    if total is not None and total != expected:
        raise ConfigError(
            f"{path}: train_batch_size={total} disagrees with train_micro_batch_size_per_gpu={micro} x "
            f"gradient_accumulation_steps={accum} x data-parallel size {dp_size} = {expected}; "
            "remove train_batch_size (mtds derives it)"
        )
    return {"train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": accum,
            "train_batch_size": expected}


def resolve_ds_config(
    raw: dict,
    path: str,
    dp_size: int,
    train_iters: int | None,
    cuda_available: bool,
    log=print,
    cpu_native_bf16: bool = True,
) -> dict:
    """Return a completed copy of `raw` or raise ConfigError naming the key and the fix.

    `cpu_native_bf16` (mtds.cpu_compat.has_native_bf16) matters only on CPU: without it, bf16
    configs train in fp32."""
    cfg = copy.deepcopy(raw)
    for key in cfg:
        if key not in KNOWN_KEYS:
            close = difflib.get_close_matches(key, KNOWN_KEYS, n=1, cutoff=0.75)
            if close:
                raise ConfigError(f"{path}: unknown key {key!r} (did you mean {close[0]!r}?)")
            log(f"warning: {path}: key {key!r} is not one mtds knows; DeepSpeed may ignore it")

    cfg.update(batch_sizes(cfg, path, dp_size))

    fp16 = cfg.get("fp16", {})
    if isinstance(fp16, dict) and fp16.get("enabled") in (True, "auto"):
        if cfg.get("bf16", {}).get("enabled") is True:
            raise ConfigError(f"{path}: fp16.enabled and bf16.enabled are both true; enable one")
        if not cuda_available:
            log(f"note: {path} asks for fp16, which DeepSpeed refuses on CPU; training in bf16 instead")
            set_precision(cfg, "bf16")

    if not cuda_available and precision(cfg) == "bf16" and not cpu_native_bf16:
        log(f"note: this CPU has no bf16 instructions (bf16 matmuls would be emulated, tens of times slower); "
            f"training in fp32 instead of the bf16 {path} asks for")
        set_precision(cfg, "fp32")

    sched = cfg.get("scheduler")
    if isinstance(sched, dict) and sched.get("type") == SCHEDULE_TYPE:
        resolve_scheduler(sched, path, train_iters)
    elif isinstance(sched, dict) and sched.get("type") in LR_SCHEDULERS_WITH_TOTAL:
        params = sched.setdefault("params", {})
        steps = params.get("total_num_steps", "auto")
        if steps == "auto":
            if train_iters is None:
                raise ConfigError(f"{path}: scheduler.params.total_num_steps is 'auto' but the run length is unknown")
            params["total_num_steps"] = train_iters
        warmup = params.get("warmup_num_steps", 0)
        if isinstance(warmup, int) and warmup >= params["total_num_steps"]:
            raise ConfigError(
                f"{path}: scheduler warmup_num_steps={warmup} >= total_num_steps={params['total_num_steps']}; "
                "shorten the warmup or train longer"
            )
    return cfg


def precision(cfg: dict) -> str:
    """'fp16', 'bf16' or 'fp32', as the resolved config will make DeepSpeed train."""
    if cfg.get("fp16", {}).get("enabled") is True:
        return "fp16"
    if cfg.get("bf16", cfg.get("bfloat16", {})).get("enabled") is True:
        return "bf16"
    return "fp32"


def set_precision(cfg: dict, name: str) -> None:
    """Make `cfg` train in `name` ('bf16' or 'fp32'; fp16 needs its loss-scaler settings)."""
    cfg.pop("bfloat16", None)
    cfg["fp16"] = {"enabled": False}
    cfg["bf16"] = {"enabled": name == "bf16"}


def zero_stage(cfg: dict) -> int:
    return int(cfg.get("zero_optimization", {}).get("stage", 0))
