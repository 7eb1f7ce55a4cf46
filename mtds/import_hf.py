"""Import a Hugging Face model directory as an mtds run directory.

    python -m mtds.import_hf --hf HF_DIR --out RUN_DIR

HF_DIR is a local directory (no hub access): config.json, the weights as model.safetensors or
shards named by model.safetensors.index.json, and the tokenizer (tokenizer.json with
tokenizer_config.json, or a sentencepiece tokenizer.model). Architectures: those listed in
ARCHITECTURES, each a two-way mapping table in mtds/hf/. RUN_DIR gets what a training run leaves:

    RUN_DIR/checkpoints/iter_0000000/   mtds_config.json + the weights in ZeRO-0's layout (fp32)
    RUN_DIR/checkpoints/latest
    RUN_DIR/tokenizer/                  the tokenizer files, copied
    RUN_DIR/run_config.json             [model], [task] and the tokenizer: `--config` for training

so `generate`, `evaluate` and `export_hf` take it like any run, and `training.init_from=RUN_DIR`
continues pretraining or fine-tunes from it.

Every check comes before a weight is read: the architecture and each config field (a value mtds
cannot express is refused with one line naming it), the tokenizer, that every shard exists and
that the tensor names and shapes in the shard headers are exactly those the table expects (from
the megatron model built on the meta device). Then shards are read one at a time and each
mapping rule converts and frees its tensors, so host memory peaks near one fp32 copy of the
model plus one shard. The checkpoint is written to `<tag>.tmp` and renamed when complete.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

from mtds.ckpt.layout import complete_tags, tag_for
from mtds.errors import ConfigError, LoadError
from mtds.hf import architecture
from mtds.kinds import FAMILIES, pretraining_kind
from mtds.tool_cli import run_tool

# Every architecture some family maps to and whose table reads a config.json (`model_config`): the
# families' own lists (Family.hf_architectures), not a second one. {HF name: (table, its family)}
IMPORTABLE = {t.ARCHITECTURE: (t, family) for family in FAMILIES
              for t in map(architecture, family.hf_architectures) if t.model_config is not None}
ARCHITECTURES = {name: t for name, (t, _) in IMPORTABLE.items()}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")
# Buffers some HF checkpoints store that are no weights (recomputed from the config by both sides).
BUFFER_SUFFIXES = ("rotary_emb.inv_freq", "attn.bias", "attn.masked_bias", "position_ids")


def read_hf_config(hf_dir: str) -> tuple[dict, object]:
    """(config.json, its architecture's mtds/hf module), or a one-line LoadError."""
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isdir(hf_dir):
        raise LoadError(f"{hf_dir}: not a directory (give a local Hugging Face model directory)")
    try:
        with open(path) as f:
            hf = json.load(f)
    except FileNotFoundError:
        raise LoadError(f"{path}: not found; a Hugging Face model directory holds config.json") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise LoadError(f"{path}: not valid JSON ({e})") from None
    names = hf.get("architectures") or []
    arch = ARCHITECTURES.get(names[0]) if len(names) == 1 else None
    if arch is None:
        raise LoadError(f"{path}: architectures={names}; mtds imports exactly one of {', '.join(ARCHITECTURES)}")
    return hf, arch


IMPORTED_SEQ_LENGTH = 4096
"""The most data.seq_length an import writes into run_config.json (the model's own limit if lower)."""


def run_config(hf: dict, arch, hf_dir: str) -> dict:
    """The run-config sections of the imported model: [model], [task], the tokenizer in [data]."""
    try:
        model, task = arch.model_config(hf)
    except (ValueError, TypeError, KeyError) as e:
        raise LoadError(f"{os.path.join(hf_dir, 'config.json')}: {e}; {arch.ARCHITECTURE} "
                        "cannot be imported with it") from None
    # The table says what the network is; the kind is its family's pretraining one (gpt, bert).
    model_type = pretraining_kind(IMPORTABLE[arch.ARCHITECTURE][1])
    # data.seq_length defaults to max_position_embeddings: 131072 for Llama-3.x, which trains out of
    # memory. The import writes a length a fine-tuning run can afford; the model still takes the long one.
    positions = model.get("max_position_embeddings")
    data = {"seq_length": min(positions, IMPORTED_SEQ_LENGTH)} if positions else {}
    return {"model": {"model_type": model_type, **model}, "task": task, "data": data}


def find_tokenizer(hf_dir: str) -> tuple[list[str], str]:
    """(tokenizer files to copy, tokenizer type): tokenizer.json preferred, as AutoTokenizer does."""
    present = [name for name in TOKENIZER_FILES if os.path.isfile(os.path.join(hf_dir, name))]
    if "tokenizer.json" in present:
        return present, "HuggingFaceTokenizer"
    if "tokenizer.model" in present:
        return ["tokenizer.model"], "SentencePieceTokenizer"
    raise LoadError(f"{hf_dir}: no tokenizer.json (or sentencepiece tokenizer.model); copy the model's tokenizer "
                    "files beside config.json")


def shard_files(hf_dir: str) -> dict[str, list[str]]:
    """{shard path: tensor names it holds per the index}, every shard checked to exist."""
    index = os.path.join(hf_dir, "model.safetensors.index.json")
    single = os.path.join(hf_dir, "model.safetensors")
    if os.path.isfile(index):
        try:
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
        except (ValueError, KeyError, TypeError) as e:
            raise LoadError(f"{index}: not a safetensors index ({e})") from None
        shards: dict[str, list[str]] = {}
        for name, file in weight_map.items():
            shards.setdefault(os.path.join(hf_dir, file), []).append(name)
    elif os.path.isfile(single):
        shards = {single: []}
    else:
        raise LoadError(f"{hf_dir}: no model.safetensors or model.safetensors.index.json (only safetensors "
                        "weights are imported; convert .bin weights with transformers' save_pretrained)")
    missing = [p for p in shards if not os.path.isfile(p)]
    if missing:
        raise LoadError(f"{missing[0]}: shard missing ({len(missing)} of {len(shards)} named by the index); "
                        "download every shard")
    return shards


def read_headers(shards: dict[str, list[str]]) -> dict[str, tuple[str, tuple]]:
    """{tensor name: (shard, shape)} from the safetensors headers alone (no weight is read)."""
    from safetensors import safe_open

    found: dict[str, tuple[str, tuple]] = {}
    for path, indexed in shards.items():
        try:
            with safe_open(path, framework="pt") as f:
                names = list(f.keys())
                for name in names:
                    found[name] = (path, tuple(f.get_slice(name).get_shape()))
        except Exception as e:  # safetensors raises its own SafetensorError for damaged files
            raise LoadError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0][:120]})") from None
        absent = sorted(set(indexed) - set(names))
        if absent:
            raise LoadError(f"{path}: lacks {absent[0]} (and {len(absent) - 1} more) that the index puts there; "
                            "the shard is incomplete, download it again")
    return found


def expected_hf_shapes(cfg, arch, vocab_size: int) -> tuple[dict[str, tuple], list]:
    """({HF tensor name: shape} the mapping table wants, the table), from the
    megatron model built on the meta device (shapes only, no memory)."""
    import torch

    from mtds.hf.mapping import to_hf
    from mtds.kinds import build_model

    heads = cfg.kind.task.model_heads(cfg.task)
    with torch.device("meta"):
        model = build_model(cfg, vocab_size, "fp32", on_gpu=False)
    meta = {k: v for k, v in model.state_dict().items() if torch.is_tensor(v)}
    rules = arch.rules(cfg.model, heads)
    return {k: tuple(v.shape) for k, v in to_hf(meta, rules).items()}, rules


def check_tensors(found: dict[str, tuple[str, tuple]], wanted: dict[str, tuple], tied: bool) -> list[str]:
    """HF tensor names to skip (buffers, a tied lm_head); a LoadError for any missing, extra or
    misshapen tensor."""
    skip = [n for n in found if n not in wanted and (n.endswith(BUFFER_SUFFIXES) or (tied and n == "lm_head.weight"))]
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise LoadError(f"no shard holds {missing[0]} ({len(missing)} tensors missing); the weights are incomplete "
                        "or are of another model than config.json describes")
    extra = sorted(set(found) - set(wanted) - set(skip))
    if extra:
        raise LoadError(f"{found[extra[0]][0]}: {extra[0]} has no place in the model config.json describes "
                        f"({len(extra)} such tensors)")
    for name, shape in wanted.items():
        if found[name][1] != shape:
            raise LoadError(f"{found[name][0]}: {name} has shape {list(found[name][1])} but config.json makes it "
                            f"{list(shape)}; the weights belong to another model")
    return skip


def load_weights(shards: dict[str, list[str]], skip: list[str], rules: list, log=print) -> dict:
    """The megatron state dict (fp32): shards read one at a time, each rule's HF tensors freed once
    converted; a line per shard (a 70B model's import takes minutes: a log shows where it is)."""
    import torch
    from safetensors import safe_open

    from mtds.hf.mapping import from_hf

    hf_state: dict = {}
    for i, path in enumerate(shards, start=1):
        log(f"import: reading shard {i}/{len(shards)} {os.path.basename(path)} "
            f"({os.path.getsize(path) / 2**20:,.1f} MB)")
        with safe_open(path, framework="pt") as f:
            for name in f.keys():
                if name not in skip:
                    hf_state[name] = f.get_tensor(name).to(torch.float32)
    log(f"import: converting {len(hf_state)} tensors to megatron-core's layout")
    return from_hf(hf_state, rules, consume=True)


def fresh_tensors(cfg, vocab_size: int, keys: list[str]) -> dict:
    """Tensors HF has no counterpart for (BERT's sentence-pair head), initialised as training would."""
    from mtds.parallel.process_groups import seed_everything
    from mtds.kinds import build_model

    seed_everything(cfg.training.seed)
    state = build_model(cfg, vocab_size, "fp32", on_gpu=False).state_dict()
    return {k: state[k] for k in keys}


def prepare_out_dir(out_dir: str) -> None:
    """An empty or new directory, or an earlier import (replaced); never a training run's directory."""
    if os.path.isfile(out_dir):
        raise LoadError(f"--out {out_dir}: is a file; give a new directory")
    if not os.path.isdir(out_dir) or not os.listdir(out_dir):
        return
    tags = complete_tags(os.path.join(out_dir, "checkpoints"))
    if tags == [tag_for(0)] and os.path.isfile(os.path.join(out_dir, "run_config.json")):
        return  # an earlier import: written again below
    raise LoadError(f"--out {out_dir}: not empty and not an earlier import; give a new directory "
                    "(nothing was written)")


def import_hf(hf_dir: str, out_dir: str, log=print) -> str:
    """Convert HF_DIR into the run directory out_dir; returns the checkpoint directory."""
    from mtds.ckpt.run_record import data_sources_record, run_record
    from mtds.ckpt.save_load import publish_weights
    from mtds.config import build_config
    from mtds.parallel.process_groups import init_distributed
    from mtds.load_trained import stdout_to_stderr

    hf, arch = read_hf_config(hf_dir)
    sections = run_config(hf, arch, hf_dir)
    tok_files, tok_type = find_tokenizer(hf_dir)
    prepare_out_dir(out_dir)
    tok_dir = os.path.join(out_dir, "tokenizer")
    tok_model = tok_dir if tok_type == "HuggingFaceTokenizer" else os.path.join(tok_dir, "tokenizer.model")
    sections["data"].update(tokenizer_model=os.path.abspath(tok_model), tokenizer_type=tok_type)
    try:
        cfg = build_config({**sections, "training": {"run_dir": out_dir}})
    except ConfigError as e:
        raise LoadError(f"{os.path.join(hf_dir, 'config.json')}: {e}") from None
    tokenizer = tokenizer_of(hf_dir, tok_type)
    vocab_size = cfg.model.vocab_size
    if tokenizer.vocab_size > vocab_size:
        raise LoadError(f"{hf_dir}: the tokenizer has {tokenizer.vocab_size} tokens but config.json's vocab_size is "
                        f"{vocab_size}; it is not this model's tokenizer")
    shards = shard_files(hf_dir)
    found = read_headers(shards)
    with stdout_to_stderr():
        init_distributed()
        wanted, rules = expected_hf_shapes(cfg, arch, vocab_size)
    skip = check_tensors(found, wanted, cfg.model.tie_embeddings)
    for note in getattr(arch, "notes", lambda hf: [])(hf):
        log(f"note: {note}")
    positions = cfg.model.max_position_embeddings
    if sections["data"].get("seq_length", positions) < positions:
        log(f"note: data.seq_length={sections['data']['seq_length']} in run_config.json (the model takes up to "
            f"{positions}; activations grow with the length): give --data.seq_length to train longer")

    state = load_weights(shards, skip, rules, log)
    from mtds.hf.mapping import not_exported

    fresh = not_exported(rules)
    if fresh:
        with stdout_to_stderr():
            state.update(fresh_tensors(cfg, vocab_size, fresh))
        log(f"note: not in a {arch.ARCHITECTURE}, initialised fresh: {', '.join(fresh)}")

    os.makedirs(out_dir, exist_ok=True)
    if os.path.isdir(tok_dir):
        shutil.rmtree(tok_dir)
    os.makedirs(tok_dir)
    for name in tok_files:
        shutil.copy2(os.path.join(hf_dir, name), tok_dir)
    with open(os.path.join(out_dir, "run_config.json"), "w") as f:
        json.dump(sections, f, indent=2)
    saved = run_record(
        cfg, deepspeed={"zero_optimization": {"stage": 0}, "bf16": {"enabled": False}},
        parallel={"world": 1, "tensor": 1, "data": 1}, data_sources=data_sources_record([], tok_model, tok_type),
        vocab_size=vocab_size, num_parameters=sum(t.numel() for t in state.values()), train_iters=0,
        imported_from={"path": os.path.abspath(hf_dir), "architecture": arch.ARCHITECTURE,
                       "bos_token_id": hf.get("bos_token_id"), "eos_token_id": hf.get("eos_token_id"),
                       "pad_token_id": hf.get("pad_token_id")})
    log(f"import: writing the checkpoint ({sum(t.numel() for t in state.values()) * 4 / 2**20:,.1f} MB fp32)")
    final = publish_weights(out_dir, state, saved)
    log(f"imported {arch.ARCHITECTURE} from {hf_dir}: {saved['num_parameters'] / 1e6:.1f}M parameters, "
        f"{len(shards)} shard(s) -> {final}")
    log(f"next: deepspeed mtds/pretrain.py --deepspeed_config ds_configs/finetune_zero2.json --config "
        f"{os.path.join(out_dir, 'run_config.json')} --data.paths PREFIX --training.init_from {out_dir} "
        "--run-dir NEW_RUN_DIR")
    return final


def tokenizer_of(hf_dir: str, tok_type: str):
    """The tokenizer as training will load it (mtds.data.tokenizer), with one-line errors."""
    from mtds.data.tokenizer import load_tokenizer

    path = hf_dir if tok_type == "HuggingFaceTokenizer" else os.path.join(hf_dir, "tokenizer.model")
    try:
        return load_tokenizer(path, tok_type)
    except ValueError as e:
        raise LoadError(str(e)) from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mtds.import_hf", description=__doc__.split("\n\n")[0])
    p.add_argument("--hf", required=True, help="local Hugging Face model directory (config.json + *.safetensors)")
    p.add_argument("--out", required=True, help="run directory to write (new, empty, or an earlier import)")
    a = p.parse_args(argv)
    import_hf(a.hf, a.out, log=lambda line: print(line, file=sys.stderr))
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
