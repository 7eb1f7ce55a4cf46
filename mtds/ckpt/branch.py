"""Cooldown branches (`training.branch_from=RUN_DIR[:TAG]`): a new run dir that goes on from another
run's checkpoint as a resume would, so several decay lengths can be branched from one stable run.

What separates the three ways to start from a checkpoint:
- `training.load` resumes a run in its own run dir (or continues it into an empty one);
- `training.init_from` takes the weights only: iteration, data position, optimizer state and LR
  schedule start from zero (fine-tuning);
- `training.branch_from` keeps all of them, like `load`, but always into a new run dir, and records
  where it came from (`branched_from` in config.json and in every checkpoint's mtds_config.json: the
  parent's run dir, tag, iteration and the xxh3-128 hash of the parent checkpoint's manifest.json,
  which lists every file's size and hash, so it names the checkpoint's whole content).

The branch is loaded by the resume path (mtds.ckpt.resume.plan_resume and DeepSpeed's
`load_checkpoint`): the same checks of world size, ZeRO stage and precision, the same data-order
check, the same bitwise continuation. The LR schedule is this run's JSON's, continued at the
checkpoint's step count (mtds/train/lr_schedule.py), which is what lets a branch decay sooner or
later than its parent. The network and objective must be the parent's: a config changing them is
refused here, before DeepSpeed starts, rather than mid-load. So is a checkpoint without a manifest:
a branch records a hash of what it came from, and an unverified one has none to trust.
"""

from __future__ import annotations

import os

from mtds.ckpt.layout import TAG_RE, checkpoint_root, complete_tags, find, iteration_of, read_config
from mtds.ckpt.resume import CHANGEABLE_MODEL_KEYS, check_has_optimizer_state, differences
from mtds.config import migrate
from mtds.errors import ConfigError
from mtds.kinds import KINDS

KEY = "training.branch_from"


def parse(value: str) -> tuple[str, str | None]:
    """`RUN_DIR[:TAG]` -> (run dir, tag or None). A suffix after the last ':' is a tag only if it looks
    like one (iter_0000040), so a path holding ':' still names a directory."""
    head, sep, tail = value.rpartition(":")
    if sep and TAG_RE.match(tail):
        return head, tail
    if sep and tail.startswith("iter_"):
        raise ConfigError(f"{KEY}={value!r}: {tail!r} is not a checkpoint tag (tags look like iter_0000040)")
    return value, None


def find_parent(value: str, run_dir: str) -> str:
    """The parent checkpoint directory named by `value`, checked to exist and to be another run's."""
    parent, tag = parse(value)
    if not os.path.isdir(parent):
        raise ConfigError(f"{KEY}={value!r}: {parent} is not a directory; give the run dir of the run to branch from")
    if os.path.realpath(checkpoint_root(parent)) == os.path.realpath(os.path.join(run_dir, "checkpoints")):
        raise ConfigError(f"{KEY}={value!r} is this run's own run dir; a branch starts a new one (give another "
                          "--run-dir), and a run goes on in its own with --load (--training.load_tag to roll back)")
    ckpt = find(parent, tag)
    if ckpt is None:
        root = checkpoint_root(parent)
        shown = ", ".join(complete_tags(root)[-5:]) or "none"
        what = f"no complete checkpoint {os.path.join(root, tag)}" if tag else "no complete checkpoint under it"
        raise ConfigError(f"{KEY}={value!r}: {what}; complete ones: {shown}")
    return ckpt


def plan_branch(value: str, run_dir: str, current_run: dict) -> tuple[str, dict]:
    """(parent checkpoint dir, the `branched_from` record), checked before DeepSpeed starts: the
    checkpoint exists, holds optimizer state, has a manifest (its files are hashed against it by the
    plan, as for a resume: mtds.ckpt.manifest.check_before_load) and the network and objective are
    this run's. `current_run`: this run's resolved `run` dict (mtds.config.resolved_dict)."""
    from mtds.ckpt import manifest

    ckpt = find_parent(value, run_dir)
    saved = read_config(ckpt)
    check_has_optimizer_state(ckpt, saved, f"{KEY}={value!r}")
    listed = os.path.join(ckpt, manifest.MANIFEST_FILE)
    if not os.path.isfile(listed) and saved.get(manifest.RECORD_KEY) != manifest.MANIFEST_FILE:
        raise ConfigError(f"{KEY}={value!r}: {ckpt} has no {manifest.MANIFEST_FILE} (saved before mtds wrote "
                          "manifests): its files cannot be verified; resume it with --load, or start from its "
                          "weights with --training.init_from")
    old = migrate(saved["run"])
    kind = KINDS.get(current_run["model"]["model_type"])
    changed = differences(old["model"], current_run["model"], "model", allowed=CHANGEABLE_MODEL_KEYS)
    changed += differences(old.get("task") or {}, current_run.get("task") or {}, "task",
                           allowed=kind.task.changeable_on_resume if kind else ())
    if changed:
        raise ConfigError(f"{KEY}={value!r}: a branch trains its parent's network and objective, and this config "
                          f"changes {'; '.join(changed[:4])}; drop those keys (or start from its weights with "
                          "--training.init_from)")
    record = {"run_dir": os.path.abspath(os.path.dirname(os.path.dirname(ckpt))), "tag": os.path.basename(ckpt),
              "iteration": iteration_of(os.path.basename(ckpt)),
              # (a manifest its config names but that is missing: refused as damaged by the plan's check_before_load)
              "manifest_xxh3_128": manifest.hash_file(listed)[manifest.HASH] if os.path.isfile(listed) else None}
    # The samples the parent's training set was built for: a branch builds its own for at least as many,
    # so a shorter branch reads the parent's order even where megatron-core's shuffle depends on the
    # count (a GPT run over several epochs; BERT and T5 always).
    record["train_samples"] = int(saved.get("train_iters") or 0) * int(saved["deepspeed"].get("train_batch_size") or 0)
    if saved.get("branched_from"):  # a branch of a branch: the whole line back to the first run
        record["parent"] = saved["branched_from"]
        record["train_samples"] = max(record["train_samples"], saved["branched_from"].get("train_samples", 0))
    return ckpt, record


def describe(record: dict) -> str:
    """The start-of-run line of a branch."""
    return (f"branch of {record['run_dir']} at {record['tag']} (manifest xxh3-128 {record['manifest_xxh3_128']}): "
            "optimizer state, LR-schedule position and data position carried over")
