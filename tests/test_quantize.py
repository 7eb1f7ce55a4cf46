"""Quantized export (`mtds.export_hf --quantize int8|int4`, mtds/hf/quantize.py), issue #26.

One tiny Llama-style run (RoPE/RMSNorm/SwiGLU, untied embeddings, fp32, ZeRO-2, 6 steps) for the module,
exported once in float and once per mode at group size 32; everything else runs in this process.
The reference quantizer below is written from the formula, independently of compressed-tensors."""

from __future__ import annotations

import json
import os
import re

import pytest
import torch

from helpers import DIST_ENV, call, end_world, missing, ok, run_pretrain, tiny_cfg, tiny_gpt_args, write_ds_config

GROUP = 32  # divides the tiny model's input dims (hidden 64, SwiGLU ffn)
BITS = {"int8": 8, "int4": 4}
# mtds's Linear weights: megatron fuses q/k/v (rows interleaved per query group) and gate/up (rows
# stacked); each row is quantized on its own, so quantizing the fused weight row by row gives the
# same numbers as the HF layers q/k/v and gate/up quantized apart.
LINEARS = ("linear_qkv.weight", "linear_proj.weight", "linear_fc1.weight", "linear_fc2.weight")


def reference_fake_quant(w: torch.Tensor, bits: int, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(w rounded to the grid, scale [out, in / group]): symmetric RTN, scale = max|w| / ((2^bits - 1) / 2)."""
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    g = w.reshape(w.shape[0], -1, group)  # [out, in / group, group]
    scale = g.abs().amax(-1) / ((qmax - qmin) / 2)
    q = torch.clamp(torch.round(g / scale.unsqueeze(-1)), qmin, qmax)
    return (q * scale.unsqueeze(-1)).reshape(w.shape), scale


@pytest.fixture(scope="module")
def run(tiny_data, tmp_path_factory):
    try:
        import compressed_tensors  # noqa: F401
    except ImportError:
        missing("compressed-tensors is not installed (pip install -e .[quant])")
    tmp = tmp_path_factory.mktemp("quant_run")
    ds = write_ds_config(str(tmp / "ds.json"), stage=2, precision="fp32", torch_adam=True)
    ok(run_pretrain(tiny_gpt_args(tiny_data, tmp / "run", ds, "--training.train_iters=6",
                                  "--training.eval_interval=100", "--data.num_workers=0")))
    return str(tmp / "run")


@pytest.fixture(scope="module")
def exports(run, tmp_path_factory):
    """{"float" | "int8" | "int4": exported folder}."""
    from mtds.export_hf import export

    tmp = tmp_path_factory.mktemp("quant_exports")
    out = {"float": str(tmp / "float")}
    export(run, out["float"], log=lambda *_: None)
    for mode in BITS:
        out[mode] = str(tmp / mode)
        export(run, out[mode], log=lambda *_: None, quantize=mode, group_size=GROUP)
    return out


@pytest.fixture(scope="module")
def ours(run):
    """The run's mtds model (fp32, CPU); the world of one it needs is taken down after the module."""
    from mtds.load_trained import load_trained

    saved = {k: os.environ.get(k) for k in DIST_ENV}
    yield load_trained(run)
    end_world()
    for k, v in saved.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def _ids(run, n=48):
    text = "import os\nimport sys\n\n\ndef main(argv):\n    if not argv:\n        return 1\n    return 0\n" * 3
    return torch.tensor([run.tokenizer().tokenize(text)[:n]])


def _our_logits(model, ids):
    with torch.no_grad():
        return model(ids, torch.arange(ids.size(1)).unsqueeze(0), None)


def _hf_logits(folder, ids):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return hf(ids).logits, hf


def _tensors(folder) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(os.path.join(folder, "model.safetensors"))


# Both sides fp32 on CPU through different kernels (megatron's fused GEMMs vs HF's, as in
# tests/test_tools.py, measured 0 there for Llama); the weights are the same numbers on both sides.
LOGITS_ATOL = 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(BITS))
def test_transformers_loads_the_quantized_export_and_matches_our_dequantized_model(ours, exports, mode):
    """transformers' CompressedTensorsHfQuantizer loads the folder; its logits equal those of mtds's own
    model with every transformer-block Linear weight replaced by the reference quantize -> dequantize."""
    config = json.load(open(os.path.join(exports[mode], "config.json")))["quantization_config"]
    assert config["quant_method"] == "compressed-tensors" and config["format"] == "pack-quantized"
    assert config["ignore"] == ["lm_head"]
    assert config["config_groups"]["group_0"]["weights"].items() >= {
        "num_bits": BITS[mode], "group_size": GROUP, "symmetric": True, "strategy": "group"}.items()
    ids = _ids(ours)
    theirs, hf = _hf_logits(exports[mode], ids)
    assert hf.hf_quantizer is not None and type(hf).__name__ == "LlamaForCausalLM"
    model = ours.model
    linears = {n: p for n, p in model.named_parameters() if n.endswith(LINEARS)}
    assert len(linears) == 4 * ours.cfg.model.num_layers
    original = {n: p.detach().clone() for n, p in linears.items()}
    try:
        with torch.no_grad():
            for p in linears.values():
                p.copy_(reference_fake_quant(p, BITS[mode], GROUP)[0])
        dequantized = _our_logits(model, ids)
    finally:
        with torch.no_grad():
            for n, p in linears.items():
                p.copy_(original[n])
    torch.testing.assert_close(theirs, dequantized, atol=LOGITS_ATOL, rtol=0)
    assert not torch.allclose(dequantized, _our_logits(model, ids), atol=1e-3)  # the rounding shows


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(BITS))
def test_quantized_export_is_the_float_export_rounded_group_by_group(exports, mode):
    """Per layer, compressed-tensors' own decompressor gives back the reference grid exactly and
    |w - w_q| <= scale / 2 per group; every other tensor is the float export's, bit for bit."""
    from compressed_tensors.compressors import BaseCompressor

    from mtds.hf.quantize import scheme

    flt, q = _tensors(exports["float"]), _tensors(exports[mode])
    layers = sorted(k[: -len(".weight_packed")] for k in q if k.endswith(".weight_packed"))
    assert layers and not any(k.startswith("lm_head.weight_") or "embed" in k and "packed" in k for k in q)
    assert set(q) == {k for k in flt if k[: -len(".weight")] not in layers} | {
        f"{n}.{s}" for n in layers for s in ("weight_packed", "weight_scale", "weight_shape")}
    for k in set(q) & set(flt):
        assert torch.equal(q[k], flt[k]), k  # embeddings, lm_head, norms
    decompressor = BaseCompressor.load_from_registry("pack-quantized")
    for n in layers:
        w, scale = flt[f"{n}.weight"], q[f"{n}.weight_scale"]
        assert q[f"{n}.weight_packed"].dtype == torch.int32
        w_q = decompressor.decompress({k: q[f"{n}.{k}"] for k in ("weight_packed", "weight_scale", "weight_shape")},
                                      scheme(mode, GROUP))["weight"]
        ref, ref_scale = reference_fake_quant(w, BITS[mode], GROUP)
        assert torch.equal(scale, ref_scale) and torch.equal(w_q, ref), n
        bound = scale.repeat_interleave(GROUP, dim=1) / 2  # [out, in]
        # w_q = q * scale is rounded to fp32 and so is w - w_q: a few ulps of |w| on top of scale / 2
        # (a clamped extreme sits exactly at scale / 2)
        assert ((w - w_q).abs() <= bound + w.abs() * 2 ** -21).all(), n
    size = {k: os.path.getsize(os.path.join(exports[k], "model.safetensors")) for k in ("float", mode)}
    assert size[mode] < size["float"]


@pytest.mark.slow
def test_int8_logits_stay_close_to_the_float_export(ours, exports):
    """Measured on this run: max |logit diff| 0.4% of max |logit| for int8, 4.7% for int4 (group 32)."""
    ids = _ids(ours)
    flt, int8, int4 = (_hf_logits(exports[k], ids)[0] for k in ("float", "int8", "int4"))
    err8, err4 = (flt - int8).abs().max(), (flt - int4).abs().max()
    assert 0 < err8 < 0.02 * flt.abs().max() and err8 < err4


@pytest.mark.slow
def test_quantize_refusals_are_one_line_and_write_nothing(run, tmp_path, capsys):
    from mtds import export_hf

    out = tmp_path / "hf"
    for extra, expected in ((["--quantize", "int3"], "--quantize 'int3': unknown mode; use one of int8, int4"),
                            (["--quantize", "int4", "--group-size", "48"], "--group-size 48: does not divide"),
                            (["--quantize", "int8", "--group-size", "0"], "--group-size 0: must be positive")):
        rc, _, err = call(export_hf.main, ["--load", run, "--out", str(out), *extra], capsys)
        assert rc == 2 and err.startswith(f"error: {expected}") and err.count("\n") == 1, err
        assert not out.exists()


@pytest.mark.parametrize("model, expected", [
    ({"model_type": "bert"}, "a bert model (MegatronBertForMaskedLM) does not export quantized"),
    ({"position_embedding_type": "learned_absolute", "normalization": "LayerNorm", "activation": "gelu",
      "tie_embeddings": True, "add_bias_linear": True}, "GPT2LMHeadModel has no torch.nn.Linear layers"),
])
def test_architectures_without_linear_layers_are_refused(model, expected):
    from mtds.errors import LoadError
    from mtds.export_hf import hf_architecture
    from mtds.hf.quantize import check

    cfg = tiny_cfg(model.pop("model_type", "gpt"), **model)
    with pytest.raises(LoadError, match=re.escape(expected)):
        check(hf_architecture(cfg), cfg.model, cfg.kind.task.model_heads(cfg.task), 512, "int8", 32)
