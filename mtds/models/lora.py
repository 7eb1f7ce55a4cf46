"""LoRA (Hu et al. 2021) on megatron-core's linear layers: adapters, merging, PEFT export.

A target layer (ColumnParallelLinear / RowParallelLinear, which return (out, bias)) keeps its weight,
frozen, and gets two small matrices beside it, `lora_A` [r, in] and `lora_B` [out, r]; a forward
hook adds (alpha / r) * B A dropout(x) to its output. B starts at zero, so before the first step the
model is the base bit for bit. Why a hook and not peft: peft wraps torch.nn.Linear (and a few
others) and knows nothing of megatron's (out, bias) layers; a hook also leaves the base keys as they
are (`...linear_qkv.weight`), so init_from, consolidation and the HF tables see the usual names, and
the adapters come as `...linear_qkv.lora_A.weight` / `.lora_B.weight`.

Only training.lora_* decide what is built (checked in mtds.config.lora_problems, no tensor
parallelism: A and B are whole on every rank).
"""

from __future__ import annotations

import math

SUFFIX_A, SUFFIX_B = ".lora_A.weight", ".lora_B.weight"


def scale(training) -> float:
    return float(training.lora_alpha) / int(training.lora_rank)


def _add_adapter_output(module, args, kwargs, output):
    x = args[0] if args else kwargs["input_"]  # [s, b, in]
    out, bias = output  # out [s, b, out]
    delta = module.lora_B(module.lora_A(module.lora_dropout(x)))  # [s, b, r] -> [s, b, out]
    return out + module.lora_scale * delta, bias


def apply_lora(model, training, heads: tuple[str, ...] = (), log=print) -> int:
    """Freeze every parameter of `model` but those of the task's `heads` (top-level module names, the
    task's `lora_heads`: trained whole) and add adapters to the layers named by training.lora_targets
    (after the base weights are loaded). Returns the trainable parameter count."""
    import torch

    targets = set(training.lora_targets)
    layers = [(name, mod) for name, mod in model.named_modules() if name.rsplit(".", 1)[-1] in targets]
    for name, p in model.named_parameters():
        p.requires_grad_(name.split(".", 1)[0] in heads)
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    r = int(training.lora_rank)
    for _, mod in layers:
        out_features, in_features = mod.weight.shape  # [out, in] (whole: no tensor parallelism)
        like = {"dtype": mod.weight.dtype, "device": mod.weight.device}
        mod.lora_A = torch.nn.Linear(in_features, r, bias=False, **like)
        mod.lora_B = torch.nn.Linear(r, out_features, bias=False, **like)
        torch.nn.init.kaiming_uniform_(mod.lora_A.weight, a=math.sqrt(5))  # as torch.nn.Linear (and peft)
        torch.nn.init.zeros_(mod.lora_B.weight)  # step 0 == the base
        mod.lora_dropout = torch.nn.Dropout(training.lora_dropout) if training.lora_dropout else torch.nn.Identity()
        mod.lora_scale = scale(training)
        mod.register_forward_hook(_add_adapter_output, with_kwargs=True)
        count += mod.lora_A.weight.numel() + mod.lora_B.weight.numel()
    total = sum(p.numel() for p in model.parameters())
    trained_whole = f" and the task's {', '.join(heads)} trained whole" if heads else ""
    log(f"LoRA: rank {r} adapters on {len(layers)} layers ({', '.join(sorted(targets))}){trained_whole}: {count:,} "
        f"trainable parameters of {total:,} ({100 * count / total:.2f}%); the base weights are frozen")
    return count


def merged(state: dict, training) -> dict:
    """The state dict with each adapter folded into its layer's weight (W + scale B A) and the
    adapter tensors dropped: a plain model of the base's shape (the tools' view of a LoRA run)."""
    out = {k: v for k, v in state.items() if not k.endswith((SUFFIX_A, SUFFIX_B))}
    s = scale(training)
    for key_a in (k for k in state if k.endswith(SUFFIX_A)):
        layer = key_a[: -len(SUFFIX_A)]
        a, b = state[key_a].float(), state[layer + SUFFIX_B].float()  # [r, in], [out, r]
        out[layer + ".weight"] = out[layer + ".weight"].float() + s * (b @ a)
    return out


def adapters(state: dict) -> dict:
    return {k: v for k, v in state.items() if k.endswith((SUFFIX_A, SUFFIX_B))}


PEFT_TASK_TYPES = {"ForCausalLM": "CAUSAL_LM", "ForSequenceClassification": "SEQ_CLS"}  # by the HF class's suffix


def peft_adapter(state: dict, training, arch, rules: list, heads: tuple[str, ...] = ()) -> tuple[object, dict]:
    """(peft.LoraConfig, PEFT adapter state dict) for the exported base model of `arch`
    (mtds/hf/<architecture>.py), whose mapping `rules` map each megatron key's adapter. A is shared by the HF
    layers a fused megatron layer splits into (q/k/v of linear_qkv, gate/up of linear_fc1); B's
    rows are split by the rule's own transform, as the weight's rows are. The task's `heads` (trained whole)
    go in as peft's `modules_to_save`, their tensors under their HF names, as peft saves them."""
    from peft import LoraConfig

    from mtds.errors import LoadError
    from mtds.hf.transforms import Chunk, Same, SplitQKV

    task_type = next((t for suffix, t in PEFT_TASK_TYPES.items() if arch.ARCHITECTURE.endswith(suffix)), None)
    if task_type is None:
        raise LoadError(f"--lora-adapter: peft has no task type for {arch.ARCHITECTURE}; export the merged model "
                        "instead (drop --lora-adapter)")
    out, adapted, saved_whole = {}, [], set()
    for rule in rules:
        if not rule.ours:  # an HF-only tensor (no megatron counterpart)
            continue
        ours = rule.ours[0]
        layer = ours[: -len(".weight")]
        if ours.split(".", 1)[0] in heads:  # [out, in] / [out]: the head's own tensors, as the export maps them
            for theirs, tensor in zip(rule.theirs, rule.transform.to_hf(tuple(state[k] for k in rule.ours))):
                saved_whole.add(theirs.rsplit(".", 1)[0])
                out[f"base_model.model.{theirs}"] = tensor.contiguous()
            continue
        if len(rule.ours) != 1 or not ours.endswith(".weight") or layer + SUFFIX_A not in state:
            continue
        if not isinstance(rule.transform, (Same, SplitQKV, Chunk)):  # e.g. GPT-2's transposed Conv1D
            raise LoadError(f"--lora-adapter: {arch.ARCHITECTURE} stores {ours} as {type(rule.transform).__name__}; "
                            "export the merged model instead (drop --lora-adapter)")
        a, b = state[layer + SUFFIX_A], state[layer + SUFFIX_B]  # [r, in], [out, r]
        for theirs, b_part in zip(rule.theirs, rule.transform.to_hf((b,))):  # B's rows as the weight's
            module = theirs[: -len(".weight")]
            adapted.append(module)
            out[f"base_model.model.{module}.lora_A.weight"] = a.clone()  # a copy each: safetensors refuses shared memory
            out[f"base_model.model.{module}.lora_B.weight"] = b_part.contiguous()
    t = training
    config = LoraConfig(r=int(t.lora_rank), lora_alpha=t.lora_alpha, lora_dropout=t.lora_dropout,
                        target_modules=target_names(adapted, rules), modules_to_save=sorted(saved_whole) or None,
                        bias="none", task_type=task_type)
    return config, out


def target_names(adapted: list[str], rules: list) -> list[str]:
    """peft's target_modules for the HF modules in `adapted`: peft matches a name against the end of every
    module's name, so a short name (`q_proj`) is used where it matches adapted modules only, the full name
    where it would match another too (BERT's `dense` is also the pooler's)."""
    modules = {theirs.rsplit(".", 1)[0] for rule in rules for theirs in rule.theirs}
    adapted_set, names = set(adapted), set()
    for module in adapted:
        short = module.rsplit(".", 1)[-1]
        clash = any(m == short or m.endswith("." + short) for m in modules - adapted_set)
        names.add(module if clash else short)
    return sorted(names)


def write_peft_adapter(out_dir: str, config, weights: dict, base_dir: str | None = None) -> None:
    """adapter_config.json + adapter_model.safetensors, as peft's save_pretrained writes them."""
    import os

    from safetensors.torch import save_file

    config.base_model_name_or_path = base_dir
    os.makedirs(out_dir, exist_ok=True)
    config.save_pretrained(out_dir)
    save_file({k: v.float().contiguous() for k, v in weights.items()},
              os.path.join(out_dir, "adapter_model.safetensors"), metadata={"format": "pt"})


def export_adapter(state: dict, training, arch, rules: list, adapter_dir: str, base_dir: str, heads: tuple[str, ...] = (),
                   log=print) -> dict:
    """Write the PEFT adapter of a LoRA run's (unmerged) state to `adapter_dir`; returns the base's
    state dict (the frozen weights, adapters left out) for the caller to export to `base_dir`."""
    import os

    from mtds.errors import LoadError

    if not training.lora_rank:
        raise LoadError("--lora-adapter: this run was not trained with training.lora_rank; export it without the option")
    if os.path.isdir(adapter_dir) and os.listdir(adapter_dir) and \
            not os.path.isfile(os.path.join(adapter_dir, "adapter_config.json")):
        raise LoadError(f"--lora-adapter {adapter_dir}: exists and is not an adapter folder; give a new or empty directory")
    config, weights = peft_adapter(state, training, arch, rules, heads)
    write_peft_adapter(adapter_dir, config, weights, os.path.abspath(base_dir))
    auto = "AutoModelForCausalLM" if arch.CAUSAL_LM else "AutoModelForSequenceClassification"
    whole = f", trained whole: {', '.join(config.modules_to_save)}" if config.modules_to_save else ""
    log(f"export: PEFT adapter ({len(weights)} tensors, targets {', '.join(sorted(config.target_modules))}{whole}) to "
        f"{adapter_dir}; load it with PeftModel.from_pretrained({auto}.from_pretrained({base_dir!r}), {adapter_dir!r})")
    return {k: v for k, v in state.items() if not k.endswith((SUFFIX_A, SUFFIX_B))}
