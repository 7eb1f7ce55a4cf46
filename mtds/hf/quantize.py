"""Weight-only post-training quantization of an export: `python -m mtds.export_hf ... --quantize int8|int4`.

Round-to-nearest (RTN), group-wise and **symmetric**: each row of a weight is cut into groups of
`group_size` input columns; a group's scale is max|w| / ((qmax - qmin) / 2) (7.5 for int4, 127.5 for
int8, compressed-tensors' own `calculate_qparams`) and w_q = clamp(round(w / scale), qmin, qmax).
Symmetric because trained weights are centred on zero (a zero point buys little) and the packed
symmetric scheme is the one vLLM's fast W4A16/W8A16 (Marlin) kernels take; |w - q * scale| <= scale / 2
for every weight (fp32 export; a bf16/fp16 scale adds its own rounding).

Written in the `compressed-tensors` format (config.json `quantization_config` with quant_method
"compressed-tensors", format "pack-quantized"): the weights are packed into int32 by the
compressed-tensors package's own compressor, and `transformers` loads the folder with its
CompressedTensorsHfQuantizer (decompressing to float on CPU; tests/test_quantize.py). vLLM reads this
format too (not tried here: no GPU).

Quantized: every `torch.nn.Linear` of the Hugging Face model except `lm_head` -- for a Llama the
attention q/k/v/o and MLP gate/up/down projections of every layer. Kept in the export dtype: the
embeddings, `lm_head` (tied or not), the norms and any bias. An architecture whose blocks hold no
`nn.Linear` (GPT-2's Conv1D) and any model that is not a causal LM are refused with one line;
a group size must divide every quantized layer's input dimension. Whole groups only, because a last,
partial group does not load: compressed-tensors (0.20.1) quantizes and dequantizes a group-strategy
weight through one function that raises "tensor column shape must be divisble by the given group_size"
when it does not divide, both in the packer here and in the decompressor transformers loads with
(tests/test_quantize.py keeps checking that); vLLM's kernels want whole groups too.
"""

from __future__ import annotations

MODES = {"int8": 8, "int4": 4}
SKIPPED = ("lm_head",)  # quantized nn.Linear layers: all but these


def scheme(mode: str, group_size: int):
    """The compressed-tensors QuantizationScheme of a mode: int weights, symmetric, one scale per group."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    args = QuantizationArgs(num_bits=MODES[mode], type="int", symmetric=True, strategy="group",
                            group_size=group_size)
    return QuantizationScheme(targets=["Linear"], weights=args)


def quantized_layers(arch, hf_config: dict) -> dict[str, int]:
    """{HF module name: input dim} of the layers a quantized export packs, from the HF model built on
    the meta device (no weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(**{k: v for k, v in hf_config.items() if k != "architectures"})
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return {name: m.in_features for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and name not in SKIPPED}


def check(arch, model, heads: dict, vocab_size: int, mode: str, group_size: int) -> dict[str, int]:
    """The layers (name: input dim) a quantized export of a run's model ([model] config, its task's heads)
    packs; a bad mode, group size or architecture is refused with one line, before any weight is read."""
    from mtds.errors import LoadError

    if mode not in MODES:
        raise LoadError(f"--quantize {mode!r}: unknown mode; use one of {', '.join(MODES)}")
    if group_size < 1:
        raise LoadError(f"--group-size {group_size}: must be positive (input columns per scale)")
    if not arch.CAUSAL_LM:
        raise LoadError(f"--quantize: a {model.model_type} model ({arch.ARCHITECTURE}) does not export "
                        "quantized; only causal LMs (GPT runs) do")
    placeholder_ids = {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}  # no effect on the layers
    layers = quantized_layers(arch, arch.hf_config(model, heads, vocab_size, placeholder_ids))
    if not layers:
        raise LoadError(f"--quantize: {arch.ARCHITECTURE} has no torch.nn.Linear layers to quantize (GPT-2 "
                        "keeps its projections in Conv1D); train a Llama-style GPT (RoPE, RMSNorm, SwiGLU)")
    dims = sorted(set(layers.values()))
    bad = [dim for dim in dims if dim % group_size]
    if bad:
        raise LoadError(f"--group-size {group_size}: does not divide the input dimension {bad[0]} of the "
                        f"quantized layers (input dimensions: {', '.join(map(str, dims))}); use a common divisor")
    return layers


def write_quantization_config(out_dir: str, mode: str, group_size: int) -> None:
    """Add `quantization_config` to out_dir/config.json with compressed-tensors' own writer."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import QuantizationConfig, QuantizationStatus

    config = QuantizationConfig(config_groups={"group_0": scheme(mode, group_size)}, format="pack-quantized",
                                quantization_status=QuantizationStatus.COMPRESSED, ignore=list(SKIPPED))
    ModelCompressor(quantization_config=config).update_config(out_dir)


def quantize(weights: dict, layers: dict[str, int], mode: str, group_size: int, dtype) -> dict:
    """The HF state dict with each quantized layer's `weight` replaced by compressed-tensors' packed
    `weight_packed` (int32), `weight_scale` [out, in / group_size] in `dtype` and `weight_shape`."""
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization.utils import calculate_qparams

    sch = scheme(mode, group_size)
    compressor = BaseCompressor.load_from_registry("pack-quantized")
    out = dict(weights)
    for name in layers:
        w = weights[f"{name}.weight"].float()  # [out, in]
        groups = w.reshape(w.shape[0], -1, group_size)  # [out, in / g, g]
        scale, _ = calculate_qparams(groups.amin(-1), groups.amax(-1), sch.weights)  # [out, in / g]
        # The scale is stored in the export dtype: quantize with that rounded scale, so that the
        # stored ints times the stored scale are exactly what a loader reconstructs.
        scale = scale.to(dtype)
        del out[f"{name}.weight"]
        packed = compressor.compress({"weight": w, "weight_scale": scale.float()}, sch)
        out.update({f"{name}.{k}": v for k, v in packed.items()})
        out[f"{name}.weight_scale"] = scale
    return out
