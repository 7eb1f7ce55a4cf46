"""A GGUF file (llama.cpp's format) of a Llama-form export: `python -m mtds.export_hf ... --gguf FILE`.

Written from the Hugging Face export itself (its config.json dict and state dict, the run's
sentencepiece tokenizer), as llama.cpp's own convert_hf_to_gguf.py writes an HF Llama folder, with
the `gguf` package (the writer, the tensor-name table, the Q8_0 quantizer); only the few steps below
are by hand, because gguf has no "HF Llama -> GGUF" function of its own (that lives in llama.cpp's
converter script, not in the package):

- Tensor names from gguf's TensorNameMap for MODEL_ARCH.LLAMA (token_embd, blk.N.attn_q/k/v/output,
  ffn_gate/up/down, attn_norm, ffn_norm, output_norm, output; a tied lm_head is left out and llama.cpp
  reuses token_embd).
- **q/k rows permuted for llama.cpp's RoPE.** HF Llama (and megatron) rotate the two halves of each
  head (dimension i with i + d/2); llama.cpp's llama graph rotates adjacent pairs (2i, 2i + 1). Per
  head the rows [half 0 | half 1] become interleaved [h0[0], h1[0], h0[1], h1[1], ...] (`permute_rope`,
  the same reshape as the converter's `permute`); k uses the key/value head count (GQA).
  tests/test_quantize.py checks that interleaved RoPE on the permuted q equals the permuted HF RoPE of q.
- Metadata: llama.context_length, embedding_length, block_count, feed_forward_length, head counts,
  rms eps, rope freq base and dimension, key/value length, vocab size, file type; the tokenizer as
  llama.cpp's "llama" (sentencepiece) vocabulary: every piece, its score and type (normal, unknown,
  control, user-defined, byte), padded with unused "[PADn]" up to the model's (padded) vocabulary,
  bos/eos/unk/pad ids, no bos/eos added and no space prefix (mtds's tokenizer adds neither).
- Types: `f32`, `f16` or `q8_0` for the 2-D weights (Q8_0: blocks of 32 weights, one fp16 scale
  max|w| / 127, gguf.quants.quantize, bit-exact with ggml); norms stay F32. A Q8_0 tensor whose rows are
  not a multiple of 32 is written F16 instead, as the converter does.

Refused with one line before any weight is read: another architecture (GPT-2, Qwen2, Mixtral forms),
linear biases and Llama-3 RoPE scaling (llama.cpp wants them in forms not written here), a Hugging
Face tokenizer (only sentencepiece vocabularies are written), a FILE that is a directory or in a missing
one (but --out, which the export makes). The file is written to FILE.tmp and renamed, so a failure leaves no partial FILE.
No llama.cpp binary was available: the files were read back with gguf's GGUFReader and loaded by
transformers' GGUF loader (tests/test_quantize.py), never run by llama.cpp.
"""

from __future__ import annotations

import os

TYPES = ("f32", "f16", "q8_0")


def check(arch, model, tokenizer_type: str, path: str, gguf_type: str, out_dir: str = "") -> None:
    """Refuse, with one line, what this writer cannot express; before any weight is read."""
    from mtds.errors import LoadError

    try:
        import gguf  # noqa: F401
    except ImportError:
        raise LoadError("--gguf: needs the gguf package (pip install -e .[gguf])") from None
    if gguf_type not in TYPES:
        raise LoadError(f"--gguf-type {gguf_type!r}: unknown; use one of {', '.join(TYPES)}")
    if arch.ARCHITECTURE != "LlamaForCausalLM":
        raise LoadError(f"--gguf: this model exports as {arch.ARCHITECTURE}; only the Llama form (RoPE, RMSNorm, "
                        "SwiGLU, dense, no biases) is written as GGUF; drop --gguf")
    if model.add_bias_linear:
        raise LoadError("--gguf: model.add_bias_linear=true (linear biases) is not written as GGUF; drop --gguf")
    if model.rope_scaling:
        raise LoadError("--gguf: model.rope_scaling (Llama-3 RoPE scaling) is not written as GGUF; drop --gguf")
    if tokenizer_type != "SentencePieceTokenizer":
        raise LoadError(f"--gguf: the run's tokenizer is {tokenizer_type}; only a sentencepiece vocabulary is "
                        "written as GGUF")
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) or not (os.path.isdir(folder) or folder == os.path.abspath(out_dir)):
        raise LoadError(f"--gguf {path}: give a file path in an existing directory (or in --out)")


def permute_rope(w, heads: int):
    """Rows [out = heads * d, ...] from rotate-half order to llama.cpp's adjacent-pair order, per head."""
    d = w.shape[0] // heads
    # [heads, 2 (halves), d / 2, ...] -> [heads, d / 2, 2, ...]: row j of half h goes to 2j + h
    return w.reshape(heads, 2, d // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def vocabulary(tokenizer_model: str, vocab_size: int) -> tuple[list[str], list[float], list[int]]:
    """(pieces, scores, token types) of the sentencepiece model, padded to the model's vocab_size.
    Read from the model file's protobuf, as llama.cpp's converter does: sentencepiece's processor has no
    "is user-defined" query, and its piece types (normal, unknown, control, user-defined, unused, byte)
    are GGUF's TokenType names."""
    from gguf import TokenType
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    with open(tokenizer_model, "rb") as f:
        proto.ParseFromString(f.read())
    kinds = sentencepiece_model_pb2.ModelProto.SentencePiece.Type
    pieces = [p.piece for p in proto.pieces]
    scores = [p.score for p in proto.pieces]
    types = [int(TokenType[kinds.Name(p.type)]) for p in proto.pieces]
    pad = range(len(pieces), vocab_size)  # megatron pads the embedding (make_vocab_size_divisible_by)
    return (pieces + [f"[PAD{i}]" for i in pad], scores + [-1000.0] * len(pad),
            types + [int(TokenType.UNUSED)] * len(pad))


def write(path: str, config: dict, weights: dict, tokenizer_model: str, gguf_type: str, name: str) -> int:
    """Write the GGUF of an HF Llama export (config.json dict, state dict); returns the tensor count."""
    import gguf

    qtype = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
             "q8_0": gguf.GGMLQuantizationType.Q8_0}[gguf_type]
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[gguf_type]
    tmp = path + ".tmp"
    try:
        _write(gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA]), config, weights,
               tokenizer_model, qtype, file_type, name)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    os.replace(tmp, path)
    return len(weights)


def _write(w, config: dict, weights: dict, tokenizer_model: str, qtype, file_type, name: str) -> None:
    """The metadata, then every tensor (renamed, q/k permuted, converted to qtype), through writer w."""
    import gguf
    import numpy as np

    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    layers, head_dim = config["num_hidden_layers"], config["head_dim"]
    w.add_name(name)
    w.add_context_length(config["max_position_embeddings"])
    w.add_embedding_length(config["hidden_size"])
    w.add_block_count(layers)
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(config["rms_norm_eps"])
    w.add_rope_freq_base(config["rope_parameters"]["rope_theta"])
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(config["vocab_size"])
    w.add_file_type(file_type)
    pieces, scores, types = vocabulary(tokenizer_model, config["vocab_size"])
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(pieces)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(config["bos_token_id"])
    w.add_eos_token_id(config["eos_token_id"])
    w.add_pad_token_id(config["pad_token_id"])
    w.add_unk_token_id(types.index(gguf.TokenType.UNKNOWN))
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(False)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, layers)
    for hf_name, t in weights.items():
        t = t.detach().float()
        if hf_name.endswith("q_proj.weight"):
            t = permute_rope(t, heads)
        elif hf_name.endswith("k_proj.weight"):
            t = permute_rope(t, kv_heads)
        data = t.numpy()
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight",))
        if gguf_name is None:
            raise ValueError(f"{hf_name}: no llama GGUF name")  # a table change, not bad input
        if t.dim() == 1 or qtype == gguf.GGMLQuantizationType.F32:
            w.add_tensor(gguf_name, data.astype(np.float32))
            continue
        try:
            w.add_tensor(gguf_name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        except gguf.quants.QuantError:  # rows not whole Q8_0 blocks of 32
            w.add_tensor(gguf_name, data.astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
