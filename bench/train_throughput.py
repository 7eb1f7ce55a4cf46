"""Training throughput of the mtds stack (megatron-core GPT + DeepSpeed ZeRO) on one device.

For each preset and variant it builds the model and engine with the project's own code
(mtds.ds_config.resolve_ds_config, then mtds.train.engine.build_engine: the kind's model,
training.compile, deepspeed.initialize), trains on synthetic token batches already on the
device (data loading is measured by bench/data_loader.py), and reports after warm-up: median step time, tokens/s, model TFLOP/s,
MFU against the spec bf16 dense peak and against a bf16 matmul peak measured in the same
process, and peak memory. `torch` variants run the same step in a plain-PyTorch GPT of the
same shape (bench/reference_gpt.py) to show what the stack costs.

    python bench/train_throughput.py --presets gpt-125m,gpt-350m,gpt-1.3b \
        --variants z1,z2,z2-fp16,torch --micro gpt-125m=16,gpt-350m=16,gpt-1.3b=8 --json out.jsonl

Variants (comma-separated; names compose with '+'):
  z1, z2, z3       ds_configs/zero{1,2,3}.json (bf16, FusedAdam)
  z2-fp16          ds_configs/zero2_fp16.json (dynamic loss scaling from 2^16)
  z2-offload       ds_configs/zero2_offload.json (optimizer on the CPU)
  +recompute       model.recompute_activations=True (full activation checkpointing)
  +cefuse          megatron-core's native fused cross entropy (TransformerConfig override)
  +swiglufuse      megatron-core's fused SwiGLU (TransformerConfig override; the GPU default
                   in mtds/models/common.py since these measurements)
  +compile         training.compile="model": DeepSpeed's engine.compile(), the whole module
  +layers          training.compile="layers": each transformer layer compiled (mtds/train/compile.py)
  torch            plain PyTorch: fp32 params, bf16 autocast, AdamW(fused=True)
  torch-compile    the same under torch.compile
Timing: CUDA events between steps, read once at the end (no host sync in the loop beyond
what DeepSpeed itself does); on CPU wall-clock per step.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
warnings.filterwarnings("ignore", message=".*(Transformer Engine|Apex).*")

import torch  # noqa: E402

SPEC_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
DS_CONFIGS = {"z1": "ds_configs/zero1.json", "z2": "ds_configs/zero2.json", "z3": "ds_configs/zero3.json",
              "z2-fp16": "ds_configs/zero2_fp16.json", "z2-offload": "ds_configs/zero2_offload.json"}
TC_OVERRIDES = {"cefuse": {"cross_entropy_loss_fusion": True, "cross_entropy_fusion_impl": "native"},
                "swiglufuse": {"bias_activation_fusion": True}}


# -- device helpers ----------------------------------------------------------------------
def on_gpu() -> bool:
    return torch.cuda.is_available()


def spec_peak() -> float | None:
    if not on_gpu():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in SPEC_PEAK_TFLOPS.items() if k in name), None)


def measured_matmul_peak(n: int = 8192, iters: int = 30) -> float | None:
    """bf16 TFLOP/s of a large square matmul on random data (the achievable ceiling)."""
    if not on_gpu():
        return None
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        a @ b
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1e3
    del a, b
    return 2 * n**3 * iters / seconds / 1e12


def free_memory() -> None:
    gc.collect()
    if on_gpu():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


class StepClock:
    """Per-step durations; CUDA events on GPU (read at the end), perf_counter on CPU."""

    def __init__(self):
        self.marks = []

    def mark(self):
        if on_gpu():
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.marks.append(ev)
        else:
            self.marks.append(time.perf_counter())

    def durations(self) -> list[float]:
        if on_gpu():
            torch.cuda.synchronize()
            return [a.elapsed_time(b) / 1e3 for a, b in zip(self.marks, self.marks[1:])]
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


# -- model / engine ----------------------------------------------------------------------
def run_config(preset: str, recompute: bool = False, compile: str = "none"):
    """RunConfig of a preset; 'gpt-1.3b:num_layers=48' overrides fields of the preset."""
    from mtds.config import build_config

    name, _, rest = preset.partition(":")
    fields = dict(kv.split("=") for kv in rest.split(";") if kv)
    model = {"preset": name, "recompute_activations": recompute, **fields}
    return build_config(overrides={"model": model, "training": {"compile": compile}})


def model_config(preset: str, recompute: bool = False):
    """ModelConfig of a preset (the [model] section of `run_config`)."""
    return run_config(preset, recompute).model


def synthetic_batches(n: int, micro: int, seq: int, vocab: int, device) -> list[dict]:
    """Random token batches in the GPTDataset layout, already on the device."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        tokens = torch.randint(0, vocab, (micro, seq + 1), generator=g)
        out.append({"tokens": tokens[:, :-1].contiguous().to(device),
                    "labels": tokens[:, 1:].contiguous().to(device),
                    "loss_mask": torch.ones(micro, seq, device=device),
                    "position_ids": torch.arange(seq).expand(micro, seq).contiguous().to(device)})
    return out


def build_engine(preset: str, variant: str, micro: int, vocab: int):
    """(engine, ModelConfig, n_params, precision) built by mtds.train.engine.build_engine, as
    mtds/pretrain.py builds them (seed training.seed, the kind's model, training.compile)."""
    import mtds.models.common as common
    from mtds.parallel.process_groups import init_distributed
    from mtds.ds_config import load_ds_config, precision, resolve_ds_config
    from mtds.train.engine import build_engine as mtds_build_engine

    quiet = lambda *a, **k: None  # noqa: E731
    base, *extras = variant.split("+")
    path = DS_CONFIGS[base]
    raw = load_ds_config(path)
    raw["train_micro_batch_size_per_gpu"] = micro
    raw.pop("train_batch_size", None)
    from mtds.cpu_compat import has_native_bf16

    # As a training run resolves it (mtds.train.plan): a CPU without bf16 instructions trains bf16
    # configs in fp32; the parameter's default (True) would time emulated bf16, ~40x slower on AVX2.
    ds_cfg = resolve_ds_config(raw, path, 1, 100000, on_gpu(), log=quiet, cpu_native_bf16=on_gpu() or has_native_bf16())
    prec = precision(ds_cfg)
    init_distributed()
    # +layers and +compile are training.compile=layers / model; given both, the layers are
    # compiled by build_engine and the engine after it, as before (not a mode mtds offers).
    mode = "layers" if "layers" in extras else "model" if "compile" in extras else "none"
    cfg = run_config(preset, recompute="recompute" in extras, compile=mode)
    tc_over = {k: v for e in extras for k, v in TC_OVERRIDES.get(e, {}).items()}
    original = common.transformer_config  # the families look it up here at build time
    if tc_over:  # bench-only: try megatron-core options before changing mtds/models/common.py
        common.transformer_config = lambda *a, **k: _replace(original(*a, **k), tc_over)
    try:
        engine, n_params, _ = mtds_build_engine(cfg, cfg.kind, ds_cfg, vocab, on_gpu(), log=quiet)
    finally:
        common.transformer_config = original
    if mode == "layers" and "compile" in extras:
        from mtds.train.compile import compile_engine

        compile_engine(engine)
    return engine, cfg.model, n_params, prec


def _replace(tc, over: dict):
    for k, v in over.items():
        setattr(tc, k, v)
    return tc


def loss_scale(engine) -> float | None:
    if not engine.fp16_enabled():
        return None
    opt = engine.optimizer
    scale = getattr(opt, "cur_scale", None) or getattr(opt, "loss_scale", None)
    return float(scale) if scale is not None else None


def run_deepspeed(preset, variant, micro, seq, vocab, warmup, steps) -> dict:
    from mtds.tasks.causal_lm import forward_step

    free_memory()
    engine, m, n_params, prec = build_engine(preset, variant, micro, vocab)
    device = engine.device
    batches = synthetic_batches(4, micro, seq, vocab, device)
    scale0 = loss_scale(engine)
    state_mem = None
    clock = StepClock()
    losses = torch.zeros(warmup + steps, device=device)
    for i in range(warmup + steps):
        if i >= warmup:
            clock.mark()
        sums, _ = forward_step(engine, batches[i % len(batches)], device)
        loss = sums["lm"] / batches[i % len(batches)]["loss_mask"].sum()  # the per-token mean
        engine.backward(loss)
        engine.step()
        losses[i] = loss.detach()
        if i == 0 and on_gpu():
            torch.cuda.synchronize()
            state_mem = torch.cuda.memory_allocated() / 2**30  # params + grads + optimizer states
    clock.mark()
    durations = clock.durations()
    out = dict(stack="mtds+deepspeed", precision=prec, zero=engine.zero_optimization_stage(),
               skipped_steps=int(engine.skipped_steps), loss_scale_start=scale0, loss_scale_end=loss_scale(engine),
               state_gb_after_step1=state_mem, first_loss=float(losses[0]), last_loss=float(losses[-1]))
    out.update(_summary(preset, variant, micro, seq, m, n_params, durations, vocab))
    if hasattr(engine, "destroy"):
        engine.destroy()
    del engine, batches
    free_memory()
    return out


def run_torch(preset, variant, micro, seq, vocab, warmup, steps) -> dict:
    from bench.reference_gpt import ReferenceGPT
    from mtds.models.common import count_parameters

    free_memory()
    m = model_config(preset)
    device = torch.device("cuda" if on_gpu() else "cpu")
    torch.manual_seed(1234)
    model = ReferenceGPT(m, vocab).to(device)
    n_params = count_parameters(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=on_gpu())
    step_model = torch.compile(model) if variant == "torch-compile" else model
    batches = synthetic_batches(4, micro, seq, vocab, device)
    clock = StepClock()
    state_mem = None
    for i in range(warmup + steps):
        if i >= warmup:
            clock.mark()
        b = batches[i % len(batches)]
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = step_model(b["tokens"], b["labels"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i == 0 and on_gpu():
            torch.cuda.synchronize()
            state_mem = torch.cuda.memory_allocated() / 2**30
    clock.mark()
    out = dict(stack="plain torch", precision="bf16 autocast, fp32 params", zero=None, skipped_steps=0,
               loss_scale_start=None, loss_scale_end=None, state_gb_after_step1=state_mem,
               first_loss=None, last_loss=float(loss))
    out.update(_summary(preset, variant, micro, seq, m, n_params, clock.durations(), vocab))
    del model, opt, step_model, batches
    free_memory()
    return out


def _summary(preset, variant, micro, seq, m, n_params, durations, vocab) -> dict:
    from mtds.kinds import KINDS

    step = statistics.median(durations)
    tokens_per_s = micro * seq / step
    fpt = KINDS[m.model_type].family.flops_per_token(m, n_params, seq, vocab)
    tflops = fpt * tokens_per_s / 1e12
    return dict(preset=preset, variant=variant, micro_batch=micro, seq=seq, params_m=n_params / 1e6,
                flops_per_token=fpt, step_s=step, step_s_min=min(durations), tokens_per_s=tokens_per_s,
                tflops=tflops, peak_mem_gb=(torch.cuda.max_memory_allocated() / 2**30) if on_gpu() else None)


# -- driver --------------------------------------------------------------------------------
def parse_micro(spec: str, presets: list[str]) -> dict[str, int]:
    if spec.isdigit():
        return {p: int(spec) for p in presets}
    pairs = dict(item.split("=") for item in spec.split(","))
    return {p: int(pairs[p]) for p in presets}


def fmt(v, f="{:.1f}"):
    return "-" if v is None else f.format(v)


def print_table(rows: list[dict], spec: float | None, measured: float | None) -> None:
    print(f"\nspec bf16 peak {fmt(spec)} TFLOP/s | measured bf16 matmul peak {fmt(measured)} TFLOP/s")
    head = ("preset", "variant", "mb", "params_M", "GFLOP/tok", "step_ms", "tok/s", "TFLOP/s", "MFU_spec",
            "MFU_meas", "peak_GB", "skipped", "scale0", "loss")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        if "error" in r:
            print(f"| {r['preset']} | {r['variant']} | {r.get('micro_batch')} | error: {r['error'][:80]} |")
            continue
        cells = (r["preset"], r["variant"], r["micro_batch"], f"{r['params_m']:.0f}",
                 f"{r['flops_per_token'] / 1e9:.2f}", f"{r['step_s'] * 1e3:.1f}", f"{r['tokens_per_s']:,.0f}",
                 f"{r['tflops']:.1f}", fmt(spec and r["tflops"] / spec, "{:.1%}"),
                 fmt(measured and r["tflops"] / measured, "{:.1%}"), fmt(r["peak_mem_gb"]),
                 r["skipped_steps"], fmt(r["loss_scale_start"], "{:.0f}"), fmt(r["last_loss"], "{:.2f}"))
        print("| " + " | ".join(str(c) for c in cells) + " |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default="gpt-125m,gpt-350m,gpt-1.3b")
    p.add_argument("--variants", default="z1,z2,z2-fp16,torch")
    p.add_argument("--micro", default="gpt-125m=16,gpt-350m=16,gpt-1.3b=8",
                   help="micro-batch per preset (preset=n,...) or one number for all")
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--vocab", type=int, default=50304, help="GPT-2's 50257 padded to a multiple of 128")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--json", help="append one JSON line per result here")
    args = p.parse_args(argv)
    presets = args.presets.split(",")
    micro = parse_micro(args.micro, presets)
    spec, measured = spec_peak(), measured_matmul_peak()
    if on_gpu():
        print(f"device {torch.cuda.get_device_name()} | torch {torch.__version__}", flush=True)
    rows = []
    for preset in presets:
        for variant in args.variants.split(","):
            runner = run_torch if variant.startswith("torch") else run_deepspeed
            t0 = time.time()
            try:
                r = runner(preset, variant, micro[preset], args.seq, args.vocab, args.warmup, args.steps)
            except Exception as e:  # an OOM or an unsupported variant: report it, go on
                r = dict(preset=preset, variant=variant, micro_batch=micro[preset], error=f"{type(e).__name__}: {e}"[:300])
                free_memory()
            r.update(spec_peak_tflops=spec, measured_peak_tflops=measured, wall_s=time.time() - t0)
            rows.append(r)
            print(json.dumps(r), flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(r) + "\n")
    print_table(rows, spec, measured)
    return 0


if __name__ == "__main__":
    sys.exit(main())
