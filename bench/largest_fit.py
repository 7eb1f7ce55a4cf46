"""The largest GPT that trains on one device, per ZeRO variant: a bisection over the layer count.

Each try is one optimizer step of `bench/train_throughput.py` (micro-batch 1, the 1.3b width:
hidden 2048, 16 heads, seq 2048) in its own process, so an out-of-memory try cannot leave
fragmented or leaked memory behind for the next one (ZeRO-3 and offload engines do not hand all
of theirs back when destroyed).

    python bench/largest_fit.py --variants z2+recompute,z3+recompute --lo 48 --hi 112
    python bench/largest_fit.py --variants z2-offload+recompute --lo 96 --hi 192 --step 8

A try "fits" when its step completes; it does not fit when it fails (out of memory) or runs past
--timeout. Prints one row per variant: the largest layer count that fit, its parameters and
peak memory, and the smallest that did not.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def try_layers(variant: str, layers: int, width: str, timeout: float, seq: int, vocab: int) -> dict:
    """One step of GPT `width` with `layers` layers under `variant`; the train_throughput row."""
    with tempfile.NamedTemporaryFile("r", suffix=".jsonl") as out:
        cmd = [sys.executable, os.path.join(HERE, "train_throughput.py"), "--presets", f"{width}:num_layers={layers}",
               "--variants", variant, "--micro", "1", "--seq", str(seq), "--vocab", str(vocab),
               "--warmup", "1", "--steps", "1", "--json", out.name]
        t0 = time.time()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"timeout after {timeout:.0f} s", "wall_s": time.time() - t0}
        rows = [json.loads(line) for line in out.read().splitlines() if line.strip()]
    if not rows:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}", "wall_s": time.time() - t0}
    return rows[-1]


def largest_that_fits(fits, lo: int, hi: int, step: int) -> tuple[int | None, int | None, dict]:
    """Bisection over multiples of `step` in [lo, hi], assuming fitting is monotone in size.

    `fits(n)` returns (ok, row). Returns (largest n that fit or None, smallest that did not or
    None, {n: row} of every try)."""
    tried: dict[int, dict] = {}

    def probe(n: int) -> bool:
        ok, tried[n] = fits(n)
        return ok

    lo, hi = -(-lo // step) * step, hi // step * step
    if not probe(lo):
        return None, lo, tried
    if probe(hi):
        return hi, None, tried
    good, bad = lo, hi  # invariant: good fits, bad does not
    while bad - good > step:
        mid = (good + bad) // 2 // step * step
        if mid == good:
            mid += step
        if probe(mid):
            good = mid
        else:
            bad = mid
    return good, bad, tried


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default="z2+recompute,z3+recompute,z2-offload+recompute",
                   help="train_throughput variants (ZeRO-1 and ZeRO-2 hold the same at one device)")
    p.add_argument("--width", default="gpt-1.3b", help="preset whose width is kept; only num_layers changes")
    p.add_argument("--lo", type=int, default=24)
    p.add_argument("--hi", type=int, default=160)
    p.add_argument("--step", type=int, default=4)
    p.add_argument("--timeout", type=float, default=240.0, help="seconds per try")
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--vocab", type=int, default=50304)
    args = p.parse_args(argv)
    rows = []
    for variant in args.variants.split(","):
        def fits(n, variant=variant):
            row = try_layers(variant, n, args.width, args.timeout, args.seq, args.vocab)
            ok = "error" not in row
            print(f"{variant} layers={n}: {'fits' if ok else 'no: ' + row['error'][:120]} "
                  f"({row.get('wall_s', 0):.0f} s)", flush=True)
            return ok, row

        good, bad, tried = largest_that_fits(fits, args.lo, args.hi, args.step)
        best = tried.get(good, {})
        rows.append((variant, good, best.get("params_m"), best.get("peak_mem_gb"), bad))
    print("\n| variant | largest layers that fit | parameters | peak GiB | first layers that did not |")
    print("|---|---|---|---|---|")
    for variant, good, params_m, peak, bad in rows:
        params = f"{params_m / 1e3:.2f} B" if params_m else "-"
        peak_s = f"{peak:.1f}" if peak else "-"
        print(f"| {variant} | {good if good is not None else f'< {args.lo}'} | {params} | {peak_s} | "
              f"{bad if bad is not None else f'> {args.hi}'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
