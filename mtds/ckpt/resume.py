"""Checks before a resume, before DeepSpeed starts: is there a checkpoint, does it fit this model,
can DeepSpeed load it at this world size and ZeRO stage, and does the run go on reading the
training samples in the order the checkpoint's run would have."""

from __future__ import annotations

import math
import os

from mtds.ckpt.layout import checkpoint_root, complete_tags, find, read_config
from mtds.ckpt.universal import UNIVERSAL_DIR, is_universal
from mtds.config import migrate
from mtds.ds_config import precision, set_precision
from mtds.errors import ConfigError
from mtds.kinds import KINDS

# [model] keys a resumed run may change: they change no parameter. Every other model key (and the
# padded vocabulary) must match; [task] keys must match unless the task lists them in its
# Task.changeable_on_resume. [data] and [training] differences are allowed and logged, except those
# that change the order of the training samples (order_changes).
# The tensor-parallel size and sequence parallelism change how parameters are split, not the
# parameters: plan_resume decides whether a checkpoint of another tensor-parallel size can load.
CHANGEABLE_MODEL_KEYS = ("preset", "hidden_dropout", "attention_dropout", "init_method_std", "recompute_activations",
                         "tensor_model_parallel_size", "sequence_parallel")


def check_compatible(saved: dict, current: dict, log=print) -> None:
    """Refuse a checkpoint whose model or objective differs from this run's; log allowed differences.

    `saved` and `current` are resolved configs (mtds_config.json); the saved one may be of an
    earlier config format.
    """
    old_run, new_run = migrate(saved.get("run", {})), current.get("run", {})
    kind = KINDS.get(new_run.get("model", {}).get("model_type"))
    changeable = {"model": CHANGEABLE_MODEL_KEYS, "task": kind.task.changeable_on_resume if kind else ()}
    bad, allowed = [], []
    for section in ("model", "task", "data", "training"):
        old, new = old_run.get(section, {}), new_run.get(section, {})
        refused = differences(old, new, section, allowed=changeable[section]) if section in changeable else []
        bad += refused
        allowed += [d for d in differences(old, new, section) if d not in refused]
    if saved.get("vocab_size") != current.get("vocab_size"):
        bad.append(f"padded vocabulary: {saved.get('vocab_size')} -> {current.get('vocab_size')} (another tokenizer?)")
    if bad:
        raise ConfigError("checkpoint does not fit this model: " + "; ".join(bad))
    _check_data(saved, current, log)
    check_data_order(saved, current, log)
    for item in allowed:
        log(f"note: config differs from the checkpoint's (allowed): {item}")


def differences(old: dict, new: dict, section: str, allowed=()) -> list[str]:
    """`section.key: old -> new` for every key whose value differs, except the `allowed` ones."""
    return [f"{section}.{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k) and k not in allowed]


def _check_data(saved: dict, current: dict, log) -> None:
    """The data the checkpoint trained on vs this run's, by content (sizes and .idx hash, not mtime
    or how the path is spelled); allowed with a note when data.allow_other_data is set."""
    def content(resolved):
        identity = resolved.get("data_sources", {}).get("identity")
        return None if identity is None else {
            os.path.abspath(p): (v["bin_bytes"], v["idx_bytes"], v["idx_blake2b"]) for p, v in identity.items()}

    old, new = content(saved), content(current)
    if old is None or new is None or old == new:  # checkpoints from before data identities: not checked
        return
    differ = [f"{p}: {'not used before' if p not in old else 'not used now' if p not in new else 'rebuilt'}"
              for p in sorted(set(old) | set(new)) if old.get(p) != new.get(p)]
    what = f"the data differs from the checkpoint's ({'; '.join(differ[:3])})"
    if current.get("run", {}).get("data", {}).get("allow_other_data"):
        log(f"note: {what}; resuming on it (data.allow_other_data=true)")
        return
    raise ConfigError(f"training.load: {what}; resume on the data it trained on, or set "
                      "data.allow_other_data=true to resume on this data anyway")


# Which sample comes next: the sampler (mtds.data.loader.ResumableBatchSampler) reads the training set
# in its own order from consumed_samples on, so the order must not move under a resume. megatron-core's
# datasets (GPT, BERT, T5; mtds's SFT and classification sets likewise) draw their shuffles from
# data.seed, cut samples at the sequence length, blend by data.weights and train on the documents of
# data.split's first part (all of data.paths with data.valid_paths). How many samples the set is built
# for (train_iters x global batch) sets GPTDataset's epoch count, on which its whole shuffle depends,
# and BERT/T5's one global shuffle; SFT and classification shuffle per epoch and keep their order. That
# one is therefore checked, not assumed: every run records samples of its order (loader.order_probes,
# `train_order` in mtds_config.json), and a resume that changes the count compares them. The batch size
# alone changes nothing (the same samples, grouped otherwise); data.paths are checked by content
# (_check_data); [task] keys by Task.changeable_on_resume.


def order_changes(saved: dict, current: dict) -> tuple[list[str], list[str]]:
    """(changes that move the training order, notes on changes checked to keep it) between a
    checkpoint's record and this run's. `current["train_order"]` is absent before the datasets
    exist: a changed sample count is then decided later (by the load's check_compatible), unless
    the checkpoint has no order probes to compare with."""
    old_run, new_run = migrate(saved.get("run", {})), current.get("run", {})
    old, new = old_run.get("data", {}), new_run.get("data", {})
    changes, kept = [], []
    if "seed" in old and old["seed"] != new.get("seed"):
        changes.append(f"data.seed: {old['seed']} -> {new.get('seed')} (every shuffle is drawn from it)")
    old_seq, new_seq = _seq_length(old_run), _seq_length(new_run)
    if old_seq is not None and old_seq != new_seq:
        changes.append(f"sequence length: {old_seq} -> {new_seq} (samples are cut at it)")
    if "weights" in old and _normalized(old["weights"]) != _normalized(new.get("weights")):
        changes.append(f"data.weights: {old['weights']} -> {new.get('weights')} (the blend's order)")
    if "valid_paths" in old and bool(old["valid_paths"]) != bool(new.get("valid_paths")):
        changes.append(f"data.valid_paths: {old['valid_paths']} -> {new.get('valid_paths')} (the training documents: "
                       "all of data.paths with it, the first part of data.split without)")
    elif "split" in old and not new.get("valid_paths") and not _same_training_part(old["split"], new.get("split")):
        changes.append(f"data.split: {old['split']!r} -> {new.get('split')!r} (another set of training documents; "
                       "validation documents may train)")
    n_old, n_new = _sample_count(saved), _sample_count(current)
    if n_old is not None and n_new is not None and n_old != n_new:
        what = (f"training set size {n_old} -> {n_new} samples (train_iters x global batch: "
                f"{saved['train_iters']} x {_batch(saved)} -> {current['train_iters']} x {_batch(current)})")
        old_probes, new_probes = saved.get("train_order"), current.get("train_order")
        if old_probes is None:
            changes.append(f"{what}: megatron-core's shuffle may depend on it, and the checkpoint has no samples of its "
                           "order to compare with (saved before mtds recorded them)")
        elif new_probes is not None:
            differ = _first_difference(old_probes, new_probes, min(n_old, n_new))
            if differ is None:
                kept.append(f"{what}: the order of the first {min(n_old, n_new)} samples is unchanged (compared)")
            else:
                changes.append(f"{what}: the dataset's shuffle depends on it (sample {differ} differs)")
    return changes, kept


def check_data_order(saved: dict, current: dict, log=print) -> None:
    """Refuse a resume whose config changes which training sample comes next (order_changes), naming
    the keys and the ways on; with data.allow_other_data it resumes in the new order, with a note."""
    changes, kept = order_changes(saved, current)
    for item in kept:
        log(f"note: {item}")
    if not changes:
        return
    what = "; ".join(changes)
    if current.get("run", {}).get("data", {}).get("allow_other_data"):
        log(f"note: the training samples' order differs from the checkpoint's ({what}); resuming in the new order "
            "(data.allow_other_data=true)")
        return
    raise ConfigError(f"training.load: this config changes the order of the training samples after the checkpoint, "
                      f"so some would repeat and some never be read: {what}; keep the checkpoint's values, start a new "
                      "run from its weights with --training.init_from and another --run-dir (the data order and "
                      "optimizer start fresh), or set data.allow_other_data=true to resume in the new order")


def _seq_length(run: dict) -> int | None:
    """The sequence length a run cut samples at (data.seq_length, else the model's positions)."""
    return run.get("data", {}).get("seq_length") or run.get("model", {}).get("max_position_embeddings")


def _normalized(weights) -> list[float] | None:
    return None if not weights else [round(float(w) / sum(map(float, weights)), 12) for w in weights]


def _same_training_part(old: str, new: str | None) -> bool:
    """Whether two data.split strings give training the same documents: megatron-core's training
    part is the first round(w * n) documents, w the first weight normalized."""
    def first(split):
        weights = [float(w) for w in str(split).replace("/", ",").split(",")]
        return weights[0] / sum(weights)

    return new is not None and math.isclose(first(old), first(new), rel_tol=1e-9)


def _batch(record: dict) -> int | None:
    return record.get("deepspeed", {}).get("train_batch_size")


def _sample_count(record: dict) -> int | None:
    """How many samples the run built its training set for: train_iters x global batch."""
    iters, batch = record.get("train_iters"), _batch(record)
    return None if iters is None or batch is None else iters * batch


def _first_difference(old: dict, new: dict, below: int) -> int | None:
    """The first probe position under `below` that both recorded and whose samples differ."""
    a, b = old.get("probes", {}), new.get("probes", {})
    for pos in sorted(int(p) for p in set(a) & set(b)):
        if pos < below and a[str(pos)] != b[str(pos)]:
            return pos
    return None


def plan_resume(load_dir: str, dp_size: int, ds_cfg: dict, log=print, cpu_fell_back_to_fp32: bool = False,
                tag: str | None = None, tensor: int = 1, key: str = "training.load") -> str | None:
    """The checkpoint to resume from (None: none yet), checked before DeepSpeed starts: the newest
    complete one, or `tag` (training.load_tag, e.g. the one before a damaged checkpoint).

    ZeRO partitions optimizer state per data-parallel rank, and DeepSpeed refuses to load a
    ZeRO checkpoint at another data-parallel size except in its universal form: turn that on in
    `ds_cfg` when the checkpoint has one, else say how to make it.

    DeepSpeed's optimizer state and file names differ by precision, so a resume keeps the
    checkpoint's. `cpu_fell_back_to_fp32`: the JSON asked for bf16 and this CPU trains it in fp32
    (mtds.ds_config); a bf16 checkpoint then resumes in bf16, slowly, rather than not at all.
    `key`: the option the one-line errors name (training.branch_from goes on from a checkpoint too).
    """
    if os.path.exists(load_dir) and not os.path.isdir(load_dir):
        raise ConfigError(f"training.load={load_dir!r} is a file; give the run directory to resume from")
    ckpt = find(load_dir, tag, log=log)
    if ckpt is None and tag is not None:
        root = checkpoint_root(load_dir)
        shown = ", ".join(complete_tags(root)[-5:]) or "none"
        raise ConfigError(f"training.load_tag={tag!r}: no complete checkpoint {os.path.join(root, tag)}; "
                          f"complete ones: {shown}")
    if ckpt is None:
        return None
    saved = read_config(ckpt)
    check_has_optimizer_state(ckpt, saved, key)
    saved_dp = saved.get("parallel", {}).get("data", saved.get("world_size", dp_size))
    saved_tp = saved.get("parallel", {}).get("tensor", 1)
    if saved_tp != tensor:
        # DeepSpeed's universal checkpoint re-slices tensor-parallel shards only with Megatron-DeepSpeed's
        # per-parameter patterns, which megatron-core models lack: the weights are merged by mtds instead.
        raise ConfigError(
            f"{key}: {ckpt} was saved at model.tensor_model_parallel_size={saved_tp} and this run uses "
            f"{tensor}; resume it at {saved_tp}, or start from its weights (merged and re-split; the optimizer "
            f"state starts fresh) with --training.init_from={load_dir} and a new training.run_dir")
    stage = saved.get("deepspeed", {}).get("zero_optimization", {}).get("stage", 0)
    new_stage = ds_cfg.get("zero_optimization", {}).get("stage", 0)
    if _stage_family(stage) != _stage_family(new_stage):
        # Measured with DeepSpeed 0.19.8: 1 <-> 2 loads; 0 <-> 1/2/3 and 1/2 <-> 3 fail mid-load
        # (different shard files and layouts), universal checkpoint or not.
        raise ConfigError(
            f"{key}: {ckpt} was saved with ZeRO stage {stage} and this run uses stage {new_stage}; "
            f"DeepSpeed resumes only between stages 1 and 2, so set zero_optimization.stage={stage} in the "
            "DeepSpeed JSON (or start a new run from exported weights)"
        )
    _keep_precision(ckpt, saved.get("deepspeed", {}), ds_cfg, cpu_fell_back_to_fp32, log, key)
    if saved_dp == dp_size or stage == 0:
        return ckpt
    if saved_tp > 1:
        raise ConfigError(
            f"{key}: {ckpt} was saved by {saved_dp} data-parallel ranks (x {saved_tp} tensor-parallel) and this "
            f"run has {dp_size}; a tensor-parallel checkpoint resumes only at its own data-parallel size: launch "
            f"{saved_dp * saved_tp} ranks, or start from its weights with --training.init_from={load_dir}")
    if not is_universal(ckpt):
        raise ConfigError(
            f"{key}: {ckpt} was saved by {saved_dp} data-parallel ranks and this run has {dp_size}, "
            f"and ZeRO-{stage} partitions the optimizer state per rank; convert it once with "
            f"`python -m mtds.universal_checkpoint --load {load_dir}` (it then resumes at any world size), "
            f"or resume with {saved_dp} ranks"
        )
    ds_cfg.setdefault("checkpoint", {})["load_universal"] = True
    log(f"resuming a checkpoint of {saved_dp} data-parallel ranks with {dp_size}: loading its universal "
        f"form {os.path.join(ckpt, UNIVERSAL_DIR)}")
    return ckpt


def _keep_precision(ckpt: str, saved_ds: dict, ds_cfg: dict, cpu_fell_back_to_fp32: bool, log,
                    key: str = "training.load") -> None:
    old, new = precision(saved_ds), precision(ds_cfg)
    if old == new:
        return
    if cpu_fell_back_to_fp32 and old == "bf16":
        set_precision(ds_cfg, "bf16")
        log(f"note: {ckpt} was saved in bf16; resuming in bf16 although this CPU has no bf16 instructions "
            "(slow; start a new run to train in fp32 here)")
        return
    raise ConfigError(f"{key}: {ckpt} was saved training in {old} and this run trains in {new}; "
                      f"DeepSpeed's optimizer state differs between them, so train in {old} in the DeepSpeed "
                      "JSON (or start a new run with training.init_from)")


# Weights-only checkpoints (no optimizer state or trainer position to go on from): what these tools write.
WEIGHTS_ONLY = {"imported_from": "imported from Hugging Face by mtds.import_hf",
                "averaged_from": "an average of checkpoints written by mtds.average"}


def check_has_optimizer_state(ckpt: str, saved: dict, key: str) -> None:
    """A weights-only checkpoint cannot be resumed or branched from: say so and name init_from."""
    for record_key, what in WEIGHTS_ONLY.items():
        if saved.get(record_key):
            raise ConfigError(f"{key}: {ckpt} holds weights only ({what}): no optimizer state or data position to "
                              f"go on from; start a new run from its weights with --training.init_from")


def _stage_family(stage: int) -> str:
    """ZeRO stages whose checkpoints load into each other."""
    return {0: "none", 1: "1-2", 2: "1-2"}.get(stage, "3")
