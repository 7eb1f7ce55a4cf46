"""Load a trained mtds model from a run directory, in one plain process, without a DeepSpeed engine.

Shared by the tools that use a trained model (mtds.generate, mtds.evaluate, mtds.export_hf).
A checkpoint is `<run_dir>/checkpoints/<tag>/` (mtds/ckpt/layout.py); its `mtds_config.json`
holds the resolved run config, so the model is rebuilt exactly as it was trained, by its kind's
family with its task's heads. The weights are the fp32 consolidation of the shards
(mtds/ckpt/consolidate.py).
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass

import torch

from mtds.ckpt.layout import TAG_RE, checkpoint_root, complete_tags, find, read_config
from mtds.errors import LoadError


@dataclass
class TrainedRun:
    """A rebuilt model plus everything needed to use it the way it was trained."""

    model: torch.nn.Module
    cfg: object  # mtds.config.RunConfig
    saved: dict  # the checkpoint's mtds_config.json
    run_dir: str
    ckpt_dir: str

    @property
    def tag(self) -> str:
        return os.path.basename(self.ckpt_dir)

    @property
    def vocab_size(self) -> int:
        return int(self.saved["vocab_size"])

    @property
    def tokenizer_model(self) -> str:
        return self.saved["data_sources"]["tokenizer_model"]

    @property
    def tokenizer_type(self) -> str:
        """Recorded since Hugging Face tokenizers were added; runs from before used sentencepiece."""
        return self.saved["data_sources"].get("tokenizer_type", "SentencePieceTokenizer")

    def tokenizer(self):
        from mtds.data.tokenizer import load_tokenizer

        return load_tokenizer(self.tokenizer_model, self.tokenizer_type)


def find_checkpoint(run_dir: str, tag: str | None = None) -> str:
    """The checkpoint directory of a run dir (or its checkpoints dir); `tag=None` is the newest
    complete one (mtds.ckpt.layout.find). One-line LoadError if there is none."""
    if not os.path.exists(run_dir):
        raise LoadError(f"{run_dir}: run directory not found (give the --run-dir a training run wrote)")
    if not os.path.isdir(run_dir):
        raise LoadError(f"{run_dir}: not a directory (give the run directory, not a file)")
    ckpt = find(run_dir, tag)
    if ckpt is not None:
        return ckpt
    root = checkpoint_root(run_dir)
    if tag is None:
        raise LoadError(f"{run_dir}: no complete checkpoint under {root} (train with mtds/pretrain.py first)")
    shown = ", ".join(complete_tags(root)[-5:]) or "none"
    hint = "" if TAG_RE.match(tag) else " (tags look like iter_0000040)"
    raise LoadError(f"--tag {tag!r}: no complete checkpoint {os.path.join(root, tag)}{hint}; available: {shown}")


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
    """The RunConfig a checkpoint was trained with (a config of an earlier format is migrated).

    Keys of the data/training sections that this mtds version no longer knows (renamed or
    removed since the run) are dropped with a note: they do not change the model. Model and task
    keys stay strict, since they decide the parameters.
    """
    import dataclasses

    from mtds.config import DataConfig, TrainingConfig, from_dict, migrate

    run = migrate(saved["run"])
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
        # and Python's own sys.stdout, where it is not file descriptor 1 (a caller capturing it, as pytest does)
        with contextlib.redirect_stdout(sys.stderr):
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
    ckpt_dir = find_checkpoint(run_dir, tag)
    saved = read_config(ckpt_dir)

    from mtds.ckpt.consolidate import consolidated_state_dict
    from mtds.parallel.process_groups import init_distributed, seed_everything
    from mtds.kinds import build_model

    cfg = saved_run_config(saved)
    with stdout_to_stderr():
        init_distributed()
        seed_everything(cfg.training.seed)  # initial weights are overwritten; this only fixes the RNG state
        model = build_model(cfg, int(saved["vocab_size"]), "fp32", on_gpu=False)
        load_weights(model, consolidated_state_dict(ckpt_dir, saved), ckpt_dir)
    model.to(device).eval()
    return TrainedRun(model=model, cfg=cfg, saved=saved, run_dir=run_dir, ckpt_dir=ckpt_dir)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
