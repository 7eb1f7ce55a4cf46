"""Console lines, a progress bar and TensorBoard scalars — all from rank 0 only.

Tag names (greppable, one scheme): train/*, val/*, throughput/*, data/*, memory/*, downstream/*; every
loss and downstream score is also written as `<group>_vs_tokens/<name>` with consumed tokens as the step, so runs with
different batch sizes can be compared on one axis. With training.wandb_project the same scalars go to
Weights & Biases too (`wandb`, a mtds/train/wandb_log.py run that mtds/train/run.py starts).
"""

from __future__ import annotations

import math
import os
import resource
import sys
import time

import torch

# bf16 dense matmul peaks (TFLOP/s) of GPUs we can name; used for MFU when the user gives none.
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}


def device_peak_tflops(precision: str) -> float | None:
    if not torch.cuda.is_available() or precision == "fp32":
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def memory_stats() -> dict[str, float]:
    if torch.cuda.is_available():
        return {
            "memory/allocated_gb": torch.cuda.memory_allocated() / 2**30,
            "memory/max_allocated_gb": torch.cuda.max_memory_allocated() / 2**30,
            "memory/reserved_gb": torch.cuda.memory_reserved() / 2**30,
        }
    # ru_maxrss is in KiB on Linux
    return {"memory/max_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    h, rem = divmod(int(seconds), 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


class Metrics:
    """Writes scalars to TensorBoard and lines to the console on rank 0; no-op elsewhere."""

    def __init__(self, run_dir: str, enabled: bool, total_iters: int, progress_bar: bool | None):
        self.enabled = enabled
        self.writer = None
        self.bar = None
        self.wandb = None  # a mtds.train.wandb_log.WandbRun, set by the run when W&B is on
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=os.path.join(run_dir, "tensorboard"))
        show_bar = sys.stdout.isatty() if progress_bar is None else progress_bar
        if show_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total_iters, unit="it", dynamic_ncols=True)

    def print(self, line: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def scalars(self, values: dict[str, float], iteration: int, tokens: int | None = None) -> None:
        if self.writer is None:
            return
        from mtds.train.wandb_log import tokens_tag

        for tag, value in values.items():
            self.writer.add_scalar(tag, value, iteration)
            if tokens is not None and tokens_tag(tag):
                self.writer.add_scalar(tokens_tag(tag), value, tokens)
        if self.wandb is not None:
            self.wandb.scalars(values, iteration, tokens)

    def advance(self, iteration: int, postfix: str = "") -> None:
        if self.bar is not None:
            self.bar.n = iteration
            if postfix:
                self.bar.set_postfix_str(postfix, refresh=False)
            self.bar.refresh()

    def close(self, failed: bool = False) -> None:
        """Flush and close; `failed`: the run ended in an error (the W&B run is marked so)."""
        if self.wandb is not None:
            self.wandb.finish(exit_code=1 if failed else 0)
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()


class Throughput:
    """Wall-clock rates over the last logging window (first window includes warm-up)."""

    def __init__(self):
        self.window_start = time.perf_counter()

    def window(self) -> float:
        now = time.perf_counter()
        elapsed, self.window_start = now - self.window_start, now
        return elapsed
