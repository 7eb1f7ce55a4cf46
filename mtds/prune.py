"""Structured pruning of a trained GPT-family run into a smaller one (Minitron-style, issue #26).

    python -m mtds.prune --load RUN_DIR [--tag T] --out NEW_RUN_DIR --num-layers 6 --ffn-hidden-size 512 \\
        [--calibration-batches 8] [--data PREFIX ...]

Importance is measured in one pass over K calibration micro-batches of the run's own training split
(or of --data PREFIX, tokenized with the run's tokenizer), through the task's own forward step:
- depth (--num-layers N): each transformer layer's block importance, the mean over tokens of
  1 - cos(layer input, layer output) (ShortGPT, Men et al. 2024; Minitron's depth metric); the N
  most important layers are kept, in their original order.
- width of the MLP (--ffn-hidden-size F): each FFN neuron's activation importance, the mean over
  tokens of |input of linear_fc2| (the activation after SwiGLU's gate, or after GELU; Minitron,
  Muralidharan et al. 2024); each layer keeps its own F most important neurons, in their original
  order (SwiGLU: the same rows of the gate and the up half of linear_fc1).
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

Not built yet: attention heads / query groups (needs a model.kv_channels key: megatron-core derives the
head dimension from hidden_size / num_attention_heads, so dropping heads at a fixed hidden size would
change it) and embedding channels (--hidden-size); mixtures of experts are refused.
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


def check_request(saved: dict, num_layers: int | None, ffn: int | None, batches: int, out: str) -> None:
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
    if num_layers is None and ffn is None:
        raise LoadError("nothing to prune: give --num-layers N and/or --ffn-hidden-size F")
    from mtds.config import from_dict, migrate

    have_ffn = from_dict(migrate(saved["run"])).model.ffn_size()
    for flag, want, have in (("--num-layers", num_layers, m["num_layers"]), ("--ffn-hidden-size", ffn, have_ffn)):
        if want is not None and not 1 <= want <= have:
            raise LoadError(f"{flag} {want}: the model has {have}; give 1..{have}")
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


def importances(run, loader) -> tuple[list[float], list]:
    """(block importance per layer [L], FFN neuron importance per layer [L] x [F]) over the loader."""
    import torch
    import torch.nn.functional as F

    layers = run.model.decoder.layers
    block = [[0.0, 0] for _ in layers]  # per layer: sum of (1 - cos) over tokens, tokens
    neuron = [None] * len(layers)  # per layer: sum of |activation| over tokens, [F]
    tokens = [0] * len(layers)

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

    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_hook(functools.partial(block_hook, i), with_kwargs=True))
        handles.append(layer.mlp.linear_fc2.register_forward_pre_hook(functools.partial(ffn_hook, i)))
    task = run.cfg.kind.task
    try:
        with torch.no_grad():
            for batch in loader:
                task.forward_step(run.model, batch, torch.device("cpu"), run.cfg.task)
    finally:
        for h in handles:
            h.remove()
    return [s / n for s, n in block], [(s / t).tolist() for s, t in zip(neuron, tokens)]


def top(scores: list[float], k: int) -> list[int]:
    """The indices of the k highest scores, in ascending index order (ties: the lower index)."""
    ranked = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return sorted(ranked[:k])


def pruned_state(state: dict, keep_layers: list[int], keep_neurons: dict[int, list[int]], ffn: int,
                 swiglu: bool) -> dict:
    """The kept layers renumbered 0..N-1, each MLP sliced to its kept neurons; other tensors as they are.
    linear_fc1 [F or 2F (gate; up), h] keeps rows, linear_fc2 [h, F] keeps columns."""
    import torch

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
        out[f"decoder.layers.{new_index[old]}.{rest}"] = tensor.contiguous()
    return out


def prune(load: str, tag: str | None, out: str, num_layers: int | None, ffn: int | None, batches: int = 8,
          data: list[str] | None = None, log=print) -> str:
    """Prune the run at `load` into the new run dir `out`; returns its checkpoint dir."""
    from mtds.average import verified
    from mtds.ckpt.layout import iteration_of, read_config
    from mtds.ckpt.save_load import publish_weights
    from mtds.data.sources import check_prefix
    from mtds.ds_config import set_precision
    from mtds.load_trained import find_checkpoint, load_trained

    ckpt = find_checkpoint(load, tag)
    saved = read_config(ckpt)
    check_request(saved, num_layers, ffn, batches, out)
    for prefix in data or []:
        check_prefix(prefix, "--data")
    manifest_hash = verified(ckpt)
    run = load_trained(load, os.path.basename(ckpt))
    m = run.cfg.model
    num_layers, ffn = num_layers or m.num_layers, ffn or m.ffn_size()
    block, neuron = importances(run, calibration_loader(run, batches, data))
    keep_layers = top(block, num_layers)
    keep_neurons = {i: top(neuron[i], ffn) for i in keep_layers}
    state = {k: v.detach().clone() for k, v in run.model.state_dict().items() if not k.endswith("_extra_state")}
    state = pruned_state(state, keep_layers, keep_neurons, m.ffn_size(), m.activation == "swiglu")

    record = copy.deepcopy(saved)
    for key in ("train_order", "branched_from", "averaged_from"):
        record.pop(key, None)
    set_precision(record["deepspeed"], "fp32")  # fp32 weights in ZeRO-0's layout, as mtds.average writes them
    record["deepspeed"]["zero_optimization"] = {"stage": 0}
    data_parallel = int(record.get("parallel", {}).get("data", record.get("world_size", 1)))
    record["parallel"] = {"world": data_parallel, "tensor": 1, "data": data_parallel}
    record["run"]["model"].update(num_layers=num_layers, ffn_hidden_size=ffn, tensor_model_parallel_size=1,
                                  sequence_parallel=False)
    record["run"]["training"]["run_dir"] = out
    record["num_parameters"] = sum(v.numel() for v in state.values())
    record["pruned_from"] = {
        "run_dir": os.path.abspath(load), "tag": os.path.basename(ckpt), "manifest_xxh3_128": manifest_hash,
        "calibration": {"micro_batches": batches, "data": data or "the run's training split"},
        "removed": {"layers": [i for i in range(m.num_layers) if i not in keep_layers],
                    "ffn_neurons_per_layer": m.ffn_size() - ffn},
        "importance": {"layers": "mean 1 - cos(layer input, layer output) per token", "layer_scores": block,
                       "layer_ranking": sorted(range(m.num_layers), key=lambda i: (-block[i], i)),
                       "ffn": "mean |linear_fc2 input| per token"},
        "kept": {"layers": keep_layers, "ffn_neurons": [keep_neurons[i] for i in keep_layers]}}
    os.makedirs(out, exist_ok=True)
    final = publish_weights(out, state, record, iteration=iteration_of(os.path.basename(ckpt)))
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(record, f, indent=2)
    log(f"pruned {ckpt}: layers {m.num_layers} -> {num_layers} (removed {record['pruned_from']['removed']['layers']}), "
        f"ffn {m.ffn_size()} -> {ffn}; {record['num_parameters']:,} parameters -> {final}")
    return final


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mtds.prune", description=__doc__.split("\n\n")[0])
    p.add_argument("--load", required=True, metavar="RUN_DIR", help="run directory of the GPT to prune")
    p.add_argument("--tag", help="checkpoint tag, e.g. iter_0000040 (default: latest)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="new run directory for the pruned model")
    p.add_argument("--num-layers", type=int, metavar="N", help="keep the N most important layers")
    p.add_argument("--ffn-hidden-size", type=int, metavar="F", help="keep each layer's F most important FFN neurons")
    p.add_argument("--calibration-batches", type=int, default=8, metavar="K",
                   help="micro-batches of calibration data for the importance scores (default 8)")
    p.add_argument("--data", nargs="+", metavar="PREFIX",
                   help="calibration data prefix(es), tokenized with the run's tokenizer (default: its training split)")
    a = p.parse_args(argv)
    prune(a.load, a.tag, a.out, a.num_layers, a.ffn_hidden_size, a.calibration_batches, a.data,
          log=lambda line: print(line, file=sys.stderr))
    print(f"next: python -m mtds.evaluate --load {a.out}", file=sys.stderr)
    print(f"next: python mtds/pretrain.py --training.init_from={a.out} ... (a recovery fine-tune)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
