"""Crash-safe checkpoints through the DeepSpeed engine, with the trainer's state and RNG streams.

Why not DeepSpeed's `latest`: rank 0 writes it without waiting for the other ranks' shards, so
a kill mid-save can leave it naming a partial checkpoint. We save under `<tag>.tmp` with
save_latest=False; rank 0 writes mtds_config.json (what makes a tag complete, see layout.py),
each rank hashes the files it wrote, rank 0 gathers the hashes into manifest.json (manifest.py),
renames the directory and replaces `latest` atomically. mtds_config.json names the manifest, so a
checkpoint of this version found without one is refused rather than loaded unverified.

One timeline per checkpoints folder (layout.abandon_newer): a run resumed from a tag older than its
run dir's newest (training.load_tag, a rollback) moves the newer ones aside once it has loaded
(`start_timeline`), and a save moves aside any tag newer than itself, so `latest` names the newest
save and `keep_last`, which keeps the highest iterations, keeps the newest saves.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil

import numpy as np
import torch

from mtds.ckpt import manifest
from mtds.ckpt.layout import (ABANDONED_DIR, CONFIG_FILE, LATEST_FILE, MODEL_STATES, abandon_newer, atomic_write,
                               complete_tags, read_config, tag_for, write_latest)
from mtds.ckpt.lora_base import is_lora
from mtds.ckpt.resume import check_compatible
from mtds.errors import ConfigError, TrainingStopped
from mtds.parallel.process_groups import barrier, gather_to_rank0, is_rank0


def rng_state() -> dict:
    """This rank's generators, and megatron's tracker streams (attention dropout under tensor
    parallelism draws from its model-parallel stream, which differs per tensor-parallel rank)."""
    from megatron.core import tensor_parallel

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    tracker = tensor_parallel.get_cuda_rng_tracker()
    if tracker.is_initialized():
        state["megatron_tracker"] = {name: s.clone() for name, s in tracker.get_states().items()}
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    if "megatron_tracker" in state:
        from megatron.core import tensor_parallel

        tensor_parallel.get_cuda_rng_tracker().set_states(dict(state["megatron_tracker"]))


def save(engine, run_dir: str, trainer_state: dict, resolved: dict, keep_last: int, log=print, ema=None) -> str:
    """Save on every rank; publish only after all ranks finished. Returns the tag. `ema`: the
    weights' moving average (mtds.train.ema), the same on every rank: rank 0 writes it."""
    root = os.path.join(run_dir, "checkpoints")
    tag = tag_for(trainer_state["iteration"])
    tmp_tag = tag + ".tmp"
    if is_rank0():
        os.makedirs(root, exist_ok=True)
        shutil.rmtree(os.path.join(root, tmp_tag), ignore_errors=True)  # a save killed earlier
    barrier()
    tmp_dir, final_dir = os.path.join(root, tmp_tag), os.path.join(root, tag)
    try:
        with manifest.recording(engine) as written:
            # LoRA: the frozen base is left out (mtds/ckpt/lora_base.py: the record points at it)
            engine.save_checkpoint(root, tag=tmp_tag, client_state={"mtds": trainer_state}, save_latest=False,
                                   exclude_frozen_parameters=is_lora(resolved))
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        written.append(os.path.join(tmp_dir, f"rng_rank{rank}.pt"))
        torch.save(rng_state(), written[-1])
        if is_rank0() and ema is not None:
            from mtds.train.ema import EMA_FILE

            written.append(os.path.join(tmp_dir, EMA_FILE))
            torch.save(ema.state_dict(), written[-1])
        if is_rank0():
            written.append(os.path.join(tmp_dir, CONFIG_FILE))
            atomic_write(written[-1], json.dumps(manifest.named_in(resolved), indent=2))
        hashes = gather_to_rank0(manifest.hash_files(tmp_dir, written))  # also: every rank's files are on disk
        if is_rank0():
            manifest.write(tmp_dir, {rel: entry for part in hashes for rel, entry in part.items()})
    except (OSError, RuntimeError) as e:
        _stop_if_storage_failed(e, root, tmp_dir)
        raise
    if is_rank0():
        shutil.rmtree(final_dir, ignore_errors=True)  # this timeline's own save of this iteration (a finished run resumed)
        os.replace(tmp_dir, final_dir)
        manifest.remember_verified(final_dir)
        moved = abandon_newer(root, tag)  # none after start_timeline: it keeps `latest` the newest save anyway
        if moved:
            log(f"note: {', '.join(moved)} (newer than this save, another timeline) moved to "
                f"{os.path.join(root, ABANDONED_DIR)}; kept, never loaded (move them back to undo)")
        write_latest(root, tag)
        _prune(root, keep_last, log)
        log(f"saved checkpoint {final_dir}")
    barrier()
    return tag


def start_timeline(resume_from: str, run_dir: str, log=print) -> list[str]:
    """After a resume has loaded (and passed its checks), on rank 0 before the first save: if the
    checkpoint is older than its run dir's newest (training.load_tag, a rollback), move the newer
    ones into checkpoints/abandoned/ (layout.abandon_newer) with a note, so this run's saves are the
    ones `keep_last` keeps and `latest`, and so the next --load, names. Not earlier: a run refused
    before it loaded leaves the run dir as it was. Returns the tags moved."""
    root, tag = os.path.split(os.path.normpath(resume_from))
    if os.path.realpath(root) != os.path.realpath(os.path.join(run_dir, "checkpoints")):
        return []  # resumed into another run dir (an empty one: mtds.train.plan.check_not_overwriting)
    moved = abandon_newer(root, tag)
    if moved:
        log(f"note: resumed from {tag}, older than the run's newest checkpoint: {', '.join(moved)} moved to "
            f"{os.path.join(root, ABANDONED_DIR)} (kept, never loaded: move them back to undo); `latest` names "
            f"{tag} and then this run's saves (drop training.load_tag from a job that may be requeued, or it rolls "
            "back again)")
    return moved


def publish_weights(run_dir: str, state: dict, record: dict, iteration: int = 0) -> str:
    """A weights-only checkpoint `iter_<iteration>` (one process, no DeepSpeed engine: a Hugging Face
    import, an average of checkpoints), published as `save` publishes: written under `<tag>.tmp` in
    ZeRO-0's layout (the model states file mtds.ckpt.consolidate reads), hashed into its manifest,
    renamed when complete, and `latest` replaced atomically. Returns the checkpoint directory."""
    root = os.path.join(run_dir, "checkpoints")
    tag = tag_for(iteration)
    final_dir, tmp_dir = os.path.join(root, tag), os.path.join(root, tag + ".tmp")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    os.makedirs(tmp_dir)
    try:
        torch.save({"module": state}, os.path.join(tmp_dir, MODEL_STATES))
        atomic_write(os.path.join(tmp_dir, CONFIG_FILE), json.dumps(manifest.named_in(record), indent=2))
        manifest.write(tmp_dir, {})  # content hashes, checked by training.init_from and the tools
    except (OSError, RuntimeError) as e:
        _stop_if_storage_failed(e, root, tmp_dir)
        raise
    shutil.rmtree(final_dir, ignore_errors=True)
    os.replace(tmp_dir, final_dir)
    write_latest(root, tag)
    return final_dir


# What a failed write looks like: OSError with one of these errnos, or torch.save's RuntimeError
# from its zip writer, which drops the errno ("[enforce fail at inline_container.cc] unexpected pos").
_STORAGE_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                   errno.EIO: "I/O error"}


def _stop_if_storage_failed(error: BaseException, root: str, tmp_dir: str) -> None:
    """A save that failed for lack of space (or quota, or an I/O error): remove the partial save and
    stop with one line naming what was being written and the checkpoint `latest` still names."""
    cause = None
    for e in _chain(error):
        if isinstance(e, OSError) and e.errno in _STORAGE_ERRNOS:
            cause = _STORAGE_ERRNOS[e.errno]
    if cause is None and "inline_container" in str(error) and shutil.disk_usage(root).free < (64 << 20):
        cause = "no space left on device"  # under 64 MiB free after a failed zip write
    if cause is None:
        return
    shutil.rmtree(tmp_dir, ignore_errors=True)
    latest = os.path.join(root, LATEST_FILE)
    named = open(latest).read().strip() if os.path.isfile(latest) else None
    raise TrainingStopped(f"{cause} while writing {tmp_dir}; the partial save is removed and "
                          f"{'latest is still ' + named if named else 'there is no earlier checkpoint'}; free space "
                          "(or move training.run_dir) and resume with --load") from None


def _chain(error: BaseException):
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


_warned_damaged: set[str] = set()


def _prune(root: str, keep_last: int, log=print) -> None:
    """Keep the newest `keep_last` checkpoints that are not damaged and delete every older one.

    Newest by iteration is newest by save: no tag newer than the last save is left in `root`
    (layout.abandon_newer), and abandoned/ is never pruned.

    A damaged checkpoint (files that differ from its manifest) neither counts as kept nor makes a
    good one go: with iter_4 damaged and keep_last=2, [2, 4, 5] keeps 5 and 2 (and leaves 4, for a
    look; it goes once two newer good ones exist). Hashing stops at the oldest kept one, and what
    this process wrote or checked is not read again (manifest.state).
    """
    kept = 0
    for tag in reversed(complete_tags(root)):
        path = os.path.join(root, tag)
        if kept >= keep_last:
            shutil.rmtree(path, ignore_errors=True)
        elif manifest.state(path) == manifest.DAMAGED:
            if path not in _warned_damaged:
                _warned_damaged.add(path)
                log(f"warning: {manifest.damage(path)}; training.keep_last does not count {tag}, and keeps it for now")
        else:
            kept += 1


def load(engine, ckpt_dir: str, current_resolved: dict, log=print, ema=None) -> dict:
    """Load model/optimizer/scheduler (and `ema`'s shadows) and return the trainer state; restores RNG states."""
    check_compatible(read_config(ckpt_dir), current_resolved, log)
    root, tag = os.path.split(ckpt_dir)
    # LoRA: the module holds the base already (loaded through the pointer); the checkpoint only the adapters
    path, client = engine.load_checkpoint(root, tag=tag, load_module_strict=not is_lora(read_config(ckpt_dir)))
    if path is None:
        raise ConfigError(f"{ckpt_dir}: DeepSpeed could not load this checkpoint")
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    rng_file = os.path.join(ckpt_dir, f"rng_rank{rank}.pt")
    if os.path.isfile(rng_file):
        set_rng_state(torch.load(rng_file, weights_only=True))  # checked by mtds.ckpt.safe_loading before the resume
    else:
        log(f"warning: {rng_file} missing (different world size?); RNG streams restart")
    if ema is not None:
        from mtds.train.ema import EMA_FILE

        ema_file = os.path.join(ckpt_dir, EMA_FILE)
        if os.path.isfile(ema_file):
            ema.load_state_dict(torch.load(ema_file, weights_only=True), log=log)
        else:
            log(f"note: {ckpt_dir} holds no {EMA_FILE}: the weights' EMA (training.ema_decay) starts from the "
                "checkpoint's weights")
    return client["mtds"]
