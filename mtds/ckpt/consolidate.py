"""One fp32 model state dict from a checkpoint's shards, without a DeepSpeed engine (for the tools).

Weights come from DeepSpeed's own consolidation (`deepspeed.utils.zero_to_fp32`), which merges
the fp32 master partitions of ZeRO stage 1, 2 and 3 checkpoints of any world size — so a bf16 run
is loaded at its full fp32 precision. ZeRO stage 0 has no partitioned master copy there (its
module weights are the trained weights; DeepSpeed's BF16_Optimizer keeps its fp32 copy in a
format zero_to_fp32 does not read), so for stage 0 the module state is read and cast to fp32.

A tensor-parallel checkpoint holds one set of files per tensor-parallel rank (`mp_rank_XX`);
zero_to_fp32 reads only one set, so each rank's files are consolidated on their own (through a
directory of links that names them as rank 00's) and the shards merged (mtds.ckpt.tensor_shards)
by the layout saved in the checkpoint's config.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pickle
import sys
import tempfile

import torch

from mtds.errors import LoadError


def zero_stage(saved: dict) -> int:
    return int(saved.get("deepspeed", {}).get("zero_optimization", {}).get("stage", 0))


def consolidated_state_dict(ckpt_dir: str, saved: dict, merge_lora: bool = True) -> dict:
    """fp32 model state dict of a DeepSpeed checkpoint of any ZeRO stage and world size.

    megatron-core modules save an `_extra_state` entry per linear layer (Transformer Engine's FP8
    metadata slot; None here): they are not weights and are left out. A LoRA run's adapters are
    folded into their layers' weights (mtds.models.lora.merged) unless merge_lora is False; its
    checkpoints hold only the adapters, and the base is read through their pointer (mtds/ckpt/lora_base.py).
    """
    state = _consolidated(ckpt_dir, saved)
    from mtds.ckpt.lora_base import KEY, base_checkpoint, is_lora

    if is_lora(saved) and saved.get(KEY):  # adapters only: the base's tensors come through the checkpoint's pointer
        base = consolidated_state_dict(*base_checkpoint(saved, ckpt_dir))
        left_out = set(saved[KEY].get("left_out", ()))  # e.g. a pretrained BERT's masked-LM head under a classifier
        state = {**{k: v for k, v in base.items() if k not in left_out}, **state}
    if merge_lora and is_lora(saved):
        from types import SimpleNamespace

        from mtds.models.lora import merged

        state = merged(state, SimpleNamespace(**saved["run"]["training"]))
    return state


def _consolidated(ckpt_dir: str, saved: dict) -> dict:
    from mtds.ckpt.manifest import check_before_load

    # The files match their manifest, and nothing below unpickles code (DeepSpeed's zero_to_fp32 included).
    check_before_load(ckpt_dir, "load it with --tag {tag}", log=lambda line: print(line, file=sys.stderr))
    parallel = saved.get("parallel", {})
    tensor = int(parallel.get("tensor", 1))
    if tensor == 1:
        return _one_tensor_rank(ckpt_dir, saved)
    from mtds.ckpt.tensor_shards import merge

    if "tensor_layout" not in parallel:
        raise LoadError(f"{ckpt_dir}: a tensor-parallel checkpoint (TP={tensor}) without its tensor layout in "
                        "mtds_config.json; was it written by this version of mtds?")
    shards = []
    for tp_rank in range(tensor):
        with tempfile.TemporaryDirectory(prefix="mtds-tp-") as staging:
            tag_dir = os.path.join(staging, os.path.basename(ckpt_dir))
            os.makedirs(tag_dir)
            own = f"mp_rank_{tp_rank:02d}"
            for path in glob.glob(os.path.join(ckpt_dir, f"*{own}*.pt")):
                os.symlink(os.path.abspath(path), os.path.join(tag_dir, os.path.basename(path).replace(own, "mp_rank_00")))
            shards.append(_one_tensor_rank(tag_dir, saved))
    return merge(shards, parallel["tensor_layout"])


def weights_source(ckpt_dir: str, saved: dict) -> str:
    """Which weights consolidated_state_dict reads from this checkpoint, in words."""
    from mtds.ds_config import precision

    stage = zero_stage(saved)
    if stage >= 1 and glob.glob(os.path.join(ckpt_dir, "*_optim_states.pt")):
        return f"fp32 master weights (ZeRO-{stage} optimizer shards)"
    trained_in = precision(saved.get("deepspeed", {}))
    if trained_in == "fp32":
        return "fp32 module weights (the master weights: ZeRO-0 in fp32 updates them in place)"
    return (f"{trained_in} module weights (ZeRO-0 keeps its fp32 copy in DeepSpeed's {trained_in} optimizer state, "
            "which zero_to_fp32 does not read)")


def _one_tensor_rank(ckpt_dir: str, saved: dict) -> dict:
    """fp32 state dict of the files named mp_rank_00 (the only model-parallel rank, or a link to one)."""
    root, tag = os.path.split(ckpt_dir)
    optim_files = glob.glob(os.path.join(ckpt_dir, "*_optim_states.pt"))
    if zero_stage(saved) >= 1 and optim_files:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        # zero_to_fp32 prints progress lines and a bar; keep the tools' output clean (errors still raise).
        try:
            with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
                state = get_fp32_state_dict_from_zero_checkpoint(root, tag)
        except (FileNotFoundError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError) as e:  # missing/damaged shard
            raise LoadError(f"{ckpt_dir}: DeepSpeed cannot consolidate this checkpoint: {str(e).splitlines()[0]}") from None
    else:
        if zero_stage(saved) == 3:  # ZeRO-3 model states hold no weights, only the shards do
            raise LoadError(f"{ckpt_dir}: ZeRO-3 checkpoint without its *_optim_states.pt shards; copy the whole "
                            "checkpoint directory")
        if zero_stage(saved) >= 1:
            print(f"note: {ckpt_dir} has no *_optim_states.pt shards; using the module weights "
                  "(bf16 for a bf16 run)", file=sys.stderr)
        files = sorted(glob.glob(os.path.join(ckpt_dir, "*mp_rank_00_model_states.pt")))
        if not files:
            raise LoadError(f"{ckpt_dir}: no DeepSpeed model states file (*mp_rank_00_model_states.pt); "
                            "is this a complete checkpoint?")
        try:
            state = torch.load(files[0], map_location="cpu", weights_only=True)["module"]
        except (RuntimeError, EOFError, KeyError, pickle.UnpicklingError) as e:
            raise LoadError(f"{files[0]}: cannot read this DeepSpeed model states file: {str(e).splitlines()[0]}") from None
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()
            if torch.is_tensor(v) and not k.endswith("_extra_state")}
