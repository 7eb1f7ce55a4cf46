"""Samples/s from the project's training data path at GPT sequence length, and index-cache cost.

    python bench/data_loader.py --prefix data/stdlib/stdlib_text_document --tokenizer data/stdlib/tokenizer.model

(the default data, built by `make demo` or `python -m data_tools.default_dataset --out-dir data/stdlib`)

Builds GPTDataset with the GPT kind's task, mtds.tasks.causal_lm.build_datasets (megatron-core
BlendedMegatronDatasetBuilder, index cache in a fresh temp dir: first build = cold, second =
cache reuse), then reads `--batches` micro-batches through mtds.data.loader.ResumableBatchSampler +
build_loader with 0, 1, 2 workers. Compare with what a GPU consumes: samples/s = tokens/s /
seq_length (e.g. the GPT-1.3b H100 row of bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
warnings.filterwarnings("ignore")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prefix", default="data/stdlib/stdlib_text_document")
    p.add_argument("--tokenizer", default="data/stdlib/tokenizer.model")
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--micro", type=int, default=8)
    p.add_argument("--batches", type=int, default=100)
    p.add_argument("--train-samples", type=int, default=200_000, help="sample index size (a long run's)")
    p.add_argument("--workers", default="0,1,2")
    p.add_argument("--gpu-tokens-per-s", type=float, default=None,
                   help="what the GPU consumes (tokens/s), to print the margin")
    args = p.parse_args(argv)

    from mtds.config import build_config
    from mtds.data.loader import ResumableBatchSampler, build_loader
    from mtds.data.sources import DataSources
    from mtds.data.splits import check_splits
    from mtds.data.tokenizer import SentencePieceTokenizer

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = build_config(overrides={"model": {"max_position_embeddings": args.seq},
                                      "data": {"seq_length": args.seq, "cache_dir": os.path.join(tmp, "cache")},
                                      "training": {"run_dir": tmp}})
        tok = SentencePieceTokenizer(args.tokenizer)
        sources = DataSources([args.prefix], None, args.tokenizer)
        check_splits(sources.prefixes, cfg.data.split)  # an empty split makes GPTDataset loop forever
        sizes = [args.train_samples, 100, 100]
        times = []
        for _ in range(2):  # cold index cache, then reuse
            t0 = time.perf_counter()
            train, _, _ = cfg.kind.task.build_datasets(cfg, sources, tok, sizes, 1)
            times.append(time.perf_counter() - t0)
        n = args.micro * args.batches
        for workers in [int(w) for w in args.workers.split(",")]:
            loader = build_loader(train, ResumableBatchSampler(len(train), 0, args.micro, 0, 1), workers)
            it = iter(loader)
            next(it)  # worker start-up is not throughput
            t0 = time.perf_counter()
            for _ in range(args.batches):
                batch = next(it)
            dt = time.perf_counter() - t0
            assert batch["tokens"].shape == (args.micro, args.seq)
            rows.append((workers, n / dt))
            del it, loader

    print(f"\nGPTDataset {args.prefix} seq {args.seq}, {len(train):,} train samples indexed; "
          f"index build cold {times[0]:.2f} s, cached {times[1]:.2f} s; load average {os.getloadavg()[0]:.1f}")
    need = args.gpu_tokens_per_s / args.seq if args.gpu_tokens_per_s else None
    print("| workers | samples/s | tokens/s | margin over GPU need |\n|---|---|---|---|")
    for workers, sps in rows:
        margin = f"{sps / need:.0f}x" if need else "-"
        print(f"| {workers} | {sps:,.0f} | {sps * args.seq:,.0f} | {margin} |")
    if need:
        print(f"GPU need: {args.gpu_tokens_per_s:,.0f} tokens/s = {need:.1f} samples/s of {args.seq} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
