"""Checkpoints: DeepSpeed's save/load plus crash-safe publishing and the trainer's state.

Layout under <run_dir>/checkpoints:
    iter_0000100/            a complete checkpoint (DeepSpeed shards + mtds_config.json + rng_rank*.pt)
    iter_0000200.tmp/        a save in progress (or killed mid-way): never loaded
    latest                   text file naming the newest complete tag (DeepSpeed's own format)

Why not DeepSpeed's `latest`: rank 0 writes it without waiting for the other ranks' shards, so
a kill mid-save can leave it naming a partial checkpoint. We save under `<tag>.tmp` with
save_latest=False, wait for every rank, then rank 0 renames the directory and replaces
`latest` atomically.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil

import numpy as np
import torch

from mtds.config import ConfigError
from mtds.distributed import barrier, is_rank0

TAG_RE = re.compile(r"^iter_(\d{7,})$")
CONFIG_FILE = "mtds_config.json"
# Model keys that change parameter shapes or meaning: a checkpoint cannot load across them.
SHAPE_KEYS = (
    "model_type", "num_layers", "hidden_size", "num_attention_heads", "num_query_groups",
    "ffn_hidden_size", "max_position_embeddings", "vocab_size", "position_embedding_type",
    "normalization", "activation", "tie_embeddings", "add_bias_linear", "bert_binary_head",
)


def checkpoint_root(run_dir: str) -> str:
    return os.path.join(run_dir, "checkpoints")


def tag_for(iteration: int) -> str:
    return f"iter_{iteration:07d}"


def _atomic_write(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save(engine, run_dir: str, trainer_state: dict, resolved: dict, keep_last: int, log=print) -> str:
    """Save on every rank; publish only after all ranks finished. Returns the tag."""
    root = checkpoint_root(run_dir)
    tag = tag_for(trainer_state["iteration"])
    tmp_tag = tag + ".tmp"
    if is_rank0():
        os.makedirs(root, exist_ok=True)
        shutil.rmtree(os.path.join(root, tmp_tag), ignore_errors=True)  # a save killed earlier
    barrier()
    engine.save_checkpoint(root, tag=tmp_tag, client_state={"mtds": trainer_state}, save_latest=False)
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    torch.save(rng_state(), os.path.join(root, tmp_tag, f"rng_rank{rank}.pt"))
    barrier()  # every rank's shards are on disk
    if is_rank0():
        tmp_dir, final_dir = os.path.join(root, tmp_tag), os.path.join(root, tag)
        _atomic_write(os.path.join(tmp_dir, CONFIG_FILE), json.dumps(resolved, indent=2))
        shutil.rmtree(final_dir, ignore_errors=True)
        os.replace(tmp_dir, final_dir)
        _atomic_write(os.path.join(root, "latest"), tag)
        _prune(root, keep_last)
        log(f"saved checkpoint {final_dir}")
    barrier()
    return tag


def complete_tags(root: str) -> list[str]:
    """Published checkpoint tags, oldest first."""
    if not os.path.isdir(root):
        return []
    tags = [t for t in os.listdir(root) if TAG_RE.match(t) and os.path.isfile(os.path.join(root, t, CONFIG_FILE))]
    return sorted(tags, key=lambda t: int(TAG_RE.match(t).group(1)))


def _prune(root: str, keep_last: int) -> None:
    for old in complete_tags(root)[:-keep_last]:
        shutil.rmtree(os.path.join(root, old), ignore_errors=True)


def find_latest(load_dir: str, log=print) -> str | None:
    """The newest complete tag under load_dir (a run dir or its checkpoints dir), or None."""
    if os.path.exists(load_dir) and not os.path.isdir(load_dir):
        raise ConfigError(f"training.load={load_dir!r} is a file; give the run directory to resume from")
    root = load_dir if os.path.isfile(os.path.join(load_dir, "latest")) else checkpoint_root(load_dir)
    tags = complete_tags(root)
    partial = [t for t in os.listdir(root) if t.endswith(".tmp")] if os.path.isdir(root) else []
    for t in partial:
        log(f"warning: skipping partial checkpoint {os.path.join(root, t)} (a save did not finish)")
    latest_file = os.path.join(root, "latest")
    if os.path.isfile(latest_file):
        named = open(latest_file).read().strip()
        if named in tags:
            return os.path.join(root, named)
        log(f"warning: {latest_file} names {named!r}, which is not a complete checkpoint; using the newest complete one")
    return os.path.join(root, tags[-1]) if tags else None


def check_compatible(saved: dict, current: dict, log=print) -> None:
    """Refuse a checkpoint whose model differs in shape; log harmless differences."""
    bad, harmless = [], []
    for section in ("model", "data", "training"):
        old, new = saved.get("run", {}).get(section, {}), current.get("run", {}).get(section, {})
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key) and key != "preset":
                item = f"{section}.{key}: {old.get(key)!r} -> {new.get(key)!r}"
                (bad if section == "model" and key in SHAPE_KEYS else harmless).append(item)
    if bad:
        raise ConfigError("checkpoint does not fit this model: " + "; ".join(bad))
    for item in harmless:
        log(f"note: config differs from the checkpoint's (allowed): {item}")


def plan_resume(load_dir: str, world_size: int, ds_cfg: dict, log=print) -> str | None:
    """The checkpoint to resume from (None: none yet), checked before DeepSpeed starts.

    ZeRO partitions optimizer state per data-parallel rank, and DeepSpeed refuses to load a
    ZeRO checkpoint at another world size except in its universal form: turn that on in
    `ds_cfg` when the checkpoint has one, else say how to make it.
    """
    from mtds.universal_checkpoint import UNIVERSAL_DIR, is_universal

    ckpt = find_latest(load_dir, log=log)
    if ckpt is None:
        return None
    with open(os.path.join(ckpt, CONFIG_FILE)) as f:
        saved = json.load(f)
    saved_world = saved.get("world_size", world_size)
    stage = saved.get("deepspeed", {}).get("zero_optimization", {}).get("stage", 0)
    new_stage = ds_cfg.get("zero_optimization", {}).get("stage", 0)
    if _stage_family(stage) != _stage_family(new_stage):
        # Measured with DeepSpeed 0.19.8: 1 <-> 2 loads; 0 <-> 1/2/3 and 1/2 <-> 3 fail mid-load
        # (different shard files and layouts), universal checkpoint or not.
        raise ConfigError(
            f"training.load: {ckpt} was saved with ZeRO stage {stage} and this run uses stage {new_stage}; "
            f"DeepSpeed resumes only between stages 1 and 2, so set zero_optimization.stage={stage} in the "
            "DeepSpeed JSON (or start a new run from exported weights)"
        )
    if saved_world == world_size or stage == 0:
        return ckpt
    if not is_universal(ckpt):
        raise ConfigError(
            f"training.load: {ckpt} was saved by {saved_world} data-parallel ranks and this run has {world_size}, "
            f"and ZeRO-{stage} partitions the optimizer state per rank; convert it once with "
            f"`python -m mtds.universal_checkpoint --load {load_dir}` (it then resumes at any world size), "
            f"or resume with {saved_world} ranks"
        )
    ds_cfg.setdefault("checkpoint", {})["load_universal"] = True
    log(f"resuming a checkpoint of {saved_world} data-parallel ranks with {world_size}: loading its universal "
        f"form {os.path.join(ckpt, UNIVERSAL_DIR)}")
    return ckpt


def _stage_family(stage: int) -> str:
    """ZeRO stages whose checkpoints load into each other."""
    return {0: "none", 1: "1-2", 2: "1-2"}.get(stage, "3")


def load(engine, ckpt_dir: str, current_resolved: dict, log=print) -> dict:
    """Load model/optimizer/scheduler and return the trainer state; restores RNG states."""
    with open(os.path.join(ckpt_dir, CONFIG_FILE)) as f:
        saved = json.load(f)
    check_compatible(saved, current_resolved, log)
    root, tag = os.path.split(ckpt_dir)
    path, client = engine.load_checkpoint(root, tag=tag)
    if path is None:
        raise ConfigError(f"{ckpt_dir}: DeepSpeed could not load this checkpoint")
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    rng_file = os.path.join(ckpt_dir, f"rng_rank{rank}.pt")
    if os.path.isfile(rng_file):
        set_rng_state(torch.load(rng_file, weights_only=False))
    else:
        log(f"warning: {rng_file} missing (different world size?); RNG streams restart")
    return client["mtds"]
