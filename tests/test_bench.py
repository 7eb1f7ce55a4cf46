"""The GPU benchmark scripts also run on CPU with tiny shapes (their smoke check)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_reference_gpt_matches_mtds_parameter_count():
    """The plain-PyTorch reference has exactly the shape of the megatron-core model it is compared with."""
    import torch

    from bench.reference_gpt import ReferenceGPT
    from mtds.config import build_config

    m = build_config(overrides={"model": {"preset": "gpt-125m"}}).model
    with torch.device("meta"):
        ref = ReferenceGPT(m, 50304)
    n = sum(p.numel() for p in ref.parameters())
    # GPTModel: embedding + L x (2 norms, qkv, proj, fc1 (2*ffn), fc2) + final norm + output layer
    h, f, L, V = m.hidden_size, m.ffn_size(), m.num_layers, 50304
    assert n == V * h + L * (2 * h + 3 * h * h + h * h + 2 * f * h + f * h) + h + V * h


@pytest.mark.slow
def test_train_throughput_runs_on_cpu_and_prints_table(tmp_path):
    """A DeepSpeed variant and the plain-PyTorch variant both produce a row of the table."""
    out = subprocess.run(
        [sys.executable, "bench/train_throughput.py", "--presets", "gpt-tiny", "--variants", "z2,torch",
         "--micro", "1", "--seq", "32", "--vocab", "512", "--warmup", "1", "--steps", "2",
         "--json", str(tmp_path / "r.jsonl")],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [ln for ln in out.stdout.splitlines() if ln.startswith("| gpt-tiny |")]
    assert len(rows) == 2 and not any("error" in r for r in rows), out.stdout[-2000:]
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 2
