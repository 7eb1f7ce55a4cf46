"""What checkpoint content hashes (mtds/ckpt/manifest.py) cost on save and on load.

Builds a real DeepSpeed engine (1 rank, ZeRO-2, fp32, FusedAdam: ds_configs/zero2_fp32.json) of a
preset with mtds.train.engine.build_engine, takes one optimizer step so the Adam
moments exist, then, median of --repeats:

- save without hashes: mtds.ckpt.save_load.save with its two manifest steps (hash the files,
  write manifest.json) made no-ops, into a fresh run dir;
- save with hashes: mtds.ckpt.save_load.save as it is;
- the two steps alone: hashing the files just written (still in the page cache) and writing
  manifest.json (with its fsync);
- verification at load (manifest.verify, nothing remembered) against DeepSpeed's load_checkpoint;
- each candidate hash over the same files, in GB/s.

    python bench/bench_checkpoint_hash.py [--preset gpt-125m] [--repeats 3] [--dir /tmp]

Saves go to the page cache (torch.save does not fsync; each save's files are fsynced, untimed,
before the next one starts) and hashing reads them back from it: on a cluster file system the
save is slower and the ratio smaller; verifying a checkpoint that is not cached reads it from
disk, at the disk's pace.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import mmap
import os
import shutil
import statistics
import sys
import tempfile
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def flush(run_dir: str) -> None:
    """fsync every file under run_dir: the next save then starts without this one's dirty pages."""
    for dirpath, _, names in os.walk(run_dir):
        for name in names:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def candidates() -> dict:
    """name -> function(path) hashing a whole file, memory-mapped in 8 MiB blocks (as manifest.py)."""
    def chunks(path):
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            view = memoryview(mapped)
            for start in range(0, len(mapped), 8 << 20):
                with view[start:start + (8 << 20)] as block:  # released before the map closes
                    yield block
            view.release()

    def hashlib_of(name):
        def run(path):
            h = hashlib.new(name)
            for block in chunks(path):
                h.update(block)
            return h.hexdigest()
        return run

    def crc32(path):
        c = 0
        for block in chunks(path):
            c = zlib.crc32(block, c)
        return c

    out = {"sha256": hashlib_of("sha256"), "blake2b": hashlib_of("blake2b"), "crc32": crc32}
    try:
        import xxhash

        def xxh3_128(path):
            h = xxhash.xxh3_128()
            for block in chunks(path):
                h.update(block)
            return h.hexdigest()
        out["xxh3_128"] = xxh3_128
    except ImportError:
        pass
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="gpt-125m")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dir", default=tempfile.gettempdir(), help="where the checkpoints are written")
    p.add_argument("--vocab", type=int, default=50304)
    a = p.parse_args(argv)

    from bench.train_throughput import run_config, synthetic_batches
    from mtds.ckpt import manifest, save_load
    from mtds.parallel.process_groups import init_distributed
    from mtds.ds_config import load_ds_config, resolve_ds_config
    from mtds.tasks.causal_lm import forward_step
    from mtds.train.engine import build_engine

    quiet = lambda *args, **kw: None  # noqa: E731
    path = os.path.join(os.path.dirname(HERE), "ds_configs", "zero2_fp32.json")
    raw = load_ds_config(path)
    raw.update(train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=1)
    raw.pop("train_batch_size", None)
    ds_cfg = resolve_ds_config(raw, path, 1, 100, False, log=quiet)
    init_distributed()
    cfg = run_config(a.preset)
    engine, n_params, _ = build_engine(cfg, cfg.kind, ds_cfg, a.vocab, False, log=quiet)
    batch = synthetic_batches(1, 1, 128, a.vocab, engine.device)[0]
    sums, _ = forward_step(engine, batch, engine.device)
    engine.backward(sums["lm"] / batch["loss_mask"].sum())  # the per-token mean
    engine.step()  # the Adam moments exist from here on: a full-size optimizer shard
    resolved = {"bench": "checkpoint hash", "preset": a.preset}
    state = {"iteration": 1, "consumed_samples": 1, "consumed_tokens": 128}

    work = tempfile.mkdtemp(prefix="bench-ckpt-hash-", dir=a.dir)
    plain_run_dir, run_dir = os.path.join(work, "plain"), os.path.join(work, "run")
    ckpt = os.path.join(run_dir, "checkpoints", "iter_0000001")
    times = {k: [] for k in ("plain", "manifest", "hash", "write", "verify", "load")}
    files, total = [], 0

    def save_plain():  # save_load.save with the two manifest steps as no-ops (restored after)
        hash_files, write = manifest.hash_files, manifest.write
        manifest.hash_files, manifest.write = (lambda ckpt_dir, paths: {}), (lambda ckpt_dir, entries: None)
        try:
            save_load.save(engine, plain_run_dir, state, resolved, keep_last=1, log=quiet)
        finally:
            manifest.hash_files, manifest.write = hash_files, write

    def save_with_manifest():
        with manifest.recording(engine) as written:
            save_load.save(engine, run_dir, state, resolved, keep_last=1, log=quiet)
        assert written, "the DeepSpeed checkpoint engine reported no files"

    try:
        for i in range(a.repeats):
            shutil.rmtree(plain_run_dir, ignore_errors=True)
            shutil.rmtree(run_dir, ignore_errors=True)
            order = [("plain", save_plain), ("manifest", save_with_manifest)]
            for name, fn in order if i % 2 == 0 else order[::-1]:  # alternate: neither always goes first
                times[name].append(timed(fn))
                flush(plain_run_dir if name == "plain" else run_dir)  # untimed: no save pays for another's writeback
            files = [os.path.join(ckpt, f) for f in sorted(os.listdir(ckpt)) if f != manifest.MANIFEST_FILE]
            total = sum(os.path.getsize(f) for f in files)
            hashes = {}
            times["hash"].append(timed(lambda: hashes.update(manifest.hash_files(ckpt, files))))
            times["write"].append(timed(lambda: manifest.write(ckpt, hashes)))
            manifest._known.clear()  # a fresh process: nothing remembered
            times["verify"].append(timed(lambda: manifest.verify(ckpt)))
            times["load"].append(timed(lambda: engine.load_checkpoint(os.path.dirname(ckpt), tag="iter_0000001")))
        speeds = {}
        for name, fn in candidates().items():
            speeds[name] = total / min(timed(lambda: [fn(f) for f in files]) for _ in range(a.repeats)) / 1e9
    finally:
        shutil.rmtree(work, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{a.preset}: {n_params / 1e6:.1f}M parameters, ZeRO-2 fp32, 1 rank; checkpoint {len(files)} files, "
          f"{total / 2**30:.2f} GiB; medians of {a.repeats} (s)\n")
    print("| save, no hashes | save with manifest | extra: median of paired differences | hashing alone | "
          "writing manifest.json | verify at load | DeepSpeed load |")
    print("|---|---|---|---|---|---|---|")
    extra = statistics.median(b - a for a, b in zip(times["plain"], times["manifest"]))
    print(f"| {med['plain']:.2f} | {med['manifest']:.2f} | {extra:+.2f} ({100 * extra / med['plain']:+.1f}%) | "
          f"{med['hash']:.2f} ({100 * med['hash'] / med['plain']:.1f}% of the save) | {med['write']:.3f} | "
          f"{med['verify']:.2f} | {med['load']:.2f} |")
    print("\n| hash | GB/s over the checkpoint's files (page cache, best of repeats) | its share of a save |")
    print("|---|---|---|")
    for name, gbps in sorted(speeds.items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {gbps:.2f} | {100 * total / gbps / 1e9 / med['plain']:.1f}% |")
    print(f"\nraw: {json.dumps({k: [round(x, 3) for x in v] for k, v in times.items()})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
