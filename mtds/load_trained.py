"""Load a trained mtds model from a run directory, in one plain process, without a DeepSpeed engine.

Shared by the tools that use a trained model (mtds.generate, mtds.evaluate, mtds.export_hf).
A checkpoint is `<run_dir>/checkpoints/<tag>/` (see mtds.checkpoint); its `mtds_config.json`
holds the resolved run config, so the model is rebuilt exactly as it was trained.

Weights come from DeepSpeed's own consolidation (`deepspeed.utils.zero_to_fp32`), which merges
the fp32 master partitions of ZeRO stage 1, 2 and 3 checkpoints of any world size — so a bf16 run
is loaded at its full fp32 precision. ZeRO stage 0 has no partitioned master copy there (its
module weights are the trained weights; DeepSpeed's BF16_Optimizer keeps its fp32 copy in a
format zero_to_fp32 does not read), so for stage 0 the module state is read and cast to fp32.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pickle
import sys
from dataclasses import dataclass

import torch

from mtds.checkpoint import CONFIG_FILE, TAG_RE, checkpoint_root, complete_tags
from mtds.tool_cli import LoadError  # noqa: F401  (re-exported: the tools' one-line error)


@dataclass
class TrainedRun:
    """A rebuilt model plus everything needed to use it the way it was trained."""

    model: torch.nn.Module
    cfg: object  # mtds.config.RunConfig
    saved: dict  # the checkpoint's mtds_config.json
    run_dir: str
    ckpt_dir: str
    tag: str

    @property
    def vocab_size(self) -> int:
        return int(self.saved["vocab_size"])

    @property
    def tokenizer_model(self) -> str:
        return self.saved["data_sources"]["tokenizer_model"]

    def tokenizer(self):
        from mtds.tokenizer import SentencePieceTokenizer

        return SentencePieceTokenizer(self.tokenizer_model)


def find_checkpoint(run_dir: str, tag: str | None = None) -> tuple[str, str]:
    """(checkpoint root, tag) for a run dir (or its checkpoints dir); `tag=None` is `latest`."""
    if not os.path.exists(run_dir):
        raise LoadError(f"{run_dir}: run directory not found (give the --run-dir a training run wrote)")
    if not os.path.isdir(run_dir):
        raise LoadError(f"{run_dir}: not a directory (give the run directory, not a file)")
    root = run_dir if os.path.isfile(os.path.join(run_dir, "latest")) else checkpoint_root(run_dir)
    tags = complete_tags(root)
    if tag is None:
        latest = os.path.join(root, "latest")
        named = open(latest).read().strip() if os.path.isfile(latest) else None
        if named in tags:
            return root, named
        if not tags:
            raise LoadError(f"{run_dir}: no complete checkpoint under {root} (train with mtds/pretrain.py first)")
        return root, tags[-1]  # `latest` missing or naming a partial save: the newest complete one
    if tag not in tags:
        shown = ", ".join(tags[-5:]) or "none"
        hint = "" if TAG_RE.match(tag) else " (tags look like iter_0000040)"
        raise LoadError(f"--tag {tag!r}: no complete checkpoint {os.path.join(root, tag)}{hint}; available: {shown}")
    return root, tag


def read_saved_config(ckpt_dir: str) -> dict:
    with open(os.path.join(ckpt_dir, CONFIG_FILE)) as f:
        return json.load(f)


def zero_stage(saved: dict) -> int:
    return int(saved.get("deepspeed", {}).get("zero_optimization", {}).get("stage", 0))


def consolidated_state_dict(root: str, tag: str, saved: dict) -> dict[str, torch.Tensor]:
    """fp32 model state dict of a DeepSpeed checkpoint of any ZeRO stage and world size.

    megatron-core modules save an `_extra_state` entry per linear layer (Transformer Engine's FP8
    metadata slot; None here): they are not weights and are left out.
    """
    ckpt_dir = os.path.join(root, tag)
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
            state = torch.load(files[0], map_location="cpu", weights_only=False)["module"]
        except (RuntimeError, EOFError, KeyError, pickle.UnpicklingError) as e:
            raise LoadError(f"{files[0]}: cannot read this DeepSpeed model states file: {str(e).splitlines()[0]}") from None
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()
            if torch.is_tensor(v) and not k.endswith("_extra_state")}


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Load `state` into `model`; every weight must be present and match (extra states aside)."""
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise LoadError(f"{where}: checkpoint does not fit the model rebuilt from its config "
                        f"({str(e).splitlines()[-1].strip()[:200]})") from None
    missing = [k for k in missing if not k.endswith("_extra_state")]
    if missing or unexpected:
        raise LoadError(f"{where}: checkpoint does not fit the model rebuilt from its config "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]})")


def saved_run_config(saved: dict):
    """The RunConfig a checkpoint was trained with.

    Keys of the data/training sections that this mtds version no longer knows (renamed or
    removed since the run) are dropped with a note: they do not change the model. Model keys
    stay strict, since they decide the parameter shapes.
    """
    import dataclasses

    from mtds.config import DataConfig, TrainingConfig, from_dict

    run = {k: dict(v) for k, v in saved["run"].items() if isinstance(v, dict)}
    for section, cls in (("data", DataConfig), ("training", TrainingConfig)):
        known = {f.name for f in dataclasses.fields(cls)}
        dropped = sorted(set(run.get(section, {})) - known)
        if dropped:
            print(f"note: ignoring saved {section} keys this version does not know: {', '.join(dropped)}",
                  file=sys.stderr)
            run[section] = {k: v for k, v in run[section].items() if k in known}
    return from_dict(run)


@contextlib.contextmanager
def stdout_to_stderr():
    """Send file descriptor 1 to stderr for a while: DeepSpeed's import-time logger and its op
    loader print to stdout, which the tools keep for their results (e.g. `--json`)."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def load_trained(run_dir: str, tag: str | None = None, device: str = "cpu") -> TrainedRun:
    """Rebuild the model of a run from its saved config and load the checkpoint's weights (fp32, eval mode).

    Initialises torch.distributed + megatron-core parallel state for a world of one (megatron-core
    layers need them even in a single process).
    """
    root, tag = find_checkpoint(run_dir, tag)
    ckpt_dir = os.path.join(root, tag)
    saved = read_saved_config(ckpt_dir)

    from mtds.distributed import init_distributed, seed_everything
    from mtds.model import build_model

    cfg = saved_run_config(saved)
    with stdout_to_stderr():
        init_distributed()
        seed_everything(cfg.training.seed)  # initial weights are overwritten; this only fixes the RNG state
        model = build_model(cfg.model, int(saved["vocab_size"]), "fp32", on_gpu=False)
        load_weights(model, consolidated_state_dict(root, tag, saved), ckpt_dir)
    model.to(device).eval()
    return TrainedRun(model=model, cfg=cfg, saved=saved, run_dir=run_dir, ckpt_dir=ckpt_dir, tag=tag)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
