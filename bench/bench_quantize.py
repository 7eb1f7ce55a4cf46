"""Perplexity and size of int8 / int4 exports against the float export of a run on held-out tokens.

    python bench/bench_quantize.py [--load runs/objectives/gpt] [--out runs/bench_quantize]
                                   [--group-size 128 [64 ...]] [--seq 128] [--windows 200]
                                   [--train-iters N [--ffn-hidden-size 768]]

Exports the run three times with the real tool (`mtds.export_hf`: fp32, `--quantize int8`, `--quantize
int4`), loads each folder with `transformers` (AutoModelForCausalLM; the quantized ones through its
compressed-tensors support) and scores the same held-out token ids with each, non-overlapping windows
of `--seq` tokens (the run's training length) from two sources: the run's own corpus past its training
split (in domain, never trained on) and the concatenated `.py` sources of megatron-core, which the
default corpus (the standard library) does not contain, tokenized by the exported tokenizer.
Prints perplexity, its change against fp32, model.safetensors size and the bytes of the quantized
layers, per mode and group size. The default --load is the gpt-tiny run of the README's "four
objectives" command. With --train-iters N (and --ffn-hidden-size, e.g. 768 = 6 x 128, so that group 128
divides every quantized layer: gpt-tiny's own 704 does not) it first trains that run at --load on the
default corpus with the real launcher (deepspeed, ZeRO-2, seq 128), unless --load has a checkpoint.
"""

from __future__ import annotations

import argparse
import glob
import math
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def corpus_held_out_ids(prefix: str, seq: int, windows: int) -> torch.Tensor:
    """[windows, seq] token ids of the documents past the training split of the run's .bin/.idx corpus
    (megatron-core's split cuts by document order: with the default 969,30,1 the last 3.1% are the
    validation and test documents, never trained on)."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    data = IndexedDataset(prefix)
    start = round(len(data) * 969 / 1000)
    ids = torch.cat([torch.from_numpy(data[i].astype("int64")) for i in range(start, len(data))])
    if ids.numel() < seq * windows:
        sys.exit(f"only {ids.numel()} held-out corpus tokens; lower --windows")
    return ids[: seq * windows].view(windows, seq)


def code_held_out_ids(folder: str, seq: int, windows: int) -> torch.Tensor:
    """[windows, seq] token ids of megatron-core's sources (not in the stdlib corpus)."""
    import megatron.core
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    ids: list[int] = []
    for path in sorted(glob.glob(os.path.join(os.path.dirname(megatron.core.__file__), "**", "*.py"), recursive=True)):
        with open(path, encoding="utf-8") as f:
            ids += tok.encode(f.read(), add_special_tokens=False) + [tok.eos_token_id]
        if len(ids) >= seq * windows:
            break
    if len(ids) < seq * windows:
        sys.exit(f"only {len(ids)} held-out tokens; lower --windows")
    return torch.tensor(ids[: seq * windows]).view(windows, seq)


def perplexity(folder: str, ids: torch.Tensor, batch: int = 16, gguf_file: str | None = None) -> float:
    """exp(mean next-token NLL) over every window, scored by transformers in fp32 (a GGUF file in
    folder through transformers' GGUF loader, which dequantizes it)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, gguf_file=gguf_file).eval()
    nll, count = 0.0, 0
    with torch.no_grad():
        for chunk in ids.split(batch):
            logits = model(chunk).logits[:, :-1].float()  # [b, seq - 1, vocab]
            nll += torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), chunk[:, 1:].reshape(-1),
                                                     reduction="sum").item()
            count += chunk[:, 1:].numel()
    return math.exp(nll / count)


def quantized_bytes(folder: str) -> int:
    """Bytes of the quantized layers' tensors (packed ints, scales, shapes) in model.safetensors."""
    from safetensors import safe_open

    with safe_open(os.path.join(folder, "model.safetensors"), "pt") as f:
        layers = {k.rsplit(".", 1)[0] for k in f.keys() if k.endswith(".weight_packed")}
        total = 0
        for k in f.keys():
            if k.rsplit(".", 1)[0] in layers or (not layers and k.endswith("_proj.weight")):
                t = f.get_tensor(k)
                total += t.numel() * t.element_size()
    return total


def train(run_dir: str, iters: int, ffn: int | None) -> None:
    """gpt-tiny (4 x 256, RoPE/RMSNorm/SwiGLU) on the default stdlib corpus (data/stdlib under the
    current directory, built on first use), 8 x 128 tokens a step, by mtds/pretrain.py under deepspeed."""
    import subprocess

    cmd = [os.path.join(os.path.dirname(sys.executable), "deepspeed"), os.path.join(ROOT, "mtds", "pretrain.py"),
           "--deepspeed_config", os.path.join(ROOT, "ds_configs", "zero2.json"), "--model-type", "gpt",
           "--data.seq_length=128", f"--training.train_iters={iters}", "--training.eval_interval=200",
           "--training.progress_bar=false", "--run-dir", run_dir] + ([f"--model.ffn_hidden_size={ffn}"] if ffn else [])
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": ROOT})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--load", default=os.path.join(ROOT, "runs", "objectives", "gpt"))
    p.add_argument("--out", default=os.path.join(ROOT, "runs", "bench_quantize"))
    p.add_argument("--group-size", type=int, nargs="+", default=[128], help="one row per mode and size")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--windows", type=int, default=200)
    p.add_argument("--data", help="the run's .bin/.idx prefix (default: the one its checkpoint records, "
                   "relative to the current directory)")
    p.add_argument("--train-iters", type=int, help="train --load first (if it has no checkpoint) for N steps")
    p.add_argument("--ffn-hidden-size", type=int, help="with --train-iters: model.ffn_hidden_size")
    p.add_argument("--gguf", action="store_true", help="also a Q8_0 GGUF (--gguf-type q8_0 with the fp32 export; "
                   "every 2-D weight, embeddings and lm_head too), scored through transformers' GGUF loader")
    a = p.parse_args(argv)
    sys.path.insert(0, ROOT)
    from mtds.ckpt.layout import read_config
    from mtds.errors import LoadError
    from mtds.export_hf import export
    from mtds.load_trained import find_checkpoint

    if a.train_iters:
        try:
            find_checkpoint(a.load)
        except LoadError:
            train(a.load, a.train_iters, a.ffn_hidden_size)

    prefix = a.data or read_config(find_checkpoint(a.load))["data_sources"]["prefixes"][0]
    rows, sets = [], None
    gguf = os.path.join(a.out, "fp32", "model-q8_0.gguf")
    for mode, group in [("fp32", None)] + [(m, g) for g in a.group_size for m in ("int8", "int4")]:
        folder = os.path.join(a.out, mode if group is None else f"{mode}_g{group}")
        start = time.perf_counter()
        export(a.load, folder, log=lambda *_: None, **({"gguf": gguf, "gguf_type": "q8_0"} if a.gguf and group is None
                                                       else {} if group is None
                                                       else {"quantize": mode, "group_size": group}))
        export_s = time.perf_counter() - start
        if sets is None:
            sets = (corpus_held_out_ids(prefix, a.seq, a.windows), code_held_out_ids(folder, a.seq, a.windows))
        start = time.perf_counter()
        ppl = [perplexity(folder, ids) for ids in sets]
        rows.append((mode if group is None else f"{mode}, group {group}", ppl,
                     os.path.getsize(os.path.join(folder, "model.safetensors")), quantized_bytes(folder),
                     export_s, time.perf_counter() - start))
    if a.gguf:  # (the fp32 export's seconds include writing this file)
        start = time.perf_counter()
        ppl = [perplexity(os.path.dirname(gguf), ids, gguf_file=os.path.basename(gguf)) for ids in sets]
        rows.append(("GGUF Q8_0 (all 2-D weights)", ppl, os.path.getsize(gguf), None, None, time.perf_counter() - start))
    print(f"{a.load}, group sizes {a.group_size}: {a.windows} x {a.seq} held-out tokens each of the corpus "
          f"({prefix}, past the training split) and of megatron-core's sources")
    print("| export | ppl corpus held-out | vs fp32 | ppl megatron-core code | vs fp32 | model file "
          "| quantized layers | export s | scoring s |")
    print("|---|---|---|---|---|---|---|---|---|")
    base = rows[0][1]
    for mode, ppl, size, qbytes, export_s, score_s in rows:
        cells = " | ".join(f"{p:.3f} | {100 * (p / b - 1):+.2f}%" for p, b in zip(ppl, base))
        qcell, ecell = ("-", "-") if qbytes is None else (f"{qbytes / 2**20:.2f} MiB", f"{export_s:.1f}")
        print(f"| {mode} | {cells} | {size / 2**20:.2f} MiB | {qcell} | {ecell} | {score_s:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
