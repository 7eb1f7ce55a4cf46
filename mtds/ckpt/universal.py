"""Make a checkpoint resumable at another data-parallel world size (DeepSpeed universal checkpoint).
The command line is mtds/universal_checkpoint.py.

ZeRO partitions the optimizer state (and under ZeRO-2/3 the gradients and parameters) per
data-parallel rank, so DeepSpeed refuses to resume a checkpoint at another world size. Its
answer is the universal checkpoint: `deepspeed.checkpoint.ds_to_universal` writes each
parameter's fp32 master weight and Adam moments whole, under `<tag>/zero/`, and an engine with
`"checkpoint": {"load_universal": true}` re-partitions them for its own world size on load.

This runs that converter in place: the checkpoint keeps its ZeRO shards (for resuming at the
same world size) and gains `zero/`. When mtds/pretrain.py resumes it at another world size, it
turns `load_universal` on by itself; without `zero/` it stops before DeepSpeed starts and
names this command.

Written here rather than only called: megatron-core's linear layers save an `_extra_state`
entry (Transformer Engine's FP8 slot) that is None, and ds_to_universal calls `.float()` on
every entry of the model state, so it is given a copy of the model-states file without them.
The output is written to a temporary directory and renamed into place.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import tempfile

from mtds.errors import LoadError

UNIVERSAL_DIR = "zero"  # where ds_to_universal puts the per-parameter states, under the tag


def is_universal(ckpt_dir: str) -> bool:
    return os.path.isdir(os.path.join(ckpt_dir, UNIVERSAL_DIR))


def convert(ckpt_dir: str, log=print) -> str:
    """Add `<ckpt_dir>/zero/` (DeepSpeed's universal layout) to a ZeRO checkpoint; returns its path."""
    import torch

    target = os.path.join(ckpt_dir, UNIVERSAL_DIR)
    if is_universal(ckpt_dir):
        log(f"{target} exists already: the checkpoint is universal")
        return target
    from mtds.ckpt import manifest

    manifest.check_before_load(ckpt_dir, "convert it with --tag {tag} and resume with --training.load_tag={tag}", log)
    model_files = sorted(glob.glob(os.path.join(ckpt_dir, "*model_states.pt")))
    optim_files = sorted(glob.glob(os.path.join(ckpt_dir, "*_optim_states.pt")))
    if not model_files or not optim_files:
        raise LoadError(f"{ckpt_dir}: no ZeRO optimizer shards (*_optim_states.pt); only ZeRO-1/2/3 checkpoints "
                        "are partitioned per rank, others resume at any world size as they are")
    with tempfile.TemporaryDirectory(dir=ckpt_dir, prefix=".universal-") as staging:
        source = os.path.join(staging, "in")
        os.makedirs(source)
        for path in optim_files:
            os.symlink(os.path.abspath(path), os.path.join(source, os.path.basename(path)))
        for path in model_files:  # without megatron's None `_extra_state` entries (see above)
            state = torch.load(path, map_location="cpu", weights_only=True)
            state["module"] = {k: v for k, v in state["module"].items() if v is not None}
            torch.save(state, os.path.join(source, os.path.basename(path)))
        out = os.path.join(staging, "out")
        # DeepSpeed's converter, in a process where torch.load is weights-only with our allowlist.
        # (Imported as a module, not run as __main__: its worker pool pickles its functions by module name.)
        run_converter = ("import mtds.ckpt.safe_loading as s; s.enable(); "
                         "from deepspeed.checkpoint import ds_to_universal as m; m.main(m.parse_arguments())")
        cmd = [sys.executable, "-c", run_converter, "--input_folder", source,
               "--output_folder", out, "--inject_missing_state", "--num_extract_workers", "2",
               "--num_merge_workers", "1"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not os.path.isdir(os.path.join(out, UNIVERSAL_DIR)):
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise LoadError(f"{ckpt_dir}: DeepSpeed's ds_to_universal failed: {last}")
        os.replace(os.path.join(out, UNIVERSAL_DIR), target)  # same filesystem: atomic
    manifest.add(ckpt_dir, UNIVERSAL_DIR)  # a resume verifies the universal files too
    log(f"wrote {target}: the checkpoint now resumes at any data-parallel world size")
    return target
