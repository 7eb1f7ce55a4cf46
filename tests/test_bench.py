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
    """A DeepSpeed variant, the plain-PyTorch variant and per-layer torch.compile each produce a row."""
    out = subprocess.run(
        [sys.executable, "bench/train_throughput.py", "--presets", "gpt-tiny", "--variants", "z2,torch,z2+layers",
         "--micro", "1", "--seq", "32", "--vocab", "512", "--warmup", "1", "--steps", "2",
         "--json", str(tmp_path / "r.jsonl")],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [ln for ln in out.stdout.splitlines() if ln.startswith("| gpt-tiny |")]
    assert len(rows) == 3 and not any("error" in r for r in rows), out.stdout[-2000:]
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 3


@pytest.mark.parametrize("limit", [0, 3, 24, 50, 200])
def test_largest_fit_bisection_finds_the_threshold(limit):
    from bench.largest_fit import largest_that_fits

    calls = []

    def fits(n):
        calls.append(n)
        return n <= limit, {"layers": n}

    good, bad, tried = largest_that_fits(fits, lo=4, hi=100, step=4)
    expected_good = None if limit < 4 else min(100, limit // 4 * 4)
    assert good == expected_good
    assert bad == (None if limit >= 100 else (4 if limit < 4 else expected_good + 4))
    assert all(n % 4 == 0 for n in calls) and len(calls) == len(set(calls)) <= 7 and set(tried) == set(calls)


@pytest.mark.slow
def test_largest_fit_runs_each_try_in_its_own_process():
    out = subprocess.run(
        [sys.executable, "bench/largest_fit.py", "--variants", "z2", "--width", "gpt-tiny", "--lo", "1", "--hi", "2",
         "--step", "1", "--seq", "32", "--vocab", "512"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "z2 layers=1: fits" in out.stdout and "z2 layers=2: fits" in out.stdout
    assert "| z2 | 2 |" in out.stdout and "| > 2 |" in out.stdout, out.stdout[-1000:]


@pytest.mark.slow
def test_tp_memory_runs_two_ranks_on_cpu_and_matches_the_formula():
    """TP=1 (DP=2) and TP=2 (DP=1) under ZeRO-2: one row each, measured bytes equal to the formula."""
    out = subprocess.run([sys.executable, "bench/bench_tp_memory.py", "--smoke"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [ln.split(" | ") for ln in out.stdout.splitlines() if ln.startswith(("| 1 | 2 | 2 |", "| 2 | 1 | 2 |"))]
    assert len(rows) == 2, out.stdout[-2000:]
    assert all(r[-1].strip(" |") == "1.000" for r in rows), out.stdout[-2000:]


def test_document_mask_bench_runs_on_cpu_and_both_paths_agree():
    out = subprocess.run([sys.executable, "bench/bench_document_mask.py", "--seq", "128", "--batch", "1", "--heads", "2",
                          "--steps", "1", "--docs", "3"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    diff = float(out.stdout.split("max |flex - dense| ")[1].split()[0])
    assert diff < 1e-5 and out.stdout.count("\n| ") == 4, out.stdout  # header and three rows



def test_plm_bench_runs_on_cpu_and_prints_both_kinds(world_of_one, capsys):
    """Permutation LM against causal LM at a tiny shape, in this process: a row per kind and the ratio line."""
    from bench.bench_plm import main

    assert main(["--seq", "16", "--batch", "1", "--c", "4", "--vocab", "256", "--steps", "1"]) == 0
    out = capsys.readouterr().out
    rows = [ln.split(" | ") for ln in out.splitlines() if ln.startswith(("| gpt |", "| gpt_plm |"))]
    assert [r[0] for r in rows] == ["| gpt", "| gpt_plm"], out
    assert all(float(r[1]) > 0 and r[-1].strip(" |").endswith("M") for r in rows), out
    assert "K = ceil(16 / 4) = 4" in out and "(T + K) / T = 1.250" in out, out


def test_downstream_bench_writes_both_packs_inputs(tmp_path, capsys):
    """bench_downstream's docstring inputs: 4-choice records with the gold in range, cloze texts."""
    import json

    from bench.bench_downstream import main

    assert main(["--write-inputs", str(tmp_path), "--examples", "5"]) == 0
    mc = [json.loads(line) for line in (tmp_path / "docstrings_mc.jsonl").read_text().splitlines()]
    cloze = [json.loads(line) for line in (tmp_path / "docstrings_cloze.jsonl").read_text().splitlines()]
    assert len(mc) == len(cloze) == 5
    assert all(len(r["choices"]) == 4 and 0 <= r["answer"] < 4 and r["question"] for r in mc), mc
    assert all(len(r["text"].split()) >= 6 for r in cloze), cloze
