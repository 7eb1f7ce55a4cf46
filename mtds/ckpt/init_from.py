"""Start a run from the weights of another run (`training.init_from`): weights only.

The iteration, consumed samples, optimizer moments and LR schedule start fresh; that is what
separates it from `training.load` (resume this run). The source may be any complete checkpoint of
any mtds run: ZeRO 0-3, any world size, bf16 or fp32 (its fp32 master weights are used, merged by
mtds.ckpt.consolidate), with or without optimizer shards for stage 0-2.

The body must be the same network: every [model] key must match except the ones a resume may
change too, and the padded vocabulary must match. The kind may differ within one family (a task
that adds a head): tensors the source lacks are initialised fresh and named in a `note:` line,
tensors of the source this model has no place for are left out, also with a note.
"""

from __future__ import annotations

import os

from mtds.ckpt.layout import find, read_config
from mtds.ckpt.resume import CHANGEABLE_MODEL_KEYS, differences
from mtds.config import migrate
from mtds.errors import ConfigError
from mtds.kinds import KINDS


def plan_init(init_from: str, current_run: dict) -> tuple[str, dict]:
    """(checkpoint dir, its saved config) to start from, checked before DeepSpeed starts.

    `current_run` is this run's resolved `run` dict (mtds.config.resolved_dict)."""
    key = f"training.init_from={init_from!r}"
    if not os.path.isdir(init_from):
        raise ConfigError(f"{key}: not a directory; give the run directory of a finished training run")
    ckpt = find(init_from)
    if ckpt is None:
        raise ConfigError(f"{key}: no complete checkpoint under it (train with mtds/pretrain.py first)")
    saved = read_config(ckpt)
    old, new = migrate(saved["run"])["model"], current_run["model"]
    old_kind, new_kind = KINDS.get(old.get("model_type")), KINDS[new["model_type"]]
    if old_kind is None or old_kind.family is not new_kind.family:
        raise ConfigError(f"{key}: {ckpt} is a {old.get('model_type')!r} model and this run trains "
                          f"{new['model_type']!r}, another network; start from a run of the same family")
    differ = differences(old, new, "model", allowed=(*CHANGEABLE_MODEL_KEYS, "model_type"))
    if differ:
        hint = ""
        if saved.get("imported_from") or saved.get("pruned_from"):  # mtds.import_hf / mtds.prune wrote them beside it
            hint = f" (train it with --config {os.path.join(init_from, 'run_config.json')})"
        raise ConfigError(f"{key}: {ckpt} holds another network: " + "; ".join(differ[:4]) + hint)
    return ckpt, saved


def check_vocab(ckpt: str, saved: dict, vocab_size: int) -> None:
    if int(saved["vocab_size"]) != vocab_size:
        raise ConfigError(f"training.init_from: {ckpt} has a padded vocabulary of {saved['vocab_size']} and this run "
                          f"{vocab_size}; use the tokenizer (and model.make_vocab_size_divisible_by) it was trained with")


def check_special_tokens(ckpt: str, saved: dict, tokenizer, tokenizer_path: str) -> None:
    """An imported model (mtds.import_hf) learned its BOS/EOS ids: the tokenizer the data was made
    with must use the same ones, or every document boundary means something else to it."""
    imported = saved.get("imported_from")
    if not imported:
        return
    for name, ours in (("bos", "bos"), ("eos", "eod")):
        wanted = imported.get(f"{name}_token_id")
        try:
            have = getattr(tokenizer, ours)
        except (ValueError, AttributeError):
            have = None
        if isinstance(wanted, int) and have is not None and have != wanted:
            raise ConfigError(f"data.tokenizer_model={tokenizer_path}: its {name} id is {have} but the model "
                              f"imported in {ckpt} uses {wanted} ({imported['path']}/config.json {name}_token_id); "
                              "preprocess the data with the model's own tokenizer (its run dir's tokenizer/)")


def load_initial_weights(model, ckpt: str, saved: dict, log=print) -> list[str]:
    """Copy the source's fp32 weights into `model` (before DeepSpeed wraps it); returns the names of
    the source's tensors this model has no place for (e.g. a pretrained BERT's masked-LM head)."""
    from mtds.ckpt.consolidate import consolidated_state_dict

    state = consolidated_state_dict(ckpt, saved)  # whole tensors, whatever the source's tensor parallelism
    from megatron.core import parallel_state

    tp = parallel_state.get_tensor_model_parallel_world_size()
    if tp > 1:  # this rank's slices
        from mtds.ckpt.tensor_shards import split
        from mtds.parallel.tensor_parallel import tensor_layout

        state = split(state, tensor_layout(model), parallel_state.get_tensor_model_parallel_rank(), tp)
    own = {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
    shapes = [f"{k}: {tuple(state[k].shape)} -> {tuple(v.shape)}" for k, v in own.items()
              if k in state and state[k].shape != v.shape]
    if shapes:
        raise ConfigError(f"training.init_from: {ckpt} does not fit this model: " + "; ".join(shapes[:5]))
    fresh = sorted(own.keys() - state.keys())
    unused = sorted(state.keys() - own.keys())
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    log(f"initialised from {ckpt}: {len(own) - len(fresh)} tensors (weights only: optimizer, LR schedule "
        "and data position start fresh)")
    if fresh:
        log(f"note: not in {ckpt}, initialised fresh: {', '.join(fresh)}")
    if unused:
        log(f"note: in {ckpt} but not in this model, left out: {', '.join(unused)}")
    return unused
