"""Export a trained GPT or BERT checkpoint as a Hugging Face `transformers` model directory.

    python -m mtds.export_hf --load RUN_DIR [--tag iter_0000040] --out DIR [--dtype fp32|bf16|fp16]

Writes config.json + model.safetensors (+ generation_config.json for GPT) and the tokenizer
(tokenizer.model, tokenizer.json, tokenizer_config.json), loadable with
`AutoModelForCausalLM.from_pretrained(DIR)` (GPT) or `AutoModelForMaskedLM.from_pretrained(DIR)`
(BERT) and `AutoTokenizer.from_pretrained(DIR)`.

Which models export (the architecture decides the Hugging Face class):
- RoPE + RMSNorm + SwiGLU (mtds's default GPT) -> `LlamaForCausalLM`: any number of key/value
  groups (GQA), tied or untied embeddings, with or without linear biases.
- learned positions + LayerNorm + GELU + linear biases, multi-head attention, tied embeddings
  -> `GPT2LMHeadModel`.
- BERT (learned positions + LayerNorm + GELU, multi-head attention) -> `MegatronBertForMaskedLM`,
  the masked-LM head only (the sentence-order pooler and binary head are left out). It is an exact
  match: pre-LayerNorm layers, a final LayerNorm, and no LayerNorm on the summed embeddings, as in
  megatron-core's BertModel. `BertForMaskedLM` is post-LayerNorm, and `RobertaPreLayerNormForMaskedLM`
  normalises the summed embeddings (and counts positions from pad_token_id + 1), so neither fits.
  Linear layers trained without biases get zero biases; without token types (no binary head) the
  one token-type embedding is zero.
Anything else is refused with one line naming these combinations, e.g. mixed GPT combinations such
as RoPE + LayerNorm.

Weight layout differences handled here:
- megatron's fused QKV weight is [groups x (q heads of the group, k, v) x head_dim, hidden];
  Llama wants separate q/k/v projections, GPT-2 one Conv1D whose output is [all q | all k | all v].
- megatron's SwiGLU fc1 is [gate; up] stacked on the output dimension (silu on the first half).
- GPT-2's Conv1D stores weights as [in, out], the transpose of torch.nn.Linear.
- megatron's RoPE is the non-interleaved (rotate-half) form, the same as HF Llama, so q/k rows
  need no permutation.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

import torch

from mtds.load_trained import LoadError, consolidated_state_dict, find_checkpoint, read_saved_config, saved_run_config
from mtds.tool_cli import run_tool

SUPPORTED = ("exportable: RoPE+RMSNorm+SwiGLU GPT (as LlamaForCausalLM), learned-position+LayerNorm+GELU GPT "
             "with linear biases, multi-head attention and tied embeddings (as GPT2LMHeadModel), or "
             "LayerNorm+GELU BERT with multi-head attention (as MegatronBertForMaskedLM)")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def architecture(m) -> str:
    """"llama", "gpt2" or "bert" for a ModelConfig, or raise LoadError naming what exports."""
    combo = (m.position_embedding_type, m.normalization, m.activation)
    if m.model_type == "bert":
        if combo[1:] != ("LayerNorm", "gelu"):
            raise LoadError(f"BERT with normalization={combo[1]}, activation={combo[2]} does not export; {SUPPORTED}")
        if m.num_query_groups not in (None, m.num_attention_heads):
            raise LoadError(f"BERT with num_query_groups={m.num_query_groups} does not export; {SUPPORTED}")
        return "bert"
    if combo == ("rope", "RMSNorm", "swiglu"):
        return "llama"
    if combo == ("learned_absolute", "LayerNorm", "gelu"):
        problems = [p for ok, p in ((m.add_bias_linear, "add_bias_linear=false"),
                                    (m.tie_embeddings, "tie_embeddings=false"),
                                    (m.num_query_groups in (None, m.num_attention_heads),
                                     f"num_query_groups={m.num_query_groups}")) if not ok]
        if not problems:
            return "gpt2"
        raise LoadError(f"this GPT-2-style model has {', '.join(problems)}; {SUPPORTED}")
    raise LoadError(f"position_embedding_type={combo[0]}, normalization={combo[1]}, activation={combo[2]} "
                    f"does not export; {SUPPORTED}")


def split_qkv(w: torch.Tensor, heads: int, groups: int, head_dim: int):
    """megatron fused QKV weight [g*(heads/g+2)*d, ...] (or bias [g*(heads/g+2)*d]) -> q, k, v."""
    per_group = heads // groups
    rest = w.shape[1:]
    w = w.reshape(groups, per_group + 2, head_dim, *rest)
    q = w[:, :per_group].reshape(heads * head_dim, *rest)
    k = w[:, per_group].reshape(groups * head_dim, *rest)
    v = w[:, per_group + 1].reshape(groups * head_dim, *rest)
    return q, k, v


def llama_config(m, vocab_size: int, tok_ids: dict) -> dict:
    d = m.hidden_size // m.num_attention_heads
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": vocab_size, "hidden_size": m.hidden_size, "intermediate_size": m.ffn_size(),
        "num_hidden_layers": m.num_layers, "num_attention_heads": m.num_attention_heads,
        "num_key_value_heads": m.num_query_groups or m.num_attention_heads, "head_dim": d,
        "hidden_act": "silu", "max_position_embeddings": m.max_position_embeddings,
        "rms_norm_eps": 1e-5,  # megatron TransformerConfig.layernorm_epsilon default
        "rope_theta": float(m.rotary_base),  # transformers < 5 reads this ...
        "rope_parameters": {"rope_type": "default", "rope_theta": float(m.rotary_base)},  # ... 5.x this
        "attention_bias": m.add_bias_linear, "mlp_bias": m.add_bias_linear,
        "tie_word_embeddings": m.tie_embeddings, "initializer_range": m.init_method_std,
        "attention_dropout": 0.0, "use_cache": True, **tok_ids,
    }


def llama_weights(sd: dict, m) -> dict[str, torch.Tensor]:
    heads, groups = m.num_attention_heads, m.num_query_groups or m.num_attention_heads
    d = m.hidden_size // heads
    out = {"model.embed_tokens.weight": sd["embedding.word_embeddings.weight"],
           "model.norm.weight": sd["decoder.final_layernorm.weight"]}
    if not m.tie_embeddings:
        out["lm_head.weight"] = sd["output_layer.weight"]
    for i in range(m.num_layers):
        src, dst = f"decoder.layers.{i}.", f"model.layers.{i}."
        out[dst + "input_layernorm.weight"] = sd[src + "input_layernorm.weight"]
        out[dst + "post_attention_layernorm.weight"] = sd[src + "pre_mlp_layernorm.weight"]
        for kind in ("weight", "bias") if m.add_bias_linear else ("weight",):
            q, k, v = split_qkv(sd[f"{src}self_attention.linear_qkv.{kind}"], heads, groups, d)
            out[f"{dst}self_attn.q_proj.{kind}"] = q
            out[f"{dst}self_attn.k_proj.{kind}"] = k
            out[f"{dst}self_attn.v_proj.{kind}"] = v
            out[f"{dst}self_attn.o_proj.{kind}"] = sd[f"{src}self_attention.linear_proj.{kind}"]
            gate, up = torch.chunk(sd[f"{src}mlp.linear_fc1.{kind}"], 2, dim=0)  # [gate; up]
            out[f"{dst}mlp.gate_proj.{kind}"] = gate
            out[f"{dst}mlp.up_proj.{kind}"] = up
            out[f"{dst}mlp.down_proj.{kind}"] = sd[f"{src}mlp.linear_fc2.{kind}"]
    return out


def gpt2_config(m, vocab_size: int, tok_ids: dict) -> dict:
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": vocab_size, "n_positions": m.max_position_embeddings, "n_embd": m.hidden_size,
        "n_layer": m.num_layers, "n_head": m.num_attention_heads, "n_inner": m.ffn_size(),
        "activation_function": "gelu",  # megatron's F.gelu is the exact erf GELU, not gelu_new
        "layer_norm_epsilon": 1e-5, "initializer_range": m.init_method_std,
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True, "use_cache": True, **tok_ids,
    }


def gpt2_weights(sd: dict, m) -> dict[str, torch.Tensor]:
    heads, d = m.num_attention_heads, m.hidden_size // m.num_attention_heads
    out = {"transformer.wte.weight": sd["embedding.word_embeddings.weight"],
           "transformer.wpe.weight": sd["embedding.position_embeddings.weight"],
           "transformer.ln_f.weight": sd["decoder.final_layernorm.weight"],
           "transformer.ln_f.bias": sd["decoder.final_layernorm.bias"]}
    for i in range(m.num_layers):
        src, dst = f"decoder.layers.{i}.", f"transformer.h.{i}."
        for ln_src, ln_dst in (("input_layernorm", "ln_1"), ("pre_mlp_layernorm", "ln_2")):
            out[f"{dst}{ln_dst}.weight"] = sd[f"{src}{ln_src}.weight"]
            out[f"{dst}{ln_dst}.bias"] = sd[f"{src}{ln_src}.bias"]
        # Conv1D: weight [in, out] (transposed nn.Linear), qkv output ordered [all q | all k | all v].
        q, k, v = split_qkv(sd[src + "self_attention.linear_qkv.weight"], heads, heads, d)
        out[dst + "attn.c_attn.weight"] = torch.cat([q, k, v], dim=0).t()
        qb, kb, vb = split_qkv(sd[src + "self_attention.linear_qkv.bias"], heads, heads, d)
        out[dst + "attn.c_attn.bias"] = torch.cat([qb, kb, vb])
        for name_src, name_dst in (("self_attention.linear_proj", "attn.c_proj"), ("mlp.linear_fc1", "mlp.c_fc"),
                                   ("mlp.linear_fc2", "mlp.c_proj")):
            out[f"{dst}{name_dst}.weight"] = sd[f"{src}{name_src}.weight"].t()
            out[f"{dst}{name_dst}.bias"] = sd[f"{src}{name_src}.bias"]
    return out


def bert_config(m, vocab_size: int, tok_ids: dict) -> dict:
    """MegatronBertForMaskedLM config.json for a BERT ModelConfig (megatron's LayerNorm eps, no dropout)."""
    return {
        "architectures": ["MegatronBertForMaskedLM"], "model_type": "megatron-bert",
        "vocab_size": vocab_size, "hidden_size": m.hidden_size, "num_hidden_layers": m.num_layers,
        "num_attention_heads": m.num_attention_heads, "intermediate_size": m.ffn_size(),
        "hidden_act": "gelu",  # F.gelu (erf) in megatron's MLP and in its BertLMHead
        "max_position_embeddings": m.max_position_embeddings, "position_embedding_type": "absolute",
        "type_vocab_size": 2 if m.bert_binary_head else 1, "layer_norm_eps": 1e-5,
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "initializer_range": m.init_method_std,
        "tie_word_embeddings": m.tie_embeddings, "is_decoder": False, "use_cache": False, **tok_ids,
    }


def bert_weights(sd: dict, m) -> dict[str, torch.Tensor]:
    """megatron BertModel state dict -> MegatronBertForMaskedLM's (pooler and binary head dropped)."""
    heads, d, h = m.num_attention_heads, m.hidden_size // m.num_attention_heads, m.hidden_size

    def bias(key: str, size: int) -> torch.Tensor:  # add_bias_linear=false: HF's Linear layers get zeros
        return sd.get(key, torch.zeros(size))

    out = {"bert.embeddings.word_embeddings.weight": sd["embedding.word_embeddings.weight"],
           "bert.embeddings.position_embeddings.weight": sd["embedding.position_embeddings.weight"],
           # no binary head: no token types in megatron; HF adds type 0's embedding, so make it zero
           "bert.embeddings.token_type_embeddings.weight": sd.get("embedding.tokentype_embeddings.weight",
                                                                  torch.zeros(1, h)),
           "bert.encoder.ln.weight": sd["encoder.final_layernorm.weight"],
           "bert.encoder.ln.bias": sd["encoder.final_layernorm.bias"],
           "cls.predictions.transform.dense.weight": sd["lm_head.dense.weight"],
           "cls.predictions.transform.dense.bias": sd["lm_head.dense.bias"],
           "cls.predictions.transform.LayerNorm.weight": sd["lm_head.layer_norm.weight"],
           "cls.predictions.transform.LayerNorm.bias": sd["lm_head.layer_norm.bias"],
           "cls.predictions.bias": sd["output_layer.bias"]}
    if not m.tie_embeddings:
        # untied, HF also stops tying the decoder's bias to cls.predictions.bias
        out["cls.predictions.decoder.weight"] = sd["output_layer.weight"]
        out["cls.predictions.decoder.bias"] = sd["output_layer.bias"].clone()  # safetensors: no shared storage
    for i in range(m.num_layers):
        src, dst = f"encoder.layers.{i}.", f"bert.encoder.layer.{i}."
        for ln_src, ln_dst in (("input_layernorm", "attention.ln"), ("pre_mlp_layernorm", "ln")):
            out[f"{dst}{ln_dst}.weight"] = sd[f"{src}{ln_src}.weight"]
            out[f"{dst}{ln_dst}.bias"] = sd[f"{src}{ln_src}.bias"]
        qkv = src + "self_attention.linear_qkv."
        for name, w, b in zip(("query", "key", "value"), split_qkv(sd[qkv + "weight"], heads, heads, d),
                              split_qkv(bias(qkv + "bias", 3 * h), heads, heads, d)):
            out[f"{dst}attention.self.{name}.weight"], out[f"{dst}attention.self.{name}.bias"] = w, b
        for name_src, name_dst, size in (("self_attention.linear_proj", "attention.output.dense", h),
                                         ("mlp.linear_fc1", "intermediate.dense", m.ffn_size()),
                                         ("mlp.linear_fc2", "output.dense", h)):
            out[f"{dst}{name_dst}.weight"] = sd[f"{src}{name_src}.weight"]
            out[f"{dst}{name_dst}.bias"] = bias(f"{src}{name_src}.bias", size)
    return out


def write_tokenizer(model_path: str, out_dir: str, model_max_length: int, bert: bool = False) -> dict:
    """tokenizer.model (the sentencepiece file as trained) + an equivalent fast tokenizer.json.

    The tokenizer.json reproduces data_tools.train_tokenizer's sentencepiece settings: spaces become
    U+2581 with no dummy prefix and no normalization, a word starts at a U+2581 that follows
    non-space (runs of spaces stay one word: allow_whitespace_only_pieces), BPE merges ranked by
    piece score, byte fallback, and [CLS]/[SEP]/[MASK] as atomic user-defined symbols.
    For BERT, [CLS]/[SEP]/[MASK] are also named cls/sep/mask tokens and encoding with special
    tokens frames the text as in training ([CLS] a [SEP] (b [SEP]), token types 0 then 1), so
    `pipeline("fill-mask")` works as is.
    Returns the special-token ids for the model config.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    from data_tools.spm import BOS, CLS, EOD, MASK, PAD, SEP, UNK, USER_DEFINED_SYMBOLS, load_sentencepiece

    sp = load_sentencepiece(model_path)
    shutil.copyfile(model_path, os.path.join(out_dir, "tokenizer.model"))
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    merges = bpe_merges(sp)
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token=UNK, fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("\u2581*[^\u2581]+|\u2581+"), behavior="isolated")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in (PAD, UNK, BOS, EOD)])
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in USER_DEFINED_SYMBOLS])
    special = {"pad_token": PAD, "unk_token": UNK, "bos_token": BOS, "eos_token": EOD}
    if bert:
        cls_id, sep_id = sp.piece_to_id(CLS), sp.piece_to_id(SEP)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{CLS}:0 $A:0 {SEP}:0", pair=f"{CLS}:0 $A:0 {SEP}:0 $B:1 {SEP}:1",
            special_tokens=[(CLS, cls_id), (SEP, sep_id)])
        special.update(cls_token=CLS, sep_token=SEP, mask_token=MASK)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    ids = {"pad_token_id": sp.piece_to_id(PAD), "bos_token_id": sp.piece_to_id(BOS),
           "eos_token_id": sp.piece_to_id(EOD)}
    tok_config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model_max_length,
                  **special, "add_bos_token": False, "add_eos_token": False, "clean_up_tokenization_spaces": False,
                  # sentencepiece reads "</s>" in text as plain characters; so does this tokenizer. Not
                  # for BERT: there "[MASK]" in text must stay the mask token once it is named special.
                  "split_special_tokens": not bert}
    if bert:  # segment ids for the pair framing
        tok_config["model_input_names"] = ["input_ids", "token_type_ids", "attention_mask"]
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(tok_config, f, indent=2)
    with open(os.path.join(out_dir, "special_tokens_map.json"), "w") as f:
        json.dump(special, f, indent=2)
    return ids


def bpe_merges(sp) -> list[tuple[str, str]]:
    """BPE merge list equivalent to a sentencepiece BPE model's piece scores.

    sentencepiece merges the adjacent pair whose merged piece has the highest score; a rank-ordered
    merge list does the same when every (left, right) split of each piece into two vocabulary
    pieces is listed by descending piece score (longer left parts first within a piece).
    """
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    merges = []
    for piece, pid in vocab.items():
        splits = [(piece[:j], piece[j:]) for j in range(1, len(piece)) if piece[:j] in vocab and piece[j:] in vocab]
        splits.sort(key=lambda lr: (vocab[lr[0]], vocab[lr[1]]))
        merges += [(left, right, sp.get_score(pid)) for left, right in splits]
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)  # stable: ties keep id order
    return [(left, right) for left, right, _ in merges]


def convert(sd: dict[str, torch.Tensor], m, vocab_size: int, tok_ids: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    """(HF config.json dict, HF state dict) for a megatron GPT/BERT state dict of ModelConfig `m`."""
    arch = architecture(m)
    if arch == "llama":
        return llama_config(m, vocab_size, tok_ids), llama_weights(sd, m)
    if arch == "bert":
        return bert_config(m, vocab_size, tok_ids), bert_weights(sd, m)
    return gpt2_config(m, vocab_size, tok_ids), gpt2_weights(sd, m)


def _is_export(out_dir: str) -> bool:
    """A directory an earlier export wrote (safe to overwrite): HF config.json + model.safetensors."""
    try:
        with open(os.path.join(out_dir, "config.json")) as f:
            config = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "architectures" in config and \
        os.path.isfile(os.path.join(out_dir, "model.safetensors"))


def export(run_dir: str, out_dir: str, tag: str | None = None, dtype: str = "fp32", log=print) -> str:
    """Write the HF model directory for a run's checkpoint; returns the architecture name."""
    root, tag = find_checkpoint(run_dir, tag)
    saved = read_saved_config(os.path.join(root, tag))
    m = saved_run_config(saved).model
    arch = architecture(m)  # refuse before reading any weights
    if os.path.isfile(out_dir):
        raise LoadError(f"--out {out_dir}: is a file; give a directory")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not _is_export(out_dir):
        raise LoadError(f"--out {out_dir}: exists and is not an exported model; give a new or empty directory")
    sd = consolidated_state_dict(root, tag, saved)
    vocab_size = int(saved["vocab_size"])
    os.makedirs(out_dir, exist_ok=True)
    tok_ids = write_tokenizer(saved["data_sources"]["tokenizer_model"], out_dir, m.max_position_embeddings,
                              bert=arch == "bert")
    config, weights = convert(sd, m, vocab_size, tok_ids)
    config["torch_dtype"] = config["dtype"] = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[dtype]
    from safetensors.torch import save_file

    weights = {k: v.to(DTYPES[dtype]).contiguous() for k, v in weights.items()}
    save_file(weights, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    if arch != "bert":  # BERT is no generator
        generation = {"bos_token_id": tok_ids["bos_token_id"], "eos_token_id": tok_ids["eos_token_id"],
                      "pad_token_id": tok_ids["pad_token_id"]}
        with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
            json.dump(generation, f, indent=2)
    log(f"exported {os.path.join(root, tag)} as {config['architectures'][0]} ({dtype}) to {out_dir}")
    return arch


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mtds.export_hf", description=__doc__.split("\n\n")[0],
                                epilog=SUPPORTED[0].upper() + SUPPORTED[1:] + ".")
    p.add_argument("--load", required=True, metavar="RUN_DIR", help="run directory a training run wrote")
    p.add_argument("--tag", help="checkpoint tag, e.g. iter_0000040 (default: latest)")
    p.add_argument("--out", required=True, help="output directory (new or empty, or a previous export)")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="weight dtype in model.safetensors")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    export(a.load, a.out, a.tag, a.dtype)
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
