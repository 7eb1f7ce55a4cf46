"""Export a trained checkpoint as a Hugging Face `transformers` model directory.

    python -m mtds.export_hf --load RUN_DIR [--tag iter_0000040] --out DIR [--dtype fp32|bf16|fp16]
        [--quantize int8|int4 [--group-size 128]]   (weight-only, compressed-tensors: mtds/hf/quantize.py)
        [--gguf FILE [--gguf-type f32|f16|q8_0]]    (also a llama.cpp GGUF file: mtds/hf/gguf_export.py)

Writes config.json + model.safetensors (+ generation_config.json for causal and seq2seq LMs) and the tokenizer
(tokenizer.model, tokenizer.json, tokenizer_config.json; a Hugging Face tokenizer's own files,
copied), loadable with
`AutoModelForCausalLM.from_pretrained(DIR)` (GPT), `AutoModelForMaskedLM.from_pretrained(DIR)`
(BERT) or `AutoModelForSeq2SeqLM.from_pretrained(DIR)` (T5) and `AutoTokenizer.from_pretrained(DIR)`.

The run's family lists the Hugging Face architectures it maps to (`Family.hf_architectures` in
mtds/models/); the first one that can express the model is used, and its mapping table
(mtds/hf/<architecture>.py) converts the weights:
- GPT: RoPE + RMSNorm + SwiGLU -> `LlamaForCausalLM` (GQA, tied or untied, with or without biases);
  learned positions + LayerNorm + GELU + linear biases, multi-head attention, tied embeddings
  -> `GPT2LMHeadModel`.
- BERT (LayerNorm + GELU, multi-head attention) -> `MegatronBertForMaskedLM`, the masked-LM head
  only: pre-LayerNorm layers, a final LayerNorm and no LayerNorm on the summed embeddings, as in
  megatron-core's BertModel (`BertForMaskedLM` is post-LayerNorm and `RobertaPreLayerNormForMaskedLM`
  normalises the embeddings, so neither fits).
- T5 (relative positions, RMSNorm, no biases, untied output layer) -> `T5ForConditionalGeneration`
  (`AutoModelForSeq2SeqLM`), the decoder starting from <s>.
A chat model (gpt_sft) gets its chat template in tokenizer_config.json: the default plain-text one
as Jinja unless the tokenizer has its own (mtds.hf.tokenizer.write_chat_template), so
`apply_chat_template(messages, add_generation_prompt=True)` gives the ids `mtds.chat` prompts with.
Anything else is refused with one line naming what each architecture needs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from mtds.errors import LoadError
from mtds.hf import architecture, gguf_export
from mtds.ckpt.layout import read_config
from mtds.load_trained import find_checkpoint, saved_run_config
from mtds.tool_cli import run_tool

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def hf_architecture(cfg):
    """The mtds/hf/ module whose table maps this run's model, or a one-line LoadError saying why none does."""
    heads = cfg.kind.task.model_heads(cfg.task)
    archs = [architecture(name) for name in cfg.kind.family.hf_architectures]
    reasons = []
    for arch in archs:
        problem = arch.unsupported(cfg.model, heads)
        if problem is None:
            return arch
        reasons.append(f"{arch.ARCHITECTURE} does not fit {problem}")
    if not archs:
        raise LoadError(f"model_type={cfg.model.model_type!r} has no Hugging Face architecture to export to")
    raise LoadError(f"this {cfg.model.model_type} model does not export: " + "; ".join(reasons)
                    + " (README, 'Using a trained model', lists what exports)")


def convert(sd: dict[str, torch.Tensor], cfg, vocab_size: int, tok_ids: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    """(HF config.json dict, HF state dict) for the megatron state dict of a run config's model."""
    from mtds.hf.mapping import to_hf

    arch = hf_architecture(cfg)
    heads = cfg.kind.task.model_heads(cfg.task)
    return arch.hf_config(cfg.model, heads, vocab_size, tok_ids), to_hf(sd, arch.rules(cfg.model, heads))


def _is_export(out_dir: str) -> bool:
    """A directory an earlier export wrote (safe to overwrite): HF config.json + model.safetensors."""
    try:
        with open(os.path.join(out_dir, "config.json")) as f:
            config = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "architectures" in config and \
        os.path.isfile(os.path.join(out_dir, "model.safetensors"))


def export(run_dir: str, out_dir: str, tag: str | None = None, dtype: str = "fp32", log=print,
           lora_adapter: str | None = None, quantize: str | None = None, group_size: int = 128,
           gguf: str | None = None, gguf_type: str = "f16") -> str:
    """Write the HF model directory for a run's checkpoint; returns the HF architecture name."""
    from mtds.ckpt.consolidate import consolidated_state_dict
    from mtds.hf.tokenizer import write_chat_template, write_tokenizer

    ckpt_dir = find_checkpoint(run_dir, tag)
    saved = read_config(ckpt_dir)
    cfg = saved_run_config(saved)
    arch = hf_architecture(cfg)  # refuse before reading any weights
    if quantize and lora_adapter:
        raise LoadError("--quantize with --lora-adapter: a PEFT adapter goes with its float base; quantize the merged "
                        "model (drop --lora-adapter), or export the adapter without --quantize")
    from mtds.hf import quantize as quant

    layers = quant.check(arch, cfg.model, cfg.kind.task.model_heads(cfg.task), int(saved["vocab_size"]),
                         quantize, group_size) if quantize else None
    if gguf:  # the float weights (before --quantize) also as GGUF: the same tensors as --out's, renamed
        gguf_export.check(arch, cfg.model, saved["data_sources"].get("tokenizer_type", "SentencePieceTokenizer"),
                          gguf, gguf_type, out_dir)
    if os.path.isfile(out_dir):
        raise LoadError(f"--out {out_dir}: is a file; give a directory")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not _is_export(out_dir):
        raise LoadError(f"--out {out_dir}: exists and is not an exported model; give a new or empty directory")
    log(f"export: reading {ckpt_dir} (merging ZeRO / tensor-parallel shards)")
    sd = consolidated_state_dict(ckpt_dir, saved, merge_lora=lora_adapter is None)
    if lora_adapter:  # --out gets the base, lora_adapter its PEFT adapter (mtds/models/lora.py)
        from mtds.models.lora import export_adapter

        rules = arch.rules(cfg.model, cfg.kind.task.model_heads(cfg.task))
        sd = export_adapter(sd, cfg.training, arch, rules, lora_adapter, out_dir, cfg.kind.task.lora_heads or (), log)
    os.makedirs(out_dir, exist_ok=True)
    sources = saved["data_sources"]
    generates = arch.CAUSAL_LM or arch.SEQ2SEQ_LM  # else a BERT: its tokenizer frames [CLS] a [SEP]
    tok_ids = write_tokenizer(sources["tokenizer_model"], out_dir, cfg.model.max_position_embeddings,
                              bert=not generates, tokenizer_type=sources.get("tokenizer_type", "SentencePieceTokenizer"))
    if cfg.kind.task.data_layout == "sft":  # chat data: the template it was framed with (mtds/hf/tokenizer.py)
        from data_tools.chat_format import ChatError

        try:
            write_chat_template(out_dir, sources["tokenizer_model"],
                                sources.get("tokenizer_type", "SentencePieceTokenizer"))
        except ChatError as e:
            raise LoadError(f"chat template: {e}") from None
    config, weights = convert(sd, cfg, int(saved["vocab_size"]), tok_ids)
    config["torch_dtype"] = config["dtype"] = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[dtype]
    from safetensors.torch import save_file

    weights = {k: v.to(DTYPES[dtype]).contiguous() for k, v in weights.items()}
    if gguf:
        n = gguf_export.write(gguf, config, weights, sources["tokenizer_model"], gguf_type,
                              os.path.basename(os.path.normpath(out_dir)))
        log(f"export: wrote {gguf} (GGUF, {n} tensors, 2-D weights {gguf_type})")
    if quantize:  # the Linear layers' weights -> packed int32 + scales in the export dtype
        weights = quant.quantize(weights, layers, quantize, group_size, DTYPES[dtype])
    log(f"export: writing model.safetensors ({len(weights)} tensors, "
        f"{sum(w.numel() * w.element_size() for w in weights.values()) / 2**20:,.1f} MB {dtype})")
    save_file(weights, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    if quantize:
        quant.write_quantization_config(out_dir, quantize, group_size)
    if generates:  # a masked LM or a classifier is no generator
        generation = {k: tok_ids[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
        if arch.SEQ2SEQ_LM:
            generation["decoder_start_token_id"] = config["decoder_start_token_id"]
        with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
            json.dump(generation, f, indent=2)
    log(f"exported {ckpt_dir} as {arch.ARCHITECTURE} ({dtype}) to {out_dir}")
    return arch.ARCHITECTURE


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mtds.export_hf", description=__doc__.split("\n\n")[0])
    p.add_argument("--load", required=True, metavar="RUN_DIR", help="run directory a training run wrote")
    p.add_argument("--tag", help="checkpoint tag, e.g. iter_0000040 (default: latest)")
    p.add_argument("--out", required=True, help="output directory (new or empty, or a previous export)")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="weight dtype in model.safetensors")
    p.add_argument("--lora-adapter", metavar="DIR", help="a LoRA run: write --out as the base model and DIR as its "
                   "PEFT adapter (adapter_config.json + adapter_model.safetensors) instead of the merged model")
    p.add_argument("--quantize", metavar="int8|int4", help="weight-only round-to-nearest quantization of the "
                   "Linear layers, in the compressed-tensors format (mtds/hf/quantize.py)")
    p.add_argument("--group-size", type=int, default=128, help="input columns per scale with --quantize")
    p.add_argument("--gguf", metavar="FILE", help="also write the (float) weights as a llama.cpp GGUF file; Llama "
                   "form only (mtds/hf/gguf_export.py)")
    p.add_argument("--gguf-type", choices=gguf_export.TYPES, default="f16", help="GGUF type of the 2-D weights")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    export(a.load, a.out, a.tag, a.dtype, lora_adapter=a.lora_adapter, quantize=a.quantize, group_size=a.group_size,
           gguf=a.gguf, gguf_type=a.gguf_type)
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
