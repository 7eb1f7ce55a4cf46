"""Structured pruning of a trained GPT-family run into a smaller one (Minitron-style, issue #26).

    python -m mtds.prune --load RUN_DIR [--tag T] --out NEW_RUN_DIR [--num-layers 6] [--ffn-hidden-size 512] \\
        [--num-attention-heads 8] [--num-query-groups 4] [--hidden-size 768] [--calibration-batches 8] \\
        [--data PREFIX ...]

Importance is measured in one pass over K calibration micro-batches of the run's own training split
(or of --data PREFIX, tokenized with the run's tokenizer), through the task's own forward step:
- depth (--num-layers N): each transformer layer's block importance, the mean over tokens of
  1 - cos(layer input, layer output) (ShortGPT, Men et al. 2024; Minitron's depth metric); the N
  most important layers are kept, in their original order.
- width of the MLP (--ffn-hidden-size F): each FFN neuron's activation importance, the mean over
  tokens of |input of linear_fc2| (the activation after SwiGLU's gate, or after GELU; Minitron,
  Muralidharan et al. 2024); each layer keeps its own F most important neurons, in their original
  order (SwiGLU: the same rows of the gate and the up half of linear_fc1).
- attention (--num-query-groups G, --num-attention-heads H): each query head's activation importance,
  the mean over tokens of the L2 norm of its slice of linear_proj's input (its attention output); a
  query group (GQA: the query heads sharing one key/value head) scores the sum of its heads. The G
  best groups are kept, and in each the H/G best query heads, in their original order; linear_qkv's
  rows (megatron-core's per-group layout [q heads of the group, k, v] x head_dim) and linear_proj's
  columns follow. The head dimension stays: the record's model.kv_channels keeps it when H changes.
- embedding channels (--hidden-size D): each channel of the residual stream scores the sum, over every
  norm of the kept layers (input_layernorm, pre_mlp_layernorm) and the final norm, of the mean over
  tokens of |norm output| in that channel (Minitron's embedding-channel importance: the LayerNorm
  outputs aggregated over layers). The D best channels are kept, in their original order, wherever the
  residual stream appears: the word (and learned position) embeddings' columns, every norm's weight
  (and bias), the input columns of linear_qkv and linear_fc1, the output rows (and biases) of
  linear_proj and linear_fc2, and the output layer's columns (tied: the embedding itself). The head
  dimension and the FFN width stay (the record pins model.kv_channels and model.ffn_hidden_size where
  they would otherwise be derived from hidden_size). RMSNorm/LayerNorm then normalize over D channels.
Pruning to the model's own size keeps every index in order: the original weights, bit for bit.

The result is an ordinary run dir: a weights-only checkpoint with the parent's iteration
(mtds.ckpt.save_load.publish_weights, as mtds.average writes one), its record the parent's with the
new [model] shape and `pruned_from` (parent run dir, tag, manifest hash, what was removed, the
importance scores and the kept indices). mtds.evaluate, mtds.generate and mtds.export_hf load it, and
`training.init_from` trains from it (a recovery fine-tune, or distillation from the parent).

Why not NVIDIA ModelOpt (modelopt.torch.prune, mode "mcore_minitron"), tried first: nvidia-modelopt
0.47.0 installs beside torch 2.x and megatron-core 0.16.1, but its megatron plugin
(modelopt/torch/nas/plugins/megatron.py) does `import transformer_engine` unconditionally, so on a
CPU machine without Transformer Engine the mode is never registered: `mtp.prune(..., mode="mcore_minitron")`
fails with `KeyError: 'mcore_minitron'` (the plugin's import error: `No module named 'transformer_engine'`).
The scoring and slicing below are written here for that reason (a hook per layer, index_select).

Mixtures of experts are refused, and --hidden-size with sinusoidal positions (a fixed table of the width).
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import re
import sys

from mtds.errors import LoadError
from mtds.tool_cli import run_tool

LAYER_KEY = re.compile(r"^decoder\.layers\.(\d+)\.(.*)$")


RUN_CONFIG = "run_config.json"
"""The pruned run's [model] and [task] sections, beside its checkpoints: `--config` for the recovery fine-tune."""

def attention_shape(m: dict, heads: int | None, groups: int | None) -> tuple[int, int]:
    """(query heads, query groups) after pruning; an MHA model (no num_query_groups) keeps one group per head."""
    have_h, have_g = m["num_attention_heads"], m.get("num_query_groups") or m["num_attention_heads"]
    mha = have_g == have_h
    groups = groups or (heads if mha and heads else have_g)
    heads = heads or groups * (have_h // have_g)
    return heads, groups


def check_request(saved: dict, num_layers: int | None, ffn: int | None, batches: int, out: str,
                  heads: int | None = None, groups: int | None = None, hidden: int | None = None) -> None:
    """One line for a request this tool cannot do, before any weight is read."""
    from mtds.kinds import KINDS
    from mtds.models.gpt import FAMILY as GPT

    m = saved["run"]["model"]
    kind = KINDS.get(m["model_type"])
    if kind is None or kind.family is not GPT:
        raise LoadError(f"model.model_type={m['model_type']!r}: mtds.prune prunes GPT-family runs "
                        f"({', '.join(k for k, v in KINDS.items() if v.family is GPT)})")
    if m.get("num_moe_experts"):
        raise LoadError(f"model.num_moe_experts={m['num_moe_experts']}: pruning a mixture of experts is not built; "
                        "prune a dense GPT")
    if num_layers is None and ffn is None and heads is None and groups is None and hidden is None:
        raise LoadError("nothing to prune: give --num-layers, --ffn-hidden-size, --num-attention-heads, "
                        "--num-query-groups and/or --hidden-size")
    from mtds.config import from_dict, migrate

    have_ffn = from_dict(migrate(saved["run"])).model.ffn_size()
    have_h, have_g = m["num_attention_heads"], m.get("num_query_groups") or m["num_attention_heads"]
    for flag, want, have in (("--num-layers", num_layers, m["num_layers"]), ("--ffn-hidden-size", ffn, have_ffn),
                             ("--num-attention-heads", heads, have_h), ("--num-query-groups", groups, have_g),
                             ("--hidden-size", hidden, m["hidden_size"])):
        if want is not None and not 1 <= want <= have:
            raise LoadError(f"{flag} {want}: the model has {have}; give 1..{have}")
    new_h, new_g = attention_shape(m, heads, groups)
    if new_h % new_g or new_h // new_g > have_h // have_g:
        raise LoadError(f"--num-attention-heads {new_h} with {new_g} query group(s): each group keeps the same "
                        f"number of its {have_h // have_g} query heads, so give a multiple of {new_g} up to "
                        f"{new_g * (have_h // have_g)}")
    if hidden is not None and m.get("position_embedding_type") == "sinusoidal":
        raise LoadError(f"--hidden-size {hidden}: model.position_embedding_type='sinusoidal' is a fixed table of "
                        "the width, which slicing channels would not reproduce; prune this run's other dimensions")
    if batches < 1:
        raise LoadError(f"--calibration-batches {batches}: give at least 1")
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise LoadError(f"--out {out}: exists and is not an empty directory; give a new run directory")


def calibration_loader(run, batches: int, prefixes: list[str] | None):
    """K micro-batches (the run's micro-batch size) of the run's training split, or of `prefixes`."""
    from mtds.data.loader import fixed_eval_batches
    from mtds.data.sources import DataSources, check_prefix
    from mtds.evaluate import eval_config

    cfg, own = eval_config(run.cfg, run.run_dir, prefixes, "valid"), run.saved["data_sources"]
    sources = DataSources(cfg.data.paths or own["prefixes"], cfg.data.weights if cfg.data.paths else own["weights"],
                          run.tokenizer_model, None if prefixes else own.get("valid_prefixes"), run.tokenizer_type)
    for prefix in sources.all_prefixes:
        check_prefix(prefix, "--data")
    micro = run.saved["deepspeed"]["train_micro_batch_size_per_gpu"]
    train = cfg.kind.task.build_datasets(cfg, sources, run.tokenizer(), [batches * micro, 1, 1], 1)[0]
    if train is None or len(train) == 0:
        raise LoadError(f"the training split of {' '.join(sources.prefixes)} is empty; give --data PREFIX")
    return fixed_eval_batches(train, batches, micro, 0, 1)


def importances(run, loader) -> tuple[list[float], list, list, list]:
    """(block importance per layer [L], FFN neuron importance [L] x [F], query-head importance [L] x [H],
    hidden-channel importance per norm [L + 1] x [h]: each layer's two norms summed, then the final norm)."""
    import torch
    import torch.nn.functional as F

    layers = run.model.decoder.layers
    block = [[0.0, 0] for _ in layers]  # per layer: sum of (1 - cos) over tokens, tokens
    neuron = [None] * len(layers)  # per layer: sum of |activation| over tokens, [F]
    tokens = [0] * len(layers)
    head = [None] * len(layers)  # per layer: sum over tokens of each head's output L2 norm, [H]
    channel = [None] * (len(layers) + 1)  # per layer (its two norms), then the final norm: sum of |output|, [h]
    final_tokens = [0]
    num_heads = run.model.config.num_attention_heads

    def block_hook(i, module, args, kwargs, output):
        x = args[0] if args else kwargs["hidden_states"]  # [s, b, h]
        y = output[0] if isinstance(output, tuple) else output
        cos = F.cosine_similarity(x.float(), y.float(), dim=-1)  # [s, b]
        block[i][0] += (1 - cos).sum().item()
        block[i][1] += cos.numel()

    def ffn_hook(i, module, args):
        a = args[0].float().abs()  # [s, b, F]: linear_fc2's input, the activation
        s = a.reshape(-1, a.shape[-1]).sum(0, dtype=torch.float64)
        neuron[i] = s if neuron[i] is None else neuron[i] + s
        tokens[i] += a.numel() // a.shape[-1]

    def attention_hook(i, module, args):
        x = args[0].float()  # [s, b, H * head_dim]: linear_proj's input, the heads' outputs side by side
        norms = x.reshape(-1, num_heads, x.shape[-1] // num_heads).norm(dim=-1).sum(0, dtype=torch.float64)  # [H]
        head[i] = norms if head[i] is None else head[i] + norms

    def norm_hook(i, module, args, output):
        a = output.float().abs()  # [s, b, h]: the normalized residual stream
        s = a.reshape(-1, a.shape[-1]).sum(0, dtype=torch.float64)
        channel[i] = s if channel[i] is None else channel[i] + s
        if i == len(layers):
            final_tokens[0] += a.numel() // a.shape[-1]

    handles = [run.model.decoder.final_layernorm.register_forward_hook(functools.partial(norm_hook, len(layers)))]
    for i, layer in enumerate(layers):
        for norm in (layer.input_layernorm, layer.pre_mlp_layernorm):
            handles.append(norm.register_forward_hook(functools.partial(norm_hook, i)))
        handles.append(layer.register_forward_hook(functools.partial(block_hook, i), with_kwargs=True))
        handles.append(layer.mlp.linear_fc2.register_forward_pre_hook(functools.partial(ffn_hook, i)))
        handles.append(layer.self_attention.linear_proj.register_forward_pre_hook(functools.partial(attention_hook, i)))
    task = run.cfg.kind.task
    try:
        with torch.no_grad():
            for batch in loader:
                task.forward_step(run.model, batch, torch.device("cpu"), run.cfg.task)
    finally:
        for h in handles:
            h.remove()
    return ([s / n for s, n in block], [(s / t).tolist() for s, t in zip(neuron, tokens)],
            [(s / t).tolist() for s, t in zip(head, tokens)],
            [(s / t).tolist() for s, t in zip(channel, tokens + final_tokens)])


def kept_heads(scores: list[float], groups: int, new_heads: int, new_groups: int) -> tuple[list[int], list[int]]:
    """(kept query groups, kept query heads as global indices) of one layer from its head scores [H]:
    the best groups by the sum of their heads' scores, then the best heads within each."""
    per = len(scores) // groups
    group_scores = [sum(scores[g * per:(g + 1) * per]) for g in range(groups)]
    keep_g = top(group_scores, new_groups)
    keep_h = [g * per + j for g in keep_g for j in top(scores[g * per:(g + 1) * per], new_heads // new_groups)]
    return keep_g, keep_h


def top(scores: list[float], k: int) -> list[int]:
    """The indices of the k highest scores, in ascending index order (ties: the lower index)."""
    ranked = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return sorted(ranked[:k])


def pruned_state(state: dict, keep_layers: list[int], keep_neurons: dict[int, list[int]], ffn: int,
                 swiglu: bool, keep_attention: dict[int, tuple[list[int], list[int]]] | None = None,
                 heads: int = 1, groups: int = 1, head_dim: int = 1) -> dict:
    """The kept layers renumbered 0..N-1, each MLP sliced to its kept neurons, each attention to its kept
    (groups, heads); other tensors as they are. linear_fc1 [F or 2F (gate; up), h] keeps rows, linear_fc2
    [h, F] columns; linear_qkv [groups x (H/G q heads, k, v) x head_dim, h] rows, linear_proj [h, H x head_dim]
    columns."""
    import torch

    def qkv_rows(keep_g: list[int], keep_h: list[int]) -> torch.Tensor:
        per = heads // groups  # query heads per group; each group's rows: its q heads, then k, then v
        rows = []
        for g in keep_g:
            slots = [h - g * per for h in keep_h if h // per == g] + [per, per + 1]  # kept q heads, k, v
            rows += [(g * (per + 2) + s) * head_dim + d for s in slots for d in range(head_dim)]
        return torch.tensor(rows, dtype=torch.long)

    def proj_columns(keep_h: list[int]) -> torch.Tensor:
        return torch.tensor([h * head_dim + d for h in keep_h for d in range(head_dim)], dtype=torch.long)

    new_index = {old: new for new, old in enumerate(keep_layers)}
    out = {}
    for key, tensor in state.items():
        match = LAYER_KEY.match(key)
        if not match:
            out[key] = tensor
            continue
        old, rest = int(match.group(1)), match.group(2)
        if old not in new_index:
            continue
        keep = torch.tensor(keep_neurons[old], dtype=torch.long)
        if rest in ("mlp.linear_fc1.weight", "mlp.linear_fc1.bias"):
            rows = torch.cat([keep, keep + ffn]) if swiglu else keep  # SwiGLU: the same neurons of both halves
            tensor = tensor.index_select(0, rows)
        elif rest == "mlp.linear_fc2.weight":
            tensor = tensor.index_select(1, keep)
        elif keep_attention and rest in ("self_attention.linear_qkv.weight", "self_attention.linear_qkv.bias"):
            tensor = tensor.index_select(0, qkv_rows(*keep_attention[old]))
        elif keep_attention and rest == "self_attention.linear_proj.weight":
            tensor = tensor.index_select(1, proj_columns(keep_attention[old][1]))
        out[f"decoder.layers.{new_index[old]}.{rest}"] = tensor.contiguous()
    return out


def hidden_sliced(state: dict, keep: list[int]) -> dict:
    """Every tensor on the residual stream [.., h, ..] sliced to the kept channels `keep` [D]; the others
    (linear_qkv's and linear_fc1's biases, whose rows are heads and neurons) as they are."""
    import torch

    index = torch.tensor(keep, dtype=torch.long)
    out = {}
    for key, tensor in state.items():
        name = key.rsplit(".", 2)[-2:]  # [module, weight or bias]
        if key in ("embedding.word_embeddings.weight", "embedding.position_embeddings.weight",
                   "output_layer.weight") or (name[0] in ("linear_qkv", "linear_fc1") and name[1] == "weight"):
            tensor = tensor.index_select(1, index)  # [V or P, h] tables, [out, h] input columns
        elif name[0] in ("input_layernorm", "pre_mlp_layernorm", "final_layernorm", "linear_proj", "linear_fc2"):
            tensor = tensor.index_select(0, index)  # norms' [h], output rows [h, in] and biases [h]
        out[key] = tensor.contiguous()
    return out


def prune(load: str, tag: str | None, out: str, num_layers: int | None, ffn: int | None, batches: int = 8,
          data: list[str] | None = None, log=print, heads: int | None = None, groups: int | None = None,
          hidden: int | None = None) -> str:
    """Prune the run at `load` into the new run dir `out`; returns its checkpoint dir."""
    from mtds.average import verified
    from mtds.ckpt.layout import iteration_of, read_config
    from mtds.ckpt.save_load import publish_weights
    from mtds.data.sources import check_prefix
    from mtds.ds_config import set_precision
    from mtds.load_trained import find_checkpoint, load_trained

    ckpt = find_checkpoint(load, tag)
    saved = read_config(ckpt)
    check_request(saved, num_layers, ffn, batches, out, heads, groups, hidden)
    for prefix in data or []:
        check_prefix(prefix, "--data")
    manifest_hash = verified(ckpt)
    run = load_trained(load, os.path.basename(ckpt))
    m = run.cfg.model
    num_layers, ffn, hidden = num_layers or m.num_layers, ffn or m.ffn_size(), hidden or m.hidden_size
    old_h, old_g = m.num_attention_heads, m.num_query_groups or m.num_attention_heads
    new_h, new_g = attention_shape(saved["run"]["model"], heads, groups)
    head_dim = run.model.config.kv_channels
    block, neuron, head, channel = importances(run, calibration_loader(run, batches, data))
    keep_layers = top(block, num_layers)
    channel_scores = [sum(channel[i][c] for i in keep_layers + [m.num_layers]) for c in range(m.hidden_size)]
    keep_channels = top(channel_scores, hidden)
    keep_neurons = {i: top(neuron[i], ffn) for i in keep_layers}
    keep_attention = {i: kept_heads(head[i], old_g, new_h, new_g) for i in keep_layers}
    state = {k: v.detach().clone() for k, v in run.model.state_dict().items() if not k.endswith("_extra_state")}
    state = pruned_state(state, keep_layers, keep_neurons, m.ffn_size(), m.activation == "swiglu", keep_attention,
                         old_h, old_g, head_dim)
    if hidden != m.hidden_size:
        state = hidden_sliced(state, keep_channels)

    record = copy.deepcopy(saved)
    for key in ("train_order", "branched_from", "averaged_from"):
        record.pop(key, None)
    set_precision(record["deepspeed"], "fp32")  # fp32 weights in ZeRO-0's layout, as mtds.average writes them
    record["deepspeed"]["zero_optimization"] = {"stage": 0}
    data_parallel = int(record.get("parallel", {}).get("data", record.get("world_size", 1)))
    record["parallel"] = {"world": data_parallel, "tensor": 1, "data": data_parallel}
    # A derived (none) ffn_hidden_size or kv_channels stays none while what it derives from stays (init_from
    # compares the keys as written); a new hidden_size or head count would derive other sizes: pinned.
    if ffn != m.ffn_size() or hidden != m.hidden_size:
        record["run"]["model"]["ffn_hidden_size"] = ffn
    record["run"]["model"].update(num_layers=num_layers, hidden_size=hidden, tensor_model_parallel_size=1,
                                  sequence_parallel=False, num_attention_heads=new_h,
                                  num_query_groups=None if new_g == new_h and old_g == old_h else new_g)
    if new_h != old_h or hidden != m.hidden_size:  # the head dimension stays
        record["run"]["model"]["kv_channels"] = head_dim
    record["run"]["training"]["run_dir"] = out
    record["num_parameters"] = sum(v.numel() for v in state.values())
    record["pruned_from"] = {
        "run_dir": os.path.abspath(load), "tag": os.path.basename(ckpt), "manifest_xxh3_128": manifest_hash,
        "calibration": {"micro_batches": batches, "data": data or "the run's training split"},
        "removed": {"layers": [i for i in range(m.num_layers) if i not in keep_layers],
                    "ffn_neurons_per_layer": m.ffn_size() - ffn, "query_heads_per_layer": old_h - new_h,
                    "query_groups_per_layer": old_g - new_g, "hidden_channels": m.hidden_size - hidden},
        "importance": {"layers": "mean 1 - cos(layer input, layer output) per token", "layer_scores": block,
                       "layer_ranking": sorted(range(m.num_layers), key=lambda i: (-block[i], i)),
                       "ffn": "mean |linear_fc2 input| per token",
                       "heads": "mean L2 norm of the head's linear_proj input per token; groups: sum of their heads",
                       "head_scores": head,
                       "hidden": "sum over the kept layers' norms and the final norm of the mean |norm output| "
                                 "per token", "hidden_scores": channel_scores},
        "kept": {"layers": keep_layers, "ffn_neurons": [keep_neurons[i] for i in keep_layers],
                 "query_groups": [keep_attention[i][0] for i in keep_layers],
                 "query_heads": [keep_attention[i][1] for i in keep_layers], "hidden_channels": keep_channels}}
    os.makedirs(out, exist_ok=True)
    final = publish_weights(out, state, record, iteration=iteration_of(os.path.basename(ckpt)))
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(record, f, indent=2)
    with open(os.path.join(out, RUN_CONFIG), "w") as f:  # the new shape, for `--config` (as mtds.import_hf writes)
        json.dump({"model": record["run"]["model"], "task": record["run"].get("task") or {}}, f, indent=2)
    log(f"pruned {ckpt}: layers {m.num_layers} -> {num_layers} (removed {record['pruned_from']['removed']['layers']}), "
        f"ffn {m.ffn_size()} -> {ffn}, heads {old_h} -> {new_h} in {old_g} -> {new_g} query group(s), "
        f"hidden {m.hidden_size} -> {hidden}; "
        f"{record['num_parameters']:,} parameters -> {final}")
    log(f"next: deepspeed mtds/pretrain.py --deepspeed_config DS.json --config {os.path.join(out, RUN_CONFIG)} "
        f"--training.init_from {out} --run-dir RUN_DIR   # the recovery fine-tune, at the pruned shape")
    return final


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mtds.prune", description=__doc__.split("\n\n")[0])
    p.add_argument("--load", required=True, metavar="RUN_DIR", help="run directory of the GPT to prune")
    p.add_argument("--tag", help="checkpoint tag, e.g. iter_0000040 (default: latest)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="new run directory for the pruned model")
    p.add_argument("--num-layers", type=int, metavar="N", help="keep the N most important layers")
    p.add_argument("--ffn-hidden-size", type=int, metavar="F", help="keep each layer's F most important FFN neurons")
    p.add_argument("--num-attention-heads", type=int, metavar="H", help="keep H query heads (H/G in each kept group)")
    p.add_argument("--num-query-groups", type=int, metavar="G",
                   help="keep the G most important query groups (GQA key/value heads)")
    p.add_argument("--hidden-size", type=int, metavar="D",
                   help="keep the D most important embedding channels (the residual stream's width)")
    p.add_argument("--calibration-batches", type=int, default=8, metavar="K",
                   help="micro-batches of calibration data for the importance scores (default 8)")
    p.add_argument("--data", nargs="+", metavar="PREFIX",
                   help="calibration data prefix(es), tokenized with the run's tokenizer (default: its training split)")
    a = p.parse_args(argv)
    prune(a.load, a.tag, a.out, a.num_layers, a.ffn_hidden_size, a.calibration_batches, a.data,
          log=lambda line: print(line, file=sys.stderr), heads=a.num_attention_heads, groups=a.num_query_groups,
          hidden=a.hidden_size)
    print(f"next: python -m mtds.evaluate --load {a.out}", file=sys.stderr)
    print(f"next: python mtds/pretrain.py --training.init_from={a.out} ... (a recovery fine-tune)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
