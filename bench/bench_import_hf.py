"""Time and peak host memory of `python -m mtds.import_hf` on a ~1.1B Llama.

    .venv/bin/python bench/bench_import_hf.py [--work /tmp/bench_import_hf] [--layers 22]

Makes (once, cached under --work) a randomly initialised LlamaForCausalLM of TinyLlama-1.1B's
shape (hidden 2048, 22 layers, 32 heads, 4 key/value heads, SwiGLU 5632, vocabulary 32000) with
`transformers`, saved in bf16 as 500 MB safetensors shards, then imports it in a fresh process
and reads that process's peak RSS (getrusage of the child). The goal (issue: import streams
shards): peak at most about one fp32 copy of the model plus one shard.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_model(hf_dir: str, layers: int) -> None:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    config = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=layers,
                         num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
                         rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(hf_dir, max_shard_size="500MB")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.train_from_iterator([f"word{i} " * 3 for i in range(500)],
                            trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"]))
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>").save_pretrained(hf_dir)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--work", default="/tmp/bench_import_hf")
    p.add_argument("--layers", type=int, default=22)
    a = p.parse_args()
    hf_dir, out_dir = os.path.join(a.work, "hf"), os.path.join(a.work, "imported")
    if not os.path.isfile(os.path.join(hf_dir, "config.json")):
        start = time.perf_counter()
        make_model(hf_dir, a.layers)
        print(f"made the HF model in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    with open(os.path.join(hf_dir, "model.safetensors.index.json")) as f:
        index = json.load(f)
    shards = sorted({os.path.join(hf_dir, s) for s in index["weight_map"].values()})
    bf16_bytes = index["metadata"]["total_size"]
    largest = max(os.path.getsize(s) for s in shards)
    subprocess.run(["rm", "-rf", out_dir], check=True)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mtds.import_hf", "--hf", hf_dir, "--out", out_dir], cwd=ROOT,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        return 1
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # Linux: KiB
    params = bf16_bytes // 2
    fp32 = 4 * params
    gib = 2**30
    print("| parameters | shards (largest) | fp32 model | import wall | peak RSS | peak / (fp32 model + largest shard) |")
    print("|---|---|---|---|---|---|")
    print(f"| {params / 1e9:.2f}B | {len(shards)} ({largest / gib:.2f} GiB) | {fp32 / gib:.2f} GiB | {seconds:.0f} s "
          f"| {peak / gib:.2f} GiB | {peak / (fp32 + largest):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
